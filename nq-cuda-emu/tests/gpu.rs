//! `nq_cuda::Gpu`'s backward and training operations on a real GPU give
//! what the same kernels give in emulation (`nq_cuda_emu::ops`, checked
//! against references in tests/kernels.rs). This is what checks the `Gpu`
//! methods' launches: argument order, shapes, geometry.
//!
//! Without a GPU the test prints a visible SKIP line (CI has none);
//! `NQ_REQUIRE_GPU=1` (scripts/gpu-check.sh) turns the skip into a failure.
//!
//! Tolerance: the GPU may fuse multiply-adds and sums in another order,
//! so values agree to 1e-5 of the largest magnitude, not bit for bit; the
//! packed signs and ±1 signs are exact.

use nq_cuda::{Buf, GemmPrecision, Gpu};
use nq_cuda_emu::ops;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn gpu() -> Option<Gpu> {
    nq_cuda::gpu_for_tests()
        .then(|| Gpu::new(0, GemmPrecision::F32).expect("a GPU the probe reports must open"))
}

fn down(g: &Gpu, b: &Buf) -> Vec<f32> {
    let mut v = vec![0.0; b.len()];
    g.download(b, &mut v).unwrap();
    v
}

fn close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-30f32, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * scale,
            "{what}[{i}]: gpu {g} vs emulated {w}"
        );
    }
}

#[test]
fn gpu_backward_and_training_ops_match_the_emulation() {
    let Some(g) = gpu() else { return };
    let up = |v: &[f32]| g.upload(v).unwrap();

    // RMSNorm: 1/rms, backward (written and accumulated), weight gradient.
    let (rows, d, eps) = (5, 300, 1e-5f32);
    let (x, w, dy) = (random(rows * d, 1), random(d, 2), random(rows * d, 3));
    let inv = ops::rmsnorm_inv(&x, d, eps);
    let mut dinv = g.zeros(rows).unwrap();
    g.rmsnorm_inv(&up(&x), rows, d, eps, &mut dinv).unwrap();
    close(&down(&g, &dinv), &inv, "rmsnorm_inv");
    let (mut dx, mut dw) = (vec![0.25f32; rows * d], vec![0.5f32; d]);
    ops::rmsnorm_backward((&x, &w, &inv), &dy, &mut dx, true, Some(&mut dw));
    let (mut gdx, mut gdw) = (up(&vec![0.25f32; rows * d]), up(&vec![0.5f32; d]));
    g.rmsnorm_backward(
        (&up(&x), &up(&w), &up(&inv)),
        &up(&dy),
        rows,
        &mut gdx,
        true,
        Some(&mut gdw),
    )
    .unwrap();
    close(&down(&g, &gdx), &dx, "rmsnorm dx");
    close(&down(&g, &gdw), &dw, "rmsnorm dw");

    // SwiGLU backward.
    let n = 1000;
    let (gate, upv, da) = (random(n, 4), random(n, 5), random(n, 6));
    let (dg, du) = ops::swiglu_backward(&gate, &upv, &da);
    let (mut gdg, mut gdu) = (g.zeros(n).unwrap(), g.zeros(n).unwrap());
    g.swiglu_backward((&up(&gate), &up(&upv)), &up(&da), &mut gdg, &mut gdu)
        .unwrap();
    close(&down(&g, &gdg), &dg, "d gate");
    close(&down(&g, &gdu), &du, "d up");

    // RoPE backward.
    let (t, heads, head_dim) = (7, 3, 10);
    let table = nq_host::model::forward::RopeTable::new(head_dim, 10_000.0, t);
    let (cos, sin) = table.tables();
    let xr = random(t * heads * head_dim, 7);
    let mut want = xr.clone();
    ops::rope(&mut want, cos, sin, t, heads, true);
    let mut gx = up(&xr);
    g.rope_backward(&mut gx, &up(cos), &up(sin), t, heads)
        .unwrap();
    close(&down(&g, &gx), &want, "rope backward");

    // Attention probabilities and backward (grouped heads).
    let (t, hs) = (9, (4usize, 2usize, 6usize));
    let (qd, kvd) = (hs.0 * hs.2, hs.1 * hs.2);
    let (q, k, v, dout) = (
        random(t * qd, 8),
        random(t * kvd, 9),
        random(t * kvd, 10),
        random(t * qd, 11),
    );
    let probs = ops::attention_probs(&q, &k, t, hs);
    let grads = ops::attention_backward((&q, &k, &v, &probs), &dout, t, hs);
    let (gq, gk, gv) = (up(&q), up(&k), up(&v));
    let mut gp = g.zeros(hs.0 * t * t).unwrap();
    g.attention_probs((&gq, &gk), &mut gp, t, hs).unwrap();
    close(&down(&g, &gp), &probs, "attention probs");
    let (mut gdq, mut gdk, mut gdv) = (
        g.zeros(t * qd).unwrap(),
        g.zeros(t * kvd).unwrap(),
        g.zeros(t * kvd).unwrap(),
    );
    g.attention_backward(
        (&gq, &gk, &gv, &gp),
        &up(&dout),
        (&mut gdq, &mut gdk, &mut gdv),
        t,
        hs,
    )
    .unwrap();
    close(&down(&g, &gdq), &grads.dq, "dq");
    close(&down(&g, &gdk), &grads.dk, "dk");
    close(&down(&g, &gdv), &grads.dv, "dv");

    // Signs, scale gradients, AdamW, packing.
    let (m, n) = (20, 75);
    let lat = random(m * n, 12);
    let mut gs = g.zeros(m * n).unwrap();
    g.signs(&up(&lat), &mut gs).unwrap();
    assert_eq!(down(&g, &gs), ops::signs(&lat), "signs");
    let packed = g.pack_signs(&up(&lat), m, n).unwrap();
    assert_eq!(
        g.download_bytes(&packed).unwrap(),
        ops::pack_signs(&lat, m, n),
        "packed signs"
    );
    let (dwm, p) = (random(m * n, 13), ops::signs(&random(m * n, 14)));
    let (s_pre, s_post) = (random(n, 15), random(m, 16));
    let (og, opre, opost) = ops::scale_grads((&dwm, &p), (&s_pre, &s_post));
    let (mut ggm, mut gpre, mut gpost) = (
        g.zeros(m * n).unwrap(),
        g.zeros(n).unwrap(),
        g.zeros(m).unwrap(),
    );
    g.scale_grads(
        (&up(&dwm), &up(&p)),
        (&up(&s_pre), &up(&s_post)),
        &mut ggm,
        &mut gpre,
        &mut gpost,
    )
    .unwrap();
    close(&down(&g, &ggm), &og, "scale outer");
    close(&down(&g, &gpre), &opre, "∂s_pre");
    close(&down(&g, &gpost), &opost, "∂s_post");

    let mut params = random(n, 17);
    let (mut mm, mut vv) = (vec![0.0f32; n], vec![0.0f32; n]);
    let (mut gparams, mut gm, mut gv) = (up(&params), g.zeros(n).unwrap(), g.zeros(n).unwrap());
    for step in 1..=3 {
        let grad = random(n, 20 + step as u64);
        ops::adamw(&mut params, &grad, (&mut mm, &mut vv), step, 1e-2, 0.1);
        g.adamw(
            &mut gparams,
            &up(&grad),
            (&mut gm, &mut gv),
            step,
            1e-2,
            0.1,
        )
        .unwrap();
    }
    close(&down(&g, &gparams), &params, "AdamW parameters");
    close(&down(&g, &gm), &mm, "AdamW m");
    close(&down(&g, &gv), &vv, "AdamW v");

    // Shape errors are errors.
    let mut short = g.zeros(3).unwrap();
    assert!(g.signs(&up(&lat), &mut short).is_err());
    assert!(g
        .adamw(&mut gparams, &up(&[1.0]), (&mut gm, &mut gv), 1, 1e-2, 0.0)
        .is_err());
}

#[test]
fn gpu_statistics_and_loss_ops_match_the_emulation() {
    let Some(g) = gpu() else { return };
    let up = |v: &[f32]| g.upload(v).unwrap();

    let (rows, width) = (7, 513);
    let x = random(rows * width, 30);
    close(
        &g.row_norms(&up(&x), width).unwrap(),
        &ops::row_norms(&x, width),
        "row norms",
    );
    let s: Vec<f32> = (0..rows).map(|r| 1.0 / (1.0 + r as f32)).collect();
    let (mut acc, mut gacc) = (vec![0.5f64; width], vec![0.5f64; width]);
    ops::add_clipped_squares(&x, &s, &mut acc);
    g.add_clipped_squares(&up(&x), &s, &mut gacc).unwrap();
    // Explicitly rounded f64 operations in the same order: equal bits.
    assert_eq!(gacc, acc, "clipped squares");

    let (t, vocab) = (6, 1000);
    let z: Vec<f32> = random(t * vocab, 31).iter().map(|v| 8.0 * v).collect();
    let tokens: Vec<u32> = (0..t as u32).map(|i| (97 * i + 5) % vocab as u32).collect();
    let (loss, dl) = ops::cross_entropy(&z, &tokens, vocab);
    let mut gdl = g.zeros(t * vocab).unwrap();
    let gloss = g.cross_entropy(&up(&z), &tokens, vocab, &mut gdl).unwrap();
    assert!(
        (gloss - loss).abs() < 1e-9 * loss.abs(),
        "{gloss} vs {loss}"
    );
    close(&down(&g, &gdl), &dl, "cross-entropy gradient");

    let k = 4;
    let ids: Vec<u32> = (0..t * k)
        .map(|e| ((e / k) * 13 + (e % k) * 101) as u32 % vocab as u32)
        .collect();
    let probs: Vec<f32> = (0..t * k).map(|e| [0.4, 0.3, 0.2, 0.1][e % k]).collect();
    let (kd, kdl) = ops::kd_loss(&z, &ids, &probs, k, vocab);
    let mut gkdl = g.zeros(t * vocab).unwrap();
    let gkd = g
        .kd_loss(&up(&z), (&ids, &probs), k, vocab, &mut gkdl)
        .unwrap();
    assert!((gkd - kd).abs() < 1e-6 * kd.abs(), "{gkd} vs {kd}");
    close(&down(&g, &gkdl), &kdl, "distillation gradient");

    // Bad ids and shapes are errors, not launches.
    let bad: Vec<u32> = vec![vocab as u32; t];
    assert!(g.cross_entropy(&up(&z), &bad, vocab, &mut gdl).is_err());
    assert!(g.row_norms(&up(&x), 500).is_err());
}
