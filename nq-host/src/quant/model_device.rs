//! A whole model's forward and backward on a compute device, one window at
//! a time, for the passes that need gradients through every block
//! (calibration statistics, model reconstruction): the forward keeps each
//! block's input, the backward recomputes one block at a time from it
//! (activation checkpointing, as the host statistics pass) and hands each
//! block, with its tape and gradients, to the caller.

use super::device_block::{block_bytes, DeviceBlock, DeviceBlocks};
use crate::backend::{BackendError, ModelBackend, Op};
use crate::model::forward::embed;
use crate::model::{ModelError, ModelWeights};

/// Blocks' f32 parameters up to this size stay on the device for the whole
/// pass; larger models are uploaded block by block as the passes reach
/// them.
pub const RESIDENT_WEIGHT_BYTES: usize = 16 << 30;

/// How many bytes of block parameters may stay on `gpu`: at most
/// [`RESIDENT_WEIGHT_BYTES`] and at most 40 % of the card's memory, which
/// leaves the rest for the activations of a window, the logits, the tape
/// and (in KD) the factors, scales and moments.
pub fn resident_budget(gpu: &crate::backend::CudaBackend) -> usize {
    RESIDENT_WEIGHT_BYTES.min(gpu.gpu().info().total_mem / 5 * 2)
}

/// Whether the blocks' parameters of `w` take at most `bytes` on a device.
pub fn fits(w: &ModelWeights, bytes: usize) -> bool {
    w.layers.iter().map(block_bytes).sum::<usize>() <= bytes
}

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

impl DeviceRunError {
    /// For a device pass that the host can redo: a model error stands (the
    /// host would fail the same way); a backend failure is reported on
    /// stderr, naming `what`, and leaves the pass to the host (`Ok`).
    pub(crate) fn fall_back(self, what: &str) -> Result<(), ModelError> {
        match self {
            DeviceRunError::Model(e) => Err(e),
            DeviceRunError::Backend(e) => {
                eprintln!("warning: {what} on the GPU failed ({e}); running it on the CPU");
                Ok(())
            }
        }
    }
}

/// Buffers of one window length.
struct Window<B: ModelBackend> {
    t: usize,
    block_in: Vec<B::Buf>,
    x: B::Buf,
    y: B::Buf,
    h: B::Buf,
    inv: B::Buf,
    logits: B::Buf,
    dlogits: B::Buf,
    dx: B::Buf,
}

/// Model `w` on backend `be`.
pub struct DeviceModel<'b, 'w, B: ModelBackend> {
    be: &'b B,
    w: &'w ModelWeights,
    blocks: DeviceBlocks<'b, 'w, B>,
    out_norm: B::Buf,
    head: B::Buf,
    win: Option<Window<B>>,
}

impl<'b, 'w, B: ModelBackend> DeviceModel<'b, 'w, B> {
    /// Uploads the head and, when they take at most `resident_bytes`, every
    /// block's parameters.
    pub fn new(
        be: &'b B,
        w: &'w ModelWeights,
        resident_bytes: usize,
    ) -> Result<Self, BackendError> {
        Ok(Self {
            be,
            w,
            blocks: DeviceBlocks::new(be, &w.layers, &w.config, fits(w, resident_bytes))?,
            out_norm: be.upload(&w.output_norm)?,
            head: be.upload(&w.lm_head().data)?,
            win: None,
        })
    }

    /// The forward pass of `tokens`: returns the logits (`t × vocab`) and
    /// the buffer the caller writes `∂L/∂logits` into before
    /// [`DeviceModel::backward`].
    pub fn forward(&mut self, tokens: &[u32]) -> Result<(&B::Buf, &mut B::Buf), DeviceRunError> {
        let (be, c) = (self.be, &self.w.config);
        let (d, vocab) = (c.d_model as usize, c.vocab_size as usize);
        let t = tokens.len();
        if self.win.as_ref().is_none_or(|win| win.t != t) {
            self.win = None;
            let z = |len: usize| be.zeros(len);
            self.win = Some(Window {
                t,
                block_in: (0..self.w.layers.len())
                    .map(|_| z(t * d))
                    .collect::<Result<_, _>>()?,
                x: z(t * d)?,
                y: z(t * d)?,
                h: z(t * d)?,
                inv: z(t)?,
                logits: z(t * vocab)?,
                dlogits: z(t * vocab)?,
                dx: z(t * d)?,
            });
        }
        let win = self.win.as_mut().expect("made above");
        win.x = be.upload(&embed(self.w, tokens)?)?;
        for (b, input) in win.block_in.iter_mut().enumerate() {
            be.copy(input, &win.x)?;
            let y = &mut win.y;
            self.blocks.with_block(b, t, |blk| blk.forward(input, y))?;
            std::mem::swap(&mut win.x, &mut win.y);
        }
        be.rmsnorm(&win.x, &self.out_norm, c.norm_eps, &mut win.h, &mut win.inv)?;
        be.matmul(&mut win.logits, &win.h, &self.head, Op::Nt, (t, vocab, d))?;
        Ok((&win.logits, &mut win.dlogits))
    }

    /// The backward pass of the last forward from the `∂L/∂logits` written
    /// into its buffer: blocks last to first, each recomputed and
    /// backpropagated, then handed to `each(block index, block)` (tape,
    /// output and input gradients valid) before the gradient moves on.
    pub fn backward(
        &mut self,
        mut each: impl FnMut(usize, &mut DeviceBlock<'b, B>) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        let (be, c) = (self.be, &self.w.config);
        let (d, vocab) = (c.d_model as usize, c.vocab_size as usize);
        let win = self
            .win
            .as_mut()
            .ok_or_else(|| BackendError::Device("backward before forward".into()))?;
        let t = win.t;
        let dh = &mut win.h;
        be.matmul(dh, &win.dlogits, &self.head, Op::Nn, (t, d, vocab))?;
        be.rmsnorm_backward(&win.x, &self.out_norm, &win.inv, dh, &mut win.dx, false)?;
        for b in (0..self.w.layers.len()).rev() {
            let (input, y, dx) = (&win.block_in[b], &mut win.y, &mut win.dx);
            self.blocks.with_block(b, t, |blk| {
                blk.forward(input, y)?;
                blk.backward(dx)?;
                each(b, blk)?;
                be.copy(dx, blk.input_grad())
            })?;
        }
        Ok(())
    }
}
