//! The float operations of a decoder step, written once for the runtime:
//! RMSNorm, RoPE, SiLU, the softmax exp, row-table dot products and the
//! dense fallback of a linear layer. They follow nq-host's f32 reference
//! (`model::forward`) operation for operation where that matters for
//! agreement (f64 mean of squares in RMSNorm, f64 RoPE angles, f64 softmax
//! sum); `exp` is a vectorizing polynomial within 2 f32 epsilons of e^x.

use super::ActPrecision;
use crate::blob::Embedding;
use crate::layers::{DenseDtype, Linear, RowBits};
use crate::DenseTensor;

/// IEEE half (bits) to f32, branch-free so loops over rows vectorize:
/// the exponent/mantissa field shifted into f32 position and multiplied by
/// 2^112 rebias normals and subnormals exactly; infinities and NaNs
/// (exponent 31) get an all-ones f32 exponent.
#[inline]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let em = (h & 0x7fff) << 13;
    let scaled = (f32::from_bits(em) * f32::from_bits(0x7780_0000)).to_bits();
    let bits = if em >= 0x0f80_0000 {
        em | 0x7f80_0000
    } else {
        scaled
    };
    f32::from_bits(bits | sign)
}

/// `out = x / rms(x) ⊙ w` for one row (`x`, `out` and `w` of equal length).
pub(crate) fn rmsnorm_row(x: &[f32], w: &DenseTensor<&[u8]>, eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
    let inv = (1.0 / libm::sqrt(ms + f64::from(eps))) as f32;
    for (j, (o, &xv)) in out.iter_mut().zip(x).enumerate() {
        *o = xv * inv * w.get_flat(j);
    }
}

/// RMSNorm of every `w.len()`-wide chunk of `x`, in place (qwen3 q/k norm).
pub(crate) fn head_norm_in_place(x: &mut [f32], w: &DenseTensor<&[u8]>, eps: f32) {
    let d = w.len();
    for head in x.chunks_exact_mut(d) {
        let ms = head
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            / d as f64;
        let inv = (1.0 / libm::sqrt(ms + f64::from(eps))) as f32;
        for (j, v) in head.iter_mut().enumerate() {
            *v = *v * inv * w.get_flat(j);
        }
    }
}

/// Fills `cs` (`head_dim` floats: cos of each frequency, then sin) for
/// position `pos`: angle `pos · θ^(−2i/D)`, computed in f64.
pub(crate) fn rope_angles(pos: usize, theta: f32, cs: &mut [f32]) {
    let d = cs.len();
    let half = d / 2;
    let (cos, sin) = cs.split_at_mut(half);
    for i in 0..half {
        let freq = libm::pow(f64::from(theta), -2.0 * i as f64 / d as f64);
        let a = pos as f64 * freq;
        cos[i] = libm::cos(a) as f32;
        sin[i] = libm::sin(a) as f32;
    }
}

/// Rotates every head of one row ("rotate halves", Hugging Face order).
pub(crate) fn rope_row(row: &mut [f32], cs: &[f32]) {
    let d = cs.len();
    let half = d / 2;
    let (cos, sin) = cs.split_at(half);
    for head in row.chunks_exact_mut(d) {
        let (lo, hi) = head.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (lo[i], hi[i]);
            lo[i] = a * cos[i] - b * sin[i];
            hi[i] = b * cos[i] + a * sin[i];
        }
    }
}

/// `e^x`, branch-free so loops over it vectorize: `2^n · e^r` with
/// `n = round(x / ln 2)` (Cody–Waite split of ln 2) and a degree-7 Taylor
/// polynomial on `|r| ≤ ln 2 / 2` (truncation below 6e-9 relative; with
/// rounding, the tests bound the error by 2 f32 epsilons). `x` is clamped
/// to [−87, 88] first (e^−87 ≈ 1.6e-38, e^88 ≈ 1.7e38: no subnormal or
/// infinite results). Plain IEEE operations in a fixed order: the same
/// bits on every target and at every vector width.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // LN2_HI = 0x3f317200 has 14 significant bits, so n · LN2_HI is exact;
    // LN2_LO = ln 2 − LN2_HI.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2^23: adding it rounds a |x| < 2^22 to an integer (to nearest,
    // ties to even) in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * core::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n ∈ [−126, 127]: a normal power of two.
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `s = exp(s - max)` in place for softmax scores (all `s ≤ max`, so no
/// term exceeds 1), and `Σ s` in f64, 8 lanes of accumulators.
#[inline(always)]
pub(crate) fn exp_shifted_sum(scores: &mut [f32], max: f32) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = scores.chunks_exact_mut(8);
    for c in chunks.by_ref() {
        for (l, s) in lanes.iter_mut().zip(c) {
            *s = exp(*s - max);
            *l += f64::from(*s);
        }
    }
    let mut tail = 0.0f64;
    for s in chunks.into_remainder() {
        *s = exp(*s - max);
        tail += f64::from(*s);
    }
    lanes.iter().sum::<f64>() + tail
}

/// `gate = SiLU(gate) ⊙ up`, element-wise (`SiLU(x) = x / (1 + e^−x)`).
#[inline(always)]
pub(crate) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// `Σ f16(row_j) · x_j` for little-endian f16 bytes, 16 lanes of
/// accumulators so the compiler vectorizes the convert-and-multiply.
fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let (rc, xc) = (row.chunks_exact(2 * L), x.chunks_exact(L));
    let (rr, xr) = (rc.remainder(), xc.remainder());
    for (r, xs) in rc.zip(xc) {
        for k in 0..L {
            let h = u16::from_le_bytes([r[2 * k], r[2 * k + 1]]);
            acc[k] += f16_to_f32(h) * xs[k];
        }
    }
    let mut tail = 0.0f32;
    for (b, &xv) in rr.chunks_exact(2).zip(xr) {
        tail += f16_to_f32(u16::from_le_bytes([b[0], b[1]])) * xv;
    }
    let mut half = L;
    while half > 1 {
        half /= 2;
        for k in 0..half {
            acc[k] += acc[k + half];
        }
    }
    acc[0] + tail
}

/// `Σ conv(k_j) · x_j` with `L` lanes of accumulators, summed in lane order,
/// then the tail: the convert-and-multiply vectorizes on any SIMD width, in
/// the same order on every target.
#[inline(always)]
pub(crate) fn dot_lanes<const L: usize, T: Copy>(
    k: &[T],
    x: &[f32],
    conv: impl Fn(T) -> f32,
) -> f32 {
    let mut acc = [0.0f32; L];
    let (kc, xc) = (k.chunks_exact(L), x.chunks_exact(L));
    let (kr, xr) = (kc.remainder(), xc.remainder());
    for (ks, xs) in kc.zip(xc) {
        for j in 0..L {
            acc[j] += conv(ks[j]) * xs[j];
        }
    }
    let mut tail = 0.0f32;
    for (&kv, &xv) in kr.iter().zip(xr) {
        tail += conv(kv) * xv;
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ code_j · x_j` over int8 codes, 16 lanes of accumulators.
#[inline(always)]
fn dot_i8(row: &[u8], x: &[f32]) -> f32 {
    dot_lanes::<16, u8>(row, x, |c| f32::from(c as i8))
}

/// `Σ code_j · x_j` over 4-bit codes (low nibble first, offset 8).
#[inline(always)]
fn dot_q4(row: &[u8], x: &[f32]) -> f32 {
    const L: usize = 8;
    let mut acc = [0.0f32; 2 * L];
    let (rc, xc) = (row.chunks_exact(L), x.chunks_exact(2 * L));
    for (r, xs) in rc.zip(xc) {
        for k in 0..L {
            acc[2 * k] += f32::from((r[k] & 0x0F) as i8 - 8) * xs[2 * k];
            acc[2 * k + 1] += f32::from((r[k] >> 4) as i8 - 8) * xs[2 * k + 1];
        }
    }
    let done = x.len() / (2 * L) * (2 * L);
    let mut tail = 0.0f32;
    for (j, &xv) in x.iter().enumerate().skip(done) {
        let byte = row[j / 2];
        let nib = if j % 2 == 0 { byte & 0x0F } else { byte >> 4 };
        tail += f32::from(nib as i8 - 8) * xv;
    }
    acc.iter().sum::<f32>() + tail
}

/// Row `i` of a dense table dotted with `x` (`x.len() == cols`).
fn dense_row_dot(t: &DenseTensor<&[u8]>, i: usize, x: &[f32]) -> f32 {
    let n = t.cols();
    match t.dtype() {
        DenseDtype::F32 => {
            let row = &t.as_bytes()[i * n * 4..(i + 1) * n * 4];
            let mut acc = 0.0f32;
            for (b, &xv) in row.chunks_exact(4).zip(x) {
                acc += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * xv;
            }
            acc
        }
        DenseDtype::F16 => {
            let row = &t.as_bytes()[i * n * 2..(i + 1) * n * 2];
            crate::kernels::dot_f16_simd(row, x).unwrap_or_else(|| dot_f16(row, x))
        }
    }
}

/// Row `i` of a table dotted with `x`.
#[inline(always)]
pub(crate) fn table_row_dot(e: &Embedding<'_>, i: usize, x: &[f32]) -> f32 {
    match e {
        Embedding::Dense(t) => dense_row_dot(t, i, x),
        Embedding::RowQuant(q) => {
            let n = q.cols();
            let rb = q.bits().row_bytes(n);
            let row = &q.codes()[i * rb..(i + 1) * rb];
            let acc = match q.bits() {
                RowBits::I8 => dot_i8(row, x),
                RowBits::Q4 => dot_q4(row, x),
            };
            q.scales().get(i) * acc
        }
    }
}

/// `y = W x` for every row of a table (an LM head that is a table), inside
/// the selected kernel's vector frame ([`kernels::vectorized`]): the int8
/// and 4-bit row dots keep 16 explicit lanes of accumulators, so they
/// vectorize wider there and still give the same bits.
///
/// [`kernels::vectorized`]: crate::kernels::vectorized
pub(crate) fn table_matvec(e: &Embedding<'_>, x: &[f32], y: &mut [f32]) {
    table_matvec_with(crate::kernels::selected(), e, x, y);
}

/// [`table_matvec`] in `kernel`'s vector frame.
fn table_matvec_with(kernel: crate::kernels::Kernel, e: &Embedding<'_>, x: &[f32], y: &mut [f32]) {
    crate::kernels::vectorized(
        kernel,
        #[inline(always)]
        || {
            for (i, yi) in y.iter_mut().enumerate() {
                *yi = table_row_dot(e, i, x);
            }
        },
    );
}

/// Scratch floats any quantized linear `m × n` (any rank) needs for `batch`
/// tokens at activation precision `act`: `FactorizedLinear`'s scratch
/// (`forward_scratch_len` / `forward_f32_scratch_len`) at the largest rank,
/// which also covers `BinaryLinear`.
pub(crate) fn linear_scratch_bound(
    m: usize,
    n: usize,
    batch: usize,
    act: ActPrecision,
) -> Option<usize> {
    use crate::kernels::sign_product_scratch_len as sp;
    let r = m.min(n);
    let sign = match act {
        ActPrecision::Int8 => sp(r, n, batch).max(sp(m, r, batch)),
        // `kernels::sign_product_f32_scratch_len(n)` (≥ that of `r ≤ n`),
        // with checked arithmetic.
        ActPrecision::F32 => crate::sign::col_bytes(n).checked_mul(32)?,
    };
    n.checked_add(m.checked_mul(2)?)?
        .checked_add(batch.checked_mul(n.checked_add(r)?)?)?
        .checked_add(sign)
}

/// The scratch a given linear needs for `batch` tokens at precision `act`.
pub(crate) fn linear_scratch(l: &Linear<'_>, batch: usize, act: ActPrecision) -> usize {
    match (l, act) {
        (Linear::Factorized(f), ActPrecision::Int8) => f.forward_scratch_len(batch),
        (Linear::Factorized(f), ActPrecision::F32) => f.forward_f32_scratch_len(batch),
        (Linear::Binary(b), ActPrecision::Int8) => b.forward_scratch_len(batch),
        (Linear::Binary(b), ActPrecision::F32) => b.forward_f32_scratch_len(batch),
        (Linear::Dense(_), _) => 0,
    }
}

/// `y = W x (+ b)` for `batch` rows of `x`: the fast int8-activation
/// kernels, or the f32 sign products with [`ActPrecision::F32`]. Dense
/// weights are always f32 row dots.
pub(crate) fn linear_forward(
    l: &Linear<'_>,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    scratch: &mut [f32],
    act: ActPrecision,
) {
    match (l, act) {
        (Linear::Factorized(f), ActPrecision::Int8) => f.forward(x, batch, y, scratch),
        (Linear::Factorized(f), ActPrecision::F32) => f.forward_f32(x, batch, y, scratch),
        (Linear::Binary(b), ActPrecision::Int8) => b.forward(x, batch, y, scratch),
        (Linear::Binary(b), ActPrecision::F32) => b.forward_f32(x, batch, y, scratch),
        (Linear::Dense(d), _) => {
            let (m, n) = (d.rows(), d.cols());
            let e = Embedding::Dense(*d);
            for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(m)) {
                table_matvec(&e, xr, yr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp` against f64 `exp` on [−87, 88] (the clamps outside), and the
    /// softmax's shifted exp and sum (chunks and tails) against it.
    #[test]
    fn exp_is_within_2_epsilons() {
        let tol = 2.0 * f64::from(f32::EPSILON);
        for i in 0..=20_000 {
            let x = -90.0 + i as f32 * 0.009_1;
            let got = f64::from(exp(x));
            let want = libm::exp(f64::from(x.clamp(-87.0, 88.0)));
            assert!(
                ((got - want) / want).abs() <= tol,
                "exp({x}) = {got}, want {want}"
            );
        }
        for x in [
            0.0f32,
            -0.0,
            1e-30,
            -1e-7,
            0.5,
            -0.5,
            1.0,
            core::f32::consts::LN_2,
        ] {
            let want = libm::exp(f64::from(x));
            assert!(((f64::from(exp(x)) - want) / want).abs() <= tol, "exp({x})");
        }
        assert_eq!(exp(0.0), 1.0);
        for len in [0usize, 1, 7, 8, 9, 23, 1000] {
            let max = 2.5f32;
            let xs: [f32; 1000] = core::array::from_fn(|i| {
                let t = (i as f32 * 0.618_034).fract();
                match i % 7 {
                    0 => max,
                    1 => max - t * 1e-6,
                    _ => max - t * 100.0,
                }
            });
            let mut s = xs;
            let sum = exp_shifted_sum(&mut s[..len], max);
            let mut want_sum = 0.0f64;
            for i in 0..len {
                assert_eq!(s[i], exp(xs[i] - max), "{i}");
                want_sum += f64::from(s[i]);
            }
            assert!(
                (sum - want_sum).abs() <= 1e-12 * want_sum.max(1.0),
                "{sum} vs {want_sum}"
            );
        }
    }

    /// `silu_mul` against `x · σ(x) · u` in f64, including saturated gates
    /// (below −88 the clamped exp leaves |result| < 1e-35 instead of ≈ 0).
    #[test]
    fn silu_mul_matches_f64() {
        let gate: [f32; 301] = core::array::from_fn(|i| (i as f32 - 150.0) * 0.7);
        let up: [f32; 301] = core::array::from_fn(|i| libm::cosf(i as f32));
        let mut got = gate;
        silu_mul(&mut got, &up);
        for i in 0..gate.len() {
            let x = f64::from(gate[i]);
            let want = x / (1.0 + libm::exp(-x)) * f64::from(up[i]);
            assert!(
                (f64::from(got[i]) - want).abs() <= 4e-7 * want.abs() + 1e-35,
                "silu({x}) · {} = {}, want {want}",
                up[i],
                got[i]
            );
        }
    }

    /// The head's row dots give the same bits in every kernel's vector
    /// frame as in the portable (baseline) build.
    #[cfg(feature = "alloc")]
    #[test]
    fn table_heads_are_bit_identical_across_kernels() {
        use crate::kernels::{self, Kernel};
        use crate::layers::RowQuantTensor;
        use std::{vec, vec::Vec};
        let (rows, cols) = (37, 576 + 13);
        let vals: Vec<f32> = (0..rows * cols)
            .map(|k| libm::sinf(k as f32 * 0.37) * 2.0)
            .collect();
        let x: Vec<f32> = (0..cols)
            .map(|k| libm::cosf(k as f32 * 0.11) * 3.0)
            .collect();
        let f32t = DenseTensor::from_f32(rows, cols, DenseDtype::F32, &vals);
        let q8 = RowQuantTensor::quantize(rows, cols, RowBits::I8, &vals);
        let q4 = RowQuantTensor::quantize(rows, cols, RowBits::Q4, &vals);
        let tables = [
            Embedding::Dense(f32t.as_view()),
            Embedding::RowQuant(q8.as_view()),
            Embedding::RowQuant(q4.as_view()),
        ];
        for e in &tables {
            let mut want = vec![0.0f32; rows];
            table_matvec_with(Kernel::Portable, e, &x, &mut want);
            for k in kernels::available() {
                let mut got = vec![f32::NAN; rows];
                table_matvec_with(k, e, &x, &mut got);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{k}");
            }
        }
    }

    #[test]
    fn f16_conversion_matches_half_for_every_value() {
        for bits in 0..=u16::MAX {
            let want = half::f16::from_bits(bits).to_f32();
            let got = f16_to_f32(bits);
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{bits:#06x}");
            }
        }
    }

    /// The unrolled row dots against `row_into` + a plain f64 dot, for
    /// every table type and lengths with and without tails.
    #[cfg(feature = "alloc")]
    #[test]
    fn table_row_dots_match_dequantized_rows() {
        use crate::layers::RowQuantTensor;
        use std::vec::Vec;
        for cols in [1usize, 15, 16, 17, 33, 64, 77] {
            let rows = 3;
            let vals: Vec<f32> = (0..rows * cols)
                .map(|k| libm::sinf(k as f32 * 0.37) * 2.0)
                .collect();
            let x: Vec<f32> = (0..cols).map(|k| libm::cosf(k as f32 * 0.11)).collect();
            let f16t = DenseTensor::from_f32(rows, cols, DenseDtype::F16, &vals);
            let f32t = DenseTensor::from_f32(rows, cols, DenseDtype::F32, &vals);
            let q8 = RowQuantTensor::quantize(rows, cols, RowBits::I8, &vals);
            let q4 = RowQuantTensor::quantize(rows, cols, RowBits::Q4, &vals);
            let all = [
                Embedding::Dense(f16t.as_view()),
                Embedding::Dense(f32t.as_view()),
                Embedding::RowQuant(q8.as_view()),
                Embedding::RowQuant(q4.as_view()),
            ];
            for e in all {
                let mut row = std::vec![0.0f32; cols];
                for i in 0..rows {
                    e.row_into(i, &mut row);
                    let want: f64 = row
                        .iter()
                        .zip(&x)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum();
                    let got = table_row_dot(&e, i, &x);
                    assert!(
                        (f64::from(got) - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{cols}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
