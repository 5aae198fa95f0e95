//! Perplexity and top-1 accuracy with the EVAL.md protocol.
//!
//! Windows of `ctx` tokens cut from the start of the token stream without
//! overlap (a final partial window is dropped); each window is scored as an
//! independent sequence from position 0; every next-token prediction in it
//! counts (`ctx − 1` per window). Log-softmax runs in f64.

use rayon::prelude::*;
use serde::Serialize;

use crate::model::{forward::forward, ModelError, ModelWeights};

/// Outcome of an evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    /// Tokens in the whole text.
    pub tokens: usize,
    /// Complete windows the text holds.
    pub windows_available: usize,
    /// Windows scored.
    pub windows: usize,
    /// Window length.
    pub ctx: usize,
    /// Predictions scored.
    pub predictions: usize,
    /// `exp(total NLL / predictions)`.
    pub ppl: f64,
    /// Share of predictions whose argmax is the next token.
    pub top1: f64,
    /// Sum of NLL per window (to compare window by window).
    pub per_window_nll_sum: Vec<f64>,
    /// Wall time of the scoring in seconds.
    pub seconds: f64,
    /// Tokens processed per second (`windows · ctx / seconds`).
    pub tokens_per_second: f64,
}

/// NLL sum and correct-argmax count of the predictions in one window:
/// row `i` of `logits` (`t × vocab`) predicts `tokens[i + 1]`.
pub fn score_window(logits: &[f32], tokens: &[u32], vocab: usize) -> (f64, usize) {
    let t = tokens.len();
    logits
        .par_chunks(vocab)
        .take(t.saturating_sub(1))
        .zip(tokens[1..].par_iter())
        .map(|(row, &next)| {
            let (mut best, mut max) = (0usize, f32::NEG_INFINITY);
            for (j, &v) in row.iter().enumerate() {
                if v > max {
                    max = v;
                    best = j;
                }
            }
            let m = f64::from(max);
            let lse = m + row
                .iter()
                .map(|&v| (f64::from(v) - m).exp())
                .sum::<f64>()
                .ln();
            (
                lse - f64::from(row[next as usize]),
                usize::from(best == next as usize),
            )
        })
        .reduce(|| (0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Scores the first `max_windows` windows (all when `None`). `progress` is
/// called after each window with (done, total).
pub fn evaluate(
    model: &ModelWeights,
    ids: &[u32],
    ctx: usize,
    max_windows: Option<usize>,
    progress: impl FnMut(usize, usize),
) -> Result<EvalResult, ModelError> {
    evaluate_with(
        |window| forward(model, window, None),
        model.config.vocab_size as usize,
        ids,
        ctx,
        max_windows,
        progress,
    )
}

/// [`evaluate`] with any forward pass: `logits(window)` returns the
/// `window.len() × vocab` logits of one independent sequence (the GPU
/// model's, say).
pub fn evaluate_with(
    mut logits: impl FnMut(&[u32]) -> Result<Vec<f32>, ModelError>,
    vocab: usize,
    ids: &[u32],
    ctx: usize,
    max_windows: Option<usize>,
    mut progress: impl FnMut(usize, usize),
) -> Result<EvalResult, ModelError> {
    if ctx < 2 {
        return Err(ModelError::Config(
            "context must be at least 2 tokens".into(),
        ));
    }
    let available = ids.len() / ctx;
    let n = max_windows.map_or(available, |w| w.min(available));
    if n == 0 {
        return Err(ModelError::Config(format!(
            "text has {} tokens, fewer than one window of {ctx}",
            ids.len()
        )));
    }
    let start = std::time::Instant::now();
    let (mut nll, mut correct) = (0.0f64, 0usize);
    let mut per = Vec::with_capacity(n);
    for w in 0..n {
        let window = &ids[w * ctx..(w + 1) * ctx];
        let l = logits(window)?;
        if l.len() != window.len() * vocab {
            return Err(ModelError::Config(format!(
                "forward returned {} logits for {} tokens of a {vocab}-token vocabulary",
                l.len(),
                window.len()
            )));
        }
        let (s, c) = score_window(&l, window, vocab);
        nll += s;
        correct += c;
        per.push(s);
        progress(w + 1, n);
    }
    let seconds = start.elapsed().as_secs_f64();
    let predictions = n * (ctx - 1);
    Ok(EvalResult {
        tokens: ids.len(),
        windows_available: available,
        windows: n,
        ctx,
        predictions,
        ppl: (nll / predictions as f64).exp(),
        top1: correct as f64 / predictions as f64,
        per_window_nll_sum: per,
        seconds,
        tokens_per_second: (n * ctx) as f64 / seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_vocab_perplexity() {
        let vocab = 10;
        let tokens = [1u32, 2, 3, 4];
        let logits = vec![0.5f32; 4 * vocab];
        let (nll, _) = score_window(&logits, &tokens, vocab);
        assert!((nll / 3.0 - (vocab as f64).ln()).abs() < 1e-12);
    }

    #[test]
    fn scoring_counts_argmax_and_log_probs() {
        // Two predictions over a vocabulary of 3.
        let tokens = [0u32, 2, 1];
        let logits = [
            0.0f32, 0.0, 2.0, // predicts 2: correct, p = e²/(2 + e²)
            1.0, 0.0, 0.0, // predicts 0, target 1: p = 1/(e + 2)
            9.0, 9.0, 9.0, // last row is not scored
        ];
        let (nll, correct) = score_window(&logits, &tokens, 3);
        let e = std::f64::consts::E;
        let want = -(e * e / (2.0 + e * e)).ln() - (1.0 / (e + 2.0)).ln();
        assert!((nll - want).abs() < 1e-12);
        assert_eq!(correct, 1);
    }
}
