//! Layer types: what a quantized model is made of.
//!
//! Each type is generic over its storage so the same code serves a view of
//! blob bytes (`&[u8]`, possibly in flash) and an owned buffer on the host.
//! Each has a `*_ref` forward — a plain scalar loop over unpacked ±1 values,
//! accumulated in f64 — that is the oracle for every optimized kernel.

mod binary;
mod dense;
mod factorized;
mod row_quant;

pub use binary::BinaryLinear;
pub use dense::{DenseDtype, DenseTensor};
pub use factorized::FactorizedLinear;
pub use row_quant::{RowBits, RowQuantTensor};

use core::fmt;

/// A layer was assembled from parts whose sizes do not fit together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ShapeError {
    /// A dimension is zero.
    ZeroDim,
    /// A size computation overflowed.
    TooLarge,
    /// A byte buffer has the wrong length.
    Length {
        /// Bytes the shape requires.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// Two parts disagree on a shared dimension.
    Mismatch {
        /// Which dimension: `"rank"`, `"in_features"`, `"out_features"`, `"bias"`.
        what: &'static str,
    },
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroDim => f.write_str("a dimension is zero"),
            Self::TooLarge => f.write_str("size overflows the address space"),
            Self::Length { expected, actual } => {
                write!(f, "buffer is {actual} bytes, shape needs {expected}")
            }
            Self::Mismatch { what } => write!(f, "parts disagree on {what}"),
        }
    }
}

impl core::error::Error for ShapeError {}

/// Any linear layer a blob may hold for a projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linear<'a> {
    /// Low-rank binary factors (NanoQuant).
    Factorized(FactorizedLinear<&'a [u8]>),
    /// Full-rank binary with row and column scales.
    Binary(BinaryLinear<&'a [u8]>),
    /// Unquantized f16/f32 weights (`out × in`, no bias).
    Dense(DenseTensor<&'a [u8]>),
}

impl Linear<'_> {
    /// Output features `m`.
    pub fn out_features(&self) -> usize {
        match self {
            Self::Factorized(l) => l.out_features(),
            Self::Binary(l) => l.out_features(),
            Self::Dense(d) => d.rows(),
        }
    }

    /// Input features `n`.
    pub fn in_features(&self) -> usize {
        match self {
            Self::Factorized(l) => l.in_features(),
            Self::Binary(l) => l.in_features(),
            Self::Dense(d) => d.cols(),
        }
    }

    /// Scratch floats [`Linear::forward_ref`] needs.
    pub fn scratch_len(&self) -> usize {
        match self {
            Self::Factorized(l) => l.rank(),
            Self::Binary(l) => l.in_features(),
            Self::Dense(_) => 0,
        }
    }

    /// The scalar reference forward of whichever kind this is.
    ///
    /// # Panics
    /// If a slice has the wrong length.
    pub fn forward_ref(&self, x: &[f32], y: &mut [f32], scratch: &mut [f32]) {
        match self {
            Self::Factorized(l) => l.forward_ref(x, y, scratch),
            Self::Binary(l) => l.forward_ref(x, y, scratch),
            Self::Dense(d) => d.matvec_ref(x, y),
        }
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests;

/// Unpacks the two f16 scale vectors and the optional bias of a layer into
/// f32 scratch (`bias` zero when absent).
#[inline(always)]
pub(crate) fn unpack_scales<S: AsRef<[u8]>>(
    s_in: &crate::F16Vector<S>,
    s_out: &crate::F16Vector<S>,
    bias: Option<&crate::F16Vector<S>>,
    (s_in_f, s_out_f, bias_f): (&mut [f32], &mut [f32], &mut [f32]),
) {
    s_in.to_f32_into(s_in_f);
    s_out.to_f32_into(s_out_f);
    match bias {
        Some(b) => b.to_f32_into(bias_f),
        None => bias_f.fill(0.0),
    }
}

/// `z = x ⊙ s` for every `n`-wide row of `x`.
#[inline(always)]
pub(crate) fn scale_columns(x: &[f32], s: &[f32], z: &mut [f32], n: usize) {
    for (zb, xb) in z.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
        for ((zj, &xj), &sj) in zb.iter_mut().zip(xb).zip(s) {
            *zj = xj * sj;
        }
    }
}

/// `y = s ⊙ y + bias` for every `m`-wide row of `y`.
#[inline(always)]
pub(crate) fn scale_rows_add_bias(y: &mut [f32], s: &[f32], bias: &[f32], m: usize) {
    for yb in y.chunks_exact_mut(m) {
        for ((yi, &si), &b) in yb.iter_mut().zip(s).zip(bias) {
            *yi = si * *yi + b;
        }
    }
}
