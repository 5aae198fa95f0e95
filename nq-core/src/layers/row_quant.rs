//! Row-quantized int8 / 4-bit tensors: embeddings and heads for small devices.

use super::ShapeError;
use crate::F16Vector;

/// Code width of a [`RowQuantTensor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RowBits {
    /// One signed byte per value.
    I8,
    /// Two values per byte, low nibble first, value = nibble − 8.
    Q4,
}

impl RowBits {
    /// Bytes one row of `cols` codes takes.
    pub const fn row_bytes(self, cols: usize) -> usize {
        match self {
            Self::I8 => cols,
            Self::Q4 => cols.div_ceil(2),
        }
    }
}

/// `rows × cols` values, each `scale[row] · code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowQuantTensor<S> {
    rows: usize,
    cols: usize,
    bits: RowBits,
    codes: S,
    scales: F16Vector<S>,
}

impl<S: AsRef<[u8]>> RowQuantTensor<S> {
    /// Wraps codes (`rows · bits.row_bytes(cols)` bytes) and `rows` f16 scales.
    pub fn new(
        rows: usize,
        cols: usize,
        bits: RowBits,
        codes: S,
        scales: F16Vector<S>,
    ) -> Result<Self, ShapeError> {
        if rows == 0 || cols == 0 {
            return Err(ShapeError::ZeroDim);
        }
        let expected = rows
            .checked_mul(bits.row_bytes(cols))
            .ok_or(ShapeError::TooLarge)?;
        if codes.as_ref().len() != expected {
            return Err(ShapeError::Length {
                expected,
                actual: codes.as_ref().len(),
            });
        }
        if scales.len() != rows {
            return Err(ShapeError::Mismatch {
                what: "out_features",
            });
        }
        Ok(Self {
            rows,
            cols,
            bits,
            codes,
            scales,
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

    /// Code width.
    #[inline]
    pub fn bits(&self) -> RowBits {
        self.bits
    }

    /// The integer code of `(i, j)` (I8: −128..=127; Q4: −8..=7).
    ///
    /// # Panics
    /// If out of range.
    #[inline]
    pub fn code(&self, i: usize, j: usize) -> i8 {
        assert!(i < self.rows && j < self.cols, "index out of range");
        let row = i * self.bits.row_bytes(self.cols);
        let codes = self.codes.as_ref();
        match self.bits {
            RowBits::I8 => codes[row + j] as i8,
            RowBits::Q4 => {
                let byte = codes[row + j / 2];
                let nibble = if j % 2 == 0 { byte & 0x0F } else { byte >> 4 };
                nibble as i8 - 8
            }
        }
    }

    /// The scales (`rows`).
    pub fn scales(&self) -> &F16Vector<S> {
        &self.scales
    }

    /// The code bytes.
    pub fn codes(&self) -> &[u8] {
        self.codes.as_ref()
    }

    /// Value `(i, j)`.
    ///
    /// # Panics
    /// If out of range.
    #[inline]
    pub fn get(&self, i: usize, j: usize) -> f32 {
        self.scales.get(i) * f32::from(self.code(i, j))
    }

    /// Dequantizes row `i` into `out`.
    ///
    /// # Panics
    /// If `i ≥ rows` or `out.len() != cols`.
    pub fn row_into(&self, i: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols, "output length");
        for (j, o) in out.iter_mut().enumerate() {
            *o = self.get(i, j);
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
                acc += f64::from(self.code(i, j)) * f64::from(xj);
            }
            *yi = (f64::from(self.scales.get(i)) * acc) as f32;
        }
    }

    /// A borrowing view.
    pub fn as_view(&self) -> RowQuantTensor<&[u8]> {
        RowQuantTensor {
            rows: self.rows,
            cols: self.cols,
            bits: self.bits,
            codes: self.codes.as_ref(),
            scales: self.scales.as_view(),
        }
    }
}

#[cfg(feature = "alloc")]
impl RowQuantTensor<alloc::vec::Vec<u8>> {
    /// Quantizes row-major values with one symmetric scale per row
    /// (`max|row| / 127` for I8, `max|row| / 8` for Q4; codes rounded to
    /// nearest and clamped to the code range).
    ///
    /// # Panics
    /// If `values.len() != rows · cols` or a dimension is zero.
    pub fn quantize(rows: usize, cols: usize, bits: RowBits, values: &[f32]) -> Self {
        assert_eq!(values.len(), rows * cols, "value count");
        let row_bytes = bits.row_bytes(cols);
        let mut codes = alloc::vec![0u8; rows * row_bytes];
        let mut scales = alloc::vec::Vec::with_capacity(rows);
        for (i, row) in values.chunks_exact(cols).enumerate() {
            let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let (qmax, lo, hi) = match bits {
                RowBits::I8 => (127.0f32, -127.0f32, 127.0f32),
                RowBits::Q4 => (8.0, -8.0, 7.0),
            };
            // Round the scale to f16 first so codes are chosen against the
            // scale the reader will actually use. A tiny row's scale is an
            // f16 subnormal with few significant bits; where rounding it
            // down would clip the largest value by more than half a step,
            // take the next f16 up instead.
            let mut s16 = half::f16::from_f32(max / qmax);
            if max - s16.to_f32() * qmax > 0.5 * s16.to_f32() {
                s16 = half::f16::from_bits(s16.to_bits() + 1);
            }
            let scale = s16.to_f32();
            scales.push(scale);
            for (j, &v) in row.iter().enumerate() {
                let q = if scale > 0.0 {
                    libm::roundf(v / scale).clamp(lo, hi)
                } else {
                    0.0
                } as i8;
                match bits {
                    RowBits::I8 => codes[i * row_bytes + j] = q as u8,
                    RowBits::Q4 => {
                        let nibble = (q + 8) as u8;
                        codes[i * row_bytes + j / 2] |=
                            if j % 2 == 0 { nibble } else { nibble << 4 };
                    }
                }
            }
        }
        Self::new(rows, cols, bits, codes, F16Vector::from_f32(&scales))
            .expect("shape checked above")
    }

    /// Splits into (codes, scale bytes).
    pub fn into_parts(self) -> (alloc::vec::Vec<u8>, alloc::vec::Vec<u8>) {
        (self.codes, self.scales.into_bytes())
    }
}
