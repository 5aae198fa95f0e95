//! The portable kernel: nibble-table lookups in plain Rust.
//!
//! Written for Cortex-M0+/M4/M7/M33: no popcount, no SIMD shuffles, few
//! registers. One row at a time, one accumulator per nibble, so the inner
//! loop is a byte load, two masked table loads and two adds per 8 weights;
//! the tables (`16 × i16` per 4 columns, [`TableLayout::Wide`]) are shared by
//! every row. Batches run token by token: one token's tables (8 bytes per
//! input) stay in cache while every row streams past, which measured faster
//! on x86 than sharing each tile across the tokens' (much larger) tables.
//!
//! [`TableLayout::Wide`]: super::quant::TableLayout::Wide

use super::quant::table_len;
use super::SignOperand;
use crate::sign::TILE_ROWS;

/// `acc[t·rows_p + i] = Σ_j S(i, j) · q_t[j]` through the tables of each
/// token (`tables[t·table_len ..]`, wide layout).
pub(super) fn lut_product(s: &SignOperand<'_>, tables: &[i16], batch: usize, acc: &mut [i32]) {
    let tlen = table_len(s.col_bytes * 8);
    let rows_p = s.tiles * TILE_ROWS;
    for t in 0..batch {
        let tab = &tables[t * tlen..(t + 1) * tlen];
        for tile in 0..s.tiles {
            let bytes = s.tile(tile);
            let out = &mut acc[t * rows_p + tile * TILE_ROWS..][..TILE_ROWS];
            for (i, o) in out.iter_mut().enumerate() {
                *o = row_dot(bytes, i, tab);
            }
        }
    }
}

/// Row `i` of a tile against one token's tables.
///
/// Walks the tile one column byte (16 rows) at a time; `i & 15` and the
/// fixed-size table chunk let the compiler drop every bounds check, so on
/// Cortex-M the loop is a byte load, two nibble extracts, two `ldrsh` and
/// two adds per 8 weights.
#[inline]
fn row_dot(tile: &[u8], i: usize, tab: &[i16]) -> i32 {
    let mut lo_sum = 0i32;
    let mut hi_sum = 0i32;
    for (col, t) in tile.chunks_exact(TILE_ROWS).zip(tab.chunks_exact(32)) {
        let b = col[i & (TILE_ROWS - 1)];
        // Low nibble: group 2c (entries 0..16); high nibble: group 2c + 1.
        lo_sum += i32::from(t[usize::from(b & 0x0f)]);
        hi_sum += i32::from(t[16 + usize::from(b >> 4)]);
    }
    lo_sum + hi_sum
}
