//! Every kernel against the scalar oracles.
//!
//! * The integer core must equal `Σ_j S(i, j) · q_j` computed from unpacked
//!   ±1 values, bit for bit, whatever the padding bits hold.
//! * The layers' `forward_with` must stay within the int8 error budget of
//!   the module docs ([`error_bound_binary`], [`error_bound_factorized`],
//!   plus a few f32 ulps) of the f64 `forward_ref` oracles.
//! * Every kernel must return exactly the portable kernel's floats.
//!
//! [`kernel_tests!`] instantiates the suite once per [`Kernel`]; kernels the
//! CPU lacks are skipped with a message on stderr that test capture does not
//! hide.

use super::quant::{build_tables, table_len};
use super::*;
use crate::sign::{col_bytes, packed_len};
use crate::{BinaryLinear, F16Vector, FactorizedLinear, SignMatrix};
use alloc::vec;
use alloc::vec::Vec;

/// splitmix64: small, seedable, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in [-a, a).
    fn uniform(&mut self, a: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }
    /// Mostly uniform in [-a, a), sometimes exactly zero.
    fn value(&mut self, a: f32) -> f32 {
        if self.below(8) == 0 {
            0.0
        } else {
            self.uniform(a)
        }
    }
    fn values(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.value(a)).collect()
    }
    /// Random packed bytes: padding rows and columns get random bits too,
    /// which readers must ignore.
    fn signs(&mut self, rows: usize, cols: usize) -> SignMatrix<Vec<u8>> {
        let len = packed_len(rows, cols).unwrap();
        let bytes = (0..len).map(|_| self.next() as u8).collect();
        SignMatrix::new(rows, cols, bytes).unwrap()
    }
}

/// Prints past the test harness's capture, so skips are visible.
fn say(msg: core::fmt::Arguments<'_>) {
    use std::io::Write;
    // One write per line, so parallel tests do not interleave mid-line.
    let line = alloc::format!("{msg}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn usable(k: Kernel) -> bool {
    if k.is_available() {
        true
    } else {
        say(format_args!(
            "    skipped: kernel `{k}` is not available on this CPU"
        ));
        false
    }
}

/// Every batch size from 1 to 17: each chunk split (16, 8, 4, 2, 1 tokens)
/// and each mixed-tile remainder.
const BATCHES: core::ops::RangeInclusive<usize> = 1..=17;

/// Batches past 17 for the integer core: several chunks of 16 (AMX shares
/// one expansion of the signs among 3 of them) with and without a partial
/// one, and more than one such group.
const LARGE_BATCHES: [usize; 7] = [31, 32, 33, 48, 49, 64, 100];

/// `(rows, cols)` of sign products: 1–3 rows, sizes off every multiple of
/// 4/8/32/128, and columns past the int16 flush points (256, 512).
const PRODUCT_SHAPES: [(usize, usize); 10] = [
    (1, 1),
    (2, 3),
    (3, 7),
    (17, 31),
    (5, 129),
    (33, 257),
    (16, 513),
    (31, 100),
    (45, 1100),
    (130, 45),
];

/// `(m, n, r)` of factorized layers: rank 1 and rank = min(m, n) included.
const FACTORIZED_SHAPES: [(usize, usize, usize); 10] = [
    (1, 1, 1),
    (2, 3, 1),
    (3, 5, 3),
    (17, 33, 5),
    (5, 129, 5),
    (40, 257, 19),
    (130, 45, 45),
    (33, 100, 1),
    (7, 300, 7),
    (70, 600, 33),
];

/// The integer core against `Σ_j S(i, j) · q_j` over unpacked signs.
fn check_integer_core(k: Kernel) {
    let mut rng = Rng(1);
    for &(rows, cols) in &PRODUCT_SHAPES {
        let s = rng.signs(rows, cols);
        let operand = SignOperand::new(s.as_view());
        let cols_p = col_bytes(cols) * 8;
        let rows_p = operand.tiles * 16;
        for batch in BATCHES.chain(LARGE_BATCHES) {
            let mut q = vec![0i8; batch * cols_p];
            let mut qsum = vec![0i32; batch];
            let tlen = table_len(cols_p);
            let mut tables = vec![0i16; batch * tlen];
            for t in 0..batch {
                let qt = &mut q[t * cols_p..(t + 1) * cols_p];
                for (j, v) in qt.iter_mut().enumerate().take(cols) {
                    // Extremes often: they stress the int16 partial sums.
                    *v = match (rng.below(4), j % 2) {
                        (0, 0) => 127,
                        (0, _) => -127,
                        _ => (rng.below(255) as i32 - 127) as i8,
                    };
                }
                qsum[t] = qt.iter().map(|&v| i32::from(v)).sum();
                build_tables(table_layout(k), qt, &mut tables[t * tlen..(t + 1) * tlen]);
            }
            let mut acc = vec![0i32; batch * rows_p];
            int_product(k, &operand, &q, &qsum, &mut tables, batch, &mut acc);
            for t in 0..batch {
                for i in 0..rows {
                    let want: i32 = (0..cols)
                        .map(|j| i32::from(s.sign(i, j)) * i32::from(q[t * cols_p + j]))
                        .sum();
                    assert_eq!(
                        acc[t * rows_p + i],
                        want,
                        "{k}: {rows}×{cols}, batch {batch}, token {t}, row {i}"
                    );
                }
            }
        }
    }
}

/// Largest possible partial sums: every activation ±127 aligned with the
/// signs, so every table entry used is ±508, over 2000 columns.
fn check_saturating_inputs(k: Kernel) {
    let (rows, cols) = (19, 2000);
    let s = SignMatrix::from_fn(rows, cols, |i, j| (i + j) % 3 == 0);
    let cols_p = col_bytes(cols) * 8;
    let mut q = vec![0i8; 2 * cols_p];
    for j in 0..cols {
        // Token 0 matches row 0's signs; token 1 is all +127.
        q[j] = if s.sign(0, j) < 0 { -127 } else { 127 };
        q[cols_p + j] = 127;
    }
    for batch in [1, 2] {
        let qsum: Vec<i32> = (0..batch)
            .map(|t| {
                q[t * cols_p..][..cols_p]
                    .iter()
                    .map(|&v| i32::from(v))
                    .sum()
            })
            .collect();
        let tlen = table_len(cols_p);
        let mut tables = vec![0i16; batch * tlen];
        for t in 0..batch {
            build_tables(
                table_layout(k),
                &q[t * cols_p..(t + 1) * cols_p],
                &mut tables[t * tlen..],
            );
        }
        let rows_p = rows.div_ceil(16) * 16;
        let mut acc = vec![0i32; batch * rows_p];
        let op = SignOperand::new(s.as_view());
        int_product(k, &op, &q, &qsum, &mut tables, batch, &mut acc);
        assert_eq!(acc[0], 127 * cols as i32, "{k}: row 0 saturates");
        for t in 0..batch {
            for i in 0..rows {
                let want: i32 = (0..cols)
                    .map(|j| i32::from(s.sign(i, j)) * i32::from(q[t * cols_p + j]))
                    .sum();
                assert_eq!(acc[t * rows_p + i], want, "{k}: token {t}, row {i}");
            }
        }
    }
}

fn f16_vec(v: &[f32]) -> F16Vector<Vec<u8>> {
    F16Vector::from_f32(v)
}

fn random_binary(rng: &mut Rng, m: usize, n: usize, bias: bool) -> BinaryLinear<Vec<u8>> {
    BinaryLinear::new(
        rng.signs(m, n),
        f16_vec(&rng.values(n, 2.0)),
        f16_vec(&rng.values(m, 2.0)),
        bias.then(|| f16_vec(&rng.values(m, 1.0))),
    )
    .unwrap()
}

fn random_factorized(
    rng: &mut Rng,
    m: usize,
    n: usize,
    r: usize,
    bias: bool,
) -> FactorizedLinear<Vec<u8>> {
    FactorizedLinear::new(
        rng.signs(m, r),
        rng.signs(r, n),
        f16_vec(&rng.values(n, 2.0)),
        f16_vec(&rng.values(m, 0.5)),
        bias.then(|| f16_vec(&rng.values(m, 1.0))),
    )
    .unwrap()
}

/// f32 rounding slack on top of the quantization budget.
fn slack(magnitude: f64) -> f64 {
    1e-5 * magnitude + 1e-6
}

fn check_binary(k: Kernel) {
    let mut rng = Rng(2);
    for &(m, n) in &PRODUCT_SHAPES {
        for bias in [false, true] {
            let l = random_binary(&mut rng, m, n, bias);
            for batch in 1..=17 {
                let x = rng.values(batch * n, 3.0);
                let mut y = vec![f32::NAN; batch * m];
                let mut scratch = vec![f32::NAN; l.forward_scratch_len(batch)];
                l.forward_with(k, &x, batch, &mut y, &mut scratch);
                let mut want = vec![0.0f32; m];
                let mut tmp = vec![0.0f32; n];
                for b in 0..batch {
                    let xb = &x[b * n..(b + 1) * n];
                    l.forward_ref(xb, &mut want, &mut tmp);
                    let z: Vec<f32> = (0..n).map(|j| l.s_col().get(j) * xb[j]).collect();
                    let max_z = z.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    let sum_z: f64 = z.iter().map(|v| f64::from(v.abs())).sum();
                    let budget = f64::from(error_bound_binary(n, max_z));
                    for i in 0..m {
                        let s = f64::from(l.s_row().get(i)).abs();
                        let bi = l.bias().map_or(0.0, |v| f64::from(v.get(i)).abs());
                        let tol = s * budget + slack(s * sum_z + bi);
                        let err = (f64::from(y[b * m + i]) - f64::from(want[i])).abs();
                        assert!(
                            err <= tol,
                            "{k}: {m}×{n} bias {bias} batch {batch} token {b} row {i}: \
                             got {} want {} (err {err}, budget {tol})",
                            y[b * m + i],
                            want[i]
                        );
                    }
                }
            }
        }
    }
}

fn check_factorized(k: Kernel) {
    let mut rng = Rng(3);
    for &(m, n, r) in &FACTORIZED_SHAPES {
        for bias in [false, true] {
            let l = random_factorized(&mut rng, m, n, r, bias);
            for batch in 1..=17 {
                let x = rng.values(batch * n, 3.0);
                let mut y = vec![f32::NAN; batch * m];
                let mut scratch = vec![f32::NAN; l.forward_scratch_len(batch)];
                l.forward_with(k, &x, batch, &mut y, &mut scratch);
                let mut want = vec![0.0f32; m];
                let mut t_ref = vec![0.0f32; r];
                for b in 0..batch {
                    let xb = &x[b * n..(b + 1) * n];
                    l.forward_ref(xb, &mut want, &mut t_ref);
                    let z: Vec<f32> = (0..n).map(|j| l.s_pre().get(j) * xb[j]).collect();
                    let max_z = z.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    let max_t = t_ref.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    let sum_z: f64 = z.iter().map(|v| f64::from(v.abs())).sum();
                    let budget = f64::from(error_bound_factorized(n, r, max_z, max_t));
                    for i in 0..m {
                        let s = f64::from(l.s_post().get(i)).abs();
                        let bi = l.bias().map_or(0.0, |v| f64::from(v.get(i)).abs());
                        let tol = s * budget + slack(s * r as f64 * sum_z + bi);
                        let err = (f64::from(y[b * m + i]) - f64::from(want[i])).abs();
                        assert!(
                            err <= tol,
                            "{k}: {m}×{n} r {r} bias {bias} batch {batch} token {b} row {i}: \
                             got {} want {} (err {err}, budget {tol})",
                            y[b * m + i],
                            want[i]
                        );
                    }
                }
            }
        }
    }
}

/// The f32 sign product through `k`'s lookups gives the portable loop's
/// bits, on odd shapes and batches, with scratch full of NaN.
fn check_f32_same_as_portable(k: Kernel) {
    let mut rng = Rng(13);
    for &(rows, cols) in &PRODUCT_SHAPES {
        let s = rng.signs(rows, cols);
        for batch in [1, 2, 3, 17] {
            let z: Vec<f32> = (0..batch * cols)
                .map(|j| match j % 7 {
                    0 => -0.0,
                    1 => rng.value(1e4),
                    _ => rng.value(if j % 3 == 0 { 100.0 } else { 1e-3 }),
                })
                .collect();
            let run = |kernel| {
                let mut out = vec![f32::NAN; batch * rows];
                let mut scratch = vec![f32::NAN; sign_product_f32_scratch_len(cols)];
                sign_product_f32(kernel, &s.as_view(), &z, batch, &mut out, &mut scratch);
                out
            };
            let (want, got) = (run(Kernel::Portable), run(k));
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                assert_eq!(
                    w.to_bits(),
                    g.to_bits(),
                    "{rows}×{cols} batch {batch} output {i}: {g} vs {w}"
                );
            }
        }
    }
}

fn check_same_as_portable(k: Kernel) {
    let mut rng = Rng(4);
    for &(m, n, r) in &FACTORIZED_SHAPES {
        let l = random_factorized(&mut rng, m, n, r, true);
        let b = random_binary(&mut rng, m, n, true);
        for batch in BATCHES {
            let x = rng.values(batch * n, 3.0);
            let mut scratch = vec![0.0f32; l.forward_scratch_len(batch)];
            let mut y = vec![0.0f32; batch * m];
            let mut y_p = vec![0.0f32; batch * m];
            l.forward_with(k, &x, batch, &mut y, &mut scratch);
            l.forward_with(Kernel::Portable, &x, batch, &mut y_p, &mut scratch);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&y),
                bits(&y_p),
                "{k}: factorized {m}×{n} r {r}, batch {batch}"
            );
            let mut scratch = vec![0.0f32; b.forward_scratch_len(batch)];
            b.forward_with(k, &x, batch, &mut y, &mut scratch);
            b.forward_with(Kernel::Portable, &x, batch, &mut y_p, &mut scratch);
            assert_eq!(bits(&y), bits(&y_p), "{k}: binary {m}×{n}, batch {batch}");
        }
    }
}

/// Results do not depend on where the scratch starts: the product skips to
/// a 64-byte boundary inside it, and an exactly-sized slice at any of the 16
/// float offsets (filled with NaN) must still be long enough and give the
/// same bits.
fn check_scratch_offsets(k: Kernel) {
    let mut rng = Rng(8);
    let (m, n, r) = FACTORIZED_SHAPES[FACTORIZED_SHAPES.len() - 1];
    let l = random_factorized(&mut rng, m, n, r, true);
    for batch in [1, 3, 16, 17] {
        let x = rng.values(batch * n, 3.0);
        let need = l.forward_scratch_len(batch);
        let mut buf = vec![f32::NAN; need + 16];
        let mut want = vec![0.0f32; batch * m];
        l.forward_with(k, &x, batch, &mut want, &mut buf[..need]);
        for off in 1..16 {
            buf.fill(f32::NAN);
            let mut y = vec![0.0f32; batch * m];
            l.forward_with(k, &x, batch, &mut y, &mut buf[off..off + need]);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y), bits(&want), "{k}: batch {batch}, offset {off}");
        }
    }
}

/// The kernel's table builder against the scalar one, byte for byte.
fn check_table_builder(k: Kernel) {
    let mut rng = Rng(7);
    for cols_p in [32, 64, 96, 4096 + 32] {
        let q: Vec<i8> = (0..cols_p)
            .map(|_| (rng.below(255) as i32 - 127) as i8)
            .collect();
        let mut want = vec![0i16; table_len(cols_p)];
        let mut got = vec![0i16; table_len(cols_p)];
        build_tables(table_layout(k), &q, &mut want);
        build_tables_for(k, &q, &mut got);
        assert_eq!(got, want, "{k}: {cols_p} columns");
    }
}

/// Named cases: zero input (output is the bias), one-hot input.
fn check_regressions(k: Kernel) {
    let mut rng = Rng(5);
    let l = random_factorized(&mut rng, 20, 40, 8, true);
    let x = vec![0.0f32; 3 * 40];
    let mut y = vec![f32::NAN; 3 * 20];
    let mut scratch = vec![0.0f32; l.forward_scratch_len(3)];
    l.forward_with(k, &x, 3, &mut y, &mut scratch);
    for b in 0..3 {
        for i in 0..20 {
            assert_eq!(y[b * 20 + i], l.bias().unwrap().get(i), "{k}: zero input");
        }
    }
    // x = e_j: y = s_row ⊙ B[:, j] · s_col[j], exact (127 · δ = |x_j|).
    let s = SignMatrix::from_fn(5, 9, |i, j| (i * j) % 2 == 1);
    let ones = f16_vec(&[1.0; 9]);
    let row = f16_vec(&[1.0; 5]);
    let b = BinaryLinear::new(s, ones, row, None).unwrap();
    let mut x = vec![0.0f32; 9];
    x[3] = -0.75;
    let mut y = vec![0.0f32; 5];
    let mut scratch = vec![0.0f32; b.forward_scratch_len(1)];
    b.forward_with(k, &x, 1, &mut y, &mut scratch);
    for (i, &yi) in y.iter().enumerate() {
        assert_eq!(
            yi,
            -0.75 * f32::from(b.signs().sign(i, 3)),
            "{k}: one-hot row {i}"
        );
    }
}

/// Instantiates the suite for each named kernel.
macro_rules! kernel_tests {
    ($($name:ident => $kernel:expr),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[test]
            fn integer_core_is_exact() {
                if usable($kernel) {
                    check_integer_core($kernel);
                }
            }

            #[test]
            fn results_do_not_depend_on_scratch_offset() {
                if usable($kernel) {
                    check_scratch_offsets($kernel);
                }
            }

            #[test]
            fn integer_core_handles_saturating_inputs() {
                if usable($kernel) {
                    check_saturating_inputs($kernel);
                }
            }

            #[test]
            fn binary_within_budget_of_oracle() {
                if usable($kernel) {
                    check_binary($kernel);
                }
            }

            #[test]
            fn factorized_within_budget_of_oracle() {
                if usable($kernel) {
                    check_factorized($kernel);
                }
            }

            #[test]
            fn bit_identical_to_portable() {
                if usable($kernel) {
                    check_same_as_portable($kernel);
                }
            }

            #[test]
            fn f32_product_bit_identical_to_portable() {
                if usable($kernel) {
                    check_f32_same_as_portable($kernel);
                }
            }

            #[test]
            fn table_builder_matches_scalar() {
                if usable($kernel) {
                    check_table_builder($kernel);
                }
            }

            #[test]
            fn regressions() {
                if usable($kernel) {
                    check_regressions($kernel);
                }
            }
        }
    )*};
}

kernel_tests! {
    portable => Kernel::Portable,
    avx2 => Kernel::Avx2,
    avx512 => Kernel::Avx512,
    amx => Kernel::Amx,
    neon => Kernel::Neon,
    neon_dotprod => Kernel::NeonDotprod,
    neon_i8mm => Kernel::NeonI8mm,
}

#[test]
fn forcing_a_kernel_changes_the_selection() {
    assert!(available().any(|k| k == Kernel::Portable));
    assert!(best().is_available());
    set_forced_kernel(Some(Kernel::Portable));
    assert_eq!(selected(), Kernel::Portable);
    set_forced_kernel(None);
    assert_eq!(selected(), best());
    let names: Vec<&str> = available().map(Kernel::name).collect();
    say(format_args!(
        "    kernels available here: {names:?}, best: {}",
        best()
    ));
}

#[test]
#[should_panic(expected = "scratch length")]
fn short_scratch_panics() {
    let mut rng = Rng(6);
    let l = random_binary(&mut rng, 4, 4, false);
    let mut y = vec![0.0f32; 4];
    let mut scratch = vec![0.0f32; l.forward_scratch_len(1) - 1];
    l.forward(&[1.0; 4], 1, &mut y, &mut scratch);
}

// ---- The f32 (exact-activation) path: one suite on the portable loop (the
// kernels' f32 lookups are checked against it bit for bit above). ----

/// Budget of one layer output on f32 activations against the f64 oracle:
/// the sign product's [`error_bound_f32`] over `terms` (the absolute sum of
/// its inputs) plus a few roundings of the scale/bias epilogue.
fn f32_epilogue_slack(magnitude: f64) -> f64 {
    4.0 * f64::from(f32::EPSILON) * magnitude + 1e-30
}

#[test]
fn f32_product_within_budget_of_oracle() {
    let mut rng = Rng(11);
    for &(rows, cols) in &PRODUCT_SHAPES {
        let s = rng.signs(rows, cols);
        for batch in BATCHES {
            // Values of mixed magnitude: cancellation is where order matters.
            let z: Vec<f32> = (0..batch * cols)
                .map(|j| rng.value(if j % 5 == 0 { 100.0 } else { 0.01 }))
                .collect();
            let mut out = vec![f32::NAN; batch * rows];
            let mut scratch = vec![f32::NAN; sign_product_f32_scratch_len(cols)];
            sign_product_f32(
                Kernel::Portable,
                &s.as_view(),
                &z,
                batch,
                &mut out,
                &mut scratch,
            );
            for t in 0..batch {
                let zt = &z[t * cols..(t + 1) * cols];
                let sum_abs: f32 = zt.iter().map(|v| v.abs()).sum();
                let tol = f64::from(error_bound_f32(cols, sum_abs * 1.001));
                for i in 0..rows {
                    let want: f64 = (0..cols)
                        .map(|j| f64::from(s.sign(i, j)) * f64::from(zt[j]))
                        .sum();
                    let got = f64::from(out[t * rows + i]);
                    assert!(
                        (got - want).abs() <= tol,
                        "{rows}×{cols} batch {batch} token {t} row {i}: {got} vs {want} (budget {tol})"
                    );
                }
            }
        }
    }
}

#[test]
fn f32_product_of_one_hot_and_zero_is_exact() {
    let s = SignMatrix::from_fn(21, 37, |i, j| (i * 7 + j * 3) % 5 < 2);
    let mut scratch = vec![f32::NAN; sign_product_f32_scratch_len(37)];
    let mut out = vec![f32::NAN; 21];
    sign_product_f32(
        Kernel::Portable,
        &s.as_view(),
        &[0.0; 37],
        1,
        &mut out,
        &mut scratch,
    );
    assert!(out.iter().all(|&v| v == 0.0));
    let mut x = vec![0.0f32; 37];
    x[33] = -0.3;
    sign_product_f32(
        Kernel::Portable,
        &s.as_view(),
        &x,
        1,
        &mut out,
        &mut scratch,
    );
    for (i, &v) in out.iter().enumerate() {
        assert_eq!(v, -0.3 * f32::from(s.sign(i, 33)), "row {i}");
    }
}

#[test]
fn f32_layers_within_budget_of_oracle() {
    let eps = f64::from(f32::EPSILON);
    let mut rng = Rng(12);
    for &(m, n) in &PRODUCT_SHAPES {
        let l = random_binary(&mut rng, m, n, true);
        for batch in BATCHES {
            let x = rng.values(batch * n, 3.0);
            let mut y = vec![f32::NAN; batch * m];
            let mut scratch = vec![f32::NAN; l.forward_f32_scratch_len(batch)];
            l.forward_f32(&x, batch, &mut y, &mut scratch);
            let (mut want, mut tmp) = (vec![0.0f32; m], vec![0.0f32; n]);
            for b in 0..batch {
                let xb = &x[b * n..(b + 1) * n];
                l.forward_ref(xb, &mut want, &mut tmp);
                let sum_z: f32 = tmp.iter().map(|v| v.abs()).sum();
                let eb = f64::from(error_bound_f32(n, sum_z * 1.001));
                for i in 0..m {
                    let s = f64::from(l.s_row().get(i)).abs();
                    let bi = f64::from(l.bias().unwrap().get(i)).abs();
                    let tol = s * eb + f32_epilogue_slack(s * f64::from(sum_z) + bi);
                    let err = (f64::from(y[b * m + i]) - f64::from(want[i])).abs();
                    assert!(
                        err <= tol,
                        "binary {m}×{n} batch {batch} row {i}: {err} > {tol}"
                    );
                }
            }
        }
    }
    for &(m, n, r) in &FACTORIZED_SHAPES {
        let l = random_factorized(&mut rng, m, n, r, true);
        for batch in BATCHES {
            let x = rng.values(batch * n, 3.0);
            let mut y = vec![f32::NAN; batch * m];
            let mut scratch = vec![f32::NAN; l.forward_f32_scratch_len(batch)];
            l.forward_f32(&x, batch, &mut y, &mut scratch);
            let (mut want, mut t_ref) = (vec![0.0f32; m], vec![0.0f32; r]);
            for b in 0..batch {
                let xb = &x[b * n..(b + 1) * n];
                l.forward_ref(xb, &mut want, &mut t_ref);
                let sum_z: f32 = (0..n).map(|j| (l.s_pre().get(j) * xb[j]).abs()).sum();
                // Stage 1 (plus the f32 rounding of z = s_pre · x), then
                // stage 2 over the perturbed intermediate.
                let e1 = f64::from(error_bound_f32(n, sum_z * 1.001)) + eps * f64::from(sum_z);
                let sum_t: f64 = t_ref.iter().map(|v| f64::from(v.abs())).sum::<f64>();
                let sum_t_got = sum_t + r as f64 * e1;
                let e2 = f64::from(error_bound_f32(r, (sum_t_got * 1.001) as f32))
                    + r as f64 * e1
                    + eps * sum_t;
                for i in 0..m {
                    let s = f64::from(l.s_post().get(i)).abs();
                    let bi = f64::from(l.bias().unwrap().get(i)).abs();
                    let tol = s * e2 + f32_epilogue_slack(s * sum_t_got + bi);
                    let err = (f64::from(y[b * m + i]) - f64::from(want[i])).abs();
                    assert!(
                        err <= tol,
                        "factorized {m}×{n} r {r} batch {batch} row {i}: {err} > {tol}"
                    );
                }
            }
        }
    }
}

/// Tokens are independent in the f32 path: a batch gives each token's
/// batch-1 result bit for bit (so chunked prefill and decode agree exactly).
#[test]
fn f32_layers_are_batch_invariant() {
    let mut rng = Rng(13);
    for &(m, n, r) in &FACTORIZED_SHAPES {
        let l = random_factorized(&mut rng, m, n, r, true);
        let batch = 5;
        let x = rng.values(batch * n, 3.0);
        let mut y = vec![0.0f32; batch * m];
        let mut scratch = vec![0.0f32; l.forward_f32_scratch_len(batch)];
        l.forward_f32(&x, batch, &mut y, &mut scratch);
        let mut y1 = vec![0.0f32; m];
        for b in 0..batch {
            l.forward_f32(&x[b * n..(b + 1) * n], 1, &mut y1, &mut scratch);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&y[b * m..(b + 1) * m]),
                bits(&y1),
                "{m}×{n} r {r} token {b}"
            );
        }
    }
}
