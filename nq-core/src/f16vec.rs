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

    /// Widens every value into `out[..len()]`, exactly as [`get`](Self::get)
    /// does, in a loop the compiler vectorizes (the kernels call this once
    /// per forward instead of converting value by value).
    ///
    /// # Panics
    /// If `out.len() < len()`.
    #[inline]
    pub fn to_f32_into(&self, out: &mut [f32]) {
        let out = &mut out[..self.len()];
        for (o, c) in out.iter_mut().zip(self.data.as_ref().chunks_exact(2)) {
            *o = f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]));
        }
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

/// IEEE binary16 → binary32, exact, branch-free: the exponent and mantissa
/// are moved into place and rescaled by 2^112 (normals and subnormals alike);
/// infinities and NaNs keep an all-ones exponent.
#[inline]
fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    // 2^112 = 0x7780_0000 as f32 bits.
    let finite = f32::from_bits(em << 13) * f32::from_bits(0x7780_0000);
    let special = f32::from_bits((em << 13) | 0x7f80_0000);
    let v = if em >= 0x7c00 { special } else { finite };
    f32::from_bits(v.to_bits() | sign)
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

    #[test]
    fn bulk_widening_matches_get_for_every_f16() {
        let bytes: [u8; 2 * 65536] = core::array::from_fn(|i| {
            let h = (i / 2) as u16;
            h.to_le_bytes()[i % 2]
        });
        let v = F16Vector::new(&bytes[..]).unwrap();
        let mut out = [0.0f32; 65536];
        v.to_f32_into(&mut out);
        for (h, &o) in out.iter().enumerate() {
            let want = v.get(h);
            if want.is_nan() {
                assert!(o.is_nan(), "bits {h:#06x}");
            } else {
                assert_eq!(o.to_bits(), want.to_bits(), "bits {h:#06x}");
            }
        }
    }
}
