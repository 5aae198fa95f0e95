//! The reference [`Backend`]: host vectors, the `gemm` crate's products
//! (multi-threaded over rayon, output split only, so deterministic), f64
//! reductions and a faer f64 Cholesky.

use std::cell::RefCell;

use faer::dyn_stack::{GlobalPodBuffer, PodStack};
use faer::linalg::cholesky::llt::compute::{cholesky_in_place, cholesky_in_place_req};
use faer::linalg::cholesky::llt::inverse::{invert_lower_in_place, invert_lower_in_place_req};
use faer::Parallelism;

use rayon::prelude::*;

use super::{
    attention_shape, rope_shape, Backend, BackendError, BlockBackend, Heads, ModelBackend, Op,
};
use crate::linalg::{matmul_nn, matmul_nt, matmul_tn};
use crate::quant::factor::sign1;

/// Scratch reused across calls (one backend value per factorization).
#[derive(Default)]
struct Scratch {
    u: Vec<f64>,
    v: Vec<f64>,
    system: Vec<f64>,
    stack: Option<(usize, GlobalPodBuffer)>,
}

/// The CPU backend. Not `Sync` (it keeps scratch): make one per thread.
#[derive(Default)]
pub struct CpuBackend {
    scratch: RefCell<Scratch>,
}

fn check(len: usize, rows: usize, cols: usize, what: &'static str) -> Result<(), BackendError> {
    if rows.checked_mul(cols) == Some(len) {
        Ok(())
    } else {
        Err(BackendError::Device(format!(
            "{what}: buffer of {len} values is not {rows} × {cols}"
        )))
    }
}

fn same_len(a: usize, b: usize, c: usize) -> Result<(), BackendError> {
    if a == b && b == c {
        Ok(())
    } else {
        Err(BackendError::Device(
            "element-wise operands differ in length".into(),
        ))
    }
}

/// Euclidean norm of each column of a row-major `rows × cols` matrix, with
/// zero norms replaced by 1 (a zero column stays zero).
pub(crate) fn column_norms(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut acc = vec![0.0f64; cols];
    for row in x.chunks(cols).take(rows) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += f64::from(v) * f64::from(v);
        }
    }
    acc.iter()
        .map(|&s| if s > 0.0 { s.sqrt() as f32 } else { 1.0 })
        .collect()
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>, BackendError> {
        Ok(data.to_vec())
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>, BackendError> {
        Ok(vec![0.0; len])
    }

    fn download(&self, buf: &Vec<f32>, out: &mut [f32]) -> Result<(), BackendError> {
        same_len(buf.len(), out.len(), out.len())?;
        out.copy_from_slice(buf);
        Ok(())
    }

    fn copy(&self, dst: &mut Vec<f32>, src: &Vec<f32>) -> Result<(), BackendError> {
        same_len(dst.len(), src.len(), src.len())?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn matmul(
        &self,
        c: &mut Vec<f32>,
        a: &Vec<f32>,
        b: &Vec<f32>,
        op: Op,
        (m, n, k): (usize, usize, usize),
    ) -> Result<(), BackendError> {
        check(c.len(), m, n, "matmul output")?;
        check(a.len(), m, k, "matmul lhs")?;
        check(b.len(), k, n, "matmul rhs")?;
        match op {
            Op::Nt => matmul_nt(c, a, b, m, n, k, false),
            Op::Nn => matmul_nn(c, a, b, m, n, k, false),
            Op::Tn => matmul_tn(c, a, b, m, n, k, false),
        }
        Ok(())
    }

    fn normalize_rows(
        &self,
        x: &mut Vec<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<(), BackendError> {
        check(x.len(), rows, cols, "normalize_rows")?;
        for row in x.chunks_mut(cols.max(1)) {
            let norm = row
                .iter()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum::<f64>();
            if norm > 0.0 {
                let inv = (1.0 / norm.sqrt()) as f32;
                row.iter_mut().for_each(|x| *x *= inv);
            }
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
        check(src.len(), rows, cols, "divide_by_column_norms")?;
        check(dst.len(), rows, cols, "divide_by_column_norms")?;
        let norms = column_norms(src, rows, cols);
        for (xrow, arow) in dst.chunks_mut(cols.max(1)).zip(src.chunks(cols.max(1))) {
            for ((x, &a), &c) in xrow.iter_mut().zip(arow).zip(&norms) {
                *x = a / c;
            }
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
        check(x.len(), rows, cols, "svid")?;
        check(out.len(), rows, cols, "svid")?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let mut s = self.scratch.borrow_mut();
        let Scratch { u, v, .. } = &mut *s;
        u.resize(rows, 0.0);
        v.clear();
        v.resize(cols, 1.0);
        for _ in 0..iters.max(1) {
            let vv: f64 = v.iter().map(|a| a * a).sum();
            for (ui, row) in u.iter_mut().zip(x.chunks(cols)) {
                let dot: f64 = row
                    .iter()
                    .zip(v.iter())
                    .map(|(&a, &b)| f64::from(a.abs()) * b)
                    .sum();
                *ui = if vv > 0.0 { dot / vv } else { 0.0 };
            }
            let uu: f64 = u.iter().map(|a| a * a).sum();
            v.fill(0.0);
            for (&ui, row) in u.iter().zip(x.chunks(cols)) {
                for (vk, &a) in v.iter_mut().zip(row) {
                    *vk += ui * f64::from(a.abs());
                }
            }
            let inv = if uu > 0.0 { 1.0 / uu } else { 0.0 };
            v.iter_mut().for_each(|a| *a *= inv);
        }
        for ((orow, xrow), &ui) in out.chunks_mut(cols).zip(x.chunks(cols)).zip(u.iter()) {
            for ((o, &a), &vk) in orow.iter_mut().zip(xrow).zip(v.iter()) {
                *o = sign1(a) * (ui * vk) as f32;
            }
        }
        Ok(())
    }

    fn add(&self, out: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>) -> Result<(), BackendError> {
        same_len(out.len(), a.len(), b.len())?;
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = x + y;
        }
        Ok(())
    }

    fn sub(&self, out: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>) -> Result<(), BackendError> {
        same_len(out.len(), a.len(), b.len())?;
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = x - y;
        }
        Ok(())
    }

    fn add_penalty(
        &self,
        rhs: &mut Vec<f32>,
        rho: f32,
        z: &Vec<f32>,
        u: &Vec<f32>,
    ) -> Result<(), BackendError> {
        same_len(rhs.len(), z.len(), u.len())?;
        if rho == 0.0 {
            return Ok(());
        }
        for ((o, &zv), &uv) in rhs.iter_mut().zip(z).zip(u) {
            *o += rho * (zv - uv);
        }
        Ok(())
    }

    fn dual_update(
        &self,
        u: &mut Vec<f32>,
        x: &Vec<f32>,
        z: &Vec<f32>,
    ) -> Result<(), BackendError> {
        same_len(u.len(), x.len(), z.len())?;
        for ((o, &xv), &zv) in u.iter_mut().zip(x).zip(z) {
            *o += xv - zv;
        }
        Ok(())
    }

    fn invert_shifted(
        &self,
        gram: &Vec<f32>,
        shift: f32,
        r: usize,
        inverse: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        check(gram.len(), r, r, "invert_shifted")?;
        check(inverse.len(), r, r, "invert_shifted")?;
        let mut s = self.scratch.borrow_mut();
        let Scratch { system, stack, .. } = &mut *s;
        if stack.as_ref().is_none_or(|(n, _)| *n != r) {
            let req = cholesky_in_place_req::<f64>(r, Parallelism::None, Default::default())
                .and_then(|c| {
                    invert_lower_in_place_req::<f64>(r, Parallelism::None).map(|i| c.or(i))
                })
                .map_err(|_| BackendError::Numerical("cholesky workspace size overflows"))?;
            *stack = Some((r, GlobalPodBuffer::new(req)));
        }
        let (_, buf) = stack.as_mut().expect("set above");
        system.resize(r * r, 0.0);
        // Lower triangle (row-major i ≥ j) = upper triangle column-major;
        // faer only reads the lower triangle of its column-major view, so
        // write the symmetric matrix fully.
        for i in 0..r {
            for j in 0..=i {
                let g = f64::from(gram[i * r + j]);
                system[i * r + j] = g;
                system[j * r + i] = g;
            }
            system[i * r + i] += f64::from(shift);
        }
        let mut mat = faer::mat::from_column_major_slice_mut::<f64, _, _>(system, r, r);
        let pod = PodStack::new(buf);
        cholesky_in_place(
            mat.as_mut(),
            Default::default(),
            Parallelism::None,
            pod,
            Default::default(),
        )
        .map_err(|_| BackendError::Numerical("normal equations not positive definite"))?;
        invert_lower_in_place(mat.as_mut(), Parallelism::None, pod);
        // The lower triangle (column-major) now holds the inverse.
        for j in 0..r {
            for i in j..r {
                let x = system[j * r + i] as f32;
                if !x.is_finite() {
                    return Err(BackendError::Numerical("non-finite inverse"));
                }
                inverse[i * r + j] = x;
                inverse[j * r + i] = x;
            }
        }
        Ok(())
    }

    fn signs(&self, x: &Vec<f32>, out: &mut Vec<f32>) -> Result<(), BackendError> {
        same_len(x.len(), out.len(), out.len())?;
        for (o, &v) in out.iter_mut().zip(x) {
            *o = sign1(v);
        }
        Ok(())
    }

    fn scale_rows(&self, x: &mut Vec<f32>, s: &Vec<f32>) -> Result<(), BackendError> {
        let n = x.len().checked_div(s.len()).unwrap_or(0);
        check(x.len(), s.len(), n, "scale_rows")?;
        for (row, &f) in x.chunks_mut(n.max(1)).zip(s) {
            row.iter_mut().for_each(|v| *v *= f);
        }
        Ok(())
    }

    fn scale_columns(&self, x: &mut Vec<f32>, s: &Vec<f32>) -> Result<(), BackendError> {
        let rows = x.len().checked_div(s.len()).unwrap_or(0);
        check(x.len(), rows, s.len(), "scale_columns")?;
        for row in x.chunks_mut(s.len().max(1)) {
            row.iter_mut().zip(s).for_each(|(v, &f)| *v *= f);
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
        check(dw.len(), m, n, "scale_grads dW")?;
        check(p.len(), m, n, "scale_grads P")?;
        check(g.len(), m, n, "scale_grads g")?;
        same_len(d_pre.len(), n, n)?;
        same_len(d_post.len(), m, m)?;
        for (i, (gr, dr)) in g.chunks_mut(n.max(1)).zip(dw.chunks(n.max(1))).enumerate() {
            for ((o, &d), &si) in gr.iter_mut().zip(dr).zip(s_pre) {
                *o = d * (s_post[i] * si);
            }
        }
        let (pre, post) = scale_grads_host(dw, p, s_pre, s_post);
        d_pre.copy_from_slice(&pre);
        d_post.copy_from_slice(&post);
        Ok(())
    }

    fn pack_signs(&self, x: &Vec<f32>, rows: usize, cols: usize) -> Result<Vec<u8>, BackendError> {
        super::pack_shape(x.len(), rows, cols)?;
        let s = nq_core::SignMatrix::from_fn(rows, cols, |i, j| x[i * cols + j] < 0.0);
        Ok(s.as_bytes().to_vec())
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
        same_len(p.len(), g.len(), m.len())?;
        same_len(p.len(), v.len(), v.len())?;
        if step < 1 {
            return Err(BackendError::Device("adamw: steps count from 1".into()));
        }
        adamw_host(p, g, (m, v), step, lr, wd);
        Ok(())
    }
}

/// The host block functions (`model/forward.rs`, `model/backward.rs`) on
/// backend buffers: `DeviceBlock<CpuBackend>` computes exactly what
/// `block_forward` / `block_backward` compute, bit for bit, which is how
/// the device reconstruction's orchestration is tested against the host's.
impl BlockBackend for CpuBackend {
    fn matmul_acc(
        &self,
        c: &mut Vec<f32>,
        a: &Vec<f32>,
        b: &Vec<f32>,
        op: Op,
        (m, n, k): (usize, usize, usize),
    ) -> Result<(), BackendError> {
        check(c.len(), m, n, "matmul output")?;
        check(a.len(), m, k, "matmul lhs")?;
        check(b.len(), k, n, "matmul rhs")?;
        match op {
            Op::Nt => matmul_nt(c, a, b, m, n, k, true),
            Op::Nn => matmul_nn(c, a, b, m, n, k, true),
            Op::Tn => matmul_tn(c, a, b, m, n, k, true),
        }
        Ok(())
    }

    fn rmsnorm(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        eps: f32,
        out: &mut Vec<f32>,
        inv: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        check(x.len(), inv.len(), w.len(), "rmsnorm")?;
        same_len(x.len(), out.len(), out.len())?;
        crate::model::forward::rmsnorm(x, w, eps, out, inv);
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
        check(x.len(), inv.len(), w.len(), "rmsnorm_backward")?;
        same_len(x.len(), dy.len(), dx.len())?;
        crate::model::backward::rmsnorm_backward(x, w, inv, dy, dx, accumulate, None);
        Ok(())
    }

    fn add_bias(&self, y: &mut Vec<f32>, b: &Vec<f32>) -> Result<(), BackendError> {
        let rows = y.len().checked_div(b.len()).unwrap_or(0);
        check(y.len(), rows, b.len(), "add_bias")?;
        crate::model::forward::add_bias(y, b);
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
        let half = rope_shape(x.len(), t, heads, (cos.len(), sin.len()))?;
        crate::model::forward::rotate_heads(x, (cos, sin), half, heads, inverse);
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
        (*out, *probs) = crate::model::forward::attention_heads(q, k, v, heads, t);
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
        (*dq, *dk, *dv) =
            crate::model::backward::attention_backward_heads((q, k, v), probs, d_out, heads, t);
        Ok(())
    }

    fn silu_mul(&self, out: &mut Vec<f32>, g: &Vec<f32>, u: &Vec<f32>) -> Result<(), BackendError> {
        same_len(out.len(), g.len(), u.len())?;
        crate::model::forward::silu_mul(out, g, u);
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
        same_len(d_act.len(), g.len(), u.len())?;
        same_len(d_act.len(), dg.len(), du.len())?;
        (*dg, *du) = crate::model::backward::swiglu_backward(g, u, d_act);
        Ok(())
    }

    fn add_assign(&self, x: &mut Vec<f32>, y: &Vec<f32>) -> Result<(), BackendError> {
        same_len(x.len(), y.len(), y.len())?;
        crate::model::forward::add_into(x, y);
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
        check(y.len(), rows, imp.len(), "weighted_mse_grad")?;
        same_len(y.len(), target.len(), dy.len())?;
        if !y.is_empty() {
            *dy = crate::quant::recon::weighted_mse_with(y, target, imp, norm).1;
        }
        Ok(())
    }
}

/// The host's own statistics reductions and losses
/// (`quant::stats`, `model::backward`, `quant::kd`), so that a device run
/// on this backend is the host run.
impl ModelBackend for CpuBackend {
    fn row_norms(&self, x: &Vec<f32>, width: usize) -> Result<Vec<f32>, BackendError> {
        if width == 0 {
            return Err(BackendError::Device("row_norms: zero width".into()));
        }
        check(x.len(), x.len() / width, width, "row_norms")?;
        Ok(crate::quant::stats::row_norms_host(x, width))
    }

    fn add_clipped_squares(
        &self,
        x: &Vec<f32>,
        scales: &[f32],
        acc: &mut [f64],
    ) -> Result<(), BackendError> {
        check(x.len(), scales.len(), acc.len(), "add_clipped_squares")?;
        crate::quant::stats::add_clipped_squares_host(x, scales, acc);
        Ok(())
    }

    fn cross_entropy(
        &self,
        logits: &Vec<f32>,
        tokens: &[u32],
        vocab: usize,
        dlogits: &mut Vec<f32>,
    ) -> Result<f64, BackendError> {
        super::cross_entropy_shape((logits.len(), dlogits.len()), tokens, vocab)?;
        let (loss, g) = crate::model::backward::loss_and_dlogits(logits, tokens, vocab);
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
        super::kd_loss_shape((logits.len(), dlogits.len()), (ids, probs), k, vocab)?;
        let (loss, g) = crate::quant::kd::kd_loss(logits, (ids, probs), vocab, k);
        *dlogits = g;
        Ok(loss)
    }
}

/// Scale gradients of a factorized layer from `dw = ∂L/∂Ŵ` and `p = U·V`
/// (`m × n`): `(∂/∂s_pre, ∂/∂s_post)`, each product in f32 and each sum in
/// f64 by one thread (deterministic).
pub(crate) fn scale_grads_host(
    dw: &[f32],
    p: &[f32],
    s_pre: &[f32],
    s_post: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let (m, n) = (s_post.len(), s_pre.len());
    let post: Vec<f32> = (0..m)
        .into_par_iter()
        .map(|i| {
            let (dwr, pr) = (&dw[i * n..(i + 1) * n], &p[i * n..(i + 1) * n]);
            dwr.iter()
                .zip(pr)
                .zip(s_pre)
                .map(|((&d, &pp), &si)| f64::from(d * pp * si))
                .sum::<f64>() as f32
        })
        .collect();
    let pre: Vec<f32> = (0..n)
        .into_par_iter()
        .map(|j| {
            (0..m)
                .map(|i| f64::from(dw[i * n + j] * p[i * n + j] * s_post[i]))
                .sum::<f64>() as f32
        })
        .collect();
    (pre, post)
}

/// One AdamW step (decoupled weight decay) on the host, step `t` from 1:
/// `m ← β1 m + (1−β1) g`, `v ← β2 v + (1−β2) g²`,
/// `p ← p − lr (m̂ / (√v̂ + ε) + wd p)`. Element-wise, so the result does
/// not depend on the thread count.
pub(crate) fn adamw_host(
    p: &mut [f32],
    g: &[f32],
    (m, v): (&mut [f32], &mut [f32]),
    t: i32,
    lr: f32,
    wd: f32,
) {
    use nq_cuda::{ADAM_BETA1 as B1, ADAM_BETA2 as B2, ADAM_EPS as EPS};
    let c1 = 1.0 - B1.powi(t);
    let c2 = 1.0 - B2.powi(t);
    p.par_iter_mut()
        .zip(g.par_iter())
        .zip(m.par_iter_mut().zip(v.par_iter_mut()))
        .for_each(|((p, &g), (m, v))| {
            *m = B1 * *m + (1.0 - B1) * g;
            *v = B2 * *v + (1.0 - B2) * g * g;
            let upd = (*m / c1) / ((*v / c2).sqrt() + EPS);
            *p -= lr * (upd + wd * *p);
        });
}
