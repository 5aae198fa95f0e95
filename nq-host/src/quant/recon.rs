//! Block reconstruction (DESIGN.md §3): quantize a block's linears one at a
//! time while training the block to reproduce the FP block's output.
//!
//! For block `b` the *targets* are the FP block's outputs on FP inputs, the
//! *student inputs* are the outputs of the already-quantized blocks before
//! it. Inside the block, for each linear in the order q, v, o, k, gate, up,
//! down:
//!
//! 1. **error compensation**: the block's still-FP linears (this one
//!    included) are trained with AdamW (cosine schedule) to lower the loss;
//! 2. **ADMM initialization** of this linear from its compensated weight;
//! 3. **straight-through training** of its latents `L_a` (m×r), `L_b` (r×n)
//!    and scales: the forward uses `Ŵ = diag(s_post)·sign(L_a)·sign(L_b)·
//!    diag(s_pre)`, the backward passes `∂/∂U` to `L_a` unchanged (and
//!    `∂/∂V` to `L_b`); then the signs are hardened, the scales rounded to
//!    f16 and the layer frozen.
//!
//! Loss: `Σ_c imp_c · (y_s − y_t)²_c / (tokens · Σ_c imp_c)`, `imp` the
//! output energy of the block's down projection (per hidden channel).
//!
//! The backward of the block is the FP block backward (which yields
//! `∂L/∂Ŵ` for every linear) followed by the factorized layer's chain rule,
//! [`FactorState::grads`]: with `P = U·V`, `G = ∂L/∂Ŵ ⊙ (s_post ⊗ s_pre)`,
//! `∂L/∂U = G·Vᵀ`, `∂L/∂V = Uᵀ·G`, `∂L/∂s_post_i = Σ_j ∂L/∂Ŵ_ij P_ij
//! s_pre_j`, `∂L/∂s_pre_j = Σ_i ∂L/∂Ŵ_ij s_post_i P_ij`.

use rayon::prelude::*;
use serde::Serialize;

use super::factor::{
    quantize_linear, quantize_linear_on, rank_for_bpw, AdmmOptions, FactorError, Method,
};
use super::pipeline::{LayerReport, QuantizeOptions, QuantizedLinears};
use super::stats::ModelStats;
use crate::backend::{adamw_host, scale_grads_host, Compute};
use crate::blob_writer::TensorPayload;
use crate::linalg::{matmul_nn, matmul_nt, matmul_tn};
use crate::model::backward::{block_backward, LinearId};
use crate::model::forward::{block_forward, embed, BlockTape, RopeTable};
use crate::model::{LayerWeights, Matrix, ModelError, ModelWeights};
use nq_core::layers::FactorizedLinear;
use nq_core::{F16Vector, SignMatrix};

/// Block-reconstruction settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ReconOptions {
    /// Error-compensation epochs before each linear is quantized.
    pub comp_epochs: usize,
    /// Straight-through epochs after each linear's ADMM initialization.
    pub ste_epochs: usize,
    /// Peak learning rate of error compensation (FP weights).
    pub comp_lr: f32,
    /// Peak learning rate of the latents.
    pub latent_lr: f32,
    /// Peak learning rate of the scales.
    pub scale_lr: f32,
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
}

impl Default for ReconOptions {
    fn default() -> Self {
        Self {
            comp_epochs: 1,
            ste_epochs: 1,
            comp_lr: 1e-4,
            latent_lr: 1e-4,
            scale_lr: 1e-4,
            weight_decay: 0.0,
        }
    }
}

/// What happened in one block.
#[derive(Clone, Debug, Serialize)]
pub struct BlockReport {
    /// Block index.
    pub block: usize,
    /// Importance-weighted relative error of the finished student block's
    /// output (on the quantized stream) against the FP block's output (on
    /// the FP stream).
    pub rel_output_error: f64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// AdamW state of one parameter tensor.
#[derive(Clone, Debug)]
pub(crate) struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Adam {
    pub(crate) fn new(len: usize) -> Self {
        Self {
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
        }
    }

    pub(crate) fn step(&mut self, p: &mut [f32], g: &[f32], lr: f32, wd: f32) {
        self.t += 1;
        adamw_host(p, g, (&mut self.m, &mut self.v), self.t, lr, wd);
    }
}

/// Cosine decay from `lr` to 0 over `total` steps.
pub(crate) fn cosine(lr: f32, step: usize, total: usize) -> f32 {
    if total <= 1 {
        return lr;
    }
    let x = step as f32 / (total - 1) as f32;
    lr * 0.5 * (1.0 + (std::f32::consts::PI * x).cos())
}

/// A factorized layer in training: latents and f32 scales.
#[derive(Clone, Debug)]
pub struct FactorState {
    /// `L_a`, `m × r`; `U = sign(L_a)`.
    pub la: Matrix,
    /// `L_b`, `r × n`; `V = sign(L_b)`.
    pub lb: Matrix,
    /// Input scales (`n`).
    pub s_pre: Vec<f32>,
    /// Output scales (`m`).
    pub s_post: Vec<f32>,
}

/// Gradients of a [`FactorState`].
#[derive(Clone, Debug)]
pub struct FactorGrads {
    /// w.r.t. `L_a` (straight-through: w.r.t. `U`).
    pub la: Vec<f32>,
    /// w.r.t. `L_b` (straight-through: w.r.t. `V`).
    pub lb: Vec<f32>,
    /// w.r.t. `s_pre`.
    pub s_pre: Vec<f32>,
    /// w.r.t. `s_post`.
    pub s_post: Vec<f32>,
}

fn signs(x: &[f32]) -> Vec<f32> {
    x.iter()
        .map(|&v| if v < 0.0 { -1.0 } else { 1.0 })
        .collect()
}

pub(crate) fn round_f16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect()
}

impl FactorState {
    /// Dimensions `(m, n, r)`.
    pub fn dims(&self) -> (usize, usize, usize) {
        (self.la.rows, self.lb.cols, self.la.cols)
    }

    /// `Ŵ = diag(s_post)·sign(L_a)·sign(L_b)·diag(s_pre)` with the given
    /// scales.
    fn dense_with(&self, s_pre: &[f32], s_post: &[f32]) -> Matrix {
        let (m, n, r) = self.dims();
        let mut a = signs(&self.la.data);
        a.par_chunks_mut(r)
            .zip(s_post.par_iter())
            .for_each(|(row, &s)| row.iter_mut().for_each(|x| *x *= s));
        let mut b = signs(&self.lb.data);
        b.par_chunks_mut(n).for_each(|row| {
            for (x, &s) in row.iter_mut().zip(s_pre) {
                *x *= s;
            }
        });
        let mut w = Matrix::zeros(m, n);
        matmul_nn(&mut w.data, &a, &b, m, n, r, false);
        w
    }

    /// The weight the forward pass uses while training.
    pub fn dense(&self) -> Matrix {
        self.dense_with(&self.s_pre, &self.s_post)
    }

    /// The weight of the exported layer (scales rounded to f16).
    pub fn hardened_dense(&self) -> Matrix {
        self.dense_with(&round_f16(&self.s_pre), &round_f16(&self.s_post))
    }

    /// Chain rule from `∂L/∂Ŵ` (`m × n`) to the latents (straight-through)
    /// and the scales.
    pub fn grads(&self, dw: &Matrix) -> FactorGrads {
        let (m, n, r) = self.dims();
        assert_eq!((dw.rows, dw.cols), (m, n), "dW shape");
        let u = signs(&self.la.data);
        let v = signs(&self.lb.data);
        let mut p = vec![0.0f32; m * n];
        matmul_nn(&mut p, &u, &v, m, n, r, false);
        let mut g = dw.data.clone();
        g.par_chunks_mut(n)
            .zip(self.s_post.par_iter())
            .for_each(|(row, &so)| {
                for (x, &si) in row.iter_mut().zip(&self.s_pre) {
                    *x *= so * si;
                }
            });
        let mut dla = vec![0.0f32; m * r];
        matmul_nt(&mut dla, &g, &v, m, r, n, false);
        let mut dlb = vec![0.0f32; r * n];
        matmul_tn(&mut dlb, &u, &g, r, n, m, false);
        let (s_pre, s_post) = self.scale_grads_with(dw, &p);
        FactorGrads {
            la: dla,
            lb: dlb,
            s_pre,
            s_post,
        }
    }

    /// Gradients of the two scale vectors only: `(∂/∂s_pre, ∂/∂s_post)`.
    pub fn scale_grads(&self, dw: &Matrix) -> (Vec<f32>, Vec<f32>) {
        let (m, n, r) = self.dims();
        let mut p = vec![0.0f32; m * n];
        matmul_nn(
            &mut p,
            &signs(&self.la.data),
            &signs(&self.lb.data),
            m,
            n,
            r,
            false,
        );
        self.scale_grads_with(dw, &p)
    }

    /// Scale gradients given `P = U·V`, in f64 with each output summed by
    /// one thread (deterministic).
    fn scale_grads_with(&self, dw: &Matrix, p: &[f32]) -> (Vec<f32>, Vec<f32>) {
        scale_grads_host(&dw.data, p, &self.s_pre, &self.s_post)
    }

    /// The exported layer: hardened signs, f16 scales.
    pub fn payload(&self, bias: Option<&[f32]>) -> Result<TensorPayload, FactorError> {
        let (m, n, r) = self.dims();
        let (la, lb) = (&self.la.data, &self.lb.data);
        let u = SignMatrix::from_fn(m, r, |i, k| la[i * r + k] < 0.0);
        let v = SignMatrix::from_fn(r, n, |k, j| lb[k * n + j] < 0.0);
        let layer = FactorizedLinear::new(
            u,
            v,
            F16Vector::from_f32(&self.s_pre),
            F16Vector::from_f32(&self.s_post),
            bias.map(F16Vector::from_f32),
        )
        .map_err(|_| FactorError::Numerical("factorized layer shape"))?;
        Ok(TensorPayload::Factorized(layer))
    }
}

/// One linear's state inside the block being reconstructed.
enum Slot {
    /// Still full precision: trained by error compensation.
    Fp(Adam),
    /// Being trained with the straight-through estimator.
    Training(Box<TrainingFactor>),
    /// Hardened and frozen.
    Frozen,
}

struct TrainingFactor {
    state: FactorState,
    adam: [Adam; 4],
}

pub(crate) fn bias_of(l: &LayerWeights, id: LinearId) -> Option<&[f32]> {
    match id {
        LinearId::Q => l.bq.as_deref(),
        LinearId::K => l.bk.as_deref(),
        LinearId::V => l.bv.as_deref(),
        _ => None,
    }
}

/// The order DESIGN.md gives for quantizing a block's linears.
pub const ORDER: [LinearId; 7] = [
    LinearId::Q,
    LinearId::V,
    LinearId::O,
    LinearId::K,
    LinearId::Gate,
    LinearId::Up,
    LinearId::Down,
];

/// Loss and `∂L/∂y` of the importance-weighted MSE.
fn weighted_mse(y: &[f32], target: &[f32], imp: &[f32], t: usize) -> (f64, Vec<f32>) {
    weighted_mse_with(y, target, imp, mse_norm(imp, t))
}

/// The normalizer of the weighted MSE over windows of `t` tokens:
/// `t · Σ imp` (1 when that is not positive).
pub(crate) fn mse_norm(imp: &[f32], t: usize) -> f64 {
    let norm = t as f64 * imp.iter().map(|&x| f64::from(x)).sum::<f64>();
    if norm > 0.0 {
        norm
    } else {
        1.0
    }
}

/// [`weighted_mse`] with its normalizer given: `Σ imp·(y − target)² / norm`
/// and `∂L/∂y = 2·imp·(y − target) / norm` (rows of `imp.len()`).
pub(crate) fn weighted_mse_with(
    y: &[f32],
    target: &[f32],
    imp: &[f32],
    norm: f64,
) -> (f64, Vec<f32>) {
    let d = imp.len();
    let mut dy = vec![0.0f32; y.len()];
    let loss: f64 = dy
        .par_chunks_mut(d)
        .zip(y.par_chunks(d).zip(target.par_chunks(d)))
        .map(|(g, (yr, tr))| {
            let mut s = 0.0f64;
            for c in 0..d {
                let e = yr[c] - tr[c];
                s += f64::from(imp[c]) * f64::from(e) * f64::from(e);
                g[c] = (2.0 * f64::from(imp[c]) * f64::from(e) / norm) as f32;
            }
            s
        })
        .sum();
    (loss / norm, dy)
}

/// Runs the student block on `x` (no tape).
fn run_block(
    l: &LayerWeights,
    w: &ModelWeights,
    rope: &RopeTable,
    x: &[f32],
    t: usize,
) -> Vec<f32> {
    let mut y = x.to_vec();
    block_forward(l, &w.config, rope, &mut y, t, None);
    y
}

/// Importance-weighted relative error `Σ imp·(y−t)² / Σ imp·t²` over all
/// windows.
pub(crate) fn rel_error(
    l: &LayerWeights,
    w: &ModelWeights,
    rope: &RopeTable,
    xs: &[Vec<f32>],
    ys: &[Vec<f32>],
    imp: &[f32],
    t: usize,
) -> f64 {
    let d = imp.len();
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y_t) in xs.iter().zip(ys) {
        let y = run_block(l, w, rope, x, t);
        for (yr, tr) in y.chunks(d).zip(y_t.chunks(d)) {
            for c in 0..d {
                let e = f64::from(yr[c] - tr[c]);
                num += f64::from(imp[c]) * e * e;
                den += f64::from(imp[c]) * f64::from(tr[c]) * f64::from(tr[c]);
            }
        }
    }
    num / den.max(f64::MIN_POSITIVE)
}

/// One training phase over all windows: `update` gets each step's weight
/// gradients and the step's learning-rate factor (cosine, 1 → 0).
#[allow(clippy::too_many_arguments)]
fn train(
    student: &mut LayerWeights,
    w: &ModelWeights,
    rope: &RopeTable,
    xs: &[Vec<f32>],
    ys: &[Vec<f32>],
    imp: &[f32],
    t: usize,
    epochs: usize,
    mut update: impl FnMut(&mut LayerWeights, &dyn Fn(LinearId) -> Matrix, f32),
) {
    let total = epochs * xs.len();
    let mut step = 0;
    for _ in 0..epochs {
        for (x, y_t) in xs.iter().zip(ys) {
            let mut y = x.clone();
            let mut tape = BlockTape::default();
            block_forward(student, &w.config, rope, &mut y, t, Some(&mut tape));
            let (_, dy) = weighted_mse(&y, y_t, imp, t);
            // Activation gradients only: each phase trains a few linears,
            // so their weight gradients `dW = dYᵀ·X` are formed on demand.
            let g = block_backward(student, &w.config, rope, &tape, &dy, false);
            let weight_grad = |id: LinearId| {
                let (dy, x) = (g.outputs.get(id), id.input(&tape));
                let (m, n) = (dy.len() / t, x.len() / t);
                let mut dw = Matrix::zeros(m, n);
                matmul_tn(&mut dw.data, dy, x, m, n, t, false);
                dw
            };
            update(student, &weight_grad, cosine(1.0, step, total));
            step += 1;
        }
    }
}

/// NanoQuant's ADMM on the compensated weight `wt` of linear `id` of block
/// `b`: the training state (latents, f32 scales) it initializes.
pub(crate) fn admm_init(
    b: usize,
    id: LinearId,
    wt: &Matrix,
    stats: &ModelStats,
    qopts: &QuantizeOptions,
) -> Result<FactorState, FactorError> {
    let (m, n) = (wt.rows, wt.cols);
    let rank = rank_for_bpw(m, n, qopts.bpw, qopts.rank_multiple)?;
    let admm = AdmmOptions {
        seed: super::pipeline::layer_seed(qopts.admm.seed, b, id),
        ..qopts.admm
    };
    let q = quantize_linear_on(
        &qopts.compute,
        wt,
        None,
        stats.get(b, id),
        Method::NanoQuant,
        rank,
        &admm,
    )?;
    let (la, lb) = q.latents.expect("nanoquant keeps latents");
    let TensorPayload::Factorized(f) = &q.payload else {
        unreachable!("nanoquant exports factorized layers")
    };
    Ok(FactorState {
        la,
        lb,
        s_pre: f.s_pre().iter().collect(),
        s_post: f.s_post().iter().collect(),
    })
}

/// Step 4 for linear `id` of block `b` trained to `state`: the hardened
/// weight (f16 scales), the layer's payload (with `bias`) and its report
/// against the FP weight `fp`.
pub(crate) fn harden(
    (b, id): (usize, LinearId),
    state: &FactorState,
    bias: Option<&[f32]>,
    fp: &Matrix,
    stats: &ModelStats,
    started: std::time::Instant,
) -> Result<(Matrix, TensorPayload, LayerReport), FactorError> {
    let hard = state.hardened_dense();
    let payload = state.payload(bias)?;
    let report = hardened_report((b, id), state.la.cols, fp, &hard, stats, started);
    Ok((hard, payload, report))
}

/// The report of linear `id` of block `b` hardened at rank `r` to `hard`,
/// against the FP weight `fp`.
pub(crate) fn hardened_report(
    (b, id): (usize, LinearId),
    r: usize,
    fp: &Matrix,
    hard: &Matrix,
    stats: &ModelStats,
    started: std::time::Instant,
) -> LayerReport {
    let (m, n) = (fp.rows, fp.cols);
    LayerReport {
        block: b,
        name: super::export::linear_name(b, id),
        m,
        n,
        rank: Some(r),
        bits: super::factor::factorized_bits(m, n, r),
        bpw: super::factor::factorized_bits(m, n, r) as f64 / (m * n) as f64,
        weighted_rel_error: super::factor::weighted_rel_error(fp, hard, stats.get(b, id)),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// What a block's reconstruction returns: the seven payloads and reports
/// (in [`LinearId::ALL`] order, all present) and the block report.
#[allow(clippy::type_complexity)]
pub(crate) fn finish_block(
    b: usize,
    done: Vec<Option<(TensorPayload, LayerReport)>>,
    rel_output_error: f64,
    started: std::time::Instant,
) -> (Vec<TensorPayload>, Vec<LayerReport>, BlockReport) {
    let (payloads, reports) = done
        .into_iter()
        .map(|d| d.expect("all seven linears"))
        .unzip();
    let report = BlockReport {
        block: b,
        rel_output_error,
        seconds: started.elapsed().as_secs_f64(),
    };
    (payloads, reports, report)
}

/// Reconstructs block `b`: returns its seven payloads (in
/// [`LinearId::ALL`] order), their reports and the block report. On return
/// `student` holds the hardened block.
#[allow(clippy::too_many_arguments)]
pub fn reconstruct_block(
    b: usize,
    w: &ModelWeights,
    student: &mut LayerWeights,
    stats: &ModelStats,
    xs: &[Vec<f32>],
    ys: &[Vec<f32>],
    t: usize,
    qopts: &QuantizeOptions,
    ropts: &ReconOptions,
    on_layer: &(dyn Fn(&LayerReport) + Sync),
) -> Result<(Vec<TensorPayload>, Vec<LayerReport>, BlockReport), FactorError> {
    if let Compute::Cuda(gpu) = &qopts.compute {
        // The whole block on the GPU (recon_device.rs). A device failure
        // (out of memory, a launch error) falls back to the host path below
        // for this block, from the same starting weights, saying so once.
        let start_weights = student.clone();
        match super::recon_device::reconstruct_block_on(
            gpu.as_ref(),
            (b, w, student, stats),
            (xs, ys, t),
            qopts,
            ropts,
            on_layer,
        ) {
            Err(FactorError::Device(e)) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    eprintln!(
                        "warning: block reconstruction on the GPU failed ({e}); \
                         reconstructing on the CPU instead"
                    )
                });
                *student = start_weights;
            }
            done => return done,
        }
    }
    let start = std::time::Instant::now();
    let c = &w.config;
    let rope = RopeTable::new(c.head_dim as usize, c.rope_theta, t);
    let imp = stats.get(b, LinearId::Down).output.clone();
    let fp = &w.layers[b];
    let mut slots: Vec<Slot> = LinearId::ALL
        .iter()
        .map(|&id| Slot::Fp(Adam::new(id.weight(fp).data.len())))
        .collect();
    let mut done: Vec<Option<(TensorPayload, LayerReport)>> = (0..7).map(|_| None).collect();
    for id in ORDER {
        let layer_start = std::time::Instant::now();
        // 1. Error compensation of the still-FP linears.
        if ropts.comp_epochs > 0 {
            let (lr, wd) = (ropts.comp_lr, ropts.weight_decay);
            train(
                student,
                w,
                &rope,
                xs,
                ys,
                &imp,
                t,
                ropts.comp_epochs,
                |s, g, f| {
                    for (k, other) in LinearId::ALL.into_iter().enumerate() {
                        if let Slot::Fp(adam) = &mut slots[k] {
                            adam.step(&mut other.weight_mut(s).data, &g(other).data, lr * f, wd);
                        }
                    }
                },
            );
        }
        // 2. ADMM initialization from the compensated weight.
        let k = id as usize;
        let (m, n) = (id.weight(student).rows, id.weight(student).cols);
        let bias = bias_of(student, id).map(<[f32]>::to_vec);
        let state = admm_init(b, id, id.weight(student), stats, qopts)?;
        *id.weight_mut(student) = state.dense();
        let r = state.la.cols;
        slots[k] = Slot::Training(Box::new(TrainingFactor {
            adam: [
                Adam::new(m * r),
                Adam::new(r * n),
                Adam::new(n),
                Adam::new(m),
            ],
            state,
        }));
        // 3. Straight-through training of latents and scales.
        if ropts.ste_epochs > 0 {
            let (llr, slr, wd) = (ropts.latent_lr, ropts.scale_lr, ropts.weight_decay);
            let Slot::Training(tf) = &mut slots[k] else {
                unreachable!()
            };
            train(
                student,
                w,
                &rope,
                xs,
                ys,
                &imp,
                t,
                ropts.ste_epochs,
                |s, g, f| {
                    let gr = tf.state.grads(&g(id));
                    let st = &mut tf.state;
                    tf.adam[0].step(&mut st.la.data, &gr.la, llr * f, wd);
                    tf.adam[1].step(&mut st.lb.data, &gr.lb, llr * f, wd);
                    tf.adam[2].step(&mut st.s_pre, &gr.s_pre, slr * f, 0.0);
                    tf.adam[3].step(&mut st.s_post, &gr.s_post, slr * f, 0.0);
                    *id.weight_mut(s) = st.dense();
                },
            );
        }
        // 4. Harden and freeze.
        let Slot::Training(tf) = std::mem::replace(&mut slots[k], Slot::Frozen) else {
            unreachable!()
        };
        let (hard, payload, report) = harden(
            (b, id),
            &tf.state,
            bias.as_deref(),
            id.weight(fp),
            stats,
            layer_start,
        )?;
        *id.weight_mut(student) = hard;
        on_layer(&report);
        done[k] = Some((payload, report));
    }
    let rel = rel_error(student, w, &rope, xs, ys, &imp, t);
    Ok(finish_block(b, done, rel, start))
}

/// The window length, its RoPE table and the block-0 inputs (embeddings) of
/// every window: the start of both the FP and the quantized stream.
fn streams(
    w: &ModelWeights,
    windows: &[Vec<u32>],
) -> Result<(usize, RopeTable, Vec<Vec<f32>>), ReconError> {
    let t = windows.first().map_or(0, Vec::len);
    if t < 2 || windows.iter().any(|win| win.len() != t) {
        return Err(ReconError::Model(ModelError::Config(
            "reconstruction needs calibration windows of one length ≥ 2".into(),
        )));
    }
    let rope = RopeTable::new(w.config.head_dim as usize, w.config.rope_theta, t);
    let x = windows
        .iter()
        .map(|win| embed(w, win))
        .collect::<Result<_, _>>()?;
    Ok((t, rope, x))
}

/// Quantizes every decoder linear with block reconstruction over the
/// calibration `windows` (all of the same length). `on_block` sees each
/// block's report as it completes. With a `work_dir`, finished blocks are
/// loaded from it and new ones saved to it (see [`super::workdir`]).
#[allow(clippy::too_many_arguments)]
pub fn reconstruct(
    w: &ModelWeights,
    stats: &ModelStats,
    windows: &[Vec<u32>],
    qopts: &QuantizeOptions,
    ropts: &ReconOptions,
    on_layer: &(dyn Fn(&LayerReport) + Sync),
    work_dir: Option<&super::workdir::WorkDir>,
    mut on_block: impl FnMut(&BlockReport),
) -> Result<(QuantizedLinears, Vec<BlockReport>), ReconError> {
    // FP stream (targets are the next block's FP inputs) and student stream.
    let (t, rope, mut x_fp) = streams(w, windows)?;
    let mut x_q = x_fp.clone();
    let mut payloads = Vec::with_capacity(w.layers.len());
    let mut reports = Vec::new();
    let mut blocks = Vec::new();
    for (b, fp) in w.layers.iter().enumerate() {
        let ys: Vec<Vec<f32>> = x_fp.iter().map(|x| run_block(fp, w, &rope, x, t)).collect();
        let mut student = fp.clone();
        let saved = match work_dir {
            Some(wd) => wd.load(b)?,
            None => None,
        };
        let (p, r, br) = match saved {
            Some((p, r, br)) => {
                // The dequantized payloads are bit-identical to the weights
                // the run used when it hardened them.
                for (id, payload) in LinearId::ALL.into_iter().zip(&p) {
                    *id.weight_mut(&mut student) = super::export::payload_dense(payload);
                }
                for rep in &r {
                    on_layer(rep);
                }
                (p, r, br)
            }
            None => {
                let done = reconstruct_block(
                    b,
                    w,
                    &mut student,
                    stats,
                    &x_q,
                    &ys,
                    t,
                    qopts,
                    ropts,
                    on_layer,
                )?;
                if let Some(wd) = work_dir {
                    wd.save(b, &done)?;
                    if std::env::var("NQ_TEST_CRASH_AFTER_BLOCK").ok() == Some(b.to_string()) {
                        // Test hook: die as a killed process would.
                        std::process::abort();
                    }
                }
                done
            }
        };
        x_q = x_q
            .iter()
            .map(|x| run_block(&student, w, &rope, x, t))
            .collect();
        x_fp = ys;
        on_block(&br);
        payloads.push(p);
        reports.extend(r);
        blocks.push(br);
    }
    Ok((QuantizedLinears { payloads, reports }, blocks))
}

/// Why reconstruction failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconError {
    /// A layer could not be factorized.
    #[error(transparent)]
    Factor(#[from] FactorError),
    /// The model or windows are inconsistent.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The checkpoint directory.
    #[error(transparent)]
    WorkDir(#[from] super::workdir::WorkDirError),
}

/// ARB-OA over the whole model: every block's q, k, v, o, gate and up are
/// weight-matched ARB-RC layers; its down projection is fitted by
/// [`super::align::arb_oa`] so the quantized stream's block output matches
/// the FP block's (FP inputs `X` vs quantized-stream inputs `X̂` of the down
/// projection over the calibration `windows`).
pub fn output_aligned(
    w: &ModelWeights,
    stats: &ModelStats,
    windows: &[Vec<u32>],
    qopts: &QuantizeOptions,
    on_layer: &(dyn Fn(&LayerReport) + Sync),
    mut on_block: impl FnMut(&BlockReport),
) -> Result<(QuantizedLinears, Vec<BlockReport>), ReconError> {
    use super::align::{arb_oa, AlignOptions, AlignStats};
    let c = &w.config;
    let (t, rope, mut x_fp) = streams(w, windows)?;
    let mut x_q = x_fp.clone();
    let mut payloads = Vec::with_capacity(w.layers.len());
    let mut reports = Vec::new();
    let mut blocks = Vec::new();
    let rc = QuantizeOptions {
        method: Method::ArbRc,
        ..qopts.clone()
    };
    for (b, fp) in w.layers.iter().enumerate() {
        let start = std::time::Instant::now();
        // Weight-matched layers first (all seven; down is replaced below).
        let mut student = fp.clone();
        let mut block_payloads = Vec::with_capacity(7);
        let mut block_reports = Vec::with_capacity(7);
        for id in LinearId::ALL {
            let layer_start = std::time::Instant::now();
            let wt = id.weight(fp);
            let q = quantize_linear(
                wt,
                bias_of(fp, id),
                stats.get(b, id),
                rc.method,
                1,
                &rc.admm,
            )?;
            if id != LinearId::Down {
                *id.weight_mut(&mut student) = q.dense.clone();
            }
            block_reports.push(LayerReport {
                block: b,
                name: super::export::linear_name(b, id),
                m: wt.rows,
                n: wt.cols,
                rank: None,
                bits: q.bits,
                bpw: q.bits as f64 / (wt.rows * wt.cols) as f64,
                weighted_rel_error: q.weighted_rel_error,
                seconds: layer_start.elapsed().as_secs_f64(),
            });
            block_payloads.push(q.payload);
        }
        // The down projection's inputs on both streams.
        let d_ffn = c.d_ffn as usize;
        let mut align = AlignStats::new(d_ffn);
        let mut ys = Vec::with_capacity(x_fp.len());
        for (xf, xq) in x_fp.iter().zip(&x_q) {
            let (mut yf, mut tf) = (xf.clone(), BlockTape::default());
            block_forward(fp, c, &rope, &mut yf, t, Some(&mut tf));
            let (mut yq, mut tq) = (xq.clone(), BlockTape::default());
            block_forward(&student, c, &rope, &mut yq, t, Some(&mut tq));
            align.add(&tf.act, &tq.act)?;
            ys.push(yf);
        }
        let k = LinearId::Down as usize;
        let layer_start = std::time::Instant::now();
        let down = arb_oa(&fp.w_down, &align, None, &AlignOptions::default())?;
        student.w_down = down.dense.clone();
        block_reports[k].weighted_rel_error = super::factor::weighted_rel_error(
            &fp.w_down,
            &down.dense,
            stats.get(b, LinearId::Down),
        );
        block_reports[k].seconds += layer_start.elapsed().as_secs_f64();
        block_payloads[k] = down.payload;
        for r in &block_reports {
            on_layer(r);
        }
        let imp = &stats.get(b, LinearId::Down).output;
        let rel = rel_error(&student, w, &rope, &x_q, &ys, imp, t);
        x_q = x_q
            .iter()
            .map(|x| run_block(&student, w, &rope, x, t))
            .collect();
        x_fp = ys;
        let br = BlockReport {
            block: b,
            rel_output_error: rel,
            seconds: start.elapsed().as_secs_f64(),
        };
        on_block(&br);
        blocks.push(br);
        payloads.push(block_payloads);
        reports.extend(block_reports);
    }
    Ok((QuantizedLinears { payloads, reports }, blocks))
}
