//! Calibration statistics with the model on a compute device: the pass of
//! [`super::stats::collect`] (per window a forward keeping each block's
//! input, the next-token loss, a backward recomputing one block at a time,
//! every site's clipped energies) with the activations, the logits and all
//! gradients in backend buffers ([`DeviceModel`]). Per site only the token
//! norms come back (the clipping threshold is a running percentile over all
//! windows, kept on the host) and the clipping factors go down; the channel
//! sums are added there.
//!
//! On the CPU backend this is the host pass bit for bit (tested); on a GPU
//! the sums of squares are the CPU's arithmetic, and the reduction orders
//! of norms, RMSNorm, the softmax sums and the products, and the device's
//! `exp`, differ.

use super::model_device::{resident_budget, DeviceModel, DeviceRunError};
use super::stats::{check_windows, ModelStats, Sites, StatsOptions};
use crate::backend::{Compute, ModelBackend};
use crate::model::backward::LinearId;
use crate::model::{ModelError, ModelWeights};

/// [`super::stats::collect`] on backend `be`; the blocks' parameters stay
/// on the device when they take at most `resident_bytes`
/// (on a GPU [`resident_budget`]: at most
/// [`RESIDENT_WEIGHT_BYTES`](super::model_device::RESIDENT_WEIGHT_BYTES)), else
/// they are uploaded block by block, twice per window.
pub fn collect_on<B: ModelBackend>(
    be: &B,
    w: &ModelWeights,
    windows: &[Vec<u32>],
    opts: &StatsOptions,
    resident_bytes: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<ModelStats, DeviceRunError> {
    check_windows(w, windows)?;
    let vocab = w.config.vocab_size as usize;
    let mut model = DeviceModel::new(be, w, resident_bytes)?;
    let mut sites = Sites::new(w.layers.len());
    let (mut loss_sum, mut tokens) = (0.0f64, 0usize);
    let p = opts.clip_percentile;
    for (wi, tokens_w) in windows.iter().enumerate() {
        let t = tokens_w.len();
        let (logits, dlogits) = model.forward(tokens_w)?;
        loss_sum += be.cross_entropy(logits, tokens_w, vocab, dlogits)? * (t - 1) as f64;
        tokens += t;
        model.backward(|b, blk| {
            for id in LinearId::ALL {
                let (out, inp) = blk.dims(id);
                if let Some(site) = sites.input_once(b, id) {
                    site.add_on(be, blk.input(id), inp, p)?;
                }
                sites.outputs[b][id as usize].add_on(be, blk.output_grad(id), out, p)?;
            }
            Ok(())
        })?;
        progress(wi + 1, windows.len());
    }
    Ok(sites.finish(opts, loss_sum, tokens, windows))
}

/// The statistics on `compute`: the device pass on a GPU, the host pass on
/// the CPU. A GPU that fails mid-pass hands the whole pass to the host
/// (one warning on stderr; same result to the documented tolerance).
pub fn collect_with(
    compute: &Compute,
    w: &ModelWeights,
    windows: &[Vec<u32>],
    opts: &StatsOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<ModelStats, ModelError> {
    if let Compute::Cuda(g) = compute {
        match collect_on(&**g, w, windows, opts, resident_budget(g), &mut progress) {
            Ok(s) => return Ok(s),
            Err(e) => e.fall_back("the statistics pass")?,
        }
    }
    super::stats::collect(w, windows, opts, progress)
}
