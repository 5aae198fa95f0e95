//! The edge runtime: a Llama-family decoder that runs a blob in place, with
//! every piece of state in one caller-provided byte arena and no allocator.
//!
//! ```text
//! let need = Runtime::arena_bytes(view.config(), ctx, KvDtype::I8);
//! let mut rt = Runtime::new(view, &mut arena[..need], ctx, KvDtype::I8)?;
//! let logits = rt.prefill(&prompt)?;      // batched kernels
//! let logits = rt.decode(next_token)?;    // batch-1 kernels
//! ```
//!
//! Architectures: llama, qwen2 (q/k/v biases, carried by the linears) and
//! qwen3 (per-head q/k RMSNorm), as the blob's config says. The math follows
//! nq-host's f32 reference (`nq_host::model::forward`): RMSNorm, RoPE in the
//! Hugging Face "rotate halves" convention, grouped-query causal attention,
//! SwiGLU, tied or untied head. Every decoder linear goes through the fast
//! sign-product kernels (`FactorizedLinear::forward` / `BinaryLinear::forward`,
//! int8 activations per token; see [`crate::kernels`] for their error
//! budget); an untied head that is itself a quantized linear does too.
//!
//! [`ActPrecision::F32`] (set through [`RuntimeOptions`]) runs every
//! quantized linear on f32 activations instead (`forward_f32`: a portable
//! f32 sign product, no int8 step). Then the runtime computes the
//! reference's math up to f32 rounding and summation order — with
//! [`KvDtype::F32`], every step: embeddings and row-quantized or f16 heads
//! are dequantized exactly as `dequantize_blob` does (`scale · code`, f16 →
//! f32), norms, RoPE and softmax follow the reference. It is slower and is
//! what checks the runtime against the reference token for token; the int8
//! default is what a device runs.
//!
//! The runtime is single-threaded and deterministic. The arena layout
//! (each region 16-byte aligned, the arena start aligned by the runtime):
//!
//! | region  | size (values)                          |
//! |---------|----------------------------------------|
//! | KV      | `n_layers · 2 · ctx · kv_dim` of the KV dtype (+ int8 scales: `n_layers · 2 · ctx · n_kv_heads` f32) |
//! | x, h, out | `batch · d_model` f32 each           |
//! | q, attn | `batch · q_dim` f32 each               |
//! | k, v    | `batch · kv_dim` f32 each              |
//! | gate, up | `batch · d_ffn` f32 each              |
//! | rope    | `batch · head_dim` f32                 |
//! | scores  | `min(n_heads / n_kv_heads, 3) · ctx` f32 |
//! | logits  | `vocab_size` f32                       |
//! | scratch | the largest kernel scratch of any linear (rank bounded by its shape) at the chosen [`ActPrecision`] |
//!
//! Prompts are processed in chunks of `batch` tokens ([`DEFAULT_BATCH`]
//! unless [`Runtime::with_batch`] asks for more; a smaller arena gets a
//! smaller batch, down to 1).

mod kv;
mod ops;
pub mod sampler;
pub mod token_table;

use core::fmt;

pub use kv::KvDtype;
pub use sampler::{argmax, Sampler, SamplerConfig, XorShift64};
pub use token_table::{TokenTable, TokenTableError, TOKEN_TABLE_TENSOR};

use crate::blob::{Head, ModelConfig};
use crate::{BlobError, BlobView};
use kv::{KvCache, KvStore};

/// Prompt tokens per batched forward when the caller does not say.
pub const DEFAULT_BATCH: usize = 8;

/// Alignment of every arena region (and of the arena start, by skipping).
pub const ARENA_ALIGN: usize = 16;

/// What the quantized linears do with their input activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ActPrecision {
    /// Int8 per token (absmax scale) into the fastest sign-product kernel
    /// this CPU has: what a device runs (error budget in [`crate::kernels`]).
    #[default]
    Int8,
    /// f32 activations through the f32 sign product (the selected kernel's
    /// lookups, the same bits on every kernel): the f32 reference's math up
    /// to summation order. Slower; its lookup tables
    /// (`4 · n` floats, `n` the padded input width) are built per token, so
    /// they do not grow with the batch.
    F32,
}

impl ActPrecision {
    /// Lower-case name (`int8`, `f32`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Int8 => "int8",
            Self::F32 => "f32",
        }
    }
}

/// How a [`Runtime`] is built: KV storage, largest prompt chunk, activation
/// precision. [`RuntimeOptions::new`] gives [`DEFAULT_BATCH`] and
/// [`ActPrecision::Int8`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct RuntimeOptions {
    /// KV cache storage.
    pub kv: KvDtype,
    /// Largest prompt chunk in tokens (clamped to `1..=ctx`; a smaller
    /// arena gets a smaller one).
    pub max_batch: usize,
    /// Activation precision of the quantized linears.
    pub act: ActPrecision,
}

impl RuntimeOptions {
    /// `kv` storage, [`DEFAULT_BATCH`]-token chunks, int8 activations.
    pub const fn new(kv: KvDtype) -> Self {
        Self {
            kv,
            max_batch: DEFAULT_BATCH,
            act: ActPrecision::Int8,
        }
    }

    /// The same with prompt chunks of up to `max_batch` tokens.
    pub const fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch;
        self
    }

    /// The same with activation precision `act`.
    pub const fn with_act(mut self, act: ActPrecision) -> Self {
        self.act = act;
        self
    }
}

/// Why the runtime refused.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The blob lacks a tensor or has a wrong one.
    Blob(BlobError),
    /// The arena is smaller than [`Runtime::arena_bytes`].
    ArenaTooSmall {
        /// Bytes needed (batch 1).
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// `ctx` is 0 or above the model's trained context.
    BadContext,
    /// The KV cache is full (`ctx` tokens).
    ContextFull,
    /// A token id is not below the vocabulary size.
    BadToken(u32),
    /// `prefill` got no tokens.
    EmptyPrompt,
    /// A linear needs more kernel scratch than the bound (a bug).
    Scratch,
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Blob(e) => write!(f, "blob: {e}"),
            Self::ArenaTooSmall { needed, got } => {
                write!(f, "arena too small: {got} bytes, need {needed}")
            }
            Self::BadContext => f.write_str("context length is 0 or above the model's"),
            Self::ContextFull => f.write_str("context is full"),
            Self::BadToken(t) => write!(f, "token id {t} is outside the vocabulary"),
            Self::EmptyPrompt => f.write_str("empty prompt"),
            Self::Scratch => f.write_str("kernel scratch bound exceeded"),
        }
    }
}

impl core::error::Error for RuntimeError {}

impl From<BlobError> for RuntimeError {
    fn from(e: BlobError) -> Self {
        Self::Blob(e)
    }
}

/// Region sizes, in values, for one (config, ctx, kv dtype, batch,
/// activation precision).
#[derive(Clone, Copy, Debug)]
struct Plan {
    kv_values: usize,
    kv_scales: usize,
    kv: KvDtype,
    act: ActPrecision,
    d: usize,
    qd: usize,
    kvd: usize,
    f: usize,
    hd: usize,
    batch: usize,
    scores: usize,
    vocab: usize,
    scratch: usize,
}

fn round_up(n: usize) -> Option<usize> {
    n.checked_add(ARENA_ALIGN - 1)
        .map(|v| v / ARENA_ALIGN * ARENA_ALIGN)
}

impl Plan {
    fn new(
        c: &ModelConfig,
        ctx: usize,
        kv: KvDtype,
        batch: usize,
        act: ActPrecision,
    ) -> Option<Self> {
        let (d, qd, kvd, f) = (
            c.d_model as usize,
            c.q_dim() as usize,
            c.kv_dim() as usize,
            c.d_ffn as usize,
        );
        let rows = (c.n_layers as usize).checked_mul(2)?.checked_mul(ctx)?;
        let mut scratch = 0;
        for (m, n) in [(qd, d), (kvd, d), (d, qd), (f, d), (d, f)] {
            scratch = scratch.max(ops::linear_scratch_bound(m, n, batch, act)?);
        }
        if !c.tied_embeddings {
            // An untied head may be a quantized linear (run at batch 1).
            scratch = scratch.max(ops::linear_scratch_bound(c.vocab_size as usize, d, 1, act)?);
        }
        Some(Self {
            kv_values: rows.checked_mul(kvd)?,
            kv_scales: if kv == KvDtype::I8 {
                rows.checked_mul(c.n_kv_heads as usize)?
            } else {
                0
            },
            kv,
            act,
            d,
            qd,
            kvd,
            f,
            hd: c.head_dim as usize,
            batch,
            scores: ctx.checked_mul(
                (c.n_heads as usize / (c.n_kv_heads as usize).max(1)).clamp(1, kv::HEADS_AT_ONCE),
            )?,
            vocab: c.vocab_size as usize,
            scratch,
        })
    }

    /// f32 regions in carve order (saturating: an overflow makes
    /// [`Plan::bytes`] fail instead of wrapping).
    fn f32_regions(&self) -> [usize; 13] {
        let b = |w: usize| self.batch.saturating_mul(w);
        [
            b(self.d),    // x
            b(self.d),    // h
            b(self.d),    // out
            b(self.qd),   // q
            b(self.qd),   // attn
            b(self.kvd),  // k
            b(self.kvd),  // v
            b(self.f),    // gate
            b(self.f),    // up
            b(self.hd),   // rope
            self.scores,  // scores
            self.vocab,   // logits
            self.scratch, // scratch
        ]
    }

    /// Total arena bytes, alignment slack included.
    fn bytes(&self) -> Option<usize> {
        let mut total = round_up(self.kv_values.checked_mul(self.kv.value_bytes())?)?;
        total = total.checked_add(round_up(self.kv_scales.checked_mul(4)?)?)?;
        for n in self.f32_regions() {
            total = total.checked_add(round_up(n.checked_mul(4)?)?)?;
        }
        total.checked_add(ARENA_ALIGN - 1)
    }
}

/// Hands out aligned pieces of the arena.
struct Carver<'a>(&'a mut [u8]);

impl<'a> Carver<'a> {
    /// `n` bytes (the cursor moves by `n` rounded up). The plan was checked
    /// to fit, so the split cannot fail.
    fn bytes(&mut self, n: usize) -> &'a mut [u8] {
        let step = n.div_ceil(ARENA_ALIGN) * ARENA_ALIGN;
        let rest = core::mem::take(&mut self.0);
        let (head, tail) = rest.split_at_mut(step);
        self.0 = tail;
        &mut head[..n]
    }

    fn f32s(&mut self, n: usize) -> &'a mut [f32] {
        let b = self.bytes(n * 4);
        b.fill(0);
        bytemuck::cast_slice_mut(b)
    }
}

/// A running model: the blob, its config and the arena-backed state.
pub struct Runtime<'a> {
    view: BlobView<'a>,
    cfg: ModelConfig,
    ctx: usize,
    batch: usize,
    pos: usize,
    kv_dtype: KvDtype,
    act: ActPrecision,
    kv: KvCache<'a>,
    x: &'a mut [f32],
    h: &'a mut [f32],
    out: &'a mut [f32],
    q: &'a mut [f32],
    attn: &'a mut [f32],
    k: &'a mut [f32],
    v: &'a mut [f32],
    gate: &'a mut [f32],
    up: &'a mut [f32],
    rope: &'a mut [f32],
    scores: &'a mut [f32],
    logits: &'a mut [f32],
    scratch: &'a mut [f32],
}

impl<'a> Runtime<'a> {
    /// Arena bytes for `ctx` positions, [`DEFAULT_BATCH`]-token prompt
    /// chunks and int8 activations (`usize::MAX` if it overflows).
    pub fn arena_bytes(cfg: &ModelConfig, ctx: usize, kv: KvDtype) -> usize {
        Self::arena_bytes_with(cfg, ctx, RuntimeOptions::new(kv))
    }

    /// Arena bytes with prompt chunks of `batch` tokens (at least 1, at most
    /// `ctx`) and int8 activations.
    pub fn arena_bytes_for_batch(
        cfg: &ModelConfig,
        ctx: usize,
        kv: KvDtype,
        batch: usize,
    ) -> usize {
        Self::arena_bytes_with(cfg, ctx, RuntimeOptions::new(kv).with_max_batch(batch))
    }

    /// Arena bytes for `opts` (its full `max_batch`, clamped to `1..=ctx`;
    /// `usize::MAX` if it overflows).
    pub fn arena_bytes_with(cfg: &ModelConfig, ctx: usize, opts: RuntimeOptions) -> usize {
        let batch = opts.max_batch.clamp(1, ctx.max(1));
        Plan::new(cfg, ctx, opts.kv, batch, opts.act)
            .and_then(|p| p.bytes())
            .unwrap_or(usize::MAX)
    }

    /// A runtime with prompt chunks of up to [`DEFAULT_BATCH`] tokens and
    /// int8 activations.
    pub fn new(
        view: BlobView<'a>,
        arena: &'a mut [u8],
        ctx: usize,
        kv: KvDtype,
    ) -> Result<Self, RuntimeError> {
        Self::with_options(view, arena, ctx, RuntimeOptions::new(kv))
    }

    /// A runtime whose prompt chunks are as large as the arena allows, up to
    /// `max_batch` tokens, with int8 activations.
    pub fn with_batch(
        view: BlobView<'a>,
        arena: &'a mut [u8],
        ctx: usize,
        kv: KvDtype,
        max_batch: usize,
    ) -> Result<Self, RuntimeError> {
        Self::with_options(
            view,
            arena,
            ctx,
            RuntimeOptions::new(kv).with_max_batch(max_batch),
        )
    }

    /// A runtime as `opts` asks: prompt chunks as large as the arena allows
    /// up to `opts.max_batch`. Checks every tensor the model needs.
    pub fn with_options(
        view: BlobView<'a>,
        arena: &'a mut [u8],
        ctx: usize,
        opts: RuntimeOptions,
    ) -> Result<Self, RuntimeError> {
        let cfg = *view.config();
        if ctx == 0 || ctx > cfg.max_seq_len as usize {
            return Err(RuntimeError::BadContext);
        }
        let (kv, act) = (opts.kv, opts.act);
        let got = arena.len();
        let plan = (1..=opts.max_batch.clamp(1, ctx))
            .rev()
            .filter_map(|b| Plan::new(&cfg, ctx, kv, b, act))
            .find(|p| p.bytes().is_some_and(|n| n <= got))
            .ok_or(RuntimeError::ArenaTooSmall {
                needed: Self::arena_bytes_with(&cfg, ctx, opts.with_max_batch(1)),
                got,
            })?;
        check_tensors(&view, &plan)?;

        let skip = arena.as_ptr().align_offset(ARENA_ALIGN).min(got);
        let mut c = Carver(&mut arena[skip..]);
        let kv_bytes = c.bytes(plan.kv_values * kv.value_bytes());
        kv_bytes.fill(0);
        let scales = c.f32s(plan.kv_scales);
        let store = match kv {
            KvDtype::F32 => KvStore::F32(bytemuck::cast_slice_mut(kv_bytes)),
            KvDtype::F16 => KvStore::F16(bytemuck::cast_slice_mut(kv_bytes)),
            KvDtype::I8 => KvStore::I8 {
                codes: bytemuck::cast_slice_mut(kv_bytes),
                scales,
            },
        };
        let [x, h, out, q, attn, k, v, gate, up, rope, scores, logits, scratch] =
            plan.f32_regions();
        Ok(Self {
            view,
            cfg,
            ctx,
            batch: plan.batch,
            pos: 0,
            kv_dtype: kv,
            act,
            kv: KvCache {
                store,
                ctx,
                head_dim: plan.hd,
                n_kv_heads: cfg.n_kv_heads as usize,
            },
            x: c.f32s(x),
            h: c.f32s(h),
            out: c.f32s(out),
            q: c.f32s(q),
            attn: c.f32s(attn),
            k: c.f32s(k),
            v: c.f32s(v),
            gate: c.f32s(gate),
            up: c.f32s(up),
            rope: c.f32s(rope),
            scores: c.f32s(scores),
            logits: c.f32s(logits),
            scratch: c.f32s(scratch),
        })
    }

    /// The model config.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Context capacity in tokens.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Tokens per batched prompt chunk.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens in the cache.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// KV storage type.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    /// Activation precision of the quantized linears.
    pub fn act_precision(&self) -> ActPrecision {
        self.act
    }

    /// The last logits computed.
    pub fn logits(&self) -> &[f32] {
        self.logits
    }

    /// Forgets every cached token.
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Runs `tokens` (appended to the cache) in chunks of [`batch`](Self::batch)
    /// and returns the logits of the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], RuntimeError> {
        if tokens.is_empty() {
            return Err(RuntimeError::EmptyPrompt);
        }
        self.check(tokens)?;
        // Only the last chunk needs logits: the head (the largest matrix of
        // a small model) runs once per prompt, not once per chunk.
        let mut chunks = tokens.chunks(self.batch).peekable();
        while let Some(chunk) = chunks.next() {
            self.step(chunk, chunks.peek().is_none())?;
        }
        Ok(self.logits)
    }

    /// Runs one token and returns its logits.
    pub fn decode(&mut self, token: u32) -> Result<&[f32], RuntimeError> {
        self.check(&[token])?;
        self.step(&[token], true)?;
        Ok(self.logits)
    }

    fn check(&self, tokens: &[u32]) -> Result<(), RuntimeError> {
        if let Some(&t) = tokens.iter().find(|&&t| t >= self.cfg.vocab_size) {
            return Err(RuntimeError::BadToken(t));
        }
        if self.pos + tokens.len() > self.ctx {
            return Err(RuntimeError::ContextFull);
        }
        Ok(())
    }

    /// One batched forward of `n ≤ batch` tokens at positions `pos..pos+n`;
    /// with `logits`, the last token's logits too.
    fn step(&mut self, tokens: &[u32], logits: bool) -> Result<(), RuntimeError> {
        let c = self.cfg;
        let n = tokens.len();
        let (d, qd, kvd, f, hd) = (
            c.d_model as usize,
            c.q_dim() as usize,
            c.kv_dim() as usize,
            c.d_ffn as usize,
            c.head_dim as usize,
        );
        let eps = c.norm_eps;
        let emb = self.view.token_embd()?;
        for (row, &t) in self.x.chunks_exact_mut(d).zip(tokens) {
            emb.row_into(t as usize, row);
        }
        for (t, cs) in self.rope.chunks_exact_mut(hd).take(n).enumerate() {
            ops::rope_angles(self.pos + t, c.rope_theta, cs);
        }
        let x = &mut self.x[..n * d];
        let h = &mut self.h[..n * d];
        let out = &mut self.out[..n * d];
        let q = &mut self.q[..n * qd];
        let k = &mut self.k[..n * kvd];
        let v = &mut self.v[..n * kvd];
        let attn = &mut self.attn[..n * qd];
        let gate = &mut self.gate[..n * f];
        let up = &mut self.up[..n * f];
        let scratch = &mut *self.scratch;
        let act = self.act;
        for layer in 0..c.n_layers {
            let b = self.view.block(layer)?;
            let l = layer as usize;
            for (xr, hr) in x.chunks_exact(d).zip(h.chunks_exact_mut(d)) {
                ops::rmsnorm_row(xr, &b.attn_norm, eps, hr);
            }
            ops::linear_forward(&b.attn_q, h, n, q, scratch, act);
            ops::linear_forward(&b.attn_k, h, n, k, scratch, act);
            ops::linear_forward(&b.attn_v, h, n, v, scratch, act);
            if let (Some(qn), Some(kn)) = (&b.q_norm, &b.k_norm) {
                ops::head_norm_in_place(q, qn, eps);
                ops::head_norm_in_place(k, kn, eps);
            }
            for t in 0..n {
                let cs = &self.rope[t * hd..(t + 1) * hd];
                ops::rope_row(&mut q[t * qd..(t + 1) * qd], cs);
                ops::rope_row(&mut k[t * kvd..(t + 1) * kvd], cs);
                self.kv
                    .store(l, false, self.pos + t, &k[t * kvd..(t + 1) * kvd]);
                self.kv
                    .store(l, true, self.pos + t, &v[t * kvd..(t + 1) * kvd]);
            }
            for t in 0..n {
                attend(
                    &self.kv,
                    &c,
                    l,
                    self.pos + t,
                    &q[t * qd..(t + 1) * qd],
                    &mut attn[t * qd..(t + 1) * qd],
                    self.scores,
                );
            }
            ops::linear_forward(&b.attn_output, attn, n, out, scratch, act);
            x.iter_mut().zip(out.iter()).for_each(|(a, o)| *a += o);
            for (xr, hr) in x.chunks_exact(d).zip(h.chunks_exact_mut(d)) {
                ops::rmsnorm_row(xr, &b.ffn_norm, eps, hr);
            }
            ops::linear_forward(&b.ffn_gate, h, n, gate, scratch, act);
            ops::linear_forward(&b.ffn_up, h, n, up, scratch, act);
            crate::kernels::vectorized(
                crate::kernels::selected(),
                #[inline(always)]
                || ops::silu_mul(gate, up),
            );
            ops::linear_forward(&b.ffn_down, gate, n, out, scratch, act);
            x.iter_mut().zip(out.iter()).for_each(|(a, o)| *a += o);
        }
        self.pos += n;
        if !logits {
            return Ok(());
        }
        let last = &x[(n - 1) * d..];
        let hl = &mut h[..d];
        ops::rmsnorm_row(last, &self.view.output_norm()?, eps, hl);
        match self.view.lm_head()? {
            Head::Embedding(e) => {
                ops::table_matvec(&e, hl, self.logits);
            }
            Head::Linear(lin) => ops::linear_forward(&lin, hl, 1, self.logits, scratch, act),
        }
        Ok(())
    }
}

/// Causal attention of one query row at position `pos` over the cache:
/// the query heads of each kv head in groups of up to
/// [`kv::HEADS_AT_ONCE`], one sweep over the keys and one over the values
/// per group. `scores` holds a group's rows, `ctx` values apart.
fn attend(
    kv: &KvCache<'_>,
    c: &ModelConfig,
    layer: usize,
    pos: usize,
    q: &[f32],
    out: &mut [f32],
    scores: &mut [f32],
) {
    let (nh, nkv, hd) = (
        c.n_heads as usize,
        c.n_kv_heads as usize,
        c.head_dim as usize,
    );
    let (n, stride) = (pos + 1, kv.ctx);
    // The score and value loops vectorize with the kernel's vector frame.
    crate::kernels::vectorized(
        crate::kernels::selected(),
        #[inline(always)]
        || {
            let group = nh / nkv;
            let scale = 1.0 / libm::sqrtf(hd as f32);
            for g in 0..nkv {
                let heads = g * group..(g + 1) * group;
                for h0 in heads.clone().step_by(kv::HEADS_AT_ONCE) {
                    let m = kv::HEADS_AT_ONCE.min(heads.end - h0);
                    let qs = &q[h0 * hd..(h0 + m) * hd];
                    kv.key_scores(layer, g, qs, scores, stride, n);
                    for row in scores.chunks_mut(stride).take(m) {
                        let live = &mut row[..n];
                        let mut max = f32::NEG_INFINITY;
                        for s in live.iter_mut() {
                            *s *= scale;
                            max = max.max(*s);
                        }
                        let sum = ops::exp_shifted_sum(live, max);
                        let norm = (1.0 / sum) as f32;
                        for s in live.iter_mut() {
                            *s *= norm;
                        }
                    }
                    let outs = &mut out[h0 * hd..(h0 + m) * hd];
                    outs.fill(0.0);
                    kv.add_values(layer, g, scores, stride, n, outs);
                }
            }
        },
    );
}

/// Every tensor present, shaped as the config says, and within the scratch bound.
fn check_tensors(view: &BlobView<'_>, plan: &Plan) -> Result<(), RuntimeError> {
    let c = view.config();
    view.token_embd()?;
    view.output_norm()?;
    if let Head::Linear(l) = view.lm_head()? {
        if ops::linear_scratch(&l, 1, plan.act) > plan.scratch {
            return Err(RuntimeError::Scratch);
        }
    }
    for layer in 0..c.n_layers {
        let b = view.block(layer)?;
        for l in [
            b.attn_q,
            b.attn_k,
            b.attn_v,
            b.attn_output,
            b.ffn_gate,
            b.ffn_up,
            b.ffn_down,
        ] {
            if ops::linear_scratch(&l, plan.batch, plan.act) > plan.scratch {
                return Err(RuntimeError::Scratch);
            }
        }
    }
    Ok(())
}
