//! Output-aligned full-rank binary layers (ARB-OA): the second seed paper's
//! fix for error accumulation (arXiv 2512.21651, DESIGN.md §3).
//!
//! Weight matching (`‖W − Ŵ‖²`, [`Method::ArbRc`]) ignores two facts: the
//! layer only ever sees inputs `X` with a very uneven covariance, and in a
//! quantized model those inputs have already drifted (`X̂`, the output of the
//! quantized blocks before it). ARB-OA fits the layer to what its output
//! should be instead:
//!
//! ```text
//! minimize  ‖X Wᵀ − X̂ Ŵᵀ‖²_F   over   Ŵ = diag(α_r) · B · diag(α_c),  B ∈ {±1}^{m×n}
//! ```
//!
//! with `X` (`t × n`, rows = tokens) the full-precision stream's input and
//! `X̂` the quantized stream's input.
//!
//! # Sufficient statistics
//!
//! With `H = X̂ᵀX̂`, `C = X̂ᵀX`, `G = XᵀX` (all `n × n`, [`AlignStats`]) the
//! objective splits into independent rows `w_i`, `ŵ_i` of `W`, `Ŵ`:
//!
//! ```text
//! f(Ŵ) = Σ_i  w_iᵀ G w_i − 2 ŵ_iᵀ p_i + ŵ_iᵀ H ŵ_i,     p_i = C w_i   (P = W Cᵀ)
//! ```
//!
//! so calibration windows only need to be folded into three `n × n` sums,
//! in any number of [`AlignStats::add`] calls. `G` is kept (rather than only
//! its trace) because the reported relative error divides by
//! `‖X Wᵀ‖² = Σ_i w_iᵀ G w_i`, which needs all of it.
//!
//! **Damping.** `λ = δ · mean(diag H)` is added to the diagonals of all three
//! matrices. That is the same as appending `√λ·I` to both `X` and `X̂` —
//! `λ` "tokens" on which both streams agree — so the damped objective is
//! `f + λ‖W − Ŵ‖²`: a pull toward weight matching that keeps the systems
//! positive definite when `H` is rank-deficient (fewer tokens than inputs,
//! dead channels). The alternating steps minimize the damped objective; the
//! reported error ([`output_rel_error`]) is the undamped one.
//!
//! # Closed-form alternating updates
//!
//! Start from ARB-RC (`B = sign(W)`, `α_r`, `α_c` by alternating least
//! squares on `‖W − Ŵ‖²`), then repeat for [`AlignOptions::rounds`]:
//!
//! * **`α_r`** — with `u_i = b_i ⊙ α_c`, `ŵ_i = α_r,i u_i` and
//!   `f_i(a) = a² u_iᵀHu_i − 2a u_iᵀp_i`, so `α_r,i = u_iᵀp_i / u_iᵀHu_i`
//!   (rows with a zero denominator keep their scale).
//! * **`α_c`** — `ŵ_i = α_r,i diag(b_i) α_c`, hence
//!   `Σ_i ŵ_iᵀHŵ_i = α_cᵀ M α_c` with
//!   `M = Σ_i α_r,i² diag(b_i) H diag(b_i) = H ⊙ (Bᵀ diag(α_r²) B)` and
//!   `Σ_i ŵ_iᵀp_i = α_cᵀ q` with `q = (B ⊙ P)ᵀ α_r`. The minimizer solves
//!   `M α_c = q` (one `n × n` Cholesky solve). `M` is positive definite
//!   when the damped `H` is and some `α_r,i ≠ 0` (Schur product theorem:
//!   PD ⊙ PSD with a positive diagonal is PD).
//! * **`B`** — one sweep of exact coordinate descent per row, `j = 0..n`:
//!   flipping `b_ij` changes `ŵ_ij` by `δ = −2ŵ_ij` and `f_i` by
//!   `Δ = δ(2g_j + δH_jj)` with `g = Hŵ_i − p_i`; a flip is taken only when
//!   `Δ < 0`, and then `g += δ·H_{:,j}`. Rows are independent, so they run
//!   in parallel without changing the result.
//!
//! Each step is an exact minimization (or a descent) in exact arithmetic. To
//! make "never increases" hold in floating point too, every candidate is
//! evaluated on the full damped objective (for `α_r` through the `UH`
//! product the step already needs, for `α_c` and `B` from scratch) and
//! accepted only if it does not increase it; [`arb_oa_with_trace`] returns
//! that sequence. Rounds stop
//! early once a whole round leaves the objective unchanged.
//!
//! # Export
//!
//! Scales are balanced to equal RMS (the product is unchanged), rounded to
//! f16, and `dense` is rebuilt from the rounded scales in the same order as
//! `BinaryLinear::dequantize_into`, so it is exactly the layer in the blob.
//! `Quantized::weighted_rel_error` holds the *output* relative error
//! [`output_rel_error`] of that `dense`. Scales may be negative (a row whose
//! best fit flips every output).
//!
//! Everything runs in f64. Products go through faer's GEMM, which splits
//! only the output across threads, and every reduction runs in a fixed
//! order, so results do not depend on the thread count.
//!
//! [`Method::ArbRc`]: super::factor::Method::ArbRc

use faer::dyn_stack::{GlobalPodBuffer, PodStack};
use faer::linalg::cholesky::llt::compute::{cholesky_in_place, cholesky_in_place_req};
use faer::linalg::cholesky::llt::solve::solve_in_place_with_conj;
use faer::linalg::matmul::matmul;
use faer::mat::{from_column_major_slice_mut, from_row_major_slice, from_row_major_slice_mut};
use faer::{Conj, Parallelism};
use nq_core::{F16Vector, SignMatrix};
use rayon::prelude::*;

use super::factor::{FactorError, Quantized};
use crate::model::Matrix;

/// Default damping `δ` (fraction of `mean(diag H)` added to the diagonals).
pub const DEFAULT_DAMPING: f64 = 0.01;
/// Default number of alternating rounds (`α_r`, `α_c`, `B` each).
pub const DEFAULT_ROUNDS: usize = 8;
/// Alternating scale updates of the ARB-RC starting point (as in `factor`).
const INIT_ITERS: usize = 10;
/// Tokens converted to f64 at a time in [`AlignStats::add`].
const TOKEN_BLOCK: usize = 512;

/// Second-moment statistics of one linear layer's two input streams.
///
/// `x_fp` rows are the full-precision model's inputs to the layer, `x_q` the
/// quantized model's inputs on the same tokens. All three matrices are
/// `n × n`, row-major, summed (not averaged) over tokens in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct AlignStats {
    /// `X̂ᵀX̂` (quantized stream with itself).
    pub h: Vec<f64>,
    /// `X̂ᵀX` (quantized stream against the full-precision stream).
    pub c: Vec<f64>,
    /// `XᵀX` (full-precision stream with itself; gives `‖X Wᵀ‖²`).
    pub g: Vec<f64>,
    /// Input features `n`.
    pub n: usize,
    /// Tokens accumulated so far.
    pub tokens: usize,
}

impl AlignStats {
    /// Empty statistics for a layer with `n` inputs.
    pub fn new(n: usize) -> Self {
        Self {
            h: vec![0.0; n * n],
            c: vec![0.0; n * n],
            g: vec![0.0; n * n],
            n,
            tokens: 0,
        }
    }

    /// Adds `t` tokens: `x_fp` and `x_q` are both `t × n`, row-major.
    ///
    /// Errors (and leaves `self` unchanged) on `n = 0`, lengths that differ
    /// or are not a multiple of `n`, and non-finite values.
    pub fn add(&mut self, x_fp: &[f32], x_q: &[f32]) -> Result<(), FactorError> {
        let n = self.n;
        if n == 0 {
            return Err(FactorError::Empty { rows: 0, cols: 0 });
        }
        if !x_fp.len().is_multiple_of(n) {
            return Err(FactorError::Length {
                what: "full-precision inputs",
                expected: x_fp.len() / n * n,
                found: x_fp.len(),
            });
        }
        if x_q.len() != x_fp.len() {
            return Err(FactorError::Length {
                what: "quantized-stream inputs",
                expected: x_fp.len(),
                found: x_q.len(),
            });
        }
        if !x_fp.iter().all(|x| x.is_finite()) {
            return Err(FactorError::NonFinite("full-precision inputs"));
        }
        if !x_q.iter().all(|x| x.is_finite()) {
            return Err(FactorError::NonFinite("quantized-stream inputs"));
        }
        let block = TOKEN_BLOCK * n;
        for (fp, q) in x_fp.chunks(block).zip(x_q.chunks(block)) {
            let t = fp.len() / n;
            let a: Vec<f64> = fp.iter().map(|&x| f64::from(x)).collect();
            let b: Vec<f64> = q.iter().map(|&x| f64::from(x)).collect();
            gemm_tn(&mut self.h, &b, &b, n, n, t);
            gemm_tn(&mut self.c, &b, &a, n, n, t);
            gemm_tn(&mut self.g, &a, &a, n, n, t);
        }
        self.tokens += x_fp.len() / n;
        Ok(())
    }

    /// Adds another accumulator's sums (e.g. one per worker or window set).
    pub fn merge(&mut self, other: &AlignStats) -> Result<(), FactorError> {
        if other.n != self.n {
            return Err(FactorError::Length {
                what: "merged statistics",
                expected: self.n,
                found: other.n,
            });
        }
        other.check()?;
        for (dst, src) in [
            (&mut self.h, &other.h),
            (&mut self.c, &other.c),
            (&mut self.g, &other.g),
        ] {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        }
        self.tokens += other.tokens;
        Ok(())
    }

    /// Shapes and finiteness (the fields are public).
    fn check(&self) -> Result<(), FactorError> {
        let nn = self.n.saturating_mul(self.n);
        for (what, v) in [
            ("alignment statistics H", &self.h),
            ("alignment statistics C", &self.c),
            ("alignment statistics G", &self.g),
        ] {
            if v.len() != nn {
                return Err(FactorError::Length {
                    what,
                    expected: nn,
                    found: v.len(),
                });
            }
            if !v.iter().all(|x| x.is_finite()) {
                return Err(FactorError::NonFinite(what));
            }
        }
        Ok(())
    }
}

/// Knobs of [`arb_oa`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlignOptions {
    /// Alternating rounds (`α_r`, `α_c`, `B` each); 0 returns ARB-RC.
    pub rounds: usize,
    /// Damping `δ ≥ 0`: `δ · mean(diag H)` is added to the diagonals of
    /// `H`, `C` and `G` (a ridge toward `W`, see the module docs).
    pub damping: f64,
}

impl Default for AlignOptions {
    fn default() -> Self {
        Self {
            rounds: DEFAULT_ROUNDS,
            damping: DEFAULT_DAMPING,
        }
    }
}

/// `‖X Wᵀ − X̂ Ŵᵀ‖²_F` from the statistics (undamped, ≥ 0).
pub fn output_error(w: &Matrix, w_hat: &Matrix, stats: &AlignStats) -> Result<f64, FactorError> {
    check_pair(w, w_hat, stats)?;
    let prob = Problem::new(w, stats, 0.0);
    Ok(prob.objective(&to_f64(&w_hat.data)).max(0.0))
}

/// `‖X Wᵀ − X̂ Ŵᵀ‖²_F / ‖X Wᵀ‖²_F` from the statistics: 0 when both are 0,
/// +∞ when only the denominator is.
pub fn output_rel_error(
    w: &Matrix,
    w_hat: &Matrix,
    stats: &AlignStats,
) -> Result<f64, FactorError> {
    check_pair(w, w_hat, stats)?;
    let prob = Problem::new(w, stats, 0.0);
    Ok(prob.rel(prob.objective(&to_f64(&w_hat.data))))
}

/// Output-aligned full-rank binary layer for `w` (`m × n`); `bias` (`m`) is
/// passed through as f16. See the module docs for the algorithm.
pub fn arb_oa(
    w: &Matrix,
    stats: &AlignStats,
    bias: Option<&[f32]>,
    opts: &AlignOptions,
) -> Result<Quantized, FactorError> {
    arb_oa_with_trace(w, stats, bias, opts).map(|(q, _)| q)
}

/// [`arb_oa`] plus the damped objective after the ARB-RC start and after
/// every step (`α_r`, `α_c`, `B` per round), before f16 rounding. The
/// sequence never increases.
pub fn arb_oa_with_trace(
    w: &Matrix,
    stats: &AlignStats,
    bias: Option<&[f32]>,
    opts: &AlignOptions,
) -> Result<(Quantized, Vec<f64>), FactorError> {
    validate(w, stats, bias, opts)?;
    let (m, n) = (w.rows, w.cols);
    let diag_mean = (0..n).map(|j| stats.h[j * n + j]).sum::<f64>() / n as f64;
    let prob = Problem::new(w, stats, opts.damping * diag_mean);
    let mut it = Iterate::new(&prob, arb_rc_start(w));
    let mut trace = vec![it.f];
    for _ in 0..opts.rounds {
        let before = it.f;
        let (ar, wh, f) = prob.row_scales(&it);
        it.offer(it.st.with_row_scales(ar), wh, f);
        trace.push(it.f);
        if let Some(col) = prob.col_scales(&it.st) {
            it.offer_full(&prob, it.st.with_col_scales(col));
        }
        trace.push(it.f);
        let signs = prob.sign_sweep(&it);
        it.offer_full(&prob, it.st.with_signs(signs));
        trace.push(it.f);
        if it.f >= before {
            break;
        }
    }
    let st = it.st;
    let mut q = export(&st, m, n, bias)?;
    let exact = Problem::new(w, stats, 0.0);
    q.weighted_rel_error = exact.rel(exact.objective(&to_f64(&q.dense.data)));
    Ok((q, trace))
}

/// The current point of the alternation with its damped objective `f` and
/// `ŴH` (reused by the next step).
struct Iterate {
    st: State,
    f: f64,
    wh: Vec<f64>,
}

impl Iterate {
    fn new(prob: &Problem, st: State) -> Self {
        let (f, wh) = prob.evaluate(&st.dense());
        Self { st, f, wh }
    }

    /// Takes `cand` (objective `f`, product `wh`) if `f` is finite and not
    /// above the current objective.
    fn offer(&mut self, cand: State, wh: Vec<f64>, f: f64) {
        if f.is_finite() && f <= self.f {
            *self = Self { st: cand, f, wh };
        }
    }

    /// [`Self::offer`] after evaluating `cand` from scratch.
    fn offer_full(&mut self, prob: &Problem, cand: State) {
        let (f, wh) = prob.evaluate(&cand.dense());
        self.offer(cand, wh, f);
    }
}

fn validate(
    w: &Matrix,
    stats: &AlignStats,
    bias: Option<&[f32]>,
    opts: &AlignOptions,
) -> Result<(), FactorError> {
    let (m, n) = (w.rows, w.cols);
    if m == 0 || n == 0 {
        return Err(FactorError::Empty { rows: m, cols: n });
    }
    if w.data.len() != m.saturating_mul(n) {
        return Err(FactorError::Length {
            what: "weight data",
            expected: m.saturating_mul(n),
            found: w.data.len(),
        });
    }
    if stats.n != n {
        return Err(FactorError::Length {
            what: "alignment statistics (inputs)",
            expected: n,
            found: stats.n,
        });
    }
    stats.check()?;
    if stats.tokens == 0 {
        return Err(FactorError::BadOption(
            "alignment statistics hold no tokens",
        ));
    }
    if !w.data.iter().all(|x| x.is_finite()) {
        return Err(FactorError::NonFinite("weights"));
    }
    if let Some(b) = bias {
        if b.len() != m {
            return Err(FactorError::Length {
                what: "bias",
                expected: m,
                found: b.len(),
            });
        }
        if !b.iter().all(|x| x.is_finite()) {
            return Err(FactorError::NonFinite("bias"));
        }
    }
    if !opts.damping.is_finite() || opts.damping < 0.0 {
        return Err(FactorError::BadOption("damping must be finite and ≥ 0"));
    }
    Ok(())
}

/// Shapes and finiteness for the error functions.
fn check_pair(w: &Matrix, w_hat: &Matrix, stats: &AlignStats) -> Result<(), FactorError> {
    let (m, n) = (w.rows, w.cols);
    for (what, x) in [("weights", w), ("approximation", w_hat)] {
        if x.rows != m || x.cols != n || x.data.len() != m.saturating_mul(n) {
            return Err(FactorError::Length {
                what,
                expected: m.saturating_mul(n),
                found: x.data.len(),
            });
        }
        if !x.data.iter().all(|v| v.is_finite()) {
            return Err(FactorError::NonFinite(what));
        }
    }
    if stats.n != n {
        return Err(FactorError::Length {
            what: "alignment statistics (inputs)",
            expected: n,
            found: stats.n,
        });
    }
    stats.check()
}

/// The (damped) objective of one layer, precomputed.
struct Problem {
    m: usize,
    n: usize,
    /// `H + λI`, symmetrized (`n × n`).
    h: Vec<f64>,
    /// `P = W (C + λI)ᵀ` (`m × n`).
    p: Vec<f64>,
    /// `Σ_i w_iᵀ (G + λI) w_i = ‖X Wᵀ‖²` (+ `λ‖W‖²`).
    k: f64,
}

impl Problem {
    fn new(w: &Matrix, stats: &AlignStats, lambda: f64) -> Self {
        let (m, n) = (w.rows, w.cols);
        let mut h = vec![0.0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = 0.5 * (stats.h[i * n + j] + stats.h[j * n + i]);
            }
            h[i * n + i] += lambda;
        }
        let wd = to_f64(&w.data);
        let mut p = vec![0.0f64; m * n];
        gemm_nt(&mut p, &wd, &stats.c, m, n, n);
        // + λ W for the damped C.
        p.iter_mut().zip(&wd).for_each(|(x, &v)| *x += lambda * v);
        let mut wg = vec![0.0f64; m * n];
        gemm_nt(&mut wg, &wd, &stats.g, m, n, n);
        let k = row_sums(&wg, &wd, n).iter().sum::<f64>()
            + lambda * wd.iter().map(|v| v * v).sum::<f64>();
        Self { m, n, h, p, k }
    }

    /// `k − 2 Σ Ŵ⊙P + Σ (ŴH)⊙Ŵ`.
    fn objective(&self, w_hat: &[f64]) -> f64 {
        self.evaluate(w_hat).0
    }

    /// The objective and `ŴH` (rows reduced in parallel, summed in order).
    fn evaluate(&self, w_hat: &[f64]) -> (f64, Vec<f64>) {
        let mut wh = vec![0.0f64; self.m * self.n];
        gemm_nn(&mut wh, w_hat, &self.h, self.m, self.n, self.n);
        let quad = row_sums(&wh, w_hat, self.n);
        let lin = row_sums(&self.p, w_hat, self.n);
        let f = self.k + quad.iter().zip(&lin).map(|(q, l)| q - 2.0 * l).sum::<f64>();
        (f, wh)
    }

    /// Relative error for an objective value computed with `λ = 0`.
    fn rel(&self, f: f64) -> f64 {
        let f = f.max(0.0);
        if self.k > 0.0 {
            f / self.k
        } else if f == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    }

    /// Optimal `α_r` for the current `B`, `α_c`, with the candidate's `ŴH`
    /// and objective (both follow from `UH`: `ŵ_iᵀHŵ_i = α_r,i² u_iᵀHu_i`).
    fn row_scales(&self, it: &Iterate) -> (Vec<f64>, Vec<f64>, f64) {
        let (n, st) = (self.n, &it.st);
        let u: Vec<f64> =
            st.b.chunks(n)
                .flat_map(|row| row.iter().zip(&st.ac).map(|(b, c)| b * c))
                .collect();
        let mut wh = vec![0.0f64; self.m * n];
        gemm_nn(&mut wh, &u, &self.h, self.m, n, n);
        let den = row_sums(&wh, &u, n);
        let num = row_sums(&self.p, &u, n);
        let ar: Vec<f64> = st
            .ar
            .iter()
            .zip(den.iter().zip(&num))
            .map(|(&old, (&d, &q))| {
                let a = q / d;
                if d > 0.0 && a.is_finite() {
                    a
                } else {
                    old
                }
            })
            .collect();
        let mut f = self.k;
        for ((&a, &d), &q) in ar.iter().zip(&den).zip(&num) {
            f += a * a * d - 2.0 * a * q;
        }
        wh.par_chunks_mut(n)
            .zip(ar.par_iter())
            .for_each(|(row, &a)| row.iter_mut().for_each(|x| *x *= a));
        (ar, wh, f)
    }

    /// Optimal `α_c` for the current `B`, `α_r`: `M α_c = q`; `None` when
    /// `M` is not numerically positive definite.
    fn col_scales(&self, st: &State) -> Option<Vec<f64>> {
        let (m, n) = (self.m, self.n);
        let v: Vec<f64> =
            st.b.chunks(n)
                .zip(&st.ar)
                .flat_map(|(row, &a)| row.iter().map(move |b| a * b))
                .collect();
        // S = Vᵀ V = Bᵀ diag(α_r²) B, then M = H ⊙ S.
        let mut sys = vec![0.0f64; n * n];
        gemm_tn(&mut sys, &v, &v, n, n, m);
        sys.iter_mut().zip(&self.h).for_each(|(s, h)| *s *= h);
        // q_j = Σ_i α_r,i b_ij p_ij = Σ_i v_ij p_ij (fixed row order).
        let mut q = vec![0.0f64; n];
        for (vrow, prow) in v.chunks(n).zip(self.p.chunks(n)) {
            q.iter_mut()
                .zip(vrow.iter().zip(prow))
                .for_each(|(acc, (a, b))| *acc += a * b);
        }
        solve_spd(&mut sys, &mut q, n).ok()?;
        q.iter().all(|x| x.is_finite()).then_some(q)
    }

    /// One sweep of exact coordinate descent on the signs of every row.
    fn sign_sweep(&self, it: &Iterate) -> Vec<f64> {
        let (n, st) = (self.n, &it.st);
        let mut grad = it.wh.clone();
        grad.iter_mut().zip(&self.p).for_each(|(g, p)| *g -= p);
        let mut b = st.b.clone();
        b.par_chunks_mut(n)
            .zip(grad.par_chunks_mut(n))
            .zip(st.ar.par_iter())
            .for_each(|((brow, g), &a)| {
                for j in 0..n {
                    let delta = -2.0 * a * brow[j] * st.ac[j];
                    let hjj = self.h[j * n + j];
                    if delta * (2.0 * g[j] + delta * hjj) < 0.0 {
                        brow[j] = -brow[j];
                        let hrow = &self.h[j * n..(j + 1) * n];
                        g.iter_mut().zip(hrow).for_each(|(x, h)| *x += delta * h);
                    }
                }
            });
        b
    }
}

/// `Ŵ = diag(ar) · B · diag(ac)` in f64.
#[derive(Clone)]
struct State {
    n: usize,
    /// `±1`, `m × n`.
    b: Vec<f64>,
    ar: Vec<f64>,
    ac: Vec<f64>,
}

impl State {
    fn dense(&self) -> Vec<f64> {
        let mut out = vec![0.0f64; self.b.len()];
        for ((orow, brow), &a) in out
            .chunks_mut(self.n)
            .zip(self.b.chunks(self.n))
            .zip(&self.ar)
        {
            for ((o, &b), &c) in orow.iter_mut().zip(brow).zip(&self.ac) {
                *o = a * b * c;
            }
        }
        out
    }

    fn with_row_scales(&self, ar: Vec<f64>) -> Self {
        Self { ar, ..self.clone() }
    }

    fn with_col_scales(&self, ac: Vec<f64>) -> Self {
        Self { ac, ..self.clone() }
    }

    fn with_signs(&self, b: Vec<f64>) -> Self {
        Self { b, ..self.clone() }
    }
}

/// ARB-RC: `B = sign(W)` and scales by alternating least squares on
/// `‖W − Ŵ‖²` (unweighted; the same iteration as `factor`'s ARB-RC with
/// uniform energies).
fn arb_rc_start(w: &Matrix) -> State {
    let n = w.cols;
    let b: Vec<f64> = w.data.iter().map(|&x| sign1(x)).collect();
    let abs: Vec<f64> = w.data.iter().map(|&x| f64::from(x.abs())).collect();
    let mut ac = vec![1.0f64; n];
    let mut ar: Vec<f64> = abs
        .chunks(n)
        .map(|r| r.iter().sum::<f64>() / n as f64)
        .collect();
    for _ in 0..INIT_ITERS {
        let den: f64 = ac.iter().map(|c| c * c).sum();
        if den > 0.0 {
            for (r, row) in ar.iter_mut().zip(abs.chunks(n)) {
                *r = row.iter().zip(&ac).map(|(x, c)| x * c).sum::<f64>() / den;
            }
        }
        let den: f64 = ar.iter().map(|r| r * r).sum();
        if den > 0.0 {
            let mut acc = vec![0.0f64; n];
            for (&r, row) in ar.iter().zip(abs.chunks(n)) {
                acc.iter_mut().zip(row).for_each(|(a, x)| *a += r * x);
            }
            ac = acc.into_iter().map(|a| a / den).collect();
        }
    }
    State { n, b, ar, ac }
}

/// Balanced, f16-rounded scales → `BinaryLinear` and the exact dense `Ŵ`.
fn export(st: &State, m: usize, n: usize, bias: Option<&[f32]>) -> Result<Quantized, FactorError> {
    let rms = |v: &[f64]| (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
    let (rr, rc) = (rms(&st.ar), rms(&st.ac));
    let eta = if rr > 0.0 && rc > 0.0 {
        (rc / rr).sqrt()
    } else {
        1.0
    };
    let row: Vec<f32> = st.ar.iter().map(|&a| (a * eta) as f32).collect();
    let col: Vec<f32> = st.ac.iter().map(|&c| (c / eta) as f32).collect();
    let (row16, col16) = (F16Vector::from_f32(&row), F16Vector::from_f32(&col));
    let row: Vec<f32> = row16.iter().collect();
    let col: Vec<f32> = col16.iter().collect();
    if !row.iter().chain(&col).all(|x| x.is_finite()) {
        return Err(FactorError::Numerical("scale outside the f16 range"));
    }
    let signs_f32: Vec<f32> = st.b.iter().map(|&b| b as f32).collect();
    let mut dense = vec![0.0f32; m * n];
    for ((out, brow), &sr) in dense.chunks_mut(n).zip(signs_f32.chunks(n)).zip(&row) {
        for ((x, &b), &sc) in out.iter_mut().zip(brow).zip(&col) {
            // Same evaluation order as `BinaryLinear::dequantize_into`.
            *x = sr * b * sc;
        }
    }
    super::factor::binary_quantized(
        SignMatrix::from_signs_of(m, n, &signs_f32),
        col16,
        row16,
        bias.map(F16Vector::from_f32),
        dense,
    )
}

/// Solves `A x = b` in place for symmetric positive definite `A` (`n × n`;
/// only its lower triangle is read), single-threaded Cholesky.
fn solve_spd(a: &mut [f64], b: &mut [f64], n: usize) -> Result<(), FactorError> {
    let req = cholesky_in_place_req::<f64>(n, Parallelism::None, Default::default())
        .map_err(|_| FactorError::Numerical("cholesky workspace size overflows"))?;
    let mut buf = GlobalPodBuffer::new(req);
    let stack = PodStack::new(&mut buf);
    let mut mat = from_column_major_slice_mut::<f64, _, _>(a, n, n);
    cholesky_in_place(
        mat.as_mut(),
        Default::default(),
        Parallelism::None,
        stack,
        Default::default(),
    )
    .map_err(|_| FactorError::Numerical("column-scale system not positive definite"))?;
    let rhs = from_column_major_slice_mut::<f64, _, _>(b, n, 1);
    solve_in_place_with_conj(mat.as_ref(), Conj::No, rhs, Parallelism::None, stack);
    Ok(())
}

/// `Σ_j a_ij b_ij` per row (rows of width `n`), in parallel, each row in
/// order.
fn row_sums(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    a.par_chunks(n)
        .zip(b.par_chunks(n))
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum())
        .collect()
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// `±1` with `sign(0) = +1` (the runtime's convention).
fn sign1(x: f32) -> f64 {
    if x < 0.0 {
        -1.0
    } else {
        1.0
    }
}

/// Threads for a product: one for small ones, else the whole pool (faer
/// splits only the output, so the result does not depend on the choice).
fn parallelism(m: usize, n: usize, k: usize) -> Parallelism<'static> {
    if m * n * k < 64 * 64 * 64 || rayon::current_num_threads() == 1 {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// `c (m×n) = a (m×k) · b (k×n)`, row-major, overwriting `c`.
fn gemm_nn(c: &mut [f64], a: &[f64], b: &[f64], m: usize, n: usize, k: usize) {
    let lhs = from_row_major_slice::<f64, _, _>(a, m, k);
    let rhs = from_row_major_slice::<f64, _, _>(b, k, n);
    let dst = from_row_major_slice_mut::<f64, _, _>(c, m, n);
    matmul(dst, lhs, rhs, None, 1.0, parallelism(m, n, k));
}

/// `c (m×n) = a (m×k) · b (n×k)ᵀ`, row-major, overwriting `c`.
fn gemm_nt(c: &mut [f64], a: &[f64], b: &[f64], m: usize, n: usize, k: usize) {
    let lhs = from_row_major_slice::<f64, _, _>(a, m, k);
    let rhs = from_row_major_slice::<f64, _, _>(b, n, k).transpose();
    let dst = from_row_major_slice_mut::<f64, _, _>(c, m, n);
    matmul(dst, lhs, rhs, None, 1.0, parallelism(m, n, k));
}

/// `c (m×n) += a (k×m)ᵀ · b (k×n)`, row-major.
fn gemm_tn(c: &mut [f64], a: &[f64], b: &[f64], m: usize, n: usize, k: usize) {
    let lhs = from_row_major_slice::<f64, _, _>(a, k, m).transpose();
    let rhs = from_row_major_slice::<f64, _, _>(b, k, n);
    let dst = from_row_major_slice_mut::<f64, _, _>(c, m, n);
    matmul(dst, lhs, rhs, Some(1.0), 1.0, parallelism(m, n, k));
}
