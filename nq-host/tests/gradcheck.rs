//! Finite-difference checks of the FP32 backward pass
//! (`nq_host::model::backward`) on tiny random llama / qwen2 / qwen3 models.
//!
//! The finite differences run on an f64 reference of the same transformer
//! written here with plain loops ([`ref_loss`]; it reproduces the f32
//! forward's loss to 1e-5), so they carry no f32 noise: each is a
//! Richardson-extrapolated central difference `(4·D(h/2) − D(h)) / 3`,
//! `D(h) = (L(x+h) − L(x−h)) / 2h`, with `h` = [`STEP_REL`] × the tensor's
//! RMS (truncation O(h⁴), rounding ~1e-11). What remains is the error of the
//! f32 backward itself, budgeted in the table below.
//!
//! Covered, for each model: every parameter tensor (q/k/v/o/gate/up/down of
//! every block, attention/FFN/output norms, q/k/v biases, q/k norms, token
//! embedding tied and untied, untied LM head), the gradient w.r.t. every
//! block's input and every linear's output (perturbed inside the
//! reference forward), the `dW = dYᵀ·X` / `db = Σ dY` identities,
//! `block_backward` on its own, the statistics visitor, and causality.
//! Each tensor gets a few deterministic coordinates plus one random
//! direction over the whole tensor.

use nq_host::model::backward::{
    backward, block_backward, loss_and_dlogits, BackwardOptions, Grads, LinearId, LinearOutputGrads,
};
use nq_host::model::forward::{block_forward, embed, forward, linear, RopeTable, Tape};
use nq_host::model::synthetic::{random_model, tiny_config};
use nq_host::model::{Arch, ModelConfig, ModelWeights};

// ---- Error budget (the one table) -------------------------------------

/// FD step, relative to the RMS of the perturbed tensor.
const STEP_REL: f64 = 1e-3;
/// Largest allowed `|fd − an| / max(|fd|, |an|, ABS_FLOOR · scale)`, where
/// `scale` is the RMS of the tensor's analytic gradient.
const REL_TOL: f64 = 1e-3;
/// Coordinates whose gradient is this small against the tensor's RMS
/// gradient are compared absolutely (f32 cancellation).
const ABS_FLOOR: f64 = 1e-2;
/// The f64 reference loss vs the f32 forward's loss (relative).
const REF_TOL: f64 = 1e-5;
/// `dW = dYᵀ·X` recomputed in f64 vs the backward's f32 product, relative
/// to the largest `|dW|`.
const IDENTITY_TOL: f64 = 1e-5;

/// The sequence every check runs on; tokens 3 and 5 repeat (scatter-add).
const TOKENS: [u32; 8] = [3, 17, 5, 3, 29, 11, 5, 8];
/// Coordinates checked per tensor (plus one random direction).
const COORDS: usize = 4;

// ---- Models -------------------------------------------------------------

/// The models checked: each flavour, plus an untied multi-query llama.
fn models() -> Vec<(&'static str, ModelWeights)> {
    let mut mqa = tiny_config(Arch::Llama);
    mqa.n_kv_heads = 1;
    mqa.tied_embeddings = false;
    vec![
        ("llama", random_model(tiny_config(Arch::Llama), 11)),
        ("qwen2", random_model(tiny_config(Arch::Qwen2), 12)),
        ("qwen3", random_model(tiny_config(Arch::Qwen3), 13)),
        ("llama-mqa-untied", random_model(mqa, 14)),
    ]
}

fn full_backward(w: &ModelWeights, tokens: &[u32]) -> (Tape, Grads) {
    let mut tape = Tape::default();
    let logits = forward(w, tokens, Some(&mut tape)).unwrap();
    let (_, dl) = loss_and_dlogits(&logits, tokens, w.config.vocab_size as usize);
    let grads = backward(w, &tape, &dl, &mut BackwardOptions::full());
    (tape, grads)
}

fn model_loss(w: &ModelWeights) -> f64 {
    let logits = forward(w, &TOKENS, None).unwrap();
    loss_and_dlogits(&logits, &TOKENS, w.config.vocab_size as usize).0
}

// ---- Parameters ---------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Param {
    Embd,
    Output,
    OutputNorm,
    AttnNorm(usize),
    FfnNorm(usize),
    Linear(usize, LinearId),
    Bias(usize, LinearId),
    QNorm(usize),
    KNorm(usize),
}

/// A parameter tensor of `w` (weights or gradients alike); `None` when the
/// model does not have it.
fn tensor_mut(w: &mut ModelWeights, p: Param) -> Option<&mut Vec<f32>> {
    Some(match p {
        Param::Embd => &mut w.token_embd.data,
        Param::Output => &mut w.output.as_mut()?.data,
        Param::OutputNorm => &mut w.output_norm,
        Param::AttnNorm(i) => &mut w.layers[i].attn_norm,
        Param::FfnNorm(i) => &mut w.layers[i].ffn_norm,
        Param::Linear(i, id) => &mut id.weight_mut(&mut w.layers[i]).data,
        Param::Bias(i, LinearId::Q) => w.layers[i].bq.as_mut()?,
        Param::Bias(i, LinearId::K) => w.layers[i].bk.as_mut()?,
        Param::Bias(i, LinearId::V) => w.layers[i].bv.as_mut()?,
        Param::Bias(..) => return None,
        Param::QNorm(i) => w.layers[i].q_norm.as_mut()?,
        Param::KNorm(i) => w.layers[i].k_norm.as_mut()?,
    })
}

/// The summary group of a parameter: its kind, without the layer.
fn param_kind(p: Param, w: &ModelWeights) -> String {
    match p {
        Param::Embd if w.config.tied_embeddings => "token_embd (tied head)".into(),
        Param::Embd => "token_embd (untied)".into(),
        Param::Output => "output (untied head)".into(),
        Param::OutputNorm => "output_norm".into(),
        Param::AttnNorm(_) => "attn_norm".into(),
        Param::FfnNorm(_) => "ffn_norm".into(),
        Param::Linear(_, id) => format!("{} weight", id.name()),
        Param::Bias(_, id) => format!("{} bias", id.name()),
        Param::QNorm(_) => "attn_q_norm".into(),
        Param::KNorm(_) => "attn_k_norm".into(),
    }
}

fn all_params(n_layers: usize) -> Vec<Param> {
    let mut ps = vec![Param::Embd, Param::Output, Param::OutputNorm];
    for i in 0..n_layers {
        ps.extend([
            Param::AttnNorm(i),
            Param::FfnNorm(i),
            Param::QNorm(i),
            Param::KNorm(i),
        ]);
        ps.extend(LinearId::ALL.map(|id| Param::Linear(i, id)));
        ps.extend([LinearId::Q, LinearId::K, LinearId::V].map(|id| Param::Bias(i, id)));
    }
    ps
}

// ---- FD machinery -------------------------------------------------------

/// Deterministic pseudo-random numbers (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Uniform in [−1, 1).
    fn sym(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Worst case over a family of checks, reported and asserted at the end.
#[derive(Default)]
struct Report {
    rows: Vec<(String, String, f64, f64, f64)>,
}

impl Report {
    /// Records one comparison; `kind` groups the summary; gradients below
    /// `floor` are compared absolutely.
    fn check(&mut self, kind: &str, what: String, fd: f64, an: f64, floor: f64) {
        let err = (fd - an).abs() / fd.abs().max(an.abs()).max(floor).max(f64::MIN_POSITIVE);
        self.rows.push((kind.to_string(), what, fd, an, err));
    }

    /// Prints the worst case per kind and panics if any check is over
    /// budget.
    fn finish(&self, title: &str) {
        let mut families: Vec<(String, f64, usize)> = Vec::new();
        for (kind, _, _, _, err) in &self.rows {
            match families.iter_mut().find(|f| &f.0 == kind) {
                Some(f) => {
                    f.1 = f.1.max(*err);
                    f.2 += 1;
                }
                None => families.push((kind.clone(), *err, 1)),
            }
        }
        eprintln!("{title}: {} checks", self.rows.len());
        for (fam, err, n) in &families {
            eprintln!("  {fam:<40} n={n:<4} max rel err {err:.2e}");
        }
        let bad: Vec<_> = self
            .rows
            .iter()
            .filter(|r| r.4.is_nan() || r.4 > REL_TOL)
            .collect();
        assert!(
            bad.is_empty(),
            "{} of {} checks over budget (rel {REL_TOL}, floor {ABS_FLOOR} × RMS); first: {:?}",
            bad.len(),
            self.rows.len(),
            &bad[..bad.len().min(8)]
        );
    }
}

fn rms<T: Copy + Into<f64>>(x: &[T]) -> f64 {
    (x.iter().map(|&v| v.into().powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

/// Richardson-extrapolated central difference of `loss(s)` at `s = 0`.
fn fd(h: f64, mut loss: impl FnMut(f64) -> f64) -> f64 {
    let mut central = |h: f64| (loss(h) - loss(-h)) / (2.0 * h);
    let (d1, d2) = (central(h), central(h / 2.0));
    (4.0 * d2 - d1) / 3.0
}

/// Checks `grad` (the analytic gradient of a tensor of RMS `scale`) against
/// finite differences of `loss_with(delta)`, the loss with `delta` added to
/// the tensor: at each of `coords` and along one random direction.
#[allow(clippy::too_many_arguments)]
fn check_tensor(
    report: &mut Report,
    kind: &str,
    name: &str,
    grad: &[f32],
    scale: f64,
    rng: &mut Rng,
    coords: &[usize],
    mut loss_with: impl FnMut(&[f64]) -> f64,
) {
    let h = STEP_REL * scale.max(1e-3);
    let floor = ABS_FLOOR * rms(grad);
    let mut delta = vec![0.0f64; grad.len()];
    for &idx in coords {
        let got = fd(h, |s| {
            delta[idx] = s;
            let l = loss_with(&delta);
            delta[idx] = 0.0;
            l
        });
        report.check(
            kind,
            format!("{name}[{idx}]"),
            got,
            f64::from(grad[idx]),
            floor,
        );
    }
    let dir: Vec<f64> = (0..grad.len()).map(|_| f64::from(rng.sym())).collect();
    let along: f64 = grad.iter().zip(&dir).map(|(&g, &v)| f64::from(g) * v).sum();
    let got = fd(h / rms(&dir), |s| {
        delta.iter_mut().zip(&dir).for_each(|(a, &v)| *a = s * v);
        loss_with(&delta)
    });
    report.check(
        kind,
        format!("{name} (direction)"),
        got,
        along,
        floor * rms(&dir) * (grad.len() as f64).sqrt(),
    );
}

fn pick_coords(rng: &mut Rng, len: usize) -> Vec<usize> {
    (0..COORDS).map(|_| rng.below(len)).collect()
}

/// Adds `delta` to `x`.
fn add(x: &mut [f64], delta: &[f64]) {
    x.iter_mut().zip(delta).for_each(|(a, b)| *a += b);
}

// ---- The f64 reference ---------------------------------------------------

/// Where a reference hook fires inside block `i`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Site {
    /// The block input (`t × d`).
    Input,
    /// A linear's output (`t × out`; q/k before q/k-norm and RoPE).
    Output(LinearId),
}

/// A hook on the reference forward: `(block, site, activations)`.
type Hook<'a> = &'a mut dyn FnMut(usize, Site, &mut [f64]);

/// The model in f64, tensor by tensor.
#[derive(Clone)]
struct Ref {
    c: ModelConfig,
    tensors: Vec<(Param, Vec<f64>)>,
}

impl Ref {
    fn new(w: &ModelWeights) -> Self {
        let mut w = w.clone();
        let tensors = all_params(w.layers.len())
            .into_iter()
            .filter_map(|p| {
                tensor_mut(&mut w, p).map(|v| (p, v.iter().map(|&x| f64::from(x)).collect()))
            })
            .collect();
        Self {
            c: w.config,
            tensors,
        }
    }

    fn get(&self, p: Param) -> Option<&[f64]> {
        self.tensors
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, v)| v.as_slice())
    }

    fn at(&self, p: Param) -> &[f64] {
        self.get(p)
            .unwrap_or_else(|| panic!("reference has no {p:?}"))
    }

    fn get_mut(&mut self, p: Param) -> &mut [f64] {
        let (_, v) = self
            .tensors
            .iter_mut()
            .find(|(q, _)| *q == p)
            .expect("tensor present");
        v
    }
}

/// `y = x · Wᵀ` row by row, `W` of `out` rows.
fn ref_linear(x: &[f64], w: &[f64], out: usize) -> Vec<f64> {
    let inp = w.len() / out;
    let mut y = Vec::with_capacity(x.len() / inp * out);
    for row in x.chunks(inp) {
        for wr in w.chunks(inp) {
            y.push(row.iter().zip(wr).map(|(a, b)| a * b).sum());
        }
    }
    y
}

/// RMSNorm of every `w.len()`-wide row.
fn ref_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(w.len()) {
        let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / w.len() as f64 + eps).sqrt();
        y.extend(row.iter().zip(w).map(|(v, g)| v * inv * g));
    }
    y
}

/// Rotate-halves RoPE of every `hd`-wide head; row `p` at position `p`.
fn ref_rope(x: &mut [f64], width: usize, hd: usize, theta: f64) {
    for (p, row) in x.chunks_mut(width).enumerate() {
        for head in row.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let a = p as f64 * theta.powf(-2.0 * i as f64 / hd as f64);
                let (u, v) = (head[i], head[i + hd / 2]);
                head[i] = u * a.cos() - v * a.sin();
                head[i + hd / 2] = v * a.cos() + u * a.sin();
            }
        }
    }
}

/// Block `i` on `x` (`t × d`) in place.
fn ref_block(r: &Ref, i: usize, x: &mut [f64], t: usize, hook: Hook<'_>) {
    let c = &r.c;
    let (h, kvh, hd) = (
        c.n_heads as usize,
        c.n_kv_heads as usize,
        c.head_dim as usize,
    );
    let eps = f64::from(c.norm_eps);
    hook(i, Site::Input, x);
    let mut proj = |id: LinearId, input: &[f64]| {
        let w = r.at(Param::Linear(i, id));
        let out = w.len() / (input.len() / t);
        let mut y = ref_linear(input, w, out);
        if let Some(b) = r.get(Param::Bias(i, id)) {
            for row in y.chunks_mut(out) {
                row.iter_mut().zip(b).for_each(|(a, bb)| *a += bb);
            }
        }
        hook(i, Site::Output(id), &mut y);
        y
    };
    let h1 = ref_norm(x, r.at(Param::AttnNorm(i)), eps);
    let (mut q, mut k, v) = (
        proj(LinearId::Q, &h1),
        proj(LinearId::K, &h1),
        proj(LinearId::V, &h1),
    );
    if let (Some(qn), Some(kn)) = (r.get(Param::QNorm(i)), r.get(Param::KNorm(i))) {
        q = ref_norm(&q, qn, eps);
        k = ref_norm(&k, kn, eps);
    }
    let theta = f64::from(c.rope_theta);
    ref_rope(&mut q, h * hd, hd, theta);
    ref_rope(&mut k, kvh * hd, hd, theta);
    let mut att = vec![0.0f64; t * h * hd];
    for p in 0..t {
        for head in 0..h {
            let g = head / (h / kvh);
            let qv = &q[p * h * hd + head * hd..][..hd];
            let scores: Vec<f64> = (0..=p)
                .map(|s| {
                    let kv = &k[s * kvh * hd + g * hd..][..hd];
                    qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
            for (s, sc) in scores.iter().enumerate() {
                let pr = (sc - m).exp() / z;
                for j in 0..hd {
                    att[p * h * hd + head * hd + j] += pr * v[s * kvh * hd + g * hd + j];
                }
            }
        }
    }
    let o = proj(LinearId::O, &att);
    x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
    let h2 = ref_norm(x, r.at(Param::FfnNorm(i)), eps);
    let (gate, up) = (proj(LinearId::Gate, &h2), proj(LinearId::Up, &h2));
    let act: Vec<f64> = gate
        .iter()
        .zip(&up)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    let down = proj(LinearId::Down, &act);
    x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
}

/// Mean next-token cross-entropy of `TOKENS` under the reference.
fn ref_loss(r: &Ref, hook: Hook<'_>) -> f64 {
    let c = &r.c;
    let (d, vocab, t) = (c.d_model as usize, c.vocab_size as usize, TOKENS.len());
    let embd = r.at(Param::Embd);
    let mut x: Vec<f64> = TOKENS
        .iter()
        .flat_map(|&tok| embd[tok as usize * d..][..d].to_vec())
        .collect();
    for i in 0..c.n_layers as usize {
        ref_block(r, i, &mut x, t, hook);
    }
    let hn = ref_norm(&x, r.at(Param::OutputNorm), f64::from(c.norm_eps));
    let logits = ref_linear(&hn, r.get(Param::Output).unwrap_or(embd), vocab);
    let mut total = 0.0;
    for (row, &next) in logits.chunks(vocab).zip(&TOKENS[1..]) {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        total += m + row.iter().map(|z| (z - m).exp()).sum::<f64>().ln() - row[next as usize];
    }
    total / (t - 1) as f64
}

fn no_hook(_: usize, _: Site, _: &mut [f64]) {}

// ---- Tests --------------------------------------------------------------

#[test]
fn reference_matches_the_forward() {
    for (arch, w) in models() {
        let (want, got) = (model_loss(&w), ref_loss(&Ref::new(&w), &mut no_hook));
        assert!(
            (want - got).abs() <= REF_TOL * want.abs(),
            "{arch}: f32 forward {want}, reference {got}"
        );
    }
}

#[test]
fn weight_gradients_match_finite_differences() {
    let mut report = Report::default();
    for (arch, w) in models() {
        let (_, grads) = full_backward(&w, &TOKENS);
        let mut g = grads.weights.expect("weight gradients asked for");
        let mut r = Ref::new(&w);
        let mut rng = Rng(0x5EED ^ arch.len() as u64);
        let mut checked = 0;
        for p in all_params(w.layers.len()) {
            let Some(base) = r.get(p).map(<[f64]>::to_vec) else {
                assert!(
                    tensor_mut(&mut g, p).is_none(),
                    "{arch}: gradient for absent {p:?}"
                );
                continue;
            };
            let grad = tensor_mut(&mut g, p)
                .unwrap_or_else(|| panic!("{arch}: no gradient for {p:?}"))
                .clone();
            assert_eq!(grad.len(), base.len(), "{arch} {p:?}: gradient shape");
            let coords = match p {
                // Rows of a repeated, a single and an absent token.
                Param::Embd => {
                    let d = w.config.d_model as usize;
                    [3usize, 5, 17, 0]
                        .iter()
                        .map(|&row| row * d + rng.below(d))
                        .collect()
                }
                _ => pick_coords(&mut rng, base.len()),
            };
            let (kind, name) = (param_kind(p, &w), format!("{arch} {p:?}"));
            check_tensor(
                &mut report,
                &kind,
                &name,
                &grad,
                rms(&base),
                &mut rng,
                &coords,
                |delta| {
                    add(r.get_mut(p), delta);
                    let l = ref_loss(&r, &mut no_hook);
                    r.get_mut(p).copy_from_slice(&base);
                    l
                },
            );
            checked += 1;
        }
        let n = w.layers.len();
        let (tied, bias, qk) = (
            w.config.tied_embeddings,
            w.config.attn_bias,
            w.config.qk_norm,
        );
        let expect = 3 - usize::from(tied) + n * (9 + 3 * usize::from(bias) + 2 * usize::from(qk));
        assert_eq!(checked, expect, "{arch}: tensors checked");
    }
    report.finish("weight gradients");
}

#[test]
fn activation_gradients_match_finite_differences() {
    let mut report = Report::default();
    let t = TOKENS.len();
    for (arch, w) in models() {
        let (tape, grads) = full_backward(&w, &TOKENS);
        let r = Ref::new(&w);
        let mut rng = Rng(0xAC7 ^ arch.len() as u64);
        for (layer, bt) in tape.blocks.iter().enumerate() {
            let mut sites = vec![(Site::Input, &grads.block_inputs[layer][..], rms(&bt.x_in))];
            for id in LinearId::ALL {
                let y = linear(id.input(bt), id.weight(&w.layers[layer]), None, t);
                sites.push((
                    Site::Output(id),
                    grads.linear_outputs[layer].get(id),
                    rms(&y),
                ));
            }
            for (site, grad, scale) in sites {
                let mut coords = pick_coords(&mut rng, grad.len());
                coords.push(grad.len() - 1 - rng.below(grad.len() / t)); // last row: zero
                let kind = match site {
                    Site::Input => "block input".to_string(),
                    Site::Output(id) => format!("{} output", id.name()),
                };
                let name = format!("{arch} block {layer} {kind}");
                check_tensor(
                    &mut report,
                    &kind,
                    &name,
                    grad,
                    scale,
                    &mut rng,
                    &coords,
                    |delta| {
                        ref_loss(&r, &mut |i, s, x| {
                            if i == layer && s == site {
                                add(x, delta);
                            }
                        })
                    },
                );
            }
        }
    }
    report.finish("activation gradients");
}

/// `dW = dYᵀ·X` and `db = Σ_rows dY`, recomputed in f64 from the reported
/// output gradients and the tape.
#[test]
fn weight_gradients_are_output_gradients_times_inputs() {
    let t = TOKENS.len();
    for (arch, w) in models() {
        let (tape, grads) = full_backward(&w, &TOKENS);
        let g = grads.weights.as_ref().unwrap();
        for (layer, bt) in tape.blocks.iter().enumerate() {
            let outs = &grads.linear_outputs[layer];
            for id in LinearId::ALL {
                let (dy, x) = (outs.get(id), id.input(bt));
                let gw = id.weight(&g.layers[layer]);
                let (m, n) = (gw.rows, gw.cols);
                assert_eq!((dy.len(), x.len()), (t * m, t * n), "{arch} {layer} {id:?}");
                let scale = gw
                    .data
                    .iter()
                    .fold(0.0f64, |a, &v| a.max(f64::from(v).abs()));
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..t)
                            .map(|r| f64::from(dy[r * m + i]) * f64::from(x[r * n + j]))
                            .sum();
                        let got = f64::from(gw.data[i * n + j]);
                        assert!(
                            (got - want).abs() <= IDENTITY_TOL * scale.max(1e-6),
                            "{arch} block {layer} {id:?} dW[{i},{j}] = {got}, dYᵀX = {want}"
                        );
                    }
                }
            }
            let l = &g.layers[layer];
            for (id, b) in [
                (LinearId::Q, &l.bq),
                (LinearId::K, &l.bk),
                (LinearId::V, &l.bv),
            ] {
                let Some(b) = b else { continue };
                let dy = outs.get(id);
                for (j, &got) in b.iter().enumerate() {
                    let want: f64 = (0..t).map(|r| f64::from(dy[r * b.len() + j])).sum();
                    assert!(
                        (f64::from(got) - want).abs() <= 1e-6,
                        "{arch} {id:?} bias {j}"
                    );
                }
            }
        }
    }
}

/// `block_backward` alone, on block 1: loss `Σ G ⊙ block(x)` for a random
/// `G`, `x` the block's real input.
#[test]
fn block_backward_on_its_own() {
    let mut report = Report::default();
    for (arch, w) in models() {
        let c = w.config;
        let t = TOKENS.len();
        let rope = RopeTable::new(c.head_dim as usize, c.rope_theta, t);
        let mut x = embed(&w, &TOKENS).unwrap();
        block_forward(&w.layers[0], &c, &rope, &mut x, t, None);
        let mut rng = Rng(0xB10C ^ arch.len() as u64);
        let g_out: Vec<f32> = (0..x.len()).map(|_| rng.sym()).collect();
        let mut bt = Default::default();
        block_forward(&w.layers[1], &c, &rope, &mut x.clone(), t, Some(&mut bt));
        let bg = block_backward(&w.layers[1], &c, &rope, &bt, &g_out, true);
        let gw = bg.weights.as_ref().expect("weight gradients asked for");

        let mut r = Ref::new(&w);
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let block_loss = |r: &Ref, dx: &[f64]| -> f64 {
            let mut y = x64.clone();
            add(&mut y, dx);
            ref_block(r, 1, &mut y, t, &mut no_hook);
            y.iter().zip(&g_out).map(|(&a, &b)| a * f64::from(b)).sum()
        };
        let coords = pick_coords(&mut rng, x.len());
        let name = format!("{arch} input");
        check_tensor(
            &mut report,
            "block input",
            &name,
            &bg.d_input,
            rms(&x),
            &mut rng,
            &coords,
            |dx| block_loss(&r, dx),
        );
        for id in LinearId::ALL {
            let p = Param::Linear(1, id);
            let base = r.at(p).to_vec();
            let coords = pick_coords(&mut rng, base.len());
            let (kind, name) = (format!("{} weight", id.name()), format!("{arch} {id:?}"));
            let zero = vec![0.0f64; x.len()];
            check_tensor(
                &mut report,
                &kind,
                &name,
                &id.weight(gw).data,
                rms(&base),
                &mut rng,
                &coords,
                |dw| {
                    add(r.get_mut(p), dw);
                    let l = block_loss(&r, &zero);
                    r.get_mut(p).copy_from_slice(&base);
                    l
                },
            );
        }
        // Without weight gradients: the same activation gradients, bit for bit.
        let lean = block_backward(&w.layers[1], &c, &rope, &bt, &g_out, false);
        assert!(lean.weights.is_none());
        assert_eq!(lean.d_input, bg.d_input);
        for id in LinearId::ALL {
            assert_eq!(lean.outputs.get(id), bg.outputs.get(id), "{arch} {id:?}");
        }
    }
    report.finish("block_backward");
}

#[test]
fn visitor_sees_what_full_backward_keeps() {
    for (arch, w) in models() {
        let (tape, full) = full_backward(&w, &TOKENS);
        let logits = forward(&w, &TOKENS, None).unwrap();
        let (_, dl) = loss_and_dlogits(&logits, &TOKENS, w.config.vocab_size as usize);
        let mut seen: Vec<(usize, LinearId, Vec<f32>)> = Vec::new();
        let mut visit = |layer: usize, id: LinearId, g: &[f32]| seen.push((layer, id, g.to_vec()));
        let lean = backward(&w, &tape, &dl, &mut BackwardOptions::visit_only(&mut visit));
        assert!(
            lean.weights.is_none()
                && lean.block_inputs.is_empty()
                && lean.linear_outputs.is_empty()
        );
        let n = w.layers.len();
        assert_eq!(seen.len(), n * LinearId::ALL.len(), "{arch}");
        for (k, (layer, id, g)) in seen.iter().enumerate() {
            assert_eq!(*layer, n - 1 - k / 7, "{arch}: layers last to first");
            assert_eq!(*id, LinearId::ALL[k % 7]);
            assert_eq!(
                g.as_slice(),
                full.linear_outputs[*layer].get(*id),
                "{arch} {layer} {id:?}"
            );
        }
    }
}

#[test]
fn loss_matches_a_direct_computation() {
    let vocab = 5;
    let tokens = [1u32, 4, 0];
    let logits: Vec<f32> = (0..15).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
    let (loss, dl) = loss_and_dlogits(&logits, &tokens, vocab);
    let mut want = 0.0;
    for (i, &next) in tokens[1..].iter().enumerate() {
        let row = &logits[i * vocab..(i + 1) * vocab];
        let z: f64 = row.iter().map(|&v| f64::from(v).exp()).sum();
        want += z.ln() - f64::from(row[next as usize]);
        for (j, &v) in row.iter().enumerate() {
            let p = f64::from(v).exp() / z - f64::from(u8::from(j == next as usize));
            assert!((f64::from(dl[i * vocab + j]) - p / 2.0).abs() < 1e-7);
        }
    }
    assert!(
        (loss - want / 2.0).abs() < 1e-12,
        "{loss} vs {}",
        want / 2.0
    );
    assert!(
        dl[2 * vocab..].iter().all(|&g| g == 0.0),
        "last row gets no gradient"
    );
    assert_eq!(
        loss_and_dlogits(&logits[..5], &tokens[..1], vocab),
        (0.0, vec![0.0; 5])
    );
}

/// The loss of predictions at rows `< cut` has no gradient w.r.t. any
/// activation at rows `≥ cut`, and does not depend on the tokens after
/// `cut`: a permuted future gives the same gradients on the prefix.
#[test]
fn gradients_are_causal() {
    let t = TOKENS.len();
    let mut future = TOKENS;
    future[5..].reverse();
    future[7] = 30;
    for (arch, w) in models() {
        let vocab = w.config.vocab_size as usize;
        let d = w.config.d_model as usize;
        for cut in [1usize, 4] {
            let mut per_seq: Vec<Grads> = Vec::new();
            for tokens in [TOKENS, future] {
                let mut tape = Tape::default();
                let logits = forward(&w, &tokens, Some(&mut tape)).unwrap();
                let (_, mut dl) = loss_and_dlogits(&logits, &tokens, vocab);
                dl[cut * vocab..].fill(0.0); // rows < cut predict tokens ≤ cut (shared)
                let g = backward(&w, &tape, &dl, &mut BackwardOptions::full());
                let zero_after =
                    |x: &[f32], width: usize| x[cut * width..].iter().all(|&v| v == 0.0);
                for (layer, (xi, outs)) in g.block_inputs.iter().zip(&g.linear_outputs).enumerate()
                {
                    assert!(
                        zero_after(xi, d),
                        "{arch} cut {cut}: block {layer} input grad leaks"
                    );
                    for id in LinearId::ALL {
                        let y = outs.get(id);
                        assert!(
                            zero_after(y, y.len() / t),
                            "{arch} cut {cut}: block {layer} {id:?} leaks"
                        );
                    }
                }
                per_seq.push(g);
            }
            let close = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .all(|(&x, &y)| (x - y).abs() <= 1e-6 * (1.0 + x.abs()))
            };
            for layer in 0..w.layers.len() {
                let (a, b) = (&per_seq[0], &per_seq[1]);
                assert!(
                    close(&a.block_inputs[layer], &b.block_inputs[layer]),
                    "{arch} cut {cut} block {layer}"
                );
                let (oa, ob): (&LinearOutputGrads, &LinearOutputGrads) =
                    (&a.linear_outputs[layer], &b.linear_outputs[layer]);
                for id in LinearId::ALL {
                    assert!(
                        close(oa.get(id), ob.get(id)),
                        "{arch} cut {cut} block {layer} {id:?}"
                    );
                }
            }
        }
    }
}
