//! Shared by the integration tests that need the EVAL.md assets.

use std::path::PathBuf;

#[allow(dead_code)]
pub mod equivalence;

/// CUDA device 0 as a backend, or `None` with a visible SKIP line when no
/// GPU is usable (see `nq_cuda::gpu_for_tests`).
#[allow(dead_code)]
pub fn cuda_backend() -> Option<nq_host::backend::CudaBackend> {
    nq_cuda::gpu_for_tests()
        .then(|| nq_host::backend::CudaBackend::open(0).expect("a GPU the probe reports must open"))
}

/// NanoQuant at 1.0 bpw with `iters` ADMM iterations, ranks rounded to 2
/// (tiny test models), on the CPU.
#[allow(dead_code)]
pub fn nanoquant_opts(iters: usize) -> nq_host::quant::pipeline::QuantizeOptions {
    use nq_host::quant::factor::{AdmmOptions, Method};
    nq_host::quant::pipeline::QuantizeOptions {
        method: Method::NanoQuant,
        bpw: 1.0,
        rank_multiple: 2,
        admm: AdmmOptions {
            iters,
            ..AdmmOptions::default()
        },
        compute: nq_host::backend::Compute::Cpu,
    }
}

/// The repository root.
#[allow(dead_code)]
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `assets/NAME` if it exists. Without it the caller skips, saying so on
/// stderr — unless `NQ_REQUIRE_ASSETS` is set (scripts/test.sh sets it after
/// fetching), where a missing asset fails the test instead of hiding it.
#[allow(dead_code)]
pub fn asset(name: &str) -> Option<PathBuf> {
    let p = workspace().join("assets").join(name);
    if p.exists() {
        return Some(p);
    }
    if std::env::var_os("NQ_REQUIRE_ASSETS").is_some_and(|v| !v.is_empty() && v != "0") {
        panic!(
            "{} is missing and NQ_REQUIRE_ASSETS is set (run scripts/fetch-assets.sh)",
            p.display()
        );
    }
    eprintln!(
        "SKIP: {} not found (run scripts/fetch-assets.sh)",
        p.display()
    );
    None
}

/// GPT-2's byte → printable character table (the byte-level BPE alphabet).
#[allow(dead_code)]
pub fn gpt2_byte_chars() -> Vec<char> {
    let mut bytes: Vec<u32> = (0x21..=0x7E)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = bytes.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec!['\0'; 256];
    for (&b, &c) in bytes.iter().zip(&chars) {
        out[b as usize] = char::from_u32(c).unwrap();
    }
    out
}
