//! The kernels' entry points, as the emulation compiles them (their C
//! signatures are in `nq-cuda/kernels/*.cu`; `int` is `i32`). Call them only
//! inside [`crate::launch`].
#![allow(missing_docs)]

use crate::P;

extern "C" {
    // admm.cu
    pub fn nq_normalize_rows(x: P<f32>, rows: i32, cols: i32);
    pub fn nq_column_sumsq(x: P<f32>, rows: i32, cols: i32, out: P<f64>);
    pub fn nq_divide_columns(dst: P<f32>, src: P<f32>, sumsq: P<f64>, rows: i32, cols: i32);
    pub fn nq_fill_f64(v: P<f64>, n: i32, value: f64);
    pub fn nq_sumsq_f64(v: P<f64>, n: i32, out: P<f64>);
    pub fn nq_svid_u(x: P<f32>, v: P<f64>, vv: P<f64>, u: P<f64>, rows: i32, cols: i32);
    pub fn nq_svid_v(x: P<f32>, u: P<f64>, uu: P<f64>, v: P<f64>, rows: i32, cols: i32);
    pub fn nq_svid_out(x: P<f32>, u: P<f64>, v: P<f64>, out: P<f32>, rows: i32, cols: i32);
    pub fn nq_add(out: P<f32>, a: P<f32>, b: P<f32>, n: i32);
    pub fn nq_sub(out: P<f32>, a: P<f32>, b: P<f32>, n: i32);
    pub fn nq_add_penalty(rhs: P<f32>, rho: f32, z: P<f32>, u: P<f32>, n: i32);
    pub fn nq_dual_update(u: P<f32>, x: P<f32>, z: P<f32>, n: i32);
    pub fn nq_shifted_system(gram: P<f32>, sys: P<f64>, r: i32, shift: f32);
    pub fn nq_inverse_to_f32(sys: P<f64>, inverse: P<f32>, r: i32, bad: P<i32>);

    // forward.cu
    pub fn nq_rmsnorm(x: P<f32>, w: P<f32>, out: P<f32>, rows: i32, d: i32, eps: f32);
    pub fn nq_rmsnorm_inplace(x: P<f32>, w: P<f32>, rows: i32, d: i32, eps: f32);
    pub fn nq_rmsnorm_inv(x: P<f32>, inv: P<f32>, rows: i32, d: i32, eps: f32);
    pub fn nq_add_bias(y: P<f32>, b: P<f32>, rows: i32, n: i32);
    pub fn nq_rope(x: P<f32>, cos: P<f32>, sin: P<f32>, t: i32, heads: i32, half: i32);
    pub fn nq_rope_backward(dx: P<f32>, cos: P<f32>, sin: P<f32>, t: i32, heads: i32, half: i32);
    pub fn nq_attention_probs(
        q: P<f32>,
        k: P<f32>,
        probs: P<f32>,
        t: i32,
        heads: i32,
        kv_heads: i32,
        d: i32,
        scale: f32,
    );
    pub fn nq_attention(
        q: P<f32>,
        k: P<f32>,
        v: P<f32>,
        out: P<f32>,
        t: i32,
        heads: i32,
        kv_heads: i32,
        d: i32,
        scale: f32,
    );
    pub fn nq_silu_mul(out: P<f32>, g: P<f32>, u: P<f32>, n: i32);
    pub fn nq_add_assign(x: P<f32>, y: P<f32>, n: i32);

    // signs.cu
    pub fn nq_sign_matmul(
        signs: P<u8>,
        rows: i32,
        cols: i32,
        col_bytes: i32,
        x: P<f32>,
        t: i32,
        out: P<f32>,
    );
    pub fn nq_scale_columns(y: P<f32>, s: P<f32>, rows: i32, n: i32);

    // backward.cu
    pub fn nq_rmsnorm_backward(
        x: P<f32>,
        w: P<f32>,
        inv: P<f32>,
        dy: P<f32>,
        dx: P<f32>,
        rows: i32,
        d: i32,
        accumulate: i32,
    );
    pub fn nq_rmsnorm_weight_grad(
        x: P<f32>,
        inv: P<f32>,
        dy: P<f32>,
        dw: P<f32>,
        rows: i32,
        d: i32,
    );
    pub fn nq_swiglu_backward(
        gate: P<f32>,
        up: P<f32>,
        d_act: P<f32>,
        d_gate: P<f32>,
        d_up: P<f32>,
        n: i32,
    );
    pub fn nq_attention_backward_q(
        probs: P<f32>,
        d_out: P<f32>,
        k: P<f32>,
        v: P<f32>,
        ds: P<f32>,
        dq: P<f32>,
        t: i32,
        heads: i32,
        kv_heads: i32,
        d: i32,
        scale: f32,
    );
    pub fn nq_attention_backward_kv(
        probs: P<f32>,
        ds: P<f32>,
        q: P<f32>,
        d_out: P<f32>,
        dk: P<f32>,
        dv: P<f32>,
        t: i32,
        heads: i32,
        kv_heads: i32,
        d: i32,
    );

    // train.cu
    pub fn nq_signs(x: P<f32>, out: P<f32>, n: i32);
    pub fn nq_scale_rows(y: P<f32>, s: P<f32>, rows: i32, n: i32);
    pub fn nq_scale_outer(dw: P<f32>, s_post: P<f32>, s_pre: P<f32>, g: P<f32>, m: i32, n: i32);
    pub fn nq_scale_grad_post(dw: P<f32>, p: P<f32>, s_pre: P<f32>, out: P<f32>, m: i32, n: i32);
    pub fn nq_scale_grad_pre(dw: P<f32>, p: P<f32>, s_post: P<f32>, out: P<f32>, m: i32, n: i32);
    pub fn nq_adamw(
        p: P<f32>,
        g: P<f32>,
        m: P<f32>,
        v: P<f32>,
        n: i32,
        lr: f32,
        wd: f32,
        b1: f32,
        b2: f32,
        eps: f32,
        c1: f32,
        c2: f32,
    );
    pub fn nq_weighted_mse_grad(
        y: P<f32>,
        target: P<f32>,
        imp: P<f32>,
        dy: P<f32>,
        rows: i32,
        d: i32,
        norm: f64,
    );
    pub fn nq_pack_signs(x: P<f32>, rows: i32, cols: i32, col_bytes: i32, out: P<u8>);

    // stats.cu
    pub fn nq_row_norms(x: P<f32>, out: P<f32>, rows: i32, width: i32);
    pub fn nq_clipped_squares(x: P<f32>, s: P<f32>, acc: P<f64>, rows: i32, width: i32);
    pub fn nq_cross_entropy(
        z: P<f32>,
        next: P<u32>,
        g: P<f32>,
        loss: P<f64>,
        t: i32,
        vocab: i32,
        n: f64,
    );
    pub fn nq_kd_loss(
        z: P<f32>,
        ids: P<u32>,
        probs: P<f32>,
        g: P<f32>,
        loss: P<f64>,
        rows: i32,
        vocab: i32,
        k: i32,
    );
}
