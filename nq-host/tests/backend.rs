//! The quantizer's compute backends against independent f64 oracles, op by
//! op, and against each other.
//!
//! The CPU backend always runs. So does the emulated CUDA backend
//! (`nq_cuda_emu::EmuBackend`: the `.cu` kernels run on the CPU, products and
//! the Cholesky inverse on CPU stand-ins), which checks the kernels' logic
//! without a GPU. The CUDA backend runs when a GPU is usable
//! (`nq_cuda::probe()`), and otherwise each GPU test prints a visible SKIP
//! line: CI machines have no GPU; the CUDA sources are still compiled there
//! to PTX and SASS (nq-cuda/tests/compile.rs).

use nq_host::backend::{Backend, BackendError, Compute, CpuBackend, CudaBackend, GpuMath, Op};
use nq_host::model::Matrix;
use nq_host::quant::factor::{quantize_linear_on, run_admm, AdmmOptions, LayerEnergies, Method};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn get<B: Backend>(be: &B, buf: &B::Buf, len: usize) -> Vec<f32> {
    let mut v = vec![0.0; len];
    be.download(buf, &mut v).unwrap();
    v
}

fn close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tol * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

/// `c = op(a, b)` in f64, row-major.
fn oracle_matmul(a: &[f32], b: &[f32], op: Op, (m, n, k): (usize, usize, usize)) -> Vec<f64> {
    let at = |i: usize, p: usize| match op {
        Op::Tn => a[p * m + i],
        _ => a[i * k + p],
    };
    let bt = |p: usize, j: usize| match op {
        Op::Nt => b[j * k + p],
        _ => b[p * n + j],
    };
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|p| f64::from(at(i, p)) * f64::from(bt(p, j)))
                .sum();
        }
    }
    c
}

/// SVID by its definition: alternating least squares for `|x| ≈ u vᵀ`
/// from `v = 1`, then `sign(x) u vᵀ`.
fn oracle_svid(x: &[f32], rows: usize, cols: usize, iters: usize) -> Vec<f64> {
    let ax: Vec<f64> = x.iter().map(|v| f64::from(v.abs())).collect();
    let mut v = vec![1.0f64; cols];
    let mut u = vec![0.0f64; rows];
    for _ in 0..iters.max(1) {
        let vv: f64 = v.iter().map(|a| a * a).sum();
        for i in 0..rows {
            let d: f64 = (0..cols).map(|j| ax[i * cols + j] * v[j]).sum();
            u[i] = if vv > 0.0 { d / vv } else { 0.0 };
        }
        let uu: f64 = u.iter().map(|a| a * a).sum();
        for j in 0..cols {
            let d: f64 = (0..rows).map(|i| ax[i * cols + j] * u[i]).sum();
            v[j] = if uu > 0.0 { d / uu } else { 0.0 };
        }
    }
    (0..rows * cols)
        .map(|e| {
            let s = if x[e] < 0.0 { -1.0 } else { 1.0 };
            s * u[e / cols] * v[e % cols]
        })
        .collect()
}

/// Every operation of `be` against the oracles.
fn conformance<B: Backend>(be: &B) {
    // Sign packing: the blob's layout, read back through nq-core, on shapes
    // that are not multiples of a tile (16 rows) or of the column padding;
    // −0 and 0 are +1.
    for (s, &(rows, cols)) in [(1, 1), (17, 33), (5, 130), (32, 64)].iter().enumerate() {
        let mut x = random(rows * cols, 200 + s as u64);
        x[0] = -0.0;
        if x.len() > 1 {
            x[1] = 0.0;
        }
        let bytes = be.pack_signs(&be.upload(&x).unwrap(), rows, cols).unwrap();
        // Byte for byte what the blob writer packs (padding bits 0).
        let host = nq_core::SignMatrix::from_fn(rows, cols, |i, j| x[i * cols + j] < 0.0);
        assert_eq!(bytes, host.as_bytes(), "{rows} × {cols}");
        let m = nq_core::SignMatrix::new(rows, cols, bytes).unwrap();
        for i in 0..rows {
            for j in 0..cols {
                assert_eq!(m.is_negative(i, j), x[i * cols + j] < 0.0, "({i}, {j})");
            }
        }
    }
    let x3 = be.upload(&[1.0, -1.0, 2.0]).unwrap();
    assert!(be.pack_signs(&x3, 2, 2).is_err(), "wrong shape");
    assert!(be.pack_signs(&x3, 0, 3).is_err(), "empty matrix");
    // Products on odd shapes, all three layouts.
    for (s, &(m, n, k)) in [(3, 5, 7), (17, 1, 4), (1, 9, 33), (40, 24, 65)]
        .iter()
        .enumerate()
    {
        for op in [Op::Nt, Op::Nn, Op::Tn] {
            let a = random(m * k, s as u64);
            let b = random(k * n, 100 + s as u64);
            let (da, db) = (be.upload(&a).unwrap(), be.upload(&b).unwrap());
            let mut dc = be.zeros(m * n).unwrap();
            be.matmul(&mut dc, &da, &db, op, (m, n, k)).unwrap();
            close(
                &get(be, &dc, m * n),
                &oracle_matmul(&a, &b, op, (m, n, k)),
                1e-5,
                "matmul",
            );
        }
    }
    // A wrong shape is an error, not a panic.
    let (a, b) = (be.upload(&[1.0; 6]).unwrap(), be.upload(&[1.0; 6]).unwrap());
    let mut c = be.zeros(4).unwrap();
    assert!(be.matmul(&mut c, &a, &b, Op::Nn, (2, 2, 2)).is_err());

    // Row normalization; a zero row stays zero. Rows wider than a CUDA
    // block (256 threads) take every thread and several passes.
    for (rows, cols) in [(5, 19), (3, 700)] {
        let mut x = random(rows * cols, 7);
        x[2 * cols..3 * cols].fill(0.0);
        let mut dx = be.upload(&x).unwrap();
        be.normalize_rows(&mut dx, rows, cols).unwrap();
        let want: Vec<f64> = x
            .chunks(cols)
            .flat_map(|r| {
                let n = r.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
                r.iter()
                    .map(move |&v| if n > 0.0 { f64::from(v) / n } else { 0.0 })
            })
            .collect();
        close(&get(be, &dx, rows * cols), &want, 1e-6, "normalize_rows");
    }
    let (rows, cols) = (5, 19);

    // Column normalization; a zero column stays zero.
    let mut x = random(rows * cols, 8);
    for r in 0..rows {
        x[r * cols + 4] = 0.0;
    }
    let norms: Vec<f64> = (0..cols)
        .map(|j| {
            (0..rows)
                .map(|i| f64::from(x[i * cols + j]).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let want: Vec<f64> = (0..rows * cols)
        .map(|e| {
            let n = norms[e % cols];
            if n > 0.0 {
                f64::from(x[e]) / n
            } else {
                0.0
            }
        })
        .collect();
    let src = be.upload(&x).unwrap();
    let mut dst = be.zeros(rows * cols).unwrap();
    be.divide_by_column_norms(&mut dst, &src, rows, cols)
        .unwrap();
    close(
        &get(be, &dst, rows * cols),
        &want,
        1e-6,
        "divide_by_column_norms",
    );

    // SVID: values, and exactly the signs of the input.
    for (rows, cols, iters) in [(1, 1, 1), (7, 3, 4), (33, 65, 2), (2, 600, 2), (300, 3, 2)] {
        let x = random(rows * cols, (rows * cols) as u64);
        let dx = be.upload(&x).unwrap();
        let mut out = be.zeros(rows * cols).unwrap();
        be.svid(&dx, rows, cols, iters, &mut out).unwrap();
        let got = get(be, &out, rows * cols);
        close(&got, &oracle_svid(&x, rows, cols, iters), 1e-5, "svid");
        for (g, v) in got.iter().zip(&x) {
            assert_eq!(*g < 0.0, *v < 0.0, "svid sign");
        }
    }

    // Element-wise steps.
    let n = 1000;
    let (a, b, c) = (random(n, 1), random(n, 2), random(n, 3));
    let (da, db) = (be.upload(&a).unwrap(), be.upload(&b).unwrap());
    let mut out = be.zeros(n).unwrap();
    be.add(&mut out, &da, &db).unwrap();
    let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| f64::from(x + y)).collect();
    close(&get(be, &out, n), &want, 1e-7, "add");
    be.sub(&mut out, &da, &db).unwrap();
    let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| f64::from(x - y)).collect();
    close(&get(be, &out, n), &want, 1e-7, "sub");
    let mut rhs = be.upload(&c).unwrap();
    be.add_penalty(&mut rhs, 0.25, &da, &db).unwrap();
    let want: Vec<f64> = (0..n)
        .map(|i| f64::from(c[i]) + 0.25 * f64::from(a[i] - b[i]))
        .collect();
    close(&get(be, &rhs, n), &want, 1e-6, "add_penalty");
    let mut u = be.upload(&c).unwrap();
    be.dual_update(&mut u, &da, &db).unwrap();
    let want: Vec<f64> = (0..n)
        .map(|i| f64::from(c[i]) + f64::from(a[i] - b[i]))
        .collect();
    close(&get(be, &u, n), &want, 1e-6, "dual_update");
    let short = be.zeros(n - 1).unwrap();
    assert!(be.add(&mut out, &da, &short).is_err());

    // Shifted inverse: (G + sI) · inv = I for a Gram matrix G = X Xᵀ.
    for r in [1, 6, 37] {
        let x = random(r * 50, r as u64);
        let dx = be.upload(&x).unwrap();
        let mut g = be.zeros(r * r).unwrap();
        be.matmul(&mut g, &dx, &dx, Op::Nt, (r, r, 50)).unwrap();
        let mut inv = be.zeros(r * r).unwrap();
        be.invert_shifted(&g, 0.5, r, &mut inv).unwrap();
        let (g, inv) = (get(be, &g, r * r), get(be, &inv, r * r));
        for i in 0..r {
            for j in 0..r {
                let s: f64 = (0..r)
                    .map(|p| {
                        let gip = f64::from(g[i * r + p]) + if i == p { 0.5 } else { 0.0 };
                        gip * f64::from(inv[p * r + j])
                    })
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-3, "inverse r={r} ({i},{j}): {s}");
            }
        }
    }
    // Straight-through training ops: signs, row/column scaling, the scale
    // gradients (f64 oracles), AdamW (an f64 evaluation of its formula).
    let (m, n) = (7, 300);
    let x = random(m * n, 50);
    let (s_pre, s_post) = (random(n, 51), random(m, 52));
    let dx = be.upload(&x).unwrap();
    let mut sg = be.zeros(m * n).unwrap();
    be.signs(&dx, &mut sg).unwrap();
    let want: Vec<f64> = x
        .iter()
        .map(|&v| if v < 0.0 { -1.0 } else { 1.0 })
        .collect();
    close(&get(be, &sg, m * n), &want, 0.0, "signs");
    let mut rows = be.upload(&x).unwrap();
    be.scale_rows(&mut rows, &be.upload(&s_post).unwrap())
        .unwrap();
    let want: Vec<f64> = (0..m * n)
        .map(|e| f64::from(x[e] * s_post[e / n]))
        .collect();
    close(&get(be, &rows, m * n), &want, 0.0, "scale_rows");
    let mut cols = be.upload(&x).unwrap();
    be.scale_columns(&mut cols, &be.upload(&s_pre).unwrap())
        .unwrap();
    let want: Vec<f64> = (0..m * n).map(|e| f64::from(x[e] * s_pre[e % n])).collect();
    close(&get(be, &cols, m * n), &want, 0.0, "scale_columns");
    let dw = random(m * n, 53);
    let (mut g, mut d_pre, mut d_post) = (
        be.zeros(m * n).unwrap(),
        be.zeros(n).unwrap(),
        be.zeros(m).unwrap(),
    );
    be.scale_grads(
        &be.upload(&dw).unwrap(),
        &sg,
        &be.upload(&s_pre).unwrap(),
        &be.upload(&s_post).unwrap(),
        &mut g,
        &mut d_pre,
        &mut d_post,
    )
    .unwrap();
    let sign = |e: usize| if x[e] < 0.0 { -1.0 } else { 1.0 };
    let want: Vec<f64> = (0..m * n)
        .map(|e| f64::from(dw[e]) * f64::from(s_post[e / n]) * f64::from(s_pre[e % n]))
        .collect();
    close(&get(be, &g, m * n), &want, 1e-6, "scale_grads g");
    let want: Vec<f64> = (0..n)
        .map(|j| {
            (0..m)
                .map(|i| f64::from(dw[i * n + j]) * sign(i * n + j) * f64::from(s_post[i]))
                .sum()
        })
        .collect();
    close(&get(be, &d_pre, n), &want, 1e-5, "scale_grads d_pre");
    let want: Vec<f64> = (0..m)
        .map(|i| {
            (0..n)
                .map(|j| f64::from(dw[i * n + j]) * sign(i * n + j) * f64::from(s_pre[j]))
                .sum()
        })
        .collect();
    close(&get(be, &d_post, m), &want, 1e-5, "scale_grads d_post");
    let mut p = be.upload(&x).unwrap();
    let (mut mom, mut vel) = (be.zeros(m * n).unwrap(), be.zeros(m * n).unwrap());
    let (mut p64, mut m64, mut v64) = (
        x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        vec![0.0f64; m * n],
        vec![0.0f64; m * n],
    );
    for step in 1..=3 {
        let gr = random(m * n, 60 + step as u64);
        be.adamw(
            &mut p,
            &be.upload(&gr).unwrap(),
            &mut mom,
            &mut vel,
            step,
            1e-2,
            0.1,
        )
        .unwrap();
        let (b1, b2) = (0.9f64, 0.999f64);
        for e in 0..m * n {
            let ge = f64::from(gr[e]);
            m64[e] = b1 * m64[e] + (1.0 - b1) * ge;
            v64[e] = b2 * v64[e] + (1.0 - b2) * ge * ge;
            let upd =
                m64[e] / (1.0 - b1.powi(step)) / ((v64[e] / (1.0 - b2.powi(step))).sqrt() + 1e-8);
            p64[e] -= 1e-2 * (upd + 0.1 * p64[e]);
        }
    }
    close(&get(be, &p, m * n), &p64, 1e-5, "adamw");
    assert!(be
        .adamw(
            &mut p,
            &be.zeros(3).unwrap(),
            &mut mom,
            &mut vel,
            4,
            1e-2,
            0.0
        )
        .is_err());

    // Not positive definite: a numerical error, the same on every backend.
    let neg = be.upload(&[-1.0, 0.0, 0.0, -1.0]).unwrap();
    let mut inv = be.zeros(4).unwrap();
    assert_eq!(
        be.invert_shifted(&neg, 0.0, 2, &mut inv),
        Err(BackendError::Numerical(
            "normal equations not positive definite"
        ))
    );
}

fn gpu() -> Option<CudaBackend> {
    common::cuda_backend()
}

#[test]
fn cpu_backend_matches_the_oracles() {
    conformance(&CpuBackend::default());
}

/// `--gpu-math tf32` and `bf16`: the products run on tensor cores with
/// 10-bit (tf32) or 8-bit (bf16) mantissas, so they match the f64 oracle to
/// ~1e-3 or ~4e-3 of the largest product, not 1e-5.
#[test]
fn cuda_tensor_core_products_are_close() {
    if gpu().is_none() {
        return;
    }
    for (math, precision, tol) in [
        (GpuMath::Tf32, nq_cuda::GemmPrecision::Tf32, 1e-2),
        (GpuMath::Bf16, nq_cuda::GemmPrecision::Bf16, 3e-2),
    ] {
        let g = CudaBackend::open_with(0, math).unwrap();
        assert_eq!(g.gpu().precision(), precision);
        let (m, n, k) = (64, 48, 256);
        let (a, b) = (random(m * k, 40), random(k * n, 41));
        for op in [Op::Nn, Op::Nt, Op::Tn] {
            let (da, db) = (g.upload(&a).unwrap(), g.upload(&b).unwrap());
            let mut dc = g.zeros(m * n).unwrap();
            g.matmul(&mut dc, &da, &db, op, (m, n, k)).unwrap();
            let want = oracle_matmul(&a, &b, op, (m, n, k));
            let got = get(&g, &dc, m * n);
            close(&got, &want, tol, &format!("{math:?} matmul"));
            // Not the f32 products: the tensor-core rounding is visible.
            let f32_close = got
                .iter()
                .zip(&want)
                .all(|(&x, &y)| (f64::from(x) - y).abs() <= 1e-6 * y.abs().max(1.0));
            assert!(!f32_close, "{math:?} products look like f32 ones");
        }
    }
}

#[test]
fn emulated_cuda_kernels_match_the_oracles() {
    conformance(&nq_cuda_emu::EmuBackend::default());
}

#[test]
fn cuda_backend_matches_the_oracles() {
    if let Some(g) = gpu() {
        conformance(&g);
    }
}

/// A layer with a little structure (low rank plus noise) and uneven energies.
fn layer(m: usize, n: usize, seed: u64) -> (Matrix, LayerEnergies) {
    let u = random(m * 4, seed);
    let v = random(4 * n, seed + 1);
    let noise = random(m * n, seed + 2);
    let data = (0..m * n)
        .map(|e| {
            let (i, j) = (e / n, e % n);
            (0..4).map(|p| u[i * 4 + p] * v[p * n + j]).sum::<f32>() + 0.1 * noise[e]
        })
        .collect();
    let e = LayerEnergies {
        input: random(n, seed + 3).iter().map(|x| 0.1 + x.abs()).collect(),
        output: random(m, seed + 4).iter().map(|x| 0.1 + x.abs()).collect(),
    };
    (
        Matrix {
            rows: m,
            cols: n,
            data,
        },
        e,
    )
}

/// ADMM on the GPU gives the CPU's result: the same signs wherever the
/// latent is not within rounding of zero, and nearly the same error.
///
/// Tolerance: both backends compute in f32 with f64 reductions; different
/// summation orders give ~1e-6 relative differences per step, which can
/// flip a sign only where a latent is that close to zero. Few iterations
/// keep such flips from compounding.
#[test]
fn cuda_admm_matches_cpu() {
    let Some(g) = gpu() else { return };
    let gpu = Compute::Cuda(Arc::new(g));
    let (w, e) = layer(96, 80, 5);
    let opts = AdmmOptions {
        iters: 8,
        seed: 3,
        ..AdmmOptions::default()
    };
    let cpu =
        quantize_linear_on(&Compute::Cpu, &w, None, &e, Method::NanoQuant, 16, &opts).unwrap();
    let cuda = quantize_linear_on(&gpu, &w, None, &e, Method::NanoQuant, 16, &opts).unwrap();
    let (ca, cb) = cpu.latents.as_ref().unwrap();
    let (ga, gb) = cuda.latents.as_ref().unwrap();
    for (c, g) in [(ca, ga), (cb, gb)] {
        let rms = (c.data.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / c.data.len() as f64)
            .sqrt();
        for (x, y) in c.data.iter().zip(&g.data) {
            if f64::from(x.abs()) > 1e-4 * rms {
                assert_eq!(x < &0.0, y < &0.0, "sign differs at latent {x} vs {y}");
            }
            assert!((f64::from(x - y)).abs() <= 1e-3 * rms, "latent {x} vs {y}");
        }
    }
    let rel = (cpu.weighted_rel_error - cuda.weighted_rel_error).abs() / cpu.weighted_rel_error;
    assert!(
        rel < 1e-3,
        "{} vs {}",
        cpu.weighted_rel_error,
        cuda.weighted_rel_error
    );
}

/// The whole ADMM with the CUDA kernels emulated gives the CPU backend's
/// result: the same signs wherever the latent is not within rounding of
/// zero, latents within 1e-4 of their RMS. Same summation-order caveat as
/// `cuda_admm_matches_cpu`; the products are the CPU's here, so only the
/// kernels' reductions differ.
#[test]
fn emulated_cuda_admm_matches_cpu() {
    let (m, n, r) = (48, 40, 12);
    let wt = random(m * n, 21);
    let opts = AdmmOptions {
        iters: 6,
        seed: 4,
        ..AdmmOptions::default()
    };
    let cpu = run_admm(&CpuBackend::default(), &wt, m, n, r, &opts).unwrap();
    let emu = run_admm(&nq_cuda_emu::EmuBackend::default(), &wt, m, n, r, &opts).unwrap();
    for (what, c, g) in [
        ("A_z", &cpu.az, &emu.az),
        ("A latent", &cpu.in_a, &emu.in_a),
        ("B_z", &cpu.bz, &emu.bz),
        ("B latent", &cpu.in_b, &emu.in_b),
    ] {
        let rms = (c.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / c.len() as f64).sqrt();
        assert!(rms > 0.0, "{what}: all zero");
        for (x, y) in c.iter().zip(g) {
            if f64::from(x.abs()) > 1e-4 * rms {
                assert_eq!(x < &0.0, y < &0.0, "{what}: sign differs, {x} vs {y}");
            }
            assert!(
                f64::from(x - y).abs() <= 1e-4 * rms,
                "{what}: {x} vs {y} (rms {rms})"
            );
        }
    }
}

/// A factorized layer's straight-through training steps (`DeviceFactor`)
/// on `be` against the CPU backend (itself bit-identical to
/// reconstruction's host path, see factor_train.rs): latents, scales and
/// `Ŵ` within 1e-4 of their RMS after 4 steps.
fn factor_training_matches_cpu<B: Backend>(be: &B) {
    use nq_host::quant::factor_train::{DeviceFactor, StepRates};
    use nq_host::quant::recon::FactorState;
    let (m, n, r) = (24, 300, 8);
    let state = FactorState {
        la: Matrix {
            rows: m,
            cols: r,
            data: random(m * r, 70),
        },
        lb: Matrix {
            rows: r,
            cols: n,
            data: random(r * n, 71),
        },
        s_pre: random(n, 72),
        s_post: random(m, 73),
    };
    let cpu = CpuBackend::default();
    let mut want = DeviceFactor::new(&cpu, &state).unwrap();
    let mut got = DeviceFactor::new(be, &state).unwrap();
    let rates = StepRates {
        latent: 1e-2,
        scale: 1e-3,
        weight_decay: 0.05,
    };
    for step in 0..4 {
        let dw = random(m * n, 80 + step);
        want.step(&cpu, &dw, rates).unwrap();
        got.step(be, &dw, rates).unwrap();
    }
    let agree = |what: &str, c: &[f32], g: &[f32]| {
        let rms = (c.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / c.len() as f64).sqrt();
        for (x, y) in c.iter().zip(g) {
            assert!(f64::from(x - y).abs() <= 1e-4 * rms, "{what}: {x} vs {y}");
        }
    };
    let (sw, sg) = (want.state(&cpu).unwrap(), got.state(be).unwrap());
    agree("L_a", &sw.la.data, &sg.la.data);
    agree("L_b", &sw.lb.data, &sg.lb.data);
    agree("s_pre", &sw.s_pre, &sg.s_pre);
    agree("s_post", &sw.s_post, &sg.s_post);
    agree(
        "W",
        &want.dense(&cpu).unwrap().data,
        &got.dense(be).unwrap().data,
    );
}

#[test]
fn emulated_factor_training_matches_cpu() {
    factor_training_matches_cpu(&nq_cuda_emu::EmuBackend::default());
}

#[test]
fn cuda_factor_training_matches_cpu() {
    if let Some(g) = gpu() {
        factor_training_matches_cpu(&g);
    }
}

/// One block of a tiny model per architecture (plain, q/k/v biases, q/k
/// norms; grouped heads), an input and an output gradient, and what the
/// host's `block_forward` / `block_backward` make of them.
struct HostBlock {
    arch: nq_host::model::Arch,
    w: nq_host::model::ModelWeights,
    rope: nq_host::model::forward::RopeTable,
    t: usize,
    x: Vec<f32>,
    dy: Vec<f32>,
    y: Vec<f32>,
    tape: nq_host::model::forward::BlockTape,
    grads: nq_host::model::backward::BlockGrads,
}

fn host_blocks() -> Vec<HostBlock> {
    use nq_host::model::backward::block_backward;
    use nq_host::model::forward::{block_forward, BlockTape, RopeTable};
    use nq_host::model::synthetic::{random_model, tiny_config};
    use nq_host::model::Arch;
    [(Arch::Llama, 1), (Arch::Qwen2, 2), (Arch::Qwen3, 3)]
        .into_iter()
        .map(|(arch, seed)| {
            let w = random_model(tiny_config(arch), seed);
            let c = &w.config;
            let (t, d) = (11, c.d_model as usize);
            let rope = RopeTable::new(c.head_dim as usize, c.rope_theta, t);
            let (x, dy) = (random(t * d, 90 + seed), random(t * d, 95 + seed));
            let mut y = x.clone();
            let mut tape = BlockTape::default();
            block_forward(&w.layers[0], c, &rope, &mut y, t, Some(&mut tape));
            let grads = block_backward(&w.layers[0], c, &rope, &tape, &dy, false);
            HostBlock {
                arch,
                w,
                rope,
                t,
                x,
                dy,
                y,
                tape,
                grads,
            }
        })
        .collect()
}

/// One block's forward (with tape) and backward on `be`'s `DeviceBlock`
/// against the CPU's `block_forward` / `block_backward`, for every
/// architecture (plain, q/k/v biases, q/k norms; grouped heads): the block
/// output, every linear's output gradient, the input gradient and the
/// weight gradients `dYᵀ·X` (f64 from the CPU's tensors) within 1e-4 of
/// their largest value.
fn block_matches_cpu<B: nq_host::backend::BlockBackend>(be: &B) {
    use nq_host::model::backward::LinearId;
    use nq_host::quant::device_block::DeviceBlock;
    for hb in host_blocks() {
        let HostBlock {
            w,
            rope,
            t,
            x,
            dy,
            y: y_cpu,
            tape,
            grads: g,
            ..
        } = &hb;
        let (c, l, t) = (&w.config, &w.layers[0], *t);
        let d = c.d_model as usize;
        let mut blk = DeviceBlock::new(be, l, c, rope, t).unwrap();
        let mut y = be.zeros(t * d).unwrap();
        blk.forward(&be.upload(x).unwrap(), &mut y).unwrap();
        let f64s = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        close(&get(be, &y, t * d), &f64s(y_cpu), 1e-4, "block output");
        blk.backward(&be.upload(dy).unwrap()).unwrap();
        close(
            &get(be, blk.input_grad(), t * d),
            &f64s(&g.d_input),
            1e-4,
            "d input",
        );
        for id in LinearId::ALL {
            let want = g.outputs.get(id);
            let got = get(be, blk.output_grad(id), want.len());
            close(&got, &f64s(want), 1e-4, id.name());
            let (m, n) = (want.len() / t, id.input(tape).len() / t);
            let mut dw = be.zeros(m * n).unwrap();
            blk.weight_grad(id, &mut dw).unwrap();
            let xin = id.input(tape);
            let want_dw: Vec<f64> = (0..m * n)
                .map(|e| {
                    let (i, j) = (e / n, e % n);
                    (0..t)
                        .map(|r| f64::from(want[r * m + i]) * f64::from(xin[r * n + j]))
                        .sum()
                })
                .collect();
            close(&get(be, &dw, m * n), &want_dw, 1e-4, "dW");
        }
    }
}

/// On the CPU backend `DeviceBlock` is the host block, bit for bit: the
/// same functions in the same order (what makes the device
/// reconstruction's orchestration testable exactly, tests/recon.rs).
#[test]
fn cpu_backend_block_is_the_host_block() {
    use nq_host::model::backward::LinearId;
    use nq_host::quant::device_block::DeviceBlock;
    let be = CpuBackend::default();
    for hb in host_blocks() {
        let HostBlock {
            arch,
            w,
            rope,
            t,
            x,
            dy,
            y: y_host,
            grads: g,
            ..
        } = &hb;
        let (c, l, t) = (&w.config, &w.layers[0], *t);
        let d = c.d_model as usize;
        let mut blk = DeviceBlock::new(&be, l, c, rope, t).unwrap();
        let mut y = vec![0.0; t * d];
        blk.forward(x, &mut y).unwrap();
        assert_eq!(&y, y_host, "{arch:?} output");
        blk.backward(dy).unwrap();
        assert_eq!(blk.input_grad(), &g.d_input, "{arch:?} input gradient");
        for id in LinearId::ALL {
            assert_eq!(
                blk.output_grad(id),
                g.outputs.get(id),
                "{arch:?} {}",
                id.name()
            );
        }
    }
}

#[test]
fn emulated_block_matches_cpu() {
    block_matches_cpu(&nq_cuda_emu::EmuBackend::default());
}

#[test]
fn cuda_block_matches_cpu() {
    if let Some(g) = gpu() {
        block_matches_cpu(&g);
    }
}

/// `--device` selection never panics: `auto` always yields a device, `cpu`
/// the CPU, `cuda` a GPU exactly when the probe finds one.
#[test]
fn device_selection() {
    use nq_host::backend::{select, DeviceChoice};
    let has_gpu = !nq_cuda::probe().devices().is_empty();
    let (c, note) = select(DeviceChoice::Cpu).unwrap();
    assert!(!c.is_gpu() && note.is_none());
    let (c, note) = select(DeviceChoice::Auto).unwrap();
    assert_eq!(c.is_gpu(), has_gpu);
    assert_eq!(note.is_some(), !has_gpu);
    match select(DeviceChoice::Cuda) {
        Ok((c, _)) => assert!(has_gpu && c.is_gpu()),
        Err(e) => {
            assert!(!has_gpu);
            assert!(e.to_string().contains("--device cpu"), "{e}");
        }
    }
}

mod common;

/// End to end on the real model: `nq-host quantize --device cuda` and
/// `--device cpu` (ADMM-only, small calibration) give per-layer weighted
/// errors within 1 % of each other, and the report names the GPU.
#[test]
fn cuda_quantizes_smollm2_like_the_cpu() {
    if gpu().is_none() {
        return;
    }
    let (Some(model), Some(calib)) = (
        common::asset("SmolLM2-135M-Instruct.Q4_1.gguf"),
        common::asset("brown.txt"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = |device: &str| -> serde_json::Value {
        let out = dir.path().join(format!("{device}.nqb"));
        let report = dir.path().join(format!("{device}.json"));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_nq-host"))
            .args([
                "quantize",
                "--quiet",
                "--recipe",
                "admm-only",
                "--bpw",
                "1.0",
            ])
            .args([
                "--calib-windows",
                "4",
                "--calib-len",
                "128",
                "--admm-iters",
                "40",
            ])
            .args(["--device", device, "--model"])
            .arg(&model)
            .arg("--calib")
            .arg(&calib)
            .arg("--out")
            .arg(&out)
            .arg("--report")
            .arg(&report)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap()
    };
    let cpu = run("cpu");
    let cuda = run("cuda");
    assert!(cuda["device"].as_str().unwrap().starts_with("cuda:"));
    let errs = |r: &serde_json::Value| -> Vec<f64> {
        r["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["weighted_rel_error"].as_f64().unwrap())
            .collect()
    };
    let (a, b) = (errs(&cpu), errs(&cuda));
    assert_eq!(a.len(), 210);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 0.01 * x, "layer {i}: cpu {x} vs cuda {y}");
    }
    eprintln!(
        "SmolLM2 ADMM: cpu {:.1} s, cuda {:.1} s",
        cpu["quantize_seconds"].as_f64().unwrap(),
        cuda["quantize_seconds"].as_f64().unwrap()
    );
}

/// cuBLAS through the large-product hook equals the CPU's products, for
/// every operand layout the transformer uses, gaps of a strided output kept.
#[test]
fn cuda_offloaded_products_match_cpu() {
    use nq_host::linalg::GemmOffload;
    let Some(g) = gpu() else { return };
    let (m, n, k) = (300, 70, 129);
    let a = random(m * k, 11);
    let b = random(k * n, 12);
    let bt: Vec<f32> = (0..n * k).map(|e| b[(e % k) * n + e / k]).collect();
    let at: Vec<f32> = (0..k * m).map(|e| a[(e % m) * k + e / m]).collect();
    let want = oracle_matmul(&a, &b, Op::Nn, (m, n, k));
    // (a, a strides, b, b strides): nn, nt, tn.
    type Layout<'a> = (&'a [f32], (usize, usize), &'a [f32], (usize, usize));
    let layouts: [Layout<'_>; 3] = [
        (&a, (k, 1), &b, (n, 1)),
        (&a, (k, 1), &bt, (1, k)),
        (&at, (1, m), &b, (n, 1)),
    ];
    for (i, (a, sa, b, sb)) in layouts.into_iter().enumerate() {
        for ldc in [n, n + 3] {
            let mut c = vec![7.0f32; m * ldc];
            assert!(
                g.gemm(&mut c, ldc, a, sa, b, sb, (m, n, k), false),
                "layout {i}"
            );
            let got: Vec<f32> = (0..m * n).map(|e| c[(e / n) * ldc + e % n]).collect();
            close(&got, &want, 1e-5, "offloaded product");
            for r in 0..m {
                assert!(c[r * ldc + n..(r + 1) * ldc].iter().all(|&x| x == 7.0));
            }
            // Accumulate doubles it.
            assert!(g.gemm(&mut c, ldc, a, sa, b, sb, (m, n, k), true));
            let got: Vec<f32> = (0..m * n).map(|e| c[(e / n) * ldc + e % n] / 2.0).collect();
            close(&got, &want, 1e-5, "accumulated product");
        }
    }
    // An operand with no unit stride is declined, untouched.
    let mut c = vec![1.0f32; 4];
    assert!(!g.gemm(&mut c, 2, &a, (4, 2), &b, (2, 1), (2, 2, 2), false));
    assert_eq!(c, [1.0; 4]);
}

/// The GPU forward pass (weights and activations on the device) gives the
/// CPU reference's logits for every architecture, tied and untied heads.
#[test]
fn gpu_forward_matches_cpu_forward() {
    use nq_host::backend::GpuModel;
    use nq_host::model::synthetic::{random_model, tiny_config};
    use nq_host::model::Arch;
    let Some(g) = gpu() else { return };
    let g = Arc::new(g);
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        for tied in [false, true] {
            let mut config = tiny_config(arch);
            config.tied_embeddings = tied;
            let w = random_model(config, 7);
            let vocab = w.config.vocab_size;
            let tokens: Vec<u32> = (0..37u32).map(|i| (i * 13 + 5) % vocab).collect();
            let want = nq_host::model::forward::forward(&w, &tokens, None).unwrap();
            let got = GpuModel::new(&w, g.clone())
                .unwrap()
                .forward(&tokens)
                .unwrap();
            let want64: Vec<f64> = want.iter().map(|&x| f64::from(x)).collect();
            close(&got, &want64, 1e-4, "gpu logits");
        }
    }
}

/// `evaluate_with` refuses a forward pass that returns the wrong number of
/// logits instead of scoring garbage.
#[test]
fn evaluate_with_checks_the_logit_count() {
    let ids: Vec<u32> = (0..64).collect();
    let r = nq_host::eval::evaluate_with(|_| Ok(vec![0.0; 3]), 100, &ids, 16, None, |_, _| {});
    assert!(r.unwrap_err().to_string().contains("logits"));
}

/// A blob on the GPU, its factorized or binary layers packed (`signs.cu`), gives the
/// logits of the CPU forward on the blob's dequantized weights.
#[test]
fn gpu_blob_forward_matches_dequantized_cpu_forward() {
    use nq_host::backend::GpuModel;
    use nq_host::model::synthetic::tiny_config;
    use nq_host::model::Arch;
    use nq_host::quant::export::{dequantize_blob, EmbedFormat};
    use nq_host::quant::synthetic_blob::synthetic_blob;
    let Some(g) = gpu() else { return };
    let g = Arc::new(g);
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        for (tied, embed) in [(false, EmbedFormat::F16), (true, EmbedFormat::Q8)] {
            let mut config = tiny_config(arch);
            config.tied_embeddings = tied;
            // Factorized layers (nanoquant), then full-rank binary ones
            // (arb-rc).
            let binary = {
                use nq_host::quant::pipeline::{quantize_linears, QuantizeOptions};
                let w = nq_host::model::synthetic::random_model(config, 3);
                let opts = QuantizeOptions {
                    method: Method::ArbRc,
                    bpw: 1.0,
                    rank_multiple: 2,
                    admm: AdmmOptions::default(),
                    compute: Compute::Cpu,
                };
                let q = quantize_linears(&w, None, &opts, |_| {}).unwrap();
                nq_host::quant::export::build_blob(&w, q.payloads, embed, None, None)
                    .unwrap()
                    .to_bytes()
                    .unwrap()
            };
            for bytes in [synthetic_blob(config, 3, 1.0, embed, 10).unwrap(), binary] {
                let view = nq_core::Blob::parse(&bytes).unwrap();
                let w = dequantize_blob(&view).unwrap();
                let vocab = w.config.vocab_size;
                let tokens: Vec<u32> = (0..29u32).map(|i| (i * 7 + 2) % vocab).collect();
                let want = nq_host::model::forward::forward(&w, &tokens, None).unwrap();
                let got = GpuModel::from_blob(&view, g.clone())
                    .unwrap()
                    .forward(&tokens)
                    .unwrap();
                let want64: Vec<f64> = want.iter().map(|&x| f64::from(x)).collect();
                close(&got, &want64, 1e-4, "gpu blob logits");
            }
        }
    }
}
