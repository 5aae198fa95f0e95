//! AVX-512 VNNI: `vpdpbusd` over sign bits expanded to 0/1 bytes.
//!
//! Per column byte of a tile, the 16 rows' bytes are broadcast to the four
//! 128-bit lanes and `vpshufb`-replicated so int32 lane `i` holds row `i`'s
//! byte four times; masking with bytes `1, 2, 4, 8` (`16 … 128`) and a
//! `min(·, 1)` gives `β ∈ {0, 1}` for the low (high) 4 columns. Each token
//! then costs one broadcast and one `vpdpbusd` per 4 columns × 16 rows; the
//! expansion is shared by up to 16 tokens. `A = Σq − 2·(β·q)`, exactly.
//! The activations come chunk-interleaved (each column byte's 8 bytes of
//! the chunk's tokens side by side), so every broadcast is a load at a
//! constant offset from one moving pointer; that alone made the batch-16
//! layer about 25 % faster than one pointer per token.

use core::arch::x86_64::*;

use crate::kernels::SignOperand;
use crate::sign::TILE_ROWS;

/// Whether this CPU runs this kernel (it also uses AVX2 for batch 1).
pub(crate) fn is_available() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(
            target_feature = "avx2",
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vl",
            target_feature = "avx512vnni"
        ))
    }
}

/// Dot-product product, see [`super::super::int_product`].
///
/// # Safety
/// The CPU must support this kernel ([`is_available`]); `q` must hold
/// `batch · s.col_bytes · 8` activations, chunk-interleaved for this
/// kernel's chunk size (see [`super::super::interleave_tokens`]), `qsum`
/// `batch` sums and `acc` `batch · s.tiles · 16` entries.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn dot_product(
    s: &SignOperand<'_>,
    q: &[i8],
    qsum: &[i32],
    batch: usize,
    acc: &mut [i32],
) {
    let cols_p = s.col_bytes * 8;
    let rows_p = s.tiles * TILE_ROWS;
    assert!(q.len() >= batch * cols_p && qsum.len() >= batch && acc.len() >= batch * rows_p);
    for tile in 0..s.tiles {
        let bytes = s.tile(tile);
        let mut t0 = 0;
        while t0 < batch {
            let left = batch - t0;
            let q0 = q[t0 * cols_p..].as_ptr();
            let out = acc[t0 * rows_p + tile * TILE_ROWS..].as_mut_ptr();
            let sums = &qsum[t0..];
            // SAFETY: the chunk's tokens t0..t0+N are < batch, so their
            // activations, sums and output rows are inside the slices
            // checked above; AVX-512 VNNI is enabled here.
            t0 += unsafe {
                match left {
                    16.. => tile_dot::<16>(bytes, q0, sums, out, rows_p),
                    8.. => tile_dot::<8>(bytes, q0, sums, out, rows_p),
                    4.. => tile_dot::<4>(bytes, q0, sums, out, rows_p),
                    2.. => tile_dot::<2>(bytes, q0, sums, out, rows_p),
                    _ => tile_dot::<1>(bytes, q0, sums, out, rows_p),
                }
            };
        }
    }
}

/// One tile against `N` tokens; returns `N`.
///
/// # Safety
/// AVX-512 VNNI; `q` readable for `N` tokens of `cols_p = tile.len() / 2` bytes
/// each, in the chunk-interleaved layout (column byte `c` of token `j` at
/// `q + 8·(c·N + j)`); `sums.len() ≥ N`; `out + j·rows_p + i`
/// writable for `j < N`, `i < 16`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_dot<const N: usize>(
    tile: &[u8],
    q: *const i8,
    sums: &[i32],
    out: *mut i32,
    rows_p: usize,
) -> usize {
    // Within each 128-bit lane L: bytes 4L, 4L, 4L, 4L, 4L+1, … (row 4L + d
    // into int32 lane d).
    let idx = _mm512_set_epi32(
        0x0f0f_0f0f,
        0x0e0e_0e0e,
        0x0d0d_0d0d,
        0x0c0c_0c0c,
        0x0b0b_0b0b,
        0x0a0a_0a0a,
        0x0909_0909,
        0x0808_0808,
        0x0707_0707,
        0x0606_0606,
        0x0505_0505,
        0x0404_0404,
        0x0303_0303,
        0x0202_0202,
        0x0101_0101,
        0x0000_0000,
    );
    let m_lo = _mm512_set1_epi32(0x0804_0201);
    let m_hi = _mm512_set1_epi32(0x8040_2010_u32 as i32);
    let one = _mm512_set1_epi8(1);
    let mut acc = [_mm512_setzero_si512(); N];
    for (c, rows) in tile.chunks_exact(TILE_ROWS).enumerate() {
        // SAFETY: `rows` is 16 bytes.
        let x = unsafe { _mm_loadu_si128(rows.as_ptr().cast()) };
        let x = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(x), idx);
        let b_lo = _mm512_min_epu8(_mm512_and_si512(x, m_lo), one);
        let b_hi = _mm512_min_epu8(_mm512_and_si512(x, m_hi), one);
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
            *a = _mm512_dpbusd_epi32(*a, b_lo, _mm512_set1_epi32(ql));
            *a = _mm512_dpbusd_epi32(*a, b_hi, _mm512_set1_epi32(qh));
        }
    }
    for (j, a) in acc.iter().enumerate() {
        let r = _mm512_sub_epi32(_mm512_set1_epi32(sums[j]), _mm512_slli_epi32::<1>(*a));
        // SAFETY: the caller vouched for 16 writable i32 at out + j·rows_p.
        unsafe { _mm512_storeu_si512(out.add(j * rows_p).cast(), r) };
    }
    N
}
