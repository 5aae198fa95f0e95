//! The FP32 transformer forward pass on a CUDA device, weights and
//! activations resident there: `nq-host eval --device cuda` (checkpoints,
//! and blobs through their dequantized weights).
//!
//! It computes what [`crate::model::forward::forward`] computes, op for
//! op: cuBLAS for the products, the kernels of `nq-cuda/kernels/forward.cu`
//! for RMSNorm, bias, RoPE (the same angle table, built on the host),
//! causal grouped-query attention, SiLU·mul and the residual adds. Only the
//! token embeddings go up (gathered on the host) and the logits come back.

use std::sync::Arc;

use nq_cuda::{Buf, Gpu, Op};

use super::CudaBackend;
use crate::model::forward::{embed, RopeTable};
use crate::model::{Matrix, ModelError, ModelWeights};

/// One block's weights on the device.
struct GpuLayer {
    attn_norm: Buf,
    wq: Buf,
    wk: Buf,
    wv: Buf,
    wo: Buf,
    bq: Option<Buf>,
    bk: Option<Buf>,
    bv: Option<Buf>,
    q_norm: Option<Buf>,
    k_norm: Option<Buf>,
    ffn_norm: Buf,
    w_gate: Buf,
    w_up: Buf,
    w_down: Buf,
}

/// A model uploaded to a GPU.
pub struct GpuModel<'w> {
    w: &'w ModelWeights,
    device: Arc<CudaBackend>,
    layers: Vec<GpuLayer>,
    output_norm: Buf,
    head: Buf,
}

fn dev(e: nq_cuda::CudaError) -> ModelError {
    ModelError::Config(format!("GPU: {e}"))
}

impl<'w> GpuModel<'w> {
    /// Uploads every weight of `w` (f32) to `device`.
    pub fn new(w: &'w ModelWeights, device: Arc<CudaBackend>) -> Result<Self, ModelError> {
        let gpu = device.gpu();
        let up = |v: &[f32]| gpu.upload(v).map_err(dev);
        let mat = |m: &Matrix| up(&m.data);
        let opt = |v: Option<&[f32]>| v.map(up).transpose();
        let layers = w
            .layers
            .iter()
            .map(|l| {
                Ok(GpuLayer {
                    attn_norm: up(&l.attn_norm)?,
                    wq: mat(&l.wq)?,
                    wk: mat(&l.wk)?,
                    wv: mat(&l.wv)?,
                    wo: mat(&l.wo)?,
                    bq: opt(l.bq.as_deref())?,
                    bk: opt(l.bk.as_deref())?,
                    bv: opt(l.bv.as_deref())?,
                    q_norm: opt(l.q_norm.as_deref())?,
                    k_norm: opt(l.k_norm.as_deref())?,
                    ffn_norm: up(&l.ffn_norm)?,
                    w_gate: mat(&l.w_gate)?,
                    w_up: mat(&l.w_up)?,
                    w_down: mat(&l.w_down)?,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Self {
            output_norm: up(&w.output_norm)?,
            head: mat(w.lm_head())?,
            w,
            device,
            layers,
        })
    }

    /// Logits (`t × vocab`) of one sequence from position 0, as
    /// [`crate::model::forward::forward`] without a tape.
    pub fn forward(&self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let c = &self.w.config;
        let t = tokens.len();
        if t == 0 {
            return Err(ModelError::Config("empty token sequence".into()));
        }
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
        let (cos, sin) = (g.upload(cos).map_err(dev)?, g.upload(sin).map_err(dev)?);
        let zeros = |n: usize| g.zeros(n).map_err(dev);
        let mut x = g.upload(&embed(self.w, tokens)?).map_err(dev)?;
        let (mut h1, mut q, mut k, mut v) = (
            zeros(t * d)?,
            zeros(t * qd)?,
            zeros(t * kvd)?,
            zeros(t * kvd)?,
        );
        let (mut attn, mut o) = (zeros(t * qd)?, zeros(t * d)?);
        let (mut gate, mut upb, mut act) = (zeros(t * f)?, zeros(t * f)?, zeros(t * f)?);
        let linear = |y: &mut Buf, x: &Buf, w: &Buf, b: Option<&Buf>, rows: usize, cols: usize| {
            g.matmul(y, x, w, Op::Nt, (t, rows, cols))?;
            if let Some(b) = b {
                g.add_bias(y, b, t)?;
            }
            Ok::<(), nq_cuda::CudaError>(())
        };
        for l in &self.layers {
            (|| {
                g.rmsnorm(&x, &l.attn_norm, &mut h1, t, eps)?;
                linear(&mut q, &h1, &l.wq, l.bq.as_ref(), qd, d)?;
                linear(&mut k, &h1, &l.wk, l.bk.as_ref(), kvd, d)?;
                linear(&mut v, &h1, &l.wv, l.bv.as_ref(), kvd, d)?;
                if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                    g.rmsnorm_in_place(&mut q, qn, t * h, eps)?;
                    g.rmsnorm_in_place(&mut k, kn, t * kvh, eps)?;
                }
                g.rope(&mut q, &cos, &sin, t, h)?;
                g.rope(&mut k, &cos, &sin, t, kvh)?;
                g.attention(&q, &k, &v, &mut attn, t, (h, kvh, hd))?;
                linear(&mut o, &attn, &l.wo, None, d, qd)?;
                g.add_assign(&mut x, &o)?;
                g.rmsnorm(&x, &l.ffn_norm, &mut h1, t, eps)?;
                linear(&mut gate, &h1, &l.w_gate, None, f, d)?;
                linear(&mut upb, &h1, &l.w_up, None, f, d)?;
                g.silu_mul(&mut act, &gate, &upb)?;
                linear(&mut o, &act, &l.w_down, None, d, f)?;
                g.add_assign(&mut x, &o)
            })()
            .map_err(dev)?;
        }
        let mut logits = zeros(t * vocab)?;
        g.rmsnorm(&x, &self.output_norm, &mut h1, t, eps)
            .and_then(|()| g.matmul(&mut logits, &h1, &self.head, Op::Nt, (t, vocab, d)))
            .map_err(dev)?;
        let mut out = vec![0.0f32; t * vocab];
        g.download(&logits, &mut out).map_err(dev)?;
        Ok(out)
    }
}
