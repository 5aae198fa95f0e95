//! The transformer forward pass on a CUDA device, weights and activations
//! resident there: `nq-host eval --device cuda`.
//!
//! It computes what [`crate::model::forward::forward`] computes, op for
//! op: cuBLAS for dense products, the kernels of `nq-cuda/kernels/` for
//! RMSNorm, bias, RoPE (the same angle table, built on the host), causal
//! grouped-query attention, SiLU·mul and the residual adds. A blob's
//! factorized and binary layers stay packed on the device
//! ([`GpuModel::from_blob`]): `y = s_post ⊙ U·(V·(s_pre ⊙ x))` through the
//! sign-product kernel of `signs.cu`, reading the blob's own layout. Only
//! the token embeddings go up (gathered on the host) and the logits come
//! back.

use std::borrow::Cow;
use std::sync::Arc;

use nq_core::blob::Head;
use nq_core::layers::Linear;
use nq_core::{BlobView, SignMatrix};
use nq_cuda::{Buf, CudaError, Gpu, Op};

use super::CudaBackend;
use crate::model::forward::{embed_rows, RopeTable};
use crate::model::{Matrix, ModelConfig, ModelError, ModelWeights};
use crate::quant::export::{dense_vec, embedding_matrix, linear_to_dense};

/// A packed sign matrix on the device.
struct GpuSigns {
    bytes: nq_cuda::CudaSlice<u8>,
    rows: usize,
    cols: usize,
    col_bytes: usize,
}

/// One linear layer on the device, in the form it is stored.
enum GpuLinear {
    /// f32 weight (`out × in`).
    Dense { w: Buf, out: usize, inp: usize },
    /// `s_post ⊙ U·(V·(s_pre ⊙ x))`.
    Factorized {
        u: GpuSigns,
        v: GpuSigns,
        s_pre: Buf,
        s_post: Buf,
    },
    /// `s_row ⊙ S·(s_col ⊙ x)`.
    Binary { s: GpuSigns, s_col: Buf, s_row: Buf },
}

/// One block's weights on the device.
struct GpuLayer {
    attn_norm: Buf,
    wq: GpuLinear,
    wk: GpuLinear,
    wv: GpuLinear,
    wo: GpuLinear,
    bq: Option<Buf>,
    bk: Option<Buf>,
    bv: Option<Buf>,
    q_norm: Option<Buf>,
    k_norm: Option<Buf>,
    ffn_norm: Buf,
    w_gate: GpuLinear,
    w_up: GpuLinear,
    w_down: GpuLinear,
}

/// A model on a GPU.
pub struct GpuModel<'w> {
    config: ModelConfig,
    /// Token embeddings, on the host (rows are gathered there).
    embd: Cow<'w, Matrix>,
    device: Arc<CudaBackend>,
    layers: Vec<GpuLayer>,
    output_norm: Buf,
    head: GpuLinear,
}

fn dev(e: CudaError) -> ModelError {
    ModelError::Config(format!("GPU: {e}"))
}

fn dense(g: &Gpu, m: &Matrix) -> Result<GpuLinear, CudaError> {
    Ok(GpuLinear::Dense {
        w: g.upload(&m.data)?,
        out: m.rows,
        inp: m.cols,
    })
}

fn signs(g: &Gpu, s: &SignMatrix<&[u8]>) -> Result<GpuSigns, CudaError> {
    Ok(GpuSigns {
        bytes: g.upload_bytes(s.as_bytes())?,
        rows: s.rows(),
        cols: s.cols(),
        col_bytes: s.col_bytes(),
    })
}

/// A blob layer on the device (packed when it is packed) and its bias.
fn blob_linear(g: &Gpu, l: &Linear<'_>) -> Result<(GpuLinear, Option<Vec<f32>>), CudaError> {
    let up = |v: Vec<f32>| g.upload(&v);
    Ok(match l {
        Linear::Factorized(f) => (
            GpuLinear::Factorized {
                u: signs(g, f.u())?,
                v: signs(g, f.v())?,
                s_pre: up(f.s_pre().iter().collect())?,
                s_post: up(f.s_post().iter().collect())?,
            },
            f.bias().map(|b| b.iter().collect()),
        ),
        Linear::Binary(b) => (
            GpuLinear::Binary {
                s: signs(g, b.signs())?,
                s_col: up(b.s_col().iter().collect())?,
                s_row: up(b.s_row().iter().collect())?,
            },
            b.bias().map(|b| b.iter().collect()),
        ),
        Linear::Dense(_) => {
            let (w, bias) = linear_to_dense(l);
            (dense(g, &w)?, bias)
        }
    })
}

impl GpuLinear {
    fn out_features(&self) -> usize {
        match self {
            Self::Dense { out, .. } => *out,
            Self::Factorized { u, .. } => u.rows,
            Self::Binary { s, .. } => s.rows,
        }
    }

    /// `y = x · Wᵀ` for `t` rows of `x`.
    fn forward(&self, g: &Gpu, x: &Buf, t: usize, y: &mut Buf) -> Result<(), CudaError> {
        let sign = |s: &GpuSigns, x: &Buf, y: &mut Buf| {
            g.sign_matmul(&s.bytes, (s.rows, s.cols, s.col_bytes), x, t, y)
        };
        match self {
            Self::Dense { w, out, inp } => g.matmul(y, x, w, Op::Nt, (t, *out, *inp)),
            Self::Factorized {
                u,
                v,
                s_pre,
                s_post,
            } => {
                let mut z = g.zeros(x.len())?;
                g.copy(&mut z, x)?;
                g.scale_columns(&mut z, s_pre, t)?;
                let mut mid = g.zeros(t * v.rows)?;
                sign(v, &z, &mut mid)?;
                sign(u, &mid, y)?;
                g.scale_columns(y, s_post, t)
            }
            Self::Binary { s, s_col, s_row } => {
                let mut z = g.zeros(x.len())?;
                g.copy(&mut z, x)?;
                g.scale_columns(&mut z, s_col, t)?;
                sign(s, &z, y)?;
                g.scale_columns(y, s_row, t)
            }
        }
    }
}

impl<'w> GpuModel<'w> {
    /// Uploads every weight of `w` (f32) to `device`.
    pub fn new(w: &'w ModelWeights, device: Arc<CudaBackend>) -> Result<Self, ModelError> {
        let g = device.gpu();
        let up = |v: &[f32]| g.upload(v);
        let opt = |v: Option<&[f32]>| v.map(up).transpose();
        let layers = w
            .layers
            .iter()
            .map(|l| {
                Ok(GpuLayer {
                    attn_norm: up(&l.attn_norm)?,
                    wq: dense(g, &l.wq)?,
                    wk: dense(g, &l.wk)?,
                    wv: dense(g, &l.wv)?,
                    wo: dense(g, &l.wo)?,
                    bq: opt(l.bq.as_deref())?,
                    bk: opt(l.bk.as_deref())?,
                    bv: opt(l.bv.as_deref())?,
                    q_norm: opt(l.q_norm.as_deref())?,
                    k_norm: opt(l.k_norm.as_deref())?,
                    ffn_norm: up(&l.ffn_norm)?,
                    w_gate: dense(g, &l.w_gate)?,
                    w_up: dense(g, &l.w_up)?,
                    w_down: dense(g, &l.w_down)?,
                })
            })
            .collect::<Result<_, CudaError>>()
            .map_err(dev)?;
        Ok(Self {
            output_norm: up(&w.output_norm).map_err(dev)?,
            head: dense(g, w.lm_head()).map_err(dev)?,
            config: w.config,
            embd: Cow::Borrowed(&w.token_embd),
            device,
            layers,
        })
    }

    /// Uploads a blob: factorized and binary layers packed as stored, the
    /// rest (norms, dense layers, a row-table head) as f32. The embedding
    /// stays on the host, dequantized.
    pub fn from_blob(
        view: &BlobView<'_>,
        device: Arc<CudaBackend>,
    ) -> Result<GpuModel<'static>, ModelError> {
        let blob = |e: nq_core::BlobError| ModelError::Config(format!("blob: {e}"));
        let c = *view.config();
        let g = device.gpu();
        let embd = embedding_matrix(&view.token_embd().map_err(blob)?);
        let head = match view.lm_head().map_err(blob)? {
            // Tied: the head is the embedding itself.
            Head::Embedding(_) if c.tied_embeddings => dense(g, &embd).map_err(dev)?,
            Head::Embedding(e) => dense(g, &embedding_matrix(&e)).map_err(dev)?,
            Head::Linear(l) => blob_linear(g, &l).map_err(dev)?.0,
        };
        let mut layers = Vec::with_capacity(c.n_layers as usize);
        for i in 0..c.n_layers {
            let b = view.block(i).map_err(blob)?;
            let up = |v: Vec<f32>| g.upload(&v).map_err(dev);
            let bias = |v: Option<Vec<f32>>| -> Result<Option<Buf>, ModelError> {
                v.filter(|_| c.attn_bias).map(&up).transpose()
            };
            let (wq, bq) = blob_linear(g, &b.attn_q).map_err(dev)?;
            let (wk, bk) = blob_linear(g, &b.attn_k).map_err(dev)?;
            let (wv, bv) = blob_linear(g, &b.attn_v).map_err(dev)?;
            layers.push(GpuLayer {
                attn_norm: up(dense_vec(&b.attn_norm))?,
                wq,
                wk,
                wv,
                wo: blob_linear(g, &b.attn_output).map_err(dev)?.0,
                bq: bias(bq)?,
                bk: bias(bk)?,
                bv: bias(bv)?,
                q_norm: b.q_norm.as_ref().map(|t| up(dense_vec(t))).transpose()?,
                k_norm: b.k_norm.as_ref().map(|t| up(dense_vec(t))).transpose()?,
                ffn_norm: up(dense_vec(&b.ffn_norm))?,
                w_gate: blob_linear(g, &b.ffn_gate).map_err(dev)?.0,
                w_up: blob_linear(g, &b.ffn_up).map_err(dev)?.0,
                w_down: blob_linear(g, &b.ffn_down).map_err(dev)?.0,
            });
        }
        let output_norm = g
            .upload(&dense_vec(&view.output_norm().map_err(blob)?))
            .map_err(dev)?;
        Ok(GpuModel {
            config: c,
            embd: Cow::Owned(embd),
            device,
            layers,
            output_norm,
            head,
        })
    }

    /// Logits (`t × vocab`) of one sequence from position 0, as
    /// [`crate::model::forward::forward`] without a tape.
    pub fn forward(&self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let t = tokens.len();
        if t == 0 {
            return Err(ModelError::Config("empty token sequence".into()));
        }
        let x = embed_rows(&self.embd, tokens)?;
        self.run(&x, t).map_err(dev)
    }

    fn run(&self, x_host: &[f32], t: usize) -> Result<Vec<f32>, CudaError> {
        let c = &self.config;
        let g: &Gpu = self.device.gpu();
        let (d, f, vocab) = (c.d_model as usize, c.d_ffn as usize, c.vocab_size as usize);
        let (h, kvh, hd) = (
            c.n_heads as usize,
            c.n_kv_heads as usize,
            c.head_dim as usize,
        );
        let (qd, kvd) = (h * hd, kvh * hd);
        let eps = c.norm_eps;
        let rope = RopeTable::new(hd, c.rope_theta, t);
        let (cos, sin) = rope.tables();
        let (cos, sin) = (g.upload(cos)?, g.upload(sin)?);
        let mut x = g.upload(x_host)?;
        let (mut h1, mut q, mut k, mut v) = (
            g.zeros(t * d)?,
            g.zeros(t * qd)?,
            g.zeros(t * kvd)?,
            g.zeros(t * kvd)?,
        );
        let (mut attn, mut o) = (g.zeros(t * qd)?, g.zeros(t * d)?);
        let (mut gate, mut upb, mut act) = (g.zeros(t * f)?, g.zeros(t * f)?, g.zeros(t * f)?);
        let linear = |y: &mut Buf, x: &Buf, l: &GpuLinear, b: Option<&Buf>| {
            debug_assert_eq!(y.len(), t * l.out_features());
            l.forward(g, x, t, y)?;
            match b {
                Some(b) => g.add_bias(y, b, t),
                None => Ok(()),
            }
        };
        for l in &self.layers {
            g.rmsnorm(&x, &l.attn_norm, &mut h1, t, eps)?;
            linear(&mut q, &h1, &l.wq, l.bq.as_ref())?;
            linear(&mut k, &h1, &l.wk, l.bk.as_ref())?;
            linear(&mut v, &h1, &l.wv, l.bv.as_ref())?;
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                g.rmsnorm_in_place(&mut q, qn, t * h, eps)?;
                g.rmsnorm_in_place(&mut k, kn, t * kvh, eps)?;
            }
            g.rope(&mut q, &cos, &sin, t, h)?;
            g.rope(&mut k, &cos, &sin, t, kvh)?;
            g.attention(&q, &k, &v, &mut attn, t, (h, kvh, hd))?;
            linear(&mut o, &attn, &l.wo, None)?;
            g.add_assign(&mut x, &o)?;
            g.rmsnorm(&x, &l.ffn_norm, &mut h1, t, eps)?;
            linear(&mut gate, &h1, &l.w_gate, None)?;
            linear(&mut upb, &h1, &l.w_up, None)?;
            g.silu_mul(&mut act, &gate, &upb)?;
            linear(&mut o, &act, &l.w_down, None)?;
            g.add_assign(&mut x, &o)?;
        }
        let mut logits = g.zeros(t * vocab)?;
        g.rmsnorm(&x, &self.output_norm, &mut h1, t, eps)?;
        linear(&mut logits, &h1, &self.head, None)?;
        let mut out = vec![0.0f32; t * vocab];
        g.download(&logits, &mut out)?;
        Ok(out)
    }
}
