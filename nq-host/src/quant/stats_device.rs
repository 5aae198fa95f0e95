//! Calibration statistics with the model on a compute device: the pass of
//! [`super::stats::collect`] (per window a forward keeping each block's
//! input, the next-token loss, a backward recomputing one block at a time,
//! every site's clipped energies) with the activations, the logits and all
//! gradients in backend buffers. Per site only the token norms come back
//! (the clipping threshold is a running percentile over all windows, kept
//! on the host) and the clipping factors go down; the channel sums are
//! added there.
//!
//! The blocks' parameters stay on the device while they take at most
//! [`RESIDENT_WEIGHT_BYTES`]; a larger model is uploaded block by block as
//! the passes reach it (twice per window).
//!
//! On the CPU backend this is the host pass bit for bit (tested); on a GPU
//! the sums of squares are the CPU's arithmetic and only the reduction
//! orders of norms, RMSNorm and the products differ.

use super::device_block::{DeviceBlocks, DeviceWeights};
use super::stats::{check_windows, ModelStats, Sites, StatsOptions};
use crate::backend::{BackendError, Compute, ModelBackend, Op};
use crate::model::backward::LinearId;
use crate::model::forward::embed;
use crate::model::{ModelError, ModelWeights};

/// Blocks' f32 parameters up to this size stay on the device for the whole
/// pass; larger models are uploaded block by block.
pub const RESIDENT_WEIGHT_BYTES: usize = 16 << 30;

/// A device pass failed: bad input (the same on every device) or the
/// device itself.
#[derive(Debug, thiserror::Error)]
pub enum DeviceRunError {
    /// The model or the windows are unusable.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// [`super::stats::collect`] on backend `be`; the blocks' parameters stay
/// on the device when they take at most `resident_bytes`
/// ([`RESIDENT_WEIGHT_BYTES`] on a GPU).
pub fn collect_on<B: ModelBackend>(
    be: &B,
    w: &ModelWeights,
    windows: &[Vec<u32>],
    opts: &StatsOptions,
    resident_bytes: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<ModelStats, DeviceRunError> {
    check_windows(w, windows)?;
    let c = &w.config;
    let (d, vocab) = (c.d_model as usize, c.vocab_size as usize);
    let n_blocks = w.layers.len();
    let bytes: usize = w.layers.iter().map(DeviceWeights::<B>::bytes).sum();
    let mut blocks = DeviceBlocks::new(be, &w.layers, c, bytes <= resident_bytes)?;
    let out_norm = be.upload(&w.output_norm)?;
    let head = be.upload(&w.lm_head().data)?;
    let mut sites = Sites::new(n_blocks);
    let (mut loss_sum, mut tokens) = (0.0f64, 0usize);
    // Each block's input of the current window (windows of one length).
    let mut block_in: Vec<B::Buf> = Vec::new();
    for (wi, tokens_w) in windows.iter().enumerate() {
        let t = tokens_w.len();
        if wi == 0 || t != windows[wi - 1].len() {
            block_in = (0..n_blocks)
                .map(|_| be.zeros(t * d))
                .collect::<Result<_, _>>()?;
        }
        let mut x = be.upload(&embed(w, tokens_w)?)?;
        let mut y = be.zeros(t * d)?;
        for (b, input) in block_in.iter_mut().enumerate() {
            be.copy(input, &x)?;
            blocks.with_block(b, t, |blk| blk.forward(input, &mut y))?;
            std::mem::swap(&mut x, &mut y);
        }
        // Head: RMSNorm, logits, loss; then its backward into dx.
        let (mut h, mut inv) = (be.zeros(t * d)?, be.zeros(t)?);
        be.rmsnorm(&x, &out_norm, c.norm_eps, &mut h, &mut inv)?;
        let mut dlogits = be.zeros(t * vocab)?;
        {
            let mut logits = be.zeros(t * vocab)?;
            be.matmul(&mut logits, &h, &head, Op::Nt, (t, vocab, d))?;
            let loss = be.cross_entropy(&logits, tokens_w, vocab, &mut dlogits)?;
            loss_sum += loss * (t - 1) as f64;
        }
        tokens += t;
        let dh = &mut h;
        be.matmul(dh, &dlogits, &head, Op::Nn, (t, d, vocab))?;
        drop(dlogits);
        let mut dx = be.zeros(t * d)?;
        be.rmsnorm_backward(&x, &out_norm, &inv, dh, &mut dx, false)?;
        // Backward, one recomputed block at a time.
        for b in (0..n_blocks).rev() {
            blocks.with_block(b, t, |blk| {
                blk.forward(&block_in[b], &mut y)?;
                blk.backward(&dx)?;
                for id in LinearId::ALL {
                    let (out, inp) = blk.dims(id);
                    if let Some(site) = sites.input_once(b, id) {
                        site.add_on(be, blk.input(id), inp, opts.clip_percentile)?;
                    }
                    sites.outputs[b][id as usize].add_on(
                        be,
                        blk.output_grad(id),
                        out,
                        opts.clip_percentile,
                    )?;
                }
                be.copy(&mut dx, blk.input_grad())
            })?;
        }
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
        match collect_on(&**g, w, windows, opts, RESIDENT_WEIGHT_BYTES, &mut progress) {
            Ok(s) => return Ok(s),
            Err(DeviceRunError::Model(e)) => return Err(e),
            Err(DeviceRunError::Backend(e)) => {
                eprintln!("warning: statistics on the GPU failed ({e}); computing them on the CPU")
            }
        }
    }
    super::stats::collect(w, windows, opts, progress)
}
