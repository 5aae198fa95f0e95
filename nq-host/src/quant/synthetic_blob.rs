//! Deterministic small blobs of random models, quantized for real: what the
//! runtime tests, the Cortex-M CI step and benchmarks of the runtime run on
//! when no checkpoint is at hand.

use super::export::{build_blob, EmbedFormat};
use super::factor::{AdmmOptions, FactorError, Method};
use super::pipeline::{quantize_linears, QuantizeOptions};
use super::token_table::pack;
use crate::backend::Compute;
use crate::blob_writer::WriteError;
use crate::model::synthetic::random_model;
use crate::model::ModelConfig;

/// Why a synthetic blob could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SyntheticBlobError {
    /// Quantizing a layer.
    #[error(transparent)]
    Factor(#[from] FactorError),
    /// Writing the blob.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// A blob of `random_model(config, seed)`, every decoder linear quantized
/// by NanoQuant ADMM (`admm_iters` iterations, rank for `bpw`), embeddings
/// in `embed`, with a `tokenizer.tokens` table whose token `i` is a short
/// printable string (`"a"`, `"b"`, …, then `" t<i>"`).
pub fn synthetic_blob(
    config: ModelConfig,
    seed: u64,
    bpw: f64,
    embed: EmbedFormat,
    admm_iters: usize,
) -> Result<Vec<u8>, SyntheticBlobError> {
    let w = random_model(config, seed);
    let opts = QuantizeOptions {
        method: Method::NanoQuant,
        bpw,
        rank_multiple: 2,
        admm: AdmmOptions {
            iters: admm_iters,
            seed,
            ..AdmmOptions::default()
        },
        compute: Compute::Cpu,
    };
    let q = quantize_linears(&w, None, &opts, |_| {})?;
    let tokens: Vec<Vec<u8>> = (0..config.vocab_size)
        .map(|i| match i {
            0..=25 => vec![b'a' + i as u8],
            _ => format!(" t{i}").into_bytes(),
        })
        .collect();
    Ok(build_blob(&w, q.payloads, embed, None, Some(pack(&tokens)))?.to_bytes()?)
}
