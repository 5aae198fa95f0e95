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
    pub fn nq_add_bias(y: P<f32>, b: P<f32>, rows: i32, n: i32);
    pub fn nq_rope(x: P<f32>, cos: P<f32>, sin: P<f32>, t: i32, heads: i32, half: i32);
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
}
