//! Dense f16/f32 tensors: norms, unquantized embeddings and heads.

use super::ShapeError;
use half::f16;

/// Element type of a [`DenseTensor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DenseDtype {
    /// IEEE binary32, little-endian.
    F32,
    /// IEEE binary16, little-endian.
    F16,
}

impl DenseDtype {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
        }
    }
}

/// A row-major `rows × cols` tensor of f32 or f16 read from little-endian
/// bytes (any alignment). Vectors are `len × 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseTensor<S> {
    rows: usize,
    cols: usize,
    dtype: DenseDtype,
    data: S,
}

impl<S: AsRef<[u8]>> DenseTensor<S> {
    /// Wraps `rows · cols · dtype.size()` bytes.
    pub fn new(rows: usize, cols: usize, dtype: DenseDtype, data: S) -> Result<Self, ShapeError> {
        if rows == 0 || cols == 0 {
            return Err(ShapeError::ZeroDim);
        }
        let expected = rows
            .checked_mul(cols)
            .and_then(|e| e.checked_mul(dtype.size()))
            .ok_or(ShapeError::TooLarge)?;
        if data.as_ref().len() != expected {
            return Err(ShapeError::Length {
                expected,
                actual: data.as_ref().len(),
            });
        }
        Ok(Self {
            rows,
            cols,
            dtype,
            data,
        })
    }

    /// Rows.
    #[inline]
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    #[inline]
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Total elements.
    #[inline]
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Whether there are no elements (never true for a constructed tensor).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element type.
    #[inline]
    pub fn dtype(&self) -> DenseDtype {
        self.dtype
    }

    /// The raw bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.data.as_ref()
    }

    /// Element `k` in row-major order, widened to f32.
    ///
    /// # Panics
    /// If `k ≥ len()`.
    #[inline]
    pub fn get_flat(&self, k: usize) -> f32 {
        let b = self.data.as_ref();
        match self.dtype {
            DenseDtype::F32 => {
                f32::from_le_bytes([b[4 * k], b[4 * k + 1], b[4 * k + 2], b[4 * k + 3]])
            }
            DenseDtype::F16 => {
                f16::from_bits(u16::from_le_bytes([b[2 * k], b[2 * k + 1]])).to_f32()
            }
        }
    }

    /// Element `(i, j)`.
    ///
    /// # Panics
    /// If out of range.
    #[inline]
    pub fn get(&self, i: usize, j: usize) -> f32 {
        assert!(i < self.rows && j < self.cols, "index out of range");
        self.get_flat(i * self.cols + j)
    }

    /// Copies row `i` into `out` as f32.
    ///
    /// # Panics
    /// If `i ≥ rows` or `out.len() != cols`.
    pub fn row_into(&self, i: usize, out: &mut [f32]) {
        assert!(i < self.rows, "row out of range");
        assert_eq!(out.len(), self.cols, "output length");
        for (j, o) in out.iter_mut().enumerate() {
            *o = self.get_flat(i * self.cols + j);
        }
    }

    /// `y = W · x`, the scalar oracle.
    ///
    /// # Panics
    /// If `x.len() != cols` or `y.len() != rows`.
    pub fn matvec_ref(&self, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), self.cols, "input length");
        assert_eq!(y.len(), self.rows, "output length");
        for (i, yi) in y.iter_mut().enumerate() {
            let mut acc = 0.0f64;
            for (j, &xj) in x.iter().enumerate() {
                acc += f64::from(self.get_flat(i * self.cols + j)) * f64::from(xj);
            }
            *yi = acc as f32;
        }
    }

    /// A borrowing view.
    pub fn as_view(&self) -> DenseTensor<&[u8]> {
        DenseTensor {
            rows: self.rows,
            cols: self.cols,
            dtype: self.dtype,
            data: self.data.as_ref(),
        }
    }
}

#[cfg(feature = "alloc")]
impl DenseTensor<alloc::vec::Vec<u8>> {
    /// Stores row-major `values` as `dtype` (f16 rounds to nearest even).
    ///
    /// # Panics
    /// If `values.len() != rows · cols` or a dimension is zero.
    pub fn from_f32(rows: usize, cols: usize, dtype: DenseDtype, values: &[f32]) -> Self {
        assert_eq!(values.len(), rows * cols, "value count");
        let mut data = alloc::vec::Vec::with_capacity(values.len() * dtype.size());
        for &v in values {
            match dtype {
                DenseDtype::F32 => data.extend_from_slice(&v.to_le_bytes()),
                DenseDtype::F16 => {
                    data.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes())
                }
            }
        }
        Self::new(rows, cols, dtype, data).expect("shape checked above")
    }
}
