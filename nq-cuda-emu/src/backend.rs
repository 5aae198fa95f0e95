//! [`EmuBackend`]: nq-host's compute-backend trait on the emulated kernels,
//! launched in the order and with the geometry `nq_cuda::Gpu` uses.

use nq_cuda::geometry::{grid_stride, per_elem, per_row, single_block};
use nq_host::backend::{
    attention_shape, cross_entropy_shape, kd_loss_shape, rope_shape, Backend, BackendError,
    BlockBackend, CpuBackend, Heads, ModelBackend, Op,
};

use crate::{ffi, launch, ops, P};

/// The CUDA backend with its kernels emulated on the CPU: every element-wise
/// and reduction step runs the `.cu` source; the products (cuBLAS on a GPU)
/// run on the CPU backend, and the Cholesky factorization and inverse
/// (cuSOLVER `potrf`/`potri`) on a plain f64 Cholesky that returns the
/// inverse the way `potri` does, in the lower triangle of a column-major
/// matrix. Buffers are host vectors.
#[derive(Default)]
pub struct EmuBackend {
    cpu: CpuBackend,
}

fn shape(len: usize, rows: usize, cols: usize) -> Result<(i32, i32), BackendError> {
    if rows.checked_mul(cols) != Some(len) {
        return Err(BackendError::Device(format!(
            "buffer of {len} values is not {rows} × {cols}"
        )));
    }
    let r = i32::try_from(rows).map_err(|_| BackendError::Device("rows over 2^31".into()))?;
    let c = i32::try_from(cols).map_err(|_| BackendError::Device("cols over 2^31".into()))?;
    Ok((r, c))
}

fn same_len(out: &[f32], a: &[f32], b: &[f32]) -> Result<i32, BackendError> {
    if a.len() != out.len() || b.len() != out.len() {
        return Err(BackendError::Device(
            "element-wise operands differ in length".into(),
        ));
    }
    i32::try_from(out.len()).map_err(|_| BackendError::Device("buffer over 2^31 values".into()))
}

/// What cuSOLVER's `Dpotrf` + `Dpotri` leave in `sys` (column-major `r × r`,
/// lower triangle used): the inverse's lower triangle, the upper triangle
/// untouched. `Err` when the matrix is not positive definite.
fn potrf_potri(sys: &mut [f64], r: usize) -> Result<(), ()> {
    // Column-major: element (i, j) at j·r + i.
    let at = |i: usize, j: usize| j * r + i;
    let mut l = vec![0.0f64; r * r];
    for j in 0..r {
        let mut d = sys[at(j, j)];
        for k in 0..j {
            d -= l[at(j, k)] * l[at(j, k)];
        }
        if d.is_nan() || d <= 0.0 {
            return Err(());
        }
        let d = d.sqrt();
        l[at(j, j)] = d;
        for i in j + 1..r {
            let mut s = sys[at(i, j)];
            for k in 0..j {
                s -= l[at(i, k)] * l[at(j, k)];
            }
            l[at(i, j)] = s / d;
        }
    }
    // inverse = L⁻ᵀ L⁻¹, column by column: solve L y = e_j, then Lᵀ x = y.
    for j in 0..r {
        let mut y = vec![0.0f64; r];
        for i in 0..r {
            let mut s = if i == j { 1.0 } else { 0.0 };
            for k in 0..i {
                s -= l[at(i, k)] * y[k];
            }
            y[i] = s / l[at(i, i)];
        }
        for i in (0..r).rev() {
            let mut s = y[i];
            for k in i + 1..r {
                s -= l[at(k, i)] * y[k];
            }
            y[i] = s / l[at(i, i)];
        }
        for (i, &v) in y.iter().enumerate().skip(j) {
            sys[at(i, j)] = v;
        }
    }
    Ok(())
}

impl Backend for EmuBackend {
    type Buf = Vec<f32>;

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>, BackendError> {
        self.cpu.upload(data)
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>, BackendError> {
        self.cpu.zeros(len)
    }

    fn download(&self, buf: &Vec<f32>, out: &mut [f32]) -> Result<(), BackendError> {
        self.cpu.download(buf, out)
    }

    fn copy(&self, dst: &mut Vec<f32>, src: &Vec<f32>) -> Result<(), BackendError> {
        self.cpu.copy(dst, src)
    }

    fn matmul(
        &self,
        c: &mut Vec<f32>,
        a: &Vec<f32>,
        b: &Vec<f32>,
        op: Op,
        shape: (usize, usize, usize),
    ) -> Result<(), BackendError> {
        self.cpu.matmul(c, a, b, op, shape)
    }

    fn normalize_rows(
        &self,
        x: &mut Vec<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<(), BackendError> {
        let (r, c) = shape(x.len(), rows, cols)?;
        if rows > 0 {
            let px = P::of(x);
            // SAFETY: x holds rows × cols values.
            unsafe { launch(per_row(rows), || ffi::nq_normalize_rows(px, r, c)) };
        }
        Ok(())
    }

    fn divide_by_column_norms(
        &self,
        dst: &mut Vec<f32>,
        src: &Vec<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<(), BackendError> {
        let (r, c) = shape(src.len(), rows, cols)?;
        shape(dst.len(), rows, cols)?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let mut sums = vec![0.0f64; cols];
        let (ps, pd, psum) = (P::c(src), P::of(dst), P::of(&mut sums));
        // SAFETY: src and dst hold rows × cols values, sums cols.
        unsafe {
            launch(per_elem(cols), || ffi::nq_column_sumsq(ps, r, c, psum));
            launch(grid_stride(rows * cols), || {
                ffi::nq_divide_columns(pd, ps, psum, r, c)
            });
        }
        Ok(())
    }

    fn svid(
        &self,
        x: &Vec<f32>,
        rows: usize,
        cols: usize,
        iters: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        let (r, c) = shape(x.len(), rows, cols)?;
        shape(out.len(), rows, cols)?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let (mut u, mut v) = (vec![0.0f64; rows], vec![0.0f64; cols]);
        let (mut vv, mut uu) = ([0.0f64], [0.0f64]);
        let (px, po) = (P::c(x), P::of(out));
        let (pu, pv, pvv, puu) = (P::of(&mut u), P::of(&mut v), P::of(&mut vv), P::of(&mut uu));
        // SAFETY: every buffer has the length its shape argument gives.
        unsafe {
            launch(per_elem(cols), || ffi::nq_fill_f64(pv, c, 1.0));
            for _ in 0..iters.max(1) {
                launch(single_block(), || ffi::nq_sumsq_f64(pv, c, pvv));
                launch(per_row(rows), || ffi::nq_svid_u(px, pv, pvv, pu, r, c));
                launch(single_block(), || ffi::nq_sumsq_f64(pu, r, puu));
                launch(per_elem(cols), || ffi::nq_svid_v(px, pu, puu, pv, r, c));
            }
            launch(grid_stride(rows * cols), || {
                ffi::nq_svid_out(px, pu, pv, po, r, c)
            });
        }
        Ok(())
    }

    fn add(&self, out: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>) -> Result<(), BackendError> {
        let n = same_len(out, a, b)?;
        let (po, pa, pb) = (P::of(out), P::c(a), P::c(b));
        // SAFETY: all three hold n values.
        unsafe { launch(grid_stride(n as usize), || ffi::nq_add(po, pa, pb, n)) };
        Ok(())
    }

    fn sub(&self, out: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>) -> Result<(), BackendError> {
        let n = same_len(out, a, b)?;
        let (po, pa, pb) = (P::of(out), P::c(a), P::c(b));
        // SAFETY: all three hold n values.
        unsafe { launch(grid_stride(n as usize), || ffi::nq_sub(po, pa, pb, n)) };
        Ok(())
    }

    fn add_penalty(
        &self,
        rhs: &mut Vec<f32>,
        rho: f32,
        z: &Vec<f32>,
        u: &Vec<f32>,
    ) -> Result<(), BackendError> {
        let n = same_len(rhs, z, u)?;
        let (pr, pz, pu) = (P::of(rhs), P::c(z), P::c(u));
        // SAFETY: all three hold n values.
        unsafe {
            launch(grid_stride(n as usize), || {
                ffi::nq_add_penalty(pr, rho, pz, pu, n)
            })
        };
        Ok(())
    }

    fn dual_update(
        &self,
        u: &mut Vec<f32>,
        x: &Vec<f32>,
        z: &Vec<f32>,
    ) -> Result<(), BackendError> {
        let n = same_len(u, x, z)?;
        let (pu, px, pz) = (P::of(u), P::c(x), P::c(z));
        // SAFETY: all three hold n values.
        unsafe {
            launch(grid_stride(n as usize), || {
                ffi::nq_dual_update(pu, px, pz, n)
            })
        };
        Ok(())
    }

    fn invert_shifted(
        &self,
        gram: &Vec<f32>,
        shift: f32,
        r: usize,
        inverse: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        if gram.len() != r * r || inverse.len() != r * r {
            return Err(BackendError::Device(
                "invert_shifted: sizes do not match r × r".into(),
            ));
        }
        if r == 0 {
            return Ok(());
        }
        let ri = i32::try_from(r).map_err(|_| BackendError::Device("rank over 2^31".into()))?;
        let mut sys = vec![0.0f64; r * r];
        let (pg, psys) = (P::c(gram), P::of(&mut sys));
        // SAFETY: gram holds r × r f32, sys r × r f64.
        unsafe {
            launch(grid_stride(r * r), || {
                ffi::nq_shifted_system(pg, psys, ri, shift)
            })
        };
        // The stand-in for potrf/potri writes only the lower triangle; the
        // upper one is poisoned so a kernel reading it would show.
        for j in 0..r {
            for i in 0..j {
                sys[j * r + i] = f64::NAN;
            }
        }
        potrf_potri(&mut sys, r)
            .map_err(|()| BackendError::Numerical("normal equations not positive definite"))?;
        let mut bad = [0i32];
        let (psys, pinv, pbad) = (P::c(&sys), P::of(inverse), P::of(&mut bad));
        // SAFETY: sys holds r × r f64, inverse r × r f32, bad one int.
        unsafe {
            launch(grid_stride(r * r), || {
                ffi::nq_inverse_to_f32(psys, pinv, ri, pbad)
            })
        };
        if bad[0] != 0 {
            return Err(BackendError::Numerical("non-finite inverse"));
        }
        Ok(())
    }
    fn signs(&self, x: &Vec<f32>, out: &mut Vec<f32>) -> Result<(), BackendError> {
        if x.len() != out.len() {
            return Err(BackendError::Device("signs: length mismatch".into()));
        }
        out.copy_from_slice(&ops::signs(x));
        Ok(())
    }

    fn scale_rows(&self, x: &mut Vec<f32>, s: &Vec<f32>) -> Result<(), BackendError> {
        let n = x.len().checked_div(s.len()).unwrap_or(0);
        shape(x.len(), s.len(), n)?;
        if !x.is_empty() {
            ops::scale_rows(x, s);
        }
        Ok(())
    }

    fn scale_columns(&self, x: &mut Vec<f32>, s: &Vec<f32>) -> Result<(), BackendError> {
        let rows = x.len().checked_div(s.len()).unwrap_or(0);
        shape(x.len(), rows, s.len())?;
        if !x.is_empty() {
            ops::per_column(x, s, true);
        }
        Ok(())
    }

    fn scale_grads(
        &self,
        dw: &Vec<f32>,
        p: &Vec<f32>,
        s_pre: &Vec<f32>,
        s_post: &Vec<f32>,
        g: &mut Vec<f32>,
        d_pre: &mut Vec<f32>,
        d_post: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        let (m, n) = (s_post.len(), s_pre.len());
        shape(dw.len(), m, n)?;
        shape(p.len(), m, n)?;
        shape(g.len(), m, n)?;
        if d_pre.len() != n || d_post.len() != m {
            return Err(BackendError::Device(
                "scale_grads: gradient lengths differ from the scales".into(),
            ));
        }
        let (og, opre, opost) = ops::scale_grads((dw, p), (s_pre, s_post));
        g.copy_from_slice(&og);
        d_pre.copy_from_slice(&opre);
        d_post.copy_from_slice(&opost);
        Ok(())
    }

    fn pack_signs(&self, x: &Vec<f32>, rows: usize, cols: usize) -> Result<Vec<u8>, BackendError> {
        let len = nq_host::backend::pack_shape(x.len(), rows, cols)?;
        let mut bytes = ops::pack_signs(x, rows, cols);
        bytes.truncate(len);
        Ok(bytes)
    }

    fn adamw(
        &self,
        p: &mut Vec<f32>,
        g: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        step: i32,
        lr: f32,
        wd: f32,
    ) -> Result<(), BackendError> {
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            return Err(BackendError::Device("adamw: length mismatch".into()));
        }
        if step < 1 {
            return Err(BackendError::Device("adamw: steps count from 1".into()));
        }
        ops::adamw(p, g, (m, v), step, lr, wd);
        Ok(())
    }
}

fn check_len(got: usize, want: usize, what: &str) -> Result<(), BackendError> {
    if got == want {
        Ok(())
    } else {
        Err(BackendError::Device(format!(
            "{what}: {got} values, not {want}"
        )))
    }
}

impl BlockBackend for EmuBackend {
    fn matmul_acc(
        &self,
        c: &mut Vec<f32>,
        a: &Vec<f32>,
        b: &Vec<f32>,
        op: Op,
        shape: (usize, usize, usize),
    ) -> Result<(), BackendError> {
        // cuBLAS's stand-in, as `matmul`.
        self.cpu.matmul_acc(c, a, b, op, shape)
    }
    fn rmsnorm(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        eps: f32,
        out: &mut Vec<f32>,
        inv: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        shape(x.len(), inv.len(), w.len())?;
        check_len(out.len(), x.len(), "rmsnorm out")?;
        if !x.is_empty() {
            *out = ops::rmsnorm(x, w, eps);
            *inv = ops::rmsnorm_inv(x, w.len(), eps);
        }
        Ok(())
    }

    fn rmsnorm_backward(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        inv: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        shape(x.len(), inv.len(), w.len())?;
        check_len(dy.len(), x.len(), "rmsnorm dy")?;
        check_len(dx.len(), x.len(), "rmsnorm dx")?;
        if !x.is_empty() {
            ops::rmsnorm_backward((x, w, inv), dy, dx, accumulate, None);
        }
        Ok(())
    }

    fn add_bias(&self, y: &mut Vec<f32>, b: &Vec<f32>) -> Result<(), BackendError> {
        let rows = y.len().checked_div(b.len()).unwrap_or(0);
        shape(y.len(), rows, b.len())?;
        if !y.is_empty() {
            ops::per_column(y, b, false);
        }
        Ok(())
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        cos: &Vec<f32>,
        sin: &Vec<f32>,
        t: usize,
        heads: usize,
        inverse: bool,
    ) -> Result<(), BackendError> {
        rope_shape(x.len(), t, heads, (cos.len(), sin.len()))?;
        ops::rope(x, cos, sin, t, heads, inverse);
        Ok(())
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &mut Vec<f32>,
        probs: &mut Vec<f32>,
        t: usize,
        heads: Heads,
    ) -> Result<(), BackendError> {
        attention_shape(
            t,
            heads,
            &[q.len(), out.len()],
            &[k.len(), v.len()],
            probs.len(),
        )?;
        *out = ops::attention(q, k, v, t, heads);
        *probs = ops::attention_probs(q, k, t, heads);
        Ok(())
    }

    fn attention_backward(
        &self,
        (q, k, v): (&Vec<f32>, &Vec<f32>, &Vec<f32>),
        probs: &Vec<f32>,
        d_out: &Vec<f32>,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        t: usize,
        heads: Heads,
    ) -> Result<(), BackendError> {
        attention_shape(
            t,
            heads,
            &[q.len(), d_out.len(), dq.len()],
            &[k.len(), v.len(), dk.len(), dv.len()],
            probs.len(),
        )?;
        let g = ops::attention_backward((q, k, v, probs), d_out, t, heads);
        *dq = g.dq;
        *dk = g.dk;
        *dv = g.dv;
        Ok(())
    }

    fn silu_mul(&self, out: &mut Vec<f32>, g: &Vec<f32>, u: &Vec<f32>) -> Result<(), BackendError> {
        same_len(out, g, u)?;
        *out = ops::silu_mul(g, u);
        Ok(())
    }

    fn swiglu_backward(
        &self,
        g: &Vec<f32>,
        u: &Vec<f32>,
        d_act: &Vec<f32>,
        dg: &mut Vec<f32>,
        du: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        same_len(d_act, g, u)?;
        same_len(d_act, dg, du)?;
        (*dg, *du) = ops::swiglu_backward(g, u, d_act);
        Ok(())
    }

    fn add_assign(&self, x: &mut Vec<f32>, y: &Vec<f32>) -> Result<(), BackendError> {
        check_len(y.len(), x.len(), "add_assign")?;
        ops::add_assign(x, y);
        Ok(())
    }

    fn weighted_mse_grad(
        &self,
        y: &Vec<f32>,
        target: &Vec<f32>,
        imp: &Vec<f32>,
        norm: f64,
        dy: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        let rows = y.len().checked_div(imp.len()).unwrap_or(0);
        shape(y.len(), rows, imp.len())?;
        same_len(y, target, dy)?;
        if !y.is_empty() {
            *dy = ops::weighted_mse_grad(y, target, imp, norm);
        }
        Ok(())
    }
}

impl ModelBackend for EmuBackend {
    fn row_norms(&self, x: &Vec<f32>, width: usize) -> Result<Vec<f32>, BackendError> {
        if width == 0 {
            return Err(BackendError::Device("row_norms: zero width".into()));
        }
        shape(x.len(), x.len() / width, width)?;
        Ok(ops::row_norms(x, width))
    }

    fn add_clipped_squares(
        &self,
        x: &Vec<f32>,
        scales: &[f32],
        acc: &mut [f64],
    ) -> Result<(), BackendError> {
        shape(x.len(), scales.len(), acc.len())?;
        ops::add_clipped_squares(x, scales, acc);
        Ok(())
    }

    fn cross_entropy(
        &self,
        logits: &Vec<f32>,
        tokens: &[u32],
        vocab: usize,
        dlogits: &mut Vec<f32>,
    ) -> Result<f64, BackendError> {
        cross_entropy_shape((logits.len(), dlogits.len()), tokens, vocab)?;
        let (loss, g) = ops::cross_entropy(logits, tokens, vocab);
        *dlogits = g;
        Ok(loss)
    }

    fn kd_loss(
        &self,
        logits: &Vec<f32>,
        (ids, probs): (&[u32], &[f32]),
        k: usize,
        vocab: usize,
        dlogits: &mut Vec<f32>,
    ) -> Result<f64, BackendError> {
        kd_loss_shape((logits.len(), dlogits.len()), (ids, probs), k, vocab)?;
        let (loss, g) = ops::kd_loss(logits, ids, probs, k, vocab);
        *dlogits = g;
        Ok(loss)
    }
}

#[cfg(test)]
mod tests {
    use super::potrf_potri;

    #[test]
    fn potri_stand_in_inverts_a_small_spd_matrix() {
        // A = [[4, 2], [2, 3]] (column-major = row-major, symmetric);
        // A⁻¹ = [[3, −2], [−2, 4]] / 8.
        let mut s = vec![4.0, 2.0, 2.0, 3.0];
        s[2] = f64::NAN; // upper triangle is not read
        potrf_potri(&mut s, 2).unwrap();
        assert!((s[0] - 3.0 / 8.0).abs() < 1e-15);
        assert!((s[1] + 2.0 / 8.0).abs() < 1e-15);
        assert!((s[3] - 4.0 / 8.0).abs() < 1e-15);
        assert!(s[2].is_nan(), "upper triangle left alone");
        let mut neg = vec![-1.0, 0.0, 0.0, -1.0];
        assert!(potrf_potri(&mut neg, 2).is_err());
    }
}
