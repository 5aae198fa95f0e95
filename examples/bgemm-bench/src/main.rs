//! `bgemm-bench`: times nanoquant's binary-factor layers on this machine.
//!
//! Prints one row per (shape, bits per weight, kernel, batch): the median
//! time of `FactorizedLinear::forward_with`, the weight bytes one call reads
//! per second, the sign weights × batch it processes per nanosecond, tokens
//! per second, throughput relative to batch 1 of the same kernel and speed
//! relative to a dense f32 GEMV/GEMM of the same logical matrix (`gemm`,
//! one thread), which gets rows of its own. Every kernel the CPU can run is
//! timed, the portable one included, so one run on a board shows what its
//! SIMD paths buy and whether batching pays.
//!
//! ```text
//! bgemm-bench [--small] [--shape MxN]... [--bpw B]... [--batch N]...
//!             [--kernel NAME]... [--no-dense] [--stream] [--min-ms MS]
//!             [--format text|csv|json]
//! ```
//!
//! The list options also take comma-separated values (`--batch 1,16`).
//! `--small` keeps to the SmolLM2-135M shapes (for boards with little RAM
//! or patience); by default the Llama-2-7B projections run too. `--stream`
//! cycles every timed call through enough copies of the weights to exceed
//! the last-level cache, so they come from DRAM as in a real decode step.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

mod cache;
mod dense;

use cache::last_level_cache;
use dense::dense;
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

fn layer(m: usize, n: usize, r: usize, seed: u64) -> FactorizedLinear<Vec<u8>> {
    let u = SignMatrix::new(m, r, bytes(packed_len(m, r).unwrap(), seed)).unwrap();
    let v = SignMatrix::new(r, n, bytes(packed_len(r, n).unwrap(), seed + 1)).unwrap();
    let s_pre = F16Vector::from_f32(&floats(n, seed + 2));
    let s_post = F16Vector::from_f32(&floats(m, seed + 3));
    FactorizedLinear::new(u, v, s_pre, s_post, None).unwrap()
}

/// Median of repeated calls, running for at least `min` (and 3 calls).
/// `f` gets the call's index (to pick the next copy of the weights).
fn time(min: Duration, mut f: impl FnMut(usize)) -> Duration {
    f(0); // warm caches and page in the scratch
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 3 || start.elapsed() < min {
        let t = Instant::now();
        f(samples.len() + 1);
        samples.push(t.elapsed());
    }
    samples.sort();
    samples[samples.len() / 2]
}

/// Copies of `bytes`-sized weights that `--stream` cycles through: enough
/// for twice the last-level cache.
fn copies(stream: bool, bytes: usize) -> usize {
    if stream {
        (2 * last_level_cache()).div_ceil(bytes.max(1)).max(2)
    } else {
        1
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Csv,
    Json,
}

struct Options {
    shapes: Vec<(usize, usize)>,
    bpws: Vec<f64>,
    batches: Vec<usize>,
    kernels: Vec<Kernel>,
    dense: bool,
    stream: bool,
    min: Duration,
    format: Format,
}

const USAGE: &str = "usage: bgemm-bench [--small] [--shape MxN[,MxN]]... [--bpw B[,B]]... \
[--batch N[,N]]... [--kernel NAME[,NAME]]... [--no-dense] [--stream] [--min-ms MS] \
[--format text|csv|json]";

fn parse_shape(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("--shape {s}: expected MxN with M, N > 0, e.g. 4096x4096");
    let (m, n) = s.split_once('x').ok_or_else(bad)?;
    let (m, n): (usize, usize) = (m.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if m == 0 || n == 0 {
        return Err(bad());
    }
    Ok((m, n))
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        shapes: Vec::new(),
        bpws: Vec::new(),
        batches: Vec::new(),
        kernels: Vec::new(),
        dense: true,
        stream: false,
        min: Duration::from_millis(200),
        format: Format::Text,
    };
    let mut small = false;
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--small" => small = true,
            "--no-dense" => o.dense = false,
            "--stream" => o.stream = true,
            // List options take one value or several, comma-separated,
            // and may be repeated.
            "--shape" => {
                for v in value()?.split(',') {
                    o.shapes.push(parse_shape(v)?);
                }
            }
            "--bpw" => {
                for v in value()?.split(',') {
                    let b: f64 = v.parse().map_err(|_| format!("--bpw {v}: not a number"))?;
                    if !(b > 0.0 && b <= 16.0) {
                        return Err(format!("--bpw {v}: expected a value in (0, 16]"));
                    }
                    o.bpws.push(b);
                }
            }
            "--batch" => {
                for v in value()?.split(',') {
                    match v.parse::<usize>() {
                        Ok(b) if b > 0 => o.batches.push(b),
                        _ => return Err(format!("--batch {v}: expected a positive integer")),
                    }
                }
            }
            "--min-ms" => {
                let v = value()?;
                let ms: u64 = v
                    .parse()
                    .map_err(|_| format!("--min-ms {v}: not an integer"))?;
                o.min = Duration::from_millis(ms);
            }
            "--format" => {
                o.format = match value()?.as_str() {
                    "text" => Format::Text,
                    "csv" => Format::Csv,
                    "json" => Format::Json,
                    f => return Err(format!("--format {f}: expected text, csv or json")),
                }
            }
            "--kernel" => {
                for name in value()?.split(',') {
                    let k = Kernel::ALL
                        .into_iter()
                        .find(|k| k.name() == name)
                        .ok_or(format!("unknown kernel {name}"))?;
                    if !k.is_available() {
                        return Err(format!("kernel {name} is not available on this CPU"));
                    }
                    if !o.kernels.contains(&k) {
                        o.kernels.push(k);
                    }
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    if o.shapes.is_empty() {
        o.shapes = SMOLLM.to_vec();
        if !small {
            o.shapes.extend(LLAMA);
        }
    }
    if o.bpws.is_empty() {
        o.bpws = BPW.to_vec();
    }
    if o.batches.is_empty() {
        o.batches = vec![1, 16];
    }
    // Batch 1 first, so the other batches can be compared with it.
    o.batches.sort_unstable();
    o.batches.dedup();
    if o.kernels.is_empty() {
        o.kernels = kernels::available().collect();
    }
    Ok(o)
}

/// One timed configuration.
struct Row {
    m: usize,
    n: usize,
    /// `None` for the dense f32 reference.
    bpw: Option<f64>,
    rank: Option<usize>,
    kernel: &'static str,
    batch: usize,
    /// Median time of one call.
    ns: f64,
    /// Weight bytes one call reads.
    weight_bytes: usize,
    /// Multiply-accumulates one call does.
    macs: usize,
    /// This row's tokens/s over batch 1's of the same kernel and layer.
    vs_b1: Option<f64>,
    /// Dense f32 time over this row's, same shape and batch.
    vs_dense: Option<f64>,
}

impl Row {
    fn tokens_per_s(&self) -> f64 {
        self.batch as f64 * 1e9 / self.ns
    }
}

/// Times the dense f32 reference of every shape and batch; returns the
/// rows and, per (shape, batch), the median nanoseconds.
fn time_dense(o: &Options, m: usize, n: usize, emit: &mut impl FnMut(&Row)) -> Vec<f64> {
    let wb = 4 * m * n;
    let ws: Vec<Vec<f32>> = (0..copies(o.stream, wb))
        .map(|i| floats(m * n, 100 + i as u64))
        .collect();
    let mut out = Vec::new();
    let mut b1_ns = None;
    for &batch in &o.batches {
        let x = floats(batch * n, 5);
        let mut y = vec![0.0f32; batch * m];
        let t = time(o.min, |i| {
            dense(
                &ws[i % ws.len()],
                std::hint::black_box(&x),
                &mut y,
                m,
                n,
                batch,
            );
            std::hint::black_box(&y);
        });
        let ns = t.as_secs_f64() * 1e9;
        if batch == 1 {
            b1_ns = Some(ns);
        }
        emit(&Row {
            m,
            n,
            bpw: None,
            rank: None,
            kernel: "dense-f32",
            batch,
            ns,
            weight_bytes: wb,
            macs: m * n * batch,
            vs_b1: b1_ns.map(|b1| b1 * batch as f64 / ns),
            vs_dense: None,
        });
        out.push(ns);
    }
    out
}

fn time_factorized(
    o: &Options,
    (m, n): (usize, usize),
    bpw: f64,
    dense_ns: Option<&[f64]>,
    emit: &mut impl FnMut(&Row),
) {
    let r = rank(m, n, bpw);
    let wb = packed_len(m, r).unwrap() + packed_len(r, n).unwrap() + 2 * (m + n);
    let layers: Vec<_> = (0..copies(o.stream, wb))
        .map(|i| layer(m, n, r, 1 + 4 * i as u64))
        .collect();
    for &k in &o.kernels {
        let mut b1_ns = None;
        for (bi, &batch) in o.batches.iter().enumerate() {
            let x = floats(batch * n, 5);
            let mut y = vec![0.0f32; batch * m];
            let mut scratch = vec![0.0f32; layers[0].forward_scratch_len(batch)];
            let t = time(o.min, |i| {
                let l = &layers[i % layers.len()];
                l.forward_with(k, std::hint::black_box(&x), batch, &mut y, &mut scratch);
                std::hint::black_box(&y);
            });
            let ns = t.as_secs_f64() * 1e9;
            if batch == 1 {
                b1_ns = Some(ns);
            }
            emit(&Row {
                m,
                n,
                bpw: Some(bpw),
                rank: Some(r),
                kernel: k.name(),
                batch,
                ns,
                weight_bytes: wb,
                macs: r * (m + n) * batch,
                vs_b1: b1_ns.map(|b1| b1 * batch as f64 / ns),
                vs_dense: dense_ns.map(|d| d[bi] / ns),
            });
        }
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.prec$}"))
}

const COLUMNS: [&str; 12] = [
    "shape",
    "bpw",
    "rank",
    "kernel",
    "batch",
    "us",
    "gb_per_s",
    "weights_per_ns",
    "tokens_per_s",
    "vs_batch1",
    "vs_dense",
    "stream",
];

fn text_header() -> String {
    format!(
        "{:>12} {:>5} {:>5} {:>13} {:>5} {:>11} {:>8} {:>10} {:>12} {:>6} {:>8}",
        "shape",
        "bpw",
        "rank",
        "kernel",
        "batch",
        "µs",
        "GB/s",
        "weights/ns",
        "tokens/s",
        "×b1",
        "×dense"
    )
}

fn format_row(r: &Row, f: Format, stream: bool) -> String {
    let shape = format!("{}x{}", r.m, r.n);
    let us = r.ns / 1e3;
    let gbs = r.weight_bytes as f64 / r.ns;
    let wpn = r.macs as f64 / r.ns;
    let tps = r.tokens_per_s();
    match f {
        Format::Text => format!(
            "{:>12} {:>5} {:>5} {:>13} {:>5} {:>11.1} {:>8.2} {:>10.1} {:>12.0} {:>6} {:>8}",
            shape,
            opt(r.bpw, 2),
            r.rank.map_or_else(|| "-".into(), |k| k.to_string()),
            r.kernel,
            r.batch,
            us,
            gbs,
            wpn,
            tps,
            opt(r.vs_b1, 2),
            opt(r.vs_dense, 1),
        ),
        Format::Csv => {
            let cell =
                |v: Option<f64>, prec: usize| v.map_or_else(String::new, |v| format!("{v:.prec$}"));
            format!(
                "{shape},{},{},{},{},{us:.3},{gbs:.4},{wpn:.3},{tps:.1},{},{},{stream}",
                cell(r.bpw, 2),
                r.rank.map_or_else(String::new, |k| k.to_string()),
                r.kernel,
                r.batch,
                cell(r.vs_b1, 4),
                cell(r.vs_dense, 4),
            )
        }
        Format::Json => {
            let num = |v: Option<f64>| v.map_or_else(|| "null".into(), |v| format!("{v:.4}"));
            let mut s = String::new();
            write!(
                s,
                "{{\"shape\":\"{shape}\",\"m\":{},\"n\":{},\"bpw\":{},\"rank\":{},\
                 \"kernel\":\"{}\",\"batch\":{},\"us\":{us:.3},\"gb_per_s\":{gbs:.4},\
                 \"weights_per_ns\":{wpn:.3},\"tokens_per_s\":{tps:.1},\"vs_batch1\":{},\
                 \"vs_dense\":{},\"stream\":{stream}}}",
                r.m,
                r.n,
                num(r.bpw),
                r.rank.map_or_else(|| "null".into(), |k| k.to_string()),
                r.kernel,
                r.batch,
                num(r.vs_b1),
                num(r.vs_dense),
            )
            .unwrap();
            s
        }
    }
}

/// Writes `s` to stdout; a closed pipe (`| head`) ends the run quietly,
/// any other write error with a one-line message.
fn say(s: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("bgemm-bench: writing the results: {e}");
        std::process::exit(1);
    }
}

fn main() {
    let o = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bgemm-bench: {e}");
            std::process::exit(2);
        }
    };
    let available: Vec<_> = kernels::available().map(Kernel::name).collect();
    match o.format {
        Format::Text => say(&format!(
            "kernels available: {}; best: {}; one thread; weights {}\n{}\n",
            available.join(", "),
            kernels::best(),
            if o.stream {
                "streamed from DRAM"
            } else {
                "in cache"
            },
            text_header()
        )),
        Format::Csv => say(&format!("{}\n", COLUMNS.join(","))),
        Format::Json => say("["),
    }
    let mut first = true;
    let mut emit = |r: &Row| {
        let line = format_row(r, o.format, o.stream);
        if o.format == Format::Json {
            let sep = if first { "" } else { "," };
            say(&format!("{sep}\n  {line}"));
        } else {
            say(&format!("{line}\n"));
        }
        first = false;
    };
    for &(m, n) in &o.shapes {
        let dense_ns = o.dense.then(|| time_dense(&o, m, n, &mut emit));
        for &bpw in &o.bpws {
            time_factorized(&o, (m, n), bpw, dense_ns.as_deref(), &mut emit);
        }
    }
    if o.format == Format::Json {
        say("\n]\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Options, String> {
        parse_args(s.split_whitespace().map(String::from))
    }

    #[test]
    fn rank_matches_the_budget() {
        // 4096² at 1 bpw: (16,777,216 − 131,072) / 8192 = 2032 → 2016.
        assert_eq!(rank(4096, 4096, 1.0), 2016);
        assert_eq!(rank(192, 576, 0.55), 32);
        assert_eq!(rank(64, 64, 16.0), 64);
    }

    #[test]
    fn options_parse_and_sort_batches() {
        let o =
            args("--shape 64x96 --bpw 0.8 --batch 16 --batch 1 --batch 16 --format csv").unwrap();
        assert_eq!(o.shapes, vec![(64, 96)]);
        assert_eq!(o.bpws, vec![0.8]);
        assert_eq!(o.batches, vec![1, 16]);
        assert!(o.format == Format::Csv);
        // Comma lists, alone or mixed with repeats.
        let o = args(
            "--shape 64x96,32x32 --shape 8x8 --bpw 1,0.55 --batch 16,1 --batch 4 \
             --kernel portable,portable",
        )
        .unwrap();
        assert_eq!(o.shapes, vec![(64, 96), (32, 32), (8, 8)]);
        assert_eq!(o.bpws, vec![1.0, 0.55]);
        assert_eq!(o.batches, vec![1, 4, 16]);
        assert_eq!(o.kernels, vec![Kernel::Portable]);
        let o = args("--small").unwrap();
        assert_eq!(o.shapes, SMOLLM.to_vec());
        assert_eq!(args("").unwrap().shapes.len(), SMOLLM.len() + LLAMA.len());
    }

    #[test]
    fn bad_options_are_one_line_errors() {
        for bad in [
            "--shape 64",
            "--shape 0x5",
            "--bpw -1",
            "--bpw x",
            "--batch 0",
            "--batch 1,,16",
            "--shape 64x64,",
            "--kernel portable,nope",
            "--format yaml",
            "--kernel nope",
            "--frobnicate",
            "--batch",
        ] {
            let e = args(bad).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn dense_reference_is_a_matrix_product() {
        let (m, n, batch) = (5, 7, 3);
        let w = floats(m * n, 1);
        let x = floats(batch * n, 2);
        let mut y = vec![0.0f32; batch * m];
        dense(&w, &x, &mut y, m, n, batch);
        for t in 0..batch {
            for i in 0..m {
                let want: f32 = (0..n).map(|j| w[i * n + j] * x[t * n + j]).sum();
                let got = y[t * m + i];
                assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{t} {i}");
            }
        }
    }

    #[test]
    fn rows_format_consistently() {
        let r = Row {
            m: 8,
            n: 4,
            bpw: Some(1.0),
            rank: Some(4),
            kernel: "portable",
            batch: 2,
            ns: 1000.0,
            weight_bytes: 500,
            macs: 48,
            vs_b1: Some(1.5),
            vs_dense: None,
        };
        let csv = format_row(&r, Format::Csv, false);
        assert_eq!(csv.split(',').count(), COLUMNS.len(), "{csv}");
        assert!(csv.starts_with("8x4,1.00,4,portable,2,1.000,0.5000,0.048,2000000.0,1.5000,,false"));
        let json = format_row(&r, Format::Json, true);
        assert!(
            json.contains("\"vs_dense\":null") && json.contains("\"stream\":true"),
            "{json}"
        );
        let dense = Row {
            bpw: None,
            rank: None,
            vs_b1: None,
            ..r
        };
        let csv = format_row(&dense, Format::Csv, false);
        assert!(csv.starts_with("8x4,,,portable,2,"), "{csv}");
    }
}
