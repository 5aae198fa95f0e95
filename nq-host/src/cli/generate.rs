//! `nq-host run`: generate a continuation of a prompt.
//!
//! A blob runs through nq-core's allocation-free runtime by default (the
//! code a device runs: KV cache, batched prefill, batch-1 decode, sampler,
//! text from the blob's `tokenizer.tokens` table). The runtime is
//! single-threaded by design; `--threads` only sizes the pool the
//! tokenizer and `--reference` use.
//!
//! `--reference` (and any GGUF or Hugging Face checkpoint) takes the f32
//! host path instead: each step reruns the whole sequence with no KV cache,
//! simple and exact, fast enough for short continuations. It honours the
//! same prompt, `--ctx`, sampling and output flags, so `--act f32` (the
//! runtime on f32 activations, f32 KV) and `--reference` print the same
//! greedy tokens: the runtime computes the reference's math up to f32
//! rounding (nq-host/tests/runtime.rs checks it).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _};
use nq_core::runtime::{Sampler, SamplerConfig, TokenTable, TOKEN_TABLE_TENSOR};
use nq_core::{ActPrecision, Blob, KvDtype, Runtime, RuntimeOptions};
use nq_host::model::forward::prefill;
use nq_host::quant::export::blob_tokenizer_json;
use nq_host::source::SourceKind;
use nq_host::tokenizer::Tokenizer;

/// KV cache storage, as the CLI spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvArg {
    /// 4 bytes a value.
    F32,
    /// 2 bytes a value.
    F16,
    /// 1 byte a value plus a scale per head and position.
    Int8,
}

impl From<KvArg> for KvDtype {
    fn from(k: KvArg) -> Self {
        match k {
            KvArg::F32 => KvDtype::F32,
            KvArg::F16 => KvDtype::F16,
            KvArg::Int8 => KvDtype::I8,
        }
    }
}

/// Activation precision of the runtime's quantized linears, as the CLI
/// spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ActArg {
    /// Int8 per token into the fastest sign-product kernel (what a device
    /// runs).
    Int8,
    /// f32 activations through the f32 sign product (the selected kernel's
    /// lookups, the same bits on every kernel): the f32 reference's math up
    /// to rounding (slower; with `--kv f32`, the same greedy tokens as
    /// `--reference`).
    F32,
}

impl From<ActArg> for ActPrecision {
    fn from(a: ActArg) -> Self {
        match a {
            ActArg::Int8 => ActPrecision::Int8,
            ActArg::F32 => ActPrecision::F32,
        }
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// GGUF file, Hugging Face directory or blob (`--blob` also works).
    #[arg(long, visible_alias = "blob")]
    model: PathBuf,
    /// Prompt text.
    #[arg(long, required_unless_present = "prompt_ids")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids (no tokenizer needed; blobs only).
    #[arg(long, conflicts_with = "prompt")]
    prompt_ids: Option<String>,
    /// Tokens to generate.
    #[arg(short = 'n', long, default_value_t = 32)]
    tokens: usize,
    /// Sampling temperature; 0 is greedy (`--temp` also works).
    #[arg(long, visible_alias = "temp", default_value_t = 0.0)]
    temperature: f32,
    /// Keep only the k most likely tokens (0: off; at most 128).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling mass (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// KV cache storage (runtime path).
    #[arg(long, value_enum, default_value_t = KvArg::F32)]
    kv: KvArg,
    /// Activation precision of the quantized linears (runtime path).
    #[arg(long, value_enum, default_value_t = ActArg::Int8)]
    act: ActArg,
    /// Context capacity in tokens (default: prompt + tokens; at most the
    /// model's).
    #[arg(long)]
    ctx: Option<usize>,
    /// Prompt tokens per batched prefill step (runtime path).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Print the generated token ids on stdout instead of text.
    #[arg(long)]
    print_ids: bool,
    /// Use the f32 host reference path (dequantized blob, no KV cache);
    /// `--kv`, `--act` and `--batch` do not apply.
    #[arg(long)]
    reference: bool,
    /// Tokenizer when the model has none.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Worker threads of the reference path and tokenizer (the runtime is
    /// single-threaded).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    super::set_threads(a.threads)?;
    if !a.temperature.is_finite() || a.temperature < 0.0 {
        bail!("--temperature must be ≥ 0");
    }
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1]");
    }
    let is_blob = matches!(nq_host::source::detect(&a.model), Ok(SourceKind::Blob));
    if is_blob && !a.reference {
        run_blob(&a)
    } else {
        run_reference(&a)
    }
}

/// The context capacity both paths use: `--ctx`, or prompt + tokens, at
/// most the model's; the prompt must leave room for one token.
fn context(a: &RunArgs, prompt_len: usize, max_seq_len: u32) -> anyhow::Result<usize> {
    if prompt_len == 0 {
        bail!("the prompt is empty");
    }
    let ctx = a
        .ctx
        .unwrap_or(prompt_len.saturating_add(a.tokens))
        .min(max_seq_len as usize);
    if prompt_len >= ctx {
        bail!("the prompt ({prompt_len} tokens) does not fit --ctx {ctx}");
    }
    Ok(ctx)
}

fn parse_ids(s: &str) -> anyhow::Result<Vec<u32>> {
    s.split(',')
        .map(|t| {
            t.trim()
                .parse::<u32>()
                .with_context(|| format!("bad token id {t:?}"))
        })
        .collect()
}

/// Text bytes are printed as whole UTF-8 characters as they complete.
struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, bytes: &[u8], out: &mut impl std::io::Write) -> std::io::Result<()> {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_some() => self.pending.len(),
            Err(e) => e.valid_up_to(),
        };
        out.write_all(String::from_utf8_lossy(&self.pending[..valid]).as_bytes())?;
        out.flush()?;
        self.pending.drain(..valid);
        Ok(())
    }
}

fn run_blob(a: &RunArgs) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&a.model).with_context(|| format!("cannot read {}", a.model.display()))?;
    let view = Blob::parse(&bytes).context("not a valid blob")?;
    view.verify().context("blob CRC check failed")?;
    let cfg = *view.config();
    let table = match view.find(TOKEN_TABLE_TENSOR) {
        Some(t) => Some(TokenTable::parse(t.as_raw_bytes()?).context("bad tokenizer.tokens")?),
        None => None,
    };
    let tok: Option<Tokenizer> = match (&a.tokenizer, blob_tokenizer_json(&view)?) {
        (Some(t), _) => Some(nq_host::source::load_tokenizer(t)?),
        (None, Some(json)) => {
            Some(Tokenizer::from_json_bytes(json)?.with_special_ids(cfg.bos_id, cfg.eos_id))
        }
        (None, None) => None,
    };
    let ids = match (&a.prompt_ids, &a.prompt) {
        (Some(s), _) => parse_ids(s)?,
        (None, Some(p)) => match &tok {
            Some(t) => t.encode(p).context("cannot tokenize the prompt")?,
            None => bail!("the blob has no tokenizer; pass --tokenizer or --prompt-ids"),
        },
        (None, None) => bail!("pass --prompt or --prompt-ids"),
    };
    let ctx = context(a, ids.len(), cfg.max_seq_len)?;
    let kv = KvDtype::from(a.kv);
    let act = ActPrecision::from(a.act);
    let opts = RuntimeOptions::new(kv)
        .with_max_batch(a.batch)
        .with_act(act);
    let need = Runtime::arena_bytes_with(&cfg, ctx, opts);
    let mut arena = vec![0u8; need];
    let mut rt = Runtime::with_options(view, &mut arena, ctx, opts)?;
    let kernel = nq_core::kernels::selected();
    eprintln!(
        "runtime: {kernel} kernel, act {}, ctx {ctx}, kv {}, prefill batch {}, arena {} bytes ({:.2} MiB)",
        act.name(),
        kv.name(),
        rt.batch(),
        need,
        need as f64 / (1 << 20) as f64
    );
    let mut sampler = Sampler::new(SamplerConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    });
    let mut out = std::io::stdout().lock();
    if !a.print_ids {
        if let Some(p) = &a.prompt {
            write!(out, "{p}")?;
        }
    }
    let mut text = Utf8Stream {
        pending: Vec::new(),
    };
    let t0 = Instant::now();
    let mut logits = rt.prefill(&ids)?.to_vec();
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut generated = Vec::new();
    while generated.len() < a.tokens && rt.pos() < ctx {
        let next = sampler.sample(&mut logits);
        if Some(next) == cfg.eos_id {
            break;
        }
        generated.push(next);
        if a.print_ids {
            write!(out, "{}{next}", if generated.len() > 1 { "," } else { "" })?;
        } else if let Some(bytes) = table.as_ref().and_then(|t| t.token_bytes(next)) {
            text.push(bytes, &mut out)?;
        } else if let Some(t) = &tok {
            text.push(t.decode(&[next]).as_bytes(), &mut out)?;
        }
        if generated.len() == a.tokens || rt.pos() >= ctx {
            break;
        }
        logits.copy_from_slice(rt.decode(next)?);
    }
    let decode_s = t1.elapsed().as_secs_f64();
    text.push(&[], &mut out)?;
    writeln!(out)?;
    // The first generated token is sampled from the prefill's logits, so
    // `n` generated tokens took `n - 1` decode steps: the rate counts steps.
    let steps = generated.len().saturating_sub(1);
    let rate = if steps == 0 {
        "-".to_string()
    } else {
        format!("{:.1}", steps as f64 / decode_s.max(1e-9))
    };
    eprintln!(
        "prefill: {} tokens in {:.3} s ({:.1} tokens/s); generated {} tokens: {steps} decode steps in {:.3} s ({rate} tokens/s)",
        ids.len(),
        prefill_s,
        ids.len() as f64 / prefill_s,
        generated.len(),
        decode_s,
    );
    Ok(())
}

fn run_reference(a: &RunArgs) -> anyhow::Result<()> {
    let loaded = nq_host::source::load(&a.model)?;
    let w = &loaded.weights;
    // Like the runtime path, token ids in and out need no tokenizer.
    let tok = if a.prompt_ids.is_some() && a.print_ids && a.tokenizer.is_none() {
        loaded.tokenizer
    } else {
        Some(nq_host::source::choose_tokenizer(
            &a.model,
            loaded.tokenizer,
            a.tokenizer.as_deref(),
        )?)
    };
    let mut ids = match (&a.prompt_ids, &a.prompt, &tok) {
        (Some(s), _, _) => parse_ids(s)?,
        (None, Some(p), Some(t)) => t.encode(p).context("cannot tokenize the prompt")?,
        _ => bail!("pass --prompt or --prompt-ids"),
    };
    if let Some(&t) = ids.iter().find(|&&t| t >= w.config.vocab_size) {
        bail!("token id {t} is outside the vocabulary");
    }
    let ctx = context(a, ids.len(), w.config.max_seq_len)?;
    let mut sampler = Sampler::new(SamplerConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    });
    let mut out = std::io::stdout().lock();
    if !a.print_ids {
        write!(out, "{}", a.prompt.as_deref().unwrap_or(""))?;
    }
    // The tokenizer that prints text (none with --print-ids).
    let text_tok = tok.as_ref().filter(|_| !a.print_ids);
    let start = ids.len();
    let mut shown = ids.len();
    for _ in 0..a.tokens {
        if ids.len() >= ctx {
            break;
        }
        let mut logits = prefill(w, &ids)?;
        let next = sampler.sample(&mut logits);
        if Some(next) == tok.as_ref().map_or(w.config.eos_id, Tokenizer::eos_id) {
            break;
        }
        ids.push(next);
        let Some(t) = text_tok else {
            continue;
        };
        // Print whole UTF-8 characters as they complete.
        let text = t.decode(&ids[shown..]);
        if !text.ends_with('\u{FFFD}') {
            write!(out, "{text}")?;
            out.flush()?;
            shown = ids.len();
        }
    }
    match text_tok {
        Some(t) => writeln!(out, "{}", t.decode(&ids[shown..]))?,
        None => {
            let s: Vec<String> = ids[start..].iter().map(u32::to_string).collect();
            writeln!(out, "{}", s.join(","))?;
        }
    }
    Ok(())
}
