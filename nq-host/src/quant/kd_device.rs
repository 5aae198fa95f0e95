//! Model reconstruction on a compute device: the recipe of
//! [`super::kd::model_reconstruct`] (top-`k` teacher distributions from
//! the FP model, then AdamW on every factorized layer's two scale vectors
//! against the distillation loss, signs frozen) with the student, its
//! activations, logits, gradients, scales and their moments in backend
//! buffers ([`DeviceModel`]). The teachers' logits come back once per
//! window for the top-`k` selection on the host; after training only the
//! scales come back.
//!
//! Each block's scales are updated as soon as its backward is done: the
//! blocks below only need the gradient already passed on, so this is the
//! host's "all gradients, then all updates" step. On the CPU backend it is
//! the host run bit for bit (tested).

use std::collections::HashMap;
use std::time::Instant;

use super::factor_train::signed_product;
use super::kd::{export_scales, student_of, teacher, KdOptions, KdReport};
use super::model_device::{fits, resident_budget, DeviceModel, DeviceRunError};
use super::pipeline::QuantizedLinears;
use super::recon::{cosine, FactorState};
use crate::backend::{Backend, BackendError, Compute, ModelBackend, Op};
use crate::model::backward::LinearId;
use crate::model::{ModelError, ModelWeights};

/// The trained part of one factorized linear: its frozen signs and its
/// scales with their AdamW moments.
struct Scales<B: Backend> {
    block: usize,
    id: LinearId,
    dims: (usize, usize, usize),
    /// `sign(L_a)` (`m × r`) and `sign(L_b)` (`r × n`).
    u: B::Buf,
    v: B::Buf,
    s_pre: B::Buf,
    s_post: B::Buf,
    pre: (B::Buf, B::Buf),
    post: (B::Buf, B::Buf),
    steps: i32,
}

/// Work buffers shared by the linears of one shape `(m, n, r)`.
struct Scratch<B: Backend> {
    /// `U·V`.
    p: B::Buf,
    /// `∂L/∂Ŵ` and `∂L/∂(U·V)`.
    dw: B::Buf,
    g: B::Buf,
    d_pre: B::Buf,
    d_post: B::Buf,
    /// The scaled factors of `Ŵ`.
    a: B::Buf,
    b: B::Buf,
}

impl<B: Backend> Scratch<B> {
    fn new(be: &B, (m, n, r): (usize, usize, usize)) -> Result<Self, BackendError> {
        Ok(Self {
            p: be.zeros(m * n)?,
            dw: be.zeros(m * n)?,
            g: be.zeros(m * n)?,
            d_pre: be.zeros(n)?,
            d_post: be.zeros(m)?,
            a: be.zeros(m * r)?,
            b: be.zeros(r * n)?,
        })
    }
}

impl<B: Backend> Scales<B> {
    fn new(be: &B, block: usize, id: LinearId, s: &FactorState) -> Result<Self, BackendError> {
        let (m, n, _) = s.dims();
        let zeros2 = |len: usize| -> Result<(B::Buf, B::Buf), BackendError> {
            Ok((be.zeros(len)?, be.zeros(len)?))
        };
        Ok(Self {
            block,
            id,
            dims: s.dims(),
            u: be.upload(&s.la.data)?,
            v: be.upload(&s.lb.data)?,
            s_pre: be.upload(&s.s_pre)?,
            s_post: be.upload(&s.s_post)?,
            pre: zeros2(n)?,
            post: zeros2(m)?,
            steps: 0,
        })
    }

    /// One AdamW step of both scale vectors from `scr.dw = ∂L/∂Ŵ`.
    fn step(&mut self, be: &B, scr: &mut Scratch<B>, lr: f32) -> Result<(), BackendError> {
        let (m, n, r) = self.dims;
        be.matmul(&mut scr.p, &self.u, &self.v, Op::Nn, (m, n, r))?;
        be.scale_grads(
            &scr.dw,
            &scr.p,
            &self.s_pre,
            &self.s_post,
            &mut scr.g,
            &mut scr.d_pre,
            &mut scr.d_post,
        )?;
        self.steps += 1;
        let (pm, pv) = &mut self.pre;
        be.adamw(&mut self.s_pre, &scr.d_pre, pm, pv, self.steps, lr, 0.0)?;
        let (qm, qv) = &mut self.post;
        be.adamw(&mut self.s_post, &scr.d_post, qm, qv, self.steps, lr, 0.0)
    }

    /// `w = diag(s_post)·U·V·diag(s_pre)`.
    fn dense_into(&self, be: &B, scr: &mut Scratch<B>, w: &mut B::Buf) -> Result<(), BackendError> {
        signed_product(
            be,
            (&self.u, &self.v),
            (&self.s_pre, &self.s_post),
            (&mut scr.a, &mut scr.b),
            w,
            self.dims,
        )
    }
}

/// [`super::kd::model_reconstruct`] on backend `be`. The student's blocks
/// must fit in `resident_bytes` (they are trained in place): a larger model
/// is refused before any device work (the caller runs KD on the host).
pub fn model_reconstruct_on<B: ModelBackend>(
    be: &B,
    w: &ModelWeights,
    q: &mut QuantizedLinears,
    windows: &[Vec<u32>],
    opts: &KdOptions,
    resident_bytes: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<KdReport, DeviceRunError> {
    let start = Instant::now();
    let vocab = w.config.vocab_size as usize;
    let k = opts.top_k.clamp(1, vocab);
    // The student has the FP model's shapes: refuse before any device work.
    if !fits(w, resident_bytes) {
        return Err(BackendError::Device(
            "model reconstruction needs the whole student on the device".into(),
        )
        .into());
    }
    let teachers = {
        let mut fp = DeviceModel::new(be, w, resident_bytes)?;
        let mut z = Vec::new();
        windows
            .iter()
            .map(|win| {
                let (logits, _) = fp.forward(win)?;
                z.resize(win.len() * vocab, 0.0);
                be.download(logits, &mut z)?;
                Ok(teacher(&z, vocab, k))
            })
            .collect::<Result<Vec<_>, DeviceRunError>>()?
    };
    let (student, mut factors) = student_of(w, q);
    let mut model = DeviceModel::new(be, &student, resident_bytes)?;
    let mut scales = Vec::new();
    let mut scratch: HashMap<(usize, usize, usize), Scratch<B>> = HashMap::new();
    for (b, row) in factors.iter().enumerate() {
        for (id, s) in LinearId::ALL.into_iter().zip(row) {
            if let Some(s) = s {
                if let std::collections::hash_map::Entry::Vacant(e) = scratch.entry(s.dims()) {
                    e.insert(Scratch::new(be, s.dims())?);
                }
                scales.push(Scales::new(be, b, id, s)?);
            }
        }
    }
    let total = opts.epochs * windows.len();
    let mut step = 0;
    let mut loss_per_epoch = Vec::with_capacity(opts.epochs);
    for _ in 0..opts.epochs {
        let mut epoch_loss = 0.0;
        for (win, tw) in windows.iter().zip(&teachers) {
            let (logits, dlogits) = model.forward(win)?;
            epoch_loss += be.kd_loss(logits, (&tw.ids, &tw.probs), k, vocab, dlogits)?;
            let lr = cosine(opts.lr, step, total);
            model.backward(|b, blk| {
                for sc in scales.iter_mut().filter(|s| s.block == b) {
                    let scr = scratch.get_mut(&sc.dims).expect("made for every shape");
                    blk.weight_grad(sc.id, &mut scr.dw)?;
                    sc.step(be, scr, lr)?;
                    sc.dense_into(be, scr, blk.weight_mut(sc.id))?;
                }
                Ok(())
            })?;
            step += 1;
            progress(step, total);
        }
        loss_per_epoch.push(epoch_loss / windows.len() as f64);
    }
    for sc in &scales {
        let s = factors[sc.block][sc.id as usize]
            .as_mut()
            .expect("a factorized linear");
        be.download(&sc.s_pre, &mut s.s_pre)?;
        be.download(&sc.s_post, &mut s.s_post)?;
    }
    export_scales(q, &factors)?;
    Ok(KdReport {
        loss_per_epoch,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Model reconstruction on `compute`: on the device on a GPU (falling back
/// to the host, with one warning, when the student does not fit or the
/// device fails), on the host on the CPU.
pub fn model_reconstruct_with(
    compute: &Compute,
    w: &ModelWeights,
    q: &mut QuantizedLinears,
    windows: &[Vec<u32>],
    opts: &KdOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<KdReport, ModelError> {
    if let Compute::Cuda(g) = compute {
        let r = model_reconstruct_on(&**g, w, q, windows, opts, resident_budget(g), &mut progress);
        match r {
            Ok(r) => return Ok(r),
            Err(e) => e.fall_back("model reconstruction")?,
        }
    }
    super::kd::model_reconstruct(w, q, windows, opts, progress)
}
