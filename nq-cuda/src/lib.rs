//! nq-cuda: nanoquant's CUDA backend, over cudarc.
//!
//! cudarc is built with dynamic loading, so this crate compiles on any
//! machine and links no CUDA library; the libraries (driver, cuBLAS,
//! cuSOLVER, NVRTC) are opened at run time.
//!
//! - [`probe`] finds usable devices and never panics: it checks that the
//!   driver library can be loaded before asking cudarc for anything (cudarc
//!   panics when a library is missing) and contains any panic cudarc raises
//!   anyway.
//! - [`Gpu`] is an opened device with the operations nq-host's quantizer
//!   backend needs (cuBLAS products, the ADMM kernels of `kernels/*.cu`
//!   compiled by NVRTC, a cuSOLVER Cholesky inverse).
//! - [`kernels`] holds the kernel sources; [`nvrtc`] compiles them;
//!   [`geometry`] gives every kernel's launch shape.
#![deny(missing_docs)]

use std::panic::{catch_unwind, AssertUnwindSafe};

pub mod geometry;
mod gpu;
pub mod kernels;
pub mod nvrtc;

pub use cudarc::driver::CudaSlice;
pub use gpu::{Buf, GemmPrecision, Gpu, HeadShape, Op, ADAM_BETA1, ADAM_BETA2, ADAM_EPS};

/// A CUDA failure, as one line for users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaError(String);

impl CudaError {
    /// An error with this message.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

impl std::fmt::Display for CudaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CudaError {}

use cudarc::driver::{result, sys};

/// One usable CUDA device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// CUDA ordinal.
    pub ordinal: usize,
    /// Marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Total device memory in bytes.
    pub total_mem: usize,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
}

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// No CUDA driver library on this machine (the usual CPU-only case).
    NoDriver,
    /// The driver loaded but no device can be used; the reason says why.
    Unusable(String),
    /// At least one device is ready.
    Ready(Vec<DeviceInfo>),
}

impl Probe {
    /// The devices found, if any.
    pub fn devices(&self) -> &[DeviceInfo] {
        match self {
            Self::Ready(d) => d,
            _ => &[],
        }
    }

    /// One line for users: what was found.
    pub fn describe(&self) -> String {
        match self {
            Self::NoDriver => "no CUDA driver library found (libcuda)".into(),
            Self::Unusable(why) => format!("CUDA driver present but unusable: {why}"),
            Self::Ready(devs) => devs
                .iter()
                .map(|d| {
                    format!(
                        "cuda:{} {} (sm_{}{}, {:.1} GiB)",
                        d.ordinal,
                        d.name,
                        d.compute_capability.0,
                        d.compute_capability.1,
                        d.total_mem as f64 / (1u64 << 30) as f64
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

/// File names the CUDA driver library goes by on this OS.
fn driver_library_names() -> &'static [&'static str] {
    if cfg!(windows) {
        &["nvcuda.dll"]
    } else if cfg!(target_os = "macos") {
        &[]
    } else {
        &["libcuda.so.1", "libcuda.so", "libcuda.so.12"]
    }
}

/// Whether the CUDA driver library can be loaded at all.
pub fn driver_library_present() -> bool {
    driver_library_names().iter().any(|name| {
        // SAFETY: loading the NVIDIA driver library runs its initialisers,
        // which is exactly what cudarc would do next; we drop it at once.
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

/// Finds usable CUDA devices. Never panics.
pub fn probe() -> Probe {
    if !driver_library_present() {
        return Probe::NoDriver;
    }
    match catch_unwind(AssertUnwindSafe(query_devices)) {
        Ok(Ok(devs)) if devs.is_empty() => Probe::Unusable("no CUDA devices".into()),
        Ok(Ok(devs)) => Probe::Ready(devs),
        Ok(Err(e)) => Probe::Unusable(e.to_string()),
        Err(_) => Probe::Unusable("the CUDA driver library could not be used".into()),
    }
}

/// For GPU tests: whether a GPU is usable. Without one it prints a visible
/// `SKIP: no CUDA GPU (…)` line and returns false — unless the environment
/// sets `NQ_REQUIRE_GPU=1` (scripts/gpu-check.sh does), where a skip would
/// hide a failure, so it panics instead.
pub fn gpu_for_tests() -> bool {
    let p = probe();
    if !p.devices().is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("NQ_REQUIRE_GPU").is_none_or(|v| v != "1"),
        "NQ_REQUIRE_GPU=1 but no GPU: {}",
        p.describe()
    );
    eprintln!("SKIP: no CUDA GPU ({})", p.describe());
    false
}

fn query_devices() -> Result<Vec<DeviceInfo>, result::DriverError> {
    result::init()?;
    let count = result::device::get_count()?;
    let mut devs = Vec::new();
    for ordinal in 0..count {
        let dev = result::device::get(ordinal)?;
        let name = result::device::get_name(dev)?;
        // SAFETY: `dev` came from `device::get` above.
        let (total_mem, major, minor) = unsafe {
            (
                result::device::total_mem(dev)?,
                result::device::get_attribute(
                    dev,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                )?,
                result::device::get_attribute(
                    dev,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                )?,
            )
        };
        devs.push(DeviceInfo {
            ordinal: ordinal as usize,
            name,
            total_mem,
            compute_capability: (major, minor),
        });
    }
    Ok(devs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_agrees_with_the_driver_library_check() {
        // Runs on every machine: without a driver it must say so (not
        // panic); with one it must list devices or say why it cannot.
        let p = probe();
        if driver_library_present() {
            assert_ne!(p, Probe::NoDriver);
            if let Probe::Ready(devs) = &p {
                assert!(devs.iter().all(|d| !d.name.is_empty() && d.total_mem > 0));
            }
        } else {
            assert_eq!(p, Probe::NoDriver);
            assert!(p.devices().is_empty());
        }
        assert!(!p.describe().is_empty());
    }
}
