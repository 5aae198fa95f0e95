//! The driver every layer uses: quantize, build tables, run the integer core,
//! rescale. ISA-free; the ISA-specific part is [`super::int_product`].

use super::quant::{quantize, table_len};
use super::{build_tables_for, int_product, uses_tables, vectorized, Kernel, SignOperand};
use crate::sign::{self, TILE_ROWS};
use crate::SignMatrix;

/// Scratch sizes, in f32 words, of one sign product.
struct Layout {
    q: usize,
    tables: usize,
    acc: usize,
    meta: usize,
}

impl Layout {
    fn new(rows: usize, cols: usize, batch: usize) -> Self {
        let cols_p = sign::col_bytes(cols) * 8;
        let rows_p = rows.div_ceil(TILE_ROWS) * TILE_ROWS;
        Self {
            q: batch * cols_p / 4,
            tables: batch * table_len(cols_p) / 2,
            acc: batch * rows_p,
            meta: 2 * batch,
        }
    }

    fn total(&self) -> usize {
        ALIGN_SLACK + self.q + self.tables + self.acc + self.meta
    }
}

/// Scratch words [`sign_product`] may skip so its buffers start on a
/// 64-byte boundary: the kernels' 16- and 32-byte table loads then never
/// straddle a cache line. (A large `Vec<f32>` from the system allocator
/// typically starts 16 bytes past a page boundary; at that offset the
/// 4096×4096 batch-1 layer measured about 5 % slower.)
const ALIGN_SLACK: usize = 64 / 4 - 1;

/// `scratch` from its first 64-byte-aligned word on.
fn aligned(scratch: &mut [f32]) -> &mut [f32] {
    let skip = scratch.as_ptr().align_offset(64);
    // `align_offset` may decline (usize::MAX); then run unaligned.
    let skip = if skip <= ALIGN_SLACK { skip } else { 0 };
    &mut scratch[skip..]
}

/// f32 words of scratch [`sign_product`] needs for a `rows × cols` matrix
/// and `batch` tokens, whatever the kernel.
pub(crate) fn sign_product_scratch_len(rows: usize, cols: usize, batch: usize) -> usize {
    Layout::new(rows, cols, batch).total()
}

/// `out[t·rows + i] ≈ Σ_j S(i, j) · z[t·cols + j]` for `t < batch`, `i <
/// rows`, through int8 activations (one scale per token).
///
/// # Panics
/// If `z` is shorter than `batch · cols`, `out` shorter than `batch · rows`,
/// `scratch` shorter than [`sign_product_scratch_len`], or `kernel`
/// unavailable.
pub(crate) fn sign_product(
    kernel: Kernel,
    signs: &SignMatrix<&[u8]>,
    z: &[f32],
    batch: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let (rows, cols) = (signs.rows(), signs.cols());
    let lay = Layout::new(rows, cols, batch);
    assert!(scratch.len() >= lay.total(), "scratch too short");
    assert!(out.len() >= batch * rows, "output too short");
    let (q, rest) = aligned(scratch).split_at_mut(lay.q);
    let (tables, rest) = rest.split_at_mut(lay.tables);
    let (acc, rest) = rest.split_at_mut(lay.acc);
    let (deltas, rest) = rest.split_at_mut(batch);
    let qsum = &mut rest[..batch];
    let q: &mut [i8] = bytemuck::cast_slice_mut(q);
    let tables: &mut [i16] = bytemuck::cast_slice_mut(tables);
    let acc: &mut [i32] = bytemuck::cast_slice_mut(acc);
    let qsum: &mut [i32] = bytemuck::cast_slice_mut(qsum);

    let operand = SignOperand::new(*signs);
    let cols_p = operand.col_bytes * 8;
    let rows_p = operand.tiles * TILE_ROWS;
    let with_tables = uses_tables(kernel, batch);
    let tlen = table_len(cols_p);
    for t in 0..batch {
        let qt = &mut q[t * cols_p..(t + 1) * cols_p];
        let (d, s) = vectorized(
            kernel,
            #[inline(always)]
            || quantize(&z[t * cols..(t + 1) * cols], qt),
        );
        deltas[t] = d;
        qsum[t] = s;
        if with_tables {
            build_tables_for(kernel, qt, &mut tables[t * tlen..(t + 1) * tlen]);
        }
    }
    int_product(kernel, &operand, q, qsum, tables, batch, acc);
    vectorized(
        kernel,
        #[inline(always)]
        || {
            for t in 0..batch {
                let d = deltas[t];
                let src = &acc[t * rows_p..t * rows_p + rows];
                for (o, &a) in out[t * rows..(t + 1) * rows].iter_mut().zip(src) {
                    *o = d * a as f32;
                }
            }
        },
    );
}
