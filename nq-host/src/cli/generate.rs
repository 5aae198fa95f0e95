//! `nq-host run`: generate a continuation of a prompt on the host (any
//! readable checkpoint, blobs included, evaluated in f32).
//!
//! Each step reruns the whole sequence (no KV cache): simple and exact, and
//! fast enough for the short continuations this command is for. The
//! allocation-free streaming runtime is nq-core's.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use nq_host::model::forward::prefill;
use rand::SeedableRng as _;

#[derive(clap::Args)]
pub struct RunArgs {
    /// GGUF file, Hugging Face directory or blob.
    #[arg(long)]
    model: PathBuf,
    /// Prompt text.
    #[arg(long)]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tokenizer when the model has none.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    super::set_threads(a.threads)?;
    if !a.temperature.is_finite() || a.temperature < 0.0 {
        bail!("--temperature must be ≥ 0");
    }
    let loaded = nq_host::source::load(&a.model)?;
    let tok = match (&a.tokenizer, loaded.tokenizer) {
        (Some(t), _) => nq_host::source::load_tokenizer(t)?,
        (None, Some(t)) => t,
        (None, None) => bail!("{} has no tokenizer; pass --tokenizer", a.model.display()),
    };
    let w = &loaded.weights;
    let mut ids = tok
        .encode(&a.prompt)
        .context("cannot tokenize the prompt")?;
    if ids.is_empty() {
        bail!("the prompt is empty");
    }
    let max = w.config.max_seq_len as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let mut out = std::io::stdout().lock();
    write!(out, "{}", a.prompt)?;
    let mut shown = ids.len();
    for _ in 0..a.tokens {
        if ids.len() >= max {
            break;
        }
        let logits = prefill(w, &ids)?;
        let next = if a.temperature == 0.0 {
            argmax(&logits)
        } else {
            sample(&logits, a.temperature, &mut rng)
        };
        if Some(next) == tok.eos_id() {
            break;
        }
        ids.push(next);
        // Print whole UTF-8 characters as they complete.
        let text = tok.decode(&ids[shown..]);
        if !text.ends_with('\u{FFFD}') {
            write!(out, "{text}")?;
            out.flush()?;
            shown = ids.len();
        }
    }
    writeln!(out, "{}", tok.decode(&ids[shown..]))?;
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn sample(logits: &[f32], temperature: f32, rng: &mut impl rand::Rng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let p: Vec<f64> = logits
        .iter()
        .map(|&z| f64::from((z - max) / temperature).exp())
        .collect();
    let total: f64 = p.iter().sum();
    let mut u = rng.gen::<f64>() * total;
    for (i, &pi) in p.iter().enumerate() {
        u -= pi;
        if u <= 0.0 {
            return i as u32;
        }
    }
    (p.len() - 1) as u32
}
