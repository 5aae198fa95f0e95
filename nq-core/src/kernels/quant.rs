//! Int8 activations and the lookup tables built from them; the error budget.
//!
//! Shared scalar code, used by every kernel, so that all kernels see the same
//! integers and return bit-identical results. ISA-free.

/// Largest quantized magnitude.
pub const Q_MAX: f32 = 127.0;

/// Worst-case error of one int8-activation sign product over `n` inputs
/// whose largest magnitude is `max_abs_z`: `n · δ / 2` with `δ =
/// max_abs_z / 127`. Excludes f32 rounding (a few ulps, relative).
pub fn error_bound_binary(n: usize, max_abs_z: f32) -> f32 {
    n as f32 * (max_abs_z / Q_MAX) / 2.0
}

/// Worst-case error of a factorized product `U · (V · z)` (before the output
/// scale) with int8 activations at both stages: `r · (e1 + δ2/2)`, where
/// `e1 = n · δ1 / 2` is the first stage's error, `δ1 = max_abs_z / 127` and
/// `δ2 ≤ (max_abs_t + e1) / 127` with `max_abs_t` the largest exact
/// intermediate `|V · z|`. Excludes f32 rounding.
pub fn error_bound_factorized(n: usize, r: usize, max_abs_z: f32, max_abs_t: f32) -> f32 {
    let e1 = error_bound_binary(n, max_abs_z);
    r as f32 * (e1 + (max_abs_t + e1) / Q_MAX / 2.0)
}

/// Quantizes `z` into `q[..z.len()]` (and zeros the rest of `q`, the
/// padding columns): `δ = max|z| / 127`, `q = round(z / δ)` with ties to
/// even. Returns `(δ, Σ q)`; `δ = 0` when every value is zero, NaN when a
/// value is not finite (the outputs are then NaN too).
#[inline(always)]
pub(crate) fn quantize(z: &[f32], q: &mut [i8]) -> (f32, i32) {
    // max |z| on the bit patterns: for non-NaN floats the order of
    // `bits & 0x7fff_ffff` is the order of |z|, and integer max vectorizes.
    let amax_bits = z.iter().fold(0u32, |a, v| a.max(v.to_bits() & 0x7fff_ffff));
    let amax = f32::from_bits(amax_bits);
    let (head, tail) = q.split_at_mut(z.len());
    tail.fill(0);
    if amax_bits == 0 || amax_bits >= 0x7f80_0000 {
        head.fill(0);
        return (if amax_bits == 0 { 0.0 } else { f32::NAN }, 0);
    }
    let inv = Q_MAX / amax;
    let mut sum = 0i32;
    for (qj, &v) in head.iter_mut().zip(z) {
        // |v · inv| ≤ 127 (+ an ulp): adding 1.5 · 2^23 rounds to an integer
        // (ties to even) held in the low mantissa bits.
        let r = ((v * inv + ROUND_MAGIC).to_bits() as i32 - ROUND_MAGIC_BITS).clamp(-127, 127);
        *qj = r as i8;
        sum += r;
    }
    (amax / Q_MAX, sum)
}

/// 1.5 · 2^23: adding it rounds any |v| < 2^22 to an integer.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// Its bit pattern.
const ROUND_MAGIC_BITS: i32 = 0x4b40_0000;

/// How a kernel wants its tables laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TableLayout {
    /// `i16` entries, 16 per group of 4 columns, group after group.
    Wide,
    /// The SIMD layout, per 16-column block `k` (groups `4k..4k+4`; group
    /// `4k+1` is the high nibble of column byte `2k`, `4k+2` the low nibble
    /// of byte `2k+1`), 128 bytes: low bytes of groups `4k` and `4k+2`, high
    /// bytes of `4k` and `4k+2`, low bytes of `4k+1` and `4k+3`, high bytes
    /// of `4k+1` and `4k+3` — 16 bytes each. So one 32-byte load gives a
    /// `vpshufb` table for column bytes `2k` (low lane) and `2k+1` (high
    /// lane).
    SplitBytes,
}

/// Table size in `i16` slots for `cols_p` (a multiple of 32) columns: 16
/// entries per 4 columns, in either layout.
pub(crate) const fn table_len(cols_p: usize) -> usize {
    cols_p * 4
}

/// The 16 signed sums `Σ_k (bit k of b ? −q_k : q_k)` of one group.
#[inline]
pub(crate) fn group_table(q: [i8; 4]) -> [i16; 16] {
    let [a, b, c, d] = q.map(i16::from);
    let mut t = [0i16; 16];
    t[0] = a + b + c + d;
    t[1] = t[0] - 2 * a;
    t[2] = t[0] - 2 * b;
    t[3] = t[1] - 2 * b;
    t[4] = t[0] - 2 * c;
    t[5] = t[1] - 2 * c;
    t[6] = t[2] - 2 * c;
    t[7] = t[3] - 2 * c;
    for i in 0..8 {
        t[15 - i] = -t[i];
    }
    t
}

/// Builds the tables of one token (`q.len()` = padded columns) into
/// `out[..table_len(q.len())]`.
pub(crate) fn build_tables(layout: TableLayout, q: &[i8], out: &mut [i16]) {
    let out = &mut out[..table_len(q.len())];
    match layout {
        TableLayout::Wide => {
            for (g, dst) in q.chunks_exact(4).zip(out.chunks_exact_mut(16)) {
                dst.copy_from_slice(&group_table([g[0], g[1], g[2], g[3]]));
            }
        }
        TableLayout::SplitBytes => {
            let out: &mut [u8] = bytemuck::cast_slice_mut(out);
            for (block, dst) in q.chunks_exact(16).zip(out.chunks_exact_mut(128)) {
                for (k, g) in block.chunks_exact(4).enumerate() {
                    let t = group_table([g[0], g[1], g[2], g[3]]);
                    // Group k of the block: nibble k % 2 of column byte k / 2.
                    let lane = 16 * (k / 2);
                    let base = 64 * (k % 2) + lane;
                    for (e, v) in t.iter().enumerate() {
                        let [lo, hi] = v.to_le_bytes();
                        dst[base + e] = lo;
                        dst[base + 32 + e] = hi;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_table_is_every_signed_sum() {
        let q = [3i8, -7, 127, -127];
        let t = group_table(q);
        for (b, &tb) in t.iter().enumerate() {
            let want: i16 = (0..4)
                .map(|k| {
                    let s = if (b >> k) & 1 == 1 { -1 } else { 1 };
                    s * i16::from(q[k])
                })
                .sum();
            assert_eq!(tb, want, "entry {b}");
        }
    }

    #[test]
    fn quantize_rounds_to_the_absmax_grid() {
        // 0.5 · 127 = 63.5 rounds to even (64); 0.25 · 127 = 31.75 → 32.
        let v = [1.0f32, -0.5, 0.25, 0.0, -1.0, 2.5 / 127.0];
        let mut q = [9i8; 32];
        let (delta, sum) = quantize(&v, &mut q);
        assert_eq!(delta, 1.0 / 127.0);
        assert_eq!(&q[..6], &[127, -64, 32, 0, -127, 2]);
        assert!(q[6..].iter().all(|&x| x == 0));
        assert_eq!(sum, 127 - 64 + 32 - 127 + 2);
        let (delta, sum) = quantize(&[0.0, -0.0, 0.0], &mut q);
        assert_eq!((delta, sum), (0.0, 0));
        assert!(q.iter().all(|&x| x == 0));
        let (delta, _) = quantize(&[1.0, f32::INFINITY], &mut q);
        assert!(delta.is_nan());
    }

    #[test]
    fn split_layout_places_groups_where_the_simd_kernels_look() {
        let q: [i8; 32] = core::array::from_fn(|j| (j as i8) * 3 - 40);
        let mut out = [0i16; table_len(32)];
        build_tables(TableLayout::SplitBytes, &q, &mut out);
        let bytes: &[u8] = bytemuck::cast_slice(&out);
        for g in 0..8 {
            let t = group_table([q[4 * g], q[4 * g + 1], q[4 * g + 2], q[4 * g + 3]]);
            let (block, k) = (g / 4, g % 4);
            let base = 128 * block + 64 * (k % 2) + 16 * (k / 2);
            for (e, &v) in t.iter().enumerate() {
                let got = i16::from_le_bytes([bytes[base + e], bytes[base + 32 + e]]);
                assert_eq!(got, v, "group {g} entry {e}");
            }
        }
    }
}
