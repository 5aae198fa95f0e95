//! Armv8.2 dotprod: `SDOT` over sign bits expanded to 0/−1 bytes.
//!
//! Per column byte of a tile, four `tbl`s replicate each of the 16 rows'
//! bytes into an int32 lane (4 rows per register); `cmtst` against bytes
//! `1, 2, 4, 8` (`16 … 128`) gives `−β` (0 or −1) for the low (high) 4
//! columns. Each token then costs one `SDOT` per 4 rows × 4 columns; the
//! expansion is shared by up to 4 tokens. `A = Σq + 2·((−β)·q)`, exactly.
//! The activations come chunk-interleaved, as for the AVX-512 kernel.

use core::arch::aarch64::*;

use crate::kernels::SignOperand;
use crate::sign::TILE_ROWS;

/// Whether this CPU runs NEON with dotprod.
pub(crate) fn is_available() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
            && std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(target_feature = "neon", target_feature = "dotprod"))
    }
}

/// Dot-product product, see [`super::super::int_product`].
///
/// # Safety
/// The CPU must support NEON and dotprod; `q` must hold
/// `batch · s.col_bytes · 8` activations, chunk-interleaved for this
/// kernel's chunk size (see [`super::super::interleave_tokens`]), `qsum`
/// `batch` sums and `acc` `batch · s.tiles · 16` entries.
#[target_feature(enable = "neon,dotprod")]
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
            // checked; the caller vouched for NEON and dotprod.
            unsafe {
                match left {
                    4.. => tile_dot::<4>(tile, q0, sums, out, rows_p),
                    2.. => tile_dot::<2>(tile, q0, sums, out, rows_p),
                    _ => tile_dot::<1>(tile, q0, sums, out, rows_p),
                }
            }
        },
    );
}

/// One tile against `N` tokens; returns `N`.
///
/// # Safety
/// NEON and dotprod; `q` readable for `N` tokens of `cols_p = tile.len() / 2` bytes
/// each, in the chunk-interleaved layout (column byte `c` of token `j` at
/// `q + 8·(c·N + j)`); `sums.len() ≥ N`; `out + j·rows_p + i`
/// writable for `j < N`, `i < 16`.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn tile_dot<const N: usize>(
    tile: &[u8],
    q: *const i8,
    sums: &[i32],
    out: *mut i32,
    rows_p: usize,
) -> usize {
    // SAFETY: each index row is 16 bytes.
    let idx = super::ROWS_BY_4.map(|r| unsafe { vld1q_u8(r.as_ptr()) });
    let m_lo = vreinterpretq_u8_u32(vdupq_n_u32(0x0804_0201));
    let m_hi = vreinterpretq_u8_u32(vdupq_n_u32(0x8040_2010));
    let mut acc = [[vdupq_n_s32(0); 4]; N];
    for (c, rows) in tile.chunks_exact(TILE_ROWS).enumerate() {
        // SAFETY: `rows` is 16 bytes.
        let x = unsafe { vld1q_u8(rows.as_ptr()) };
        let mut b_lo = [vdupq_n_s8(0); 4];
        let mut b_hi = [vdupq_n_s8(0); 4];
        for k in 0..4 {
            let xr = vqtbl1q_u8(x, idx[k]);
            b_lo[k] = vreinterpretq_s8_u8(vtstq_u8(xr, m_lo));
            b_hi[k] = vreinterpretq_s8_u8(vtstq_u8(xr, m_hi));
        }
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: c < tile.len() / 16 = cols_p / 8 and j < N: the 8 bytes at 8·(c·N + j)
            // are inside the chunk's N · cols_p bytes.
            let (ql, qh) = unsafe {
                let p = q.add(8 * (c * N + j));
                (
                    p.cast::<i32>().read_unaligned(),
                    p.add(4).cast::<i32>().read_unaligned(),
                )
            };
            let ql = vreinterpretq_s8_s32(vdupq_n_s32(ql));
            let qh = vreinterpretq_s8_s32(vdupq_n_s32(qh));
            for k in 0..4 {
                a[k] = sdot(a[k], b_lo[k], ql);
                a[k] = sdot(a[k], b_hi[k], qh);
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        let s = vdupq_n_s32(sums[j]);
        for (k, ak) in a.iter().enumerate() {
            let r = vaddq_s32(s, vshlq_n_s32::<1>(*ak));
            // SAFETY: the caller vouched for 16 writable i32 at out + j·rows_p.
            unsafe { vst1q_s32(out.add(j * rows_p + 4 * k), r) };
        }
    }
    N
}

/// `acc + Σ_{4 bytes} a · b` per int32 lane: one `SDOT` (the intrinsic is
/// not stable yet, so it is written out).
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: SDOT reads `a` and `b` and updates `acc`, all registers; it
    // touches no memory and the function requires dotprod.
    unsafe {
        core::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}
