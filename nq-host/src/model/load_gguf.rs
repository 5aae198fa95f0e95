//! Loads a llama.cpp GGUF checkpoint (llama, qwen2, qwen3) as f32 weights.
//!
//! # Layout conversions
//!
//! * **Shapes.** GGUF lists dimensions fastest-varying first, so a linear
//!   weight with GGUF dims `[in, out]` is `out` rows of `in` values — our
//!   row-major `out × in` [`Matrix`], bytes in storage order.
//! * **Q/K rows (llama only).** llama.cpp's converter permutes the rows of
//!   the llama Q and K projections (and their biases) so that its RoPE can
//!   rotate *adjacent pairs* `(0,1), (2,3), …` of each head. We keep the
//!   Hugging Face layout, where RoPE rotates *halves* `(i, i + D/2)`. Within
//!   each head of `D = head_dim` rows the converter stores HF row `i` at
//!   GGUF row `2i` and HF row `i + D/2` at GGUF row `2i + 1` (`i < D/2`), so
//!   on load [`unpermute_rope_rows`] sets
//!
//!   ```text
//!   HF[h·D + i]       = GGUF[h·D + 2i]
//!   HF[h·D + D/2 + i] = GGUF[h·D + 2i + 1]
//!   ```
//!
//!   with `h` running over the query heads for Q and the key/value heads
//!   for K. Both layouts give the same attention scores when paired with
//!   their own RoPE variant; only the HF pairing is used downstream.
//!   qwen2/qwen3 GGUFs are converted without this permutation (llama.cpp
//!   runs them with the "NeoX" rotate-halves RoPE), so their rows are
//!   taken as stored.

use std::path::Path;

use rayon::prelude::*;

use super::{Arch, LayerWeights, Matrix, ModelConfig, ModelError, ModelWeights};
use crate::gguf::{GgufError, GgufFile};

/// Why a GGUF checkpoint could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is not readable GGUF or lacks a key/tensor.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The checkpoint is not a model we can run or is inconsistent.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Opens `path` and loads every weight as f32 (see the module docs for the
/// layout conversions). The result has passed [`ModelWeights::validate`].
pub fn load_gguf(path: &Path) -> Result<ModelWeights, LoadError> {
    load_gguf_file(&GgufFile::open(path)?)
}

/// [`load_gguf`] on an already opened file.
pub fn load_gguf_file(file: &GgufFile) -> Result<ModelWeights, LoadError> {
    let config = config_from_gguf(file)?;
    let (d, v) = (config.d_model as usize, config.vocab_size as usize);
    let token_embd = matrix(file, "token_embd.weight", v, d)?;
    let output_norm = vector(file, "output_norm.weight", d)?;
    let output = match config.tied_embeddings {
        true => None,
        false => Some(matrix(file, "output.weight", v, d)?),
    };
    let layers = (0..config.n_layers as usize)
        .into_par_iter()
        .map(|i| load_layer(file, &config, i))
        .collect::<Result<Vec<_>, _>>()?;
    let weights = ModelWeights {
        config,
        token_embd,
        output_norm,
        output,
        layers,
    };
    weights.validate()?;
    Ok(weights)
}

/// Builds the [`ModelConfig`] from the `{arch}.*` and `tokenizer.ggml.*`
/// metadata and the set of tensors present. Not yet validated.
pub fn config_from_gguf(file: &GgufFile) -> Result<ModelConfig, LoadError> {
    let md = file.metadata();
    let arch_name = file.architecture()?;
    let arch = match arch_name {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        other => return Err(ModelError::UnsupportedArch(other.to_string()).into()),
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let config_err = |msg: String| LoadError::Model(ModelError::Config(msg));

    let d_model = md.get_u32(&key("embedding_length"))?;
    let n_heads = md.get_u32(&key("attention.head_count"))?;
    let n_kv_heads = md
        .get_opt(&key("attention.head_count_kv"))?
        .unwrap_or(n_heads);
    let head_dim = match md.get_opt::<u32>(&key("attention.key_length"))? {
        Some(k) => k,
        None if n_heads != 0 && d_model % n_heads == 0 => d_model / n_heads,
        None => {
            return Err(config_err(format!(
                "embedding length {d_model} is not a multiple of {n_heads} heads"
            )))
        }
    };
    if let Some(v) = md.get_opt::<u32>(&key("attention.value_length"))? {
        if v != head_dim {
            return Err(config_err(format!(
                "value head size {v} differs from key head size {head_dim}"
            )));
        }
    }
    if let Some(r) = md.get_opt::<u32>(&key("rope.dimension_count"))? {
        if r != head_dim {
            return Err(config_err(format!(
                "partial RoPE ({r} of {head_dim} dims) is not supported"
            )));
        }
    }
    if let Some(s) = md.get_opt::<&str>(&key("rope.scaling.type"))? {
        if s != "none" {
            return Err(config_err(format!("RoPE scaling {s:?} is not supported")));
        }
    }
    if file.tensor_info("rope_freqs.weight").is_some() {
        return Err(config_err(
            "per-dimension RoPE frequencies (rope_freqs.weight) are not supported".into(),
        ));
    }

    let vocab_size = match md.get("tokenizer.ggml.tokens") {
        Some(_) => u32::try_from(md.array_len("tokenizer.ggml.tokens")?)
            .map_err(|_| config_err("vocabulary larger than u32".into()))?,
        None => match md.get_opt::<u32>(&key("vocab_size"))? {
            Some(v) => v,
            None => file
                .tensor_info("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| GgufError::MissingKey("tokenizer.ggml.tokens".into()))?,
        },
    };

    Ok(ModelConfig {
        arch,
        n_layers: md.get_u32(&key("block_count"))?,
        d_model,
        d_ffn: md.get_u32(&key("feed_forward_length"))?,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab_size,
        max_seq_len: md.get_u32(&key("context_length"))?,
        // llama.cpp's default when a converter omits it.
        rope_theta: md.get_opt(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        norm_eps: md.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
        tied_embeddings: file.tensor_info("output.weight").is_none(),
        attn_bias: file.tensor_info("blk.0.attn_q.bias").is_some(),
        qk_norm: file.tensor_info("blk.0.attn_q_norm.weight").is_some(),
        bos_id: md.get_opt("tokenizer.ggml.bos_token_id")?,
        eos_id: md.get_opt("tokenizer.ggml.eos_token_id")?,
    })
}

/// Converts Q or K rows from llama.cpp's GGUF order to the Hugging Face
/// order (see the module docs): `rows` holds `n_heads · head_dim` rows of
/// `cols` values (`cols == 1` for a bias).
///
/// # Panics
///
/// When `head_dim` is odd or `rows.len() != n_heads · head_dim · cols`;
/// the loader checks both before calling.
pub fn unpermute_rope_rows(rows: &[f32], cols: usize, n_heads: usize, head_dim: usize) -> Vec<f32> {
    assert!(head_dim.is_multiple_of(2), "head_dim {head_dim} is odd");
    assert_eq!(rows.len(), n_heads * head_dim * cols, "row count");
    let half = head_dim / 2;
    let mut out = vec![0.0; rows.len()];
    for (src_head, dst_head) in rows
        .chunks_exact(head_dim * cols)
        .zip(out.chunks_exact_mut(head_dim * cols))
    {
        for i in 0..half {
            let (even, odd) = (2 * i * cols, (2 * i + 1) * cols);
            dst_head[i * cols..(i + 1) * cols].copy_from_slice(&src_head[even..even + cols]);
            dst_head[(half + i) * cols..(half + i + 1) * cols]
                .copy_from_slice(&src_head[odd..odd + cols]);
        }
    }
    out
}

/// The inverse of [`unpermute_rope_rows`]: Hugging Face order to GGUF order
/// (what llama.cpp's converter does).
///
/// # Panics
///
/// As [`unpermute_rope_rows`].
pub fn permute_rope_rows(rows: &[f32], cols: usize, n_heads: usize, head_dim: usize) -> Vec<f32> {
    assert!(head_dim.is_multiple_of(2), "head_dim {head_dim} is odd");
    assert_eq!(rows.len(), n_heads * head_dim * cols, "row count");
    let half = head_dim / 2;
    let mut out = vec![0.0; rows.len()];
    for (src_head, dst_head) in rows
        .chunks_exact(head_dim * cols)
        .zip(out.chunks_exact_mut(head_dim * cols))
    {
        for r in 0..head_dim {
            // GGUF row r holds HF row (r / 2) + (r % 2) · D/2.
            let hf = r / 2 + (r % 2) * half;
            dst_head[r * cols..(r + 1) * cols]
                .copy_from_slice(&src_head[hf * cols..(hf + 1) * cols]);
        }
    }
    out
}

fn load_layer(file: &GgufFile, c: &ModelConfig, i: usize) -> Result<LayerWeights, LoadError> {
    let (d, f) = (c.d_model as usize, c.d_ffn as usize);
    let (q, kv, hd) = (c.q_dim() as usize, c.kv_dim() as usize, c.head_dim as usize);
    let (nh, nkv) = (c.n_heads as usize, c.n_kv_heads as usize);
    let n = |s: &str| format!("blk.{i}.{s}");
    // Only llama GGUFs carry the converter's Q/K row permutation.
    let rope_rows = |m: Matrix, heads: usize| -> Result<Matrix, LoadError> {
        if c.arch != Arch::Llama {
            return Ok(m);
        }
        if hd % 2 != 0 || m.rows != heads * hd {
            return Err(ModelError::Config(format!(
                "cannot un-permute {heads} heads of {hd} rows"
            ))
            .into());
        }
        let data = unpermute_rope_rows(&m.data, m.cols, heads, hd);
        Ok(Matrix::new(m.rows, m.cols, data)?)
    };
    let bias =
        |name: &str, len: usize, heads: Option<usize>| -> Result<Option<Vec<f32>>, LoadError> {
            let name = n(name);
            if file.tensor_info(&name).is_none() {
                return Ok(None);
            }
            let b = vector(file, &name, len)?;
            Ok(Some(match heads {
                Some(h) => rope_rows(Matrix::new(len, 1, b)?, h)?.data,
                None => b,
            }))
        };
    let norm = |name: &str| -> Result<Option<Vec<f32>>, LoadError> {
        let name = n(name);
        match file.tensor_info(&name) {
            None => Ok(None),
            Some(_) => Ok(Some(vector(file, &name, hd)?)),
        }
    };
    Ok(LayerWeights {
        attn_norm: vector(file, &n("attn_norm.weight"), d)?,
        wq: rope_rows(matrix(file, &n("attn_q.weight"), q, d)?, nh)?,
        wk: rope_rows(matrix(file, &n("attn_k.weight"), kv, d)?, nkv)?,
        wv: matrix(file, &n("attn_v.weight"), kv, d)?,
        wo: matrix(file, &n("attn_output.weight"), d, q)?,
        bq: bias("attn_q.bias", q, Some(nh))?,
        bk: bias("attn_k.bias", kv, Some(nkv))?,
        bv: bias("attn_v.bias", kv, None)?,
        q_norm: norm("attn_q_norm.weight")?,
        k_norm: norm("attn_k_norm.weight")?,
        ffn_norm: vector(file, &n("ffn_norm.weight"), d)?,
        w_gate: matrix(file, &n("ffn_gate.weight"), f, d)?,
        w_up: matrix(file, &n("ffn_up.weight"), f, d)?,
        w_down: matrix(file, &n("ffn_down.weight"), d, f)?,
    })
}

/// Tensor `name` as a `rows × cols` matrix; its GGUF dims must be
/// `[cols, rows]`.
fn matrix(file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Matrix, LoadError> {
    let data = tensor(file, name, &[rows, cols])?;
    Ok(Matrix::new(rows, cols, data)?)
}

/// Tensor `name` as a vector of `len`.
fn vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, LoadError> {
    tensor(file, name, &[len])
}

/// Tensor `name` dequantized, after checking its shape (slowest-first).
fn tensor(file: &GgufFile, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
    let info = file
        .tensor_info(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
    if info.shape() != shape {
        return Err(ModelError::Shape {
            name: name.to_string(),
            expected: shape.to_vec(),
            found: info.shape(),
        }
        .into());
    }
    Ok(file.dequantize(name)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_tiny_matrix() {
        // 2 heads of head_dim 4, 2 columns. GGUF row r of head h holds the
        // value 10·(4h + r) + column, so each row is identifiable.
        let gguf: Vec<f32> = (0..8)
            .flat_map(|r| (0..2).map(move |c| (10 * r + c) as f32))
            .collect();
        let hf = unpermute_rope_rows(&gguf, 2, 2, 4);
        // HF rows of head 0: GGUF rows 0, 2 (first half), 1, 3 (second half).
        let want_rows = [0, 2, 1, 3, 4, 6, 5, 7];
        let want: Vec<f32> = want_rows
            .iter()
            .flat_map(|&r| (0..2).map(move |c| (10 * r + c) as f32))
            .collect();
        assert_eq!(hf, want);
        assert_eq!(permute_rope_rows(&hf, 2, 2, 4), gguf);
    }

    #[test]
    fn permutation_matches_the_converters_reshape() {
        // llama.cpp's converter: w.reshape(n_head, 2, D/2, cols)
        //   .swapaxes(1, 2).reshape(n_head·D, cols), written out as indices:
        // out[h, i, s] = w[h, s, i] with out row (h, i, s) = h·D + 2i + s.
        let (heads, d, cols) = (3, 8, 5);
        let hf: Vec<f32> = (0..heads * d * cols).map(|x| x as f32).collect();
        let mut conv = vec![0.0; hf.len()];
        for h in 0..heads {
            for s in 0..2 {
                for i in 0..d / 2 {
                    let src_row = h * d + s * (d / 2) + i;
                    let dst_row = h * d + 2 * i + s;
                    conv[dst_row * cols..(dst_row + 1) * cols]
                        .copy_from_slice(&hf[src_row * cols..(src_row + 1) * cols]);
                }
            }
        }
        assert_eq!(permute_rope_rows(&hf, cols, heads, d), conv);
        assert_eq!(unpermute_rope_rows(&conv, cols, heads, d), hf);
    }
}
