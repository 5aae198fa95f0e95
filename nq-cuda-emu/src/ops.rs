//! The forward, backward and training operations of `nq_cuda::Gpu` on host
//! slices, each launching the emulated kernels as the `Gpu` method does
//! (same kernels, order and geometry; shapes are asserted, not returned as
//! errors: these are test helpers). Outputs are returned.

use nq_cuda::geometry::{self, grid_stride, per_elem, per_row, sign_matmul as sign_cfg};
use nq_cuda::{ADAM_BETA1, ADAM_BETA2, ADAM_EPS};

use crate::{ffi, launch, P};

fn i(v: usize) -> i32 {
    i32::try_from(v).expect("shape fits the kernels' int")
}

/// `Gpu::rmsnorm`: `x / rms(x) ⊙ w`, rows of `w.len()`.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let (d, rows) = (w.len(), x.len() / w.len());
    assert_eq!(rows * d, x.len());
    let mut out = vec![0.0f32; x.len()];
    let (px, pw, po) = (P::c(x), P::c(w), P::of(&mut out));
    // SAFETY: x and out hold rows × d values, w d.
    unsafe {
        launch(per_row(rows), || {
            ffi::nq_rmsnorm(px, pw, po, i(rows), i(d), eps)
        })
    };
    out
}

/// `Gpu::rmsnorm_in_place`.
pub fn rmsnorm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let (d, rows) = (w.len(), x.len() / w.len());
    assert_eq!(rows * d, x.len());
    let (px, pw) = (P::of(x), P::c(w));
    // SAFETY: x holds rows × d values, w d.
    unsafe {
        launch(per_row(rows), || {
            ffi::nq_rmsnorm_inplace(px, pw, i(rows), i(d), eps)
        })
    };
}

/// `Gpu::rmsnorm_inv`: `1 / rms` of each row of `x` (`rows × d`).
pub fn rmsnorm_inv(x: &[f32], d: usize, eps: f32) -> Vec<f32> {
    let rows = x.len() / d;
    assert_eq!(rows * d, x.len());
    let mut inv = vec![0.0f32; rows];
    let (px, pi) = (P::c(x), P::of(&mut inv));
    // SAFETY: x holds rows × d values, inv rows.
    unsafe {
        launch(per_row(rows), || {
            ffi::nq_rmsnorm_inv(px, pi, i(rows), i(d), eps)
        })
    };
    inv
}

/// `Gpu::rmsnorm_backward` into `dx` (added to with `accumulate`) and, when
/// given, `dw` (added to).
pub fn rmsnorm_backward(
    (x, w, inv): (&[f32], &[f32], &[f32]),
    dy: &[f32],
    dx: &mut [f32],
    accumulate: bool,
    dw: Option<&mut [f32]>,
) {
    let (d, rows) = (w.len(), inv.len());
    assert!(x.len() == rows * d && dy.len() == x.len() && dx.len() == x.len());
    let (px, pw, pi, pdy, pdx) = (P::c(x), P::c(w), P::c(inv), P::c(dy), P::of(dx));
    let acc = i32::from(accumulate);
    // SAFETY: x, dy, dx hold rows × d values, w d, inv rows.
    unsafe {
        launch(per_row(rows), || {
            ffi::nq_rmsnorm_backward(px, pw, pi, pdy, pdx, i(rows), i(d), acc)
        });
    }
    if let Some(dw) = dw {
        assert_eq!(dw.len(), d);
        let pdw = P::of(dw);
        // SAFETY: as above, dw d.
        unsafe {
            launch(per_elem(d), || {
                ffi::nq_rmsnorm_weight_grad(px, pi, pdy, pdw, i(rows), i(d))
            });
        }
    }
}

/// `Gpu::silu_mul`.
pub fn silu_mul(g: &[f32], u: &[f32]) -> Vec<f32> {
    assert_eq!(g.len(), u.len());
    let n = g.len();
    let mut out = vec![0.0f32; n];
    let (po, pg, pu) = (P::of(&mut out), P::c(g), P::c(u));
    // SAFETY: all three hold n values.
    unsafe { launch(grid_stride(n), || ffi::nq_silu_mul(po, pg, pu, i(n))) };
    out
}

/// `Gpu::swiglu_backward`: `(∂gate, ∂up)`.
pub fn swiglu_backward(gate: &[f32], up: &[f32], d_act: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let n = d_act.len();
    assert!(gate.len() == n && up.len() == n);
    let (mut dg, mut du) = (vec![0.0f32; n], vec![0.0f32; n]);
    let (pg, pu, pda) = (P::c(gate), P::c(up), P::c(d_act));
    let (pdg, pdu) = (P::of(&mut dg), P::of(&mut du));
    // SAFETY: all five hold n values.
    unsafe {
        launch(grid_stride(n), || {
            ffi::nq_swiglu_backward(pg, pu, pda, pdg, pdu, i(n))
        })
    };
    (dg, du)
}

/// `Gpu::rope` (`inverse = false`) or `Gpu::rope_backward` on `x`
/// (`t × heads·2·half`) with `t × half` angle tables.
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], t: usize, heads: usize, inverse: bool) {
    let half = x.len() / t / heads / 2;
    assert!(x.len() == t * heads * 2 * half && cos.len() == t * half && sin.len() == t * half);
    let (px, pc, ps) = (P::of(x), P::c(cos), P::c(sin));
    let cfg = grid_stride(t * heads * half);
    // SAFETY: x holds t × heads·2·half values, the tables t × half.
    unsafe {
        if inverse {
            launch(cfg, || {
                ffi::nq_rope_backward(px, pc, ps, i(t), i(heads), i(half))
            });
        } else {
            launch(cfg, || ffi::nq_rope(px, pc, ps, i(t), i(heads), i(half)));
        }
    }
}

/// Sizes and scale of an attention call.
fn heads_of(t: usize, (h, kvh, d): nq_cuda::HeadShape) -> (i32, i32, i32, i32, f32) {
    assert!(h % kvh == 0 && t <= geometry::ATTENTION_MAX_T);
    (i(t), i(h), i(kvh), i(d), 1.0 / (d as f32).sqrt())
}

/// `Gpu::attention`: the output, `t × heads·d`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], t: usize, hs: nq_cuda::HeadShape) -> Vec<f32> {
    let (ti, hi, kvi, di, scale) = heads_of(t, hs);
    assert!(q.len() == t * hs.0 * hs.2 && k.len() == t * hs.1 * hs.2 && v.len() == k.len());
    let mut out = vec![0.0f32; q.len()];
    let (pq, pk, pv, po) = (P::c(q), P::c(k), P::c(v), P::of(&mut out));
    // SAFETY: shapes asserted above.
    unsafe {
        launch(geometry::attention(t, hs.0, 1), || {
            ffi::nq_attention(pq, pk, pv, po, ti, hi, kvi, di, scale)
        });
    }
    out
}

/// `Gpu::attention_probs`: `heads × t × t`, zero above the diagonal.
pub fn attention_probs(q: &[f32], k: &[f32], t: usize, hs: nq_cuda::HeadShape) -> Vec<f32> {
    let (ti, hi, kvi, di, scale) = heads_of(t, hs);
    assert!(q.len() == t * hs.0 * hs.2 && k.len() == t * hs.1 * hs.2);
    // NaN-filled: every entry must be written.
    let mut probs = vec![f32::NAN; hs.0 * t * t];
    let (pq, pk, pp) = (P::c(q), P::c(k), P::of(&mut probs));
    // SAFETY: shapes asserted above; probs holds heads × t × t values.
    unsafe {
        launch(geometry::attention(t, hs.0, 1), || {
            ffi::nq_attention_probs(pq, pk, pp, ti, hi, kvi, di, scale)
        });
    }
    probs
}

/// Gradients of an attention call: `(dq, dk, dv)` and the intermediate
/// `dS` (`heads × t × t`) the first kernel writes.
#[derive(Debug)]
pub struct AttentionGrads {
    /// `t × heads·d`.
    pub dq: Vec<f32>,
    /// `t × kv_heads·d`.
    pub dk: Vec<f32>,
    /// `t × kv_heads·d`.
    pub dv: Vec<f32>,
    /// `heads × t × t`, zero above the diagonal.
    pub ds: Vec<f32>,
}

/// `Gpu::attention_backward`.
pub fn attention_backward(
    (q, k, v, probs): (&[f32], &[f32], &[f32], &[f32]),
    d_out: &[f32],
    t: usize,
    hs: nq_cuda::HeadShape,
) -> AttentionGrads {
    let (ti, hi, kvi, di, scale) = heads_of(t, hs);
    assert!(q.len() == t * hs.0 * hs.2 && d_out.len() == q.len());
    assert!(k.len() == t * hs.1 * hs.2 && v.len() == k.len());
    assert_eq!(probs.len(), hs.0 * t * t);
    let mut g = AttentionGrads {
        dq: vec![0.0; q.len()],
        dk: vec![0.0; k.len()],
        dv: vec![0.0; k.len()],
        ds: vec![f32::NAN; hs.0 * t * t],
    };
    let (pq, pk, pv, pp, pdo) = (P::c(q), P::c(k), P::c(v), P::c(probs), P::c(d_out));
    let (pdq, pdk, pdv, pds) = (
        P::of(&mut g.dq),
        P::of(&mut g.dk),
        P::of(&mut g.dv),
        P::of(&mut g.ds),
    );
    // SAFETY: shapes asserted above.
    unsafe {
        launch(geometry::attention(t, hs.0, 1), || {
            ffi::nq_attention_backward_q(pp, pdo, pk, pv, pds, pdq, ti, hi, kvi, di, scale)
        });
        launch(geometry::attention(t, hs.1, 0), || {
            ffi::nq_attention_backward_kv(pp, pds, pq, pdo, pdk, pdv, ti, hi, kvi, di)
        });
    }
    g
}

/// `Gpu::signs`.
pub fn signs(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    let (px, po) = (P::c(x), P::of(&mut out));
    // SAFETY: both hold x.len() values.
    unsafe { launch(grid_stride(x.len()), || ffi::nq_signs(px, po, i(x.len()))) };
    out
}

/// `Gpu::scale_grads`: `(g, ∂s_pre, ∂s_post)`.
pub fn scale_grads(
    (dw, p): (&[f32], &[f32]),
    (s_pre, s_post): (&[f32], &[f32]),
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (m, n) = (s_post.len(), s_pre.len());
    assert!(dw.len() == m * n && p.len() == m * n);
    let mut g = vec![0.0f32; m * n];
    let (mut d_pre, mut d_post) = (vec![0.0f32; n], vec![0.0f32; m]);
    let (pdw, pp, psi, pso) = (P::c(dw), P::c(p), P::c(s_pre), P::c(s_post));
    let (pg, pdi, pdo) = (P::of(&mut g), P::of(&mut d_pre), P::of(&mut d_post));
    let (mi, ni) = (i(m), i(n));
    // SAFETY: dw, p, g hold m × n values; s_post, d_post m; s_pre, d_pre n.
    unsafe {
        launch(grid_stride(m * n), || {
            ffi::nq_scale_outer(pdw, pso, psi, pg, mi, ni)
        });
        launch(per_row(m), || {
            ffi::nq_scale_grad_post(pdw, pp, psi, pdo, mi, ni)
        });
        launch(per_elem(n), || {
            ffi::nq_scale_grad_pre(pdw, pp, pso, pdi, mi, ni)
        });
    }
    (g, d_pre, d_post)
}

/// `Gpu::adamw` step `step` (from 1) with nq-cuda's constants.
pub fn adamw(
    p: &mut [f32],
    g: &[f32],
    (m, v): (&mut [f32], &mut [f32]),
    step: i32,
    lr: f32,
    wd: f32,
) {
    let n = p.len();
    assert!(g.len() == n && m.len() == n && v.len() == n && step >= 1);
    let c1 = 1.0 - ADAM_BETA1.powi(step);
    let c2 = 1.0 - ADAM_BETA2.powi(step);
    let (pp, pg, pm, pv) = (P::of(p), P::c(g), P::of(m), P::of(v));
    // SAFETY: all four hold n values.
    unsafe {
        launch(grid_stride(n), || {
            ffi::nq_adamw(
                pp,
                pg,
                pm,
                pv,
                i(n),
                lr,
                wd,
                ADAM_BETA1,
                ADAM_BETA2,
                ADAM_EPS,
                c1,
                c2,
            )
        });
    }
}

/// `Gpu::weighted_mse_grad`: `2·imp[c]·(y − target) / norm`.
pub fn weighted_mse_grad(y: &[f32], target: &[f32], imp: &[f32], norm: f64) -> Vec<f32> {
    let d = imp.len();
    let rows = y.len() / d;
    assert!(rows * d == y.len() && target.len() == y.len());
    let mut dy = vec![0.0f32; y.len()];
    let (py, pt, pi, pd) = (P::c(y), P::c(target), P::c(imp), P::of(&mut dy));
    // SAFETY: y, target, dy hold rows × d values, imp d.
    unsafe {
        launch(grid_stride(y.len()), || {
            ffi::nq_weighted_mse_grad(py, pt, pi, pd, i(rows), i(d), norm)
        })
    };
    dy
}

/// `Gpu::pack_signs`: the blob-layout bytes of `sign(x)` (`rows × cols`).
pub fn pack_signs(x: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    assert_eq!(x.len(), rows * cols);
    let col_bytes = nq_core::sign::col_bytes(cols);
    // 0xAA-filled: every byte must be written.
    let mut out = vec![0xAAu8; rows.div_ceil(16) * 16 * col_bytes];
    let (px, po) = (P::c(x), P::of(&mut out));
    // SAFETY: x holds rows × cols values, out the whole tile layout.
    unsafe {
        launch(grid_stride(out.len()), || {
            ffi::nq_pack_signs(px, i(rows), i(cols), i(col_bytes), po)
        });
    }
    out
}

/// `Gpu::sign_matmul`: `t × rows` products of packed signs (`rows × cols`)
/// with `x` (`t × cols`).
pub fn sign_matmul(packed: &[u8], rows: usize, cols: usize, x: &[f32], t: usize) -> Vec<f32> {
    let col_bytes = nq_core::sign::col_bytes(cols);
    assert!(packed.len() >= rows.div_ceil(16) * 16 * col_bytes && x.len() == t * cols);
    let mut y = vec![0.0f32; t * rows];
    let (pb, px, py) = (P::c(packed), P::c(x), P::of(&mut y));
    // SAFETY: shapes asserted above.
    unsafe {
        launch(sign_cfg(rows, t), || {
            ffi::nq_sign_matmul(pb, i(rows), i(cols), i(col_bytes), px, i(t), py)
        });
    }
    y
}

/// `Gpu::scale_rows`: `y[i] *= s[i]` (`s.len() × n`).
pub fn scale_rows(y: &mut [f32], s: &[f32]) {
    let n = y.len() / s.len().max(1);
    assert_eq!(n * s.len(), y.len());
    let (py, ps) = (P::of(y), P::c(s));
    // SAFETY: y holds s.len() × n values.
    unsafe {
        launch(grid_stride(y.len()), || {
            ffi::nq_scale_rows(py, ps, i(s.len()), i(n))
        })
    };
}

/// `y[r] (op)= b` for the rows of `y` (`Gpu::add_bias` with `scale =
/// false`, `Gpu::scale_columns` with `scale = true`).
pub fn per_column(y: &mut [f32], b: &[f32], scale: bool) {
    let (n, rows) = (b.len(), y.len() / b.len());
    assert_eq!(rows * n, y.len());
    let (py, pb) = (P::of(y), P::c(b));
    let cfg = grid_stride(rows * n);
    // SAFETY: y holds rows × n values, b n.
    unsafe {
        if scale {
            launch(cfg, || ffi::nq_scale_columns(py, pb, i(rows), i(n)));
        } else {
            launch(cfg, || ffi::nq_add_bias(py, pb, i(rows), i(n)));
        }
    }
}

/// `Gpu::add_assign`: `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len());
    let (px, py) = (P::of(x), P::c(y));
    // SAFETY: both hold x.len() values.
    unsafe {
        launch(grid_stride(y.len()), || {
            ffi::nq_add_assign(px, py, i(y.len()))
        })
    };
}

/// `Gpu::row_norms`: `‖x[r]‖₂` of the rows of `x` (`rows × width`).
pub fn row_norms(x: &[f32], width: usize) -> Vec<f32> {
    let rows = x.len() / width;
    assert_eq!(rows * width, x.len());
    let mut out = vec![f32::NAN; rows];
    let (px, po) = (P::c(x), P::of(&mut out));
    // SAFETY: x holds rows × width values, out rows.
    unsafe {
        launch(per_row(rows), || {
            ffi::nq_row_norms(px, po, i(rows), i(width))
        })
    };
    out
}

/// `Gpu::add_clipped_squares`: `acc[j] += Σ_r (x[r][j]·s[r])²`.
pub fn add_clipped_squares(x: &[f32], s: &[f32], acc: &mut [f64]) {
    assert_eq!(x.len(), s.len() * acc.len());
    let (rows, width) = (s.len(), acc.len());
    let (px, ps, pa) = (P::c(x), P::c(s), P::of(acc));
    // SAFETY: x holds rows × width values, s rows, acc width.
    unsafe {
        launch(per_elem(width), || {
            ffi::nq_clipped_squares(px, ps, pa, i(rows), i(width))
        })
    };
}

/// `Gpu::cross_entropy`: next-token loss of `logits` (`t × vocab`) and its
/// gradient.
pub fn cross_entropy(logits: &[f32], tokens: &[u32], vocab: usize) -> (f64, Vec<f32>) {
    let t = tokens.len();
    assert!(t >= 2 && logits.len() == t * vocab);
    assert!(tokens.iter().all(|&id| (id as usize) < vocab));
    let mut g = vec![f32::NAN; t * vocab];
    let mut loss = vec![f64::NAN; t];
    let next = &tokens[1..];
    let n = (t - 1) as f64;
    let (pz, pn, pg, pl) = (P::c(logits), P::c(next), P::of(&mut g), P::of(&mut loss));
    // SAFETY: logits and g hold t × vocab values, next t − 1 ids < vocab,
    // loss t.
    unsafe {
        launch(per_row(t), || {
            ffi::nq_cross_entropy(pz, pn, pg, pl, i(t), i(vocab), n)
        })
    };
    (loss[..t - 1].iter().sum::<f64>() / n, g)
}

/// `Gpu::kd_loss`: cross-entropy of `logits` (`rows × vocab`) against the
/// teacher's `k` tokens per row, and its gradient.
pub fn kd_loss(
    logits: &[f32],
    ids: &[u32],
    probs: &[f32],
    k: usize,
    vocab: usize,
) -> (f64, Vec<f32>) {
    let rows = logits.len() / vocab;
    assert!(rows * vocab == logits.len() && ids.len() == rows * k && probs.len() == rows * k);
    assert!(ids.iter().all(|&id| (id as usize) < vocab));
    let mut g = vec![f32::NAN; logits.len()];
    let mut loss = vec![f64::NAN; rows];
    let (pz, pi, pp) = (P::c(logits), P::c(ids), P::c(probs));
    let (pg, pl) = (P::of(&mut g), P::of(&mut loss));
    // SAFETY: logits and g hold rows × vocab values, ids and probs rows × k
    // (ids < vocab), loss rows.
    unsafe {
        launch(per_row(rows), || {
            ffi::nq_kd_loss(pz, pi, pp, pg, pl, i(rows), i(vocab), i(k))
        })
    };
    (loss.iter().sum::<f64>() / rows as f64, g)
}
