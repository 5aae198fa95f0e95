//! NEON: `tbl` lookups over 16 rows × 8 columns per 16-byte load.
//!
//! The same scheme as the AVX2 kernel on 128-bit registers: a tile's 16-byte
//! column byte holds 16 rows; its low and high nibbles index the split-byte
//! int16 tables of two groups; `zip1`/`zip2` re-join low and high bytes into
//! int16 sums for rows 0–7 and 8–15, widened to int32 every [`FLUSH`] loads.

use core::arch::aarch64::*;

use crate::kernels::quant::table_len;
use crate::kernels::SignOperand;
use crate::sign::TILE_ROWS;

/// Loads between int16 → int32 widenings: `32 · 2 · 508 = 32512 ≤ i16::MAX`.
const FLUSH: usize = 32;

/// Whether this CPU runs NEON (always, on aarch64 targets with `neon`).
pub(crate) fn is_available() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "neon")
    }
}

/// Table-lookup product, see [`super::super::int_product`].
///
/// # Safety
/// The CPU must support NEON; `tables` must hold `batch` split-byte tables
/// for `s.col_bytes · 8` columns and `acc` at least `batch · s.tiles · 16`
/// entries.
#[target_feature(enable = "neon")]
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
            // SAFETY: NEON is enabled here; `bytes` holds 16 · col_bytes
            // bytes and `tab` 64 · col_bytes bytes, what `tile_lut` reads.
            unsafe { tile_lut(bytes.as_ptr(), tab.as_ptr().cast(), s.col_bytes, out) };
        }
    }
}

/// One tile (16 rows) against one token's tables.
///
/// # Safety
/// NEON; `signs` readable for `16 · col_bytes` bytes, `tab` for
/// `64 · col_bytes` bytes; `col_bytes` even; `out.len() ≥ 16`.
#[target_feature(enable = "neon")]
unsafe fn tile_lut(signs: *const u8, tab: *const u8, col_bytes: usize, out: &mut [i32]) {
    assert!(out.len() >= TILE_ROWS);
    let mask = vdupq_n_u8(0x0f);
    let mut rows = [vdupq_n_s32(0); 4];
    let mut c = 0;
    while c < col_bytes {
        let end = col_bytes.min(c + FLUSH);
        let mut a0 = vdupq_n_s16(0);
        let mut a1 = vdupq_n_s16(0);
        for cc in c..end {
            // SAFETY: cc < col_bytes: the 16 sign bytes at 16·cc and the
            // table bytes below 128·(cc/2 + 1) are inside the caller's ranges.
            let (x, t_ll, t_lh, t_hl, t_hh) = unsafe {
                let tb = tab.add((cc / 2) * 128 + 16 * (cc % 2));
                (
                    vld1q_u8(signs.add(cc * 16)),
                    vld1q_u8(tb),
                    vld1q_u8(tb.add(32)),
                    vld1q_u8(tb.add(64)),
                    vld1q_u8(tb.add(96)),
                )
            };
            let lo = vandq_u8(x, mask);
            let hi = vshrq_n_u8::<4>(x);
            let l_lo = vqtbl1q_u8(t_ll, lo);
            let l_hi = vqtbl1q_u8(t_lh, lo);
            let h_lo = vqtbl1q_u8(t_hl, hi);
            let h_hi = vqtbl1q_u8(t_hh, hi);
            let s0 = vaddq_s16(
                vreinterpretq_s16_u8(vzip1q_u8(l_lo, l_hi)),
                vreinterpretq_s16_u8(vzip1q_u8(h_lo, h_hi)),
            );
            let s1 = vaddq_s16(
                vreinterpretq_s16_u8(vzip2q_u8(l_lo, l_hi)),
                vreinterpretq_s16_u8(vzip2q_u8(h_lo, h_hi)),
            );
            a0 = vaddq_s16(a0, s0);
            a1 = vaddq_s16(a1, s1);
        }
        rows[0] = vaddw_s16(rows[0], vget_low_s16(a0));
        rows[1] = vaddw_high_s16(rows[1], a0);
        rows[2] = vaddw_s16(rows[2], vget_low_s16(a1));
        rows[3] = vaddw_high_s16(rows[3], a1);
        c = end;
    }
    for (k, r) in rows.iter().enumerate() {
        // SAFETY: out holds at least 16 i32.
        unsafe { vst1q_s32(out.as_mut_ptr().add(4 * k), *r) };
    }
}

/// Builds one token's split-byte tables (`q.len()` a multiple of 16), byte
/// for byte what [`quant::build_tables`] writes: `T = Σ_k q_k · S_k` with
/// `S_k[b] = −1` where bit `k` of `b` is set (eight `mla` per group), then
/// `uzp1`/`uzp2` gather the low and high bytes.
///
/// [`quant::build_tables`]: crate::kernels::quant::build_tables
///
/// # Safety
/// NEON; `out.len() ≥ table_len(q.len())`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn build_tables(q: &[i8], out: &mut [i16]) {
    assert!(out.len() >= table_len(q.len()) && q.len() % 16 == 0);
    const fn pattern(k: usize) -> [i16; 16] {
        let mut p = [1i16; 16];
        let mut b = 0;
        while b < 16 {
            if (b >> k) & 1 == 1 {
                p[b] = -1;
            }
            b += 1;
        }
        p
    }
    const PATTERNS: [[i16; 16]; 4] = [pattern(0), pattern(1), pattern(2), pattern(3)];
    // SAFETY: each pattern is 16 i16: two 8-lane loads.
    let signs = PATTERNS.map(|p| unsafe { (vld1q_s16(p.as_ptr()), vld1q_s16(p.as_ptr().add(8))) });
    let dst = out.as_mut_ptr().cast::<u8>();
    for (blk, group4) in q.chunks_exact(16).enumerate() {
        for (k, g) in group4.chunks_exact(4).enumerate() {
            let mut lo = vdupq_n_s16(0);
            let mut hi = vdupq_n_s16(0);
            for (s, &qv) in signs.iter().zip(g) {
                lo = vmlaq_n_s16(lo, s.0, i16::from(qv));
                hi = vmlaq_n_s16(hi, s.1, i16::from(qv));
            }
            let (lo, hi) = (vreinterpretq_u8_s16(lo), vreinterpretq_u8_s16(hi));
            // Group k of the block: low bytes at 64·(k % 2) + 16·(k / 2),
            // high bytes 32 further (see `TableLayout::SplitBytes`).
            let base = 128 * blk + 64 * (k % 2) + 16 * (k / 2);
            // SAFETY: base + 48 ≤ 128·(blk + 1) ≤ 8 · q.len() bytes of `out`.
            unsafe {
                vst1q_u8(dst.add(base), vuzp1q_u8(lo, hi));
                vst1q_u8(dst.add(base + 32), vuzp2q_u8(lo, hi));
            }
        }
    }
}

/// Byte offsets of an f32 within its table entry, for the 4 rows of a
/// register (`4·nibble + k` indexes byte `k` of entry `nibble`).
const F32_BYTE: [u8; 16] = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3];

/// The f32 sign product of one token ([`crate::kernels::f32_product`]):
/// `out[16·k + i] = Σ` over tile `k`'s column bytes of row `i`'s two nibble
/// lookups in the f32 tables `tab`, for every whole tile of `tiles`. Four
/// rows per register: each row's byte is replicated into its 4 bytes, its
/// nibble shifted in above the byte offsets `0..4` (`sli`), and one
/// 64-byte `tbl` (the 16-entry table in four registers) gathers the four
/// rows' f32 entries. Each row keeps its own low- and high-nibble sums,
/// added in column order: the portable loop's bits.
///
/// # Safety
/// The CPU must support NEON.
///
/// # Panics
/// If `tab` holds fewer than 32 floats per column byte or `out` fewer than
/// 16 per tile.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn sign_tiles_f32(tiles: &[u8], col_bytes: usize, tab: &[f32], out: &mut [f32]) {
    let tile_len = TILE_ROWS * col_bytes;
    assert!(tab.len() >= 32 * col_bytes && out.len() >= tiles.len() / tile_len * TILE_ROWS);
    // SAFETY: the constants are 16 bytes each.
    let (offsets, rows) = unsafe {
        (
            vld1q_u8(F32_BYTE.as_ptr()),
            super::ROWS_BY_4.map(|r| vld1q_u8(r.as_ptr())),
        )
    };
    let nibble = vdupq_n_u8(0x0f);
    for (tile, o) in tiles
        .chunks_exact(tile_len)
        .zip(out.chunks_exact_mut(TILE_ROWS))
    {
        let mut lo = [vdupq_n_f32(0.0); 4];
        let mut hi = [vdupq_n_f32(0.0); 4];
        for (col, t) in tile.chunks_exact(TILE_ROWS).zip(tab.chunks_exact(32)) {
            // SAFETY: `col` is 16 bytes and `t` 32 floats (two 64-byte tables).
            let (x, tl, th) = unsafe {
                let p = t.as_ptr().cast::<u8>();
                (
                    vld1q_u8(col.as_ptr()),
                    vld1q_u8_x4(p),
                    vld1q_u8_x4(p.add(64)),
                )
            };
            for g in 0..4 {
                let xr = vqtbl1q_u8(x, rows[g]);
                let il = vsliq_n_u8::<2>(offsets, vandq_u8(xr, nibble));
                let ih = vsliq_n_u8::<2>(offsets, vshrq_n_u8::<4>(xr));
                lo[g] = vaddq_f32(lo[g], vreinterpretq_f32_u8(vqtbl4q_u8(tl, il)));
                hi[g] = vaddq_f32(hi[g], vreinterpretq_f32_u8(vqtbl4q_u8(th, ih)));
            }
        }
        for g in 0..4 {
            // SAFETY: `o` is 16 floats.
            unsafe { vst1q_f32(o.as_mut_ptr().add(4 * g), vaddq_f32(lo[g], hi[g])) };
        }
    }
}
