//! `nq-host quantize`: checkpoint → statistics → per-layer quantization →
//! blob, with progress bars, a final table and a JSON report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};
use nq_host::backend::{select_with, DeviceChoice, GpuMath};
use nq_host::quant::calib::{sample_windows, tokenize_files, CalibOptions};
use nq_host::quant::export::{build_blob, EmbedFormat};
use nq_host::quant::factor::{AdmmOptions, Method};
use nq_host::quant::kd::{KdOptions, KdReport};
use nq_host::quant::kd_device::model_reconstruct_with;
use nq_host::quant::pipeline::{quantize_linears, LayerReport, QuantizeOptions};
use nq_host::quant::recon::{output_aligned, reconstruct, BlockReport, ReconOptions};
use nq_host::quant::stats::{ModelStats, StatsOptions};
use nq_host::quant::stats_device::collect_with;
use nq_host::quant::workdir::WorkDir;
use serde::Serialize;

/// Recipe sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Preset {
    /// Small enough for a laptop CPU: minutes for a 135M model.
    Cpu,
    /// The paper's recipe: 128 × 2048 calibration tokens, 400 ADMM iterations.
    Paper,
}

impl Preset {
    fn calib_windows(self) -> usize {
        match self {
            Preset::Cpu => 32,
            Preset::Paper => 128,
        }
    }
    fn calib_len(self) -> usize {
        match self {
            Preset::Cpu => 512,
            Preset::Paper => 2048,
        }
    }
    fn recon_windows(self) -> usize {
        match self {
            Preset::Cpu => 8,
            Preset::Paper => 128,
        }
    }
    fn epochs(self) -> usize {
        match self {
            Preset::Cpu => 1,
            Preset::Paper => 8,
        }
    }
    fn admm_iters(self) -> usize {
        match self {
            Preset::Cpu => 100,
            Preset::Paper => 400,
        }
    }
}

/// How much of the NanoQuant recipe runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recipe {
    /// ADMM initialization only, every layer independently.
    AdmmOnly,
    /// ADMM plus block reconstruction (error compensation and
    /// straight-through training), block by block.
    Full,
}

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// GGUF file or Hugging Face directory.
    #[arg(long)]
    model: PathBuf,
    /// Target bits per weight of the decoder linears (scales counted).
    #[arg(long)]
    bpw: f64,
    /// Calibration text file(s); never the evaluation text.
    #[arg(long, num_args = 1.., required = true)]
    calib: Vec<PathBuf>,
    /// Output blob (.nqb); written atomically.
    #[arg(long)]
    out: PathBuf,
    /// Quantization method.
    #[arg(long, value_enum, default_value_t = Method::NanoQuant)]
    method: Method,
    /// Recipe size (calibration windows and length, ADMM iterations).
    #[arg(long, value_enum, default_value_t = Preset::Cpu)]
    preset: Preset,
    /// Calibration windows (default: from the preset).
    #[arg(long)]
    calib_windows: Option<usize>,
    /// Calibration window length in tokens (default: from the preset).
    #[arg(long)]
    calib_len: Option<usize>,
    /// ADMM iterations (default: from the preset).
    #[arg(long)]
    admm_iters: Option<usize>,
    /// ADMM only, or ADMM + block reconstruction (nanoquant).
    #[arg(long, value_enum, default_value_t = Recipe::Full)]
    recipe: Recipe,
    /// Calibration windows used for block reconstruction (the first N;
    /// default: from the preset).
    #[arg(long)]
    recon_windows: Option<usize>,
    /// Error-compensation epochs per linear (default: from the preset).
    #[arg(long)]
    comp_epochs: Option<usize>,
    /// Straight-through epochs per linear (default: from the preset).
    #[arg(long)]
    ste_epochs: Option<usize>,
    /// Peak AdamW learning rate of error compensation.
    #[arg(long, default_value_t = 1e-3)]
    comp_lr: f32,
    /// Peak AdamW learning rate of the sign latents.
    #[arg(long, default_value_t = 3e-3)]
    latent_lr: f32,
    /// Peak AdamW learning rate of the scales.
    #[arg(long, default_value_t = 3e-3)]
    scale_lr: f32,
    /// Model-reconstruction (KD of the scales) epochs (default: from the
    /// preset; 0 skips it).
    #[arg(long)]
    kd_epochs: Option<usize>,
    /// Peak AdamW learning rate of model reconstruction.
    #[arg(long, default_value_t = 1e-3)]
    kd_lr: f32,
    /// Teacher tokens kept per position for model reconstruction.
    #[arg(long, default_value_t = 64)]
    kd_top_k: usize,
    /// Ranks are rounded down to a multiple of this.
    #[arg(long, default_value_t = 32)]
    rank_multiple: usize,
    /// Shrinkage γ of the statistics toward their mean.
    #[arg(long, default_value_t = 0.2)]
    shrinkage: f32,
    /// Storage of the token embedding (and an untied head).
    #[arg(long, value_enum, default_value_t = EmbedFormat::F16)]
    embed: EmbedFormat,
    /// Do not store tokenizer.json (nor the tokenizer.tokens table) in the blob.
    #[arg(long)]
    no_tokenizer: bool,
    /// Compute device: auto (the GPU when one is usable, else the CPU), cpu,
    /// or cuda (an error without a GPU). On a GPU, ADMM runs there whole and
    /// the large products of statistics, reconstruction and KD go there too.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Arithmetic of the GPU's products: f32 (the CPU's results to
    /// rounding), or tensor cores, faster: tf32 (~1e-3 relative product
    /// error) or bf16 (~4e-3). Ignored on the CPU.
    #[arg(long, value_enum, default_value_t = GpuMath::F32)]
    gpu_math: GpuMath,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of calibration sampling and ADMM initialization.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Statistics cache: reused when it was made from the same model,
    /// calibration and options, else computed and written there.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Checkpoint directory: finished blocks are saved here, and rerunning
    /// the same command resumes from them (same result, byte for byte).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Write a JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    model: String,
    method: Method,
    preset: Preset,
    recipe: &'static str,
    recon: Option<ReconOptions>,
    recon_windows: usize,
    blocks: &'a [BlockReport],
    kd: Option<(KdOptions, KdReport)>,
    target_bpw: f64,
    calib_files: Vec<String>,
    calib_windows: usize,
    calib_len: usize,
    admm_iters: usize,
    rank_multiple: usize,
    shrinkage: f32,
    seed: u64,
    embed: EmbedFormat,
    threads: usize,
    /// Where ADMM ran (`cpu` or `cuda:N name`).
    device: String,
    calib_loss: f64,
    stats_cached: bool,
    stats_seconds: f64,
    quantize_seconds: f64,
    total_seconds: f64,
    peak_rss_bytes: Option<u64>,
    decoder_linear_bpw: f64,
    mean_weighted_rel_error: f64,
    file_bytes: usize,
    file_bpw: f64,
    layers: &'a [LayerReport],
}

/// Fails early, before minutes of work, when `out` cannot be written.
fn check_writable(out: &Path) -> anyhow::Result<()> {
    if out.is_dir() {
        bail!("{} is a directory", out.display());
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write to {}", dir.display()))?;
    Ok(())
}

fn bar(len: u64, quiet: bool, what: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    b.set_prefix(what.to_string());
    b
}

pub fn run(a: QuantizeArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    if !a.bpw.is_finite() || a.bpw <= 0.0 || a.bpw >= 16.0 {
        bail!("--bpw must be in (0, 16), got {}", a.bpw);
    }
    if a.rank_multiple == 0 {
        bail!("--rank-multiple must be at least 1 (ranks below 1 are impossible)");
    }
    if !(0.0..=1.0).contains(&a.shrinkage) {
        bail!("--shrinkage must be in [0, 1], got {}", a.shrinkage);
    }
    let admm_iters = a.admm_iters.unwrap_or(a.preset.admm_iters());
    if admm_iters == 0 && a.method == Method::NanoQuant {
        bail!("--admm-iters must be at least 1");
    }
    let (compute, notice) =
        select_with(a.device, a.gpu_math).map_err(|e| anyhow!("--device: {e}"))?;
    compute.install_offload();
    super::set_threads(a.threads)?;
    check_writable(&a.out)?;
    for f in &a.calib {
        if !f.is_file() {
            bail!("calibration text {} not found", f.display());
        }
    }

    let loaded = nq_host::source::load(&a.model)?;
    let w = &loaded.weights;
    let Some(tokenizer) = &loaded.tokenizer else {
        bail!("{} has no tokenizer (tokenizer.json)", a.model.display());
    };
    let calib = CalibOptions {
        windows: a.calib_windows.unwrap_or(a.preset.calib_windows()),
        len: a.calib_len.unwrap_or(a.preset.calib_len()),
        seed: a.seed,
    };
    let ids = tokenize_files(tokenizer, &a.calib)?;
    let windows = sample_windows(&ids, &calib)?;

    // Inputs are checked: from here on the run computes. (The device line
    // waits until now so that a bad input still gets a one-line error.)
    if !a.quiet {
        match notice {
            Some(n) => eprintln!("note: {n}"),
            None => eprintln!("device: {}", compute.describe()),
        }
    }

    // Statistics.
    let t0 = Instant::now();
    let stats_opts = StatsOptions {
        shrinkage: a.shrinkage,
        ..StatsOptions::default()
    };
    let key = format!(
        "model={} calib={:?} windows={} len={} seed={} opts={:?}",
        std::fs::canonicalize(&a.model)?.display(),
        a.calib,
        calib.windows,
        calib.len,
        calib.seed,
        stats_opts
    );
    let cached = match &a.stats {
        Some(p) => ModelStats::load(p, &key)?,
        None => None,
    };
    let from_cache = cached.is_some();
    let stats = match cached {
        Some(s) => s,
        None => {
            let pb = bar(windows.len() as u64, a.quiet, "statistics");
            pb.set_message("windows");
            let s = collect_with(&compute, w, &windows, &stats_opts, |done, _| {
                pb.set_position(done as u64)
            })?;
            pb.finish_and_clear();
            if let Some(p) = &a.stats {
                s.save(p, &key)
                    .with_context(|| format!("cannot write {}", p.display()))?;
            }
            s
        }
    };
    let stats_seconds = t0.elapsed().as_secs_f64();
    if !a.quiet {
        eprintln!(
            "statistics{}: {} windows × {} tokens, calibration loss {:.4}, {:.1} s",
            if from_cache { " (cached)" } else { "" },
            windows.len(),
            calib.len,
            stats.mean_loss,
            stats_seconds
        );
    }

    // Layers.
    let t1 = Instant::now();
    let n_linears = w.layers.len() * 7;
    let pb = bar(n_linears as u64, a.quiet, "quantize");
    let opts = QuantizeOptions {
        method: a.method,
        bpw: a.bpw,
        rank_multiple: a.rank_multiple,
        admm: AdmmOptions {
            iters: admm_iters,
            seed: a.seed,
            ..AdmmOptions::default()
        },
        compute,
    };
    let full = a.recipe == Recipe::Full && a.method == Method::NanoQuant;
    let recon = ReconOptions {
        comp_epochs: a.comp_epochs.unwrap_or(a.preset.epochs()),
        ste_epochs: a.ste_epochs.unwrap_or(a.preset.epochs()),
        comp_lr: a.comp_lr,
        latent_lr: a.latent_lr,
        scale_lr: a.scale_lr,
        weight_decay: 0.0,
    };
    let recon_windows = a
        .recon_windows
        .unwrap_or(a.preset.recon_windows())
        .min(windows.len());
    if full && recon_windows == 0 {
        bail!("--recon-windows must be at least 1");
    }
    if !a.quiet {
        eprintln!(
            "settings: method {:?}, recipe {}, preset {:?}, {} bpw (rank multiple {}), \
             calibration {} × {} tokens, ADMM {} iterations{}",
            a.method,
            if full { "full" } else { "admm-only" },
            a.preset,
            a.bpw,
            a.rank_multiple,
            calib.windows,
            calib.len,
            admm_iters,
            if full {
                format!(
                    ", reconstruction on {} windows: {} + {} epochs, lr {:e}/{:e}/{:e}",
                    recon_windows,
                    recon.comp_epochs,
                    recon.ste_epochs,
                    recon.comp_lr,
                    recon.latent_lr,
                    recon.scale_lr
                )
            } else {
                String::new()
            }
        );
    }
    let (mut q, blocks) = if full {
        let bb = bar(w.layers.len() as u64, a.quiet, "blocks");
        let work_dir = match &a.work_dir {
            Some(dir) => Some(WorkDir::open(
                dir,
                &format!(
                    "{key} bpw={} multiple={} admm={:?} recon={recon:?} windows={recon_windows}",
                    a.bpw, a.rank_multiple, opts.admm
                ),
                w.config,
            )?),
            None => None,
        };
        let (q, blocks) = reconstruct(
            w,
            &stats,
            &windows[..recon_windows],
            &opts,
            &recon,
            &|r| {
                pb.set_message(r.name.clone());
                pb.inc(1);
            },
            work_dir.as_ref(),
            |br| {
                bb.set_message(format!(
                    "block {} output error {:.4}",
                    br.block, br.rel_output_error
                ));
                bb.inc(1);
            },
        )?;
        bb.finish_and_clear();
        (q, blocks)
    } else if a.method == Method::ArbOa {
        let bb = bar(w.layers.len() as u64, a.quiet, "blocks");
        let (q, blocks) = output_aligned(
            w,
            &stats,
            &windows[..recon_windows.max(1)],
            &opts,
            &|r| {
                pb.set_message(r.name.clone());
                pb.inc(1);
            },
            |br| {
                bb.set_message(format!(
                    "block {} output error {:.4}",
                    br.block, br.rel_output_error
                ));
                bb.inc(1);
            },
        )?;
        bb.finish_and_clear();
        (q, blocks)
    } else {
        let q = quantize_linears(w, Some(&stats), &opts, |r| {
            pb.set_message(r.name.clone());
            pb.inc(1);
        })?;
        (q, Vec::new())
    };
    pb.finish_and_clear();
    let kd_opts = KdOptions {
        epochs: a.kd_epochs.unwrap_or(a.preset.epochs()),
        lr: a.kd_lr,
        top_k: a.kd_top_k,
    };
    let kd = if full && kd_opts.epochs > 0 {
        let steps = kd_opts.epochs * recon_windows;
        let kb = bar(steps as u64, a.quiet, "model KD");
        let r = model_reconstruct_with(
            &opts.compute,
            w,
            &mut q,
            &windows[..recon_windows],
            &kd_opts,
            |s, _| kb.set_position(s as u64),
        )?;
        kb.finish_and_clear();
        if !a.quiet {
            eprintln!(
                "model reconstruction: loss per epoch {:?}, {:.1} s",
                r.loss_per_epoch, r.seconds
            );
        }
        Some(r)
    } else {
        None
    };
    let quantize_seconds = t1.elapsed().as_secs_f64();

    let (tokenizer_json, tokens) = if a.no_tokenizer {
        (None, None)
    } else {
        (
            Some(tokenizer.to_json_string()?.into_bytes()),
            Some(nq_host::quant::token_table::token_table(tokenizer)),
        )
    };
    let builder = build_blob(w, q.payloads, a.embed, tokenizer_json, tokens)?;
    let bytes = builder.to_bytes()?;
    nq_host::write_atomic(&a.out, &bytes)
        .with_context(|| format!("cannot write {}", a.out.display()))?;

    let (bits, weights) = q.reports.iter().fold((0u64, 0u64), |(b, n), r| {
        (b + r.bits, n + (r.m * r.n) as u64)
    });
    let n_params = w.n_params() as f64;
    let mean_err =
        q.reports.iter().map(|r| r.weighted_rel_error).sum::<f64>() / q.reports.len() as f64;
    print_table(&q.reports);
    let report = Report {
        model: a.model.display().to_string(),
        method: a.method,
        preset: a.preset,
        recipe: if full {
            "full"
        } else if a.method == Method::ArbOa {
            "output-aligned"
        } else {
            "admm-only"
        },
        recon: full.then_some(recon),
        recon_windows: if full || a.method == Method::ArbOa {
            recon_windows
        } else {
            0
        },
        blocks: &blocks,
        kd: kd.map(|r| (kd_opts, r)),
        target_bpw: a.bpw,
        calib_files: a.calib.iter().map(|p| p.display().to_string()).collect(),
        calib_windows: calib.windows,
        calib_len: calib.len,
        admm_iters,
        rank_multiple: a.rank_multiple,
        shrinkage: a.shrinkage,
        seed: a.seed,
        embed: a.embed,
        threads: rayon::current_num_threads(),
        device: opts.compute.describe(),
        calib_loss: stats.mean_loss,
        stats_cached: from_cache,
        stats_seconds,
        quantize_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
        peak_rss_bytes: nq_host::bench::peak_rss_bytes(),
        decoder_linear_bpw: bits as f64 / weights as f64,
        mean_weighted_rel_error: mean_err,
        file_bytes: bytes.len(),
        file_bpw: bytes.len() as f64 * 8.0 / n_params,
        layers: &q.reports,
    };
    println!(
        "wrote {}: {} bytes ({:.3} bits per model weight), decoder linears {:.4} bpw, \
         mean weighted error {:.4}",
        a.out.display(),
        report.file_bytes,
        report.file_bpw,
        report.decoder_linear_bpw,
        mean_err
    );
    println!(
        "time: statistics {:.1} s, layers {:.1} s, total {:.1} s{}",
        stats_seconds,
        quantize_seconds,
        report.total_seconds,
        report
            .peak_rss_bytes
            .map(|b| format!(", peak RSS {:.0} MiB", b as f64 / 1048576.0))
            .unwrap_or_default()
    );
    if let Some(path) = &a.report {
        let json = serde_json::to_string_pretty(&report)?;
        nq_host::write_atomic(path, json.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn print_table(reports: &[LayerReport]) {
    println!(
        "{:<22} {:>11} {:>6} {:>7} {:>10} {:>8}",
        "layer", "shape", "rank", "bpw", "w. error", "seconds"
    );
    for r in reports {
        println!(
            "{:<22} {:>11} {:>6} {:>7.4} {:>10.4} {:>8.2}",
            r.name,
            format!("{}x{}", r.m, r.n),
            r.rank
                .map(|k| k.to_string())
                .unwrap_or_else(|| "full".into()),
            r.bpw,
            r.weighted_rel_error,
            r.seconds
        );
    }
}
