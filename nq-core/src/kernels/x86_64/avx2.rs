//! AVX2: `vpshufb` lookups over 16 rows × 16 columns per 32-byte load.
//!
//! One 32-byte load of a tile holds 16 rows of column bytes `2k` (low lane)
//! and `2k+1` (high lane). Its low nibbles index the tables of groups `4k`
//! and `4k+2`, its high nibbles those of `4k+1` and `4k+3`. Tables are int16
//! split into a low-byte and a high-byte `vpshufb` table
//! ([`TableLayout::SplitBytes`]); `vpunpck{l,h}bw` re-joins the bytes into
//! int16 partial sums for rows 0–7 and 8–15. Int16 lanes receive at most
//! `2 · 508` per load, so they are widened into int32 every [`FLUSH`] loads,
//! before they could overflow.
//!
//! [`TableLayout::SplitBytes`]: crate::kernels::quant::TableLayout::SplitBytes

use core::arch::x86_64::*;

use crate::kernels::quant::table_len;
use crate::kernels::SignOperand;
use crate::sign::TILE_ROWS;

/// Loads between int16 → int32 widenings: `32 · 2 · 508 = 32512 ≤ i16::MAX`.
pub(super) const FLUSH: usize = 32;

/// Whether this CPU runs AVX2.
pub(crate) fn is_available() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "avx2")
    }
}

/// Runs `f` compiled with AVX2 enabled (see [`super::super::vectorized`]).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Table-lookup product, see [`super::super::int_product`].
///
/// # Safety
/// The CPU must support AVX2; `tables` must hold `batch` split-byte tables
/// for `s.col_bytes · 8` columns and `acc` at least `batch · s.tiles · 16`
/// entries.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn lut_product(
    s: &SignOperand<'_>,
    tables: &[i16],
    batch: usize,
    acc: &mut [i32],
) {
    let tlen = table_len(s.col_bytes * 8);
    let rows_p = s.tiles * TILE_ROWS;
    assert!(tables.len() >= batch * tlen && acc.len() >= batch * rows_p);
    for tile in 0..s.tiles {
        let bytes = s.tile(tile);
        for t in 0..batch {
            let tab = &tables[t * tlen..(t + 1) * tlen];
            let out = &mut acc[t * rows_p + tile * TILE_ROWS..][..TILE_ROWS];
            // SAFETY: AVX2 is enabled here; `bytes` holds 16 · col_bytes
            // bytes and `tab` 8 · col_bytes · 8 bytes, what `tile_lut` reads.
            unsafe { tile_lut(bytes.as_ptr(), tab.as_ptr().cast(), s.col_bytes, out) };
        }
    }
}

/// One tile (16 rows) against one token's tables.
///
/// # Safety
/// AVX2; `signs` readable for `16 · col_bytes` bytes, `tab` for
/// `64 · col_bytes` bytes; `col_bytes` even; `out.len() ≥ 16`.
#[target_feature(enable = "avx2")]
unsafe fn tile_lut(signs: *const u8, tab: *const u8, col_bytes: usize, out: &mut [i32]) {
    assert!(out.len() >= TILE_ROWS);
    let mask = _mm256_set1_epi8(0x0f);
    let mut rows0 = _mm256_setzero_si256();
    let mut rows1 = _mm256_setzero_si256();
    let blocks = col_bytes / 2;
    let mut k = 0;
    while k < blocks {
        let end = blocks.min(k + FLUSH);
        let mut a0 = _mm256_setzero_si256();
        let mut a1 = _mm256_setzero_si256();
        for kk in k..end {
            // Ask for the sign bytes 2 KiB ahead: when the weights stream
            // from DRAM (a real decode step) the loads are otherwise exposed.
            // A prefetch never faults, and `wrapping_add` keeps the address
            // computation defined past the tile's end.
            _mm_prefetch::<_MM_HINT_T0>(signs.wrapping_add(kk * 32 + 2048).cast());
            // SAFETY: kk < col_bytes / 2, so the 32 bytes at 32·kk and the
            // 128 bytes at 128·kk are inside the ranges the caller vouched for.
            let (x, t) = unsafe {
                (
                    _mm256_loadu_si256(signs.add(kk * 32).cast()),
                    load_quad(tab, kk),
                )
            };
            let (s0, s1) = lookup_pair(x, t, mask);
            a0 = _mm256_add_epi16(a0, s0);
            a1 = _mm256_add_epi16(a1, s1);
        }
        rows0 = _mm256_add_epi32(rows0, widen_lanes(a0));
        rows1 = _mm256_add_epi32(rows1, widen_lanes(a1));
        k = end;
    }
    // SAFETY: out holds at least 16 i32.
    unsafe {
        _mm256_storeu_si256(out.as_mut_ptr().cast(), rows0);
        _mm256_storeu_si256(out.as_mut_ptr().add(8).cast(), rows1);
    }
}

/// The four 32-byte tables of one 32-byte sign load (column bytes `2k`,
/// `2k+1`): low bytes, then high bytes, of the low-nibble groups; the same
/// of the high-nibble groups.
#[derive(Clone, Copy)]
pub(super) struct TableQuad([__m256i; 4]);

/// Loads the four tables of sign load `k` from one token's split-byte
/// tables.
///
/// # Safety
/// AVX2; `tab` readable for `128 · (k + 1)` bytes.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn load_quad(tab: *const u8, k: usize) -> TableQuad {
    // SAFETY: the caller vouched for the 128 bytes at 128·k.
    unsafe {
        let tb = tab.add(k * 128);
        TableQuad([
            _mm256_loadu_si256(tb.cast()),
            _mm256_loadu_si256(tb.add(32).cast()),
            _mm256_loadu_si256(tb.add(64).cast()),
            _mm256_loadu_si256(tb.add(96).cast()),
        ])
    }
}

/// The int16 partial sums of one 32-byte sign load `x` (16 rows × column
/// bytes `2k`, `2k+1`) against one token's tables: rows 0–7 and rows 8–15,
/// each still split by 128-bit lane (see [`widen_lanes`]).
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn lookup_pair(x: __m256i, t: TableQuad, mask: __m256i) -> (__m256i, __m256i) {
    let [t_ll, t_lh, t_hl, t_hh] = t.0;
    let lo = _mm256_and_si256(x, mask);
    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(x), mask);
    let l_lo = _mm256_shuffle_epi8(t_ll, lo);
    let l_hi = _mm256_shuffle_epi8(t_lh, lo);
    let h_lo = _mm256_shuffle_epi8(t_hl, hi);
    let h_hi = _mm256_shuffle_epi8(t_hh, hi);
    let s0 = _mm256_add_epi16(
        _mm256_unpacklo_epi8(l_lo, l_hi),
        _mm256_unpacklo_epi8(h_lo, h_hi),
    );
    let s1 = _mm256_add_epi16(
        _mm256_unpackhi_epi8(l_lo, l_hi),
        _mm256_unpackhi_epi8(h_lo, h_hi),
    );
    (s0, s1)
}

/// Sum of the two 128-bit lanes' eight int16, as eight int32.
#[target_feature(enable = "avx2")]
pub(super) fn widen_lanes(a: __m256i) -> __m256i {
    let lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a));
    let hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(a));
    _mm256_add_epi32(lo, hi)
}

/// Builds one token's split-byte tables (`q.len()` a multiple of 16),
/// byte for byte what [`quant::build_tables`] writes, 16 entries per
/// instruction: `T = Σ_k sign(q_k, S_k)` with `S_k[b] = −1` where bit `k` of
/// `b` is set, then the low and high bytes are gathered into their tables.
///
/// [`quant::build_tables`]: crate::kernels::quant::build_tables
///
/// # Safety
/// AVX2; `out.len() ≥ table_len(q.len())`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn build_tables(q: &[i8], out: &mut [i16]) {
    assert!(out.len() >= table_len(q.len()) && q.len() % 16 == 0);
    let pattern = |k: i32| {
        let s = |b: i32| if (b >> k) & 1 == 1 { -1i16 } else { 1 };
        _mm256_setr_epi16(
            s(0),
            s(1),
            s(2),
            s(3),
            s(4),
            s(5),
            s(6),
            s(7),
            s(8),
            s(9),
            s(10),
            s(11),
            s(12),
            s(13),
            s(14),
            s(15),
        )
    };
    let signs = [pattern(0), pattern(1), pattern(2), pattern(3)];
    // Per lane: the low bytes of its 8 entries, then their high bytes.
    let split = _mm256_setr_epi8(
        0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5,
        7, 9, 11, 13, 15,
    );
    let dst = out.as_mut_ptr().cast::<u8>();
    for (blk, group4) in q.chunks_exact(16).enumerate() {
        let mut g = [_mm256_setzero_si256(); 4];
        for (k, gk) in g.iter_mut().enumerate() {
            let mut t = _mm256_setzero_si256();
            for (s, &qv) in signs.iter().zip(&group4[4 * k..4 * k + 4]) {
                t = _mm256_add_epi16(t, _mm256_sign_epi16(_mm256_set1_epi16(i16::from(qv)), *s));
            }
            // Qwords 0, 2, 1, 3: low bytes of entries 0–15, then high bytes.
            *gk = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(t, split));
        }
        // SAFETY: block `blk` owns bytes 128·blk .. 128·blk + 128 of `out`,
        // inside `table_len(q.len())` i16 = 8 · q.len() bytes.
        unsafe {
            let d = dst.add(128 * blk);
            _mm256_storeu_si256(d.cast(), _mm256_permute2x128_si256::<0x20>(g[0], g[2]));
            _mm256_storeu_si256(
                d.add(32).cast(),
                _mm256_permute2x128_si256::<0x31>(g[0], g[2]),
            );
            _mm256_storeu_si256(
                d.add(64).cast(),
                _mm256_permute2x128_si256::<0x20>(g[1], g[3]),
            );
            _mm256_storeu_si256(
                d.add(96).cast(),
                _mm256_permute2x128_si256::<0x31>(g[1], g[3]),
            );
        }
    }
}

/// The f32 sign product of one token ([`crate::kernels::f32_product`]):
/// `out[16·k + i] = Σ` over tile `k`'s column bytes of row `i`'s two nibble
/// lookups in the f32 tables `tab`, for every whole tile of `tiles`
/// (`out` holds 16 per tile). Eight rows per register: `vpermps` looks up
/// entries 0–7 and 8–15 of a 16-entry table and a blend on index bit 3
/// picks one; each row keeps its own low- and high-nibble sums, added in
/// column order, so the results are the portable loop's bits.
///
/// # Safety
/// The CPU must support AVX2.
///
/// # Panics
/// If `tab` holds fewer than 32 floats per column byte or `out` fewer than
/// 16 per tile.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn sign_tiles_f32(tiles: &[u8], col_bytes: usize, tab: &[f32], out: &mut [f32]) {
    let tile_len = TILE_ROWS * col_bytes;
    assert!(tab.len() >= 32 * col_bytes && out.len() >= tiles.len() / tile_len * TILE_ROWS);
    let nibble = _mm256_set1_epi32(0x0f);
    let lookup = |t0: __m256, t1: __m256, idx: __m256i| {
        let a = _mm256_permutevar8x32_ps(t0, idx);
        let b = _mm256_permutevar8x32_ps(t1, idx);
        _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx)))
    };
    for (tile, o) in tiles
        .chunks_exact(tile_len)
        .zip(out.chunks_exact_mut(TILE_ROWS))
    {
        let mut lo = [_mm256_setzero_ps(); 2];
        let mut hi = [_mm256_setzero_ps(); 2];
        for (col, t) in tile.chunks_exact(TILE_ROWS).zip(tab.chunks_exact(32)) {
            // SAFETY: `col` is 16 bytes, `t` 32 floats.
            let (bytes, tl0, tl1, th0, th1) = unsafe {
                (
                    _mm_loadu_si128(col.as_ptr().cast()),
                    _mm256_loadu_ps(t.as_ptr()),
                    _mm256_loadu_ps(t.as_ptr().add(8)),
                    _mm256_loadu_ps(t.as_ptr().add(16)),
                    _mm256_loadu_ps(t.as_ptr().add(24)),
                )
            };
            for (h, b) in [bytes, _mm_srli_si128::<8>(bytes)].into_iter().enumerate() {
                let b = _mm256_cvtepu8_epi32(b);
                lo[h] = _mm256_add_ps(lo[h], lookup(tl0, tl1, _mm256_and_si256(b, nibble)));
                hi[h] = _mm256_add_ps(hi[h], lookup(th0, th1, _mm256_srli_epi32::<4>(b)));
            }
        }
        for h in 0..2 {
            // SAFETY: `o` is 16 floats.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * h), _mm256_add_ps(lo[h], hi[h])) };
        }
    }
}
