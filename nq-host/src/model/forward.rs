//! The FP32 reference transformer: forward pass, with an optional tape of
//! intermediates for the backward pass.
//!
//! Llama-family decoder: RMSNorm, grouped-query causal attention with RoPE
//! in the Hugging Face "rotate halves" convention (optional q/k/v bias for
//! qwen2, per-head q/k RMSNorm for qwen3), SwiGLU FFN, tied or untied head.
//! Products go through [`crate::linalg`] (the `gemm` crate, all cores);
//! row-wise element-wise work is split across the rayon pool.

use rayon::prelude::*;

use super::{LayerWeights, Matrix, ModelConfig, ModelError, ModelWeights};
use crate::linalg::{matmul_nt, matmul_strided};

/// cos/sin of every (position, frequency) pair for one head width.
#[derive(Clone, Debug)]
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Angles `p · θ^(−2i/D)` for `p < len`, `i < D/2`, computed in f64.
    pub fn new(head_dim: usize, theta: f32, len: usize) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in 0..len {
            for i in 0..half {
                let freq = f64::from(theta).powf(-2.0 * i as f64 / head_dim as f64);
                let a = p as f64 * freq;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Self { half, cos, sin }
    }

    /// The angle tables, `len × D/2` each (position-major): `(cos, sin)`.
    pub fn tables(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    /// Rotates every head of `x` (`t × n_heads·D`, row `p` at position `p`)
    /// by its position's angles; `inverse` rotates backwards (the transpose,
    /// used by the backward pass).
    pub fn apply(&self, x: &mut [f32], n_heads: usize, inverse: bool) {
        rotate_heads(x, (&self.cos, &self.sin), self.half, n_heads, inverse);
    }
}

/// RoPE ("rotate halves") on every head of `x` (rows of `n_heads·2·half`,
/// row `p` at position `p`) with position-major angle tables (`half` per
/// position, at least one position per row); `inverse` rotates backwards.
pub fn rotate_heads(
    x: &mut [f32],
    (cos, sin): (&[f32], &[f32]),
    half: usize,
    n_heads: usize,
    inverse: bool,
) {
    let d = 2 * half;
    let width = n_heads * d;
    x.par_chunks_mut(width).enumerate().for_each(|(p, row)| {
        let (cos, sin) = (
            &cos[p * half..(p + 1) * half],
            &sin[p * half..(p + 1) * half],
        );
        for head in row.chunks_exact_mut(d) {
            let (lo, hi) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                let s = if inverse { -sin[i] } else { sin[i] };
                lo[i] = a * cos[i] - b * s;
                hi[i] = b * cos[i] + a * s;
            }
        }
    });
}

/// `out = x / rms(x) ⊙ w` row by row; `inv` receives each row's `1/rms`.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32], inv: &mut [f32]) {
    let d = w.len();
    out.par_chunks_mut(d)
        .zip(inv.par_iter_mut())
        .zip(x.par_chunks(d))
        .for_each(|((o, r), xr)| {
            let ms = xr.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / d as f64;
            *r = (1.0 / (ms + f64::from(eps)).sqrt()) as f32;
            for ((o, &xv), &wv) in o.iter_mut().zip(xr).zip(w) {
                *o = xv * *r * wv;
            }
        });
}

/// SiLU: `x · σ(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `y = x · Wᵀ (+ b)` for `x` of `t` rows.
pub fn linear(x: &[f32], w: &Matrix, b: Option<&[f32]>, t: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; t * w.rows];
    matmul_nt(&mut y, x, &w.data, t, w.rows, w.cols, false);
    if let Some(b) = b {
        add_bias(&mut y, b);
    }
    y
}

/// `y[r] += b` for every row of `y` (rows of `b.len()`).
pub(crate) fn add_bias(y: &mut [f32], b: &[f32]) {
    y.par_chunks_mut(b.len().max(1)).for_each(|row| {
        for (v, &bb) in row.iter_mut().zip(b) {
            *v += bb;
        }
    });
}

/// `out = silu(g) ⊙ u`.
pub(crate) fn silu_mul(out: &mut [f32], g: &[f32], u: &[f32]) {
    out.par_iter_mut()
        .zip(g.par_iter().zip(u.par_iter()))
        .for_each(|(o, (&g, &u))| *o = silu(g) * u);
}

/// What one block's forward keeps for its backward.
#[derive(Clone, Debug, Default)]
pub struct BlockTape {
    /// Block input (`t × d`).
    pub x_in: Vec<f32>,
    /// `1/rms` of each input row (attention norm).
    pub inv_rms1: Vec<f32>,
    /// Normalized attention input (`t × d`).
    pub h1: Vec<f32>,
    /// Queries before q-norm and RoPE (`t × q_dim`, bias added).
    pub q_pre: Vec<f32>,
    /// Keys before k-norm and RoPE (`t × kv_dim`, bias added).
    pub k_pre: Vec<f32>,
    /// Per-(row, head) `1/rms` of the q/k norms (qwen3), else empty.
    pub inv_rms_q: Vec<f32>,
    /// As `inv_rms_q`, for keys.
    pub inv_rms_k: Vec<f32>,
    /// Queries as attention uses them (normed, rotated).
    pub q: Vec<f32>,
    /// Keys as attention uses them.
    pub k: Vec<f32>,
    /// Values (`t × kv_dim`).
    pub v: Vec<f32>,
    /// Attention probabilities, head-major (`n_heads × t × t`).
    pub probs: Vec<f32>,
    /// Attention output before the output projection (`t × q_dim`).
    pub attn: Vec<f32>,
    /// Residual stream after attention (`t × d`).
    pub x_mid: Vec<f32>,
    /// `1/rms` of each row (FFN norm).
    pub inv_rms2: Vec<f32>,
    /// Normalized FFN input (`t × d`).
    pub h2: Vec<f32>,
    /// Gate pre-activation (`t × d_ffn`).
    pub gate: Vec<f32>,
    /// Up projection (`t × d_ffn`).
    pub up: Vec<f32>,
    /// `silu(gate) ⊙ up` (`t × d_ffn`).
    pub act: Vec<f32>,
}

/// Intermediates of a whole forward pass.
#[derive(Clone, Debug, Default)]
pub struct Tape {
    /// Input tokens.
    pub tokens: Vec<u32>,
    /// One tape per block.
    pub blocks: Vec<BlockTape>,
    /// Residual stream entering the final norm (`t × d`).
    pub x_final: Vec<f32>,
    /// `1/rms` of each final row.
    pub inv_rms_final: Vec<f32>,
    /// Final normalized hidden states (`t × d`), the LM head's input.
    pub h_final: Vec<f32>,
}

/// Per-head RMSNorm in place over `t × n_heads·D`; returns each `1/rms`.
fn head_norm(x: &mut [f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let src = x.to_vec();
    let mut inv = vec![0.0f32; x.len() / d];
    rmsnorm(&src, w, eps, x, &mut inv);
    inv
}

/// Causal grouped-query attention. Returns (output `t × q_dim`, probs
/// `n_heads × t × t`).
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    c: &ModelConfig,
    t: usize,
) -> (Vec<f32>, Vec<f32>) {
    let heads = (
        c.n_heads as usize,
        c.n_kv_heads as usize,
        c.head_dim as usize,
    );
    attention_heads(q, k, v, heads, t)
}

/// [`attention`] for a head layout `(heads, kv_heads, head_dim)`.
pub fn attention_heads(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (h, kvh, d): (usize, usize, usize),
    t: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (qd, kvd) = (h * d, kvh * d);
    let group = h / kvh;
    let scale = 1.0 / (d as f32).sqrt();
    let mut probs = vec![0.0f32; h * t * t];
    let mut heads = vec![0.0f32; h * t * d];
    // Causal: query block [i0, i0 + rows) only needs keys [0, i0 + rows).
    probs
        .par_chunks_mut(t * t)
        .zip(heads.par_chunks_mut(t * d))
        .enumerate()
        .for_each(|(head, (p, out))| {
            let g = head / group;
            p.par_chunks_mut(ATTN_BLOCK * t)
                .zip(out.par_chunks_mut(ATTN_BLOCK * d))
                .enumerate()
                .for_each(|(b, (pb, ob))| {
                    let i0 = b * ATTN_BLOCK;
                    let rows = pb.len() / t;
                    let keys = i0 + rows;
                    // scores = q_h · k_gᵀ
                    matmul_strided(
                        pb,
                        t,
                        &q[i0 * qd + head * d..],
                        qd,
                        &k[g * d..],
                        kvd,
                        true,
                        rows,
                        keys,
                        d,
                        false,
                    );
                    for (r, row) in pb.chunks_exact_mut(t).enumerate() {
                        let i = i0 + r;
                        let live = &mut row[..=i];
                        let mut max = f32::NEG_INFINITY;
                        for s in live.iter_mut() {
                            *s *= scale;
                            max = max.max(*s);
                        }
                        let mut sum = 0.0f64;
                        for s in live.iter_mut() {
                            *s = (*s - max).exp();
                            sum += f64::from(*s);
                        }
                        let norm = (1.0 / sum) as f32;
                        live.iter_mut().for_each(|s| *s *= norm);
                        row[i + 1..].fill(0.0);
                    }
                    // out_h = P · v_g
                    matmul_strided(ob, d, pb, t, &v[g * d..], kvd, false, rows, d, keys, false);
                });
        });
    let mut attn = vec![0.0f32; t * qd];
    attn.par_chunks_mut(qd).enumerate().for_each(|(i, row)| {
        for head in 0..h {
            row[head * d..(head + 1) * d]
                .copy_from_slice(&heads[(head * t + i) * d..(head * t + i + 1) * d]);
        }
    });
    (attn, probs)
}

/// Query rows per attention task.
const ATTN_BLOCK: usize = 64;

pub(crate) fn add_into(x: &mut [f32], y: &[f32]) {
    x.par_iter_mut()
        .zip(y.par_iter())
        .for_each(|(a, b)| *a += b);
}

/// One decoder block on `x` (`t × d`) in place.
pub fn block_forward(
    l: &LayerWeights,
    c: &ModelConfig,
    rope: &RopeTable,
    x: &mut [f32],
    t: usize,
    tape: Option<&mut BlockTape>,
) {
    let d = c.d_model as usize;
    let eps = c.norm_eps;
    let mut h1 = vec![0.0f32; t * d];
    let mut inv1 = vec![0.0f32; t];
    rmsnorm(x, &l.attn_norm, eps, &mut h1, &mut inv1);
    let q_pre = linear(&h1, &l.wq, l.bq.as_deref(), t);
    let k_pre = linear(&h1, &l.wk, l.bk.as_deref(), t);
    let v = linear(&h1, &l.wv, l.bv.as_deref(), t);
    let (mut q, mut k) = (q_pre.clone(), k_pre.clone());
    let (inv_q, inv_k) = match (&l.q_norm, &l.k_norm) {
        (Some(qn), Some(kn)) => (head_norm(&mut q, qn, eps), head_norm(&mut k, kn, eps)),
        _ => (Vec::new(), Vec::new()),
    };
    rope.apply(&mut q, c.n_heads as usize, false);
    rope.apply(&mut k, c.n_kv_heads as usize, false);
    let (attn, probs) = attention(&q, &k, &v, c, t);
    let x_in = tape.as_ref().map(|_| x.to_vec());
    add_into(x, &linear(&attn, &l.wo, None, t));
    let mut h2 = vec![0.0f32; t * d];
    let mut inv2 = vec![0.0f32; t];
    rmsnorm(x, &l.ffn_norm, eps, &mut h2, &mut inv2);
    let gate = linear(&h2, &l.w_gate, None, t);
    let up = linear(&h2, &l.w_up, None, t);
    let mut act = vec![0.0f32; gate.len()];
    silu_mul(&mut act, &gate, &up);
    let x_mid = tape.as_ref().map(|_| x.to_vec());
    add_into(x, &linear(&act, &l.w_down, None, t));
    if let Some(tape) = tape {
        *tape = BlockTape {
            x_in: x_in.unwrap_or_default(),
            inv_rms1: inv1,
            h1,
            q_pre,
            k_pre,
            inv_rms_q: inv_q,
            inv_rms_k: inv_k,
            q,
            k,
            v,
            probs,
            attn,
            x_mid: x_mid.unwrap_or_default(),
            inv_rms2: inv2,
            h2,
            gate,
            up,
            act,
        };
    }
}

/// Token embeddings for `tokens` (`t × d`).
pub fn embed(w: &ModelWeights, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
    embed_rows(&w.token_embd, tokens)
}

/// The rows of `table` (`vocab × d`) for `tokens`, `t × d`; an id outside
/// the table is an error.
pub fn embed_rows(table: &Matrix, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
    let d = table.cols;
    let mut x = vec![0.0f32; tokens.len() * d];
    for (row, &tok) in x.chunks_exact_mut(d).zip(tokens) {
        if tok as usize >= table.rows {
            return Err(ModelError::Config(format!(
                "token id {tok} is outside the vocabulary ({})",
                table.rows
            )));
        }
        row.copy_from_slice(table.row(tok as usize));
    }
    Ok(x)
}

/// Logits (`t × vocab`) for one independent sequence starting at position 0.
/// With a tape, records every intermediate the backward pass needs.
pub fn forward(
    w: &ModelWeights,
    tokens: &[u32],
    tape: Option<&mut Tape>,
) -> Result<Vec<f32>, ModelError> {
    run(w, tokens, tape, false)
}

/// Prefill: runs the whole sequence but computes only the last position's
/// logits (`vocab` values), as a generator does before decoding.
pub fn prefill(w: &ModelWeights, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
    run(w, tokens, None, true)
}

fn run(
    w: &ModelWeights,
    tokens: &[u32],
    mut tape: Option<&mut Tape>,
    last_only: bool,
) -> Result<Vec<f32>, ModelError> {
    let c = &w.config;
    let t = tokens.len();
    if t == 0 {
        return Err(ModelError::Config("empty token sequence".into()));
    }
    let d = c.d_model as usize;
    let mut x = embed(w, tokens)?;
    let rope = RopeTable::new(c.head_dim as usize, c.rope_theta, t);
    if let Some(tape) = tape.as_deref_mut() {
        tape.tokens = tokens.to_vec();
        tape.blocks = vec![BlockTape::default(); w.layers.len()];
    }
    for (i, l) in w.layers.iter().enumerate() {
        let bt = tape.as_deref_mut().map(|tp| &mut tp.blocks[i]);
        block_forward(l, c, &rope, &mut x, t, bt);
    }
    if last_only {
        let last = &x[(t - 1) * d..];
        let (mut h, mut inv) = (vec![0.0f32; d], [0.0f32]);
        rmsnorm(last, &w.output_norm, c.norm_eps, &mut h, &mut inv);
        return Ok(linear(&h, w.lm_head(), None, 1));
    }
    let mut h = vec![0.0f32; t * d];
    let mut inv = vec![0.0f32; t];
    rmsnorm(&x, &w.output_norm, c.norm_eps, &mut h, &mut inv);
    let logits = linear(&h, w.lm_head(), None, t);
    if let Some(tape) = tape {
        tape.x_final = x;
        tape.inv_rms_final = inv;
        tape.h_final = h;
    }
    Ok(logits)
}
