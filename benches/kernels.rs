//! Binary-factor GEMV/GEMM kernels against a dense f32 GEMM of the same
//! logical matrix, single thread.
//!
//! `cargo bench --bench kernels` (add a divan filter, e.g. `-- 4096x4096`).
//! Shapes: SmolLM2-135M and Llama-2-7B projections, at the ranks that give
//! 1.0, 0.8 and 0.55 bits per weight (two f16 scale vectors counted).
//! Every benchmark runs `FactorizedLinear::forward_with` end to end
//! (activation quantization and table building included).
//!
//! Counters: bytes = weight bytes one call reads (packed signs + f16 scales
//! for ours, `4·m·n` for dense f32; once per call whatever the batch), items
//! = sign weights `r·(m + n)` for ours, logical weights `m·n` for dense,
//! times the batch (multiply-accumulates per call).
//! Results and the machine they came from: `docs/BENCHMARKS.md`.

#[path = "../examples/bgemm-bench/src/cache.rs"]
mod cache;
#[path = "../examples/bgemm-bench/src/dense.rs"]
mod dense;

use cache::last_level_cache;
use dense::dense;

use std::fmt;
use std::time::Duration;

use divan::counter::{BytesCount, ItemsCount};
use divan::{black_box, Bencher};
use nq_core::kernels::{self, Kernel};
use nq_core::sign::packed_len;
use nq_core::{F16Vector, FactorizedLinear, SignMatrix};

/// One layer shape at one bit budget.
#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    n: usize,
    bpw: f64,
}

impl Case {
    /// The rank the quantizer gives this shape at `bpw` (multiples of 32).
    fn rank(&self) -> usize {
        nq_host::quant::factor::rank_for_bpw(self.m, self.n, self.bpw, 32)
            .expect("benchmark budgets are valid")
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{}@{:.2}bpw(r={})",
            self.m,
            self.n,
            self.bpw,
            self.rank()
        )
    }
}

const SHAPES: [(usize, usize); 7] = [
    (576, 576),
    (192, 576),
    (1536, 576),
    (576, 1536),
    (4096, 4096),
    (11008, 4096),
    (4096, 11008),
];

fn cases() -> impl Iterator<Item = Case> {
    SHAPES.into_iter().flat_map(|(m, n)| {
        [1.0, 0.8, 0.55]
            .into_iter()
            .map(move |bpw| Case { m, n, bpw })
    })
}

/// Deterministic filler (xorshift), good enough for timing.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

fn floats(len: usize, seed: u64) -> Vec<f32> {
    bytes(len, seed)
        .into_iter()
        .map(|b| (f32::from(b) - 127.5) / 64.0)
        .collect()
}

fn layer(c: &Case) -> FactorizedLinear<Vec<u8>> {
    let r = c.rank();
    let u = SignMatrix::new(c.m, r, bytes(packed_len(c.m, r).unwrap(), 1)).unwrap();
    let v = SignMatrix::new(r, c.n, bytes(packed_len(r, c.n).unwrap(), 2)).unwrap();
    let s_pre = F16Vector::from_f32(&floats(c.n, 3));
    let s_post = F16Vector::from_f32(&floats(c.m, 4));
    FactorizedLinear::new(u, v, s_pre, s_post, None).unwrap()
}

/// Bytes of weights the factorized layer reads per token.
fn factor_bytes(c: &Case) -> usize {
    let r = c.rank();
    packed_len(c.m, r).unwrap() + packed_len(r, c.n).unwrap() + 2 * (c.m + c.n)
}

fn run_factorized(bencher: Bencher, c: &Case, kernel: Kernel, batch: usize) {
    let l = layer(c);
    let x = floats(batch * c.n, 5);
    let mut y = vec![0.0f32; batch * c.m];
    let mut scratch = vec![0.0f32; l.forward_scratch_len(batch)];
    bencher
        .counter(BytesCount::new(factor_bytes(c)))
        .counter(ItemsCount::new(c.rank() * (c.m + c.n) * batch))
        .bench_local(|| {
            l.forward_with(kernel, black_box(&x), batch, &mut y, &mut scratch);
            black_box(&y);
        });
}

fn run_dense(bencher: Bencher, m: usize, n: usize, batch: usize) {
    let w = floats(m * n, 6);
    let x = floats(batch * n, 5);
    let mut y = vec![0.0f32; batch * m];
    bencher
        .counter(BytesCount::new(4 * m * n))
        .counter(ItemsCount::new(m * n * batch))
        .bench_local(|| {
            dense(&w, black_box(&x), &mut y, m, n, batch);
            black_box(&y);
        });
}

#[divan::bench(args = cases())]
fn factorized_b1_best(bencher: Bencher, c: &Case) {
    run_factorized(bencher, c, kernels::best(), 1);
}

#[divan::bench(args = cases())]
fn factorized_b1_portable(bencher: Bencher, c: &Case) {
    run_factorized(bencher, c, Kernel::Portable, 1);
}

#[divan::bench(args = cases())]
fn factorized_b16_best(bencher: Bencher, c: &Case) {
    run_factorized(bencher, c, kernels::best(), 16);
}

#[divan::bench(args = cases())]
fn factorized_b16_portable(bencher: Bencher, c: &Case) {
    run_factorized(bencher, c, Kernel::Portable, 16);
}

/// AVX2 next to the best kernel (AVX-512 or AMX where present) on x86_64.
#[divan::bench(args = cases())]
fn factorized_b1_avx2(bencher: Bencher, c: &Case) {
    if Kernel::Avx2.is_available() {
        run_factorized(bencher, c, Kernel::Avx2, 1);
    }
}

#[divan::bench(args = cases())]
fn factorized_b16_avx2(bencher: Bencher, c: &Case) {
    if Kernel::Avx2.is_available() {
        run_factorized(bencher, c, Kernel::Avx2, 16);
    }
}

/// The `vpdpbusd` batch kernel next to the best one where that is AMX.
#[divan::bench(args = cases())]
fn factorized_b16_avx512(bencher: Bencher, c: &Case) {
    if Kernel::Avx512.is_available() {
        run_factorized(bencher, c, Kernel::Avx512, 16);
    }
}

/// Layers in the streaming benchmark: at least 24 × 2.1 MB of signs, and
/// twice the last-level cache where the OS reports a larger one, so each call
/// reads its weights from DRAM as a real decode step (every layer once per
/// token) does.
fn stream_layers(c: &Case) -> usize {
    (2 * last_level_cache()).div_ceil(factor_bytes(c)).max(24)
}

/// 4096×4096 at 1.0 bpw, cycling through [`stream_layers`] distinct layers.
#[divan::bench(args = [1, 16])]
fn factorized_stream_4096x4096_1bpw(bencher: Bencher, batch: usize) {
    let c = Case {
        m: 4096,
        n: 4096,
        bpw: 1.0,
    };
    let count = stream_layers(&c);
    let layers: Vec<_> = (0..count).map(|_| layer(&c)).collect();
    let x = floats(batch * c.n, 5);
    let mut y = vec![0.0f32; batch * c.m];
    let mut scratch = vec![0.0f32; layers[0].forward_scratch_len(batch)];
    let mut next = 0;
    let kernel = kernels::best();
    bencher
        .counter(BytesCount::new(factor_bytes(&c)))
        .counter(ItemsCount::new(c.rank() * (c.m + c.n) * batch))
        .bench_local(|| {
            layers[next].forward_with(kernel, black_box(&x), batch, &mut y, &mut scratch);
            next = (next + 1) % count;
            black_box(&y);
        });
}

fn dense_shapes() -> impl Iterator<Item = String> {
    SHAPES.into_iter().map(|(m, n)| format!("{m}x{n}"))
}

fn parse(shape: &str) -> (usize, usize) {
    let (m, n) = shape.split_once('x').unwrap();
    (m.parse().unwrap(), n.parse().unwrap())
}

#[divan::bench(args = dense_shapes())]
fn dense_f32_b1(bencher: Bencher, shape: &str) {
    let (m, n) = parse(shape);
    run_dense(bencher, m, n, 1);
}

#[divan::bench(args = dense_shapes())]
fn dense_f32_b16(bencher: Bencher, shape: &str) {
    let (m, n) = parse(shape);
    run_dense(bencher, m, n, 16);
}

fn main() {
    println!(
        "kernels available: {:?}, best: {}",
        kernels::available().map(Kernel::name).collect::<Vec<_>>(),
        kernels::best()
    );
    // Short runs: this is meant to finish in minutes on a small machine.
    divan::Divan::from_args()
        .max_time(Duration::from_millis(400))
        .min_time(Duration::from_millis(50))
        .threads([1])
        .main();
}
