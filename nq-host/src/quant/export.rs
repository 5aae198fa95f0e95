//! From quantized layers to a blob, and from a blob back to f32 weights.
//!
//! The blob holds every decoder linear as produced by the quantizer
//! (factorized or binary), norms as f16, the token embedding as f16 or
//! row-quantized int8/4-bit (`--embed`), an untied head like the embedding,
//! and by default the tokenizer as the `tokenizer.json` BYTES tensor so a
//! blob is a complete model. [`dequantize_blob`] reads any such blob back
//! into [`ModelWeights`] so the FP32 evaluator, the HF writer and any other
//! tool can use a quantized model unchanged.

use nq_core::blob::{Embedding, Head};
use nq_core::layers::{Linear, RowBits, RowQuantTensor};
use nq_core::{BlobError, BlobView, DenseTensor};
use rayon::prelude::*;

use crate::blob_writer::{BlobBuilder, TensorPayload, WriteError};
use crate::linalg::matmul_nn;
use crate::model::backward::LinearId;
use crate::model::{LayerWeights, Matrix, ModelError, ModelWeights};

/// Name of the BYTES tensor holding a Hugging Face `tokenizer.json`.
pub const TOKENIZER_TENSOR: &str = "tokenizer.json";

/// Storage of the token embedding (and an untied LM head).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum EmbedFormat {
    /// IEEE half precision.
    #[default]
    F16,
    /// int8 per row with an f16 scale.
    Q8,
    /// 4-bit per row with an f16 scale.
    Q4,
}

fn table(rows: usize, cols: usize, values: &[f32], f: EmbedFormat) -> TensorPayload {
    match f {
        EmbedFormat::F16 => TensorPayload::matrix_f16(rows, cols, values),
        EmbedFormat::Q8 => {
            TensorPayload::RowQuant(RowQuantTensor::quantize(rows, cols, RowBits::I8, values))
        }
        EmbedFormat::Q4 => {
            TensorPayload::RowQuant(RowQuantTensor::quantize(rows, cols, RowBits::Q4, values))
        }
    }
}

/// Blob tensor name of a decoder linear.
pub fn linear_name(block: usize, id: LinearId) -> String {
    format!("blk.{block}.{}", id.name())
}

/// Builds the blob of model `w` whose decoder linears are `linears[block][id]`
/// (in [`LinearId::ALL`] order), with the optional `tokenizer.json` and
/// `tokenizer.tokens` ([`super::token_table::token_table`]) BYTES tensors.
pub fn build_blob(
    w: &ModelWeights,
    linears: Vec<Vec<TensorPayload>>,
    embed: EmbedFormat,
    tokenizer_json: Option<Vec<u8>>,
    token_table: Option<Vec<u8>>,
) -> Result<BlobBuilder, WriteError> {
    let c = &w.config;
    let mut b = BlobBuilder::new(*c);
    let (v, d) = (c.vocab_size as usize, c.d_model as usize);
    b.add("token_embd", table(v, d, &w.token_embd.data, embed))?;
    b.add("output_norm", TensorPayload::vector_f16(&w.output_norm))?;
    if let Some(o) = &w.output {
        b.add("output", table(o.rows, o.cols, &o.data, embed))?;
    }
    for (i, (l, lin)) in w.layers.iter().zip(linears).enumerate() {
        b.add(
            format!("blk.{i}.attn_norm"),
            TensorPayload::vector_f16(&l.attn_norm),
        )?;
        b.add(
            format!("blk.{i}.ffn_norm"),
            TensorPayload::vector_f16(&l.ffn_norm),
        )?;
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            b.add(
                format!("blk.{i}.attn_q_norm"),
                TensorPayload::vector_f16(qn),
            )?;
            b.add(
                format!("blk.{i}.attn_k_norm"),
                TensorPayload::vector_f16(kn),
            )?;
        }
        for (id, p) in LinearId::ALL.into_iter().zip(lin) {
            b.add(linear_name(i, id), p)?;
        }
    }
    if let Some(bytes) = tokenizer_json {
        b.add(TOKENIZER_TENSOR, TensorPayload::Bytes(bytes))?;
    }
    if let Some(bytes) = token_table {
        b.add(
            super::token_table::TOKEN_TABLE_TENSOR,
            TensorPayload::Bytes(bytes),
        )?;
    }
    Ok(b)
}

/// Why a blob could not be turned back into weights.
#[derive(Debug, thiserror::Error)]
pub enum DequantError {
    /// The blob's structure.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The resulting weights.
    #[error(transparent)]
    Model(#[from] ModelError),
}

pub(crate) fn dense_vec(t: &DenseTensor<&[u8]>) -> Vec<f32> {
    (0..t.len()).map(|k| t.get_flat(k)).collect()
}

pub(crate) fn embedding_matrix(e: &Embedding<'_>) -> Matrix {
    let (rows, cols) = (e.rows(), e.cols());
    let mut data = vec![0.0f32; rows * cols];
    data.par_chunks_mut(cols)
        .enumerate()
        .for_each(|(i, row)| e.row_into(i, row));
    Matrix { rows, cols, data }
}

/// A linear layer as f32 weight and optional bias.
pub fn linear_to_dense(l: &Linear<'_>) -> (Matrix, Option<Vec<f32>>) {
    let (m, n) = (l.out_features(), l.in_features());
    let mut w = Matrix::zeros(m, n);
    match l {
        Linear::Factorized(f) => {
            // Ŵ = (diag(s_post)·U) · (V·diag(s_pre)) with one GEMM.
            let r = f.rank();
            let (u, v) = (f.u(), f.v());
            let mut a = vec![0.0f32; m * r];
            a.par_chunks_mut(r).enumerate().for_each(|(i, row)| {
                let s = f.s_post().get(i);
                for (k, x) in row.iter_mut().enumerate() {
                    *x = f32::from(u.sign(i, k)) * s;
                }
            });
            let mut bm = vec![0.0f32; r * n];
            bm.par_chunks_mut(n).enumerate().for_each(|(k, row)| {
                for (j, x) in row.iter_mut().enumerate() {
                    *x = f32::from(v.sign(k, j)) * f.s_pre().get(j);
                }
            });
            matmul_nn(&mut w.data, &a, &bm, m, n, r, false);
            (w, f.bias().map(|b| b.iter().collect()))
        }
        Linear::Binary(b) => {
            b.dequantize_into(&mut w.data);
            (w, b.bias().map(|b| b.iter().collect()))
        }
        Linear::Dense(d) => {
            w.data = dense_vec(d);
            (w, None)
        }
    }
}

/// The f32 weight a decoder-linear payload represents.
///
/// # Panics
/// For payloads that are not a linear layer (vectors, bytes).
pub fn payload_dense(p: &TensorPayload) -> Matrix {
    let l = match p {
        TensorPayload::Factorized(f) => Linear::Factorized(f.as_view()),
        TensorPayload::Binary(b) => Linear::Binary(b.as_view()),
        TensorPayload::Matrix(d) => Linear::Dense(d.as_view()),
        _ => panic!("not a linear payload"),
    };
    linear_to_dense(&l).0
}

/// Reads every tensor of a blob back as f32 weights (validated).
pub fn dequantize_blob(view: &BlobView<'_>) -> Result<ModelWeights, DequantError> {
    let c = *view.config();
    let token_embd = embedding_matrix(&view.token_embd()?);
    let output = match view.lm_head()? {
        _ if c.tied_embeddings => None,
        Head::Embedding(e) => Some(embedding_matrix(&e)),
        Head::Linear(l) => Some(linear_to_dense(&l).0),
    };
    let layers = (0..c.n_layers)
        .map(|i| {
            let b = view.block(i)?;
            let (wq, bq) = linear_to_dense(&b.attn_q);
            let (wk, bk) = linear_to_dense(&b.attn_k);
            let (wv, bv) = linear_to_dense(&b.attn_v);
            let (wo, _) = linear_to_dense(&b.attn_output);
            let (w_gate, _) = linear_to_dense(&b.ffn_gate);
            let (w_up, _) = linear_to_dense(&b.ffn_up);
            let (w_down, _) = linear_to_dense(&b.ffn_down);
            Ok(LayerWeights {
                attn_norm: dense_vec(&b.attn_norm),
                wq,
                wk,
                wv,
                wo,
                bq: bq.filter(|_| c.attn_bias),
                bk: bk.filter(|_| c.attn_bias),
                bv: bv.filter(|_| c.attn_bias),
                q_norm: b.q_norm.as_ref().map(dense_vec),
                k_norm: b.k_norm.as_ref().map(dense_vec),
                ffn_norm: dense_vec(&b.ffn_norm),
                w_gate,
                w_up,
                w_down,
            })
        })
        .collect::<Result<Vec<_>, DequantError>>()?;
    let w = ModelWeights {
        config: c,
        token_embd,
        output_norm: dense_vec(&view.output_norm()?),
        output,
        layers,
    };
    w.validate()?;
    Ok(w)
}

/// The `tokenizer.json` stored in a blob, if any.
pub fn blob_tokenizer_json<'a>(view: &BlobView<'a>) -> Result<Option<&'a [u8]>, BlobError> {
    match view.find(TOKENIZER_TENSOR) {
        Some(t) => t.as_raw_bytes().map(Some),
        None => Ok(None),
    }
}
