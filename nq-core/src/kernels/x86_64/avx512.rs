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
//!
//! A full chunk of 16 tokens is split between two instruction mixes that
//! run side by side in one loop ([`tile_mixed`]): [`MIXED_DOT`] tokens go
//! through `vpdpbusd` as above and [`MIXED_LUT`] tokens through the AVX2
//! `vpshufb` lookups (tables built per token, as for batch 1). On Zen 4 a
//! 512-bit `vpdpbusd` issues once per cycle and leaves the shuffle units
//! partly idle, so the lookups ride along instead of queueing behind more
//! dot products: the 4096×4096 batch-16 layer became about 15 % faster
//! (12 + 4 tokens; 11 + 5 is as fast, 8 + 8 no faster than all-VNNI,
//! 6 lookups of 64-entry `vpermw` word tables no faster than `vpshufb`;
//! docs/BENCHMARKS.md).

use core::arch::x86_64::*;

use super::avx2::{load_quad, lookup_pair, widen_lanes, FLUSH};
use crate::kernels::quant::table_len;
use crate::kernels::SignOperand;
use crate::sign::TILE_ROWS;

/// Largest chunk of tokens: 16 int32 accumulators of 16 rows each.
pub(crate) const CHUNK: usize = 16;
/// Tokens of a full chunk that [`tile_mixed`] multiplies through lookup
/// tables.
pub(crate) const MIXED_LUT: usize = 4;
/// Tokens of a full chunk that [`tile_mixed`] multiplies through `vpdpbusd`.
const MIXED_DOT: usize = CHUNK - MIXED_LUT;

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
/// `batch` sums and `acc` `batch · s.tiles · 16` entries. `tables` holds,
/// for each full chunk of 16 tokens in order, the split-byte tables of its
/// last [`MIXED_LUT`] tokens.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn dot_product(
    s: &SignOperand<'_>,
    q: &[i8],
    qsum: &[i32],
    tables: &[i16],
    batch: usize,
    acc: &mut [i32],
) {
    let cols_p = s.col_bytes * 8;
    let rows_p = s.tiles * TILE_ROWS;
    let tlen = table_len(cols_p);
    assert!(q.len() >= batch * cols_p && qsum.len() >= batch && acc.len() >= batch * rows_p);
    assert!(tables.len() >= batch / CHUNK * MIXED_LUT * tlen);
    for tile in 0..s.tiles {
        let bytes = s.tile(tile);
        let mut t0 = 0;
        while t0 < batch {
            let left = batch - t0;
            let q0 = q[t0 * cols_p..].as_ptr();
            let out = acc[t0 * rows_p + tile * TILE_ROWS..].as_mut_ptr();
            let sums = &qsum[t0..];
            // SAFETY: the chunk's tokens t0..t0+N are < batch, so their
            // activations, sums, output rows and (full chunks) tables are
            // inside the slices checked above; AVX-512 VNNI is enabled here.
            t0 += unsafe {
                match left {
                    16.. => {
                        let tabs = tables[t0 / CHUNK * MIXED_LUT * tlen..].as_ptr().cast();
                        tile_mixed(bytes, q0, sums, tabs, out, rows_p)
                    }
                    8.. => tile_dot::<8>(bytes, q0, sums, out, rows_p),
                    4.. => tile_dot::<4>(bytes, q0, sums, out, rows_p),
                    2.. => tile_dot::<2>(bytes, q0, sums, out, rows_p),
                    _ => tile_dot::<1>(bytes, q0, sums, out, rows_p),
                }
            };
        }
    }
}

/// Within each 128-bit lane L: bytes 4L, 4L, 4L, 4L, 4L+1, … (row 4L + d
/// into int32 lane d).
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn replicate_rows() -> __m512i {
    _mm512_set_epi32(
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
    )
}

/// `β` bytes (0/1) of one column byte's 16 rows: int32 lane `i` holds row
/// `i`'s 4 low (first) or 4 high (second) columns.
#[target_feature(enable = "avx2,avx512f,avx512bw")]
#[inline]
fn expand(rows: __m128i, idx: __m512i) -> (__m512i, __m512i) {
    let m_lo = _mm512_set1_epi32(0x0804_0201);
    let m_hi = _mm512_set1_epi32(0x8040_2010_u32 as i32);
    let one = _mm512_set1_epi8(1);
    let x = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(rows), idx);
    (
        _mm512_min_epu8(_mm512_and_si512(x, m_lo), one),
        _mm512_min_epu8(_mm512_and_si512(x, m_hi), one),
    )
}

/// `acc += β_lo · q[0..4] + β_hi · q[4..8]` for the 8 activation bytes at `p`.
///
/// # Safety
/// AVX-512 VNNI; `p` readable for 8 bytes.
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
unsafe fn dot8(acc: __m512i, b: (__m512i, __m512i), p: *const i8) -> __m512i {
    // SAFETY: the caller vouched for the 8 bytes at p.
    let (ql, qh) = unsafe {
        (
            p.cast::<i32>().read_unaligned(),
            p.add(4).cast::<i32>().read_unaligned(),
        )
    };
    let acc = _mm512_dpbusd_epi32(acc, b.0, _mm512_set1_epi32(ql));
    _mm512_dpbusd_epi32(acc, b.1, _mm512_set1_epi32(qh))
}

/// Stores `Σq − 2·acc` (the dot-product accumulator of one token turned into
/// `S · q`) at `out`.
///
/// # Safety
/// AVX-512F; `out` writable for 16 i32.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_dot(out: *mut i32, sum: i32, acc: __m512i) {
    let r = _mm512_sub_epi32(_mm512_set1_epi32(sum), _mm512_slli_epi32::<1>(acc));
    // SAFETY: the caller vouched for 16 writable i32 at out.
    unsafe { _mm512_storeu_si512(out.cast(), r) };
}

/// One tile against a full chunk of 16 tokens: the first [`MIXED_DOT`]
/// through `vpdpbusd`, the last [`MIXED_LUT`] through table lookups, in one
/// loop so the two mixes share the core's ports. Returns 16.
///
/// # Safety
/// As [`tile_dot`] with `N = 16`; `tabs` readable for [`MIXED_LUT`]
/// consecutive split-byte tables of `table_len(8 · tile.len() / 16)` i16.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_mixed(
    tile: &[u8],
    q: *const i8,
    sums: &[i32],
    tabs: *const u8,
    out: *mut i32,
    rows_p: usize,
) -> usize {
    const N: usize = CHUNK;
    let col_bytes = tile.len() / TILE_ROWS;
    let tbytes = 2 * table_len(col_bytes * 8);
    let signs = tile.as_ptr();
    let idx = replicate_rows();
    let mask = _mm256_set1_epi8(0x0f);
    let mut dacc = [_mm512_setzero_si512(); MIXED_DOT];
    let mut rows = [[_mm256_setzero_si256(); 2]; MIXED_LUT];
    let blocks = col_bytes / 2;
    let mut k = 0;
    while k < blocks {
        let end = blocks.min(k + FLUSH);
        let mut lacc = [[_mm256_setzero_si256(); 2]; MIXED_LUT];
        for kk in k..end {
            for c in [2 * kk, 2 * kk + 1] {
                // SAFETY: c < col_bytes, so the 16 bytes at 16·c are in the tile.
                let b = expand(unsafe { _mm_loadu_si128(signs.add(16 * c).cast()) }, idx);
                for (j, a) in dacc.iter_mut().enumerate() {
                    // SAFETY: c < cols_p / 8 and j < 16: the 8 bytes at
                    // 8·(16c + j) are inside the chunk's activations.
                    *a = unsafe { dot8(*a, b, q.add(8 * (c * N + j))) };
                }
            }
            // SAFETY: kk < col_bytes / 2: the 32 sign bytes at 32·kk are in
            // the tile and the 128 table bytes at 128·kk in each table.
            let x = unsafe { _mm256_loadu_si256(signs.add(32 * kk).cast()) };
            for (t, a) in lacc.iter_mut().enumerate() {
                let quad = unsafe { load_quad(tabs.add(t * tbytes), kk) };
                let (s0, s1) = lookup_pair(x, quad, mask);
                a[0] = _mm256_add_epi16(a[0], s0);
                a[1] = _mm256_add_epi16(a[1], s1);
            }
        }
        for (r, a) in rows.iter_mut().zip(&lacc) {
            r[0] = _mm256_add_epi32(r[0], widen_lanes(a[0]));
            r[1] = _mm256_add_epi32(r[1], widen_lanes(a[1]));
        }
        k = end;
    }
    for (j, a) in dacc.iter().enumerate() {
        // SAFETY: the caller vouched for 16 writable i32 at out + j·rows_p.
        unsafe { store_dot(out.add(j * rows_p), sums[j], *a) };
    }
    for (t, r) in rows.iter().enumerate() {
        // SAFETY: as above, token MIXED_DOT + t < 16.
        unsafe {
            let o = out.add((MIXED_DOT + t) * rows_p);
            _mm256_storeu_si256(o.cast(), r[0]);
            _mm256_storeu_si256(o.add(8).cast(), r[1]);
        }
    }
    N
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
    let idx = replicate_rows();
    let mut acc = [_mm512_setzero_si512(); N];
    for (c, rows) in tile.chunks_exact(TILE_ROWS).enumerate() {
        // SAFETY: `rows` is 16 bytes.
        let b = expand(unsafe { _mm_loadu_si128(rows.as_ptr().cast()) }, idx);
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: c < tile.len() / 16 = cols_p / 8 and j < N: the 8 bytes at 8·(c·N + j)
            // are inside the chunk's N · cols_p bytes.
            *a = unsafe { dot8(*a, b, q.add(8 * (c * N + j))) };
        }
    }
    for (j, a) in acc.iter().enumerate() {
        // SAFETY: the caller vouched for 16 writable i32 at out + j·rows_p.
        unsafe { store_dot(out.add(j * rows_p), sums[j], *a) };
    }
    N
}

/// [`super::avx2::sign_tiles_f32`] with 16 rows per register: one
/// `vpermps` looks up a whole 16-entry table. Same bits.
///
/// # Safety
/// The CPU must support AVX-512F (implied by this kernel).
#[target_feature(enable = "avx2,avx512f")]
pub(crate) unsafe fn sign_tiles_f32(tiles: &[u8], col_bytes: usize, tab: &[f32], out: &mut [f32]) {
    let tile_len = TILE_ROWS * col_bytes;
    assert!(tab.len() >= 32 * col_bytes && out.len() >= tiles.len() / tile_len * TILE_ROWS);
    let nibble = _mm512_set1_epi32(0x0f);
    for (tile, o) in tiles
        .chunks_exact(tile_len)
        .zip(out.chunks_exact_mut(TILE_ROWS))
    {
        let mut lo = _mm512_setzero_ps();
        let mut hi = _mm512_setzero_ps();
        for (col, t) in tile.chunks_exact(TILE_ROWS).zip(tab.chunks_exact(32)) {
            // SAFETY: `col` is 16 bytes, `t` 32 floats.
            let (bytes, tl, th) = unsafe {
                (
                    _mm_loadu_si128(col.as_ptr().cast()),
                    _mm512_loadu_ps(t.as_ptr()),
                    _mm512_loadu_ps(t.as_ptr().add(16)),
                )
            };
            let b = _mm512_cvtepu8_epi32(bytes);
            lo = _mm512_add_ps(lo, _mm512_permutexvar_ps(_mm512_and_si512(b, nibble), tl));
            hi = _mm512_add_ps(hi, _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(b), th));
        }
        // SAFETY: `o` is 16 floats.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), _mm512_add_ps(lo, hi)) };
    }
}
