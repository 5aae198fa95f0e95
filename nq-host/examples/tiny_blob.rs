//! Writes a small deterministic blob of a random (quantized) model, for the
//! Cortex-M CI step and quick runtime checks:
//!
//! ```text
//! cargo run -p nq-host --example tiny_blob -- tiny.nqb
//! ```
//!
//! Llama, 2 layers, d_model 128, vocab 256, factorized linears at 1 bpw,
//! q8 embeddings, with a `tokenizer.tokens` table and no tokenizer.json.

use nq_host::model::{Arch, ModelConfig};
use nq_host::quant::export::EmbedFormat;
use nq_host::quant::synthetic_blob::synthetic_blob;

fn main() -> anyhow::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: tiny_blob OUT.nqb"))?;
    let config = ModelConfig {
        arch: Arch::Llama,
        n_layers: 2,
        d_model: 128,
        d_ffn: 256,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 32,
        vocab_size: 256,
        max_seq_len: 128,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_embeddings: false,
        attn_bias: false,
        qk_norm: false,
        bos_id: None,
        eos_id: None,
    };
    let bytes = synthetic_blob(config, 8, 1.0, EmbedFormat::Q8, 40)?;
    std::fs::write(&out, &bytes)?;
    eprintln!("wrote {} bytes to {}", bytes.len(), out.to_string_lossy());
    Ok(())
}
