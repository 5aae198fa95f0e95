//! One decoder block's forward (with its tape) and backward on a compute
//! device, for block reconstruction there: the block's weights, the tape
//! and the gradients stay in backend buffers; products go through
//! [`Backend::matmul`], the element-wise parts through [`BlockBackend`].
//!
//! It computes what `model::forward::block_forward` and
//! `model::backward::block_backward` compute (without the weight gradients
//! of norms and biases, which reconstruction does not train), operation for
//! operation; `tests/backend.rs` compares the two on the emulated kernels
//! for every architecture.

use crate::backend::{BackendError, BlockBackend, Op};
use crate::model::backward::LinearId;
use crate::model::forward::RopeTable;
use crate::model::{LayerWeights, ModelConfig};

/// A block's parameters in backend buffers.
pub struct DeviceWeights<B: BlockBackend> {
    attn_norm: B::Buf,
    ffn_norm: B::Buf,
    qk_norm: Option<(B::Buf, B::Buf)>,
    /// Weights in [`LinearId::ALL`] order (`out × in`, row-major).
    w: Vec<B::Buf>,
    /// Biases of q, k, v.
    bias: [Option<B::Buf>; 3],
}

impl<B: BlockBackend> DeviceWeights<B> {
    /// Uploads block `l`'s norms, linears and biases.
    pub fn upload(be: &B, l: &LayerWeights) -> Result<Self, BackendError> {
        let up = |b: &Option<Vec<f32>>| b.as_deref().map(|b| be.upload(b)).transpose();
        Ok(Self {
            attn_norm: be.upload(&l.attn_norm)?,
            ffn_norm: be.upload(&l.ffn_norm)?,
            qk_norm: match (&l.q_norm, &l.k_norm) {
                (Some(qn), Some(kn)) => Some((be.upload(qn)?, be.upload(kn)?)),
                _ => None,
            },
            w: LinearId::ALL
                .iter()
                .map(|&id| be.upload(&id.weight(l).data))
                .collect::<Result<Vec<_>, _>>()?,
            bias: [up(&l.bq)?, up(&l.bk)?, up(&l.bv)?],
        })
    }
}

/// Bytes [`DeviceWeights::upload`] puts on the device for block `l` (f32).
pub fn block_bytes(l: &LayerWeights) -> usize {
    let vec = |v: &Option<Vec<f32>>| v.as_ref().map_or(0, Vec::len);
    let linears: usize = LinearId::ALL.iter().map(|id| id.weight(l).data.len()).sum();
    4 * (linears
        + l.attn_norm.len()
        + l.ffn_norm.len()
        + vec(&l.q_norm)
        + vec(&l.k_norm)
        + vec(&l.bq)
        + vec(&l.bk)
        + vec(&l.bv))
}

/// A block's forward and backward on backend `B`.
pub struct DeviceBlock<'b, B: BlockBackend> {
    be: &'b B,
    t: usize,
    d: usize,
    f: usize,
    qd: usize,
    kvd: usize,
    heads: (usize, usize, usize),
    eps: f32,
    p: DeviceWeights<B>,
    cos: B::Buf,
    sin: B::Buf,
    // The tape.
    x_in: B::Buf,
    inv1: B::Buf,
    h1: B::Buf,
    q_pre: B::Buf,
    k_pre: B::Buf,
    inv_q: B::Buf,
    inv_k: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    probs: B::Buf,
    attn: B::Buf,
    x_mid: B::Buf,
    inv2: B::Buf,
    h2: B::Buf,
    gate: B::Buf,
    up: B::Buf,
    act: B::Buf,
    /// Gradients w.r.t. the seven linears' outputs ([`LinearId::ALL`]
    /// order; q and k before their norms and RoPE, as the CPU's).
    d_out: Vec<B::Buf>,
    /// Gradient w.r.t. the block input.
    d_input: B::Buf,
    // Scratch.
    tmp_d: B::Buf,
    d_act: B::Buf,
    d_attn: B::Buf,
    dq: B::Buf,
    dk: B::Buf,
}

impl<'b, B: BlockBackend> DeviceBlock<'b, B> {
    /// Uploads block `l` (config `c`) for windows of `t` tokens, with the
    /// RoPE table `rope` (at least `t` positions).
    pub fn new(
        be: &'b B,
        l: &LayerWeights,
        c: &ModelConfig,
        rope: &RopeTable,
        t: usize,
    ) -> Result<Self, BackendError> {
        Self::with_weights(be, DeviceWeights::upload(be, l)?, c, rope, t)
    }

    /// [`DeviceBlock::new`] with parameters already on the device.
    pub fn with_weights(
        be: &'b B,
        p: DeviceWeights<B>,
        c: &ModelConfig,
        rope: &RopeTable,
        t: usize,
    ) -> Result<Self, BackendError> {
        let (d, f) = (c.d_model as usize, c.d_ffn as usize);
        let (h, kvh, hd) = (
            c.n_heads as usize,
            c.n_kv_heads as usize,
            c.head_dim as usize,
        );
        let (qd, kvd) = (h * hd, kvh * hd);
        let (cos, sin) = rope.tables();
        let half = hd / 2;
        if cos.len() < t * half {
            return Err(BackendError::Device(
                "device block: RoPE table shorter than the window".into(),
            ));
        }
        let z = |len: usize| be.zeros(len);
        let outs = [qd, kvd, kvd, d, f, f, d];
        Ok(Self {
            be,
            t,
            d,
            f,
            qd,
            kvd,
            heads: (h, kvh, hd),
            eps: c.norm_eps,
            p,
            cos: be.upload(&cos[..t * half])?,
            sin: be.upload(&sin[..t * half])?,
            x_in: z(t * d)?,
            inv1: z(t)?,
            h1: z(t * d)?,
            q_pre: z(t * qd)?,
            k_pre: z(t * kvd)?,
            inv_q: z(t * h)?,
            inv_k: z(t * kvh)?,
            q: z(t * qd)?,
            k: z(t * kvd)?,
            v: z(t * kvd)?,
            probs: z(h * t * t)?,
            attn: z(t * qd)?,
            x_mid: z(t * d)?,
            inv2: z(t)?,
            h2: z(t * d)?,
            gate: z(t * f)?,
            up: z(t * f)?,
            act: z(t * f)?,
            d_out: outs
                .iter()
                .map(|&o| z(t * o))
                .collect::<Result<Vec<_>, _>>()?,
            d_input: z(t * d)?,
            tmp_d: z(t * d)?,
            d_act: z(t * f)?,
            d_attn: z(t * qd)?,
            dq: z(t * qd)?,
            dk: z(t * kvd)?,
        })
    }

    /// Exchanges the block's parameters with `other` (another block of the
    /// same model, already on the device).
    pub fn swap_weights(&mut self, other: &mut DeviceWeights<B>) {
        std::mem::swap(&mut self.p, other);
    }

    /// Replaces the weight of `id` with `w` (same shape) already on the
    /// device.
    pub fn set_weight(&mut self, id: LinearId, w: &B::Buf) -> Result<(), BackendError> {
        self.be.copy(&mut self.p.w[id as usize], w)
    }

    /// The weight of `id` on the device.
    pub fn weight(&self, id: LinearId) -> &B::Buf {
        &self.p.w[id as usize]
    }

    /// The weight of `id` on the device, mutably (for an optimizer step).
    pub fn weight_mut(&mut self, id: LinearId) -> &mut B::Buf {
        &mut self.p.w[id as usize]
    }

    /// `(out, in)` of linear `id`.
    pub fn dims(&self, id: LinearId) -> (usize, usize) {
        match id {
            LinearId::Q => (self.qd, self.d),
            LinearId::K | LinearId::V => (self.kvd, self.d),
            LinearId::O => (self.d, self.qd),
            LinearId::Gate | LinearId::Up => (self.f, self.d),
            LinearId::Down => (self.d, self.f),
        }
    }

    /// The block on `x` (`t × d`) into `y`, recording the tape.
    pub fn forward(&mut self, x: &B::Buf, y: &mut B::Buf) -> Result<(), BackendError> {
        let be = self.be;
        let t = self.t;
        let (h, kvh, _) = self.heads;
        let dims = LinearId::ALL.map(|id| self.dims(id));
        // y = x·Wᵀ (+ bias) for linear `id`.
        let lin =
            |w: &[B::Buf], bias: &[Option<B::Buf>; 3], id: LinearId, x: &B::Buf, y: &mut B::Buf| {
                let k = id as usize;
                let (out, inp) = dims[k];
                be.matmul(y, x, &w[k], Op::Nt, (t, out, inp))?;
                if let Some(Some(b)) = bias.get(k) {
                    be.add_bias(y, b)?;
                }
                Ok::<(), BackendError>(())
            };
        be.copy(&mut self.x_in, x)?;
        be.rmsnorm(x, &self.p.attn_norm, self.eps, &mut self.h1, &mut self.inv1)?;
        lin(
            &self.p.w,
            &self.p.bias,
            LinearId::Q,
            &self.h1,
            &mut self.q_pre,
        )?;
        lin(
            &self.p.w,
            &self.p.bias,
            LinearId::K,
            &self.h1,
            &mut self.k_pre,
        )?;
        lin(&self.p.w, &self.p.bias, LinearId::V, &self.h1, &mut self.v)?;
        match &self.p.qk_norm {
            Some((qn, kn)) => {
                be.rmsnorm(&self.q_pre, qn, self.eps, &mut self.q, &mut self.inv_q)?;
                be.rmsnorm(&self.k_pre, kn, self.eps, &mut self.k, &mut self.inv_k)?;
            }
            None => {
                be.copy(&mut self.q, &self.q_pre)?;
                be.copy(&mut self.k, &self.k_pre)?;
            }
        }
        be.rope(&mut self.q, &self.cos, &self.sin, t, h, false)?;
        be.rope(&mut self.k, &self.cos, &self.sin, t, kvh, false)?;
        be.attention(
            &self.q,
            &self.k,
            &self.v,
            &mut self.attn,
            &mut self.probs,
            t,
            self.heads,
        )?;
        be.copy(y, x)?;
        lin(
            &self.p.w,
            &self.p.bias,
            LinearId::O,
            &self.attn,
            &mut self.tmp_d,
        )?;
        be.add_assign(y, &self.tmp_d)?;
        be.copy(&mut self.x_mid, y)?;
        be.rmsnorm(y, &self.p.ffn_norm, self.eps, &mut self.h2, &mut self.inv2)?;
        lin(
            &self.p.w,
            &self.p.bias,
            LinearId::Gate,
            &self.h2,
            &mut self.gate,
        )?;
        lin(
            &self.p.w,
            &self.p.bias,
            LinearId::Up,
            &self.h2,
            &mut self.up,
        )?;
        be.silu_mul(&mut self.act, &self.gate, &self.up)?;
        lin(
            &self.p.w,
            &self.p.bias,
            LinearId::Down,
            &self.act,
            &mut self.tmp_d,
        )?;
        be.add_assign(y, &self.tmp_d)
    }

    /// From `dy = ∂L/∂y` of the last [`DeviceBlock::forward`]: the
    /// gradients w.r.t. every linear's output ([`DeviceBlock::output_grad`])
    /// and w.r.t. the block input ([`DeviceBlock::input_grad`]).
    pub fn backward(&mut self, dy: &B::Buf) -> Result<(), BackendError> {
        let be = self.be;
        let (t, d, f, qd, kvd) = (self.t, self.d, self.f, self.qd, self.kvd);
        let (h, kvh, _) = self.heads;
        let w = &self.p.w;
        let [d_q, d_k, d_v, d_o, d_gate, d_up, d_down] = &mut self.d_out[..] else {
            unreachable!("seven linears")
        };
        // FFN: x_out = x_mid + down(silu(gate) ⊙ up).
        be.copy(d_down, dy)?;
        be.matmul(
            &mut self.d_act,
            dy,
            &w[LinearId::Down as usize],
            Op::Nn,
            (t, f, d),
        )?;
        be.swiglu_backward(&self.gate, &self.up, &self.d_act, d_gate, d_up)?;
        be.matmul(
            &mut self.tmp_d,
            d_gate,
            &w[LinearId::Gate as usize],
            Op::Nn,
            (t, d, f),
        )?;
        be.matmul_acc(
            &mut self.tmp_d,
            d_up,
            &w[LinearId::Up as usize],
            Op::Nn,
            (t, d, f),
        )?;
        // d_mid = dy + the FFN norm's backward; it is also ∂L/∂(o output).
        be.copy(d_o, dy)?;
        be.rmsnorm_backward(
            &self.x_mid,
            &self.p.ffn_norm,
            &self.inv2,
            &self.tmp_d,
            d_o,
            true,
        )?;
        // Attention.
        be.matmul(
            &mut self.d_attn,
            d_o,
            &w[LinearId::O as usize],
            Op::Nn,
            (t, qd, d),
        )?;
        be.attention_backward(
            (&self.q, &self.k, &self.v),
            &self.probs,
            &self.d_attn,
            &mut self.dq,
            &mut self.dk,
            d_v,
            t,
            self.heads,
        )?;
        be.rope(&mut self.dq, &self.cos, &self.sin, t, h, true)?;
        be.rope(&mut self.dk, &self.cos, &self.sin, t, kvh, true)?;
        match &self.p.qk_norm {
            Some((qn, kn)) => {
                be.rmsnorm_backward(&self.q_pre, qn, &self.inv_q, &self.dq, d_q, false)?;
                be.rmsnorm_backward(&self.k_pre, kn, &self.inv_k, &self.dk, d_k, false)?;
            }
            None => {
                be.copy(d_q, &self.dq)?;
                be.copy(d_k, &self.dk)?;
            }
        }
        be.matmul(
            &mut self.tmp_d,
            d_q,
            &w[LinearId::Q as usize],
            Op::Nn,
            (t, d, qd),
        )?;
        for (g, id) in [(&*d_k, LinearId::K), (&*d_v, LinearId::V)] {
            be.matmul_acc(&mut self.tmp_d, g, &w[id as usize], Op::Nn, (t, d, kvd))?;
        }
        be.copy(&mut self.d_input, d_o)?;
        be.rmsnorm_backward(
            &self.x_in,
            &self.p.attn_norm,
            &self.inv1,
            &self.tmp_d,
            &mut self.d_input,
            true,
        )
    }

    /// `∂L/∂(output of id)` from the last backward (`t × out`).
    pub fn output_grad(&self, id: LinearId) -> &B::Buf {
        &self.d_out[id as usize]
    }

    /// `∂L/∂x` from the last backward (`t × d`).
    pub fn input_grad(&self) -> &B::Buf {
        &self.d_input
    }

    /// The input of linear `id` in the last forward (`t × in`).
    pub fn input(&self, id: LinearId) -> &B::Buf {
        match id {
            LinearId::Q | LinearId::K | LinearId::V => &self.h1,
            LinearId::O => &self.attn,
            LinearId::Gate | LinearId::Up => &self.h2,
            LinearId::Down => &self.act,
        }
    }

    /// Tokens per window.
    pub fn tokens(&self) -> usize {
        self.t
    }

    /// `dW = (∂L/∂out)ᵀ · input` for linear `id` (`out × in`) into `dw`.
    pub fn weight_grad(&self, id: LinearId, dw: &mut B::Buf) -> Result<(), BackendError> {
        let dy = &self.d_out[id as usize];
        let (out, inp) = self.dims(id);
        self.be
            .matmul(dw, dy, self.input(id), Op::Tn, (out, inp, self.t))
    }
}

/// Every block of a model run through one [`DeviceBlock`] (one tape, for
/// windows of one length at a time): the blocks' parameters stay on the
/// device when [`DeviceBlocks::new`] is told they fit (plus one spare
/// block's, the tape's own), else each block is uploaded whenever it runs
/// — and then changes `f` makes to the weights are lost with the upload.
pub struct DeviceBlocks<'b, 'w, B: BlockBackend> {
    be: &'b B,
    layers: &'w [LayerWeights],
    config: &'w ModelConfig,
    blk: Option<DeviceBlock<'b, B>>,
    resident: Option<Vec<DeviceWeights<B>>>,
}

impl<'b, 'w, B: BlockBackend> DeviceBlocks<'b, 'w, B> {
    /// The blocks `layers` of a model with config `c`; `resident` uploads
    /// them all now.
    pub fn new(
        be: &'b B,
        layers: &'w [LayerWeights],
        c: &'w ModelConfig,
        resident: bool,
    ) -> Result<Self, BackendError> {
        let resident = if resident {
            Some(
                layers
                    .iter()
                    .map(|l| DeviceWeights::upload(be, l))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        } else {
            None
        };
        Ok(Self {
            be,
            layers,
            config: c,
            blk: None,
            resident,
        })
    }

    /// Runs `f` on block `b` set up for windows of `t` tokens.
    pub fn with_block<R>(
        &mut self,
        b: usize,
        t: usize,
        f: impl FnOnce(&mut DeviceBlock<'b, B>) -> Result<R, BackendError>,
    ) -> Result<R, BackendError> {
        let be = self.be;
        let rebuild = self.blk.as_ref().is_none_or(|blk| blk.t != t);
        if rebuild {
            // The old tape goes before the new one is allocated.
            self.blk = None;
            let c = self.config;
            let rope = RopeTable::new(c.head_dim as usize, c.rope_theta, t);
            let first = DeviceWeights::upload(be, &self.layers[b])?;
            self.blk = Some(DeviceBlock::with_weights(be, first, c, &rope, t)?);
        }
        let blk = self.blk.as_mut().expect("made above");
        match &mut self.resident {
            Some(all) => {
                blk.swap_weights(&mut all[b]);
                let r = f(blk);
                blk.swap_weights(&mut all[b]);
                r
            }
            None => {
                if !rebuild {
                    let mut p = DeviceWeights::upload(be, &self.layers[b])?;
                    blk.swap_weights(&mut p);
                }
                f(blk)
            }
        }
    }
}
