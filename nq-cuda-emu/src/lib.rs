//! nq-cuda's kernel sources, run on the CPU.
//!
//! The `.cu` files under `nq-cuda/kernels/` are compiled by the host C++
//! compiler behind `src/cuda_emu.h`, which supplies the little of CUDA C
//! they use: thread and block indices, `__syncthreads()`, `__shared__`
//! memory, atomics. Each CUDA thread is a fiber; a launch runs its blocks
//! one after another, and each block's threads in lock-step from barrier to
//! barrier (see the header). [`launch`] takes nq-cuda's own launch shapes
//! ([`nq_cuda::geometry`]), so the kernels run with the geometry a GPU gets.
//!
//! What this checks, on machines without a GPU: each kernel's indexing,
//! reductions, barriers and arithmetic against the CPU code and independent
//! references (this crate's tests, and [`EmuBackend`] through nq-host's
//! backend conformance tests and an ADMM run). What it cannot check: the
//! GPU's own behaviour (warp scheduling, memory coherence beyond what
//! barriers give, fused multiply-adds, which the emulation never forms),
//! cuBLAS and cuSOLVER (stood in for by CPU code here), and the Rust launch
//! code in `nq_cuda::Gpu`, whose argument lists this crate mirrors rather
//! than runs.
#![deny(missing_docs)]

use std::ffi::c_void;

use nq_cuda::geometry::LaunchConfig;

mod backend;
pub mod ffi;
pub mod ops;

pub use backend::EmuBackend;

/// A pointer argument of an emulated kernel. Kernels take raw pointers; this
/// wrapper lets a launch body (called once per emulated thread) capture
/// them.
#[repr(transparent)]
#[derive(Debug)]
pub struct P<T>(pub *mut T);

impl<T> Clone for P<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for P<T> {}

// SAFETY: the emulation runs every thread of a launch on the launching OS
// thread (fibers), so the pointer never crosses threads concurrently.
unsafe impl<T> Send for P<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for P<T> {}

impl<T> P<T> {
    /// A kernel's output (or in-out) buffer.
    pub fn of(v: &mut [T]) -> Self {
        Self(v.as_mut_ptr())
    }

    /// A kernel's input buffer (`const T*` on the CUDA side; kernels never
    /// write through it).
    pub fn c(v: &[T]) -> Self {
        Self(v.as_ptr().cast_mut())
    }
}

extern "C" {
    fn nq_emu_launch(
        grid: *const u32,
        block: *const u32,
        shared_bytes: usize,
        body: extern "C" fn(*const c_void),
        ctx: *const c_void,
    ) -> i32;
}

/// Runs `body` once per thread of the launch `cfg`. `body` calls one kernel
/// of [`ffi`]; the thread and block indices it sees are the emulated ones.
///
/// # Safety
///
/// The kernel's pointer arguments must be valid for everything the kernel
/// reads and writes given its shape arguments, exactly as on a GPU.
pub unsafe fn launch<F: Fn() + Sync>(cfg: LaunchConfig, body: F) {
    extern "C" fn trampoline<F: Fn()>(ctx: *const c_void) {
        // SAFETY: `ctx` is the `&F` passed below, alive for the launch.
        let f = unsafe { &*ctx.cast::<F>() };
        f();
    }
    let grid = [cfg.grid_dim.0, cfg.grid_dim.1, cfg.grid_dim.2];
    let block = [cfg.block_dim.0, cfg.block_dim.1, cfg.block_dim.2];
    // SAFETY: the launcher only reads the two 3-element arrays and calls
    // `trampoline` with `ctx` while `body` is borrowed here.
    let rc = unsafe {
        nq_emu_launch(
            grid.as_ptr(),
            block.as_ptr(),
            cfg.shared_mem_bytes as usize,
            trampoline::<F>,
            (&body as *const F).cast(),
        )
    };
    assert_eq!(
        rc, 0,
        "emulated launch failed (-1: no fibers, -2: block over 1024 threads)"
    );
}
