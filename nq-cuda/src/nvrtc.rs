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

/// The virtual architectures (`compute_XY` as `XY`) this libnvrtc can
/// compile for, ascending.
pub fn supported_archs() -> Result<Vec<u32>, CudaError> {
    use cudarc::nvrtc::sys;
    if !available() {
        return Err(CudaError::new("libnvrtc not found"));
    }
    let query = || -> Result<Vec<u32>, CudaError> {
        let mut n = 0i32;
        // SAFETY: writes one int.
        let r = unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) };
        if r != sys::nvrtcResult::NVRTC_SUCCESS || n < 0 {
            return Err(CudaError::new(format!("nvrtcGetNumSupportedArchs: {r:?}")));
        }
        let mut archs = vec![0i32; n as usize];
        // SAFETY: `archs` holds the `n` ints NVRTC reported.
        let r = unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) };
        if r != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(CudaError::new(format!("nvrtcGetSupportedArchs: {r:?}")));
        }
        let mut out: Vec<u32> = archs
            .into_iter()
            .filter_map(|a| u32::try_from(a).ok())
            .collect();
        out.sort_unstable();
        Ok(out)
    };
    catch_unwind(AssertUnwindSafe(query))
        .unwrap_or_else(|_| Err(CudaError::new("libnvrtc could not be used")))
}

/// The architecture to compile for on a device of compute capability
/// `device` (e.g. 90): the highest one this NVRTC supports that the device
/// can run (PTX for an older architecture is JIT-compiled by the driver for
/// a newer GPU).
pub fn arch_for(device: u32) -> Result<u32, CudaError> {
    let archs = supported_archs()?;
    archs
        .iter()
        .copied()
        .filter(|&a| a <= device)
        .max()
        .ok_or_else(|| {
            CudaError::new(format!(
                "this NVRTC compiles for sm_{}..sm_{}, not for the device's sm_{device}",
                archs.first().copied().unwrap_or(0),
                archs.last().copied().unwrap_or(0)
            ))
        })
}
