//! Compute backends of the quantizer: one algorithm, several devices
//! (DESIGN.md §1).
//!
//! [`Backend`] is the set of operations the ADMM factorization
//! ([`crate::quant::factor`]) is written in: products, a few fused
//! element-wise steps, SVID, and the shifted Cholesky inverse. Buffers are
//! opaque ([`Backend::Buf`]): host vectors on the CPU, device memory on a
//! GPU, so an iteration never leaves the device. [`CpuBackend`] is the
//! reference; [`CudaBackend`] runs the same steps through nq-cuda (cuBLAS,
//! cuSOLVER and the NVRTC kernels of `nq-cuda/kernels/`).
//!
//! [`Compute`] is what callers hold: the device a run uses, chosen once by
//! [`select`] from the `--device` flag.

mod cpu;
mod cuda;
mod gpu_model;

use std::sync::Arc;

pub use cpu::CpuBackend;
pub(crate) use cpu::{adamw_host, column_norms, scale_grads_host};
pub use cuda::CudaBackend;
pub use gpu_model::GpuModel;

/// Which operand of a product is transposed (row-major; `c` is `m × n` and
/// `k` the inner dimension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `c = a · bᵀ`, `a` `m × k`, `b` `n × k`.
    Nt,
    /// `c = a · b`, `a` `m × k`, `b` `k × n`.
    Nn,
    /// `c = aᵀ · b`, `a` `k × m`, `b` `k × n`.
    Tn,
}

/// A backend failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The numbers went bad (a system not positive definite, a non-finite
    /// inverse): an input problem, the same on every backend.
    #[error("numerical failure: {0}")]
    Numerical(&'static str),
    /// The device failed (allocation, launch, a library call).
    #[error("{0}")]
    Device(String),
}

/// The operations the quantizer's ADMM runs on. Matrices are row-major
/// `f32`; every method checks its buffers against the shape it is given.
pub trait Backend {
    /// A matrix or vector in the backend's memory.
    type Buf;

    /// A copy of host data.
    fn upload(&self, data: &[f32]) -> Result<Self::Buf, BackendError>;
    /// `len` zeros.
    fn zeros(&self, len: usize) -> Result<Self::Buf, BackendError>;
    /// Copies `buf` into `out` (same length).
    fn download(&self, buf: &Self::Buf, out: &mut [f32]) -> Result<(), BackendError>;
    /// `dst = src`.
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf) -> Result<(), BackendError>;
    /// `c = op(a, b)`, shape `(m, n, k)`.
    fn matmul(
        &self,
        c: &mut Self::Buf,
        a: &Self::Buf,
        b: &Self::Buf,
        op: Op,
        shape: (usize, usize, usize),
    ) -> Result<(), BackendError>;
    /// Each row of `x` (`rows × cols`) scaled to unit norm (zero rows stay).
    fn normalize_rows(
        &self,
        x: &mut Self::Buf,
        rows: usize,
        cols: usize,
    ) -> Result<(), BackendError>;
    /// `dst = src` with each column divided by its norm (zero columns by 1).
    fn divide_by_column_norms(
        &self,
        dst: &mut Self::Buf,
        src: &Self::Buf,
        rows: usize,
        cols: usize,
    ) -> Result<(), BackendError>;
    /// `out = SVID(x)` = `sign(x) ⊙ u vᵀ`, `u vᵀ` the rank-1 fit of `|x|` by
    /// `iters` (≥ 1) alternations from `v = 1`.
    fn svid(
        &self,
        x: &Self::Buf,
        rows: usize,
        cols: usize,
        iters: usize,
        out: &mut Self::Buf,
    ) -> Result<(), BackendError>;
    /// `out = a + b`.
    fn add(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf) -> Result<(), BackendError>;
    /// `out = a − b`.
    fn sub(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf) -> Result<(), BackendError>;
    /// `rhs += ρ (z − u)`.
    fn add_penalty(
        &self,
        rhs: &mut Self::Buf,
        rho: f32,
        z: &Self::Buf,
        u: &Self::Buf,
    ) -> Result<(), BackendError>;
    /// `u += x − z`.
    fn dual_update(
        &self,
        u: &mut Self::Buf,
        x: &Self::Buf,
        z: &Self::Buf,
    ) -> Result<(), BackendError>;
    /// `inverse = (gram + shift·I)⁻¹` (`r × r`, symmetric; f64 Cholesky).
    fn invert_shifted(
        &self,
        gram: &Self::Buf,
        shift: f32,
        r: usize,
        inverse: &mut Self::Buf,
    ) -> Result<(), BackendError>;

    // Straight-through training of a factorized layer (block
    // reconstruction; `quant::factor_train::DeviceFactor`).

    /// `out = sign(x)`: ±1 with `sign(0) = sign(−0) = +1`.
    fn signs(&self, x: &Self::Buf, out: &mut Self::Buf) -> Result<(), BackendError>;
    /// `x[i][j] *= s[i]` (`x` is `s.len() × n`).
    fn scale_rows(&self, x: &mut Self::Buf, s: &Self::Buf) -> Result<(), BackendError>;
    /// `x[i][j] *= s[j]` (`x` is `rows × s.len()`).
    fn scale_columns(&self, x: &mut Self::Buf, s: &Self::Buf) -> Result<(), BackendError>;
    /// From `dw = ∂L/∂Ŵ` and `p = U·V` (`m × n`, `m = s_post.len()`,
    /// `n = s_pre.len()`): `g = dw ⊙ s_post s_preᵀ`, and the scale
    /// gradients `d_pre[j] = Σ_i dw·p·s_post[i]`, `d_post[i] = Σ_j
    /// dw·p·s_pre[j]` (each product in f32, the sums in f64).
    #[allow(clippy::too_many_arguments)]
    fn scale_grads(
        &self,
        dw: &Self::Buf,
        p: &Self::Buf,
        s_pre: &Self::Buf,
        s_post: &Self::Buf,
        g: &mut Self::Buf,
        d_pre: &mut Self::Buf,
        d_post: &mut Self::Buf,
    ) -> Result<(), BackendError>;
    /// The signs of `x` (`rows × cols`, both ≥ 1; bit set where `x < 0`)
    /// packed in the blob's tile layout: the bytes of
    /// `nq_core::SignMatrix::from_fn(rows, cols, |i, j| x[i][j] < 0)`.
    fn pack_signs(&self, x: &Self::Buf, rows: usize, cols: usize) -> Result<Vec<u8>, BackendError>;
    /// AdamW step `step` (from 1) on `p` with gradient `g` and moments
    /// `m`, `v` (β1 0.9, β2 0.999, ε 1e-8; decoupled weight decay `wd`).
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        step: i32,
        lr: f32,
        wd: f32,
    ) -> Result<(), BackendError>;
}

/// Checks a [`Backend::pack_signs`] call (`len` values, a non-empty
/// `rows × cols` matrix) and returns the packed length.
pub fn pack_shape(len: usize, rows: usize, cols: usize) -> Result<usize, BackendError> {
    if rows == 0 || cols == 0 || rows.checked_mul(cols) != Some(len) {
        return Err(shape_error("pack_signs"));
    }
    nq_core::sign::packed_len(rows, cols).ok_or_else(|| shape_error("pack_signs"))
}

/// Head layout of an attention call: `(heads, kv_heads, head_dim)`.
pub type Heads = (usize, usize, usize);

fn shape_error(what: &str) -> BackendError {
    BackendError::Device(format!("{what}: shape does not match the buffer"))
}

/// Checks a [`BlockBackend::rope`] call: `x` holds `t` rows of
/// `heads·2·half`, each angle table `t × half`. Returns `half`.
pub fn rope_shape(
    x_len: usize,
    t: usize,
    heads: usize,
    (cos_len, sin_len): (usize, usize),
) -> Result<usize, BackendError> {
    let width = x_len.checked_div(t).unwrap_or(0);
    if heads == 0 || width == 0 || x_len != t * width || !width.is_multiple_of(2 * heads) {
        return Err(shape_error("rope"));
    }
    let half = width / heads / 2;
    if cos_len != t * half || sin_len != t * half {
        return Err(shape_error("rope angle tables"));
    }
    Ok(half)
}

/// Checks an attention call: the head layout, the lengths of the
/// query-shaped tensors (`t × heads·d`), the key/value-shaped ones
/// (`t × kv_heads·d`) and of the probabilities (`heads × t × t`).
pub fn attention_shape(
    t: usize,
    (h, kvh, d): Heads,
    q_like: &[usize],
    kv_like: &[usize],
    probs: usize,
) -> Result<(), BackendError> {
    if h == 0 || kvh == 0 || !h.is_multiple_of(kvh) || d == 0 {
        return Err(BackendError::Device(
            "attention: bad head configuration".into(),
        ));
    }
    let ok = q_like.iter().all(|&l| l == t * h * d)
        && kv_like.iter().all(|&l| l == t * kvh * d)
        && probs == h * t * t;
    if ok {
        Ok(())
    } else {
        Err(shape_error("attention"))
    }
}

/// The element-wise parts of a transformer block's forward and backward
/// pass on a device, for block reconstruction there
/// (`quant::device_block::DeviceBlock`). Semantics are those of the CPU
/// functions in `model/forward.rs` and `model/backward.rs`; row counts
/// follow from the buffer lengths.
pub trait BlockBackend: Backend {
    /// `c += op(a, b)` (as [`Backend::matmul`], adding into `c`).
    fn matmul_acc(
        &self,
        c: &mut Self::Buf,
        a: &Self::Buf,
        b: &Self::Buf,
        op: Op,
        shape: (usize, usize, usize),
    ) -> Result<(), BackendError>;
    /// `out = x / rms(x) ⊙ w` row by row, `inv` = each row's `1/rms`.
    fn rmsnorm(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        eps: f32,
        out: &mut Self::Buf,
        inv: &mut Self::Buf,
    ) -> Result<(), BackendError>;
    /// Backward of [`BlockBackend::rmsnorm`] into `dx` (added to with
    /// `accumulate`).
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        inv: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        accumulate: bool,
    ) -> Result<(), BackendError>;
    /// `y[r] += b` for every row.
    fn add_bias(&self, y: &mut Self::Buf, b: &Self::Buf) -> Result<(), BackendError>;
    /// RoPE on `x` (`t × heads·D`) with `t × D/2` angle tables; `inverse`
    /// rotates back (the backward).
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &mut Self::Buf,
        cos: &Self::Buf,
        sin: &Self::Buf,
        t: usize,
        heads: usize,
        inverse: bool,
    ) -> Result<(), BackendError>;
    /// Causal grouped-query attention: `out` and the probabilities
    /// (`heads × t × t`).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &mut Self::Buf,
        probs: &mut Self::Buf,
        t: usize,
        heads: Heads,
    ) -> Result<(), BackendError>;
    /// Backward of [`BlockBackend::attention`]: `dq`, `dk`, `dv` written.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        qkv: (&Self::Buf, &Self::Buf, &Self::Buf),
        probs: &Self::Buf,
        d_out: &Self::Buf,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        t: usize,
        heads: Heads,
    ) -> Result<(), BackendError>;
    /// `out = silu(g) ⊙ u`.
    fn silu_mul(
        &self,
        out: &mut Self::Buf,
        g: &Self::Buf,
        u: &Self::Buf,
    ) -> Result<(), BackendError>;
    /// Backward of [`BlockBackend::silu_mul`]: `(∂g, ∂u)` written.
    fn swiglu_backward(
        &self,
        g: &Self::Buf,
        u: &Self::Buf,
        d_act: &Self::Buf,
        dg: &mut Self::Buf,
        du: &mut Self::Buf,
    ) -> Result<(), BackendError>;
    /// `x += y`.
    fn add_assign(&self, x: &mut Self::Buf, y: &Self::Buf) -> Result<(), BackendError>;
    /// `dy = 2·imp[c]·(y − target) / norm` (rows of `imp.len()`).
    fn weighted_mse_grad(
        &self,
        y: &Self::Buf,
        target: &Self::Buf,
        imp: &Self::Buf,
        norm: f64,
        dy: &mut Self::Buf,
    ) -> Result<(), BackendError>;
}

/// The model-level steps of calibration statistics and model
/// reconstruction on a device (`quant::stats::collect_on`,
/// `quant::kd::model_reconstruct_on`): the per-site reductions and the two
/// losses over the logits. Activations and logits stay in backend buffers;
/// the small results (token norms, channel sums, losses) are host values.
pub trait ModelBackend: BlockBackend {
    /// `‖x[r]‖₂` of each row of `x` (`rows × width`).
    fn row_norms(&self, x: &Self::Buf, width: usize) -> Result<Vec<f32>, BackendError>;
    /// `acc[j] += Σ_r (x[r][j]·scales[r])²` for `x` (`scales.len() ×
    /// acc.len()`): each product in f32, squares and sums in f64, rows in
    /// order.
    fn add_clipped_squares(
        &self,
        x: &Self::Buf,
        scales: &[f32],
        acc: &mut [f64],
    ) -> Result<(), BackendError>;
    /// Next-token cross-entropy of `logits` (`t × vocab`, `t =
    /// tokens.len()` ≥ 2): the mean loss, and `dlogits` =
    /// `(softmax − onehot(next)) / (t − 1)` with the last row 0
    /// (`model::backward::loss_and_dlogits`).
    fn cross_entropy(
        &self,
        logits: &Self::Buf,
        tokens: &[u32],
        vocab: usize,
        dlogits: &mut Self::Buf,
    ) -> Result<f64, BackendError>;
    /// Cross-entropy of `logits` (`rows × vocab`) against a truncated
    /// teacher: `k` distinct ids and probabilities per row (`rows × k`
    /// each). The mean loss, and `dlogits = (softmax − p̃) / rows`.
    fn kd_loss(
        &self,
        logits: &Self::Buf,
        teacher: (&[u32], &[f32]),
        k: usize,
        vocab: usize,
        dlogits: &mut Self::Buf,
    ) -> Result<f64, BackendError>;
}

/// Checks a [`ModelBackend::cross_entropy`] call: logits and gradient of
/// `tokens.len()` (≥ 2) rows of `vocab`, every token in the vocabulary.
pub fn cross_entropy_shape(
    (logits, dlogits): (usize, usize),
    tokens: &[u32],
    vocab: usize,
) -> Result<(), BackendError> {
    let want = tokens.len().checked_mul(vocab);
    if want != Some(logits) || want != Some(dlogits) {
        return Err(shape_error("cross_entropy"));
    }
    if tokens.len() < 2 {
        return Err(BackendError::Device(
            "cross_entropy: fewer than 2 tokens".into(),
        ));
    }
    check_ids(tokens, vocab)
}

/// Checks a [`ModelBackend::kd_loss`] call: logits and gradient of whole
/// rows of `vocab`, `k` teacher ids and probabilities per row (at least
/// one row and one id), every id in the vocabulary. Returns the rows.
pub fn kd_loss_shape(
    (logits, dlogits): (usize, usize),
    (ids, probs): (&[u32], &[f32]),
    k: usize,
    vocab: usize,
) -> Result<usize, BackendError> {
    let rows = logits.checked_div(vocab).unwrap_or(0);
    let whole = |len: usize, cols: usize| rows.checked_mul(cols) == Some(len);
    if !(whole(logits, vocab) && whole(dlogits, vocab) && whole(ids.len(), k))
        || probs.len() != ids.len()
    {
        return Err(shape_error("kd_loss"));
    }
    if rows == 0 || k == 0 {
        return Err(BackendError::Device(
            "kd_loss: no rows or no teacher tokens".into(),
        ));
    }
    check_ids(ids, vocab)?;
    Ok(rows)
}

/// Checks the token ids a loss is given against the vocabulary.
pub fn check_ids(ids: &[u32], vocab: usize) -> Result<(), BackendError> {
    match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(id) => Err(BackendError::Device(format!(
            "token {id} outside the vocabulary ({vocab})"
        ))),
        None => Ok(()),
    }
}

/// The device a run computes on.
#[derive(Clone, Default)]
pub enum Compute {
    /// All CPU cores (rayon).
    #[default]
    Cpu,
    /// One CUDA device.
    Cuda(Arc<CudaBackend>),
}

impl Compute {
    /// One line for logs and reports: `cpu` or `cuda:0 NVIDIA H100 …`.
    pub fn describe(&self) -> String {
        match self {
            Self::Cpu => "cpu".into(),
            Self::Cuda(g) => {
                let d = g.gpu().info();
                let math = match g.gpu().precision() {
                    nq_cuda::GemmPrecision::F32 => "",
                    nq_cuda::GemmPrecision::Tf32 => " (tf32 products)",
                    nq_cuda::GemmPrecision::Bf16 => " (bf16 products)",
                };
                format!("cuda:{} {}{math}", d.ordinal, d.name)
            }
        }
    }

    /// Whether this is a GPU (layers then run one at a time on its stream).
    pub fn is_gpu(&self) -> bool {
        matches!(self, Self::Cuda(_))
    }

    /// Makes this device take the large products of everything else that
    /// runs in the process (statistics, reconstruction, KD, evaluation; see
    /// [`crate::linalg::set_offload`]); the CPU takes them back with
    /// [`Compute::Cpu`].
    pub fn install_offload(&self) {
        match self {
            Self::Cpu => crate::linalg::set_offload(None),
            Self::Cuda(g) => crate::linalg::set_offload(Some(g.clone())),
        }
    }
}

impl std::fmt::Debug for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The `--device` choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// The GPU when one is usable, otherwise the CPU (with a notice).
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device 0; an error when there is none.
    Cuda,
}

/// Arithmetic of the GPU's matrix products (`--gpu-math`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GpuMath {
    /// IEEE f32 products: the CPU's results to rounding (the default).
    #[default]
    F32,
    /// TF32 tensor cores (Ampere and later): f32 data and accumulation,
    /// products of 10-bit mantissas; several times the f32 rate, with
    /// relative product errors around 1e-3 instead of 1e-7.
    Tf32,
    /// bf16 tensor cores (Ampere and later): operands rounded to bf16
    /// (8-bit mantissas) inside cuBLAS, f32 accumulation and results; the
    /// fastest products, relative errors around 4e-3.
    Bf16,
}

/// Opens the device `choice` asks for, with f32 products. `auto` falls back
/// to the CPU and returns a one-line notice saying why; `cuda` without a
/// usable GPU is an error. Never panics.
pub fn select(choice: DeviceChoice) -> Result<(Compute, Option<String>), BackendError> {
    select_with(choice, GpuMath::F32)
}

/// [`select`] with the GPU's product arithmetic (ignored on the CPU).
pub fn select_with(
    choice: DeviceChoice,
    math: GpuMath,
) -> Result<(Compute, Option<String>), BackendError> {
    match choice {
        DeviceChoice::Cpu => Ok((Compute::Cpu, None)),
        DeviceChoice::Cuda => match nq_cuda::probe() {
            nq_cuda::Probe::Ready(_) => Ok((
                Compute::Cuda(Arc::new(CudaBackend::open_with(0, math)?)),
                None,
            )),
            p => Err(BackendError::Device(format!(
                "no usable CUDA GPU ({}); use --device cpu",
                p.describe()
            ))),
        },
        DeviceChoice::Auto => match nq_cuda::probe() {
            nq_cuda::Probe::Ready(_) => match CudaBackend::open_with(0, math) {
                Ok(g) => Ok((Compute::Cuda(Arc::new(g)), None)),
                Err(e) => Ok((
                    Compute::Cpu,
                    Some(format!("GPU found but not usable ({e}); using the CPU")),
                )),
            },
            p => Ok((
                Compute::Cpu,
                Some(format!("{}; using the CPU", p.describe())),
            )),
        },
    }
}
