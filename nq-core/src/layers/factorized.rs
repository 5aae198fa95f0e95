//! `FactorizedLinear`: NanoQuant's low-rank binary layer.

use super::ShapeError;
use crate::kernels::{
    self, sign_product, sign_product_f32, sign_product_f32_scratch_len, sign_product_scratch_len,
    Kernel,
};
use crate::{F16Vector, SignMatrix};

/// `W ≈ diag(s_post) · U · V · diag(s_pre)` with `U ∈ {±1}^{m×r}`,
/// `V ∈ {±1}^{r×n}` and f16 scales, plus an optional f16 bias.
///
/// `y = s_post ⊙ (U · (V · (s_pre ⊙ x))) + bias`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FactorizedLinear<S> {
    u: SignMatrix<S>,
    v: SignMatrix<S>,
    s_pre: F16Vector<S>,
    s_post: F16Vector<S>,
    bias: Option<F16Vector<S>>,
}

impl<S: AsRef<[u8]>> FactorizedLinear<S> {
    /// Assembles a layer, checking that the parts agree on `m`, `r` and `n`.
    pub fn new(
        u: SignMatrix<S>,
        v: SignMatrix<S>,
        s_pre: F16Vector<S>,
        s_post: F16Vector<S>,
        bias: Option<F16Vector<S>>,
    ) -> Result<Self, ShapeError> {
        if u.cols() != v.rows() {
            return Err(ShapeError::Mismatch { what: "rank" });
        }
        if s_pre.len() != v.cols() {
            return Err(ShapeError::Mismatch {
                what: "in_features",
            });
        }
        if s_post.len() != u.rows() {
            return Err(ShapeError::Mismatch {
                what: "out_features",
            });
        }
        if bias.as_ref().is_some_and(|b| b.len() != u.rows()) {
            return Err(ShapeError::Mismatch { what: "bias" });
        }
        Ok(Self {
            u,
            v,
            s_pre,
            s_post,
            bias,
        })
    }

    /// Output features `m`.
    #[inline]
    pub fn out_features(&self) -> usize {
        self.u.rows()
    }

    /// Input features `n`.
    #[inline]
    pub fn in_features(&self) -> usize {
        self.v.cols()
    }

    /// Inner rank `r`.
    #[inline]
    pub fn rank(&self) -> usize {
        self.u.cols()
    }

    /// Left factor `U` (`m × r`).
    pub fn u(&self) -> &SignMatrix<S> {
        &self.u
    }

    /// Right factor `V` (`r × n`).
    pub fn v(&self) -> &SignMatrix<S> {
        &self.v
    }

    /// Input-side scale (`n`).
    pub fn s_pre(&self) -> &F16Vector<S> {
        &self.s_pre
    }

    /// Output-side scale (`m`).
    pub fn s_post(&self) -> &F16Vector<S> {
        &self.s_post
    }

    /// Bias (`m`), if any.
    pub fn bias(&self) -> Option<&F16Vector<S>> {
        self.bias.as_ref()
    }

    /// A borrowing view.
    pub fn as_view(&self) -> FactorizedLinear<&[u8]> {
        FactorizedLinear {
            u: self.u.as_view(),
            v: self.v.as_view(),
            s_pre: self.s_pre.as_view(),
            s_post: self.s_post.as_view(),
            bias: self.bias.as_ref().map(F16Vector::as_view),
        }
    }

    /// Scalar reference forward; `scratch` holds `r` floats (`V · (s_pre ⊙ x)`).
    ///
    /// # Panics
    /// If `x.len() != n`, `y.len() != m` or `scratch.len() != r`.
    pub fn forward_ref(&self, x: &[f32], y: &mut [f32], scratch: &mut [f32]) {
        assert_eq!(x.len(), self.in_features(), "input length");
        assert_eq!(y.len(), self.out_features(), "output length");
        assert_eq!(scratch.len(), self.rank(), "scratch length");
        for (k, t) in scratch.iter_mut().enumerate() {
            let mut acc = 0.0f64;
            for (j, &xj) in x.iter().enumerate() {
                let scaled = f64::from(self.s_pre.get(j)) * f64::from(xj);
                acc += f64::from(self.v.sign(k, j)) * scaled;
            }
            *t = acc as f32;
        }
        for (i, yi) in y.iter_mut().enumerate() {
            let mut acc = 0.0f64;
            for (k, &t) in scratch.iter().enumerate() {
                acc += f64::from(self.u.sign(i, k)) * f64::from(t);
            }
            let bias = self.bias.as_ref().map_or(0.0, |b| f64::from(b.get(i)));
            *yi = (f64::from(self.s_post.get(i)) * acc + bias) as f32;
        }
    }

    /// Scratch floats [`forward`](Self::forward) and
    /// [`forward_with`](Self::forward_with) need for `batch` tokens, enough
    /// for every kernel.
    pub fn forward_scratch_len(&self, batch: usize) -> usize {
        let (m, n, r) = (self.out_features(), self.in_features(), self.rank());
        n + 2 * m
            + batch * (n + r)
            + sign_product_scratch_len(r, n, batch).max(sign_product_scratch_len(m, r, batch))
    }

    /// `y = s_post ⊙ (U · (V · (s_pre ⊙ x))) + bias` for `batch` tokens
    /// (`x` is `batch × n`, `y` is `batch × m`, row-major) with the kernel
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
    /// [`forward_f32`](Self::forward_f32): checks, scales, the two sign
    /// products through `product(signs, input, output, scratch)`, epilogue.
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
                let (m, n, r) = (self.out_features(), self.in_features(), self.rank());
                assert_eq!(x.len(), batch * n, "input length");
                assert_eq!(y.len(), batch * m, "output length");
                if batch == 0 {
                    return;
                }
                let (s_pre, rest) = scratch.split_at_mut(n);
                let (s_post, rest) = rest.split_at_mut(m);
                let (bias, rest) = rest.split_at_mut(m);
                let (z, rest) = rest.split_at_mut(batch * n);
                let (t, rest) = rest.split_at_mut(batch * r);
                super::unpack_scales(
                    &self.s_pre,
                    &self.s_post,
                    self.bias.as_ref(),
                    (&mut *s_pre, &mut *s_post, &mut *bias),
                );
                super::scale_columns(x, s_pre, z, n);
                product(&self.v.as_view(), z, t, rest);
                product(&self.u.as_view(), t, y, rest);
                super::scale_rows_add_bias(y, s_post, bias, m);
            },
        );
    }

    /// Scratch floats [`forward_f32`](Self::forward_f32) needs for `batch`
    /// tokens.
    pub fn forward_f32_scratch_len(&self, batch: usize) -> usize {
        let (m, n, r) = (self.out_features(), self.in_features(), self.rank());
        n + 2 * m
            + batch * (n + r)
            + sign_product_f32_scratch_len(n).max(sign_product_f32_scratch_len(r))
    }

    /// [`forward`](Self::forward) on f32 activations: no int8 step at
    /// either stage, the reference's math up to f32 rounding and summation
    /// order (budget: [`kernels::error_bound_f32`] per stage). Slower;
    /// allocation-free. The same bits with every kernel:
    /// [`kernels::selected`] only picks how the lookups run.
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
        let (m, n, r) = (self.out_features(), self.in_features(), self.rank());
        assert_eq!(out.len(), m * n, "output length");
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0i64;
                for k in 0..r {
                    acc += i64::from(self.u.sign(i, k)) * i64::from(self.v.sign(k, j));
                }
                out[i * n + j] = self.s_post.get(i) * acc as f32 * self.s_pre.get(j);
            }
        }
    }
}
