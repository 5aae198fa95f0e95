//! The fast forward pass against a slow, obviously-right one written here
//! position by position (scalar loops, no gemm, explicit causal loop), on
//! tiny random llama / qwen2 / qwen3 models.

use nq_host::model::forward::forward;
use nq_host::model::synthetic::{random_model, tiny_config};
use nq_host::model::{Arch, Matrix, ModelWeights};

fn matvec(w: &Matrix, x: &[f64]) -> Vec<f64> {
    (0..w.rows)
        .map(|i| {
            (0..w.cols)
                .map(|j| f64::from(w.data[i * w.cols + j]) * x[j])
                .sum()
        })
        .collect()
}

fn rms(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter()
        .zip(w)
        .map(|(v, &g)| v * inv * f64::from(g))
        .collect()
}

/// HF rotate-halves RoPE on one head vector at position `p`.
fn rope(x: &mut [f64], p: usize, theta: f64) {
    let d = x.len();
    for i in 0..d / 2 {
        let a = p as f64 * theta.powf(-2.0 * i as f64 / d as f64);
        let (u, v) = (x[i], x[i + d / 2]);
        x[i] = u * a.cos() - v * a.sin();
        x[i + d / 2] = v * a.cos() + u * a.sin();
    }
}

fn slow_forward(w: &ModelWeights, tokens: &[u32]) -> Vec<Vec<f64>> {
    let c = &w.config;
    let (h, kvh, hd) = (
        c.n_heads as usize,
        c.n_kv_heads as usize,
        c.head_dim as usize,
    );
    let eps = f64::from(c.norm_eps);
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| {
            w.token_embd
                .row(t as usize)
                .iter()
                .map(|&v| f64::from(v))
                .collect()
        })
        .collect();
    for l in &w.layers {
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (p, x) in xs.iter().enumerate() {
            let hn = rms(x, &l.attn_norm, eps);
            let add = |mut y: Vec<f64>, b: &Option<Vec<f32>>| {
                if let Some(b) = b {
                    y.iter_mut().zip(b).for_each(|(a, &bb)| *a += f64::from(bb));
                }
                y
            };
            let mut q = add(matvec(&l.wq, &hn), &l.bq);
            let mut k = add(matvec(&l.wk, &hn), &l.bk);
            let v = add(matvec(&l.wv, &hn), &l.bv);
            for (vecs, norm) in [(&mut q, &l.q_norm), (&mut k, &l.k_norm)] {
                for head in vecs.chunks_mut(hd) {
                    if let Some(nw) = norm {
                        let normed = rms(head, nw, eps);
                        head.copy_from_slice(&normed);
                    }
                    rope(head, p, f64::from(c.rope_theta));
                }
            }
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        let mut next = Vec::new();
        for (p, x) in xs.iter().enumerate() {
            let mut att = vec![0.0f64; h * hd];
            for head in 0..h {
                let g = head / (h / kvh);
                let q = &qs[p][head * hd..(head + 1) * hd];
                let scores: Vec<f64> = (0..=p)
                    .map(|s| {
                        let k = &ks[s][g * hd..(g + 1) * hd];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                for (s, sc) in scores.iter().enumerate() {
                    let pr = (sc - m).exp() / z;
                    for i in 0..hd {
                        att[head * hd + i] += pr * vs[s][g * hd + i];
                    }
                }
            }
            let o = matvec(&l.wo, &att);
            let x1: Vec<f64> = x.iter().zip(&o).map(|(a, b)| a + b).collect();
            let hn = rms(&x1, &l.ffn_norm, eps);
            let g = matvec(&l.w_gate, &hn);
            let u = matvec(&l.w_up, &hn);
            let a: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let dn = matvec(&l.w_down, &a);
            next.push(x1.iter().zip(&dn).map(|(a, b)| a + b).collect());
        }
        xs = next;
    }
    xs.iter()
        .map(|x| matvec(w.lm_head(), &rms(x, &w.output_norm, eps)))
        .collect()
}

#[test]
fn fast_forward_matches_slow_forward_for_every_flavour() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let w = random_model(tiny_config(arch), 7);
        w.validate().unwrap();
        let tokens: Vec<u32> = (0..13).map(|i| (i * 7 + 3) % 32).collect();
        let fast = forward(&w, &tokens, None).unwrap();
        let slow = slow_forward(&w, &tokens);
        let v = w.config.vocab_size as usize;
        for (p, row) in slow.iter().enumerate() {
            for (j, &want) in row.iter().enumerate() {
                let got = f64::from(fast[p * v + j]);
                assert!(
                    (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{arch:?} pos {p} logit {j}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn logits_are_causal() {
    let w = random_model(tiny_config(Arch::Llama), 3);
    let a: Vec<u32> = vec![1, 5, 9, 2, 7, 7, 3];
    let mut b = a.clone();
    b[5] = 30;
    b[6] = 0;
    let (la, lb) = (
        forward(&w, &a, None).unwrap(),
        forward(&w, &b, None).unwrap(),
    );
    let v = w.config.vocab_size as usize;
    assert_eq!(
        la[..5 * v],
        lb[..5 * v],
        "positions before the change must not move"
    );
    assert_ne!(la[5 * v..6 * v], lb[5 * v..6 * v]);
}

#[test]
fn out_of_vocabulary_token_is_an_error() {
    let w = random_model(tiny_config(Arch::Llama), 1);
    let err = forward(&w, &[1, 99], None).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
}
