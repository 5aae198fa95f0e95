//! Block reconstruction with the block on a compute device: the recipe of
//! [`super::recon::reconstruct_block`] (error compensation, ADMM
//! initialization, straight-through training, hardening, in
//! [`super::recon::ORDER`]) with the block's weights, the forward tape, the
//! backward, the weight gradients and every optimizer state in backend
//! buffers ([`DeviceBlock`], [`DeviceFactor`]). Only the ADMM input (one
//! compensated weight per linear) goes down, and the hardened weights go up.
//! `reconstruct_block` runs this on a GPU; on the CPU it keeps its host
//! path, which this follows operation for operation.
//!
//! Calibration activations (block inputs and FP targets) stay on the device
//! for the whole block when they take at most [`RESIDENT_WINDOW_BYTES`];
//! larger sets are streamed, each window uploaded when its step needs it.

use std::time::Instant;

use super::device_block::DeviceBlock;
use super::factor::FactorError;
use super::factor_train::{DeviceFactor, StepRates};
use super::pipeline::{LayerReport, QuantizeOptions};
use super::recon::{
    admm_init, bias_of, cosine, finish_block, hardened_report, mse_norm, rel_error, BlockReport,
    ReconOptions, ORDER,
};
use super::stats::ModelStats;
use crate::backend::{BackendError, BlockBackend};
use crate::blob_writer::TensorPayload;
use crate::model::backward::LinearId;
use crate::model::forward::RopeTable;
use crate::model::{LayerWeights, Matrix, ModelWeights};

/// Calibration activations up to this size (inputs and targets together,
/// f32) stay on the device for the whole block; larger sets are streamed.
pub const RESIDENT_WINDOW_BYTES: usize = 2 << 30;

/// The calibration windows of one block: on the device, or on the host and
/// uploaded per step.
enum Windows<'a, B: BlockBackend> {
    Resident(Vec<(B::Buf, B::Buf)>),
    Streamed(&'a [Vec<f32>], &'a [Vec<f32>]),
}

/// The loss weighting: per-channel importances on the device and the
/// normalizer `t · Σ imp`.
struct Loss<'a, B: BlockBackend> {
    imp: &'a B::Buf,
    norm: f64,
}

/// `epochs` passes over the windows: each step a forward and a backward of
/// `blk`, then `update(blk, lr_factor)` with the cosine factor 1 → 0 (as
/// the host `train`).
fn train<'b, B: BlockBackend>(
    be: &'b B,
    blk: &mut DeviceBlock<'b, B>,
    windows: &Windows<'_, B>,
    loss: &Loss<'_, B>,
    (td, epochs): (usize, usize),
    mut update: impl FnMut(&mut DeviceBlock<'b, B>, f32) -> Result<(), BackendError>,
) -> Result<(), BackendError> {
    let n = match windows {
        Windows::Resident(w) => w.len(),
        Windows::Streamed(xs, _) => xs.len(),
    };
    let total = epochs * n;
    let (mut y, mut dy) = (be.zeros(td)?, be.zeros(td)?);
    let mut step = 0;
    for _ in 0..epochs {
        for i in 0..n {
            let streamed;
            let (x, target) = match windows {
                Windows::Resident(w) => (&w[i].0, &w[i].1),
                Windows::Streamed(xs, ys) => {
                    streamed = (be.upload(&xs[i])?, be.upload(&ys[i])?);
                    (&streamed.0, &streamed.1)
                }
            };
            blk.forward(x, &mut y)?;
            be.weighted_mse_grad(&y, target, loss.imp, loss.norm, &mut dy)?;
            blk.backward(&dy)?;
            update(blk, cosine(1.0, step, total))?;
            step += 1;
        }
    }
    Ok(())
}

/// [`super::recon::reconstruct_block`] on backend `be`: block `b` of `w`
/// (`student` starts as its FP weights and ends hardened) with calibration
/// inputs `xs` and FP targets `ys` (windows of `t` tokens).
#[allow(clippy::type_complexity)]
pub fn reconstruct_block_on<B: BlockBackend>(
    be: &B,
    (b, w, student, stats): (usize, &ModelWeights, &mut LayerWeights, &ModelStats),
    (xs, ys, t): (&[Vec<f32>], &[Vec<f32>], usize),
    qopts: &QuantizeOptions,
    ropts: &ReconOptions,
    on_layer: &(dyn Fn(&LayerReport) + Sync),
) -> Result<(Vec<TensorPayload>, Vec<LayerReport>, BlockReport), FactorError> {
    let start = Instant::now();
    let c = &w.config;
    let d = c.d_model as usize;
    let rope = RopeTable::new(c.head_dim as usize, c.rope_theta, t);
    let imp_host = stats.get(b, LinearId::Down).output.clone();
    let imp = be.upload(&imp_host)?;
    let loss = Loss {
        imp: &imp,
        norm: mse_norm(&imp_host, t),
    };
    let fp = &w.layers[b];
    let windows = if 2 * xs.len() * t * d * 4 <= RESIDENT_WINDOW_BYTES {
        Windows::Resident(
            xs.iter()
                .zip(ys)
                .map(|(x, y)| Ok((be.upload(x)?, be.upload(y)?)))
                .collect::<Result<Vec<_>, BackendError>>()?,
        )
    } else {
        Windows::Streamed(xs, ys)
    };
    let mut blk = DeviceBlock::new(be, student, c, &rope, t)?;
    let sizes = LinearId::ALL.map(|id| id.weight(fp).data.len());
    // AdamW moments and step count of each still-FP linear; weight-gradient
    // buffers of all seven.
    let mut fp_adam: Vec<Option<(B::Buf, B::Buf, i32)>> = sizes
        .iter()
        .map(|&len| Ok(Some((be.zeros(len)?, be.zeros(len)?, 0))))
        .collect::<Result<_, BackendError>>()?;
    let mut dws: Vec<B::Buf> = sizes
        .iter()
        .map(|&len| be.zeros(len))
        .collect::<Result<_, _>>()?;
    let mut done: Vec<Option<(TensorPayload, LayerReport)>> = (0..7).map(|_| None).collect();
    let epochs = |e: usize| (t * d, e);
    for id in ORDER {
        let layer_start = Instant::now();
        let k = id as usize;
        // 1. Error compensation of the still-FP linears.
        if ropts.comp_epochs > 0 {
            let (lr, wd) = (ropts.comp_lr, ropts.weight_decay);
            train(
                be,
                &mut blk,
                &windows,
                &loss,
                epochs(ropts.comp_epochs),
                |blk, f| {
                    for other in LinearId::ALL {
                        let j = other as usize;
                        if let Some((m, v, steps)) = &mut fp_adam[j] {
                            blk.weight_grad(other, &mut dws[j])?;
                            *steps += 1;
                            be.adamw(blk.weight_mut(other), &dws[j], m, v, *steps, lr * f, wd)?;
                        }
                    }
                    Ok(())
                },
            )?;
        }
        // 2. ADMM initialization from the compensated weight.
        let (m, n) = (id.weight(fp).rows, id.weight(fp).cols);
        let mut wt = Matrix::zeros(m, n);
        be.download(blk.weight(id), &mut wt.data)?;
        let state = admm_init(b, id, &wt, stats, qopts)?;
        fp_adam[k] = None;
        let mut dev = DeviceFactor::new(be, &state)?;
        blk.set_weight(id, dev.dense_device(be)?)?;
        // 3. Straight-through training of latents and scales.
        if ropts.ste_epochs > 0 {
            let (llr, slr, wd) = (ropts.latent_lr, ropts.scale_lr, ropts.weight_decay);
            train(
                be,
                &mut blk,
                &windows,
                &loss,
                epochs(ropts.ste_epochs),
                |blk, f| {
                    blk.weight_grad(id, &mut dws[k])?;
                    let rates = StepRates {
                        latent: llr * f,
                        scale: slr * f,
                        weight_decay: wd,
                    };
                    dev.step_device(be, &dws[k], rates)?;
                    blk.set_weight(id, dev.dense_device(be)?)
                },
            )?;
        }
        // 4. Harden and freeze: signs packed on the device, only the bits
        // and the hardened weight come back.
        let bias = bias_of(student, id).map(<[f32]>::to_vec);
        let (hard, payload) = dev.harden(be, bias.as_deref())?;
        let r = dev.dims().2;
        let report = hardened_report((b, id), r, id.weight(fp), &hard, stats, layer_start);
        // The hardened weight is still on the device: no upload.
        blk.set_weight(id, dev.dense_device(be)?)?;
        *id.weight_mut(student) = hard;
        on_layer(&report);
        done[k] = Some((payload, report));
    }
    let rel = rel_error(student, w, &rope, xs, ys, &imp_host, t);
    Ok(finish_block(b, done, rel, start))
}
