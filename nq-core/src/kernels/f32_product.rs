//! The exact-activation sign product: `S · z` on f32 activations, no int8
//! quantization.
//!
//! Why it exists: the int8 kernels round every activation to 1/127 of the
//! token's largest one, which is fast but not the math of nq-host's f32
//! reference. This path computes the same sums as the reference up to f32
//! rounding and summation order, so the runtime can be checked against the
//! reference logit for logit and token for token (`ActPrecision::F32`).
//!
//! How: the same nibble lookups as the portable int8 kernel, with f32
//! tables (on x86_64 eight or sixteen rows per `vpermps`, on aarch64 four
//! rows per 64-byte `tbl`). For each group of 4 input columns a table holds
//! the 16 signed sums `±z0 ±z1 ±z2 ±z3` (built as `(±z0 ±z1) + (±z2 ±z3)`:
//! two roundings per entry, exact negation symmetry). A row's sign nibble
//! indexes it; the 16 rows of a tile are summed side by side (16
//! independent chains, one per row, low and high nibbles in separate
//! chains). Tables are built per token (`4 · cols_p` floats, reused by the
//! next token), so the scratch does not grow with the batch.
//!
//! Error (one product over `n` inputs, per output): each entry carries 2
//! roundings, each chain sums `cols_p / 8` entries, plus the final add:
//! `|y − S·z| ≤ (cols_p/8 + 3) · ε · Σ|z_j|` to first order, with
//! `cols_p ≤ n + 31`; [`error_bound_f32`] returns `(n/8 + 8) · ε · Σ|z_j|`.

use super::Kernel;
use crate::sign::{self, TILE_ROWS};
use crate::SignMatrix;

/// f32 slots of one token's tables for `cols_p` padded columns: 16 entries
/// per 4 columns.
const fn table_len(cols_p: usize) -> usize {
    cols_p * 4
}

/// f32 words of scratch [`sign_product_f32`] needs for a matrix of `cols`
/// columns, whatever the rows and the batch.
pub(crate) const fn sign_product_f32_scratch_len(cols: usize) -> usize {
    table_len(sign::col_bytes(cols) * 8)
}

/// Worst-case error of one f32 sign product over `n` inputs whose absolute
/// values sum to `sum_abs_z` (first order in `ε = f32::EPSILON`).
pub fn error_bound_f32(n: usize, sum_abs_z: f32) -> f32 {
    (n / 8 + 8) as f32 * f32::EPSILON * sum_abs_z
}

/// The 16 signed sums `Σ_k (bit k of e ? −z_k : z_k)` of one group, the
/// same convention as the int8 `group_table` (a set bit means −1).
#[inline]
fn group_table(z: [f32; 4]) -> [f32; 16] {
    let [a, b, c, d] = z;
    let lo = [a + b, b - a, a - b, -(a + b)];
    let hi = [c + d, d - c, c - d, -(c + d)];
    core::array::from_fn(|e| lo[e & 3] + hi[e >> 2])
}

/// One token's tables: `z` (the real columns) padded with zeros to
/// `out.len() / 4` columns.
fn build_tables(z: &[f32], out: &mut [f32]) {
    for (g, dst) in out.chunks_exact_mut(16).enumerate() {
        let at = |k: usize| z.get(4 * g + k).copied().unwrap_or(0.0);
        dst.copy_from_slice(&group_table([at(0), at(1), at(2), at(3)]));
    }
}

/// Every whole tile of `tiles` (`col_bytes` per row) against one token's
/// tables, 16 outputs per tile into `out`, with `kernel`'s lookups (all
/// give the same bits).
fn tiles_f32(kernel: Kernel, tiles: &[u8], col_bytes: usize, tab: &[f32], out: &mut [f32]) {
    if super::simd_tiles_f32(kernel, tiles, col_bytes, tab, out) {
        return;
    }
    let tile_len = TILE_ROWS * col_bytes;
    for (tile, o) in tiles
        .chunks_exact(tile_len)
        .zip(out.chunks_exact_mut(TILE_ROWS))
    {
        o.copy_from_slice(&tile_dot(tile, tab));
    }
}

/// The 16 rows of one tile against one token's tables.
#[inline]
fn tile_dot(tile: &[u8], tab: &[f32]) -> [f32; TILE_ROWS] {
    let mut lo = [0.0f32; TILE_ROWS];
    let mut hi = [0.0f32; TILE_ROWS];
    for (col, t) in tile.chunks_exact(TILE_ROWS).zip(tab.chunks_exact(32)) {
        let (t_lo, t_hi) = t.split_at(16);
        for i in 0..TILE_ROWS {
            // Low nibble: group 2c (entries 0..16); high nibble: group 2c + 1.
            lo[i] += t_lo[usize::from(col[i] & 0x0f)];
            hi[i] += t_hi[usize::from(col[i] >> 4)];
        }
    }
    core::array::from_fn(|i| lo[i] + hi[i])
}

/// `out[t·rows + i] = Σ_j S(i, j) · z[t·cols + j]` in f32 for `t < batch`,
/// `i < rows`, with `kernel`'s table lookups: AVX2 (`vpermps`, 8 rows at
/// once) and AVX-512 (16) on x86_64, NEON (`tbl`, 4 rows) on aarch64, the
/// portable loop elsewhere. Every kernel adds each row's lookups in the
/// same order, so the results are the same bits.
///
/// # Panics
/// If `kernel` is unavailable, `z` is shorter than `batch · cols`, `out`
/// shorter than `batch · rows` or `scratch` shorter than
/// [`sign_product_f32_scratch_len`].
pub(crate) fn sign_product_f32(
    kernel: Kernel,
    signs: &SignMatrix<&[u8]>,
    z: &[f32],
    batch: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    assert!(kernel.is_available(), "kernel {kernel} is not available");
    let (rows, cols) = (signs.rows(), signs.cols());
    let cb = signs.col_bytes();
    let tab = &mut scratch[..table_len(cb * 8)];
    assert!(z.len() >= batch * cols, "input too short");
    assert!(out.len() >= batch * rows, "output too short");
    let whole = rows / TILE_ROWS;
    let (head, tail) = signs.as_bytes().split_at(whole * TILE_ROWS * cb);
    for t in 0..batch {
        build_tables(&z[t * cols..(t + 1) * cols], tab);
        let out_t = &mut out[t * rows..(t + 1) * rows];
        let (o_head, o_tail) = out_t.split_at_mut(whole * TILE_ROWS);
        tiles_f32(kernel, head, cb, tab, o_head);
        if !o_tail.is_empty() {
            let mut last = [0.0f32; TILE_ROWS];
            tiles_f32(kernel, tail, cb, tab, &mut last);
            o_tail.copy_from_slice(&last[..o_tail.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_table_is_every_signed_sum() {
        let z = [0.5f32, -1.25, 3.0, 0.125];
        let t = group_table(z);
        for (e, &te) in t.iter().enumerate() {
            let want: f32 = (0..4)
                .map(|k| if (e >> k) & 1 == 1 { -z[k] } else { z[k] })
                .sum();
            assert_eq!(te, want, "entry {e}");
            assert_eq!(t[15 - e], -te, "symmetry {e}");
        }
    }
}
