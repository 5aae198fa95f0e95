//! NVRTC: CUDA C → PTX at run time, without the CUDA toolkit installed
//! (the library can come from the `nvidia-cuda-nvrtc-cu12` wheel, found
//! through `LD_LIBRARY_PATH`).

use std::panic::{catch_unwind, AssertUnwindSafe};

use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use crate::CudaError;

/// File names libnvrtc goes by on this OS (cudarc's loader tries these
/// and more; checking first keeps cudarc from panicking when none exists).
fn library_names() -> &'static [&'static str] {
    if cfg!(windows) {
        &["nvrtc64_120_0.dll", "nvrtc64_12.dll"]
    } else {
        &["libnvrtc.so.12", "libnvrtc.so", "libnvrtc.so.13"]
    }
}

/// Whether libnvrtc can be loaded.
pub fn available() -> bool {
    library_names().iter().any(|name| {
        // SAFETY: loading libnvrtc runs its initialisers only, which cudarc
        // would do next; the handle is dropped at once.
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

/// Compiles `source` to PTX for `sm_{arch}` (e.g. 90). Errors carry NVRTC's
/// log.
pub fn compile(file: &str, source: &str, arch: u32) -> Result<String, CudaError> {
    if !available() {
        return Err(CudaError::new(
            "libnvrtc not found (install the nvidia-cuda-nvrtc-cu12 wheel and put its lib/ on LD_LIBRARY_PATH)",
        ));
    }
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture=compute_{arch}")],
        name: Some(file.to_string()),
        ..Default::default()
    };
    let compiled = catch_unwind(AssertUnwindSafe(|| compile_ptx_with_opts(source, opts)))
        .map_err(|_| CudaError::new("libnvrtc could not be used"))?;
    let ptx = compiled.map_err(|e| CudaError::new(format!("{file}: NVRTC: {e:?}")))?;
    Ok(ptx.to_src())
}
