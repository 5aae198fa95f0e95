//! Calibration statistics (DESIGN.md §3): per decoder linear, the mean
//! squared input activation per input channel and the mean squared loss
//! gradient w.r.t. the output per output channel (a diagonal Fisher).
//!
//! One FP forward + backward of next-token cross-entropy per calibration
//! window. Memory streams block by block: the forward keeps only each
//! block's input (`t × d`), the backward recomputes one block's
//! intermediates at a time from it (activation checkpointing), so the peak
//! never holds all layers' activations.
//!
//! Before squaring, each token vector is clipped to L2 norm ≤ τ, where τ is
//! the running 99.9th percentile of that site's token norms (all windows seen
//! so far, this one included). After the last window the energies are
//! shrunk toward their mean, `d ← (1 − γ)·d + γ·mean(d)`, and the output
//! energies are multiplied by [`StatsOptions::output_scale`] for range.

use std::path::Path;

use rayon::prelude::*;

use super::factor::LayerEnergies;
use crate::linalg::matmul_nt;
use crate::model::backward::{block_backward, head_backward, loss_and_dlogits, LinearId};
use crate::model::forward::{block_forward, embed, rmsnorm, BlockTape, RopeTable};
use crate::model::{ModelError, ModelWeights};

/// Statistics options.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatsOptions {
    /// Shrinkage γ toward the mean (paper ≈ 0.2; reference code 0.4).
    pub shrinkage: f32,
    /// Percentile of token norms used as the clipping threshold.
    pub clip_percentile: f64,
    /// Factor applied to output-gradient energies.
    pub output_scale: f32,
}

impl Default for StatsOptions {
    fn default() -> Self {
        Self {
            shrinkage: 0.2,
            clip_percentile: 0.999,
            output_scale: 1e6,
        }
    }
}

/// Statistics of every decoder linear: `layers[block][LinearId::index]`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ModelStats {
    /// Per block, per linear (in [`LinearId::ALL`] order).
    pub layers: Vec<Vec<LayerEnergies>>,
    /// Mean next-token loss over the calibration windows.
    pub mean_loss: f64,
    /// Tokens seen.
    pub tokens: usize,
}

impl ModelStats {
    /// The energies of one linear.
    pub fn get(&self, block: usize, id: LinearId) -> &LayerEnergies {
        &self.layers[block][id as usize]
    }

    /// Writes the statistics with `key` (a description of everything they
    /// depend on) as JSON, atomically.
    pub fn save(&self, path: &Path, key: &str) -> std::io::Result<()> {
        let file = CachedStats {
            key: key.to_string(),
            stats: self.clone(),
        };
        let json = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        crate::blob_writer::write_atomic(path, &json).map_err(std::io::Error::other)
    }

    /// Reads statistics saved by [`save`](Self::save) if the file exists and
    /// its key is `key`; `Ok(None)` when absent or made from other inputs.
    pub fn load(path: &Path, key: &str) -> std::io::Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let file: CachedStats = serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a statistics file: {e}", path.display()),
            )
        })?;
        Ok((file.key == key).then_some(file.stats))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CachedStats {
    key: String,
    stats: ModelStats,
}

/// Running sums of clipped squared token vectors at one site.
#[derive(Clone, Debug, Default)]
struct Site {
    sum: Vec<f64>,
    norms: Vec<f32>,
    tokens: usize,
}

impl Site {
    fn add(&mut self, rows: &[f32], width: usize, percentile: f64) {
        if self.sum.is_empty() {
            self.sum = vec![0.0; width];
        }
        let first_new = self.norms.len();
        self.norms.extend(rows.chunks_exact(width).map(|r| {
            r.iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                .sqrt() as f32
        }));
        let tau = percentile_of(&self.norms, percentile);
        let norms = &self.norms[first_new..];
        // Per channel, so the f64 sums do not depend on the thread split.
        let n_rows = norms.len();
        self.sum.par_iter_mut().enumerate().for_each(|(j, acc)| {
            for (r, &norm) in norms.iter().enumerate().take(n_rows) {
                let scale = if norm > tau && norm > 0.0 {
                    tau / norm
                } else {
                    1.0
                };
                let v = f64::from(rows[r * width + j] * scale);
                *acc += v * v;
            }
        });
        self.tokens += n_rows;
    }

    fn finish(&self, shrinkage: f32, scale: f32) -> Vec<f32> {
        let n = self.tokens.max(1) as f64;
        let mean_vals: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let mean = mean_vals.iter().sum::<f64>() / mean_vals.len().max(1) as f64;
        let g = f64::from(shrinkage);
        mean_vals
            .iter()
            .map(|&d| (((1.0 - g) * d + g * mean) * f64::from(scale)) as f32)
            .collect()
    }
}

/// The `p`-quantile (0..=1) of `values` (nearest rank, no interpolation).
fn percentile_of(values: &[f32], p: f64) -> f32 {
    if values.is_empty() {
        return f32::INFINITY;
    }
    let mut v = values.to_vec();
    let k = ((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1);
    let (_, x, _) = v.select_nth_unstable_by(k, f32::total_cmp);
    *x
}

/// Input sites: q, k and v share one input, gate and up another.
const INPUT_SITES: usize = 4;

fn input_site(id: LinearId) -> usize {
    match id {
        LinearId::Q | LinearId::K | LinearId::V => 0,
        LinearId::O => 1,
        LinearId::Gate | LinearId::Up => 2,
        LinearId::Down => 3,
    }
}

/// Runs the calibration windows through the model and its backward pass.
/// `progress(done, total)` is called after each window.
pub fn collect(
    w: &ModelWeights,
    windows: &[Vec<u32>],
    opts: &StatsOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<ModelStats, ModelError> {
    let c = &w.config;
    let d = c.d_model as usize;
    let vocab = c.vocab_size as usize;
    let n_blocks = w.layers.len();
    if windows.is_empty() {
        return Err(ModelError::Config("no calibration windows".into()));
    }
    let mut inputs = vec![vec![Site::default(); INPUT_SITES]; n_blocks];
    let mut outputs = vec![vec![Site::default(); LinearId::ALL.len()]; n_blocks];
    let (mut loss_sum, mut tokens) = (0.0f64, 0usize);
    for (wi, tokens_w) in windows.iter().enumerate() {
        let t = tokens_w.len();
        if t < 2 {
            return Err(ModelError::Config(
                "calibration windows need at least 2 tokens".into(),
            ));
        }
        let rope = RopeTable::new(c.head_dim as usize, c.rope_theta, t);
        // Forward, keeping only each block's input.
        let mut x = embed(w, tokens_w)?;
        let mut block_in = Vec::with_capacity(n_blocks);
        for l in &w.layers {
            block_in.push(x.clone());
            block_forward(l, c, &rope, &mut x, t, None);
        }
        let mut h = vec![0.0f32; t * d];
        let mut inv = vec![0.0f32; t];
        rmsnorm(&x, &w.output_norm, c.norm_eps, &mut h, &mut inv);
        let mut logits = vec![0.0f32; t * vocab];
        matmul_nt(&mut logits, &h, &w.lm_head().data, t, vocab, d, false);
        let (loss, dlogits) = loss_and_dlogits(&logits, tokens_w, vocab);
        drop(logits);
        loss_sum += loss * (t - 1) as f64;
        tokens += t;
        let mut dx = head_backward(w, &x, &inv, &dlogits, None);
        drop(dlogits);
        // Backward, one recomputed block at a time.
        for b in (0..n_blocks).rev() {
            let l = &w.layers[b];
            let mut xb = std::mem::take(&mut block_in[b]);
            let mut tape = BlockTape::default();
            block_forward(l, c, &rope, &mut xb, t, Some(&mut tape));
            let g = block_backward(l, c, &rope, &tape, &dx, false);
            let mut seen = [false; INPUT_SITES];
            for id in LinearId::ALL {
                let site = input_site(id);
                if !std::mem::replace(&mut seen[site], true) {
                    let inp = id.input(&tape);
                    inputs[b][site].add(inp, inp.len() / t, opts.clip_percentile);
                }
                let go = g.outputs.get(id);
                outputs[b][id as usize].add(go, go.len() / t, opts.clip_percentile);
            }
            dx = g.d_input;
        }
        progress(wi + 1, windows.len());
    }
    let layers = (0..n_blocks)
        .map(|b| {
            LinearId::ALL
                .iter()
                .map(|&id| LayerEnergies {
                    input: inputs[b][input_site(id)].finish(opts.shrinkage, 1.0),
                    output: outputs[b][id as usize].finish(opts.shrinkage, opts.output_scale),
                })
                .collect()
        })
        .collect();
    let predictions: usize = windows.iter().map(|w| w.len() - 1).sum();
    Ok(ModelStats {
        layers,
        mean_loss: loss_sum / predictions as f64,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f32> = (1..=1000).map(|i| i as f32).collect();
        assert_eq!(percentile_of(&v, 0.999), 999.0);
        assert_eq!(percentile_of(&v, 0.0), 1.0);
        assert_eq!(percentile_of(&v, 1.0), 1000.0);
        assert_eq!(percentile_of(&[], 0.5), f32::INFINITY);
    }

    #[test]
    fn site_clips_outlier_tokens_and_shrinks() {
        let mut s = Site::default();
        // 999 tokens of norm 1 along channel 0, one huge token on channel 1.
        let mut rows = vec![0.0f32; 2000];
        for r in 0..999 {
            rows[r * 2] = 1.0;
        }
        rows[999 * 2 + 1] = 1000.0;
        s.add(&rows, 2, 0.999);
        // τ = 1 (the 99.9th percentile), so the outlier counts as norm 1.
        let e = s.finish(0.0, 1.0);
        assert!((e[0] - 0.999).abs() < 1e-6, "{e:?}");
        assert!((e[1] - 0.001).abs() < 1e-6, "{e:?}");
        let shrunk = s.finish(0.5, 1.0);
        let mean = (e[0] + e[1]) / 2.0;
        assert!((shrunk[0] - (0.5 * e[0] + 0.5 * mean)).abs() < 1e-6);
        assert_eq!(s.finish(0.0, 10.0)[0], e[0] * 10.0);
    }
}
