//! Vectors of little-endian f16 read straight from bytes.
//!
//! Scales and biases live in the blob as f16. Reading them through a byte
//! view (instead of casting to `&[f16]`) works at any alignment and on any
//! target, so a blob can sit at whatever address a flasher put it.

use crate::layers::ShapeError;
use half::f16;

/// A vector of f16 values stored as little-endian bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct F16Vector<S> {
    data: S,
}

impl<S: AsRef<[u8]>> F16Vector<S> {
    /// Wraps `2 · len` bytes.
    pub fn new(data: S) -> Result<Self, ShapeError> {
        if data.as_ref().len() % 2 != 0 {
            return Err(ShapeError::Length {
                expected: data.as_ref().len() & !1,
                actual: data.as_ref().len(),
            });
        }
        Ok(Self { data })
    }

    /// Number of values.
    #[inline]
    pub fn len(&self) -> usize {
        self.data.as_ref().len() / 2
    }

    /// Whether there are no values.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i` as f16.
    ///
    /// # Panics
    /// If `i ≥ len()`.
    #[inline]
    pub fn get_f16(&self, i: usize) -> f16 {
        let b = self.data.as_ref();
        f16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]]))
    }

    /// Value `i` widened to f32.
    ///
    /// # Panics
    /// If `i ≥ len()`.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        self.get_f16(i).to_f32()
    }

    /// All values, widened to f32.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = f32> + '_ {
        self.data
            .as_ref()
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
    }

    /// The raw little-endian bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.data.as_ref()
    }

    /// A borrowing view.
    #[inline]
    pub fn as_view(&self) -> F16Vector<&[u8]> {
        F16Vector {
            data: self.data.as_ref(),
        }
    }
}

#[cfg(feature = "alloc")]
impl F16Vector<alloc::vec::Vec<u8>> {
    /// Rounds each value to the nearest f16 (ties to even).
    pub fn from_f32(values: &[f32]) -> Self {
        let mut data = alloc::vec::Vec::with_capacity(values.len() * 2);
        for &v in values {
            data.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
        }
        Self { data }
    }

    /// Gives back the bytes.
    pub fn into_bytes(self) -> alloc::vec::Vec<u8> {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_f16() {
        // 1.0 = 0x3C00, -2.0 = 0xC000, 0.5 = 0x3800 (IEEE binary16).
        let bytes = [0x00, 0x3C, 0x00, 0xC0, 0x00, 0x38];
        let v = F16Vector::new(&bytes[..]).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v.get(0), 1.0);
        assert_eq!(v.get(1), -2.0);
        assert_eq!(v.get(2), 0.5);
        assert!(F16Vector::new(&bytes[..5]).is_err());
    }
}
