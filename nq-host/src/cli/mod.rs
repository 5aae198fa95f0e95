//! Subcommands with more than a screen of logic.

pub mod bench_runtime;
pub mod generate;
pub mod quantize;

use anyhow::{bail, Context as _};

/// Sizes the global rayon pool (`None`: one thread per core).
pub fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("cannot start the thread pool")?;
    }
    Ok(())
}
