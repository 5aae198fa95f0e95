//! nq-core's runtime against nq-host's f32 reference on one real blob, token
//! for token (issue 7, "Equivalence"). Shared by `runtime.rs` (blobs named by
//! `NQ_SMOLLM2_BLOB`) and `smollm2.rs` (quick blobs made from the GGUF).
//!
//! One greedy continuation of `steps` tokens by the runtime with f32
//! activations and f32 KV; one reference forward (`forward` on
//! `dequantize_blob`) over the prompt and those tokens gives the reference's
//! logits at every step. If the runtime's token equals the reference's
//! argmax at every step, the reference's own greedy continuation is the
//! same sequence (each step sees the same prefix). The int8 runtime is then
//! run teacher-forced on the same tokens: its logit error at every step, and
//! how many leading steps its argmax agrees (= its free-running greedy
//! agreement).

use nq_core::runtime::argmax;
use nq_core::{ActPrecision, Blob, KvDtype, Runtime, RuntimeOptions};
use nq_host::model::forward::forward;
use nq_host::quant::export::{blob_tokenizer_json, dequantize_blob};
use nq_host::tokenizer::Tokenizer;

/// Budget of `max|Δlogit| / max|logit_ref|` with f32 activations and f32
/// KV on the SmolLM2 blobs of docs/RESULTS.md (30 layers, full recipe at
/// 1.0 bpw, admm-only at 0.55): measured 4.8e-6 and 2.3e-6 (2026-11-26; see
/// docs/BENCHMARKS.md "Runtime"), 10× margin. f32 rounding and summation
/// order only; a wrong operation gives errors of 1e-2 or more.
pub const REL_TOL_REAL_F32: f32 = 5e-5;

/// The same for the quick blobs CI makes (`smollm2.rs`: admm-only, 2 × 64
/// calibration tokens, 10 ADMM iterations): measured 2.2e-5 (1.0 bpw) and
/// 2.4e-6 (0.55 bpw). The f32 differences of such blobs vary more: up to
/// 1.2e-4 on other 10-iteration quick blobs, 1.2e-2 on a 5-iteration one
/// (whose reference moves by 2.7e-3 when every decoder weight is nudged by
/// one ulp: f32 rounding alone is that large there). The budget allows for
/// that and for a blob that differs in its last bits on another machine,
/// and stays 100× below the int8 error.
pub const REL_TOL_QUICK_F32: f32 = 1e-3;

/// The budget with int8 activations (the default), teacher-forced, on the
/// docs/RESULTS.md blobs: measured 0.047 (1.0 bpw) and 0.074 (0.55 bpw) on
/// 64 steps. Not asserted on quick blobs (0.11–0.43 there, and up to 2.5
/// on a 5-iteration blob whose activations blow up).
pub const REL_TOL_REAL_INT8: f32 = 0.15;

/// The prompt text (tokenized by the blob's tokenizer when it has one).
pub const PROMPT: &str = "Once upon a time, in a small village by the sea, there lived";

/// How one runtime mode compares with the reference over the steps.
#[derive(Clone, Copy, Debug)]
pub struct Agreement {
    /// Largest `max|Δlogit| / max|logit_ref|` over the steps.
    pub max_rel_err: f32,
    /// Leading steps whose argmax equals the reference's.
    pub greedy_prefix: usize,
    /// Steps (of all, teacher-forced) whose argmax equals the reference's.
    pub top1: usize,
}

/// Both modes on one blob.
#[derive(Clone, Debug)]
pub struct Report {
    /// Generated tokens checked.
    pub steps: usize,
    /// Prompt tokens.
    pub prompt_len: usize,
    /// `ActPrecision::F32`, f32 KV.
    pub f32: Agreement,
    /// `ActPrecision::Int8` (the default), f32 KV.
    pub int8: Agreement,
    /// Smallest top-2 logit margin of the reference over the steps.
    pub min_margin: f32,
    /// The runtime's (f32 mode) greedy tokens.
    pub tokens: Vec<u32>,
}

impl Report {
    /// Asserts the demand: f32 mode within `f32_tol` and a greedy
    /// continuation equal to the reference's at every step; int8 mode within
    /// `int8_tol` when given. Prints the report.
    pub fn assert_equivalent(&self, what: &str, f32_tol: f32, int8_tol: Option<f32>) {
        eprintln!(
            "{what}: prompt {} tokens, {} greedy steps; f32 act: max rel err {:.2e}, greedy {}/{}; \
             int8 act: max rel err {:.4}, greedy {}/{} (teacher-forced top-1 {}/{}); \
             smallest reference top-2 margin {:.2e}; distinct tokens {}",
            self.prompt_len,
            self.steps,
            self.f32.max_rel_err,
            self.f32.greedy_prefix,
            self.steps,
            self.int8.max_rel_err,
            self.int8.greedy_prefix,
            self.steps,
            self.int8.top1,
            self.steps,
            self.min_margin,
            self.tokens.iter().collect::<std::collections::BTreeSet<_>>().len(),
        );
        assert_eq!(self.f32.greedy_prefix, self.steps, "{what}: {self:?}");
        assert!(self.f32.max_rel_err < f32_tol, "{what}: {self:?}");
        if let Some(tol) = int8_tol {
            assert!(self.int8.max_rel_err < tol, "{what}: {self:?}");
        }
    }
}

/// `max|a − b| / max|b|`.
pub fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

fn top2_margin(l: &[f32]) -> f32 {
    let best = argmax(l) as usize;
    let second = l
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .fold(f32::NEG_INFINITY, |m, (_, &v)| m.max(v));
    l[best] - second
}

fn prompt_ids(view: &nq_core::BlobView<'_>) -> Vec<u32> {
    let c = view.config();
    if let Ok(Some(json)) = blob_tokenizer_json(view) {
        if let Ok(t) = Tokenizer::from_json_bytes(json) {
            let t = t.with_special_ids(c.bos_id, c.eos_id);
            if let Ok(ids) = t.encode(PROMPT) {
                if !ids.is_empty() {
                    return ids;
                }
            }
        }
    }
    (0..16u32).map(|i| (200 + i * 977) % c.vocab_size).collect()
}

/// The logits before each of `steps` tokens: prefill `prompt`, then decode
/// `forced` (or the runtime's own argmax where `forced` is `None`).
fn run_runtime(
    bytes: &[u8],
    act: ActPrecision,
    prompt: &[u32],
    forced: Option<&[u32]>,
    steps: usize,
) -> (Vec<Vec<f32>>, Vec<u32>) {
    let view = Blob::parse(bytes).unwrap();
    let ctx = prompt.len() + steps;
    let opts = RuntimeOptions::new(KvDtype::F32).with_act(act);
    let mut arena = vec![0u8; Runtime::arena_bytes_with(view.config(), ctx, opts)];
    let mut rt = Runtime::with_options(view, &mut arena, ctx, opts).unwrap();
    assert_eq!(rt.act_precision(), act);
    let mut rows = vec![rt.prefill(prompt).unwrap().to_vec()];
    let mut toks = Vec::new();
    for i in 0..steps {
        let next = forced.map_or_else(|| argmax(&rows[i]), |f| f[i]);
        toks.push(next);
        if i + 1 < steps {
            rows.push(rt.decode(next).unwrap().to_vec());
        }
    }
    (rows, toks)
}

fn agreement(rows: &[Vec<f32>], want: &[Vec<f32>]) -> Agreement {
    let same: Vec<bool> = rows
        .iter()
        .zip(want)
        .map(|(g, w)| argmax(g) == argmax(w))
        .collect();
    Agreement {
        max_rel_err: rows
            .iter()
            .zip(want)
            .map(|(g, w)| rel_err(g, w))
            .fold(0.0, f32::max),
        greedy_prefix: same.iter().take_while(|&&s| s).count(),
        top1: same.iter().filter(|&&s| s).count(),
    }
}

/// Compares both runtime modes with the reference over `steps` greedy
/// tokens (see the module docs).
pub fn compare(bytes: &[u8], steps: usize) -> Report {
    let view = Blob::parse(bytes).unwrap();
    view.verify().unwrap();
    let prompt = prompt_ids(&view);
    let w = dequantize_blob(&view).unwrap();
    let vocab = w.config.vocab_size as usize;
    let (rows_f32, tokens) = run_runtime(bytes, ActPrecision::F32, &prompt, None, steps);
    let mut seq = prompt.clone();
    seq.extend_from_slice(&tokens[..steps - 1]);
    let all = forward(&w, &seq, None).unwrap();
    let want: Vec<Vec<f32>> = (0..steps)
        .map(|i| {
            let p = prompt.len() - 1 + i;
            all[p * vocab..(p + 1) * vocab].to_vec()
        })
        .collect();
    let (rows_i8, _) = run_runtime(bytes, ActPrecision::Int8, &prompt, Some(&tokens), steps);
    Report {
        steps,
        prompt_len: prompt.len(),
        f32: agreement(&rows_f32, &want),
        int8: agreement(&rows_i8, &want),
        min_margin: want
            .iter()
            .map(|l| top2_margin(l))
            .fold(f32::INFINITY, f32::min),
        tokens,
    }
}
