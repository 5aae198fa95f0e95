//! `nq-host bench runtime`: how fast nq-core's runtime processes a prompt
//! and generates tokens from a blob, in the manner of llama.cpp's
//! `llama-bench`.
//!
//! Two kinds of test, each repeated `reps` times after one untimed warm-up
//! run, from an empty KV cache every time:
//!
//! * `ppN` — prompt processing: one [`Runtime::prefill`] of `N` tokens in
//!   chunks of the runtime's prefill batch (so `--batch 1` is token by token
//!   and larger batches exercise the batched kernels);
//! * `tgN` — text generation: `N` single-token [`Runtime::decode`] steps,
//!   the batch-1 path a device runs per generated token.
//!
//! Token ids are fixed pseudo-random ids of the model's vocabulary: the
//! arithmetic does not depend on them. Each repetition gives one tokens/s
//! sample; a row reports their mean and sample standard deviation.

use std::time::Instant;

use nq_core::kernels::{self, Kernel};
use nq_core::{ActPrecision, BlobView, KvDtype, Runtime, RuntimeError, RuntimeOptions};
use serde::Serialize;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Prompt lengths of the `pp` tests (may be empty).
    pub prompts: Vec<usize>,
    /// Token counts of the `tg` tests (may be empty).
    pub gens: Vec<usize>,
    /// Prefill batch sizes (`pp` tests run once per size; `tg` once).
    pub batches: Vec<usize>,
    /// Kernels to force, in order; `None` is the one nq-core selects.
    pub kernels: Vec<Option<Kernel>>,
    /// KV cache storage types.
    pub kvs: Vec<KvDtype>,
    /// Activation precision of the quantized linears.
    pub act: ActPrecision,
    /// Timed repetitions per test (after one warm-up run).
    pub reps: usize,
}

/// Why a benchmark cannot run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A list that must not be empty is, or a count is zero.
    #[error("{0}")]
    BadSpec(String),
    /// A kernel this CPU cannot run.
    #[error("kernel {kernel} is not available on this CPU (available: {available})")]
    Unavailable {
        /// The kernel asked for.
        kernel: Kernel,
        /// What this CPU runs, comma-separated.
        available: String,
    },
    /// The runtime refused (context, arena, tensors, tokens).
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
}

/// One measured test.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Kernel name.
    pub kernel: String,
    /// Activation precision (`int8` or `f32`).
    pub act: &'static str,
    /// KV cache storage.
    pub kv: &'static str,
    /// Prefill batch the runtime used (`pp` tests; `None` for `tg`).
    pub batch: Option<usize>,
    /// `ppN` or `tgN`.
    pub test: String,
    /// Tokens processed per repetition.
    pub tokens: usize,
    /// Tokens/s of each timed repetition, in order.
    pub samples: Vec<f64>,
    /// Mean of `samples`.
    pub tokens_per_second: f64,
    /// Sample standard deviation of `samples` (0 for one repetition).
    pub stddev: f64,
    /// Arena bytes of the runtime that ran the test.
    pub arena_bytes: usize,
}

/// Mean and sample standard deviation (`n − 1`; 0 for fewer than 2).
pub fn mean_stddev(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, 0.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// `n` fixed pseudo-random token ids below `vocab` (a 64-bit LCG).
pub fn bench_tokens(n: usize, vocab: u32) -> Vec<u32> {
    let mut s: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 33) % u64::from(vocab.max(1))) as u32
        })
        .collect()
}

impl Spec {
    /// The context the tests need: the longest prompt or generation.
    pub fn ctx(&self) -> usize {
        self.prompts
            .iter()
            .chain(&self.gens)
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// Checks the spec against a model whose context is `max_seq_len`.
    pub fn validate(&self, max_seq_len: usize) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::BadSpec(m.to_string()));
        if self.prompts.is_empty() && self.gens.is_empty() {
            return bad("nothing to measure: give -p and/or -n");
        }
        if self.prompts.contains(&0) || self.gens.contains(&0) {
            return bad("-p and -n values must be at least 1");
        }
        if self.reps == 0 {
            return bad("--reps must be at least 1");
        }
        if self.batches.is_empty() || self.batches.contains(&0) {
            return bad("--batch values must be at least 1");
        }
        if self.kernels.is_empty() || self.kvs.is_empty() {
            return bad("--kernel and --kv need at least one value");
        }
        if self.ctx() > max_seq_len {
            return Err(BenchError::BadSpec(format!(
                "a test needs {} positions, more than the model's context ({max_seq_len}): lower -p / -n",
                self.ctx()
            )));
        }
        for k in self.kernels.iter().flatten() {
            if !k.is_available() {
                return Err(BenchError::Unavailable {
                    kernel: *k,
                    available: kernels::available()
                        .map(Kernel::name)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(())
    }
}

/// Restores "no forced kernel" when dropped, also on early returns.
struct Unforce;

impl Drop for Unforce {
    fn drop(&mut self) {
        kernels::set_forced_kernel(None);
    }
}

/// Runs every test of `spec` on `view`, calling `on_row` as each row is
/// done, and returns the rows: for each KV type, each kernel, the `pp`
/// tests at each batch, then the `tg` tests.
///
/// Forces kernels process-wide while it runs (see
/// [`kernels::set_forced_kernel`]) and restores the default at the end.
pub fn run(
    view: BlobView<'_>,
    spec: &Spec,
    mut on_row: impl FnMut(&Row),
) -> Result<Vec<Row>, BenchError> {
    let cfg = *view.config();
    spec.validate(cfg.max_seq_len as usize)?;
    let ctx = spec.ctx();
    let ids = bench_tokens(ctx, cfg.vocab_size);
    let _unforce = Unforce;
    let mut rows = Vec::new();
    for &kv in &spec.kvs {
        for &kernel in &spec.kernels {
            kernels::set_forced_kernel(kernel);
            let name = kernels::selected().to_string();
            for (i, &b) in spec.batches.iter().enumerate() {
                let opts = RuntimeOptions::new(kv).with_max_batch(b).with_act(spec.act);
                let need = Runtime::arena_bytes_with(&cfg, ctx, opts);
                let mut arena = vec![0u8; need];
                let mut rt = Runtime::with_options(view, &mut arena, ctx, opts)?;
                let batch = rt.batch();
                // Generation is batch 1 whatever the prefill batch: it runs
                // with the last runtime only.
                let gens: &[usize] = if i + 1 == spec.batches.len() {
                    &spec.gens
                } else {
                    &[]
                };
                let tests = spec.prompts.iter().map(|&n| (true, n));
                for (pp, n) in tests.chain(gens.iter().map(|&n| (false, n))) {
                    let mut once = || -> Result<f64, BenchError> {
                        rt.reset();
                        let t0 = Instant::now();
                        if pp {
                            rt.prefill(&ids[..n])?;
                        } else {
                            for &t in &ids[..n] {
                                rt.decode(t)?;
                            }
                        }
                        Ok(n as f64 / t0.elapsed().as_secs_f64().max(1e-12))
                    };
                    once()?;
                    let samples = (0..spec.reps)
                        .map(|_| once())
                        .collect::<Result<Vec<_>, _>>()?;
                    let (mean, sd) = mean_stddev(&samples);
                    let row = Row {
                        kernel: name.clone(),
                        act: spec.act.name(),
                        kv: kv.name(),
                        batch: pp.then_some(batch),
                        test: format!("{}{n}", if pp { "pp" } else { "tg" }),
                        tokens: n,
                        samples,
                        tokens_per_second: mean,
                        stddev: sd,
                        arena_bytes: need,
                    };
                    on_row(&row);
                    rows.push(row);
                }
            }
        }
    }
    Ok(rows)
}

/// Output formats of [`render`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A Markdown table.
    Markdown,
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object: `model`, `size_bytes`, `cpu`, `rows`.
    Json,
}

/// The columns every format shares, besides the row's own fields.
#[derive(Clone, Debug, Serialize)]
pub struct Context {
    /// The blob's file name.
    pub model: String,
    /// The blob's size in bytes.
    pub size_bytes: u64,
    /// The CPU, as the OS names it (`unknown` where it does not say).
    pub cpu: String,
    /// nq-host's version.
    pub version: &'static str,
}

/// The Markdown table header (two lines).
pub fn markdown_header() -> String {
    "| model | size | kernel | act | kv | batch | test | t/s |\n\
     |---|---:|---|---|---|---:|---|---:|"
        .to_string()
}

/// One Markdown table line.
pub fn markdown_row(c: &Context, r: &Row) -> String {
    format!(
        "| {} | {:.2} MiB | {} | {} | {} | {} | {} | {:.2} ± {:.2} |",
        c.model,
        c.size_bytes as f64 / (1u64 << 20) as f64,
        r.kernel,
        r.act,
        r.kv,
        r.batch.map_or("-".to_string(), |b| b.to_string()),
        r.test,
        r.tokens_per_second,
        r.stddev
    )
}

/// The CSV header line.
pub const CSV_HEADER: &str =
    "model,size_bytes,cpu,kernel,act,kv,batch,test,tokens,reps,tokens_per_second,stddev,arena_bytes";

/// Quotes a CSV field when it needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One CSV line.
pub fn csv_row(c: &Context, r: &Row) -> String {
    [
        csv_field(&c.model),
        c.size_bytes.to_string(),
        csv_field(&c.cpu),
        csv_field(&r.kernel),
        r.act.to_string(),
        r.kv.to_string(),
        r.batch.map_or(String::new(), |b| b.to_string()),
        r.test.clone(),
        r.tokens.to_string(),
        r.samples.len().to_string(),
        format!("{:.3}", r.tokens_per_second),
        format!("{:.3}", r.stddev),
        r.arena_bytes.to_string(),
    ]
    .join(",")
}

/// The whole result as one JSON object.
pub fn json(c: &Context, rows: &[Row]) -> String {
    #[derive(Serialize)]
    struct Doc<'a> {
        #[serde(flatten)]
        context: &'a Context,
        rows: &'a [Row],
    }
    serde_json::to_string_pretty(&Doc { context: c, rows }).expect("plain data serializes")
}

/// The CPU's model name from `/proc/cpuinfo` (Linux x86 and most aarch64
/// kernels), else `unknown`.
pub fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k.trim(), "model name" | "Model" | "Hardware" | "cpu model")
                .then(|| v.trim().to_string())
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row {
            kernel: "avx2".into(),
            act: "int8",
            kv: "f32",
            batch: Some(32),
            test: "pp64".into(),
            tokens: 64,
            samples: vec![100.0, 110.0, 120.0],
            tokens_per_second: 110.0,
            stddev: 10.0,
            arena_bytes: 1234,
        }
    }

    fn ctx() -> Context {
        Context {
            model: "a,b.nqb".into(),
            size_bytes: 3 << 20,
            cpu: "Some \"CPU\"".into(),
            version: "0.0.0",
        }
    }

    #[test]
    fn mean_and_sample_stddev() {
        let (m, s) = mean_stddev(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(m, 5.0);
        // Σ(x − 5)² = 32; 32 / 7.
        assert!((s - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_stddev(&[3.0]), (3.0, 0.0));
        assert!(mean_stddev(&[]).0.is_nan());
    }

    #[test]
    fn tokens_are_in_range_and_fixed() {
        let a = bench_tokens(500, 7);
        assert!(a.iter().all(|&t| t < 7));
        assert_eq!(a, bench_tokens(500, 7));
        // Not constant: every id of a small vocabulary shows up.
        for id in 0..7 {
            assert!(a.contains(&id), "{id} missing");
        }
    }

    #[test]
    fn spec_checks() {
        let ok = Spec {
            prompts: vec![16, 64],
            gens: vec![32],
            batches: vec![1, 32],
            kernels: vec![None],
            kvs: vec![KvDtype::F32],
            act: ActPrecision::Int8,
            reps: 3,
        };
        assert_eq!(ok.ctx(), 64);
        assert!(ok.validate(64).is_ok());
        assert!(ok
            .validate(63)
            .unwrap_err()
            .to_string()
            .contains("64 positions"));
        let with = |f: &dyn Fn(&mut Spec)| {
            let mut s = ok.clone();
            f(&mut s);
            s.validate(1000).unwrap_err().to_string()
        };
        assert!(with(&|s| s.reps = 0).contains("--reps"));
        assert!(with(&|s| s.prompts.push(0)).contains("at least 1"));
        assert!(with(&|s| s.batches.clear()).contains("--batch"));
        assert!(with(&|s| {
            s.prompts.clear();
            s.gens.clear()
        })
        .contains("nothing to measure"));
        assert!(with(&|s| s.kvs.clear()).contains("--kv"));
        if let Some(k) = Kernel::ALL.into_iter().find(|k| !k.is_available()) {
            let e = with(&|s| s.kernels = vec![Some(k)]);
            assert!(e.contains("not available") && e.contains("portable"), "{e}");
        }
    }

    #[test]
    fn formats_carry_every_column() {
        let (c, r) = (ctx(), row());
        let md = markdown_row(&c, &r);
        assert_eq!(
            md,
            "| a,b.nqb | 3.00 MiB | avx2 | int8 | f32 | 32 | pp64 | 110.00 ± 10.00 |"
        );
        assert_eq!(
            markdown_header()
                .lines()
                .next()
                .unwrap()
                .matches('|')
                .count(),
            md.matches('|').count()
        );
        let tg = Row {
            batch: None,
            test: "tg8".into(),
            ..row()
        };
        assert!(markdown_row(&c, &tg).contains("| - | tg8 |"));

        let line = csv_row(&c, &r);
        assert_eq!(
            line,
            "\"a,b.nqb\",3145728,\"Some \"\"CPU\"\"\",avx2,int8,f32,32,pp64,64,3,110.000,10.000,1234"
        );
        assert_eq!(CSV_HEADER.split(',').count(), 13);

        let v: serde_json::Value = serde_json::from_str(&json(&c, &[r, tg])).unwrap();
        assert_eq!(v["model"], "a,b.nqb");
        assert_eq!(v["size_bytes"], 3u64 << 20);
        assert_eq!(v["rows"][0]["samples"].as_array().unwrap().len(), 3);
        assert_eq!(v["rows"][1]["batch"], serde_json::Value::Null);
        assert_eq!(v["rows"][1]["test"], "tg8");
    }
}
