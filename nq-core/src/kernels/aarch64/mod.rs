//! aarch64 kernels: NEON table lookups, dotprod (`SDOT`) and I8MM
//! (`SMMLA`) dot products.

pub(super) mod dotprod;
pub(super) mod i8mm;
pub(super) mod neon;

use crate::kernels::SignOperand;
use crate::sign::TILE_ROWS;

/// `tbl` indices that repeat each source byte `per` times (`per` divides
/// 16): index vector `g` covers source bytes `g·16/per ..`, so with
/// `per = 4` register `g` holds rows `4g..4g+4`, one per int32 lane, and
/// with `per = 8` rows `2g` and `2g + 1`, one per half.
const fn replicate<const N: usize>(per: usize) -> [[u8; 16]; N] {
    let mut t = [[0u8; 16]; N];
    let mut g = 0;
    while g < N {
        let mut i = 0;
        while i < 16 {
            t[g][i] = (g * (16 / per) + i / per) as u8;
            i += 1;
        }
        g += 1;
    }
    t
}

/// Rows `4g..4g+4` of a 16-row column byte, each byte four times.
pub(super) const ROWS_BY_4: [[u8; 16]; 4] = replicate(4);
/// Rows `2g` and `2g + 1`, each byte eight times.
pub(super) const ROWS_BY_2: [[u8; 16]; 8] = replicate(8);

/// The walk both dot-product kernels share: for every tile and every chunk
/// of tokens, `chunk(tile, q, sums, out, rows_p, left)` multiplies the
/// tile by the first tokens of the `left` still to do (activations from
/// `q`, chunk-interleaved; their sums; output rows from `out`, token `j`
/// at `out + j·rows_p`) and returns how many it took (`1..=left`).
///
/// # Panics
/// If a buffer is shorter than `batch` tokens need.
pub(super) fn for_each_chunk(
    s: &SignOperand<'_>,
    q: &[i8],
    qsum: &[i32],
    batch: usize,
    acc: &mut [i32],
    mut chunk: impl FnMut(&[u8], *const i8, &[i32], *mut i32, usize, usize) -> usize,
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
            let took = chunk(bytes, q0, &qsum[t0..], out, rows_p, left);
            assert!((1..=left).contains(&took), "chunk size");
            t0 += took;
        }
    }
}
