//! Every forward, backward and training kernel of nq-cuda, run by the host
//! emulation with nq-cuda's launch shapes, against nq-host's CPU code where
//! it is public and against independent f64 references otherwise. The
//! backward references are checked against central finite differences of
//! the f64 forward, so no gradient here is only checked against itself.
//! (The ADMM kernels are covered through `EmuBackend` in nq-host's
//! tests/backend.rs.)

use nq_cuda_emu::ops;
use nq_host::model::forward::{rmsnorm, silu, RopeTable};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

/// `|got − want| ≤ tol · max|want|` everywhere.
fn close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tol * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

// ---------------------------------------------------------------- RMSNorm

#[test]
fn rmsnorm_kernels_match_the_cpu() {
    for (rows, d) in [(3, 7), (4, 300), (1, 1)] {
        let x = random(rows * d, 1);
        let w = random(d, 2);
        let eps = 1e-5;
        let (mut want, mut want_inv) = (vec![0.0; rows * d], vec![0.0; rows]);
        rmsnorm(&x, &w, eps, &mut want, &mut want_inv);

        let out = ops::rmsnorm(&x, &w, eps);
        let inv = ops::rmsnorm_inv(&x, d, eps);
        let mut inplace = x.clone();
        ops::rmsnorm_in_place(&mut inplace, &w, eps);
        // Same f64 sum up to order, then the same f32 operations.
        close(&inv, &f64s(&want_inv), 1e-6, "inv");
        close(&out, &f64s(&want), 1e-6, "rmsnorm");
        assert_eq!(out, inplace, "in place equals out of place");
    }
}

/// f64 `y = x / rms(x) ⊙ w` for one row.
fn rmsnorm_row64(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(a, b)| a * r * b).collect()
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let eps = 1e-5f32;
    for (rows, d) in [(3, 5), (2, 300)] {
        let x = random(rows * d, 3);
        let w = random(d, 4);
        let dy = random(rows * d, 5);
        let (mut y, mut inv) = (vec![0.0; rows * d], vec![0.0; rows]);
        rmsnorm(&x, &w, eps, &mut y, &mut inv);

        // ∂L/∂x and ∂L/∂w of L = Σ dy ⊙ rmsnorm(x), by central differences.
        let (x64, w64, dy64) = (f64s(&x), f64s(&w), f64s(&dy));
        let loss = |xr: &[f64], w: &[f64], row: usize| -> f64 {
            rmsnorm_row64(xr, w, f64::from(eps))
                .iter()
                .zip(&dy64[row * d..(row + 1) * d])
                .map(|(a, b)| a * b)
                .sum()
        };
        let h = 1e-6;
        let mut want_dx = vec![0.0f64; rows * d];
        let mut want_dw = vec![0.0f64; d];
        for r in 0..rows {
            let xr = &x64[r * d..(r + 1) * d];
            for j in 0..d {
                let (mut a, mut b) = (xr.to_vec(), xr.to_vec());
                a[j] += h;
                b[j] -= h;
                want_dx[r * d + j] = (loss(&a, &w64, r) - loss(&b, &w64, r)) / (2.0 * h);
                let (mut wa, mut wb) = (w64.clone(), w64.clone());
                wa[j] += h;
                wb[j] -= h;
                want_dw[j] += (loss(xr, &wa, r) - loss(xr, &wb, r)) / (2.0 * h);
            }
        }

        let mut dx = vec![0.0f32; rows * d];
        let mut dx_acc = vec![1.0f32; rows * d];
        let mut dw = vec![0.5f32; d];
        ops::rmsnorm_backward((&x, &w, &inv), &dy, &mut dx, false, None);
        ops::rmsnorm_backward((&x, &w, &inv), &dy, &mut dx_acc, true, Some(&mut dw));
        close(&dx, &want_dx, 1e-5, "rmsnorm dx");
        let acc_want: Vec<f64> = dx.iter().map(|&v| f64::from(v) + 1.0).collect();
        close(&dx_acc, &acc_want, 1e-6, "rmsnorm dx accumulated");
        let dw_want: Vec<f64> = want_dw.iter().map(|v| v + 0.5).collect();
        close(&dw, &dw_want, 1e-5, "rmsnorm dw (added to 0.5)");
    }
}

// ------------------------------------------------------------ RoPE, SwiGLU

#[test]
fn rope_and_its_backward_match_the_cpu_table() {
    let (t, heads, head_dim) = (7, 3, 10);
    let table = RopeTable::new(head_dim, 10_000.0, t);
    let (cos, sin) = table.tables();
    for inverse in [false, true] {
        let x = random(t * heads * head_dim, 6);
        let mut want = x.clone();
        table.apply(&mut want, heads, inverse);
        let mut got = x.clone();
        ops::rope(&mut got, cos, sin, t, heads, inverse);
        // The same f32 operations in the same order: bit for bit.
        assert_eq!(got, want, "rope inverse={inverse}");
    }
    // The backward is the adjoint: <R x, y> = <x, Rᵀ y>.
    let (x, y) = (
        random(t * heads * head_dim, 7),
        random(t * heads * head_dim, 8),
    );
    let (mut rx, mut rty) = (x.clone(), y.clone());
    ops::rope(&mut rx, cos, sin, t, heads, false);
    ops::rope(&mut rty, cos, sin, t, heads, true);
    let dot = |a: &[f32], b: &[f32]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(p, q)| f64::from(*p) * f64::from(*q))
            .sum()
    };
    let (lhs, rhs) = (dot(&rx, &y), dot(&x, &rty));
    assert!(
        (lhs - rhs).abs() < 1e-5 * lhs.abs().max(1.0),
        "{lhs} vs {rhs}"
    );
}

#[test]
fn silu_mul_and_its_backward() {
    let n = 700;
    let (g, u, da) = (random(n, 9), random(n, 10), random(n, 11));
    let g: Vec<f32> = g.iter().map(|v| 6.0 * v).collect(); // both tails of σ
    let out = ops::silu_mul(&g, &u);
    let (dg, du) = ops::swiglu_backward(&g, &u, &da);
    let want: Vec<f64> = (0..n).map(|e| f64::from(silu(g[e]) * u[e])).collect();
    close(&out, &want, 1e-6, "silu_mul");
    let silu64 = |x: f64| x / (1.0 + (-x).exp());
    let h = 1e-6;
    let want_dg: Vec<f64> = (0..n)
        .map(|e| {
            let x = f64::from(g[e]);
            (silu64(x + h) - silu64(x - h)) / (2.0 * h) * f64::from(u[e]) * f64::from(da[e])
        })
        .collect();
    let want_du: Vec<f64> = (0..n)
        .map(|e| silu64(f64::from(g[e])) * f64::from(da[e]))
        .collect();
    close(&dg, &want_dg, 1e-5, "d gate");
    close(&du, &want_du, 1e-5, "d up");
}

// -------------------------------------------------------------- attention

struct Heads {
    t: usize,
    h: usize,
    kvh: usize,
    d: usize,
}

impl Heads {
    fn scale(&self) -> f64 {
        1.0 / (self.d as f64).sqrt()
    }
}

/// f64 causal GQA: (out `t × h·d`, probs `h × t × t`).
fn attention64(q: &[f64], k: &[f64], v: &[f64], s: &Heads) -> (Vec<f64>, Vec<f64>) {
    let (t, h, kvh, d) = (s.t, s.h, s.kvh, s.d);
    let (qd, kvd, group) = (h * d, kvh * d, h / kvh);
    let mut out = vec![0.0; t * qd];
    let mut probs = vec![0.0; h * t * t];
    for head in 0..h {
        let g = head / group;
        for i in 0..t {
            let sc: Vec<f64> = (0..=i)
                .map(|j| {
                    (0..d)
                        .map(|c| q[i * qd + head * d + c] * k[j * kvd + g * d + c])
                        .sum::<f64>()
                        * s.scale()
                })
                .collect();
            let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for j in 0..=i {
                let p = e[j] / z;
                probs[(head * t + i) * t + j] = p;
                for c in 0..d {
                    out[i * qd + head * d + c] += p * v[j * kvd + g * d + c];
                }
            }
        }
    }
    (out, probs)
}

/// f64 gradients of `L = Σ dout ⊙ attention(q, k, v)`: (dq, dk, dv), by the
/// softmax chain rule.
fn attention_grads64(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
    s: &Heads,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (t, h, kvh, d) = (s.t, s.h, s.kvh, s.d);
    let (qd, kvd, group) = (h * d, kvh * d, h / kvh);
    let (_, probs) = attention64(q, k, v, s);
    let (mut dq, mut dk, mut dv) = (vec![0.0; t * qd], vec![0.0; t * kvd], vec![0.0; t * kvd]);
    for head in 0..h {
        let g = head / group;
        for i in 0..t {
            let p = |j: usize| probs[(head * t + i) * t + j];
            let dp: Vec<f64> = (0..=i)
                .map(|j| {
                    (0..d)
                        .map(|c| dout[i * qd + head * d + c] * v[j * kvd + g * d + c])
                        .sum()
                })
                .collect();
            let dot: f64 = (0..=i).map(|j| dp[j] * p(j)).sum();
            for j in 0..=i {
                let ds = p(j) * (dp[j] - dot) * s.scale();
                for c in 0..d {
                    dq[i * qd + head * d + c] += ds * k[j * kvd + g * d + c];
                    dk[j * kvd + g * d + c] += ds * q[i * qd + head * d + c];
                    dv[j * kvd + g * d + c] += p(j) * dout[i * qd + head * d + c];
                }
            }
        }
    }
    (dq, dk, dv)
}

#[test]
fn attention_gradient_reference_matches_finite_differences() {
    let s = Heads {
        t: 4,
        h: 4,
        kvh: 2,
        d: 3,
    };
    let (qd, kvd) = (s.h * s.d, s.kvh * s.d);
    let q = f64s(&random(s.t * qd, 12));
    let k = f64s(&random(s.t * kvd, 13));
    let v = f64s(&random(s.t * kvd, 14));
    let dout = f64s(&random(s.t * qd, 15));
    let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
        let (o, _) = attention64(q, k, v, &s);
        o.iter().zip(&dout).map(|(a, b)| a * b).sum()
    };
    let (dq, dk, dv) = attention_grads64(&q, &k, &v, &dout, &s);
    let h = 1e-6;
    let fd = |which: usize, idx: usize| -> f64 {
        let mut args = [q.clone(), k.clone(), v.clone()];
        args[which][idx] += h;
        let up = loss(&args[0], &args[1], &args[2]);
        args[which][idx] -= 2.0 * h;
        let down = loss(&args[0], &args[1], &args[2]);
        (up - down) / (2.0 * h)
    };
    for (which, grad) in [(0, &dq), (1, &dk), (2, &dv)] {
        for (idx, &g) in grad.iter().enumerate() {
            let want = fd(which, idx);
            assert!((g - want).abs() < 1e-6, "arg {which}[{idx}]: {g} vs {want}");
        }
    }
}

#[test]
fn attention_kernels_forward_probs_and_backward() {
    for s in [
        Heads {
            t: 9,
            h: 4,
            kvh: 2,
            d: 6,
        },
        Heads {
            t: 5,
            h: 3,
            kvh: 3,
            d: 300,
        },
        // Longer than a block: every thread takes several keys.
        Heads {
            t: 300,
            h: 2,
            kvh: 1,
            d: 4,
        },
    ] {
        let (t, h, kvh, d) = (s.t, s.h, s.kvh, s.d);
        let (qd, kvd) = (h * d, kvh * d);
        let q = random(t * qd, 16);
        let k = random(t * kvd, 17);
        let v = random(t * kvd, 18);
        let dout = random(t * qd, 19);
        let hs = (h, kvh, d);
        let out = ops::attention(&q, &k, &v, t, hs);
        let probs = ops::attention_probs(&q, &k, t, hs);
        let ops::AttentionGrads { dq, dk, dv, ds } =
            ops::attention_backward((&q, &k, &v, &probs), &dout, t, hs);
        let (q64, k64, v64) = (f64s(&q), f64s(&k), f64s(&v));
        let (want_out, want_probs) = attention64(&q64, &k64, &v64, &s);
        close(&out, &want_out, 1e-5, "attention out");
        close(&probs, &want_probs, 1e-5, "attention probs");
        let (want_dq, want_dk, want_dv) = attention_grads64(&q64, &k64, &v64, &f64s(&dout), &s);
        close(&dq, &want_dq, 1e-4, "dq");
        close(&dk, &want_dk, 1e-4, "dk");
        close(&dv, &want_dv, 1e-4, "dv");
        // dS is exactly zero above the diagonal (every entry written).
        for head in 0..h {
            for qi in 0..t {
                for j in qi + 1..t {
                    assert_eq!(ds[(head * t + qi) * t + j], 0.0);
                }
            }
        }
    }
}

// --------------------------------------------------- signs and training

#[test]
fn packed_signs_are_the_blob_layout_and_multiply_correctly() {
    for (rows, cols) in [(1, 1), (16, 32), (17, 33), (40, 75)] {
        let mut x = random(rows * cols, (rows * cols) as u64);
        x[0] = -0.0; // sign(−0) = +1
        let want = nq_core::SignMatrix::from_signs_of(rows, cols, &x).into_bytes();
        let packed = ops::pack_signs(&x, rows, cols);
        assert_eq!(packed, want, "{rows} × {cols}");

        // ±1 signs through nq_signs, and the packed product against them.
        let s = ops::signs(&x);
        let tokens = 3;
        let xin = random(tokens * cols, 99);
        let y = ops::sign_matmul(&packed, rows, cols, &xin, tokens);
        for (sv, xv) in s.iter().zip(&x) {
            assert_eq!(*sv, if *xv < 0.0 { -1.0 } else { 1.0 });
        }
        let want_y: Vec<f64> = (0..tokens * rows)
            .map(|e| {
                let (tok, r) = (e / rows, e % rows);
                (0..cols)
                    .map(|j| f64::from(s[r * cols + j]) * f64::from(xin[tok * cols + j]))
                    .sum()
            })
            .collect();
        close(&y, &want_y, 1e-6, "sign_matmul");
    }
}

#[test]
fn scale_gradients_match_their_definition() {
    let (m, n) = (5, 300);
    let dw = random(m * n, 20);
    let p: Vec<f32> = random(m * n, 21).iter().map(|v| v.signum() * 3.0).collect();
    let (s_post, s_pre) = (random(m, 22), random(n, 23));
    let (g, gpre, gpost) = ops::scale_grads((&dw, &p), (&s_pre, &s_post));
    let at = |e: usize| f64::from(dw[e]) * f64::from(p[e]);
    let want_g: Vec<f64> = (0..m * n)
        .map(|e| f64::from(dw[e]) * f64::from(s_post[e / n]) * f64::from(s_pre[e % n]))
        .collect();
    let want_post: Vec<f64> = (0..m)
        .map(|r| (0..n).map(|j| at(r * n + j) * f64::from(s_pre[j])).sum())
        .collect();
    let want_pre: Vec<f64> = (0..n)
        .map(|j| (0..m).map(|r| at(r * n + j) * f64::from(s_post[r])).sum())
        .collect();
    close(&g, &want_g, 1e-6, "scale_outer");
    close(&gpost, &want_post, 1e-5, "∂s_post");
    close(&gpre, &want_pre, 1e-5, "∂s_pre");
}

#[test]
fn adamw_steps_follow_the_update_rule() {
    let n = 600;
    let (b1, b2, eps) = (nq_cuda::ADAM_BETA1, nq_cuda::ADAM_BETA2, nq_cuda::ADAM_EPS);
    let (lr, wd) = (1e-2f32, 0.1f32);
    let mut p = random(n, 24);
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let mut p64 = f64s(&p);
    let (mut m64, mut v64) = (vec![0.0f64; n], vec![0.0f64; n]);
    for step in 1..=5 {
        let g = random(n, 100 + step);
        ops::adamw(&mut p, &g, (&mut m, &mut v), step as i32, lr, wd);
        let (b1, b2) = (f64::from(b1), f64::from(b2));
        for e in 0..n {
            let ge = f64::from(g[e]);
            m64[e] = b1 * m64[e] + (1.0 - b1) * ge;
            v64[e] = b2 * v64[e] + (1.0 - b2) * ge * ge;
            let mh = m64[e] / (1.0 - b1.powi(step as i32));
            let vh = v64[e] / (1.0 - b2.powi(step as i32));
            p64[e] -= f64::from(lr) * (mh / (vh.sqrt() + f64::from(eps)) + f64::from(wd) * p64[e]);
        }
    }
    close(&p, &p64, 1e-5, "AdamW parameters after 5 steps");
    close(&m, &m64, 1e-5, "first moments");
    close(&v, &v64, 1e-4, "second moments");
}

#[test]
fn small_element_wise_kernels() {
    let (rows, n) = (3, 301);
    let y0 = random(rows * n, 30);
    let b = random(n, 31);
    let (mut y, mut z) = (y0.clone(), y0.clone());
    ops::per_column(&mut y, &b, false);
    ops::per_column(&mut z, &b, true);
    let total = rows * n;
    let want_bias: Vec<f64> = (0..total).map(|e| f64::from(y0[e] + b[e % n])).collect();
    let want_scale: Vec<f64> = (0..total).map(|e| f64::from(y0[e] * b[e % n])).collect();
    close(&y, &want_bias, 0.0, "add_bias");
    close(&z, &want_scale, 0.0, "scale_columns");
    let mut acc = y0.clone();
    ops::add_assign(&mut acc, &z);
    let want: Vec<f64> = (0..total).map(|e| f64::from(y0[e] + z[e])).collect();
    close(&acc, &want, 0.0, "add_assign");
}

// ------------------------------------------------ statistics and losses

#[test]
fn token_norms_and_clipped_channel_energies() {
    for (rows, width) in [(5, 300), (1, 1), (17, 513)] {
        let mut x = random(rows * width, 40);
        // One outlier token, as the clipping is there for.
        x[..width].iter_mut().for_each(|v| *v *= 50.0);
        let norms = ops::row_norms(&x, width);
        let want: Vec<f64> = x
            .chunks(width)
            .map(|r| r.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt())
            .collect();
        close(&norms, &want, 1e-6, "row norms");

        let s: Vec<f32> = (0..rows).map(|r| 1.0 / (1.0 + r as f32)).collect();
        let mut acc: Vec<f64> = (0..width).map(|j| 0.25 * j as f64).collect();
        let mut want = acc.clone();
        for (r, row) in x.chunks(width).enumerate() {
            for (a, &v) in want.iter_mut().zip(row) {
                let p = f64::from(v * s[r]);
                *a += p * p;
            }
        }
        ops::add_clipped_squares(&x, &s, &mut acc);
        // Same operations in the same order: equal bit for bit.
        assert_eq!(acc, want, "{rows} × {width}");
    }
}

/// f64 next-token cross-entropy: mean loss and gradient.
fn cross_entropy64(z: &[f32], tokens: &[u32], vocab: usize) -> (f64, Vec<f64>) {
    let t = tokens.len();
    let n = (t - 1) as f64;
    let mut g = vec![0.0; t * vocab];
    let mut loss = 0.0;
    for r in 0..t - 1 {
        let row = &z[r * vocab..(r + 1) * vocab];
        let lse = row.iter().map(|&v| f64::from(v).exp()).sum::<f64>().ln();
        let next = tokens[r + 1] as usize;
        for (j, &v) in row.iter().enumerate() {
            g[r * vocab + j] = ((f64::from(v) - lse).exp() - f64::from(u8::from(j == next))) / n;
        }
        loss += lse - f64::from(row[next]);
    }
    (loss / n, g)
}

#[test]
fn cross_entropy_kernel_matches_the_cpu_and_a_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    for (t, vocab) in [(6, 37), (2, 1000), (9, 300)] {
        let z: Vec<f32> = random(t * vocab, 42).iter().map(|v| 6.0 * v).collect();
        let tokens: Vec<u32> = (0..t).map(|_| rng.gen_range(0..vocab as u32)).collect();
        let (loss, g) = ops::cross_entropy(&z, &tokens, vocab);
        let (want_loss, want_g) = cross_entropy64(&z, &tokens, vocab);
        assert!(
            (loss - want_loss).abs() < 1e-9 * want_loss.abs(),
            "{loss} vs {want_loss}"
        );
        close(&g, &want_g, 1e-6, "dlogits");
        assert!(g[(t - 1) * vocab..].iter().all(|&v| v == 0.0), "last row");
        let (cpu_loss, cpu_g) = nq_host::model::backward::loss_and_dlogits(&z, &tokens, vocab);
        assert!((loss - cpu_loss).abs() < 1e-12 * cpu_loss.abs());
        close(&g, &f64s(&cpu_g), 1e-6, "dlogits vs cpu");
    }
}

#[test]
fn distillation_loss_kernel_matches_a_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    for (rows, vocab, k) in [(4, 50, 7), (1, 300, 1), (3, 64, 64)] {
        let z: Vec<f32> = random(rows * vocab, 44).iter().map(|v| 5.0 * v).collect();
        let (mut ids, mut probs) = (Vec::new(), Vec::new());
        for _ in 0..rows {
            let mut pick: Vec<u32> = (0..vocab as u32).collect();
            for a in 0..k {
                let b = rng.gen_range(a..vocab);
                pick.swap(a, b);
            }
            let w: Vec<f32> = (0..k).map(|_| rng.gen_range(0.1f32..1.0)).collect();
            let s: f32 = w.iter().sum();
            ids.extend_from_slice(&pick[..k]);
            probs.extend(w.iter().map(|v| v / s));
        }
        let (loss, g) = ops::kd_loss(&z, &ids, &probs, k, vocab);
        let (mut want_loss, mut want_g) = (0.0, vec![0.0f64; rows * vocab]);
        for r in 0..rows {
            let row = &z[r * vocab..(r + 1) * vocab];
            let lse = row.iter().map(|&v| f64::from(v).exp()).sum::<f64>().ln();
            for (j, &v) in row.iter().enumerate() {
                want_g[r * vocab + j] = (f64::from(v) - lse).exp() / rows as f64;
            }
            for e in 0..k {
                let (id, p) = (ids[r * k + e] as usize, f64::from(probs[r * k + e]));
                want_g[r * vocab + id] -= p / rows as f64;
                want_loss -= p * (f64::from(row[id]) - lse) / rows as f64;
            }
        }
        assert!(
            (loss - want_loss).abs() < 1e-6 * want_loss.abs(),
            "{loss} vs {want_loss}"
        );
        close(&g, &want_g, 1e-6, "kd gradient");
    }
    // A one-hot teacher on the next token is the next-token loss.
    let (t, vocab) = (5, 40);
    let z = random(t * vocab, 45);
    let tokens: Vec<u32> = (0..t as u32).map(|i| (7 * i + 3) % vocab as u32).collect();
    let (ce, ce_g) = ops::cross_entropy(&z, &tokens, vocab);
    let (kd, kd_g) = ops::kd_loss(
        &z[..(t - 1) * vocab],
        &tokens[1..],
        &vec![1.0; t - 1],
        1,
        vocab,
    );
    assert!((ce - kd).abs() < 1e-12, "{ce} vs {kd}");
    close(
        &kd_g,
        &f64s(&ce_g[..(t - 1) * vocab]),
        1e-6,
        "one-hot teacher",
    );
}
