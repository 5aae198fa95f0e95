//! Output-aligned full-rank binary layers (`nq_host::quant::align`): the
//! statistics reproduce the output objective, ARB-OA beats weight matching
//! and really compensates input drift, every step is monotone, exact layers
//! are recovered, the payload is what `dense` says, and bad input is an
//! error.

use nq_host::model::Matrix;
use nq_host::quant::align::{
    arb_oa, arb_oa_with_trace, output_error, output_rel_error, AlignOptions, AlignStats,
};
use nq_host::quant::factor::{
    binary_bits, quantize_linear, AdmmOptions, FactorError, LayerEnergies, Method,
};
use nq_host::TensorPayload;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn normal(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.sample(StandardNormal)).collect()
}

/// Activation-like inputs (`t × n`): correlated channels with very uneven
/// scales (a few "outlier" channels), as in real LLM layer inputs.
fn inputs(seed: u64, t: usize, n: usize) -> Vec<f32> {
    let mut g = rng(seed);
    let z = normal(&mut g, t * n);
    let mix = normal(&mut g, n * n);
    let scale: Vec<f32> = (0..n)
        .map(|j| {
            let base = (g.gen_range(-1.5f32..1.0)).exp();
            if j % 17 == 3 {
                base * 6.0
            } else {
                base
            }
        })
        .collect();
    let mut x = vec![0.0f32; t * n];
    for r in 0..t {
        for j in 0..n {
            let mut acc = z[r * n + j];
            for k in 0..n {
                acc += 0.4 / (n as f32).sqrt() * z[r * n + k] * mix[k * n + j];
            }
            x[r * n + j] = acc * scale[j];
        }
    }
    x
}

/// Quantized-stream inputs: per-channel gain drift plus noise.
fn drifted(seed: u64, x: &[f32], n: usize) -> Vec<f32> {
    drifted_with(seed, x, n, 0.05)
}

/// Per-channel gains in [0.5, 1.5) and `noise`-relative Gaussian noise.
fn drifted_with(seed: u64, x: &[f32], n: usize, noise: f32) -> Vec<f32> {
    let mut g = rng(seed);
    let gain: Vec<f32> = (0..n).map(|_| g.gen_range(0.5f32..1.5)).collect();
    let eps = normal(&mut g, x.len());
    x.iter()
        .zip(&eps)
        .enumerate()
        .map(|(k, (&v, &e))| v * gain[k % n] + noise * e * v.abs().max(0.3))
        .collect()
}

fn weight(seed: u64, m: usize, n: usize) -> Matrix {
    let mut g = rng(seed);
    let row: Vec<f32> = (0..m).map(|_| g.gen_range(0.02f32..0.08)).collect();
    let data = normal(&mut g, m * n)
        .iter()
        .enumerate()
        .map(|(k, &v)| v * row[k / n])
        .collect();
    Matrix::new(m, n, data).unwrap()
}

fn stats(x: &[f32], xq: &[f32], n: usize) -> AlignStats {
    let mut s = AlignStats::new(n);
    s.add(x, xq).unwrap();
    s
}

/// `‖X Wᵀ − X̂ Ŵᵀ‖²` by explicit products in f64 (the oracle).
fn direct_error(x: &[f32], xq: &[f32], w: &Matrix, w_hat: &Matrix) -> f64 {
    let (m, n) = (w.rows, w.cols);
    let t = x.len() / n;
    let mut acc = 0.0f64;
    for r in 0..t {
        for i in 0..m {
            let (mut y, mut yq) = (0.0f64, 0.0f64);
            for j in 0..n {
                y += f64::from(x[r * n + j]) * f64::from(w.data[i * n + j]);
                yq += f64::from(xq[r * n + j]) * f64::from(w_hat.data[i * n + j]);
            }
            acc += (y - yq) * (y - yq);
        }
    }
    acc
}

fn arb_rc(w: &Matrix) -> Matrix {
    let e = LayerEnergies::uniform(w.rows, w.cols);
    quantize_linear(w, None, &e, Method::ArbRc, 1, &AdmmOptions::default())
        .unwrap()
        .dense
}

const M: usize = 48;
const N: usize = 80;
const T: usize = 1024;

#[test]
fn statistics_reproduce_the_output_objective() {
    let x = inputs(1, T, N);
    let xq = drifted(2, &x, N);
    let w = weight(3, M, N);
    let w_hat = arb_rc(&w);
    // Drifted streams: against explicit products.
    let s = stats(&x, &xq, N);
    let (got, want) = (
        output_error(&w, &w_hat, &s).unwrap(),
        direct_error(&x, &xq, &w, &w_hat),
    );
    assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
    // X̂ = X: the objective is ‖(W − Ŵ)Xᵀ‖² (difference taken in f64).
    let s = stats(&x, &x, N);
    let mut want = 0.0f64;
    for r in 0..T {
        for i in 0..M {
            let y: f64 = (0..N)
                .map(|j| {
                    let d = f64::from(w.data[i * N + j]) - f64::from(w_hat.data[i * N + j]);
                    f64::from(x[r * N + j]) * d
                })
                .sum();
            want += y * y;
        }
    }
    let got = output_error(&w, &w_hat, &s).unwrap();
    assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
    let zero = Matrix::zeros(M, N);
    let denom = direct_error(&x, &x, &w, &zero);
    let rel = output_rel_error(&w, &w_hat, &s).unwrap();
    assert!((rel - want / denom).abs() <= 1e-9 * rel);
    assert!(output_rel_error(&w, &w, &s).unwrap() < 1e-12);
}

#[test]
fn beats_weight_matching_when_streams_agree() {
    let x = inputs(4, T, N);
    let w = weight(5, M, N);
    let s = stats(&x, &x, N);
    let q = arb_oa(&w, &s, None, &AlignOptions::default()).unwrap();
    let e_rc = output_rel_error(&w, &arb_rc(&w), &s).unwrap();
    let e_oa = q.weighted_rel_error;
    eprintln!("X̂ = X: output rel error ARB-RC {e_rc:.4}, ARB-OA {e_oa:.4}");
    assert_eq!(e_oa, output_rel_error(&w, &q.dense, &s).unwrap());
    assert!(e_oa <= e_rc, "{e_oa} > {e_rc}");
    assert!(e_oa < 0.9 * e_rc, "only {e_oa} vs {e_rc}");
}

#[test]
fn compensates_input_drift() {
    let x = inputs(6, T, N);
    let xq = drifted(7, &x, N);
    let w = weight(8, M, N);
    let s_true = stats(&x, &xq, N);
    let s_same = stats(&x, &x, N);
    let opts = AlignOptions::default();
    let e_rc = output_rel_error(&w, &arb_rc(&w), &s_true).unwrap();
    let oa_same = arb_oa(&w, &s_same, None, &opts).unwrap();
    let e_same = output_rel_error(&w, &oa_same.dense, &s_true).unwrap();
    let oa = arb_oa(&w, &s_true, None, &opts).unwrap();
    let e_oa = oa.weighted_rel_error;
    eprintln!(
        "drifted X̂: output rel error ARB-RC {e_rc:.4}, ARB-OA(X̂:=X) {e_same:.4}, ARB-OA {e_oa:.4}"
    );
    assert!(e_oa < 0.9 * e_rc, "{e_oa} vs ARB-RC {e_rc}");
    assert!(e_oa < 0.9 * e_same, "{e_oa} vs ARB-OA(X̂:=X) {e_same}");
    // Pure gain drift X̂ = X·diag(γ) is fully representable (α_c ← α_c/γ):
    // ARB-OA on the drifted stream does as well as without drift.
    let xg = drifted_with(9, &x, N, 0.0);
    let s_gain = stats(&x, &xg, N);
    let e_gain = arb_oa(&w, &s_gain, None, &opts).unwrap().weighted_rel_error;
    let e_clean = oa_same.weighted_rel_error;
    let e_blind = output_rel_error(&w, &oa_same.dense, &s_gain).unwrap();
    eprintln!(
        "gain-only X̂: ARB-OA(X̂:=X) {e_blind:.4}, ARB-OA {e_gain:.4} (no drift: {e_clean:.4})"
    );
    assert!(e_gain < 1.1 * e_clean, "{e_gain} vs {e_clean}");
    assert!(e_gain < 0.9 * e_blind, "{e_gain} vs {e_blind}");
}

#[test]
fn objective_never_increases() {
    for (seed, drift) in [(10u64, false), (11, true), (12, true)] {
        let x = inputs(seed, 300, N);
        let xq = if drift {
            drifted(seed + 100, &x, N)
        } else {
            x.clone()
        };
        let w = weight(seed + 200, M, N);
        let s = stats(&x, &xq, N);
        for damping in [0.0, 0.01, 1.0] {
            let opts = AlignOptions {
                rounds: 12,
                damping,
            };
            let (_, trace) = arb_oa_with_trace(&w, &s, None, &opts).unwrap();
            assert!(trace.len() >= 4, "{trace:?}");
            for pair in trace.windows(2) {
                assert!(pair[1] <= pair[0], "increase in {trace:?}");
            }
            let (first, last) = (trace[0], *trace.last().unwrap());
            assert!(last < 0.95 * first, "no progress: {first} → {last}");
        }
    }
}

#[test]
fn recovers_an_exact_binary_layer() {
    let mut g = rng(20);
    let f16 = |v: f32| half::f16::from_f32(v).to_f32();
    let a: Vec<f32> = (0..M).map(|_| f16(g.gen_range(0.02f32..0.1))).collect();
    let c: Vec<f32> = (0..N).map(|_| f16(g.gen_range(0.5f32..2.0))).collect();
    let signs: Vec<f32> = (0..M * N)
        .map(|_| if g.gen::<bool>() { 1.0 } else { -1.0 })
        .collect();
    let data = (0..M * N).map(|k| a[k / N] * signs[k] * c[k % N]).collect();
    let w = Matrix::new(M, N, data).unwrap();
    let x = inputs(21, 400, N);
    let s = stats(&x, &x, N);
    let q = arb_oa(&w, &s, None, &AlignOptions::default()).unwrap();
    let TensorPayload::Binary(layer) = &q.payload else {
        panic!("not a binary payload");
    };
    for i in 0..M {
        for j in 0..N {
            let want = if signs[i * N + j] < 0.0 { -1 } else { 1 };
            let got = layer.signs().sign(i, j)
                * layer.s_row().get(i).signum() as i8
                * layer.s_col().get(j).signum() as i8;
            assert_eq!(got, want, "sign ({i}, {j})");
        }
    }
    assert!(q.weighted_rel_error < 1e-6, "{}", q.weighted_rel_error);
    let werr: f64 = w
        .data
        .iter()
        .zip(&q.dense.data)
        .map(|(&p, &r)| f64::from(p - r).powi(2))
        .sum::<f64>()
        / w.data.iter().map(|&p| f64::from(p).powi(2)).sum::<f64>();
    assert!(werr < 1e-6, "weight error {werr}");
}

#[test]
fn dense_is_what_the_payload_holds() {
    let x = inputs(30, 256, N);
    let xq = drifted(31, &x, N);
    let w = weight(32, M, N);
    let bias: Vec<f32> = (0..M).map(|i| i as f32 * 0.01 - 0.2).collect();
    let q = arb_oa(
        &w,
        &stats(&x, &xq, N),
        Some(&bias),
        &AlignOptions::default(),
    )
    .unwrap();
    let TensorPayload::Binary(layer) = &q.payload else {
        panic!("not a binary payload");
    };
    let mut deq = vec![0.0f32; M * N];
    layer.dequantize_into(&mut deq);
    assert_eq!(deq, q.dense.data);
    assert_eq!((q.dense.rows, q.dense.cols), (M, N));
    assert_eq!(q.rank, None);
    assert!(q.latents.is_none());
    assert_eq!(q.bits, binary_bits(M, N));
    assert_eq!(q.bits, (M * N + 16 * (M + N)) as u64);
    let b: Vec<f32> = layer.bias().unwrap().iter().collect();
    let want: Vec<f32> = bias
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    assert_eq!(b, want);
}

#[test]
fn chunked_statistics_equal_one_shot() {
    let n = 24;
    let x = inputs(40, 700, n);
    let xq = drifted(41, &x, n);
    let one = stats(&x, &xq, n);
    let mut chunked = AlignStats::new(n);
    let mut merged = AlignStats::new(n);
    let mut start = 0;
    for len in [1usize, 7, 100, 0, 333, 259] {
        let (a, b) = (
            &x[start * n..(start + len) * n],
            &xq[start * n..(start + len) * n],
        );
        chunked.add(a, b).unwrap();
        let mut part = AlignStats::new(n);
        part.add(a, b).unwrap();
        merged.merge(&part).unwrap();
        start += len;
    }
    assert_eq!(start, 700);
    for other in [&chunked, &merged] {
        assert_eq!(other.tokens, 700);
        for (u, v) in [(&one.h, &other.h), (&one.c, &other.c), (&one.g, &other.g)] {
            let scale = u.iter().fold(0.0f64, |a, b| a.max(b.abs()));
            for (p, q) in u.iter().zip(v) {
                assert!((p - q).abs() <= 1e-12 * scale, "{p} vs {q}");
            }
        }
    }
}

#[test]
fn deterministic_across_thread_counts() {
    // Big enough that the products are split across threads.
    let (m, n, t) = (96, 128, 600);
    let x = inputs(50, t, n);
    let xq = drifted(51, &x, n);
    let w = weight(52, m, n);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let s = stats(&x, &xq, n);
            let q = arb_oa(&w, &s, None, &AlignOptions::default()).unwrap();
            (s, q)
        })
    };
    let (s1, q1) = run(1);
    let (s3, q3) = run(3);
    assert_eq!(s1, s3);
    assert_eq!(q1, q3);
}

#[test]
fn rejects_bad_input() {
    let n = 8;
    let x = inputs(60, 10, n);
    let mut s = AlignStats::new(n);
    assert!(matches!(
        s.add(&x, &x[..x.len() - n]),
        Err(FactorError::Length { .. })
    ));
    assert!(matches!(
        s.add(&x[..x.len() - 1], &x[..x.len() - 1]),
        Err(FactorError::Length { .. })
    ));
    let mut bad = x.clone();
    bad[5] = f32::NAN;
    assert!(matches!(s.add(&x, &bad), Err(FactorError::NonFinite(_))));
    assert!(matches!(s.add(&bad, &x), Err(FactorError::NonFinite(_))));
    assert_eq!(
        s,
        AlignStats::new(n),
        "failed adds must not change the sums"
    );
    assert!(matches!(
        AlignStats::new(0).add(&[], &[]),
        Err(FactorError::Empty { .. })
    ));
    let w = weight(61, 4, n);
    let opts = AlignOptions::default();
    // No tokens yet.
    assert!(matches!(
        arb_oa(&w, &s, None, &opts),
        Err(FactorError::BadOption(_))
    ));
    s.add(&x, &x).unwrap();
    assert!(arb_oa(&w, &s, None, &opts).is_ok());
    // Wrong input width.
    let wide = weight(62, 4, n + 1);
    assert!(matches!(
        arb_oa(&wide, &s, None, &opts),
        Err(FactorError::Length { .. })
    ));
    assert!(matches!(
        output_rel_error(&wide, &wide, &s),
        Err(FactorError::Length { .. })
    ));
    assert!(matches!(
        output_rel_error(&w, &wide, &s),
        Err(FactorError::Length { .. })
    ));
    // Non-finite weights, bias, statistics.
    let mut wn = w.clone();
    wn.data[3] = f32::INFINITY;
    assert!(matches!(
        arb_oa(&wn, &s, None, &opts),
        Err(FactorError::NonFinite(_))
    ));
    assert!(matches!(
        arb_oa(&w, &s, Some(&[0.0; 3]), &opts),
        Err(FactorError::Length { .. })
    ));
    assert!(matches!(
        arb_oa(&w, &s, Some(&[f32::NAN; 4]), &opts),
        Err(FactorError::NonFinite(_))
    ));
    let mut sn = s.clone();
    sn.c[0] = f64::NAN;
    assert!(matches!(
        arb_oa(&w, &sn, None, &opts),
        Err(FactorError::NonFinite(_))
    ));
    let mut short = s.clone();
    short.h.pop();
    assert!(matches!(
        arb_oa(&w, &short, None, &opts),
        Err(FactorError::Length { .. })
    ));
    for damping in [-0.1, f64::NAN] {
        let o = AlignOptions { rounds: 2, damping };
        assert!(matches!(
            arb_oa(&w, &s, None, &o),
            Err(FactorError::BadOption(_))
        ));
    }
    assert!(matches!(
        arb_oa(&Matrix::zeros(0, n), &s, None, &opts),
        Err(FactorError::Empty { .. })
    ));
}

#[test]
fn zero_rounds_is_the_arb_rc_start() {
    let x = inputs(70, 256, N);
    let w = weight(71, M, N);
    let s = stats(&x, &x, N);
    let opts = AlignOptions {
        rounds: 0,
        ..AlignOptions::default()
    };
    let (q, trace) = arb_oa_with_trace(&w, &s, None, &opts).unwrap();
    assert_eq!(trace.len(), 1);
    let e_rc = output_rel_error(&w, &arb_rc(&w), &s).unwrap();
    assert!(
        (q.weighted_rel_error - e_rc).abs() <= 1e-3 * e_rc,
        "{} vs {e_rc}",
        q.weighted_rel_error
    );
}

/// Timing at SmolLM2's `ffn_down` shape (576 × 1536, 2048 tokens):
/// `cargo test --release -p nq-host --test align -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_at_ffn_down_shape() {
    let (m, n, t) = (576, 1536, 2048);
    let mut g = rng(80);
    let x: Vec<f32> = normal(&mut g, t * n)
        .iter()
        .enumerate()
        .map(|(k, &v)| v * (1.0 + 4.0 * ((k % n) % 13 == 0) as u8 as f32))
        .collect();
    let xq = drifted(81, &x, n);
    let w = weight(82, m, n);
    let start = std::time::Instant::now();
    let s = stats(&x, &xq, n);
    let t_stats = start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    let (q, trace) = arb_oa_with_trace(&w, &s, None, &AlignOptions::default()).unwrap();
    let t_oa = start.elapsed().as_secs_f64();
    let e_rc = output_rel_error(&w, &arb_rc(&w), &s).unwrap();
    eprintln!(
        "{m}×{n}, {t} tokens: stats {t_stats:.2} s, ARB-OA {t_oa:.2} s ({} steps); \
         output rel error ARB-RC {e_rc:.4} → ARB-OA {:.4}",
        trace.len() - 1,
        q.weighted_rel_error
    );
}
