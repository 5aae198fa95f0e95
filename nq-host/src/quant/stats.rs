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
use crate::backend::{BackendError, ModelBackend};
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
pub(crate) struct Site {
    sum: Vec<f64>,
    norms: Vec<f32>,
    tokens: usize,
}

impl Site {
    /// Records one window's token norms (the rows of this site, `width`
    /// wide) and returns each token's clipping factor: `τ / norm` above the
    /// running percentile τ, else 1.
    fn clip(&mut self, norms: Vec<f32>, width: usize, percentile: f64) -> Vec<f32> {
        if self.sum.is_empty() {
            self.sum = vec![0.0; width];
        }
        let first_new = self.norms.len();
        self.norms.extend(norms);
        let tau = percentile_of(&self.norms, percentile);
        let scales: Vec<f32> = self.norms[first_new..]
            .iter()
            .map(|&norm| {
                if norm > tau && norm > 0.0 {
                    tau / norm
                } else {
                    1.0
                }
            })
            .collect();
        self.tokens += scales.len();
        scales
    }

    fn add(&mut self, rows: &[f32], width: usize, percentile: f64) {
        let scales = self.clip(row_norms_host(rows, width), width, percentile);
        add_clipped_squares_host(rows, &scales, &mut self.sum);
    }

    /// [`Site::add`] for rows in a backend buffer: the norms come back,
    /// the clipping factors go down, the channel sums are updated there.
    pub(crate) fn add_on<B: ModelBackend>(
        &mut self,
        be: &B,
        rows: &B::Buf,
        width: usize,
        percentile: f64,
    ) -> Result<(), BackendError> {
        let scales = self.clip(be.row_norms(rows, width)?, width, percentile);
        be.add_clipped_squares(rows, &scales, &mut self.sum)
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

/// `‖row‖₂` of each row of `rows` (`width` wide), summed in f64.
pub(crate) fn row_norms_host(rows: &[f32], width: usize) -> Vec<f32> {
    rows.chunks_exact(width)
        .map(|r| {
            r.iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                .sqrt() as f32
        })
        .collect()
}

/// `acc[j] += Σ_r (rows[r][j]·scales[r])²` (`scales.len() × acc.len()`):
/// the product in f32, square and sum in f64, rows in order per channel (so
/// the sums do not depend on the thread split).
pub(crate) fn add_clipped_squares_host(rows: &[f32], scales: &[f32], acc: &mut [f64]) {
    let width = acc.len();
    acc.par_iter_mut().enumerate().for_each(|(j, a)| {
        for (r, &scale) in scales.iter().enumerate() {
            let v = f64::from(rows[r * width + j] * scale);
            *a += v * v;
        }
    });
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
    check_windows(w, windows)?;
    let c = &w.config;
    let d = c.d_model as usize;
    let vocab = c.vocab_size as usize;
    let n_blocks = w.layers.len();
    let mut sites = Sites::new(n_blocks);
    let (mut loss_sum, mut tokens) = (0.0f64, 0usize);
    for (wi, tokens_w) in windows.iter().enumerate() {
        let t = tokens_w.len();
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
            for id in LinearId::ALL {
                if let Some(site) = sites.input_once(b, id) {
                    let inp = id.input(&tape);
                    site.add(inp, inp.len() / t, opts.clip_percentile);
                }
                let go = g.outputs.get(id);
                sites.outputs[b][id as usize].add(go, go.len() / t, opts.clip_percentile);
            }
            dx = g.d_input;
        }
        progress(wi + 1, windows.len());
    }
    Ok(sites.finish(opts, loss_sum, tokens, windows))
}

/// Checks calibration windows before a statistics pass: at least one, each
/// of at least 2 tokens, every token in the vocabulary.
pub(crate) fn check_windows(w: &ModelWeights, windows: &[Vec<u32>]) -> Result<(), ModelError> {
    if windows.is_empty() {
        return Err(ModelError::Config("no calibration windows".into()));
    }
    if windows.iter().any(|win| win.len() < 2) {
        return Err(ModelError::Config(
            "calibration windows need at least 2 tokens".into(),
        ));
    }
    let vocab = w.config.vocab_size as usize;
    if let Some(id) = windows.iter().flatten().find(|&&id| id as usize >= vocab) {
        return Err(ModelError::Config(format!(
            "token {id} outside the vocabulary ({vocab})"
        )));
    }
    Ok(())
}

/// The running sums of every site of every block.
pub(crate) struct Sites {
    inputs: Vec<Vec<Site>>,
    pub(crate) outputs: Vec<Vec<Site>>,
    /// Per block, which input sites this window has seen.
    seen: Vec<[bool; INPUT_SITES]>,
}

impl Sites {
    pub(crate) fn new(n_blocks: usize) -> Self {
        Self {
            inputs: vec![vec![Site::default(); INPUT_SITES]; n_blocks],
            outputs: vec![vec![Site::default(); LinearId::ALL.len()]; n_blocks],
            seen: vec![[false; INPUT_SITES]; n_blocks],
        }
    }

    /// The input site of linear `id` of block `b` the first time one of
    /// the linears sharing it asks in a window ([`LinearId::ALL`] order,
    /// `Down` last), `None` after that.
    pub(crate) fn input_once(&mut self, b: usize, id: LinearId) -> Option<&mut Site> {
        let site = input_site(id);
        let seen = &mut self.seen[b];
        let first = !std::mem::replace(&mut seen[site], true);
        if id == LinearId::Down {
            // The block's last linear: the next window starts afresh.
            *seen = [false; INPUT_SITES];
        }
        first.then(|| &mut self.inputs[b][site])
    }

    pub(crate) fn finish(
        &self,
        opts: &StatsOptions,
        loss_sum: f64,
        tokens: usize,
        windows: &[Vec<u32>],
    ) -> ModelStats {
        let layers = (0..self.inputs.len())
            .map(|b| {
                LinearId::ALL
                    .iter()
                    .map(|&id| LayerEnergies {
                        input: self.inputs[b][input_site(id)].finish(opts.shrinkage, 1.0),
                        output: self.outputs[b][id as usize]
                            .finish(opts.shrinkage, opts.output_scale),
                    })
                    .collect()
            })
            .collect();
        let predictions: usize = windows.iter().map(|w| w.len() - 1).sum();
        ModelStats {
            layers,
            mean_loss: loss_sum / predictions as f64,
            tokens,
        }
    }
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
