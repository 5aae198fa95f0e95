//! Model reconstruction (DESIGN.md §3): with every sign frozen, train all
//! `s_pre`/`s_post` scale vectors end to end so the quantized model's
//! next-token distributions match the FP model's, minimizing
//! KL(teacher ‖ student) over the calibration windows.
//!
//! Teacher distributions are cached as the top-`k` tokens of every position
//! (ids and probabilities renormalized over those `k`): memory stays at
//! `windows · len · k · 8` bytes instead of `windows · len · vocab · 4`, and
//! the loss is the cross-entropy against the truncated teacher (which
//! differs from the KL by the teacher's constant entropy). Its gradient
//! w.r.t. the student logits is `softmax(z) − p̃_teacher`.

use rayon::prelude::*;
use serde::Serialize;

use super::pipeline::QuantizedLinears;
use super::recon::{cosine, Adam, FactorState};
use crate::blob_writer::TensorPayload;
use crate::model::backward::{backward, BackwardOptions, LinearId};
use crate::model::forward::{forward, Tape};
use crate::model::{Matrix, ModelError, ModelWeights};

/// Model-reconstruction settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct KdOptions {
    /// Passes over the windows.
    pub epochs: usize,
    /// Peak AdamW learning rate of the scales (cosine to 0).
    pub lr: f32,
    /// Teacher tokens kept per position.
    pub top_k: usize,
}

impl Default for KdOptions {
    fn default() -> Self {
        Self {
            epochs: 1,
            lr: 1e-3,
            top_k: 64,
        }
    }
}

/// What model reconstruction did.
#[derive(Clone, Debug, Serialize)]
pub struct KdReport {
    /// Mean cross-entropy against the truncated teacher, per epoch (the
    /// first entry is before any update, measured during the first pass).
    pub loss_per_epoch: Vec<f64>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// The top-`k` teacher distribution of each position of one window.
pub(crate) struct TeacherWindow {
    pub(crate) ids: Vec<u32>,
    pub(crate) probs: Vec<f32>,
}

pub(crate) fn teacher(logits: &[f32], vocab: usize, k: usize) -> TeacherWindow {
    let rows: Vec<(Vec<u32>, Vec<f32>)> = logits
        .par_chunks(vocab)
        .map(|row| {
            let mut idx: Vec<u32> = (0..vocab as u32).collect();
            let k = k.min(vocab);
            idx.select_nth_unstable_by(k - 1, |&a, &b| {
                row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b))
            });
            idx.truncate(k);
            idx.sort_unstable();
            let max = idx
                .iter()
                .map(|&i| row[i as usize])
                .fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f64> = idx
                .iter()
                .map(|&i| f64::from(row[i as usize] - max).exp())
                .collect();
            let s: f64 = e.iter().sum();
            (idx, e.iter().map(|x| (x / s) as f32).collect())
        })
        .collect();
    let mut ids = Vec::with_capacity(rows.len() * k);
    let mut probs = Vec::with_capacity(rows.len() * k);
    for (i, p) in rows {
        ids.extend(i);
        probs.extend(p);
    }
    TeacherWindow { ids, probs }
}

/// Loss and `∂loss/∂logits` (mean over positions) against the teacher's
/// `k` tokens of each row (`ids`, `probs`: `rows × k`).
pub(crate) fn kd_loss(
    logits: &[f32],
    (ids, probs): (&[u32], &[f32]),
    vocab: usize,
    k: usize,
) -> (f64, Vec<f32>) {
    let rows = logits.len() / vocab;
    let mut d = vec![0.0f32; logits.len()];
    let losses: Vec<f64> = d
        .par_chunks_mut(vocab)
        .zip(logits.par_chunks(vocab))
        .enumerate()
        .map(|(r, (g, z))| {
            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = z.iter().map(|&v| f64::from(v - max).exp()).sum();
            let lse = f64::from(max) + sum.ln();
            for (gv, &zv) in g.iter_mut().zip(z) {
                *gv = ((f64::from(zv) - lse).exp() / rows as f64) as f32;
            }
            let mut l = 0.0;
            for j in 0..k {
                let (id, p) = (ids[r * k + j] as usize, probs[r * k + j]);
                g[id] -= p / rows as f32;
                l -= f64::from(p) * (f64::from(z[id]) - lse);
            }
            l
        })
        .collect();
    // Summed in row order: the same loss whatever the thread split.
    (losses.iter().sum::<f64>() / rows as f64, d)
}

fn state_of(p: &TensorPayload) -> Option<FactorState> {
    let TensorPayload::Factorized(f) = p else {
        return None;
    };
    let (m, n, r) = (f.out_features(), f.in_features(), f.rank());
    let (u, v) = (f.u(), f.v());
    let mut la = Matrix::zeros(m, r);
    for i in 0..m {
        for k in 0..r {
            la.data[i * r + k] = f32::from(u.sign(i, k));
        }
    }
    let mut lb = Matrix::zeros(r, n);
    for k in 0..r {
        for j in 0..n {
            lb.data[k * n + j] = f32::from(v.sign(k, j));
        }
    }
    Some(FactorState {
        la,
        lb,
        s_pre: f.s_pre().iter().collect(),
        s_post: f.s_post().iter().collect(),
    })
}

/// The student model: `w` with every decoder linear replaced by its
/// quantized form in `q` (a factorized layer as `diag(s_post)·U·V·
/// diag(s_pre)`, a binary or dense payload dequantized), and the training
/// state of each factorized linear (`[block][LinearId::ALL]`).
pub(crate) fn student_of(
    w: &ModelWeights,
    q: &QuantizedLinears,
) -> (ModelWeights, Vec<Vec<Option<FactorState>>>) {
    let mut student = w.clone();
    let mut states = Vec::with_capacity(q.payloads.len());
    for (b, block) in q.payloads.iter().enumerate() {
        let mut row = Vec::with_capacity(LinearId::ALL.len());
        for (id, p) in LinearId::ALL.into_iter().zip(block) {
            let s = state_of(p);
            *id.weight_mut(&mut student.layers[b]) = match &s {
                Some(s) => s.dense(),
                None => crate::quant::export::payload_dense(p),
            };
            row.push(s);
        }
        states.push(row);
    }
    (student, states)
}

/// Replaces each factorized payload of `q` by its layer with the trained
/// scales of `states` (same signs, scales rounded to f16, bias kept).
pub(crate) fn export_scales(
    q: &mut QuantizedLinears,
    states: &[Vec<Option<FactorState>>],
) -> Result<(), ModelError> {
    for (block, row) in q.payloads.iter_mut().zip(states) {
        for (p, slot) in block.iter_mut().zip(row) {
            if let (Some(s), TensorPayload::Factorized(f)) = (slot, &*p) {
                let bias: Option<Vec<f32>> = f.bias().map(|b| b.iter().collect());
                *p = s
                    .payload(bias.as_deref())
                    .map_err(|e| ModelError::Config(e.to_string()))?;
            }
        }
    }
    Ok(())
}

/// Trains every factorized layer's scales in `q` against the FP model `w`
/// on `windows`; `q`'s payloads are replaced by the updated layers.
/// Non-factorized payloads are left alone. `progress(step, total)` after
/// every step.
pub fn model_reconstruct(
    w: &ModelWeights,
    q: &mut QuantizedLinears,
    windows: &[Vec<u32>],
    opts: &KdOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<KdReport, ModelError> {
    let start = std::time::Instant::now();
    let vocab = w.config.vocab_size as usize;
    let k = opts.top_k.clamp(1, vocab);
    let teachers: Vec<TeacherWindow> = windows
        .iter()
        .map(|win| forward(w, win, None).map(|z| teacher(&z, vocab, k)))
        .collect::<Result<_, _>>()?;
    let (mut student, factors) = student_of(w, q);
    let mut states: Vec<Vec<Option<(FactorState, Adam, Adam)>>> = factors
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|s| {
                    s.map(|s| {
                        let (n, m) = (s.s_pre.len(), s.s_post.len());
                        (s, Adam::new(n), Adam::new(m))
                    })
                })
                .collect()
        })
        .collect();
    let total = opts.epochs * windows.len();
    let mut step = 0;
    let mut loss_per_epoch = Vec::with_capacity(opts.epochs);
    for _ in 0..opts.epochs {
        let mut epoch_loss = 0.0;
        for (win, tw) in windows.iter().zip(&teachers) {
            let mut tape = Tape::default();
            let logits = forward(&student, win, Some(&mut tape))?;
            let (loss, dlogits) = kd_loss(&logits, (&tw.ids, &tw.probs), vocab, k);
            drop(logits);
            epoch_loss += loss;
            let mut bo = BackwardOptions {
                weight_grads: true,
                keep_block_input_grads: false,
                keep_linear_output_grads: false,
                on_linear_output_grad: None,
            };
            let grads = backward(&student, &tape, &dlogits, &mut bo);
            drop(tape);
            let gw = grads.weights.expect("weight grads were asked for");
            let lr = cosine(opts.lr, step, total);
            for (b, row) in states.iter_mut().enumerate() {
                for (id, slot) in LinearId::ALL.into_iter().zip(row.iter_mut()) {
                    if let Some((s, a_pre, a_post)) = slot {
                        let g = s.scale_grads(id.weight(&gw.layers[b]));
                        a_pre.step(&mut s.s_pre, &g.0, lr, 0.0);
                        a_post.step(&mut s.s_post, &g.1, lr, 0.0);
                        *id.weight_mut(&mut student.layers[b]) = s.dense();
                    }
                }
            }
            step += 1;
            progress(step, total);
        }
        loss_per_epoch.push(epoch_loss / windows.len() as f64);
    }
    let trained: Vec<Vec<Option<FactorState>>> = states
        .into_iter()
        .map(|row| row.into_iter().map(|s| s.map(|(s, _, _)| s)).collect())
        .collect();
    export_scales(q, &trained)?;
    Ok(KdReport {
        loss_per_epoch,
        seconds: start.elapsed().as_secs_f64(),
    })
}
