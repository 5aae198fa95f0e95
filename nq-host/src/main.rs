//! The `nq-host` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use nq_host::model::hf::SaveDtype;

mod cli;

#[derive(Parser)]
#[command(
    name = "nq-host",
    version,
    about = "Quantize LLMs to sub-1-bit blobs and inspect them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a blob's config, every tensor and the bits-per-weight totals.
    Inspect {
        /// The .nqb file.
        blob: PathBuf,
        /// Skip the CRC check of every tensor (structure is always checked).
        #[arg(long)]
        no_verify: bool,
        /// Print the edge runtime's footprint: flash (blob) and RAM (arena).
        #[arg(long)]
        footprint: bool,
        /// Context length for --footprint.
        #[arg(long, default_value_t = 256)]
        ctx: usize,
        /// KV cache storage for --footprint.
        #[arg(long, value_enum, default_value_t = cli::generate::KvArg::F32)]
        kv: cli::generate::KvArg,
    },
    /// List the CUDA devices nq-host can use (or say why there are none).
    Devices,
    /// Perplexity and top-1 accuracy of a model on a text (EVAL.md protocol:
    /// non-overlapping windows from the start, every prediction scored).
    Eval(EvalArgs),
    /// Write any readable checkpoint as a Hugging Face directory
    /// (config.json, model.safetensors, tokenizer.json).
    Convert(ConvertArgs),
    /// Quantize a checkpoint to a binary / sub-1-bit blob.
    Quantize(Box<cli::quantize::QuantizeArgs>),
    /// Generate a continuation of a prompt: blobs through the nq-core runtime
    /// (what a device runs), checkpoints through the f32 host model.
    Run(cli::generate::RunArgs),
    /// Benchmarks (not tests): the FP32 reference model, the ADMM
    /// factorization and calibration statistics per device, and a blob's
    /// prompt and generation speed on the edge runtime.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Prompt-processing (ppN) and generation (tgN) tokens/s of a blob on
    /// the edge runtime (what a device runs), llama-bench style: per
    /// kernel, KV type and prefill batch, mean ± sd over repetitions.
    Runtime(cli::bench_runtime::RuntimeBenchArgs),
    /// FP32 prefill, full forward and forward + backward on one sequence.
    Fp32 {
        /// GGUF file or Hugging Face directory.
        #[arg(long)]
        model: PathBuf,
        /// Text to take the sequence from (default: fixed pseudo-random ids).
        #[arg(long)]
        text: Option<PathBuf>,
        /// Sequence length.
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// Timed runs per measurement (after one warm-up run).
        #[arg(long, default_value_t = 3)]
        iters: usize,
        /// Skip the forward + backward measurement.
        #[arg(long)]
        no_backward: bool,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Device of the large products (auto, cpu, cuda).
        #[arg(long, value_enum, default_value_t = nq_host::backend::DeviceChoice::Auto)]
        device: nq_host::backend::DeviceChoice,
        /// Arithmetic of the GPU's products: f32, or tensor cores with tf32
        /// (~1e-3 relative product error) or bf16 (~4e-3). Ignored on the CPU.
        #[arg(long, value_enum, default_value_t = nq_host::backend::GpuMath::F32)]
        gpu_math: nq_host::backend::GpuMath,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// NanoQuant's ADMM factorization of layer shapes, timed per device
    /// (with a GPU: the GPU and the CPU side by side, and their errors).
    Admm {
        /// Layer shapes `MxN` (out × in), comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "576x576,1536x576,4096x4096"
        )]
        shapes: Vec<String>,
        /// Bits per weight (sets the rank).
        #[arg(long, default_value_t = 1.0)]
        bpw: f64,
        /// ADMM iterations per factorization.
        #[arg(long, default_value_t = 10)]
        iters: usize,
        #[command(flatten)]
        run: DeviceBenchArgs,
    },
    /// The calibration-statistics pass (forward, loss, checkpointed
    /// backward, clipped energies) of a model with SmolLM2-135M's shapes
    /// and random weights, timed per device (with a GPU: the GPU and the
    /// CPU side by side, and how far their statistics differ).
    Stats {
        /// Decoder blocks (SmolLM2-135M has 30).
        #[arg(long, default_value_t = 30)]
        layers: u32,
        /// Calibration windows.
        #[arg(long, default_value_t = 4)]
        windows: usize,
        /// Tokens per window.
        #[arg(long, default_value_t = 256)]
        ctx: usize,
        #[command(flatten)]
        run: DeviceBenchArgs,
    },
}

/// Where a per-device benchmark runs and how it reports.
#[derive(clap::Args)]
struct DeviceBenchArgs {
    /// Device: auto (GPU and CPU when a GPU is usable, else CPU), cpu
    /// or cuda (GPU only).
    #[arg(long, value_enum, default_value_t = nq_host::backend::DeviceChoice::Auto)]
    device: nq_host::backend::DeviceChoice,
    /// Arithmetic of the GPU's products: f32, or tensor cores with tf32
    /// (~1e-3 relative product error) or bf16 (~4e-3). Ignored on the CPU.
    #[arg(long, value_enum, default_value_t = nq_host::backend::GpuMath::F32)]
    gpu_math: nq_host::backend::GpuMath,
    /// Worker threads of the CPU runs (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

impl DeviceBenchArgs {
    /// Sets the thread count and picks the devices to time: the chosen one,
    /// and the CPU next to a GPU unless only the GPU was asked for.
    fn devices(&self) -> anyhow::Result<Vec<nq_host::backend::Compute>> {
        use nq_host::backend::{select_with, Compute, DeviceChoice};
        cli::set_threads(self.threads)?;
        let (compute, notice) = select_with(self.device, self.gpu_math)
            .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
        if let Some(n) = notice {
            eprintln!("note: {n}");
        }
        let mut devices = vec![compute.clone()];
        if compute.is_gpu() && self.device == DeviceChoice::Auto {
            devices.push(Compute::Cpu);
        }
        Ok(devices)
    }
}

#[derive(clap::Args)]
struct EvalArgs {
    /// GGUF file, Hugging Face directory or blob (.nqb, dequantized).
    #[arg(long)]
    model: PathBuf,
    /// UTF-8 text file to score.
    #[arg(long)]
    text: PathBuf,
    /// Tokenizer (tokenizer.json, GGUF or directory) when the model has none.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Window length in tokens.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Score only the first N windows (default: all).
    #[arg(long)]
    windows: Option<usize>,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Device of the large products: auto (the GPU when one is usable, else
    /// the CPU), cpu, or cuda (an error without a GPU).
    #[arg(long, value_enum, default_value_t = nq_host::backend::DeviceChoice::Auto)]
    device: nq_host::backend::DeviceChoice,
    /// Arithmetic of the GPU's products: f32, or tensor cores with tf32
    /// (~1e-3 relative product error) or bf16 (~4e-3). Ignored on the CPU.
    #[arg(long, value_enum, default_value_t = nq_host::backend::GpuMath::F32)]
    gpu_math: nq_host::backend::GpuMath,
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// GGUF file, Hugging Face directory or blob (.nqb, dequantized).
    input: PathBuf,
    /// Output directory (created; existing files of the same name replaced).
    #[arg(long)]
    out: PathBuf,
    /// Storage type of the written tensors.
    #[arg(long, value_enum, default_value_t = SaveDtype::F32)]
    dtype: SaveDtype,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context and every cause, joined.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Inspect {
            blob,
            no_verify,
            footprint,
            ctx,
            kv,
        } => {
            inspect(&blob, !no_verify)?;
            if footprint {
                print_footprint(&blob, ctx, kv.into())?;
            }
            Ok(())
        }
        Command::Devices => {
            println!("{}", nq_cuda::probe().describe());
            Ok(())
        }
        Command::Eval(args) => eval(args),
        Command::Convert(args) => convert(args),
        Command::Quantize(args) => cli::quantize::run(*args),
        Command::Run(args) => cli::generate::run(args),
        Command::Bench(BenchCommand::Runtime(args)) => cli::bench_runtime::run(args),
        Command::Bench(BenchCommand::Admm {
            shapes,
            bpw,
            iters,
            run,
        }) => bench_admm(&shapes, bpw, iters, &run),
        Command::Bench(BenchCommand::Stats {
            layers,
            windows,
            ctx,
            run,
        }) => bench_stats((layers, windows, ctx), &run),
        Command::Bench(BenchCommand::Fp32 {
            model,
            text,
            ctx,
            iters,
            no_backward,
            threads,
            device,
            gpu_math,
            json,
        }) => {
            cli::set_threads(threads)?;
            let (_, device) = use_device(device, gpu_math)?;
            if ctx < 2 {
                bail!("--ctx must be at least 2");
            }
            let loaded = nq_host::source::load(&model)?;
            let vocab = loaded.weights.config.vocab_size;
            let tokens: Vec<u32> = match text {
                Some(path) => {
                    let Some(tok) = &loaded.tokenizer else {
                        bail!("{} has no tokenizer; drop --text", model.display());
                    };
                    let s = nq_host::tokenizer::read_text_for_eval(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let ids = tok.encode(&s)?;
                    if ids.len() < ctx {
                        bail!(
                            "{} has {} tokens, fewer than --ctx {ctx}",
                            path.display(),
                            ids.len()
                        );
                    }
                    ids[..ctx].to_vec()
                }
                // A fixed LCG: any ids in range exercise the same arithmetic.
                None => (0..ctx as u64)
                    .map(|i| {
                        ((i.wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407)
                            >> 33)
                            % u64::from(vocab)) as u32
                    })
                    .collect(),
            };
            let r = nq_host::bench::fp32(&loaded.weights, &tokens, iters, !no_backward)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "model {}, ctx {}, {} threads, median of {} runs",
                    model.display(),
                    r.ctx,
                    r.threads,
                    r.iters
                );
                println!("device {device}");
                for t in &r.timings {
                    println!(
                        "  {:<36} {:>9.3} s  {:>9.1} tokens/s  (best {:.3} s)",
                        t.name, t.seconds, t.tokens_per_second, t.best_seconds
                    );
                }
                if let Some(b) = r.peak_rss_bytes {
                    println!("  peak RSS {:.0} MiB", b as f64 / (1024.0 * 1024.0));
                }
            }
            Ok(())
        }
    }
}

/// Opens `device` and sends the large products there. Returns the line the
/// command prints about it (with the reason when `auto` fell back to the
/// CPU), for its summary: printed at once it would break the one-line
/// error of a later input check.
fn use_device(
    device: nq_host::backend::DeviceChoice,
    math: nq_host::backend::GpuMath,
) -> anyhow::Result<(nq_host::backend::Compute, String)> {
    let (compute, notice) = nq_host::backend::select_with(device, math)
        .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    compute.install_offload();
    let line = notice.unwrap_or_else(|| compute.describe());
    Ok((compute, line))
}

fn bench_stats(
    (layers, windows, ctx): (u32, usize, usize),
    run: &DeviceBenchArgs,
) -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng};
    if layers == 0 || windows == 0 || ctx < 2 {
        bail!("--layers and --windows must be at least 1, --ctx at least 2");
    }
    let devices = run.devices()?;
    let json = run.json;
    let config = nq_host::bench::smollm2_shapes(layers);
    let vocab = config.vocab_size;
    let w = nq_host::model::synthetic::random_model(config, 1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let wins: Vec<Vec<u32>> = (0..windows)
        .map(|_| (0..ctx).map(|_| rng.gen_range(0..vocab)).collect())
        .collect();
    let mut rows = Vec::new();
    let mut first = None;
    for c in &devices {
        let (mut t, s) = nq_host::bench::stats(&w, &wins, c)?;
        match &first {
            None => first = Some(s),
            Some(f) => t.max_rel_diff = Some(nq_host::bench::max_rel_diff(f, &s)),
        }
        if !json {
            let diff = t.max_rel_diff.map_or(String::new(), |d| {
                format!("  max energy difference {d:.2e}")
            });
            println!(
                "{:<28} {} blocks, {} × {} tokens {:>9.3} s {:>9.1} tokens/s  loss {:.4}{diff}",
                t.device, t.layers, t.windows, t.ctx, t.seconds, t.tokens_per_second, t.mean_loss
            );
        }
        rows.push(t);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

fn bench_admm(
    shapes: &[String],
    bpw: f64,
    iters: usize,
    run: &DeviceBenchArgs,
) -> anyhow::Result<()> {
    if iters == 0 {
        bail!("--iters must be at least 1");
    }
    let parse = |s: &str| -> anyhow::Result<(usize, usize)> {
        let (m, n) = s
            .split_once(['x', 'X'])
            .ok_or_else(|| anyhow::anyhow!("--shapes: {s:?} is not MxN"))?;
        let (m, n): (usize, usize) = (
            m.trim()
                .parse()
                .with_context(|| format!("--shapes: {s:?}"))?,
            n.trim()
                .parse()
                .with_context(|| format!("--shapes: {s:?}"))?,
        );
        if m == 0 || n == 0 {
            bail!("--shapes: {s:?} has a zero dimension");
        }
        Ok((m, n))
    };
    let shapes = shapes
        .iter()
        .map(|s| parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let devices = run.devices()?;
    let json = run.json;
    let mut rows = Vec::new();
    for &(m, n) in &shapes {
        for c in &devices {
            let t = nq_host::bench::admm(m, n, bpw, iters, c)?;
            if !json {
                println!(
                    "{:>6}x{:<6} rank {:>5}  {:<28} {:>3} iters {:>9.3} s {:>9.1} GFLOP/s  error {:.5}",
                    t.m, t.n, t.rank, t.device, t.iters, t.seconds, t.gflops, t.rel_error
                );
            }
            rows.push(t);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    cli::set_threads(args.threads)?;
    let (compute, device) = use_device(args.device, args.gpu_math)?;
    if args.ctx < 2 {
        bail!("--ctx must be at least 2");
    }
    if args.windows == Some(0) {
        bail!("--windows must be at least 1");
    }
    let text = nq_host::tokenizer::read_text_for_eval(&args.text)
        .with_context(|| format!("cannot read {}", args.text.display()))?;
    use nq_host::backend::{Compute, GpuModel};
    use nq_host::source::SourceKind;
    let kind = nq_host::source::detect(&args.model)?;
    // A blob evaluated on a GPU is never expanded to f32 on the host: its
    // packed layers go to the device as they are.
    let (weights, blob, config, shipped) = match (&compute, kind) {
        (Compute::Cuda(_), SourceKind::Blob) => {
            let (bytes, config, tok) = nq_host::source::load_blob_packed(&args.model)?;
            (None, Some(bytes), config, tok)
        }
        _ => {
            let l = nq_host::source::load(&args.model)?;
            let config = l.weights.config;
            (Some(l.weights), None, config, l.tokenizer)
        }
    };
    let tokenizer =
        nq_host::source::choose_tokenizer(&args.model, shipped, args.tokenizer.as_deref())?;
    if tokenizer.vocab_size() > config.vocab_size as usize {
        bail!(
            "tokenizer has {} tokens but the model's vocabulary is {}",
            tokenizer.vocab_size(),
            config.vocab_size
        );
    }
    let ids = tokenizer
        .encode(&text)
        .with_context(|| format!("cannot tokenize {}", args.text.display()))?;
    let available = ids.len() / args.ctx;
    let total = args.windows.map_or(available, |n| n.min(available));
    let bar = progress_bar(total as u64, args.json);
    let progress = |done: usize, _| bar.set_position(done as u64);
    let vocab = config.vocab_size as usize;
    // On a GPU the whole forward pass stays on the device.
    let gpu_model = match (&compute, &weights, &blob) {
        (Compute::Cuda(gpu), _, Some(bytes)) => {
            let view = nq_core::Blob::parse(bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", args.model.display()))?;
            Some(GpuModel::from_blob(&view, gpu.clone())?)
        }
        (Compute::Cuda(gpu), Some(w), None) => Some(GpuModel::new(w, gpu.clone())?),
        _ => None,
    };
    let r = match (&gpu_model, &weights) {
        (Some(model), _) => nq_host::eval::evaluate_with(
            |window| model.forward(window),
            vocab,
            &ids,
            args.ctx,
            args.windows,
            progress,
        ),
        (None, Some(w)) => nq_host::eval::evaluate(w, &ids, args.ctx, args.windows, progress),
        (None, None) => unreachable!("a CPU run always loads the weights"),
    }
    .with_context(|| format!("cannot evaluate on {}", args.text.display()))?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "model {} ({}), text {}",
            args.model.display(),
            kind.name(),
            args.text.display()
        );
        println!(
            "tokens {}, ctx {}, windows {} of {}, predictions {}",
            r.tokens, r.ctx, r.windows, r.windows_available, r.predictions
        );
        println!("device     {device}");
        println!("perplexity {:.4}", r.ppl);
        println!("top-1      {:.4}", r.top1);
        println!(
            "speed      {:.1} tokens/s ({:.1} s, {} threads)",
            r.tokens_per_second,
            r.seconds,
            rayon::current_num_threads()
        );
    }
    Ok(())
}

/// A progress bar on stderr, hidden for JSON output or when stderr is not a
/// terminal (indicatif does the latter itself).
fn progress_bar(len: u64, hidden: bool) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} windows, {elapsed} elapsed, eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_prefix("eval");
    bar
}

fn convert(args: ConvertArgs) -> anyhow::Result<()> {
    let loaded = nq_host::source::load(&args.input)?;
    if args.out.is_file() {
        bail!("{} exists and is a file", args.out.display());
    }
    nq_host::model::hf::save_hf_dir(&loaded.weights, &args.out, args.dtype)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    if let Some(t) = &loaded.tokenizer {
        let path = args.out.join("tokenizer.json");
        let tmp = args.out.join(".tokenizer.json.tmp");
        t.to_tokenizer_json(&tmp)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let c = &loaded.weights.config;
    println!(
        "wrote {} ({} layers, d_model {}, vocab {}, {:?}{})",
        args.out.display(),
        c.n_layers,
        c.d_model,
        c.vocab_size,
        args.dtype,
        if loaded.tokenizer.is_some() {
            ", with tokenizer.json"
        } else {
            ""
        }
    );
    Ok(())
}

fn inspect(path: &PathBuf, verify: bool) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the map is read-only and lives until this function returns.
    // Another process truncating the file while we read it could fault; that
    // is the usual caveat of every mmap-based reader and not a memory-safety
    // issue inside this process's own code.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("cannot map {}", path.display()))?;
    let view = nq_core::Blob::parse(&map)
        .with_context(|| format!("{} is not a valid blob", path.display()))?;
    let report = nq_host::inspect::Report::new(view, verify);
    print!("{report}");
    if let Some(Err(e)) = report.crc() {
        bail!("{}: {e}", path.display());
    }
    Ok(())
}

fn print_footprint(path: &PathBuf, ctx: usize, kv: nq_core::KvDtype) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let view = nq_core::Blob::parse(&bytes)
        .with_context(|| format!("{} is not a valid blob", path.display()))?;
    print!("{}", nq_host::inspect::Footprint::new(&view, ctx, kv));
    Ok(())
}

// The forward pass allocates and frees activation buffers of megabytes per
// layer; glibc returns those to the OS each time (mmap/munmap), so every
// layer paid page faults. mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
