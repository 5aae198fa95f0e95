//! `nq-host inspect`: what is in a blob and what it costs in bits.

use std::fmt;

use nq_core::blob::{BlobError, BlobView, Kind, ModelConfig, TensorView};

/// Storage accounting for one blob.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// File size in bytes.
    pub file_len: u64,
    /// Bytes of the header region.
    pub header_len: u64,
    /// Bytes of the decoder linear layers (`blk.*` 2-D projections).
    pub decoder_linear_bytes: u64,
    /// Logical weights of those layers.
    pub decoder_linear_weights: u64,
    /// Logical weights of every numeric tensor.
    pub total_weights: u64,
}

impl Summary {
    /// Stored bits per decoder-linear weight (scales, bias and padding counted).
    pub fn decoder_linear_bpw(&self) -> f64 {
        ratio_bits(self.decoder_linear_bytes, self.decoder_linear_weights)
    }

    /// Bits per weight of the whole file (everything counted).
    pub fn file_bpw(&self) -> f64 {
        ratio_bits(self.file_len, self.total_weights)
    }
}

fn ratio_bits(bytes: u64, weights: u64) -> f64 {
    if weights == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / weights as f64
    }
}

/// Whether a tensor counts as a decoder linear layer.
pub fn is_decoder_linear(t: &TensorView<'_>) -> bool {
    t.name.starts_with("blk.")
        && t.ndim == 2
        && matches!(t.kind, Kind::Factorized | Kind::Binary | Kind::Dense)
}

/// Adds up a blob's storage.
pub fn summarize(view: &BlobView<'_>) -> Summary {
    let mut s = Summary {
        file_len: view.as_bytes().len() as u64,
        header_len: view.header_len() as u64,
        decoder_linear_bytes: 0,
        decoder_linear_weights: 0,
        total_weights: 0,
    };
    for t in view.tensors() {
        if t.kind != Kind::Bytes {
            s.total_weights += t.n_weights();
        }
        if is_decoder_linear(&t) {
            s.decoder_linear_bytes += t.data.len() as u64;
            s.decoder_linear_weights += t.n_weights();
        }
    }
    s
}

/// A printable report: config, one line per tensor, totals.
pub struct Report<'a> {
    view: BlobView<'a>,
    crc: Option<Result<(), BlobError>>,
}

impl<'a> Report<'a> {
    /// Builds the report; with `verify`, checks every tensor CRC first.
    pub fn new(view: BlobView<'a>, verify: bool) -> Self {
        let crc = verify.then(|| view.verify());
        Self { view, crc }
    }

    /// The CRC outcome, if it was checked.
    pub fn crc(&self) -> Option<&Result<(), BlobError>> {
        self.crc.as_ref()
    }
}

fn write_config(f: &mut fmt::Formatter<'_>, c: &ModelConfig) -> fmt::Result {
    writeln!(f, "architecture    {}", c.arch.name())?;
    writeln!(f, "layers          {}", c.n_layers)?;
    writeln!(f, "d_model         {}", c.d_model)?;
    writeln!(f, "d_ffn           {}", c.d_ffn)?;
    writeln!(
        f,
        "heads           {} (kv {}, head_dim {})",
        c.n_heads, c.n_kv_heads, c.head_dim
    )?;
    writeln!(f, "vocab           {}", c.vocab_size)?;
    writeln!(f, "max_seq_len     {}", c.max_seq_len)?;
    writeln!(f, "rope_theta      {}", c.rope_theta)?;
    writeln!(f, "norm_eps        {:e}", c.norm_eps)?;
    let tok = |t: Option<u32>| t.map_or_else(|| "none".to_string(), |t| t.to_string());
    writeln!(
        f,
        "tied embeddings {}  attn bias {}  qk norm {}",
        c.tied_embeddings, c.attn_bias, c.qk_norm
    )?;
    writeln!(f, "bos / eos       {} / {}", tok(c.bos_id), tok(c.eos_id))
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_config(f, self.view.config())?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<24} {:<10} {:<5} {:>13} {:>5} {:>12} {:>8}",
            "tensor", "kind", "dtype", "shape", "rank", "bytes", "bpw"
        )?;
        let mut tensors: Vec<_> = self.view.tensors().collect();
        // Table order is byte order (blk.10 before blk.2); print in natural order.
        tensors.sort_by_key(|t| natural_key(t.name));
        for t in &tensors {
            let shape = if t.ndim == 1 {
                format!("{}", t.dims[0])
            } else {
                format!("{}x{}", t.dims[0], t.dims[1])
            };
            let rank = if t.kind == Kind::Factorized {
                t.rank.to_string()
            } else {
                "-".into()
            };
            let bpw = if t.kind == Kind::Bytes {
                "-".to_string()
            } else {
                format!("{:.3}", t.bits_per_weight())
            };
            let bias = if t.has_bias { "+b" } else { "" };
            writeln!(
                f,
                "{:<24} {:<10} {:<5} {:>13} {:>5} {:>12} {:>8}",
                t.name,
                format!("{}{}", t.kind.name(), bias),
                t.dtype.name(),
                shape,
                rank,
                t.data.len(),
                bpw
            )?;
        }
        let s = summarize(&self.view);
        writeln!(f)?;
        writeln!(f, "tensors               {}", tensors.len())?;
        writeln!(
            f,
            "decoder linears       {} bytes for {} weights = {:.4} bits/weight",
            s.decoder_linear_bytes,
            s.decoder_linear_weights,
            s.decoder_linear_bpw()
        )?;
        writeln!(
            f,
            "whole file            {} bytes for {} weights = {:.4} bits/weight",
            s.file_len,
            s.total_weights,
            s.file_bpw()
        )?;
        match &self.crc {
            None => writeln!(f, "checksums             not checked"),
            Some(Ok(())) => writeln!(f, "checksums             ok"),
            Some(Err(e)) => writeln!(f, "checksums             FAILED: {e}"),
        }
    }
}

/// Sort key that orders `blk.2` before `blk.10`.
fn natural_key(name: &str) -> Vec<(String, u64)> {
    name.split('.')
        .map(|part| match part.parse::<u64>() {
            Ok(n) => (String::new(), n),
            Err(_) => (part.to_string(), 0),
        })
        .collect()
}

/// What the edge runtime needs to run a blob: flash for the blob itself
/// (read in place) and RAM for its arena.
#[derive(Clone, Copy, Debug)]
pub struct Footprint {
    /// Blob bytes (flash).
    pub flash_bytes: u64,
    /// Arena bytes at the default prompt batch (RAM).
    pub ram_bytes: usize,
    /// Of which the KV cache.
    pub kv_bytes: usize,
    /// Arena bytes with prompt batch 1 (the smallest that runs).
    pub ram_bytes_batch1: usize,
    /// Context length.
    pub ctx: usize,
    /// KV storage.
    pub kv: nq_core::KvDtype,
}

impl Footprint {
    /// The footprint of `view` at `ctx` tokens with `kv` storage.
    pub fn new(view: &BlobView<'_>, ctx: usize, kv: nq_core::KvDtype) -> Self {
        use nq_core::Runtime;
        let c = view.config();
        let rows = 2 * c.n_layers as usize * ctx;
        let scales = if kv == nq_core::KvDtype::I8 {
            rows * c.n_kv_heads as usize * 4
        } else {
            0
        };
        Self {
            flash_bytes: view.as_bytes().len() as u64,
            ram_bytes: Runtime::arena_bytes(c, ctx, kv),
            kv_bytes: rows * c.kv_dim() as usize * kv.value_bytes() + scales,
            ram_bytes_batch1: Runtime::arena_bytes_for_batch(c, ctx, kv, 1),
            ctx,
            kv,
        }
    }
}

impl fmt::Display for Footprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: f64| b / (1u64 << 20) as f64;
        writeln!(f, "footprint (ctx {}, kv {}):", self.ctx, self.kv.name())?;
        writeln!(
            f,
            "  flash: {} bytes ({:.2} MiB), the blob read in place",
            self.flash_bytes,
            mib(self.flash_bytes as f64)
        )?;
        writeln!(
            f,
            "  RAM:   {} bytes ({:.2} MiB) arena, prompt batch {} (KV cache {} bytes); {} bytes with batch 1",
            self.ram_bytes,
            mib(self.ram_bytes as f64),
            nq_core::runtime::DEFAULT_BATCH,
            self.kv_bytes,
            self.ram_bytes_batch1
        )
    }
}
