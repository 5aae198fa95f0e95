//! `nq-host bench runtime`: prompt-processing (`ppN`) and generation
//! (`tgN`) tokens/s of a blob on nq-core's runtime, `llama-bench` style.
//! The measuring lives in [`nq_host::bench::runtime`].

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use nq_core::kernels::{self, Kernel};
use nq_core::{ActPrecision, Blob, KvDtype};
use nq_host::bench::runtime::{self as rb, Format, Spec};

use super::generate::{ActArg, KvArg};

/// Output format, as the CLI spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputArg {
    /// A Markdown table, one line per test as it finishes.
    Md,
    /// CSV with a header line.
    Csv,
    /// One JSON object at the end.
    Json,
}

#[derive(clap::Args)]
pub struct RuntimeBenchArgs {
    /// Blob to run (`--blob` also works).
    #[arg(long, visible_alias = "blob")]
    model: PathBuf,
    /// Prompt lengths of the prompt-processing tests (`ppN`: one prefill
    /// of N tokens), comma-separated; 0 runs none.
    #[arg(
        short = 'p',
        long = "prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    prompts: Vec<usize>,
    /// Token counts of the generation tests (`tgN`: N single-token decode
    /// steps), comma-separated; 0 runs none.
    #[arg(
        short = 'n',
        long = "gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    gens: Vec<usize>,
    /// Prefill batch sizes (tokens per batched step of a `pp` test),
    /// comma-separated.
    #[arg(short = 'b', long, value_delimiter = ',', default_value = "32")]
    batch: Vec<usize>,
    /// Kernels, comma-separated: best (what nq-core picks), all (every one
    /// this CPU runs), or names (portable, avx2, avx512, amx, neon,
    /// neon-dotprod, neon-i8mm).
    #[arg(short = 'k', long, value_delimiter = ',', default_value = "best")]
    kernel: Vec<String>,
    /// KV cache storage types, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32")]
    kv: Vec<KvArg>,
    /// Activation precision of the quantized linears.
    #[arg(long, value_enum, default_value_t = ActArg::Int8)]
    act: ActArg,
    /// Timed repetitions per test (after one warm-up run).
    #[arg(short = 'r', long, default_value_t = 5)]
    reps: usize,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputArg::Md)]
    output: OutputArg,
}

/// `best`, `all` or kernel names → the kernels to force (`None`: best).
fn parse_kernels(names: &[String]) -> anyhow::Result<Vec<Option<Kernel>>> {
    let mut out = Vec::new();
    for n in names {
        let n = n.trim();
        match n {
            "best" => out.push(None),
            "all" => out.extend(kernels::available().map(Some)),
            _ => match Kernel::ALL.into_iter().find(|k| k.name() == n) {
                Some(k) => out.push(Some(k)),
                None => bail!(
                    "unknown kernel {n:?} (best, all, {})",
                    Kernel::ALL.map(Kernel::name).join(", ")
                ),
            },
        }
    }
    out.dedup();
    Ok(out)
}

pub fn run(a: RuntimeBenchArgs) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&a.model).with_context(|| format!("cannot read {}", a.model.display()))?;
    let view = Blob::parse(&bytes).context("not a valid blob")?;
    view.verify().context("blob CRC check failed")?;
    let spec = Spec {
        prompts: a.prompts.iter().copied().filter(|&p| p > 0).collect(),
        gens: a.gens.iter().copied().filter(|&n| n > 0).collect(),
        batches: a.batch.clone(),
        kernels: parse_kernels(&a.kernel)?,
        kvs: a.kv.iter().map(|&k| KvDtype::from(k)).collect(),
        act: ActPrecision::from(a.act),
        reps: a.reps,
    };
    spec.validate(view.config().max_seq_len as usize)?;
    let context = rb::Context {
        model: a.model.file_name().map_or_else(
            || a.model.display().to_string(),
            |f| f.to_string_lossy().into(),
        ),
        size_bytes: bytes.len() as u64,
        cpu: rb::cpu_name(),
        version: env!("CARGO_PKG_VERSION"),
    };
    let format = match a.output {
        OutputArg::Md => Format::Markdown,
        OutputArg::Csv => Format::Csv,
        OutputArg::Json => Format::Json,
    };
    eprintln!(
        "bench: {} ({} bytes), cpu {}, ctx {}, {} timed runs per test after a warm-up; nq-host {}",
        context.model,
        context.size_bytes,
        context.cpu,
        spec.ctx(),
        spec.reps,
        context.version
    );
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) ends the output, not the process with a panic.
    let mut write = |line: String| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    // The header goes out with the first row, so a model the runtime
    // refuses prints nothing on stdout, only the error.
    let mut first = true;
    let rows = rb::run(view, &spec, |r| {
        let line = match format {
            Format::Markdown => rb::markdown_row(&context, r),
            Format::Csv => rb::csv_row(&context, r),
            Format::Json => return,
        };
        if std::mem::take(&mut first) {
            write(match format {
                Format::Csv => rb::CSV_HEADER.to_string(),
                _ => rb::markdown_header(),
            });
        }
        write(line);
    })?;
    if format == Format::Json {
        write(rb::json(&context, &rows));
    }
    Ok(())
}
