//! The `nq-host` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

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
    },
    /// List the CUDA devices nq-host can use (or say why there are none).
    Devices,
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
        Command::Inspect { blob, no_verify } => inspect(&blob, !no_verify),
        Command::Devices => {
            println!("{}", nq_cuda::probe().describe());
            Ok(())
        }
    }
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
