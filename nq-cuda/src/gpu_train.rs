//! [`Gpu`] operations of block and model reconstruction: the backward
//! pass's element-wise kernels (`kernels/backward.cu`, RoPE's and the
//! attention probabilities in `forward.cu`) and the per-parameter steps
//! (`kernels/train.cu`). Shapes are checked as in the rest of [`Gpu`].

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::{err, shape, Buf, Gpu};
use crate::geometry::{self, grid_stride, per_elem, per_row};
use crate::CudaError;

/// AdamW's constants, the CPU reconstruction's (`quant/recon.rs`).
pub const ADAM_BETA1: f32 = 0.9;
/// See [`ADAM_BETA1`].
pub const ADAM_BETA2: f32 = 0.999;
/// See [`ADAM_BETA1`].
pub const ADAM_EPS: f32 = 1e-8;

/// Head layout of an attention call: `(heads, kv_heads, head_dim)`.
pub type HeadShape = (usize, usize, usize);

fn int(v: usize, what: &str) -> Result<i32, CudaError> {
    i32::try_from(v).map_err(|_| CudaError::new(format!("{what} over 2^31")))
}

/// Checks an attention head layout and the four activations' shapes;
/// returns `(t, heads, kv_heads, d)` as kernel ints.
pub(super) fn attention_shape(
    t: usize,
    (heads, kv_heads, d): HeadShape,
    q_like: &[&Buf],
    kv_like: &[&Buf],
) -> Result<(i32, i32, i32, i32), CudaError> {
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || d == 0 {
        return Err(CudaError::new("attention: bad head configuration"));
    }
    if t > geometry::ATTENTION_MAX_T {
        return Err(CudaError::new(format!(
            "attention: context {t} is longer than this kernel's {} tokens",
            geometry::ATTENTION_MAX_T
        )));
    }
    for b in q_like {
        shape(b.len(), t, heads * d)?;
    }
    for b in kv_like {
        shape(b.len(), t, kv_heads * d)?;
    }
    int(heads * t * t, "attention probabilities")?;
    Ok((
        int(t, "t")?,
        int(heads, "heads")?,
        int(kv_heads, "kv heads")?,
        int(d, "head dim")?,
    ))
}

impl Gpu {
    /// `inv[r] = 1 / rms(x[r])` for the rows of `x` (`rows × d`).
    pub fn rmsnorm_inv(
        &self,
        x: &Buf,
        rows: usize,
        d: usize,
        eps: f32,
        inv: &mut Buf,
    ) -> Result<(), CudaError> {
        let (r, di) = shape(x.len(), rows, d)?;
        shape(inv.len(), rows, 1)?;
        if rows > 0 {
            launch!(self, "nq_rmsnorm_inv", per_row(rows), x, inv, &r, &di, &eps);
        }
        Ok(())
    }

    /// Backward of [`Gpu::rmsnorm`]: `dx` (written, or added to with
    /// `accumulate`) from `dy`, given `x`, `w` and `inv` from
    /// [`Gpu::rmsnorm_inv`]; with `dw`, adds the weight's gradient to it.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_backward(
        &self,
        (x, w, inv): (&Buf, &Buf, &Buf),
        dy: &Buf,
        rows: usize,
        dx: &mut Buf,
        accumulate: bool,
        dw: Option<&mut Buf>,
    ) -> Result<(), CudaError> {
        let d = w.len();
        let (r, di) = shape(x.len(), rows, d)?;
        shape(dy.len(), rows, d)?;
        shape(dx.len(), rows, d)?;
        shape(inv.len(), rows, 1)?;
        if let Some(dw) = &dw {
            shape(dw.len(), d, 1)?;
        }
        if rows == 0 || d == 0 {
            return Ok(());
        }
        let acc = i32::from(accumulate);
        launch!(
            self,
            "nq_rmsnorm_backward",
            per_row(rows),
            x,
            w,
            inv,
            dy,
            dx,
            &r,
            &di,
            &acc
        );
        if let Some(dw) = dw {
            launch!(
                self,
                "nq_rmsnorm_weight_grad",
                per_elem(d),
                x,
                inv,
                dy,
                dw,
                &r,
                &di
            );
        }
        Ok(())
    }

    /// Backward of [`Gpu::silu_mul`]: `(∂gate, ∂up)` from `∂act`.
    pub fn swiglu_backward(
        &self,
        (gate, up): (&Buf, &Buf),
        d_act: &Buf,
        d_gate: &mut Buf,
        d_up: &mut Buf,
    ) -> Result<(), CudaError> {
        let n = Self::same_len(d_act, gate, up)?;
        if d_gate.len() != d_act.len() || d_up.len() != d_act.len() {
            return Err(CudaError::new("swiglu_backward: length mismatch"));
        }
        launch!(
            self,
            "nq_swiglu_backward",
            grid_stride(d_act.len()),
            gate,
            up,
            d_act,
            d_gate,
            d_up,
            &n
        );
        Ok(())
    }

    /// Backward of [`Gpu::rope`]: rotates `dx` back, in place.
    pub fn rope_backward(
        &self,
        dx: &mut Buf,
        cos: &Buf,
        sin: &Buf,
        t: usize,
        heads: usize,
    ) -> Result<(), CudaError> {
        self.rotate("nq_rope_backward", dx, cos, sin, t, heads)
    }

    /// The attention probabilities of [`Gpu::attention`]'s inputs, for the
    /// backward pass: `probs` is `heads × t × t`, zero above the diagonal.
    pub fn attention_probs(
        &self,
        (q, k): (&Buf, &Buf),
        probs: &mut Buf,
        t: usize,
        heads: HeadShape,
    ) -> Result<(), CudaError> {
        let (ti, hi, kvi, di) = attention_shape(t, heads, &[q], &[k])?;
        shape(probs.len(), heads.0 * t, t)?;
        if t == 0 {
            return Ok(());
        }
        let scale = 1.0 / (heads.2 as f32).sqrt();
        launch!(
            self,
            "nq_attention_probs",
            geometry::attention(t, heads.0, 1),
            q,
            k,
            probs,
            &ti,
            &hi,
            &kvi,
            &di,
            &scale
        );
        Ok(())
    }

    /// Backward of [`Gpu::attention`]: `(dq, dk, dv)` (written) from
    /// `d_out`, given the inputs and [`Gpu::attention_probs`]' output. The
    /// key and value gradients are summed over the query heads sharing them.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        &self,
        (q, k, v, probs): (&Buf, &Buf, &Buf, &Buf),
        d_out: &Buf,
        (dq, dk, dv): (&mut Buf, &mut Buf, &mut Buf),
        t: usize,
        heads: HeadShape,
    ) -> Result<(), CudaError> {
        let (ti, hi, kvi, di) = attention_shape(t, heads, &[q, d_out, dq], &[k, v, dk, dv])?;
        shape(probs.len(), heads.0 * t, t)?;
        if t == 0 {
            return Ok(());
        }
        let scale = 1.0 / (heads.2 as f32).sqrt();
        let mut ds = self.zeros(heads.0 * t * t)?;
        launch!(
            self,
            "nq_attention_backward_q",
            geometry::attention(t, heads.0, 1),
            probs,
            d_out,
            k,
            v,
            &mut ds,
            dq,
            &ti,
            &hi,
            &kvi,
            &di,
            &scale
        );
        launch!(
            self,
            "nq_attention_backward_kv",
            geometry::attention(t, heads.1, 0),
            probs,
            &ds,
            q,
            d_out,
            dk,
            dv,
            &ti,
            &hi,
            &kvi,
            &di
        );
        Ok(())
    }

    /// `out = sign(x)` (±1, `sign(0) = +1`).
    pub fn signs(&self, x: &Buf, out: &mut Buf) -> Result<(), CudaError> {
        if x.len() != out.len() {
            return Err(CudaError::new("signs: length mismatch"));
        }
        let n = int(x.len(), "buffer")?;
        launch!(self, "nq_signs", grid_stride(x.len()), x, out, &n);
        Ok(())
    }

    /// `y[i] *= s[i]` for every row `i` of `y` (`s.len() × n`).
    pub fn scale_rows(&self, y: &mut Buf, s: &Buf) -> Result<(), CudaError> {
        let n = y.len().checked_div(s.len()).unwrap_or(0);
        let (r, ni) = shape(y.len(), s.len(), n)?;
        if y.is_empty() {
            return Ok(());
        }
        launch!(self, "nq_scale_rows", grid_stride(y.len()), y, s, &r, &ni);
        Ok(())
    }

    /// Gradients of a factorized layer's scales and the input of its latent
    /// gradients, from `dw = ∂L/∂Ŵ` and `p = U·V` (both `m × n`):
    /// `g = dw ⊙ s_post s_preᵀ`, `d_pre = ∂L/∂s_pre`, `d_post = ∂L/∂s_post`
    /// (sums in f64). Then `∂L/∂L_a = g Vᵀ` and `∂L/∂L_b = Uᵀ g` are
    /// [`Gpu::matmul`]s (straight-through: the signs pass gradients as is).
    #[allow(clippy::too_many_arguments)]
    pub fn scale_grads(
        &self,
        (dw, p): (&Buf, &Buf),
        (s_pre, s_post): (&Buf, &Buf),
        g: &mut Buf,
        d_pre: &mut Buf,
        d_post: &mut Buf,
    ) -> Result<(), CudaError> {
        let (m, n) = (s_post.len(), s_pre.len());
        let (mi, ni) = shape(dw.len(), m, n)?;
        shape(p.len(), m, n)?;
        shape(g.len(), m, n)?;
        if d_pre.len() != n || d_post.len() != m {
            return Err(CudaError::new(
                "scale_grads: gradient lengths differ from the scales",
            ));
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        launch!(
            self,
            "nq_scale_outer",
            grid_stride(m * n),
            dw,
            s_post,
            s_pre,
            g,
            &mi,
            &ni
        );
        launch!(
            self,
            "nq_scale_grad_post",
            per_row(m),
            dw,
            p,
            s_pre,
            d_post,
            &mi,
            &ni
        );
        launch!(
            self,
            "nq_scale_grad_pre",
            per_elem(n),
            dw,
            p,
            s_post,
            d_pre,
            &mi,
            &ni
        );
        Ok(())
    }

    /// `dy = 2·imp[c]·(y − target) / norm` (`rows × imp.len()`): the
    /// gradient of block reconstruction's importance-weighted loss.
    pub fn weighted_mse_grad(
        &self,
        (y, target): (&Buf, &Buf),
        imp: &Buf,
        norm: f64,
        dy: &mut Buf,
    ) -> Result<(), CudaError> {
        let d = imp.len();
        let rows = y.len().checked_div(d).unwrap_or(0);
        let (r, di) = shape(y.len(), rows, d)?;
        shape(target.len(), rows, d)?;
        shape(dy.len(), rows, d)?;
        if y.is_empty() {
            return Ok(());
        }
        launch!(
            self,
            "nq_weighted_mse_grad",
            grid_stride(y.len()),
            y,
            target,
            imp,
            dy,
            &r,
            &di,
            &norm
        );
        Ok(())
    }

    /// AdamW step number `step` (from 1) on `p` with gradient `g` and
    /// moments `m`, `v` (all the same length), decoupled weight decay `wd`.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        &self,
        p: &mut Buf,
        g: &Buf,
        (m, v): (&mut Buf, &mut Buf),
        step: i32,
        lr: f32,
        wd: f32,
    ) -> Result<(), CudaError> {
        let n = p.len();
        if g.len() != n || m.len() != n || v.len() != n {
            return Err(CudaError::new("adamw: length mismatch"));
        }
        if step < 1 {
            return Err(CudaError::new("adamw: steps count from 1"));
        }
        let ni = int(n, "buffer")?;
        let c1 = 1.0 - ADAM_BETA1.powi(step);
        let c2 = 1.0 - ADAM_BETA2.powi(step);
        launch!(
            self,
            "nq_adamw",
            grid_stride(n),
            p,
            g,
            m,
            v,
            &ni,
            &lr,
            &wd,
            &ADAM_BETA1,
            &ADAM_BETA2,
            &ADAM_EPS,
            &c1,
            &c2
        );
        Ok(())
    }

    /// The signs of `x` (`rows × cols`) packed in the blob's tile layout
    /// (docs/FORMAT.md §6.1, the bytes `nq_core::SignMatrix` holds). An
    /// empty matrix gives a one-byte zero buffer (device allocations cannot
    /// be empty).
    pub fn pack_signs(
        &self,
        x: &Buf,
        rows: usize,
        cols: usize,
    ) -> Result<CudaSlice<u8>, CudaError> {
        let (r, c) = shape(x.len(), rows, cols)?;
        let col_bytes = nq_core::sign::col_bytes(cols);
        let len = rows
            .div_ceil(16)
            .checked_mul(16 * col_bytes)
            .ok_or_else(|| CudaError::new("pack_signs: matrix too large"))?;
        let cb = int(col_bytes, "row bytes")?;
        let mut out = self
            .stream
            .alloc_zeros::<u8>(len.max(1))
            .map_err(|e| err("alloc", e))?;
        if len > 0 {
            launch!(
                self,
                "nq_pack_signs",
                grid_stride(len),
                x,
                &r,
                &c,
                &cb,
                &mut out
            );
        }
        Ok(out)
    }

    /// Copies device bytes (packed signs) back to the host and waits.
    pub fn download_bytes(&self, buf: &CudaSlice<u8>) -> Result<Vec<u8>, CudaError> {
        self.fetch(buf)
    }
}
