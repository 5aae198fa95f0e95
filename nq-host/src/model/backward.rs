//! The backward pass of the FP32 reference transformer.
//!
//! The quantizer's statistics (DESIGN.md §3) need the gradient of the
//! next-token loss w.r.t. every linear layer's *output*; block
//! reconstruction needs the backward of one block on its own; model
//! reconstruction and error compensation need weight gradients. All three
//! come from here, replaying the [`Tape`] the forward pass recorded.
//!
//! Weight gradients come back in the model's own layout (a [`ModelWeights`]
//! of gradients; the tied LM head folds into `token_embd`). Activation
//! gradients can be kept or handed to a visitor one linear at a time, so a
//! statistics pass never holds more than one block's worth.
//!
//! Products go through [`crate::linalg`]; element-wise work is split across
//! the rayon pool. Sums over rows (norm weights, biases) run in fixed chunks
//! added in order, so results do not depend on the thread count.

use rayon::prelude::*;

use super::forward::{BlockTape, RopeTable, Tape};
use super::{LayerWeights, Matrix, ModelConfig, ModelWeights};
use crate::linalg::{matmul_nn, matmul_strided, matmul_tn};

/// One of the seven linear layers of a decoder block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearId {
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Attention output projection.
    O,
    /// SwiGLU gate.
    Gate,
    /// SwiGLU up.
    Up,
    /// SwiGLU down.
    Down,
}

impl LinearId {
    /// All seven, in forward order.
    pub const ALL: [LinearId; 7] = [
        LinearId::Q,
        LinearId::K,
        LinearId::V,
        LinearId::O,
        LinearId::Gate,
        LinearId::Up,
        LinearId::Down,
    ];

    /// The GGUF-style tensor name (`attn_q`, …, `ffn_down`).
    pub fn name(self) -> &'static str {
        match self {
            LinearId::Q => "attn_q",
            LinearId::K => "attn_k",
            LinearId::V => "attn_v",
            LinearId::O => "attn_output",
            LinearId::Gate => "ffn_gate",
            LinearId::Up => "ffn_up",
            LinearId::Down => "ffn_down",
        }
    }

    /// This linear's weight in a block.
    pub fn weight(self, l: &LayerWeights) -> &Matrix {
        match self {
            LinearId::Q => &l.wq,
            LinearId::K => &l.wk,
            LinearId::V => &l.wv,
            LinearId::O => &l.wo,
            LinearId::Gate => &l.w_gate,
            LinearId::Up => &l.w_up,
            LinearId::Down => &l.w_down,
        }
    }

    /// This linear's weight in a block, mutably.
    pub fn weight_mut(self, l: &mut LayerWeights) -> &mut Matrix {
        match self {
            LinearId::Q => &mut l.wq,
            LinearId::K => &mut l.wk,
            LinearId::V => &mut l.wv,
            LinearId::O => &mut l.wo,
            LinearId::Gate => &mut l.w_gate,
            LinearId::Up => &mut l.w_up,
            LinearId::Down => &mut l.w_down,
        }
    }

    /// This linear's input as the forward recorded it (`t × in`).
    pub fn input(self, tape: &BlockTape) -> &[f32] {
        match self {
            LinearId::Q | LinearId::K | LinearId::V => &tape.h1,
            LinearId::O => &tape.attn,
            LinearId::Gate | LinearId::Up => &tape.h2,
            LinearId::Down => &tape.act,
        }
    }
}

/// Loss gradients w.r.t. the outputs of one block's linears (each `t × out`).
///
/// For q and k this is the projection output itself (bias included), before
/// q/k-norm and RoPE: the tape's `q_pre` / `k_pre`.
#[derive(Clone, Debug, Default)]
pub struct LinearOutputGrads {
    /// Query projection output (`t × q_dim`).
    pub q: Vec<f32>,
    /// Key projection output (`t × kv_dim`).
    pub k: Vec<f32>,
    /// Value projection output (`t × kv_dim`).
    pub v: Vec<f32>,
    /// Attention output projection output (`t × d_model`).
    pub o: Vec<f32>,
    /// Gate pre-activation (`t × d_ffn`).
    pub gate: Vec<f32>,
    /// Up projection output (`t × d_ffn`).
    pub up: Vec<f32>,
    /// Down projection output (`t × d_model`).
    pub down: Vec<f32>,
}

impl LinearOutputGrads {
    /// The gradient for one linear.
    pub fn get(&self, id: LinearId) -> &[f32] {
        match id {
            LinearId::Q => &self.q,
            LinearId::K => &self.k,
            LinearId::V => &self.v,
            LinearId::O => &self.o,
            LinearId::Gate => &self.gate,
            LinearId::Up => &self.up,
            LinearId::Down => &self.down,
        }
    }
}

/// What [`block_backward`] returns.
#[derive(Clone, Debug)]
pub struct BlockGrads {
    /// Gradient w.r.t. the block input (`t × d_model`).
    pub d_input: Vec<f32>,
    /// Gradients w.r.t. every linear's output.
    pub outputs: LinearOutputGrads,
    /// Gradients w.r.t. every weight of the block, in its own layout
    /// (`None` unless asked for).
    pub weights: Option<LayerWeights>,
}

/// Visitor for per-linear output gradients: `(layer, linear, t × out)`.
pub type LinearGradVisitor<'a> = &'a mut dyn FnMut(usize, LinearId, &[f32]);

/// What [`backward`] computes and keeps.
pub struct BackwardOptions<'a> {
    /// Compute weight gradients (statistics need only activation gradients).
    pub weight_grads: bool,
    /// Keep each block's input gradient in [`Grads::block_inputs`].
    pub keep_block_input_grads: bool,
    /// Keep every linear's output gradient in [`Grads::linear_outputs`].
    pub keep_linear_output_grads: bool,
    /// Called once per (layer, linear) with its output gradient, layers from
    /// last to first, linears in [`LinearId::ALL`] order.
    pub on_linear_output_grad: Option<LinearGradVisitor<'a>>,
}

impl<'a> BackwardOptions<'a> {
    /// Everything: weight gradients and every activation gradient kept.
    pub fn full() -> Self {
        Self {
            weight_grads: true,
            keep_block_input_grads: true,
            keep_linear_output_grads: true,
            on_linear_output_grad: None,
        }
    }

    /// For statistics: no weight gradients, nothing kept; each linear's
    /// output gradient goes to `visit` as soon as its block is done.
    pub fn visit_only(visit: LinearGradVisitor<'a>) -> Self {
        Self {
            weight_grads: false,
            keep_block_input_grads: false,
            keep_linear_output_grads: false,
            on_linear_output_grad: Some(visit),
        }
    }
}

impl Default for BackwardOptions<'_> {
    fn default() -> Self {
        Self::full()
    }
}

/// Gradients of a whole backward pass.
#[derive(Clone, Debug)]
pub struct Grads {
    /// Gradient w.r.t. every weight in the model's layout; with tied
    /// embeddings `token_embd` holds the sum of the embedding and LM-head
    /// uses and `output` is `None`. `None` unless `weight_grads`.
    pub weights: Option<ModelWeights>,
    /// Per block (in model order) the gradient w.r.t. its input (`t × d`);
    /// block 0's is the gradient w.r.t. the embeddings. Empty unless
    /// `keep_block_input_grads`.
    pub block_inputs: Vec<Vec<f32>>,
    /// Per block (in model order) the gradients w.r.t. every linear's
    /// output. Empty unless `keep_linear_output_grads`.
    pub linear_outputs: Vec<LinearOutputGrads>,
}

/// Mean next-token cross-entropy over the `t − 1` predictions of `logits`
/// (`t × vocab`; row `i` predicts `tokens[i + 1]`) and its gradient w.r.t.
/// the logits (the last row's is zero). Log-softmax runs in f64. With fewer
/// than two tokens there is no prediction: loss 0, zero gradient.
///
/// # Panics
/// If `logits` is not `tokens.len() × vocab` or a token is `≥ vocab`.
pub fn loss_and_dlogits(logits: &[f32], tokens: &[u32], vocab: usize) -> (f64, Vec<f32>) {
    let t = tokens.len();
    assert_eq!(logits.len(), t * vocab, "logits must be tokens × vocab");
    let mut dlogits = vec![0.0f32; t * vocab];
    if t < 2 {
        return (0.0, dlogits);
    }
    let n = (t - 1) as f64;
    let losses: Vec<f64> = dlogits
        .par_chunks_mut(vocab)
        .zip(logits.par_chunks(vocab))
        .zip(tokens[1..].par_iter())
        .map(|((g, z), &next)| {
            let next = next as usize;
            assert!(
                next < vocab,
                "token {next} outside the vocabulary ({vocab})"
            );
            let max = f64::from(z.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            let sum: f64 = z.iter().map(|&v| (f64::from(v) - max).exp()).sum();
            for (j, (g, &v)) in g.iter_mut().zip(z).enumerate() {
                let p = (f64::from(v) - max).exp() / sum;
                *g = ((p - f64::from(u8::from(j == next))) / n) as f32;
            }
            max + sum.ln() - f64::from(z[next])
        })
        .collect();
    (losses.iter().sum::<f64>() / n, dlogits)
}

/// The backward pass of [`super::forward::forward`]: `dlogits` (`t × vocab`)
/// is the loss gradient w.r.t. the logits, `tape` the forward's record.
///
/// # Panics
/// If the tape or `dlogits` do not match the model's shapes.
pub fn backward(
    w: &ModelWeights,
    tape: &Tape,
    dlogits: &[f32],
    opts: &mut BackwardOptions<'_>,
) -> Grads {
    let c = &w.config;
    let (d, vocab, t) = (c.d_model as usize, c.vocab_size as usize, tape.tokens.len());
    assert_eq!(dlogits.len(), t * vocab, "dlogits must be t × vocab");
    assert_eq!(tape.blocks.len(), w.layers.len(), "tape from another model");
    assert_eq!(tape.h_final.len(), t * d, "tape without final activations");
    let wg = opts.weight_grads;

    // LM head: logits = h_final · headᵀ.
    let d_head = wg.then(|| weight_grad(dlogits, &tape.h_final, vocab, d, t));
    let mut d_output_norm = wg.then(|| vec![0.0f32; d]);
    let mut dx = head_backward(
        w,
        &tape.x_final,
        &tape.inv_rms_final,
        dlogits,
        d_output_norm.as_deref_mut(),
    );

    // Blocks, last to first.
    let rope = RopeTable::new(c.head_dim as usize, c.rope_theta, t);
    let n = w.layers.len();
    let mut layer_grads = Vec::with_capacity(if wg { n } else { 0 });
    let mut block_inputs = Vec::with_capacity(if opts.keep_block_input_grads { n } else { 0 });
    let mut linear_outputs = Vec::with_capacity(if opts.keep_linear_output_grads { n } else { 0 });
    for (i, (l, bt)) in w.layers.iter().zip(&tape.blocks).enumerate().rev() {
        let g = block_backward(l, c, &rope, bt, &dx, wg);
        if let Some(visit) = opts.on_linear_output_grad.as_deref_mut() {
            for id in LinearId::ALL {
                visit(i, id, g.outputs.get(id));
            }
        }
        dx = g.d_input;
        if opts.keep_block_input_grads {
            block_inputs.push(dx.clone());
        }
        if opts.keep_linear_output_grads {
            linear_outputs.push(g.outputs);
        }
        layer_grads.extend(g.weights);
    }
    block_inputs.reverse();
    linear_outputs.reverse();
    layer_grads.reverse();

    // Embedding gather → scatter-add, plus the head when tied.
    let weights = d_head.map(|d_head| {
        // Tied exactly when `lm_head` falls back to the embedding.
        let (mut d_embd, output) = if w.output.is_none() {
            (d_head, None)
        } else {
            (Matrix::zeros(vocab, d), Some(d_head))
        };
        scatter_add_rows(&mut d_embd, &tape.tokens, &dx);
        ModelWeights {
            config: *c,
            token_embd: d_embd,
            output_norm: d_output_norm.unwrap_or_default(),
            output,
            layers: layer_grads,
        }
    });
    Grads {
        weights,
        block_inputs,
        linear_outputs,
    }
}

/// Backward through the LM head and the final norm: the loss gradient
/// w.r.t. the last block's output (`t × d`) from `dlogits` (`t × vocab`).
/// `x_final` is the last block's output and `inv_rms_final` the final norm's
/// per-token inverse RMS (as the tape records them). Adds the final norm's
/// weight gradient into `d_output_norm` when given.
///
/// # Panics
/// If the shapes do not match the model.
pub fn head_backward(
    w: &ModelWeights,
    x_final: &[f32],
    inv_rms_final: &[f32],
    dlogits: &[f32],
    d_output_norm: Option<&mut [f32]>,
) -> Vec<f32> {
    let c = &w.config;
    let (d, vocab) = (c.d_model as usize, c.vocab_size as usize);
    let t = inv_rms_final.len();
    assert_eq!(x_final.len(), t * d, "x_final must be t × d");
    assert_eq!(dlogits.len(), t * vocab, "dlogits must be t × vocab");
    let mut dh = vec![0.0f32; t * d];
    matmul_nn(&mut dh, dlogits, &w.lm_head().data, t, d, vocab, false);
    let mut dx = vec![0.0f32; t * d];
    rmsnorm_backward(
        x_final,
        &w.output_norm,
        inv_rms_final,
        &dh,
        &mut dx,
        false,
        d_output_norm,
    );
    dx
}

/// The backward pass of [`super::forward::block_forward`] for one block:
/// `d_out` (`t × d_model`) is the loss gradient w.r.t. the block's output,
/// `tape` the block's forward record, `rope` a table covering `t` positions.
/// Weight gradients only with `weight_grads`.
///
/// # Panics
/// If the tape or `d_out` do not match the block's shapes.
pub fn block_backward(
    l: &LayerWeights,
    c: &ModelConfig,
    rope: &RopeTable,
    tape: &BlockTape,
    d_out: &[f32],
    weight_grads: bool,
) -> BlockGrads {
    let (d, f, qd, kvd) = (
        c.d_model as usize,
        c.d_ffn as usize,
        c.q_dim() as usize,
        c.kv_dim() as usize,
    );
    let t = d_out.len() / d;
    assert_eq!(d_out.len(), t * d, "d_out must be t × d_model");
    assert_eq!(tape.x_in.len(), t * d, "tape from another sequence");

    // FFN: x_out = x_mid + down(silu(gate) ⊙ up), gate/up of h2 = norm(x_mid).
    let d_down = d_out.to_vec();
    let mut d_act = vec![0.0f32; t * f];
    matmul_nn(&mut d_act, &d_down, &l.w_down.data, t, f, d, false);
    let (d_gate, d_up) = swiglu_backward(&tape.gate, &tape.up, &d_act);
    let mut dh2 = vec![0.0f32; t * d];
    matmul_nn(&mut dh2, &d_gate, &l.w_gate.data, t, d, f, false);
    matmul_nn(&mut dh2, &d_up, &l.w_up.data, t, d, f, true);
    let mut d_mid = d_out.to_vec();
    let mut g_ffn_norm = weight_grads.then(|| vec![0.0f32; d]);
    rmsnorm_backward(
        &tape.x_mid,
        &l.ffn_norm,
        &tape.inv_rms2,
        &dh2,
        &mut d_mid,
        true,
        g_ffn_norm.as_deref_mut(),
    );

    // Attention: x_mid = x_in + o(attention(rope(norm(q)), rope(norm(k)), v)).
    let d_o = d_mid.clone();
    let mut d_attn = vec![0.0f32; t * qd];
    matmul_nn(&mut d_attn, &d_o, &l.wo.data, t, qd, d, false);
    let (mut dq, mut dk, d_v) = attention_backward(tape, &d_attn, c, t);
    rope.apply(&mut dq, c.n_heads as usize, true);
    rope.apply(&mut dk, c.n_kv_heads as usize, true);
    let (d_q, d_k, g_q_norm, g_k_norm) = match (&l.q_norm, &l.k_norm) {
        (Some(qn), Some(kn)) => {
            let (d_q, g_qn) =
                head_norm_backward(&tape.q_pre, qn, &tape.inv_rms_q, &dq, weight_grads);
            let (d_k, g_kn) =
                head_norm_backward(&tape.k_pre, kn, &tape.inv_rms_k, &dk, weight_grads);
            (d_q, d_k, g_qn, g_kn)
        }
        _ => (dq, dk, None, None),
    };
    let mut dh1 = vec![0.0f32; t * d];
    matmul_nn(&mut dh1, &d_q, &l.wq.data, t, d, qd, false);
    matmul_nn(&mut dh1, &d_k, &l.wk.data, t, d, kvd, true);
    matmul_nn(&mut dh1, &d_v, &l.wv.data, t, d, kvd, true);
    let mut d_input = d_mid;
    let mut g_attn_norm = weight_grads.then(|| vec![0.0f32; d]);
    rmsnorm_backward(
        &tape.x_in,
        &l.attn_norm,
        &tape.inv_rms1,
        &dh1,
        &mut d_input,
        true,
        g_attn_norm.as_deref_mut(),
    );

    let weights = weight_grads.then(|| {
        let wg = |dy: &[f32], x: &[f32], m: &Matrix| weight_grad(dy, x, m.rows, m.cols, t);
        let bias =
            |b: &Option<Vec<f32>>, dy: &[f32], n: usize| b.as_ref().map(|_| column_sums(dy, t, n));
        LayerWeights {
            attn_norm: g_attn_norm.unwrap_or_default(),
            wq: wg(&d_q, &tape.h1, &l.wq),
            wk: wg(&d_k, &tape.h1, &l.wk),
            wv: wg(&d_v, &tape.h1, &l.wv),
            wo: wg(&d_o, &tape.attn, &l.wo),
            bq: bias(&l.bq, &d_q, qd),
            bk: bias(&l.bk, &d_k, kvd),
            bv: bias(&l.bv, &d_v, kvd),
            q_norm: g_q_norm,
            k_norm: g_k_norm,
            ffn_norm: g_ffn_norm.unwrap_or_default(),
            w_gate: wg(&d_gate, &tape.h2, &l.w_gate),
            w_up: wg(&d_up, &tape.h2, &l.w_up),
            w_down: wg(&d_down, &tape.act, &l.w_down),
        }
    });
    BlockGrads {
        d_input,
        outputs: LinearOutputGrads {
            q: d_q,
            k: d_k,
            v: d_v,
            o: d_o,
            gate: d_gate,
            up: d_up,
            down: d_down,
        },
        weights,
    }
}

/// `dW (out × in) = dYᵀ · X` for `dy` (`t × out`), `x` (`t × in`).
fn weight_grad(dy: &[f32], x: &[f32], out: usize, inp: usize, t: usize) -> Matrix {
    let mut g = Matrix::zeros(out, inp);
    matmul_tn(&mut g.data, dy, x, out, inp, t, false);
    g
}

/// Rows per partial sum in [`sum_over_rows`]; fixed so results do not
/// depend on the thread count.
const ROW_CHUNK: usize = 64;

/// `Σ_i add_row(i, acc)` over `rows` rows of `width`-long contributions:
/// fixed chunks of rows summed in parallel (f64), partials added in order.
fn sum_over_rows(
    rows: usize,
    width: usize,
    add_row: impl Fn(usize, &mut [f64]) + Sync,
) -> Vec<f64> {
    let partials: Vec<Vec<f64>> = (0..rows.div_ceil(ROW_CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let mut acc = vec![0.0f64; width];
            for i in chunk * ROW_CHUNK..rows.min((chunk + 1) * ROW_CHUNK) {
                add_row(i, &mut acc);
            }
            acc
        })
        .collect();
    let mut total = vec![0.0f64; width];
    for p in &partials {
        total.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    total
}

/// Column sums of `x` (`rows × width`): a bias gradient.
fn column_sums(x: &[f32], rows: usize, width: usize) -> Vec<f32> {
    sum_over_rows(rows, width, |i, acc| {
        acc.iter_mut()
            .zip(&x[i * width..(i + 1) * width])
            .for_each(|(a, &v)| *a += f64::from(v));
    })
    .into_iter()
    .map(|v| v as f32)
    .collect()
}

/// Backward of `y = x · r · w` row by row (`r = 1/rms(x)`, given as `inv`):
/// writes (or with `accumulate` adds) `∂L/∂x` into `dx` and adds
/// `Σ_rows dy ⊙ x · r` into `dw` when given. Rows are `w.len()` wide.
pub(crate) fn rmsnorm_backward(
    x: &[f32],
    w: &[f32],
    inv: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    accumulate: bool,
    dw: Option<&mut [f32]>,
) {
    let d = w.len();
    assert!(x.len() == dy.len() && x.len() == dx.len() && x.len() == inv.len() * d);
    dx.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(dy.par_chunks(d))
        .zip(inv.par_iter())
        .for_each(|(((dxr, xr), dyr), &r)| {
            // ∂r/∂x_k = −r³ x_k / d, so dx_k = r w_k dy_k − r³ x_k (Σ_j dy_j w_j x_j) / d.
            let s: f64 = xr
                .iter()
                .zip(dyr)
                .zip(w)
                .map(|((&xv, &g), &wv)| f64::from(xv) * f64::from(g) * f64::from(wv))
                .sum();
            let r64 = f64::from(r);
            let coef = (s * r64 * r64 * r64 / d as f64) as f32;
            for (((o, &xv), &g), &wv) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
                let v = r * wv * g - coef * xv;
                if accumulate {
                    *o += v;
                } else {
                    *o = v;
                }
            }
        });
    if let Some(dw) = dw {
        let sums = sum_over_rows(inv.len(), d, |i, acc| {
            let r = f64::from(inv[i]);
            let (xr, dyr) = (&x[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d]);
            for ((a, &xv), &g) in acc.iter_mut().zip(xr).zip(dyr) {
                *a += f64::from(g) * f64::from(xv) * r;
            }
        });
        dw.iter_mut().zip(sums).for_each(|(a, s)| *a += s as f32);
    }
}

/// Backward of the per-head q/k RMSNorm: returns `∂L/∂x_pre` and, with
/// `weight_grads`, the norm weight's gradient (summed over rows and heads).
fn head_norm_backward(
    x_pre: &[f32],
    w: &[f32],
    inv: &[f32],
    dy: &[f32],
    weight_grads: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let mut dx = vec![0.0f32; dy.len()];
    let mut dw = weight_grads.then(|| vec![0.0f32; w.len()]);
    rmsnorm_backward(x_pre, w, inv, dy, &mut dx, false, dw.as_deref_mut());
    (dx, dw)
}

/// Backward of `act = silu(gate) ⊙ up`: returns (`∂L/∂gate`, `∂L/∂up`).
pub(crate) fn swiglu_backward(gate: &[f32], up: &[f32], d_act: &[f32]) -> (Vec<f32>, Vec<f32>) {
    d_act
        .par_iter()
        .zip(gate.par_iter().zip(up.par_iter()))
        .map(|(&da, (&g, &u))| {
            let s = 1.0 / (1.0 + (-g).exp());
            // silu'(g) = σ(g) · (1 + g · (1 − σ(g))).
            (da * u * s * (1.0 + g * (1.0 - s)), da * g * s)
        })
        .unzip()
}

/// Transposes the square `n × n` matrix `src` into `dst`, in tiles.
fn transpose_square(src: &[f32], dst: &mut [f32], n: usize) {
    const TILE: usize = 32;
    for i0 in (0..n).step_by(TILE) {
        for j0 in (0..n).step_by(TILE) {
            for i in i0..n.min(i0 + TILE) {
                for j in j0..n.min(j0 + TILE) {
                    dst[j * n + i] = src[i * n + j];
                }
            }
        }
    }
}

/// One query head's share of the attention gradients (each `t × head_dim`).
struct HeadGrads {
    /// W.r.t. its (rotated) queries.
    dq: Vec<f32>,
    /// W.r.t. the keys of its kv head, from this query head alone.
    dk: Vec<f32>,
    /// W.r.t. the values of its kv head, from this query head alone.
    dv: Vec<f32>,
}

/// Backward of causal grouped-query attention (see
/// [`super::forward::attention`]) given `∂L/∂out` (`t × q_dim`): returns
/// the gradients w.r.t. the rotated queries (`t × q_dim`), keys and values
/// (`t × kv_dim`), keys and values summed over the query heads sharing them.
fn attention_backward(
    tape: &BlockTape,
    d_attn: &[f32],
    c: &ModelConfig,
    t: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let heads = (
        c.n_heads as usize,
        c.n_kv_heads as usize,
        c.head_dim as usize,
    );
    attention_backward_heads((&tape.q, &tape.k, &tape.v), &tape.probs, d_attn, heads, t)
}

/// [`attention_backward`] from the tensors themselves and a head layout
/// `(heads, kv_heads, head_dim)`.
pub(crate) fn attention_backward_heads(
    (q, k, v): (&[f32], &[f32], &[f32]),
    probs: &[f32],
    d_attn: &[f32],
    (h, kvh, d): (usize, usize, usize),
    t: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (qd, kvd) = (h * d, kvh * d);
    let group = h / kvh;
    let scale = 1.0 / (d as f32).sqrt();
    let per_head: Vec<HeadGrads> = (0..h)
        .into_par_iter()
        .map(|head| {
            let g = head / group;
            let p = &probs[head * t * t..(head + 1) * t * t];
            let d_out = &d_attn[head * d..];
            let mut scratch = vec![0.0f32; t * t];
            // dV_h = Pᵀ · dOut_h.
            let mut dv = vec![0.0f32; t * d];
            transpose_square(p, &mut scratch, t);
            matmul_strided(&mut dv, d, &scratch, t, d_out, qd, false, t, d, t, false);
            // dP = dOut_h · V_gᵀ, then the softmax backward in place:
            // dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale (zero above the diagonal).
            let mut ds = vec![0.0f32; t * t];
            matmul_strided(
                &mut ds,
                t,
                d_out,
                qd,
                &v[g * d..],
                kvd,
                true,
                t,
                t,
                d,
                false,
            );
            for (i, (row, pr)) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)).enumerate() {
                let live = i + 1;
                let dot: f64 = row[..live]
                    .iter()
                    .zip(&pr[..live])
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                let dot = dot as f32;
                for (s, &pv) in row[..live].iter_mut().zip(&pr[..live]) {
                    *s = pv * (*s - dot) * scale;
                }
                row[live..].fill(0.0);
            }
            // dQ_h = dS · K_g;  dK_h = dSᵀ · Q_h.
            let mut dq = vec![0.0f32; t * d];
            matmul_strided(&mut dq, d, &ds, t, &k[g * d..], kvd, false, t, d, t, false);
            transpose_square(&ds, &mut scratch, t);
            let mut dk = vec![0.0f32; t * d];
            matmul_strided(
                &mut dk,
                d,
                &scratch,
                t,
                &q[head * d..],
                qd,
                false,
                t,
                d,
                t,
                false,
            );
            HeadGrads { dq, dk, dv }
        })
        .collect();

    let mut dq = vec![0.0f32; t * qd];
    dq.par_chunks_mut(qd).enumerate().for_each(|(i, row)| {
        for (head, hg) in per_head.iter().enumerate() {
            row[head * d..(head + 1) * d].copy_from_slice(&hg.dq[i * d..(i + 1) * d]);
        }
    });
    let gather_kv = |pick: fn(&HeadGrads) -> &[f32]| {
        let mut out = vec![0.0f32; t * kvd];
        out.par_chunks_mut(kvd).enumerate().for_each(|(i, row)| {
            for (head, hg) in per_head.iter().enumerate() {
                let g = head / group;
                let src = &pick(hg)[i * d..(i + 1) * d];
                row[g * d..(g + 1) * d]
                    .iter_mut()
                    .zip(src)
                    .for_each(|(a, &b)| *a += b);
            }
        });
        out
    };
    let dk = gather_kv(|x| &x.dk);
    let dv = gather_kv(|x| &x.dv);
    (dq, dk, dv)
}

/// `m[tokens[i]] += dx[i]` for every row `i` (the embedding gather's
/// backward; repeated tokens accumulate in sequence order). Parallel over
/// vocabulary rows; ids outside `m` are ignored (the forward rejects them).
fn scatter_add_rows(m: &mut Matrix, tokens: &[u32], dx: &[f32]) {
    let d = m.cols;
    let mut order: Vec<(usize, usize)> = tokens
        .iter()
        .enumerate()
        .map(|(i, &tok)| (tok as usize, i))
        .collect();
    order.sort_unstable();
    m.data.par_chunks_mut(d).enumerate().for_each(|(tok, row)| {
        let start = order.partition_point(|&(k, _)| k < tok);
        for &(_, i) in order[start..].iter().take_while(|&&(k, _)| k == tok) {
            row.iter_mut()
                .zip(&dx[i * d..(i + 1) * d])
                .for_each(|(a, &b)| *a += b);
        }
    });
}
