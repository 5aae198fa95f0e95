//! `BinaryLinear`: full-rank signs with row and column scales.

use super::ShapeError;
use crate::kernels::{
    self, sign_product, sign_product_f32, sign_product_f32_scratch_len, sign_product_scratch_len,
    Kernel,
};
use crate::{F16Vector, SignMatrix};

/// `W ≈ diag(s_row) · B · diag(s_col)` with `B ∈ {±1}^{m×n}` (1 bit per
/// weight plus scales — the ARB-RC form), plus an optional f16 bias.
///
/// `y = s_row ⊙ (B · (s_col ⊙ x)) + bias`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BinaryLinear<S> {
    signs: SignMatrix<S>,
    s_col: F16Vector<S>,
    s_row: F16Vector<S>,
    bias: Option<F16Vector<S>>,
}

impl<S: AsRef<[u8]>> BinaryLinear<S> {
    /// Assembles a layer, checking that the parts agree on `m` and `n`.
    pub fn new(
        signs: SignMatrix<S>,
        s_col: F16Vector<S>,
        s_row: F16Vector<S>,
        bias: Option<F16Vector<S>>,
    ) -> Result<Self, ShapeError> {
        if s_col.len() != signs.cols() {
            return Err(ShapeError::Mismatch {
                what: "in_features",
            });
        }
        if s_row.len() != signs.rows() {
            return Err(ShapeError::Mismatch {
                what: "out_features",
            });
        }
        if bias.as_ref().is_some_and(|b| b.len() != signs.rows()) {
            return Err(ShapeError::Mismatch { what: "bias" });
        }
        Ok(Self {
            signs,
            s_col,
            s_row,
            bias,
        })
    }

    /// Output features `m`.
    #[inline]
    pub fn out_features(&self) -> usize {
        self.signs.rows()
    }

    /// Input features `n`.
    #[inline]
    pub fn in_features(&self) -> usize {
        self.signs.cols()
    }

    /// The sign matrix `B` (`m × n`).
    pub fn signs(&self) -> &SignMatrix<S> {
        &self.signs
    }

    /// Column (input-side) scale (`n`).
    pub fn s_col(&self) -> &F16Vector<S> {
        &self.s_col
    }

    /// Row (output-side) scale (`m`).
    pub fn s_row(&self) -> &F16Vector<S> {
        &self.s_row
    }

    /// Bias (`m`), if any.
    pub fn bias(&self) -> Option<&F16Vector<S>> {
        self.bias.as_ref()
    }

    /// A borrowing view.
    pub fn as_view(&self) -> BinaryLinear<&[u8]> {
        BinaryLinear {
            signs: self.signs.as_view(),
            s_col: self.s_col.as_view(),
            s_row: self.s_row.as_view(),
            bias: self.bias.as_ref().map(F16Vector::as_view),
        }
    }

    /// Scalar reference forward; `scratch` holds `n` floats (`s_col ⊙ x`).
    ///
    /// # Panics
    /// If `x.len() != n`, `y.len() != m` or `scratch.len() != n`.
    pub fn forward_ref(&self, x: &[f32], y: &mut [f32], scratch: &mut [f32]) {
        assert_eq!(x.len(), self.in_features(), "input length");
        assert_eq!(y.len(), self.out_features(), "output length");
        assert_eq!(scratch.len(), self.in_features(), "scratch length");
        for (j, (s, &xj)) in scratch.iter_mut().zip(x).enumerate() {
            *s = self.s_col.get(j) * xj;
        }
        for (i, yi) in y.iter_mut().enumerate() {
            let mut acc = 0.0f64;
            for (j, &xs) in scratch.iter().enumerate() {
                acc += f64::from(self.signs.sign(i, j)) * f64::from(xs);
            }
            let bias = self.bias.as_ref().map_or(0.0, |b| f64::from(b.get(i)));
            *yi = (f64::from(self.s_row.get(i)) * acc + bias) as f32;
        }
    }

    /// Scratch floats [`forward`](Self::forward) and
    /// [`forward_with`](Self::forward_with) need for `batch` tokens, enough
    /// for every kernel.
    pub fn forward_scratch_len(&self, batch: usize) -> usize {
        let (m, n) = (self.out_features(), self.in_features());
        n + 2 * m + batch * n + sign_product_scratch_len(m, n, batch)
    }

    /// `y = s_row ⊙ (B · (s_col ⊙ x)) + bias` for `batch` tokens (`x` is
    /// `batch × n`, `y` is `batch × m`, row-major) with the kernel
    /// [`kernels::selected`] names. Allocation-free; int8 activations inside
    /// (error budget in [`kernels`]).
    ///
    /// # Panics
    /// If `x.len() != batch · n`, `y.len() != batch · m` or `scratch` is
    /// shorter than [`forward_scratch_len`](Self::forward_scratch_len).
    pub fn forward(&self, x: &[f32], batch: usize, y: &mut [f32], scratch: &mut [f32]) {
        self.forward_with(kernels::selected(), x, batch, y, scratch);
    }

    /// [`forward`](Self::forward) with a given kernel.
    ///
    /// # Panics
    /// As [`forward`](Self::forward), and if `kernel` is not available on
    /// this CPU.
    pub fn forward_with(
        &self,
        kernel: Kernel,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        scratch: &mut [f32],
    ) {
        assert!(
            scratch.len() >= self.forward_scratch_len(batch),
            "scratch length"
        );
        self.run(kernel, x, batch, y, scratch, |signs, z, out, rest| {
            sign_product(kernel, signs, z, batch, out, rest)
        });
    }

    /// The shared body of [`forward_with`](Self::forward_with) and
    /// [`forward_f32`](Self::forward_f32): checks, scales, the sign product
    /// through `product(signs, input, output, scratch)`, epilogue.
    /// The body runs in `kernel`'s vector frame ([`kernels::vectorized`]),
    /// so the scaling loops around the products vectorize with it.
    fn run(
        &self,
        kernel: Kernel,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        scratch: &mut [f32],
        product: impl Fn(&SignMatrix<&[u8]>, &[f32], &mut [f32], &mut [f32]),
    ) {
        kernels::vectorized(
            kernel,
            #[inline(always)]
            || {
                let (m, n) = (self.out_features(), self.in_features());
                assert_eq!(x.len(), batch * n, "input length");
                assert_eq!(y.len(), batch * m, "output length");
                if batch == 0 {
                    return;
                }
                let (s_col, rest) = scratch.split_at_mut(n);
                let (s_row, rest) = rest.split_at_mut(m);
                let (bias, rest) = rest.split_at_mut(m);
                let (z, rest) = rest.split_at_mut(batch * n);
                super::unpack_scales(
                    &self.s_col,
                    &self.s_row,
                    self.bias.as_ref(),
                    (&mut *s_col, &mut *s_row, &mut *bias),
                );
                super::scale_columns(x, s_col, z, n);
                product(&self.signs.as_view(), z, y, rest);
                super::scale_rows_add_bias(y, s_row, bias, m);
            },
        );
    }

    /// Scratch floats [`forward_f32`](Self::forward_f32) needs for `batch`
    /// tokens.
    pub fn forward_f32_scratch_len(&self, batch: usize) -> usize {
        let (m, n) = (self.out_features(), self.in_features());
        n + 2 * m + batch * n + sign_product_f32_scratch_len(n)
    }

    /// [`forward`](Self::forward) on f32 activations: no int8 step, the
    /// reference's math up to f32 rounding and summation order (budget:
    /// [`kernels::error_bound_f32`]). Slower; allocation-free. The same
    /// bits with every kernel: [`kernels::selected`] only picks how the
    /// lookups run.
    ///
    /// # Panics
    /// If `x.len() != batch · n`, `y.len() != batch · m` or `scratch` is
    /// shorter than [`forward_f32_scratch_len`](Self::forward_f32_scratch_len).
    pub fn forward_f32(&self, x: &[f32], batch: usize, y: &mut [f32], scratch: &mut [f32]) {
        assert!(
            scratch.len() >= self.forward_f32_scratch_len(batch),
            "scratch length"
        );
        let kernel = kernels::selected();
        self.run(kernel, x, batch, y, scratch, |signs, z, out, rest| {
            sign_product_f32(kernel, signs, z, batch, out, rest)
        });
    }

    /// Writes the dense `m × n` matrix this layer represents (row-major).
    ///
    /// # Panics
    /// If `out.len() != m · n`.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        let (m, n) = (self.out_features(), self.in_features());
        assert_eq!(out.len(), m * n, "output length");
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] =
                    self.s_row.get(i) * f32::from(self.signs.sign(i, j)) * self.s_col.get(j);
            }
        }
    }
}
