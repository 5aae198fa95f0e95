//! Packed ±1 matrices in the blob's tile layout.
//!
//! Why this layout (see `docs/FORMAT.md` §6.1): the batch-1 kernels build a
//! lookup table per 4 input activations and look up 16 rows at once with one
//! `pshufb`/`tbl`. That needs the bytes of 16 consecutive rows for the same 8
//! columns to be adjacent, so rows are grouped in tiles of [`TILE_ROWS`] and
//! stored column-byte-major inside a tile. The blob stores exactly this, so a
//! device never repacks.
//!
//! Bit order: column `j` of row `i` is bit `j % 8` (LSB first) of
//! [`byte_index`]`(col_bytes, i, j / 8)`; a set bit means −1, a clear bit +1
//! (so `sign(0) = +1`).

use crate::layers::ShapeError;

/// Rows per tile.
pub const TILE_ROWS: usize = 16;
/// Columns are padded to a multiple of this many bits.
pub const COL_PAD_BITS: usize = 32;

/// Bytes that hold one row's columns, padded to [`COL_PAD_BITS`].
#[inline]
pub const fn col_bytes(cols: usize) -> usize {
    cols.div_ceil(COL_PAD_BITS) * (COL_PAD_BITS / 8)
}

/// Total packed size in bytes of a `rows × cols` sign matrix, or `None` on
/// overflow. Always a multiple of 64.
#[inline]
pub const fn packed_len(rows: usize, cols: usize) -> Option<usize> {
    let tiles = rows.div_ceil(TILE_ROWS);
    match tiles.checked_mul(TILE_ROWS) {
        Some(padded_rows) => padded_rows.checked_mul(col_bytes(cols)),
        None => None,
    }
}

/// Offset of the byte holding columns `8c .. 8c + 8` of row `i`.
#[inline]
pub const fn byte_index(col_bytes: usize, i: usize, c: usize) -> usize {
    (i / TILE_ROWS) * TILE_ROWS * col_bytes + c * TILE_ROWS + (i % TILE_ROWS)
}

/// A `rows × cols` matrix of ±1, packed one bit per entry.
///
/// Generic over its storage: `SignMatrix<&[u8]>` borrows blob bytes (flash),
/// `SignMatrix<Vec<u8>>` (feature `alloc`) owns them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignMatrix<S> {
    rows: usize,
    cols: usize,
    data: S,
}

impl<S: AsRef<[u8]>> SignMatrix<S> {
    /// Wraps packed bytes; `data` must be exactly [`packed_len`] bytes.
    pub fn new(rows: usize, cols: usize, data: S) -> Result<Self, ShapeError> {
        if rows == 0 || cols == 0 {
            return Err(ShapeError::ZeroDim);
        }
        let expected = packed_len(rows, cols).ok_or(ShapeError::TooLarge)?;
        if data.as_ref().len() != expected {
            return Err(ShapeError::Length {
                expected,
                actual: data.as_ref().len(),
            });
        }
        Ok(Self { rows, cols, data })
    }

    /// Number of rows.
    #[inline]
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    #[inline]
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes per row inside a tile (the padded column count / 8).
    #[inline]
    pub fn col_bytes(&self) -> usize {
        col_bytes(self.cols)
    }

    /// The packed bytes, in the layout the kernels and the blob use.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.data.as_ref()
    }

    /// Whether entry `(i, j)` is −1.
    ///
    /// # Panics
    /// If `i ≥ rows` or `j ≥ cols`.
    #[inline]
    pub fn is_negative(&self, i: usize, j: usize) -> bool {
        assert!(i < self.rows && j < self.cols, "sign index out of range");
        let byte = self.data.as_ref()[byte_index(self.col_bytes(), i, j / 8)];
        (byte >> (j % 8)) & 1 == 1
    }

    /// Entry `(i, j)` as `+1` or `-1`.
    ///
    /// # Panics
    /// If `i ≥ rows` or `j ≥ cols`.
    #[inline]
    pub fn sign(&self, i: usize, j: usize) -> i8 {
        if self.is_negative(i, j) {
            -1
        } else {
            1
        }
    }

    /// Gives back the storage.
    #[inline]
    pub fn into_inner(self) -> S {
        self.data
    }

    /// A borrowing view of the same matrix.
    #[inline]
    pub fn as_view(&self) -> SignMatrix<&[u8]> {
        SignMatrix {
            rows: self.rows,
            cols: self.cols,
            data: self.data.as_ref(),
        }
    }

    /// `y = M · x` with entries taken as ±1: the scalar oracle.
    ///
    /// # Panics
    /// If `x.len() != cols` or `y.len() != rows`.
    pub fn matvec_ref(&self, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), self.cols, "input length");
        assert_eq!(y.len(), self.rows, "output length");
        for (i, yi) in y.iter_mut().enumerate() {
            let mut acc = 0.0f64;
            for (j, &xj) in x.iter().enumerate() {
                acc += f64::from(self.sign(i, j)) * f64::from(xj);
            }
            *yi = acc as f32;
        }
    }
}

impl<S: AsRef<[u8]> + AsMut<[u8]>> SignMatrix<S> {
    /// Sets entry `(i, j)` to −1 (`negative = true`) or +1.
    ///
    /// # Panics
    /// If `i ≥ rows` or `j ≥ cols`.
    #[inline]
    pub fn set_negative(&mut self, i: usize, j: usize, negative: bool) {
        assert!(i < self.rows && j < self.cols, "sign index out of range");
        let idx = byte_index(self.col_bytes(), i, j / 8);
        let bit = 1u8 << (j % 8);
        let byte = &mut self.data.as_mut()[idx];
        if negative {
            *byte |= bit;
        } else {
            *byte &= !bit;
        }
    }
}

#[cfg(feature = "alloc")]
impl SignMatrix<alloc::vec::Vec<u8>> {
    /// An all-`+1` matrix.
    ///
    /// # Panics
    /// If a dimension is zero or the size overflows `usize`.
    pub fn ones(rows: usize, cols: usize) -> Self {
        assert!(rows > 0 && cols > 0, "sign matrix dimensions must be ≥ 1");
        let len = packed_len(rows, cols).expect("sign matrix too large");
        Self {
            rows,
            cols,
            data: alloc::vec![0u8; len],
        }
    }

    /// Builds a matrix whose entry `(i, j)` is −1 where `negative(i, j)`.
    pub fn from_fn(
        rows: usize,
        cols: usize,
        mut negative: impl FnMut(usize, usize) -> bool,
    ) -> Self {
        let mut m = Self::ones(rows, cols);
        for i in 0..rows {
            for j in 0..cols {
                if negative(i, j) {
                    m.set_negative(i, j, true);
                }
            }
        }
        m
    }

    /// Signs of a row-major `rows × cols` float matrix, with `sign(0) = +1`
    /// (and `sign(-0.0) = +1`).
    ///
    /// # Panics
    /// If `values.len() != rows * cols`.
    pub fn from_signs_of(rows: usize, cols: usize, values: &[f32]) -> Self {
        assert_eq!(values.len(), rows * cols, "value count");
        Self::from_fn(rows, cols, |i, j| values[i * cols + j] < 0.0)
    }

    /// Gives back the packed bytes.
    pub fn into_bytes(self) -> alloc::vec::Vec<u8> {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_sizes_match_the_spec() {
        // Hand-computed from FORMAT.md §6.1.
        assert_eq!(col_bytes(1), 4);
        assert_eq!(col_bytes(32), 4);
        assert_eq!(col_bytes(33), 8);
        assert_eq!(col_bytes(576), 72);
        assert_eq!(packed_len(1, 1), Some(64));
        assert_eq!(packed_len(16, 32), Some(64));
        assert_eq!(packed_len(17, 32), Some(128));
        assert_eq!(packed_len(576, 256), Some(576 * 32));
        assert_eq!(packed_len(usize::MAX, 8), None);
    }

    #[test]
    fn byte_positions_follow_the_tile_rule() {
        let cb = col_bytes(64); // 8 bytes per row
        assert_eq!(byte_index(cb, 0, 0), 0);
        assert_eq!(byte_index(cb, 1, 0), 1);
        assert_eq!(byte_index(cb, 15, 0), 15);
        assert_eq!(byte_index(cb, 0, 1), 16);
        assert_eq!(byte_index(cb, 16, 0), 128);
        assert_eq!(byte_index(cb, 17, 7), 128 + 7 * 16 + 1);
    }

    #[test]
    fn bit_convention_is_lsb_first_and_set_means_negative() {
        let mut bytes = [0u8; 64];
        // Row 2, columns 0 and 9 negative.
        bytes[2] = 0b0000_0001;
        bytes[16 + 2] = 0b0000_0010;
        let m = SignMatrix::new(3, 10, &bytes[..]).unwrap();
        for i in 0..3 {
            for j in 0..10 {
                let want = if i == 2 && (j == 0 || j == 9) { -1 } else { 1 };
                assert_eq!(m.sign(i, j), want, "({i}, {j})");
            }
        }
    }

    #[test]
    fn wrong_length_is_rejected() {
        let bytes = [0u8; 63];
        assert_eq!(
            SignMatrix::new(1, 1, &bytes[..]),
            Err(ShapeError::Length {
                expected: 64,
                actual: 63
            })
        );
        assert_eq!(SignMatrix::new(0, 1, &bytes[..]), Err(ShapeError::ZeroDim));
    }
}
