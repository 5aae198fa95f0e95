//! Launch geometry of every kernel: one function per launch shape, used by
//! [`crate::Gpu`] and by the host emulation of the kernels (nq-cuda-emu),
//! so the emulated tests run the kernels with the launches the GPU gets.

pub use cudarc::driver::LaunchConfig;

/// Threads per block of every kernel: `NQ_BLOCK` in `kernels/common.cuh`
/// (a power of two; a test checks they agree).
pub const BLOCK: u32 = 256;

/// The longest context [`attention`] accepts: its scores live in 44 KB of
/// dynamic shared memory, next to 3 KB of reduction space.
pub const ATTENTION_MAX_T: usize = 44 * 1024 / 4;

/// One block per row.
pub fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One thread per element (at least one block).
pub fn per_elem(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(BLOCK).max(1), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block.
pub fn single_block() -> LaunchConfig {
    LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Grid-stride kernels: enough blocks to fill the device, capped.
pub fn grid_stride(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `nq_attention` (and its backward): one block per (query, head), `t`
/// f32 scores of dynamic shared memory per score row (`rows` of them).
pub fn attention(t: usize, heads: usize, rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((t * heads) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: (rows * t * 4) as u32,
    }
}

/// `nq_sign_matmul`: one thread per (row, token).
pub fn sign_matmul(rows: usize, t: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(BLOCK), t as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}
