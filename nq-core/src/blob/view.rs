//! Typed, borrowing views of a parsed blob.
//!
//! Everything handed out here borrows the blob bytes: a `FactorizedLinear`
//! from a blob in flash reads its signs straight from flash.

use core::fmt::Write as _;

use super::format::*;
use super::{crc32, BlobError, ModelConfig};
use crate::layers::{
    BinaryLinear, DenseDtype, DenseTensor, FactorizedLinear, Linear, RowBits, RowQuantTensor,
};
use crate::{F16Vector, SignMatrix};

/// A blob that passed [`Blob::parse`](super::Blob::parse).
#[derive(Clone, Copy, Debug)]
pub struct BlobView<'a> {
    bytes: &'a [u8],
    config: ModelConfig,
    n_tensors: usize,
    header_len: usize,
}

/// One tensor-table entry and its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorView<'a> {
    /// Position in the table.
    pub index: u32,
    /// Name.
    pub name: &'a str,
    /// Kind.
    pub kind: Kind,
    /// Element type.
    pub dtype: Dtype,
    /// 1 or 2.
    pub ndim: u32,
    /// `[rows, cols]` (`cols = 1` for vectors).
    pub dims: [u32; 2],
    /// Inner rank (FACTORIZED), else 0.
    pub rank: u32,
    /// Whether a linear layer has a bias.
    pub has_bias: bool,
    /// Absolute file offset.
    pub offset: u64,
    /// Stored CRC-32 of `data`.
    pub crc: u32,
    /// The tensor's bytes, borrowed from the blob.
    pub data: &'a [u8],
    sections: Sections,
}

impl<'a> BlobView<'a> {
    pub(super) fn new(
        bytes: &'a [u8],
        config: ModelConfig,
        n_tensors: usize,
        header_len: usize,
    ) -> Self {
        Self {
            bytes,
            config,
            n_tensors,
            header_len,
        }
    }

    /// The model config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The whole blob.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Bytes of the header region (header, config, table, padding).
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.n_tensors
    }

    /// Whether the blob holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.n_tensors == 0
    }

    /// Tensor `index` in table order.
    pub fn tensor(&self, index: usize) -> Option<TensorView<'a>> {
        if index < self.n_tensors {
            self.entry(index).ok()
        } else {
            None
        }
    }

    /// All tensors in table (= name = file) order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'a>> + '_ {
        (0..self.n_tensors).filter_map(|i| self.entry(i).ok())
    }

    /// The tensor called `name` (binary search: names are sorted).
    pub fn find(&self, name: &str) -> Option<TensorView<'a>> {
        let (mut lo, mut hi) = (0, self.n_tensors);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let t = self.entry(mid).ok()?;
            match t.name.as_bytes().cmp(name.as_bytes()) {
                core::cmp::Ordering::Equal => return Some(t),
                core::cmp::Ordering::Less => lo = mid + 1,
                core::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    /// The tensor called `name`, or [`BlobError::MissingTensor`].
    pub fn get(&self, name: &str) -> Result<TensorView<'a>, BlobError> {
        self.find(name)
            .ok_or_else(|| missing(format_args!("{name}")))
    }

    /// Checks every tensor's CRC-32 (O(file)).
    pub fn verify(&self) -> Result<(), BlobError> {
        for index in 0..self.n_tensors {
            let t = self.entry(index)?;
            if crc32(t.data) != t.crc {
                return Err(BlobError::TensorCrcMismatch { index: t.index });
            }
        }
        Ok(())
    }

    /// The token embedding table (`vocab_size × d_model`).
    pub fn token_embd(&self) -> Result<Embedding<'a>, BlobError> {
        let t = self.get("token_embd")?;
        let e = t.as_embedding()?;
        let c = &self.config;
        t.expect_shape(c.vocab_size, c.d_model)?;
        Ok(e)
    }

    /// The final RMSNorm weight (`d_model`).
    pub fn output_norm(&self) -> Result<DenseTensor<&'a [u8]>, BlobError> {
        let t = self.get("output_norm")?;
        t.expect_vector(self.config.d_model)?;
        t.as_dense()
    }

    /// The LM head: the token embedding when tied, else `output`.
    pub fn lm_head(&self) -> Result<Head<'a>, BlobError> {
        let c = &self.config;
        if c.tied_embeddings {
            return Ok(Head::Embedding(self.token_embd()?));
        }
        let t = self.get("output")?;
        t.expect_shape(c.vocab_size, c.d_model)?;
        match t.kind {
            Kind::Dense | Kind::RowQuant => Ok(Head::Embedding(t.as_embedding()?)),
            _ => Ok(Head::Linear(t.as_linear()?)),
        }
    }

    /// Decoder block `layer`, every tensor checked against the config.
    pub fn block(&self, layer: u32) -> Result<BlockView<'a>, BlobError> {
        let c = self.config;
        if layer >= c.n_layers {
            return Err(missing(format_args!("blk.{layer}")));
        }
        let t = |part: &str| -> Result<TensorView<'a>, BlobError> {
            let mut name = heapless::String::<48>::new();
            // "blk." + ≤ 4 digits + "." + ≤ 13 chars always fits.
            let _ = write!(name, "blk.{layer}.{part}");
            self.get(&name)
        };
        let linear = |part: &str, m: u32, n: u32| -> Result<Linear<'a>, BlobError> {
            let tv = t(part)?;
            tv.expect_shape(m, n)?;
            tv.as_linear()
        };
        let norm = |part: &str, len: u32| -> Result<DenseTensor<&'a [u8]>, BlobError> {
            let tv = t(part)?;
            tv.expect_vector(len)?;
            tv.as_dense()
        };
        let (d, q, kv, f) = (c.d_model, c.q_dim(), c.kv_dim(), c.d_ffn);
        let (q_norm, k_norm) = if c.qk_norm {
            (
                Some(norm("attn_q_norm", c.head_dim)?),
                Some(norm("attn_k_norm", c.head_dim)?),
            )
        } else {
            (None, None)
        };
        Ok(BlockView {
            attn_norm: norm("attn_norm", d)?,
            attn_q: linear("attn_q", q, d)?,
            attn_k: linear("attn_k", kv, d)?,
            attn_v: linear("attn_v", kv, d)?,
            attn_output: linear("attn_output", d, q)?,
            q_norm,
            k_norm,
            ffn_norm: norm("ffn_norm", d)?,
            ffn_gate: linear("ffn_gate", f, d)?,
            ffn_up: linear("ffn_up", f, d)?,
            ffn_down: linear("ffn_down", d, f)?,
        })
    }

    /// Decodes and checks entry `index` on its own (parse checks the order).
    pub(super) fn entry(&self, index: usize) -> Result<TensorView<'a>, BlobError> {
        let idx = index as u32;
        let start = TABLE_OFFSET + index * ENTRY_LEN;
        let raw_bytes = self
            .bytes
            .get(start..start + ENTRY_LEN)
            .ok_or(BlobError::TooShort {
                len: self.bytes.len(),
            })?;
        let raw: RawEntry = bytemuck::pod_read_unaligned(raw_bytes);
        let name_field = raw_bytes
            .get(..48)
            .ok_or(BlobError::BadName { index: idx })?;
        let name = decode_name(name_field).ok_or(BlobError::BadName { index: idx })?;
        let kind = Kind::from_id(raw.kind).ok_or(BlobError::UnknownKind {
            index: idx,
            kind: raw.kind,
        })?;
        let dtype = Dtype::from_id(raw.dtype).ok_or(BlobError::UnknownDtype {
            index: idx,
            dtype: raw.dtype,
        })?;
        if raw.ndim != 1 && raw.ndim != 2 {
            return Err(BlobError::BadNdim { index: idx });
        }
        if !combination_allowed(kind, dtype, raw.ndim) {
            return Err(BlobError::KindDtypeMismatch { index: idx });
        }
        let dim_ok = |d: u32| (1..=MAX_DIM).contains(&d);
        if !dim_ok(raw.dim0) || !dim_ok(raw.dim1) || (raw.ndim == 1 && raw.dim1 != 1) {
            return Err(BlobError::BadDim { index: idx });
        }
        let has_bias = raw.flags & TENSOR_HAS_BIAS != 0;
        if raw.flags & !TENSOR_HAS_BIAS != 0 || (has_bias && !kind.is_quantized_linear()) {
            return Err(BlobError::BadTensorFlags { index: idx });
        }
        let rank_ok = match kind {
            Kind::Factorized => (1..=raw.dim0.min(raw.dim1)).contains(&raw.rank),
            _ => raw.rank == 0,
        };
        if !rank_ok {
            return Err(BlobError::BadRank { index: idx });
        }
        if raw.reserved.iter().any(|&b| b != 0) {
            return Err(BlobError::Reserved {
                field: "tensor.reserved",
            });
        }
        let sections = sections(kind, dtype, [raw.dim0, raw.dim1], raw.rank, has_bias)
            .ok_or(BlobError::KindDtypeMismatch { index: idx })?;
        if sections.total_len() != raw.length {
            return Err(BlobError::LengthMismatch {
                index: idx,
                expected: sections.total_len(),
                found: raw.length,
            });
        }
        let end = raw
            .offset
            .checked_add(raw.length)
            .filter(|&e| e <= self.bytes.len() as u64)
            .ok_or(BlobError::OutOfBounds { index: idx })?;
        let data = self
            .bytes
            .get(raw.offset as usize..end as usize)
            .ok_or(BlobError::OutOfBounds { index: idx })?;
        Ok(TensorView {
            index: idx,
            name,
            kind,
            dtype,
            ndim: raw.ndim,
            dims: [raw.dim0, raw.dim1],
            rank: raw.rank,
            has_bias,
            offset: raw.offset,
            crc: raw.crc,
            data,
            sections,
        })
    }
}

fn missing(name: core::fmt::Arguments<'_>) -> BlobError {
    let mut s = heapless::String::<48>::new();
    // A name longer than 48 bytes is cut short in the message only.
    let _ = s.write_fmt(name);
    BlobError::MissingTensor { name: s }
}

/// A name field: printable ASCII, 1..=47 bytes, then zeros only.
fn decode_name(field: &[u8]) -> Option<&str> {
    let len = field.iter().position(|&b| b == 0)?;
    if len == 0 || len > MAX_NAME_LEN {
        return None;
    }
    let (name, rest) = field.split_at(len);
    if !name.iter().all(|b| (0x21..=0x7E).contains(b)) || rest.iter().any(|&b| b != 0) {
        return None;
    }
    core::str::from_utf8(name).ok()
}

impl<'a> TensorView<'a> {
    /// Bytes of section `k` (FORMAT.md §6).
    pub fn section(&self, k: usize) -> Option<&'a [u8]> {
        let (s, e) = self.sections.get(k)?;
        self.data.get(s as usize..e as usize)
    }

    /// Number of sections.
    pub fn section_count(&self) -> usize {
        self.sections.len()
    }

    /// Logical weights: `rows · cols`.
    pub fn n_weights(&self) -> u64 {
        u64::from(self.dims[0]) * u64::from(self.dims[1])
    }

    /// Stored bits per logical weight, counting scales, bias and padding.
    pub fn bits_per_weight(&self) -> f64 {
        self.data.len() as f64 * 8.0 / self.n_weights() as f64
    }

    /// Whether the stored CRC matches the data.
    pub fn crc_ok(&self) -> bool {
        crc32(self.data) == self.crc
    }

    fn sec(&self, k: usize) -> Result<&'a [u8], BlobError> {
        self.section(k)
            .ok_or(BlobError::ShapeMismatch { index: self.index })
    }

    fn wrong_kind(&self) -> BlobError {
        BlobError::WrongKind { index: self.index }
    }

    fn shape_err(&self) -> impl Fn(crate::ShapeError) -> BlobError {
        let index = self.index;
        move |_| BlobError::ShapeMismatch { index }
    }

    fn expect_shape(&self, rows: u32, cols: u32) -> Result<(), BlobError> {
        if self.ndim == 2 && self.dims == [rows, cols] {
            Ok(())
        } else {
            Err(BlobError::ShapeMismatch { index: self.index })
        }
    }

    fn expect_vector(&self, len: u32) -> Result<(), BlobError> {
        if self.ndim == 1 && self.dims[0] == len {
            Ok(())
        } else {
            Err(BlobError::ShapeMismatch { index: self.index })
        }
    }

    fn bias(&self, k: usize) -> Result<Option<F16Vector<&'a [u8]>>, BlobError> {
        if !self.has_bias {
            return Ok(None);
        }
        F16Vector::new(self.sec(k)?)
            .map(Some)
            .map_err(self.shape_err())
    }

    /// A DENSE tensor (vectors come out as `len × 1`).
    pub fn as_dense(&self) -> Result<DenseTensor<&'a [u8]>, BlobError> {
        let dtype = match (self.kind, self.dtype) {
            (Kind::Dense, Dtype::F32) => DenseDtype::F32,
            (Kind::Dense, Dtype::F16) => DenseDtype::F16,
            _ => return Err(self.wrong_kind()),
        };
        let (rows, cols) = (self.dims[0] as usize, self.dims[1] as usize);
        DenseTensor::new(rows, cols, dtype, self.sec(0)?).map_err(self.shape_err())
    }

    /// A ROW_QUANT tensor.
    pub fn as_row_quant(&self) -> Result<RowQuantTensor<&'a [u8]>, BlobError> {
        let bits = match (self.kind, self.dtype) {
            (Kind::RowQuant, Dtype::I8) => RowBits::I8,
            (Kind::RowQuant, Dtype::Q4) => RowBits::Q4,
            _ => return Err(self.wrong_kind()),
        };
        let scales = F16Vector::new(self.sec(1)?).map_err(self.shape_err())?;
        let (rows, cols) = (self.dims[0] as usize, self.dims[1] as usize);
        RowQuantTensor::new(rows, cols, bits, self.sec(0)?, scales).map_err(self.shape_err())
    }

    /// A FACTORIZED linear layer.
    pub fn as_factorized(&self) -> Result<FactorizedLinear<&'a [u8]>, BlobError> {
        if self.kind != Kind::Factorized {
            return Err(self.wrong_kind());
        }
        let (m, n, r) = (
            self.dims[0] as usize,
            self.dims[1] as usize,
            self.rank as usize,
        );
        let e = self.shape_err();
        FactorizedLinear::new(
            SignMatrix::new(m, r, self.sec(0)?).map_err(&e)?,
            SignMatrix::new(r, n, self.sec(1)?).map_err(&e)?,
            F16Vector::new(self.sec(2)?).map_err(&e)?,
            F16Vector::new(self.sec(3)?).map_err(&e)?,
            self.bias(4)?,
        )
        .map_err(e)
    }

    /// A BINARY linear layer.
    pub fn as_binary(&self) -> Result<BinaryLinear<&'a [u8]>, BlobError> {
        if self.kind != Kind::Binary {
            return Err(self.wrong_kind());
        }
        let (m, n) = (self.dims[0] as usize, self.dims[1] as usize);
        let e = self.shape_err();
        BinaryLinear::new(
            SignMatrix::new(m, n, self.sec(0)?).map_err(&e)?,
            F16Vector::new(self.sec(1)?).map_err(&e)?,
            F16Vector::new(self.sec(2)?).map_err(&e)?,
            self.bias(3)?,
        )
        .map_err(e)
    }

    /// Any linear layer: FACTORIZED, BINARY or 2-D DENSE.
    pub fn as_linear(&self) -> Result<Linear<'a>, BlobError> {
        match self.kind {
            Kind::Factorized => self.as_factorized().map(Linear::Factorized),
            Kind::Binary => self.as_binary().map(Linear::Binary),
            Kind::Dense if self.ndim == 2 => self.as_dense().map(Linear::Dense),
            _ => Err(self.wrong_kind()),
        }
    }

    /// An embedding-style table: 2-D DENSE or ROW_QUANT.
    pub fn as_embedding(&self) -> Result<Embedding<'a>, BlobError> {
        match self.kind {
            Kind::Dense if self.ndim == 2 => self.as_dense().map(Embedding::Dense),
            Kind::RowQuant => self.as_row_quant().map(Embedding::RowQuant),
            _ => Err(self.wrong_kind()),
        }
    }

    /// A BYTES tensor's contents.
    pub fn as_raw_bytes(&self) -> Result<&'a [u8], BlobError> {
        if self.kind != Kind::Bytes {
            return Err(self.wrong_kind());
        }
        self.sec(0)
    }
}

/// A table looked up by row: token embeddings, or a tied LM head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Embedding<'a> {
    /// f16/f32 rows.
    Dense(DenseTensor<&'a [u8]>),
    /// int8 / 4-bit rows with f16 scales.
    RowQuant(RowQuantTensor<&'a [u8]>),
}

impl Embedding<'_> {
    /// Rows (vocabulary size).
    pub fn rows(&self) -> usize {
        match self {
            Self::Dense(d) => d.rows(),
            Self::RowQuant(q) => q.rows(),
        }
    }

    /// Columns (model width).
    pub fn cols(&self) -> usize {
        match self {
            Self::Dense(d) => d.cols(),
            Self::RowQuant(q) => q.cols(),
        }
    }

    /// Copies row `i` into `out` as f32.
    ///
    /// # Panics
    /// If `i ≥ rows` or `out.len() != cols`.
    pub fn row_into(&self, i: usize, out: &mut [f32]) {
        match self {
            Self::Dense(d) => d.row_into(i, out),
            Self::RowQuant(q) => q.row_into(i, out),
        }
    }

    /// `y = E · x`: the scalar oracle for a head that shares this table.
    ///
    /// # Panics
    /// If a slice has the wrong length.
    pub fn matvec_ref(&self, x: &[f32], y: &mut [f32]) {
        match self {
            Self::Dense(d) => d.matvec_ref(x, y),
            Self::RowQuant(q) => q.matvec_ref(x, y),
        }
    }
}

/// The LM head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head<'a> {
    /// A row table (the tied token embedding, or a dense/row-quantized `output`).
    Embedding(Embedding<'a>),
    /// A quantized `output` projection.
    Linear(Linear<'a>),
}

/// The tensors of one decoder block, shapes checked against the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockView<'a> {
    /// Pre-attention RMSNorm weight.
    pub attn_norm: DenseTensor<&'a [u8]>,
    /// Query projection.
    pub attn_q: Linear<'a>,
    /// Key projection.
    pub attn_k: Linear<'a>,
    /// Value projection.
    pub attn_v: Linear<'a>,
    /// Attention output projection.
    pub attn_output: Linear<'a>,
    /// Per-head query RMSNorm (qwen3).
    pub q_norm: Option<DenseTensor<&'a [u8]>>,
    /// Per-head key RMSNorm (qwen3).
    pub k_norm: Option<DenseTensor<&'a [u8]>>,
    /// Pre-FFN RMSNorm weight.
    pub ffn_norm: DenseTensor<&'a [u8]>,
    /// SwiGLU gate projection.
    pub ffn_gate: Linear<'a>,
    /// SwiGLU up projection.
    pub ffn_up: Linear<'a>,
    /// SwiGLU down projection.
    pub ffn_down: Linear<'a>,
}
