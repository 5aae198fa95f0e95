//! Every kernel source compiles with NVRTC to PTX for sm_80 and sm_90, and
//! the PTX assembles to SASS with ptxas — on a machine without a GPU.
//!
//! Needs libnvrtc (wheel `nvidia-cuda-nvrtc-cu12`, its `lib/` on
//! `LD_LIBRARY_PATH`) and ptxas (wheel `nvidia-cuda-nvcc-cu12`, found on
//! `PATH` or named by `NQ_PTXAS`); `scripts/test.sh` fetches both. Without
//! them the tests say SKIP, unless `NQ_REQUIRE_CUDA_TOOLS=1` (set by the
//! test script), which makes a missing tool a failure.

use std::path::PathBuf;
use std::process::Command;

use nq_cuda::{kernels, nvrtc};

const ARCHS: [u32; 2] = [80, 90];

fn required() -> bool {
    std::env::var_os("NQ_REQUIRE_CUDA_TOOLS").is_some_and(|v| v == "1")
}

fn skip(what: &str) -> bool {
    assert!(!required(), "{what} not found and NQ_REQUIRE_CUDA_TOOLS=1");
    eprintln!("SKIP: {what} not found");
    true
}

fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NQ_PTXAS") {
        return Some(PathBuf::from(p));
    }
    Command::new("ptxas")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("ptxas"))
}

#[test]
fn kernels_compile_to_ptx() {
    if !nvrtc::available() && skip("libnvrtc") {
        return;
    }
    for k in kernels::ALL {
        for arch in ARCHS {
            let ptx = nvrtc::compile(k.file, k.source, arch)
                .unwrap_or_else(|e| panic!("{} sm_{arch}: {e}", k.file));
            assert!(
                ptx.contains(&format!(".target sm_{arch}")),
                "{}: PTX not for sm_{arch}",
                k.file
            );
            for e in k.entry_points {
                assert!(
                    ptx.contains(&format!(".entry {e}(")),
                    "{} sm_{arch}: entry {e} missing from the PTX",
                    k.file
                );
            }
        }
    }
}

#[test]
fn ptx_assembles_to_sass() {
    if !nvrtc::available() && skip("libnvrtc") {
        return;
    }
    let Some(ptxas) = ptxas() else {
        skip("ptxas");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for k in kernels::ALL {
        for arch in ARCHS {
            let ptx = nvrtc::compile(k.file, k.source, arch).unwrap();
            let src = dir.path().join(format!("{}.sm_{arch}.ptx", k.file));
            let cubin = dir.path().join(format!("{}.sm_{arch}.cubin", k.file));
            std::fs::write(&src, ptx).unwrap();
            let out = Command::new(&ptxas)
                .arg(format!("-arch=sm_{arch}"))
                .arg("-o")
                .arg(&cubin)
                .arg(&src)
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", ptxas.display()));
            assert!(
                out.status.success(),
                "ptxas sm_{arch} {}: {}",
                k.file,
                String::from_utf8_lossy(&out.stderr)
            );
            // An ELF with code in it.
            let bin = std::fs::read(&cubin).unwrap();
            assert_eq!(&bin[..4], b"\x7fELF", "{}", k.file);
            assert!(bin.len() > 1024, "{}: cubin of {} bytes", k.file, bin.len());
        }
    }
}

/// A source with an error is reported with NVRTC's log, not a panic.
#[test]
fn compile_errors_are_reported() {
    if !nvrtc::available() && skip("libnvrtc") {
        return;
    }
    let e = nvrtc::compile(
        "bad.cu",
        "extern \"C\" __global__ void f() { undeclared(); }",
        90,
    )
    .unwrap_err();
    assert!(e.to_string().contains("undeclared"), "{e}");
}

/// The architecture choice: the device's own where NVRTC has it, the
/// newest older one otherwise, an error below the oldest.
#[test]
fn arch_choice_follows_what_nvrtc_supports() {
    if !nvrtc::available() && skip("libnvrtc") {
        return;
    }
    let archs = nvrtc::supported_archs().unwrap();
    assert!(archs.contains(&80) && archs.contains(&90), "{archs:?}");
    assert_eq!(nvrtc::arch_for(90).unwrap(), 90);
    assert_eq!(nvrtc::arch_for(91).unwrap(), 90);
    let newest = *archs.last().unwrap();
    assert_eq!(nvrtc::arch_for(newest + 100).unwrap(), newest);
    assert!(nvrtc::arch_for(archs[0] - 1).is_err());
}
