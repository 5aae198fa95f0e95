//! The float operations of a decoder step, written once for the runtime:
//! RMSNorm, RoPE, SiLU, row-table dot products and the dense fallback of a
//! linear layer. They follow nq-host's f32 reference (`model::forward`)
//! operation for operation where that matters for agreement (f64 mean of
//! squares in RMSNorm, f64 RoPE angles, f64 softmax sum).

use half::f16;

use crate::blob::Embedding;
use crate::layers::{DenseDtype, Linear, RowBits};
use crate::DenseTensor;

/// `out = x / rms(x) ⊙ w` for one row (`x`, `out` and `w` of equal length).
pub(crate) fn rmsnorm_row(x: &[f32], w: &DenseTensor<&[u8]>, eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
    let inv = (1.0 / libm::sqrt(ms + f64::from(eps))) as f32;
    for (j, (o, &xv)) in out.iter_mut().zip(x).enumerate() {
        *o = xv * inv * w.get_flat(j);
    }
}

/// RMSNorm of every `w.len()`-wide chunk of `x`, in place (qwen3 q/k norm).
pub(crate) fn head_norm_in_place(x: &mut [f32], w: &DenseTensor<&[u8]>, eps: f32) {
    let d = w.len();
    for head in x.chunks_exact_mut(d) {
        let ms = head
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            / d as f64;
        let inv = (1.0 / libm::sqrt(ms + f64::from(eps))) as f32;
        for (j, v) in head.iter_mut().enumerate() {
            *v = *v * inv * w.get_flat(j);
        }
    }
}

/// Fills `cs` (`head_dim` floats: cos of each frequency, then sin) for
/// position `pos`: angle `pos · θ^(−2i/D)`, computed in f64.
pub(crate) fn rope_angles(pos: usize, theta: f32, cs: &mut [f32]) {
    let d = cs.len();
    let half = d / 2;
    let (cos, sin) = cs.split_at_mut(half);
    for i in 0..half {
        let freq = libm::pow(f64::from(theta), -2.0 * i as f64 / d as f64);
        let a = pos as f64 * freq;
        cos[i] = libm::cos(a) as f32;
        sin[i] = libm::sin(a) as f32;
    }
}

/// Rotates every head of one row ("rotate halves", Hugging Face order).
pub(crate) fn rope_row(row: &mut [f32], cs: &[f32]) {
    let d = cs.len();
    let half = d / 2;
    let (cos, sin) = cs.split_at(half);
    for head in row.chunks_exact_mut(d) {
        let (lo, hi) = head.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (lo[i], hi[i]);
            lo[i] = a * cos[i] - b * sin[i];
            hi[i] = b * cos[i] + a * sin[i];
        }
    }
}

/// SiLU: `x · σ(x)`.
#[inline]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + libm::expf(-x))
}

/// `Σ a_j b_j` in f32, 4 independent accumulators.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Row `i` of a dense table dotted with `x` (`x.len() == cols`).
fn dense_row_dot(t: &DenseTensor<&[u8]>, i: usize, x: &[f32], buf: &mut [f32]) -> f32 {
    let n = t.cols();
    match t.dtype() {
        DenseDtype::F32 => {
            let row = &t.as_bytes()[i * n * 4..(i + 1) * n * 4];
            let mut acc = 0.0f32;
            for (b, &xv) in row.chunks_exact(4).zip(x) {
                acc += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * xv;
            }
            acc
        }
        DenseDtype::F16 => {
            let row = &t.as_bytes()[i * n * 2..(i + 1) * n * 2];
            // Convert in chunks of `buf`, then an unrolled f32 dot.
            let mut acc = 0.0f32;
            let chunk = buf.len().max(1);
            for (bytes, xs) in row.chunks(chunk * 2).zip(x.chunks(chunk)) {
                let m = xs.len();
                for (o, b) in buf[..m].iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
                acc += dot(&buf[..m], xs);
            }
            acc
        }
    }
}

/// Row `i` of a table dotted with `x`; `buf` is a small conversion buffer.
pub(crate) fn table_row_dot(e: &Embedding<'_>, i: usize, x: &[f32], buf: &mut [f32]) -> f32 {
    match e {
        Embedding::Dense(t) => dense_row_dot(t, i, x, buf),
        Embedding::RowQuant(q) => {
            let n = q.cols();
            let rb = q.bits().row_bytes(n);
            let row = &q.codes()[i * rb..(i + 1) * rb];
            let mut acc = 0.0f32;
            match q.bits() {
                RowBits::I8 => {
                    for (&c, &xv) in row.iter().zip(x) {
                        acc += f32::from(c as i8) * xv;
                    }
                }
                RowBits::Q4 => {
                    for (j, &xv) in x.iter().enumerate() {
                        let byte = row[j / 2];
                        let nib = if j % 2 == 0 { byte & 0x0F } else { byte >> 4 };
                        acc += f32::from(nib as i8 - 8) * xv;
                    }
                }
            }
            q.scales().get(i) * acc
        }
    }
}

/// `y = W x` for every row of a table (an LM head that is a table).
pub(crate) fn table_matvec(e: &Embedding<'_>, x: &[f32], y: &mut [f32], buf: &mut [f32]) {
    for (i, yi) in y.iter_mut().enumerate() {
        *yi = table_row_dot(e, i, x, buf);
    }
}

/// Scratch floats any quantized linear `m × n` (any rank) needs for `batch`
/// tokens: `FactorizedLinear::forward_scratch_len` at the largest rank,
/// which also covers `BinaryLinear`.
pub(crate) fn linear_scratch_bound(m: usize, n: usize, batch: usize) -> Option<usize> {
    use crate::kernels::sign_product_scratch_len as sp;
    let r = m.min(n);
    let sign = sp(r, n, batch).max(sp(m, r, batch));
    n.checked_add(m.checked_mul(2)?)?
        .checked_add(batch.checked_mul(n.checked_add(r)?)?)?
        .checked_add(sign)
}

/// The scratch a given linear needs for `batch` tokens.
pub(crate) fn linear_scratch(l: &Linear<'_>, batch: usize) -> usize {
    match l {
        Linear::Factorized(f) => f.forward_scratch_len(batch),
        Linear::Binary(b) => b.forward_scratch_len(batch),
        Linear::Dense(_) => 0,
    }
}

/// `y = W x (+ b)` for `batch` rows of `x` through the fast kernels.
pub(crate) fn linear_forward(
    l: &Linear<'_>,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    scratch: &mut [f32],
) {
    match l {
        Linear::Factorized(f) => f.forward(x, batch, y, scratch),
        Linear::Binary(b) => b.forward(x, batch, y, scratch),
        Linear::Dense(d) => {
            let (m, n) = (d.rows(), d.cols());
            let e = Embedding::Dense(*d);
            let _ = scratch;
            let mut buf = [0.0f32; 64];
            for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(m)) {
                table_matvec(&e, xr, yr, &mut buf);
            }
        }
    }
}
