//! The full-precision model on the host: weights as f32, checked shapes.
//!
//! Every reader (GGUF, Hugging Face safetensors) produces a [`ModelWeights`];
//! the reference forward/backward, calibration and the quantizer consume it.
//! Q and K projection rows are always in the Hugging Face layout ("rotate
//! halves" RoPE); readers of other layouts convert on load.

pub mod backward;
pub mod forward;
pub mod hf;
pub mod load_gguf;
pub mod synthetic;

pub use load_gguf::{load_gguf, LoadError};
pub use nq_core::blob::{Arch, ModelConfig};

/// A row-major f32 matrix (`rows × cols`; a linear layer is `out × in`).
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    /// Rows (output features for a linear layer).
    pub rows: usize,
    /// Columns (input features for a linear layer).
    pub cols: usize,
    /// `rows · cols` values, row-major.
    pub data: Vec<f32>,
}

impl Matrix {
    /// Wraps `data`; errors when the length does not match.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, ModelError> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(ModelError::Shape {
                name: String::new(),
                expected: vec![rows, cols],
                found: vec![data.len()],
            });
        }
        Ok(Self { rows, cols, data })
    }

    /// A zero matrix.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// The weights of one decoder block.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights {
    /// Pre-attention RMSNorm weight (`d_model`).
    pub attn_norm: Vec<f32>,
    /// Query projection (`n_heads·head_dim × d_model`), HF row order.
    pub wq: Matrix,
    /// Key projection (`n_kv_heads·head_dim × d_model`), HF row order.
    pub wk: Matrix,
    /// Value projection (`n_kv_heads·head_dim × d_model`).
    pub wv: Matrix,
    /// Attention output projection (`d_model × n_heads·head_dim`).
    pub wo: Matrix,
    /// Query bias (qwen2), HF order.
    pub bq: Option<Vec<f32>>,
    /// Key bias (qwen2), HF order.
    pub bk: Option<Vec<f32>>,
    /// Value bias (qwen2).
    pub bv: Option<Vec<f32>>,
    /// Per-head query RMSNorm weight (qwen3, `head_dim`).
    pub q_norm: Option<Vec<f32>>,
    /// Per-head key RMSNorm weight (qwen3, `head_dim`).
    pub k_norm: Option<Vec<f32>>,
    /// Pre-FFN RMSNorm weight (`d_model`).
    pub ffn_norm: Vec<f32>,
    /// SwiGLU gate (`d_ffn × d_model`).
    pub w_gate: Matrix,
    /// SwiGLU up (`d_ffn × d_model`).
    pub w_up: Matrix,
    /// SwiGLU down (`d_model × d_ffn`).
    pub w_down: Matrix,
}

/// A whole Llama-family model in f32.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelWeights {
    /// Architecture and dimensions.
    pub config: ModelConfig,
    /// Token embeddings (`vocab × d_model`).
    pub token_embd: Matrix,
    /// Final RMSNorm weight (`d_model`).
    pub output_norm: Vec<f32>,
    /// LM head (`vocab × d_model`); `None` when tied to `token_embd`.
    pub output: Option<Matrix>,
    /// Decoder blocks.
    pub layers: Vec<LayerWeights>,
}

/// Why a model could not be loaded or is inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor the architecture needs is absent.
    #[error("missing tensor {0}")]
    MissingTensor(String),
    /// A tensor has the wrong shape.
    #[error("tensor {name}: shape {found:?}, expected {expected:?}")]
    Shape {
        /// Tensor name.
        name: String,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// Shape found.
        found: Vec<usize>,
    },
    /// A weight is NaN or infinite.
    #[error("tensor {name}: non-finite value at index {index}")]
    NonFinite {
        /// Tensor name.
        name: String,
        /// Flat index of the first bad value.
        index: usize,
    },
    /// The config is unusable.
    #[error("invalid model config: {0}")]
    Config(String),
    /// The architecture is not one we run.
    #[error("unsupported architecture {0:?} (supported: llama, qwen2, qwen3)")]
    UnsupportedArch(String),
}

impl ModelWeights {
    /// Checks every shape against the config and every value for finiteness.
    pub fn validate(&self) -> Result<(), ModelError> {
        let c = &self.config;
        c.validate()
            .map_err(|e| ModelError::Config(e.to_string()))?;
        let (d, q, kv, f, v) = (
            c.d_model as usize,
            c.q_dim() as usize,
            c.kv_dim() as usize,
            c.d_ffn as usize,
            c.vocab_size as usize,
        );
        if self.layers.len() != c.n_layers as usize {
            return Err(ModelError::Config(format!(
                "{} layers loaded, config says {}",
                self.layers.len(),
                c.n_layers
            )));
        }
        check_matrix("token_embd", &self.token_embd, v, d)?;
        check_vector("output_norm", &self.output_norm, d)?;
        match (&self.output, c.tied_embeddings) {
            (Some(m), false) => check_matrix("output", m, v, d)?,
            (None, true) => {}
            (None, false) => return Err(ModelError::MissingTensor("output".into())),
            (Some(_), true) => {
                return Err(ModelError::Config(
                    "tied embeddings but an output matrix is present".into(),
                ))
            }
        }
        for (i, l) in self.layers.iter().enumerate() {
            let n = |s: &str| format!("blk.{i}.{s}");
            check_vector(&n("attn_norm"), &l.attn_norm, d)?;
            check_matrix(&n("attn_q"), &l.wq, q, d)?;
            check_matrix(&n("attn_k"), &l.wk, kv, d)?;
            check_matrix(&n("attn_v"), &l.wv, kv, d)?;
            check_matrix(&n("attn_output"), &l.wo, d, q)?;
            for (name, b, len) in [
                ("attn_q.bias", &l.bq, q),
                ("attn_k.bias", &l.bk, kv),
                ("attn_v.bias", &l.bv, kv),
            ] {
                match (b, c.attn_bias) {
                    (Some(b), true) => check_vector(&n(name), b, len)?,
                    (None, false) => {}
                    (None, true) => return Err(ModelError::MissingTensor(n(name))),
                    (Some(_), false) => {
                        return Err(ModelError::Config(format!(
                            "{} present but config has no attention bias",
                            n(name)
                        )))
                    }
                }
            }
            for (name, w) in [("attn_q_norm", &l.q_norm), ("attn_k_norm", &l.k_norm)] {
                match (w, c.qk_norm) {
                    (Some(w), true) => check_vector(&n(name), w, c.head_dim as usize)?,
                    (None, false) => {}
                    (None, true) => return Err(ModelError::MissingTensor(n(name))),
                    (Some(_), false) => {
                        return Err(ModelError::Config(format!(
                            "{} present but config has no q/k norm",
                            n(name)
                        )))
                    }
                }
            }
            check_vector(&n("ffn_norm"), &l.ffn_norm, d)?;
            check_matrix(&n("ffn_gate"), &l.w_gate, f, d)?;
            check_matrix(&n("ffn_up"), &l.w_up, f, d)?;
            check_matrix(&n("ffn_down"), &l.w_down, d, f)?;
        }
        Ok(())
    }

    /// Number of weights (parameters) in the model, a tied head counted once.
    pub fn n_params(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                    .iter()
                    .map(|m| m.data.len())
                    .sum::<usize>()
                    + l.attn_norm.len()
                    + l.ffn_norm.len()
                    + [&l.bq, &l.bk, &l.bv, &l.q_norm, &l.k_norm]
                        .iter()
                        .map(|v| v.as_ref().map_or(0, Vec::len))
                        .sum::<usize>()
            })
            .sum();
        l + self.token_embd.data.len()
            + self.output_norm.len()
            + self.output.as_ref().map_or(0, |o| o.data.len())
    }

    /// The LM head matrix (the token embedding when tied).
    pub fn lm_head(&self) -> &Matrix {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }
}

fn check_finite(name: &str, data: &[f32]) -> Result<(), ModelError> {
    match data.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(ModelError::NonFinite {
            name: name.to_string(),
            index,
        }),
        None => Ok(()),
    }
}

fn check_matrix(name: &str, m: &Matrix, rows: usize, cols: usize) -> Result<(), ModelError> {
    if m.rows != rows || m.cols != cols || m.data.len() != rows * cols {
        return Err(ModelError::Shape {
            name: name.to_string(),
            expected: vec![rows, cols],
            found: vec![m.rows, m.cols],
        });
    }
    check_finite(name, &m.data)
}

fn check_vector(name: &str, v: &[f32], len: usize) -> Result<(), ModelError> {
    if v.len() != len {
        return Err(ModelError::Shape {
            name: name.to_string(),
            expected: vec![len],
            found: vec![v.len()],
        });
    }
    check_finite(name, v)
}
