//! The dense f32 reference both benchmarks compare the binary layers with
//! (`examples/bgemm-bench` and the workspace's `benches/kernels.rs`, which
//! includes this file by path).

/// `y (batch × m) = x (batch × n) · Wᵀ` with `W` row-major `m × n`, one thread.
pub fn dense(w: &[f32], x: &[f32], y: &mut [f32], m: usize, n: usize, batch: usize) {
    assert!(w.len() >= m * n && x.len() >= batch * n && y.len() >= batch * m);
    // SAFETY: the strides describe x (batch × n, row-major), Wᵀ (n × m, read
    // from W row-major) and y (batch × m, row-major) inside their buffers,
    // as asserted above.
    unsafe {
        gemm::gemm(
            batch,
            m,
            n,
            y.as_mut_ptr(),
            1,
            m as isize,
            false,
            x.as_ptr(),
            1,
            n as isize,
            w.as_ptr(),
            n as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
