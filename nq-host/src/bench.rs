//! `nq-host bench fp32`: throughput of the FP32 reference model.
//!
//! Measures what the quantizer and evaluator spend their time on: prefill
//! (the whole sequence, logits of the last position only — what llama.cpp's
//! `llama-bench -p` measures), a full forward with every position's logits
//! (what perplexity needs), and one forward + backward with weight gradients
//! (what calibration statistics need). Each is run once to warm up, then
//! `iters` times; the median is reported.
//!
//! [`runtime`] measures a quantized blob on nq-core's edge runtime instead
//! (`nq-host bench runtime`).

pub mod runtime;

use std::time::Instant;

use serde::Serialize;

use crate::model::backward::{backward, loss_and_dlogits, BackwardOptions};
use crate::model::forward::{forward, prefill, Tape};
use crate::model::{ModelError, ModelWeights};

/// One measured operation.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    /// What was run.
    pub name: &'static str,
    /// Median wall time of one run, seconds.
    pub seconds: f64,
    /// Fastest run, seconds.
    pub best_seconds: f64,
    /// Sequence tokens per median second.
    pub tokens_per_second: f64,
}

/// The full benchmark result.
#[derive(Clone, Debug, Serialize)]
pub struct Fp32Bench {
    /// Sequence length.
    pub ctx: usize,
    /// Timed runs per operation.
    pub iters: usize,
    /// Rayon threads.
    pub threads: usize,
    /// The measurements.
    pub timings: Vec<Timing>,
    /// Peak resident set size of the process in bytes (Linux only).
    pub peak_rss_bytes: Option<u64>,
}

fn time(
    name: &'static str,
    tokens: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<(), ModelError>,
) -> Result<Timing, ModelError> {
    f()?;
    let mut secs = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        secs.push(start.elapsed().as_secs_f64());
    }
    secs.sort_by(f64::total_cmp);
    let median = secs[secs.len() / 2];
    Ok(Timing {
        name,
        seconds: median,
        best_seconds: secs[0],
        tokens_per_second: tokens as f64 / median,
    })
}

/// Runs the benchmark on `tokens` (one sequence). `backward` adds the
/// forward + backward measurement.
pub fn fp32(
    w: &ModelWeights,
    tokens: &[u32],
    iters: usize,
    with_backward: bool,
) -> Result<Fp32Bench, ModelError> {
    let iters = iters.max(1);
    let t = tokens.len();
    let vocab = w.config.vocab_size as usize;
    let mut timings = vec![
        time("prefill (last-position logits)", t, iters, || {
            prefill(w, tokens).map(drop)
        })?,
        time("forward (all logits)", t, iters, || {
            forward(w, tokens, None).map(drop)
        })?,
    ];
    if with_backward {
        timings.push(time("forward + backward (weight grads)", t, iters, || {
            let mut tape = Tape::default();
            let logits = forward(w, tokens, Some(&mut tape))?;
            let (_, dlogits) = loss_and_dlogits(&logits, tokens, vocab);
            drop(logits);
            let grads = backward(w, &tape, &dlogits, &mut BackwardOptions::full());
            drop(grads);
            Ok(())
        })?);
    }
    Ok(Fp32Bench {
        ctx: t,
        iters,
        threads: rayon::current_num_threads(),
        timings,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// `VmHWM` of this process, from `/proc/self/status`.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One ADMM measurement: a layer shape on one device.
#[derive(Clone, Debug, Serialize)]
pub struct AdmmTiming {
    /// Output features.
    pub m: usize,
    /// Input features.
    pub n: usize,
    /// Rank at the requested bits per weight.
    pub rank: usize,
    /// `cpu` or `cuda:N name`.
    pub device: String,
    /// ADMM iterations run.
    pub iters: usize,
    /// Wall time of the whole factorization (upload, iterations, download,
    /// export), seconds.
    pub seconds: f64,
    /// Product flops per second of the iterations, `4mnr + 4r²(m+n)` per
    /// iteration over `seconds`.
    pub gflops: f64,
    /// Weighted relative error of the result (uniform energies).
    pub rel_error: f64,
}

/// A deterministic layer with structure: rank-8 signal plus noise.
fn bench_layer(m: usize, n: usize) -> crate::model::Matrix {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64((m * 31 + n) as u64);
    let k = 8;
    let u: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let v: Vec<f32> = (0..k * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut data = vec![0.0f32; m * n];
    crate::linalg::matmul_nn(&mut data, &u, &v, m, n, k, false);
    for x in &mut data {
        *x = *x * 0.05 + rng.gen_range(-0.02..0.02);
    }
    crate::model::Matrix {
        rows: m,
        cols: n,
        data,
    }
}

/// Times NanoQuant's ADMM factorization of an `m × n` layer at `bpw` on
/// `compute` (`nq-host bench admm`).
pub fn admm(
    m: usize,
    n: usize,
    bpw: f64,
    iters: usize,
    compute: &crate::backend::Compute,
) -> Result<AdmmTiming, crate::quant::factor::FactorError> {
    use crate::quant::factor::{
        quantize_linear_on, rank_for_bpw, AdmmOptions, LayerEnergies, Method,
    };
    let w = bench_layer(m, n);
    let rank = rank_for_bpw(m, n, bpw, 32)?;
    let e = LayerEnergies::uniform(m, n);
    let opts = AdmmOptions {
        iters,
        ..AdmmOptions::default()
    };
    let start = Instant::now();
    let q = quantize_linear_on(compute, &w, None, &e, Method::NanoQuant, rank, &opts)?;
    let seconds = start.elapsed().as_secs_f64();
    let (mf, nf, rf) = (m as f64, n as f64, rank as f64);
    let flops = iters as f64 * (4.0 * mf * nf * rf + 4.0 * rf * rf * (mf + nf));
    Ok(AdmmTiming {
        m,
        n,
        rank,
        device: compute.describe(),
        iters,
        seconds,
        gflops: flops / seconds / 1e9,
        rel_error: q.weighted_rel_error,
    })
}

/// SmolLM2-135M's shapes (30 blocks of d 576, FFN 1536, 9 query and 3 KV
/// heads of 64, vocabulary 49,152, tied head) with `layers` blocks: what
/// `bench stats` runs on random weights, so it needs no download.
pub fn smollm2_shapes(layers: u32) -> crate::model::ModelConfig {
    crate::model::ModelConfig {
        arch: crate::model::Arch::Llama,
        n_layers: layers,
        d_model: 576,
        d_ffn: 1536,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        vocab_size: 49_152,
        max_seq_len: 8192,
        rope_theta: 100_000.0,
        norm_eps: 1e-5,
        tied_embeddings: true,
        attn_bias: false,
        qk_norm: false,
        bos_id: None,
        eos_id: None,
    }
}

/// One statistics pass, timed (`nq-host bench stats`).
#[derive(Clone, Debug, Serialize)]
pub struct StatsTiming {
    /// `cpu` or `cuda:N name`.
    pub device: String,
    /// Blocks of the model.
    pub layers: u32,
    /// Calibration windows × tokens.
    pub windows: usize,
    /// Tokens per window.
    pub ctx: usize,
    /// Wall time of the pass, seconds.
    pub seconds: f64,
    /// Calibration tokens per second.
    pub tokens_per_second: f64,
    /// Calibration loss (the same model and windows on every device).
    pub mean_loss: f64,
    /// Largest difference of any energy from the first device's, relative
    /// to its vector's largest entry (`None` for the first device).
    pub max_rel_diff: Option<f64>,
}

/// Times the calibration-statistics pass of a random model `w` over
/// `windows` on `compute` (the host pass on the CPU, the device pass on a
/// GPU, without the fallback). Returns the timing (without
/// `max_rel_diff`) and the statistics.
pub fn stats(
    w: &ModelWeights,
    windows: &[Vec<u32>],
    compute: &crate::backend::Compute,
) -> anyhow::Result<(StatsTiming, crate::quant::stats::ModelStats)> {
    use crate::backend::Compute;
    use crate::quant::stats::{collect, StatsOptions};
    let opts = StatsOptions::default();
    let start = Instant::now();
    let s = match compute {
        Compute::Cpu => collect(w, windows, &opts, |_, _| {})?,
        Compute::Cuda(g) => crate::quant::stats_device::collect_on(
            &**g,
            w,
            windows,
            &opts,
            crate::quant::model_device::resident_budget(g),
            |_, _| {},
        )?,
    };
    let seconds = start.elapsed().as_secs_f64();
    let tokens: usize = windows.iter().map(Vec::len).sum();
    Ok((
        StatsTiming {
            device: compute.describe(),
            layers: w.config.n_layers,
            windows: windows.len(),
            ctx: windows.first().map_or(0, Vec::len),
            seconds,
            tokens_per_second: tokens as f64 / seconds,
            mean_loss: s.mean_loss,
            max_rel_diff: None,
        },
        s,
    ))
}

/// The largest difference between two sets of statistics' energies,
/// relative to each vector's largest entry.
pub fn max_rel_diff(
    a: &crate::quant::stats::ModelStats,
    b: &crate::quant::stats::ModelStats,
) -> f64 {
    let pairs = a.layers.iter().flatten().zip(b.layers.iter().flatten());
    let mut worst = 0.0f64;
    for (x, y) in pairs {
        for (u, v) in [(&x.input, &y.input), (&x.output, &y.output)] {
            let scale = u
                .iter()
                .fold(0.0f32, |m, e| m.max(e.abs()))
                .max(f32::MIN_POSITIVE);
            for (p, q) in u.iter().zip(v) {
                worst = worst.max(f64::from((p - q).abs() / scale));
            }
        }
    }
    worst
}
