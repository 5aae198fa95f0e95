//! `bgemm-bench`: times nanoquant's binary-factor layers on this machine.
//!
//! Prints one row per (shape, bits per weight, kernel, batch): the median
//! time of `FactorizedLinear::forward_with`, the weight bytes one call reads
//! per second and the sign weights × batch it processes per nanosecond. Every kernel the
//! CPU can run is timed, the portable one included, so one run on a board
//! shows what its SIMD paths buy.
//!
//! ```text
//! bgemm-bench [--small] [--batch N]... [--kernel NAME]... [--min-ms MS]
//! ```
//!
//! `--small` keeps to the SmolLM2-135M shapes (for boards with little RAM
//! or patience); by default the Llama-2-7B projections run too.

use std::time::{Duration, Instant};

use nq_core::kernels::{self, Kernel};
use nq_core::sign::packed_len;
use nq_core::{F16Vector, FactorizedLinear, SignMatrix};

const SMOLLM: [(usize, usize); 4] = [(576, 576), (192, 576), (1536, 576), (576, 1536)];
const LLAMA: [(usize, usize); 3] = [(4096, 4096), (11008, 4096), (4096, 11008)];
const BPW: [f64; 3] = [1.0, 0.8, 0.55];

/// Rank for `bpw` bits per weight with two f16 scale vectors:
/// `r = floor((bpw·m·n − 16(m+n)) / (m+n))`, down to a multiple of 32, at
/// least 32, at most `min(m, n)`.
fn rank(m: usize, n: usize, bpw: f64) -> usize {
    let (mf, nf) = (m as f64, n as f64);
    let r = ((bpw * mf * nf - 16.0 * (mf + nf)) / (mf + nf))
        .floor()
        .max(0.0) as usize;
    (r / 32 * 32).max(32).min(m.min(n))
}

/// xorshift bytes: timing does not care what the signs are.
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

fn layer(m: usize, n: usize, r: usize) -> FactorizedLinear<Vec<u8>> {
    let u = SignMatrix::new(m, r, bytes(packed_len(m, r).unwrap(), 1)).unwrap();
    let v = SignMatrix::new(r, n, bytes(packed_len(r, n).unwrap(), 2)).unwrap();
    let s_pre = F16Vector::from_f32(&floats(n, 3));
    let s_post = F16Vector::from_f32(&floats(m, 4));
    FactorizedLinear::new(u, v, s_pre, s_post, None).unwrap()
}

/// Median of repeated calls, running for at least `min` (and 3 calls).
fn time(min: Duration, mut f: impl FnMut()) -> Duration {
    f(); // warm caches and page in the scratch
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 3 || start.elapsed() < min {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    samples.sort();
    samples[samples.len() / 2]
}

struct Options {
    small: bool,
    batches: Vec<usize>,
    kernels: Vec<Kernel>,
    min: Duration,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        small: false,
        batches: Vec::new(),
        kernels: Vec::new(),
        min: Duration::from_millis(200),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--small" => o.small = true,
            "--batch" => o
                .batches
                .push(value()?.parse().map_err(|e| format!("--batch: {e}"))?),
            "--min-ms" => {
                let ms: u64 = value()?.parse().map_err(|e| format!("--min-ms: {e}"))?;
                o.min = Duration::from_millis(ms);
            }
            "--kernel" => {
                let name = value()?;
                let k = Kernel::ALL
                    .into_iter()
                    .find(|k| k.name() == name)
                    .ok_or(format!("unknown kernel {name}"))?;
                if !k.is_available() {
                    return Err(format!("kernel {name} is not available on this CPU"));
                }
                o.kernels.push(k);
            }
            "-h" | "--help" => {
                return Err(
                    "usage: bgemm-bench [--small] [--batch N]... [--kernel NAME]... [--min-ms MS]"
                        .into(),
                )
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.batches.is_empty() {
        o.batches = vec![1, 16];
    }
    if o.kernels.is_empty() {
        o.kernels = kernels::available().collect();
    }
    Ok(o)
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    println!(
        "kernels available: {}; best: {}; one thread",
        kernels::available()
            .map(Kernel::name)
            .collect::<Vec<_>>()
            .join(", "),
        kernels::best()
    );
    println!(
        "{:>12} {:>5} {:>5} {:>13} {:>6} {:>11} {:>8} {:>11}",
        "shape", "bpw", "rank", "kernel", "batch", "µs", "GB/s", "weights/ns"
    );
    let shapes: Vec<_> = if o.small {
        SMOLLM.to_vec()
    } else {
        SMOLLM.iter().chain(&LLAMA).copied().collect()
    };
    for (m, n) in shapes {
        for bpw in BPW {
            let r = rank(m, n, bpw);
            let l = layer(m, n, r);
            let weight_bytes = packed_len(m, r).unwrap() + packed_len(r, n).unwrap() + 2 * (m + n);
            for &batch in &o.batches {
                let x = floats(batch * n, 5);
                let mut y = vec![0.0f32; batch * m];
                let mut scratch = vec![0.0f32; l.forward_scratch_len(batch)];
                for &k in &o.kernels {
                    let t = time(o.min, || {
                        l.forward_with(k, std::hint::black_box(&x), batch, &mut y, &mut scratch);
                        std::hint::black_box(&y);
                    });
                    let ns = t.as_secs_f64() * 1e9;
                    println!(
                        "{:>12} {:>5.2} {:>5} {:>13} {:>6} {:>11.1} {:>8.2} {:>11.1}",
                        format!("{m}x{n}"),
                        bpw,
                        r,
                        k.name(),
                        batch,
                        ns / 1e3,
                        weight_bytes as f64 / ns,
                        (r * (m + n) * batch) as f64 / ns,
                    );
                }
            }
        }
    }
}
