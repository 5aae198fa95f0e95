//! Binary factorization of one linear layer: NanoQuant's ADMM initialization
//! and the baselines it is measured against.
//!
//! This module exists to turn one f32 weight matrix `W` (`m × n`) into the
//! layer the runtime executes, and to say how far that layer is from `W`:
//!
//! * [`Method::NanoQuant`]: `W ≈ diag(s_post) · U · V · diag(s_pre)` with
//!   `U ∈ {±1}^{m×r}`, `V ∈ {±1}^{r×n}`, found by the ADMM recipe of
//!   DESIGN.md §3 on the energy-preconditioned matrix
//!   `W̃ = diag(√out) · W · diag(√in)`.
//! * [`Method::SvdSign`]: the naive low-rank baseline — signs of the
//!   truncated SVD factors, same export.
//! * [`Method::Sign`]: full-rank signs with a per-row mean-|·| scale.
//! * [`Method::ArbRc`]: full-rank signs with row and column scales fitted by
//!   alternating closed-form updates (the second seed paper's base form).
//!
//! Everything here is deterministic: the same inputs and seed give the same
//! bits, whatever the rayon thread count (reductions run in a fixed order;
//! the GEMMs split only their output across threads).
//!
//! Decisions the design leaves open, written down here:
//! * The `r × r` systems of the A- and B-steps are factored in f64
//!   (Cholesky, faer, single-threaded) and applied as an explicit inverse
//!   through one f32 GEMM — `r³` once per step instead of `r²·m`
//!   triangular-solve work on every right-hand side.
//! * SVID's rank-1 approximation of `|M|` is alternating least squares
//!   (power iteration) started from the all-ones vector, which stays
//!   non-negative, so `SVID(M)` has exactly the signs of `M`.
//! * The latents kept for training are the input of the last Z-step
//!   (`A + A_u` before the final dual update), so `sign(latent) = U`
//!   exactly; they are transformed like `A_z` (same column norms,
//!   preconditioning and balance factors).
//! * Zero energies are floored at `1e-6 ×` their mean (all-zero energies
//!   count as uniform), so preconditioning never divides by zero.
//! * Bit counts cover signs plus the two f16 scale vectors; an f16 bias is
//!   not counted (dense layers keep theirs too).

use nq_core::{BinaryLinear, F16Vector, FactorizedLinear, SignMatrix};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::backend::{column_norms, Backend, BackendError, Compute, CpuBackend, Op};
use crate::blob_writer::TensorPayload;
use crate::linalg::matmul_nn;
use crate::model::Matrix;

/// Bits of one f16 scale entry.
const SCALE_BITS: u64 = 16;
/// Rank offset of DESIGN.md §2: the two f16 scale vectors cost 16 bits per
/// row and column, i.e. 16 rank units.
const SCALE_RANK_OFFSET: usize = 16;
/// Energies below `ENERGY_FLOOR × mean` are raised to it.
const ENERGY_FLOOR: f64 = 1e-6;
/// Alternating scale updates of [`Method::ArbRc`].
const ARB_RC_ITERS: usize = 10;

/// Why a layer could not be factorized.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FactorError {
    /// The bits-per-weight target is not a finite number in (0, 16).
    #[error("bits per weight must be finite and in (0, 16), got {0}")]
    BadBpw(f64),
    /// The rank multiple is zero.
    #[error("rank multiple must be at least 1")]
    ZeroMultiple,
    /// The matrix has no rows or no columns.
    #[error("empty matrix ({rows} × {cols})")]
    Empty {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// The requested rank is outside `1..=min(m, n)`.
    #[error("rank {rank} outside 1..={max}")]
    BadRank {
        /// Requested rank.
        rank: usize,
        /// `min(m, n)`.
        max: usize,
    },
    /// A vector or buffer has the wrong length.
    #[error("{what} has length {found}, expected {expected}")]
    Length {
        /// Which input.
        what: &'static str,
        /// Length the shape implies.
        expected: usize,
        /// Length given.
        found: usize,
    },
    /// An input holds NaN or ±∞.
    #[error("non-finite value in {0}")]
    NonFinite(&'static str),
    /// An energy vector holds a negative value.
    #[error("negative value in {0}")]
    Negative(&'static str),
    /// An ADMM option is out of range.
    #[error("invalid ADMM option: {0}")]
    BadOption(&'static str),
    /// The computation broke down (a singular system or an f16 overflow).
    #[error("numerical failure: {0}")]
    Numerical(&'static str),
    /// The compute device failed.
    #[error("compute device: {0}")]
    Device(String),
}

impl From<BackendError> for FactorError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Numerical(what) => Self::Numerical(what),
            BackendError::Device(what) => Self::Device(what),
        }
    }
}

/// Diagonal second-moment statistics of one linear layer (DESIGN.md §3).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerEnergies {
    /// Mean squared input activation per input channel (`n`, ≥ 0).
    pub input: Vec<f32>,
    /// Mean squared output gradient per output channel (`m`, ≥ 0).
    pub output: Vec<f32>,
}

impl LayerEnergies {
    /// All-ones energies: the weighted error becomes the plain relative error
    /// and NanoQuant runs without preconditioning.
    pub fn uniform(m: usize, n: usize) -> Self {
        Self {
            input: vec![1.0; n],
            output: vec![1.0; m],
        }
    }
}

/// Rank of a factorized `m × n` layer at `bpw` bits per weight (DESIGN.md §2):
/// `floor(m·n·bpw/(m+n)) − 16`, rounded down to a multiple of `multiple`, at
/// least `multiple`, at most `min(m, n)`, and at least 1.
pub fn rank_for_bpw(m: usize, n: usize, bpw: f64, multiple: usize) -> Result<usize, FactorError> {
    if !bpw.is_finite() || bpw <= 0.0 || bpw >= 16.0 {
        return Err(FactorError::BadBpw(bpw));
    }
    if multiple == 0 {
        return Err(FactorError::ZeroMultiple);
    }
    if m == 0 || n == 0 {
        return Err(FactorError::Empty { rows: m, cols: n });
    }
    let raw = (m as f64 * n as f64 * bpw / (m as f64 + n as f64)).floor() as usize;
    let rounded = raw.saturating_sub(SCALE_RANK_OFFSET) / multiple * multiple;
    Ok(rounded.max(multiple).min(m.min(n)).max(1))
}

/// Storage bits of a factorized `m × n` layer of rank `r`: the sign bits
/// `r·(m+n)` plus the two f16 scale vectors.
pub fn factorized_bits(m: usize, n: usize, r: usize) -> u64 {
    (r as u64 + SCALE_BITS) * (m as u64 + n as u64)
}

/// Storage bits of a full-rank binary `m × n` layer: `m·n` signs plus the two
/// f16 scale vectors.
pub fn binary_bits(m: usize, n: usize) -> u64 {
    m as u64 * n as u64 + SCALE_BITS * (m as u64 + n as u64)
}

/// Knobs of the ADMM initialization (DESIGN.md §3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdmmOptions {
    /// Iterations `T`; the penalty follows `ρ = t/T`.
    pub iters: usize,
    /// Ridge `λ` added to both normal equations.
    pub ridge: f32,
    /// Alternations of SVID's rank-1 power iteration (at least one is run).
    pub power_iters: usize,
    /// Seed of the N(0, 1) initialization (ChaCha8).
    pub seed: u64,
}

impl Default for AdmmOptions {
    fn default() -> Self {
        Self {
            iters: 400,
            ridge: 0.03,
            power_iters: 4,
            seed: 0,
        }
    }
}

/// How to quantize a layer.
///
/// The CLI (`clap`) and JSON reports (`serde`) spell them `nanoquant`,
/// `sign`, `svd-sign`, `arb-rc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Low-rank binary factors by ADMM on the preconditioned weight.
    #[value(name = "nanoquant")]
    #[serde(rename = "nanoquant")]
    NanoQuant,
    /// Full-rank signs, per-row mean-|·| scale.
    #[value(name = "sign")]
    Sign,
    /// Signs of truncated-SVD factors (naive low-rank baseline).
    #[value(name = "svd-sign")]
    SvdSign,
    /// Full-rank signs with alternating row/column scales (ARB-RC form).
    #[value(name = "arb-rc")]
    ArbRc,
    /// ARB-RC layers whose last projection of each block is fitted to the
    /// FP block's output (arXiv 2512.21651; see [`super::align`]). Layer by
    /// layer, [`quantize_linear`] treats it as [`Method::ArbRc`]: the output
    /// alignment needs the block streams and runs in
    /// [`super::recon::output_aligned`].
    #[value(name = "arb-oa")]
    ArbOa,
}

/// One quantized layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    /// The layer as it is written to the blob.
    pub payload: TensorPayload,
    /// `Ŵ` exactly as the payload represents it (f16 scales, signs), `m × n`.
    pub dense: Matrix,
    /// Inner rank for factorized layers; `None` for full-rank binary.
    pub rank: Option<usize>,
    /// Storage bits (signs and scales, see [`factorized_bits`] /
    /// [`binary_bits`]).
    pub bits: u64,
    /// [`weighted_rel_error`] of `dense` against the input weight.
    pub weighted_rel_error: f64,
    /// NanoQuant only: real-valued latents `(A (m×r), B (r×n))` in the
    /// exported (unpreconditioned, balanced) frame, `sign(A) = U`,
    /// `sign(B) = V`, for later straight-through training.
    pub latents: Option<(Matrix, Matrix)>,
}

/// `Σ out_i·in_j (W − Ŵ)²_ij / Σ out_i·in_j W²_ij`, accumulated in f64.
/// Returns 0 when both sums are 0 and +∞ when only the denominator is.
///
/// # Panics
/// If the shapes of `w`, `w_hat` and the energies disagree.
pub fn weighted_rel_error(w: &Matrix, w_hat: &Matrix, e: &LayerEnergies) -> f64 {
    let (m, n) = (w.rows, w.cols);
    assert!(
        w_hat.rows == m && w_hat.cols == n,
        "weighted_rel_error: shapes differ"
    );
    assert!(
        w.data.len() == m * n && w_hat.data.len() == m * n,
        "weighted_rel_error: data length"
    );
    assert!(
        e.output.len() == m && e.input.len() == n,
        "weighted_rel_error: energy lengths"
    );
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for i in 0..m {
        let (mut rn, mut rd) = (0.0f64, 0.0f64);
        for j in 0..n {
            let x = f64::from(w.data[i * n + j]);
            let d = x - f64::from(w_hat.data[i * n + j]);
            let ein = f64::from(e.input[j]);
            rn += ein * d * d;
            rd += ein * x * x;
        }
        let eo = f64::from(e.output[i]);
        num += eo * rn;
        den += eo * rd;
    }
    if den > 0.0 {
        num / den
    } else if num == 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// Quantizes one linear layer `w` (`m × n`, out × in) with `method`.
///
/// `rank` is the inner rank of the factorized methods (`1..=min(m, n)`); the
/// full-rank methods ignore it. `bias` (`m`) is passed through as f16.
/// `energies` weight the error (and precondition NanoQuant, and weight
/// ARB-RC's scale fit); use [`LayerEnergies::uniform`] for none.
pub fn quantize_linear(
    w: &Matrix,
    bias: Option<&[f32]>,
    energies: &LayerEnergies,
    method: Method,
    rank: usize,
    opts: &AdmmOptions,
) -> Result<Quantized, FactorError> {
    quantize_linear_on(&Compute::Cpu, w, bias, energies, method, rank, opts)
}

/// [`quantize_linear`] with NanoQuant's ADMM on `compute`'s device (the
/// other methods are closed-form and always run on the CPU).
pub fn quantize_linear_on(
    compute: &Compute,
    w: &Matrix,
    bias: Option<&[f32]>,
    energies: &LayerEnergies,
    method: Method,
    rank: usize,
    opts: &AdmmOptions,
) -> Result<Quantized, FactorError> {
    validate(w, bias, energies)?;
    let (m, n) = (w.rows, w.cols);
    let bias16 = bias.map(F16Vector::from_f32);
    let mut q = match method {
        Method::NanoQuant | Method::SvdSign => {
            if rank == 0 || rank > m.min(n) {
                return Err(FactorError::BadRank {
                    rank,
                    max: m.min(n),
                });
            }
            let (factors, latents) = if method == Method::NanoQuant {
                let (f, l) = nanoquant_factors(w, energies, rank, opts, compute)?;
                (f, Some(l))
            } else {
                (svd_factors(w, rank), None)
            };
            let mut q = export_factorized(factors, bias16)?;
            q.latents = latents;
            q
        }
        Method::Sign => {
            let s_row: Vec<f32> = (0..m).map(|i| mean_abs(w.row(i))).collect();
            export_binary(w, &vec![1.0; n], &s_row, bias16)?
        }
        Method::ArbRc | Method::ArbOa => {
            let (s_col, s_row) = arb_rc_scales(w, energies);
            export_binary(w, &s_col, &s_row, bias16)?
        }
    };
    q.weighted_rel_error = weighted_rel_error(w, &q.dense, energies);
    Ok(q)
}

/// Checks shapes and finiteness of the inputs.
fn validate(w: &Matrix, bias: Option<&[f32]>, e: &LayerEnergies) -> Result<(), FactorError> {
    let (m, n) = (w.rows, w.cols);
    if m == 0 || n == 0 {
        return Err(FactorError::Empty { rows: m, cols: n });
    }
    let len = |what, expected, found| {
        if expected == found {
            Ok(())
        } else {
            Err(FactorError::Length {
                what,
                expected,
                found,
            })
        }
    };
    len("weight data", m.saturating_mul(n), w.data.len())?;
    len("input energies", n, e.input.len())?;
    len("output energies", m, e.output.len())?;
    if let Some(b) = bias {
        len("bias", m, b.len())?;
        if !b.iter().all(|x| x.is_finite()) {
            return Err(FactorError::NonFinite("bias"));
        }
    }
    if !w.data.iter().all(|x| x.is_finite()) {
        return Err(FactorError::NonFinite("weights"));
    }
    for (what, v) in [("input energies", &e.input), ("output energies", &e.output)] {
        if !v.iter().all(|x| x.is_finite()) {
            return Err(FactorError::NonFinite(what));
        }
        if v.iter().any(|&x| x < 0.0) {
            return Err(FactorError::Negative(what));
        }
    }
    Ok(())
}

fn mean_abs(v: &[f32]) -> f32 {
    (v.iter().map(|&x| f64::from(x.abs())).sum::<f64>() / v.len() as f64) as f32
}

/// Energies with zeros raised to `ENERGY_FLOOR × mean` (all-zero → ones).
fn floored(e: &[f32]) -> Vec<f64> {
    let mean = e.iter().map(|&x| f64::from(x)).sum::<f64>() / e.len() as f64;
    if mean <= 0.0 {
        return vec![1.0; e.len()];
    }
    let floor = ENERGY_FLOOR * mean;
    e.iter().map(|&x| f64::from(x).max(floor)).collect()
}

/// Real-valued factors `A (m × r)`, `B (r × n)`, row-major, in `W`'s frame.
struct Factors {
    m: usize,
    n: usize,
    r: usize,
    a: Vec<f32>,
    b: Vec<f32>,
}

/// Truncated SVD `W ≈ U_r Σ_r V_rᵀ` split as `A = U_r √Σ`, `B = √Σ V_rᵀ`.
fn svd_factors(w: &Matrix, r: usize) -> Factors {
    let (m, n) = (w.rows, w.cols);
    let wf = faer::Mat::<f64>::from_fn(m, n, |i, j| f64::from(w.data[i * n + j]));
    let svd = wf.thin_svd();
    let (u, v, s) = (svd.u(), svd.v(), svd.s_diagonal());
    let root: Vec<f64> = (0..r).map(|k| s.read(k).max(0.0).sqrt()).collect();
    let mut a = vec![0.0f32; m * r];
    for i in 0..m {
        for k in 0..r {
            a[i * r + k] = (u.read(i, k) * root[k]) as f32;
        }
    }
    let mut b = vec![0.0f32; r * n];
    for k in 0..r {
        for j in 0..n {
            b[k * n + j] = (root[k] * v.read(j, k)) as f32;
        }
    }
    Factors { m, n, r, a, b }
}

/// The balance factor `η = √(‖B‖_F/‖A‖_F)` (1 when either is zero).
fn balance_factor(a: &[f32], b: &[f32]) -> f32 {
    let (na, nb) = (frob(a), frob(b));
    if na > 0.0 && nb > 0.0 {
        (nb / na).sqrt() as f32
    } else {
        1.0
    }
}

/// Balances `A`, `B` in place: `A·η`, `B/η`.
fn balance(f: &mut Factors) {
    let eta = balance_factor(&f.a, &f.b);
    f.a.iter_mut().for_each(|x| *x *= eta);
    f.b.iter_mut().for_each(|x| *x /= eta);
}

fn frob(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

/// `±1` as f32 with `sign(0) = +1` (the runtime's convention).
#[inline]
pub(crate) fn sign1(x: f32) -> f32 {
    if x < 0.0 {
        -1.0
    } else {
        1.0
    }
}

/// Balanced factors → `FactorizedLinear` plus the exact dense `Ŵ`.
fn export_factorized(
    mut f: Factors,
    bias: Option<F16Vector<Vec<u8>>>,
) -> Result<Quantized, FactorError> {
    balance(&mut f);
    let (m, n, r) = (f.m, f.n, f.r);
    let s_post: Vec<f32> = f.a.chunks(r).map(mean_abs).collect();
    let mut s_pre = vec![0.0f64; n];
    for row in f.b.chunks(n) {
        for (s, &x) in s_pre.iter_mut().zip(row) {
            *s += f64::from(x.abs());
        }
    }
    let s_pre: Vec<f32> = s_pre.iter().map(|&s| (s / r as f64) as f32).collect();
    let (s_post16, s_pre16) = (F16Vector::from_f32(&s_post), F16Vector::from_f32(&s_pre));
    let u = SignMatrix::from_signs_of(m, r, &f.a);
    let v = SignMatrix::from_signs_of(r, n, &f.b);
    // U·V over ±1 entries: integer sums below 2^24, exact in any order.
    let su: Vec<f32> = f.a.iter().map(|&x| sign1(x)).collect();
    let sv: Vec<f32> = f.b.iter().map(|&x| sign1(x)).collect();
    let mut dense = vec![0.0f32; m * n];
    matmul_nn(&mut dense, &su, &sv, m, n, r, false);
    let post: Vec<f32> = s_post16.iter().collect();
    let pre: Vec<f32> = s_pre16.iter().collect();
    for (row, &sp) in dense.chunks_mut(n).zip(&post) {
        for (x, &sq) in row.iter_mut().zip(&pre) {
            // Same evaluation order as `FactorizedLinear::dequantize_into`.
            *x = sp * *x * sq;
        }
    }
    check_scales(&post, &pre)?;
    let layer = FactorizedLinear::new(u, v, s_pre16, s_post16, bias)
        .map_err(|_| FactorError::Numerical("factorized layer shapes"))?;
    Ok(Quantized {
        payload: TensorPayload::Factorized(layer),
        dense: Matrix {
            rows: m,
            cols: n,
            data: dense,
        },
        rank: Some(r),
        bits: factorized_bits(m, n, r),
        weighted_rel_error: 0.0,
        latents: None,
    })
}

fn check_scales(a: &[f32], b: &[f32]) -> Result<(), FactorError> {
    if a.iter().chain(b).all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(FactorError::Numerical("scale outside the f16 range"))
    }
}

/// `sign(W)` with the given scales → `BinaryLinear` plus the exact dense `Ŵ`.
fn export_binary(
    w: &Matrix,
    s_col: &[f32],
    s_row: &[f32],
    bias: Option<F16Vector<Vec<u8>>>,
) -> Result<Quantized, FactorError> {
    let (m, n) = (w.rows, w.cols);
    let (col16, row16) = (F16Vector::from_f32(s_col), F16Vector::from_f32(s_row));
    let col: Vec<f32> = col16.iter().collect();
    let row: Vec<f32> = row16.iter().collect();
    check_scales(&col, &row)?;
    let mut dense = vec![0.0f32; m * n];
    for ((out, wr), &sr) in dense.chunks_mut(n).zip(w.data.chunks(n)).zip(&row) {
        for ((x, &wv), &sc) in out.iter_mut().zip(wr).zip(&col) {
            // Same evaluation order as `BinaryLinear::dequantize_into`.
            *x = sr * sign1(wv) * sc;
        }
    }
    binary_quantized(
        SignMatrix::from_signs_of(m, n, &w.data),
        col16,
        row16,
        bias,
        dense,
    )
}

/// A full-rank binary [`Quantized`] from its parts; `dense` (`m × n`) must
/// be what the layer represents. The error is filled in by the caller.
pub(crate) fn binary_quantized(
    signs: SignMatrix<Vec<u8>>,
    col16: F16Vector<Vec<u8>>,
    row16: F16Vector<Vec<u8>>,
    bias: Option<F16Vector<Vec<u8>>>,
    dense: Vec<f32>,
) -> Result<Quantized, FactorError> {
    let (m, n) = (signs.rows(), signs.cols());
    let layer = BinaryLinear::new(signs, col16, row16, bias)
        .map_err(|_| FactorError::Numerical("binary layer shapes"))?;
    Ok(Quantized {
        payload: TensorPayload::Binary(layer),
        dense: Matrix {
            rows: m,
            cols: n,
            data: dense,
        },
        rank: None,
        bits: binary_bits(m, n),
        weighted_rel_error: 0.0,
        latents: None,
    })
}

/// Column and row scales `(α_c, α_r)` minimizing
/// `Σ out_i·in_j (W_ij − α_r,i · sign(W_ij) · α_c,j)²` by alternating exact
/// minimization. With positive scales `sign(W)` is already the optimal `B`,
/// so only the scales alternate; `W_ij·sign(W_ij) = |W_ij|`.
fn arb_rc_scales(w: &Matrix, e: &LayerEnergies) -> (Vec<f32>, Vec<f32>) {
    let (m, n) = (w.rows, w.cols);
    let (ein, eout) = (floored(&e.input), floored(&e.output));
    let abs = |i: usize, j: usize| f64::from(w.data[i * n + j].abs());
    let mut col = vec![1.0f64; n];
    let mut row: Vec<f64> = (0..m).map(|i| f64::from(mean_abs(w.row(i)))).collect();
    for _ in 0..ARB_RC_ITERS {
        // α_r,i = Σ_j in_j |W_ij| α_c,j / Σ_j in_j α_c,j²  (out_i cancels).
        let den: f64 = (0..n).map(|j| ein[j] * col[j] * col[j]).sum();
        if den > 0.0 {
            for (i, r) in row.iter_mut().enumerate() {
                *r = (0..n).map(|j| ein[j] * abs(i, j) * col[j]).sum::<f64>() / den;
            }
        }
        // α_c,j = Σ_i out_i |W_ij| α_r,i / Σ_i out_i α_r,i².
        let den: f64 = (0..m).map(|i| eout[i] * row[i] * row[i]).sum();
        if den > 0.0 {
            let mut acc = vec![0.0f64; n];
            for i in 0..m {
                let wi = eout[i] * row[i];
                for (a, &x) in acc.iter_mut().zip(w.row(i)) {
                    *a += wi * f64::from(x.abs());
                }
            }
            col = acc.into_iter().map(|a| a / den).collect();
        }
    }
    // Balance the two vectors to equal RMS (the product is unchanged), which
    // keeps both well inside the f16 range.
    let (nr, nc) = (norm64(&row), norm64(&col));
    let eta = if nr > 0.0 && nc > 0.0 {
        (nc / nr).sqrt() * ((m as f64) / (n as f64)).sqrt().sqrt()
    } else {
        1.0
    };
    (
        col.iter().map(|&c| (c / eta) as f32).collect(),
        row.iter().map(|&r| (r * eta) as f32).collect(),
    )
}

fn norm64(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// NanoQuant ADMM (DESIGN.md §3): exported factors in `W`'s frame (before
/// balancing) and the training latents, fully transformed. The iterations
/// run on `compute`'s device; the O(m·n) pre- and post-processing here.
fn nanoquant_factors(
    w: &Matrix,
    e: &LayerEnergies,
    r: usize,
    opts: &AdmmOptions,
    compute: &Compute,
) -> Result<(Factors, (Matrix, Matrix)), FactorError> {
    if !opts.ridge.is_finite() || opts.ridge < 0.0 {
        return Err(FactorError::BadOption("ridge must be finite and ≥ 0"));
    }
    let (m, n) = (w.rows, w.cols);
    let out_root: Vec<f32> = floored(&e.output).iter().map(|x| x.sqrt() as f32).collect();
    let in_root: Vec<f32> = floored(&e.input).iter().map(|x| x.sqrt() as f32).collect();
    let mut wt = w.data.clone();
    for (row, &so) in wt.chunks_mut(n).zip(&out_root) {
        for (x, &si) in row.iter_mut().zip(&in_root) {
            *x *= so * si;
        }
    }
    let AdmmResult { az, in_a, bz, in_b } = match compute {
        Compute::Cpu => run_admm(&CpuBackend::default(), &wt, m, n, r, opts)?,
        Compute::Cuda(gpu) => run_admm(gpu.as_ref(), &wt, m, n, r, opts)?,
    };
    // Export pair: (A_z with unit columns, B_z); latents get the same
    // column factors. Then undo the preconditioning.
    let col_norms = column_norms(&az, m, r);
    let mut a = az;
    let mut la = in_a;
    let mut b = bz;
    let mut lb = in_b;
    for mat in [&mut a, &mut la] {
        for (row, &so) in mat.chunks_mut(r).zip(&out_root) {
            for (x, &c) in row.iter_mut().zip(&col_norms) {
                *x = *x / c / so;
            }
        }
    }
    for mat in [&mut b, &mut lb] {
        for row in mat.chunks_mut(n) {
            for (x, &si) in row.iter_mut().zip(&in_root) {
                *x /= si;
            }
        }
    }
    // `export_factorized` balances the factors by this same η.
    let eta = balance_factor(&a, &b);
    la.iter_mut().for_each(|x| *x *= eta);
    lb.iter_mut().for_each(|x| *x /= eta);
    let f = Factors { m, n, r, a, b };
    let latents = (
        Matrix {
            rows: m,
            cols: r,
            data: la,
        },
        Matrix {
            rows: r,
            cols: n,
            data: lb,
        },
    );
    Ok((f, latents))
}

/// What ADMM hands back to the host: `A_z`, `B_z` and the last Z-step
/// inputs (the latents), preconditioned frame.
#[derive(Clone, Debug)]
pub struct AdmmResult {
    /// `A_z` (`m × r`).
    pub az: Vec<f32>,
    /// The last Z-step input `A + A_u` (`m × r`), the latent of `U`.
    pub in_a: Vec<f32>,
    /// `B_z` (`r × n`).
    pub bz: Vec<f32>,
    /// The last Z-step input `B + B_u` (`r × n`), the latent of `V`.
    pub in_b: Vec<f32>,
}

/// Runs the whole ADMM of one layer on `be` for the preconditioned `wt`
/// (`m × n`) at rank `r`: the iterations [`quantize_linear_on`] runs on a
/// device, exposed so any [`Backend`] can be checked against the CPU's.
pub fn run_admm<B: Backend>(
    be: &B,
    wt: &[f32],
    m: usize,
    n: usize,
    r: usize,
    opts: &AdmmOptions,
) -> Result<AdmmResult, FactorError> {
    let mut st = Admm::new(be, wt, m, n, r, opts)?;
    for t in 0..opts.iters {
        st.iterate(t as f32 / opts.iters as f32, opts.ridge)?;
    }
    let get = |buf: &B::Buf, len: usize| -> Result<Vec<f32>, FactorError> {
        let mut v = vec![0.0; len];
        be.download(buf, &mut v)?;
        Ok(v)
    };
    Ok(AdmmResult {
        az: get(&st.az, m * r)?,
        in_a: get(&st.in_a, m * r)?,
        bz: get(&st.bz, r * n)?,
        in_b: get(&st.in_b, r * n)?,
    })
}

/// ADMM state of one layer on a backend; every buffer is allocated once.
struct Admm<'b, B: Backend> {
    be: &'b B,
    m: usize,
    n: usize,
    r: usize,
    power_iters: usize,
    /// Preconditioned weight `W̃` (`m × n`).
    w: B::Buf,
    a: B::Buf,
    az: B::Buf,
    au: B::Buf,
    b: B::Buf,
    bz: B::Buf,
    bu: B::Buf,
    /// Last SVID inputs `A + A_u`, `B + B_u` (the latents).
    in_a: B::Buf,
    in_b: B::Buf,
    /// Normalized regressors and right-hand sides.
    xa: B::Buf,
    xb: B::Buf,
    rhs_a: B::Buf,
    rhs_b: B::Buf,
    gram: B::Buf,
    inverse: B::Buf,
}

impl<'b, B: Backend> Admm<'b, B> {
    /// Random N(0, 1) `A`, `B` (drawn on the host, so every backend starts
    /// from the same numbers); `A_z = SVID(A)`, `A_u = A − A_z` (same for B).
    fn new(
        be: &'b B,
        wt: &[f32],
        m: usize,
        n: usize,
        r: usize,
        opts: &AdmmOptions,
    ) -> Result<Self, FactorError> {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let mut normal = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| StandardNormal.sample(&mut rng))
                .collect::<Vec<f32>>()
        };
        let a = normal(m * r);
        let b = normal(r * n);
        let mut st = Self {
            be,
            m,
            n,
            r,
            power_iters: opts.power_iters,
            w: be.upload(wt)?,
            az: be.zeros(m * r)?,
            au: be.zeros(m * r)?,
            in_a: be.upload(&a)?,
            xa: be.zeros(m * r)?,
            rhs_a: be.zeros(m * r)?,
            a: be.upload(&a)?,
            bz: be.zeros(r * n)?,
            bu: be.zeros(r * n)?,
            in_b: be.upload(&b)?,
            xb: be.zeros(r * n)?,
            rhs_b: be.zeros(r * n)?,
            b: be.upload(&b)?,
            gram: be.zeros(r * r)?,
            inverse: be.zeros(r * r)?,
        };
        be.svid(&st.a, m, r, st.power_iters, &mut st.az)?;
        be.svid(&st.b, r, n, st.power_iters, &mut st.bz)?;
        be.sub(&mut st.au, &st.a, &st.az)?;
        be.sub(&mut st.bu, &st.b, &st.bz)?;
        Ok(st)
    }

    /// One ADMM iteration with penalty `rho` and ridge `ridge`.
    fn iterate(&mut self, rho: f32, ridge: f32) -> Result<(), FactorError> {
        let (m, n, r) = (self.m, self.n, self.r);
        let be = self.be;
        // A-step: X = B_zᵀ with unit columns (= B_z with unit rows);
        // A = (W̃X + ρ(A_z − A_u)) (XᵀX + (ρ+λ)I)⁻¹.
        be.copy(&mut self.xb, &self.bz)?;
        be.normalize_rows(&mut self.xb, r, n)?;
        be.matmul(&mut self.gram, &self.xb, &self.xb, Op::Nt, (r, r, n))?;
        be.invert_shifted(&self.gram, rho + ridge, r, &mut self.inverse)?;
        be.matmul(&mut self.rhs_a, &self.w, &self.xb, Op::Nt, (m, r, n))?;
        be.add_penalty(&mut self.rhs_a, rho, &self.az, &self.au)?;
        be.matmul(&mut self.a, &self.rhs_a, &self.inverse, Op::Nn, (m, r, r))?;
        // B-step: X = A_z with unit columns;
        // B = (XᵀX + (ρ+λ)I)⁻¹ (XᵀW̃ + ρ(B_z − B_u)).
        be.divide_by_column_norms(&mut self.xa, &self.az, m, r)?;
        be.matmul(&mut self.gram, &self.xa, &self.xa, Op::Tn, (r, r, m))?;
        be.invert_shifted(&self.gram, rho + ridge, r, &mut self.inverse)?;
        be.matmul(&mut self.rhs_b, &self.xa, &self.w, Op::Tn, (r, n, m))?;
        be.add_penalty(&mut self.rhs_b, rho, &self.bz, &self.bu)?;
        be.matmul(&mut self.b, &self.inverse, &self.rhs_b, Op::Nn, (r, n, r))?;
        // Z-step on A + A_u, B + B_u; then the dual update.
        be.add(&mut self.in_a, &self.a, &self.au)?;
        be.add(&mut self.in_b, &self.b, &self.bu)?;
        be.svid(&self.in_a, m, r, self.power_iters, &mut self.az)?;
        be.svid(&self.in_b, r, n, self.power_iters, &mut self.bz)?;
        be.dual_update(&mut self.au, &self.a, &self.az)?;
        be.dual_update(&mut self.bu, &self.b, &self.bz)?;
        Ok(())
    }
}
