//! Armv8.6 I8MM: `SMMLA` over sign bits expanded to 0/−1 bytes.
//!
//! `SMMLA` multiplies a 2×8 int8 matrix by an 8×2 one into a 2×2 int32
//! accumulator: 32 multiply-adds per instruction, against `SDOT`'s 16. The
//! first operand is two rows' sign bytes of one column byte, expanded to
//! `−β` (one `tbl` puts row `2p`'s byte in bytes 0–7 and row `2p + 1`'s in
//! bytes 8–15, one `cmtst` against `1, 2, 4, …, 128` twice); the second is
//! the same column byte of two tokens, which the chunk-interleaved
//! activations already hold side by side (one 16-byte load). A tile of 16
//! rows against 4 tokens keeps 16 accumulators (8 row pairs × 2 token
//! pairs) and costs, per column byte, 16 `SMMLA`, 16 expansion instructions
//! and the loads: 40 instructions per 512 multiply-adds in the compiled
//! loop, where the `SDOT` path ([`super::dotprod`]) takes 70
//! (docs/BENCHMARKS.md; not timed, no I8MM hardware here). `A = Σq + 2·((−β)·q)`,
//! exactly; the 2×2 blocks are unzipped into rows per token at the end of
//! the tile.
//!
//! Single tokens (the last of an odd batch) go through the `SDOT` tile:
//! every I8MM CPU has dotprod, and this kernel requires both.

use core::arch::aarch64::*;

use super::dotprod;
use crate::kernels::SignOperand;
use crate::sign::TILE_ROWS;

/// Whether this CPU runs NEON with dotprod and I8MM.
pub(crate) fn is_available() -> bool {
    #[cfg(feature = "std")]
    {
        dotprod::is_available() && std::arch::is_aarch64_feature_detected!("i8mm")
    }
    #[cfg(not(feature = "std"))]
    {
        dotprod::is_available() && cfg!(target_feature = "i8mm")
    }
}

/// Matrix-multiply product, see [`super::super::int_product`].
///
/// # Safety
/// The CPU must support NEON, dotprod and I8MM; `q` must hold
/// `batch · s.col_bytes · 8` activations, chunk-interleaved for this
/// kernel's chunk size of 4 (see [`super::super::interleave_tokens`]),
/// `qsum` `batch` sums and `acc` `batch · s.tiles · 16` entries.
#[target_feature(enable = "neon,dotprod,i8mm")]
pub(crate) unsafe fn dot_product(
    s: &SignOperand<'_>,
    q: &[i8],
    qsum: &[i32],
    batch: usize,
    acc: &mut [i32],
) {
    super::for_each_chunk(
        s,
        q,
        qsum,
        batch,
        acc,
        |tile, q0, sums, out, rows_p, left| {
            // SAFETY: the chunk's tokens are < batch, so their activations,
            // sums and output rows are inside the buffers `for_each_chunk`
            // checked; the caller vouched for NEON, dotprod and I8MM.
            unsafe {
                match left {
                    4.. => tile_mmla::<4, 2>(tile, q0, sums, out, rows_p),
                    2.. => tile_mmla::<2, 1>(tile, q0, sums, out, rows_p),
                    _ => dotprod::tile_dot::<1>(tile, q0, sums, out, rows_p),
                }
            }
        },
    );
}

/// Column bit of each byte of an expanded row pair.
const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];

/// One tile against `N = 2·P` tokens; returns `N`.
///
/// # Safety
/// NEON, dotprod and I8MM; `q` readable for `N` tokens of `cols_p =
/// tile.len() / 2` bytes each, in the chunk-interleaved layout (column byte
/// `c` of token `j` at `q + 8·(c·N + j)`); `sums.len() ≥ N`; `out +
/// j·rows_p + i` writable for `j < N`, `i < 16`.
#[target_feature(enable = "neon,dotprod,i8mm")]
unsafe fn tile_mmla<const N: usize, const P: usize>(
    tile: &[u8],
    q: *const i8,
    sums: &[i32],
    out: *mut i32,
    rows_p: usize,
) -> usize {
    debug_assert_eq!(N, 2 * P);
    // SAFETY: each index row and BITS are 16 bytes.
    let idx = super::ROWS_BY_2.map(|r| unsafe { vld1q_u8(r.as_ptr()) });
    let bits = unsafe { vld1q_u8(BITS.as_ptr()) };
    // acc[t][p]: rows 2p, 2p + 1 × tokens 2t, 2t + 1, as a 2×2 block.
    let mut acc = [[vdupq_n_s32(0); 8]; P];
    for (c, rows) in tile.chunks_exact(TILE_ROWS).enumerate() {
        // SAFETY: `rows` is 16 bytes; c < cols_p / 8 and 2t + 1 < N: the 16
        // bytes at 8·(c·N + 2t) (tokens 2t and 2t + 1) are inside the
        // chunk's N · cols_p bytes.
        let x = unsafe { vld1q_u8(rows.as_ptr()) };
        let qv: [int8x16_t; P] =
            core::array::from_fn(|t| unsafe { vld1q_s8(q.add(8 * (c * N + 2 * t))) });
        for (p, ix) in idx.iter().enumerate() {
            let b = vreinterpretq_s8_u8(vtstq_u8(vqtbl1q_u8(x, *ix), bits));
            for (a, qt) in acc.iter_mut().zip(&qv) {
                a[p] = smmla(a[p], b, *qt);
            }
        }
    }
    for (t, a) in acc.iter().enumerate() {
        let (s0, s1) = (vdupq_n_s32(sums[2 * t]), vdupq_n_s32(sums[2 * t + 1]));
        for k in 0..4 {
            // Rows 4k .. 4k + 4 of token 2t (even lanes of the two blocks)
            // and of token 2t + 1 (odd lanes).
            let even = vuzp1q_s32(a[2 * k], a[2 * k + 1]);
            let odd = vuzp2q_s32(a[2 * k], a[2 * k + 1]);
            // SAFETY: the caller vouched for 16 writable i32 at out + j·rows_p
            // for j = 2t, 2t + 1 < N.
            unsafe {
                vst1q_s32(
                    out.add(2 * t * rows_p + 4 * k),
                    vaddq_s32(s0, vshlq_n_s32::<1>(even)),
                );
                vst1q_s32(
                    out.add((2 * t + 1) * rows_p + 4 * k),
                    vaddq_s32(s1, vshlq_n_s32::<1>(odd)),
                );
            }
        }
    }
    N
}

/// `acc + a · bᵀ` for the 2×8 int8 matrices `a` and `b` (row-major, one row
/// per 8 bytes) into the 2×2 int32 block `acc`: one `SMMLA` (the intrinsic
/// is not stable yet, so it is written out).
#[inline]
#[target_feature(enable = "neon,i8mm")]
fn smmla(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: SMMLA reads `a` and `b` and updates `acc`, all registers; it
    // touches no memory and the function requires I8MM.
    unsafe {
        core::arch::asm!(
            "smmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}
