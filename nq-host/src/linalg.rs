//! Dense f32 matrix products for the CPU backend, over the `gemm` crate.
//!
//! All matrices are row-major slices. The three shapes the transformer and
//! its backward pass need are named by which operand is transposed:
//! `nt` (activations × weightᵀ: a linear forward), `nn` (a plain product:
//! attention × values, gradient × weight) and `tn` (a weight gradient,
//! gradientᵀ × activations).

use std::sync::{Arc, RwLock};

use gemm::{gemm, Parallelism};

/// A device that takes over large products: with `--device cuda` the
/// statistics pass, reconstruction and KD send their big GEMMs here (see
/// [`set_offload`]); everything else stays on the CPU.
pub trait GemmOffload: Send + Sync {
    /// `c = a · b` (`+=` with `accumulate`) for strided operands: element
    /// `(i, p)` of `a` (`m × k`) at `i·a_strides.0 + p·a_strides.1`, `(p, j)`
    /// of `b` (`k × n`) at `p·b_strides.0 + j·b_strides.1`, `c` row-major
    /// with row stride `ldc`. Returns `false`, leaving `c` as it was, to
    /// hand the product back to the CPU.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        c: &mut [f32],
        ldc: usize,
        a: &[f32],
        a_strides: (usize, usize),
        b: &[f32],
        b_strides: (usize, usize),
        shape: (usize, usize, usize),
        accumulate: bool,
    ) -> bool;
}

/// Products with at least this many multiply-adds go to the offload device;
/// smaller ones cost more in transfers than they save.
pub const OFFLOAD_MIN_MACS: usize = 1 << 26;

static OFFLOAD: RwLock<Option<Arc<dyn GemmOffload>>> = RwLock::new(None);

/// Sends every product of at least [`OFFLOAD_MIN_MACS`] multiply-adds to
/// `device` from now on (process-wide), or none with `None`.
pub fn set_offload(device: Option<Arc<dyn GemmOffload>>) {
    let mut slot = OFFLOAD.write().unwrap_or_else(|p| p.into_inner());
    *slot = device;
}

fn offload() -> Option<Arc<dyn GemmOffload>> {
    OFFLOAD.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// How many threads a product may use.
fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    // Small products are faster on one thread than split across the pool.
    if m * n * k < 64 * 64 * 64 || rayon::current_num_threads() == 1 {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// Strided description of a matrix operand: element (i, j) is at
/// `i * rs + j * cs`.
#[derive(Clone, Copy)]
struct Strides {
    rs: isize,
    cs: isize,
}

/// `c = a · b` for strided operands, `c` row-major `m × n` with row stride
/// `ldc ≥ n`; with `accumulate`, adds to `c` instead.
///
/// # Panics
/// If a slice is too short for its shape.
#[allow(clippy::too_many_arguments)]
fn product(
    c: &mut [f32],
    ldc: usize,
    a: &[f32],
    sa: Strides,
    b: &[f32],
    sb: Strides,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    par: Parallelism,
) {
    assert!(ldc >= n, "output stride below width");
    assert!(m == 0 || c.len() >= (m - 1) * ldc + n, "output too short");
    let reach = |s: Strides, rows: usize, cols: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * s.rs as usize + (cols - 1) * s.cs as usize + 1
        }
    };
    assert!(a.len() >= reach(sa, m, k), "lhs too short");
    assert!(b.len() >= reach(sb, k, n), "rhs too short");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in c.chunks_mut(ldc).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    if m * n * k >= OFFLOAD_MIN_MACS {
        if let Some(dev) = offload() {
            let st = |s: Strides| (s.rs as usize, s.cs as usize);
            if dev.gemm(c, ldc, a, st(sa), b, st(sb), (m, n, k), accumulate) {
                return;
            }
        }
    }
    // SAFETY: the asserts above bound every element gemm reads (lhs rows
    // < m, cols < k; rhs rows < k, cols < n) and writes (dst m × n,
    // row stride ldc, inside `c`); `c` does not alias `a` or `b` (&mut vs &).
    unsafe {
        gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.as_ptr(),
            sa.cs,
            sa.rs,
            b.as_ptr(),
            sb.cs,
            sb.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `c (m×n) = a (m×k) · b (n×k)ᵀ` (+= with `accumulate`).
pub fn matmul_nt(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    let sa = Strides {
        rs: k as isize,
        cs: 1,
    };
    let sb = Strides {
        rs: 1,
        cs: k as isize,
    };
    product(
        c,
        n,
        a,
        sa,
        b,
        sb,
        m,
        n,
        k,
        accumulate,
        parallelism(m, n, k),
    );
}

/// `c (m×n) = a (m×k) · b (k×n)` (+= with `accumulate`).
pub fn matmul_nn(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    let sa = Strides {
        rs: k as isize,
        cs: 1,
    };
    let sb = Strides {
        rs: n as isize,
        cs: 1,
    };
    product(
        c,
        n,
        a,
        sa,
        b,
        sb,
        m,
        n,
        k,
        accumulate,
        parallelism(m, n, k),
    );
}

/// `c (m×n) = a (k×m)ᵀ · b (k×n)` (+= with `accumulate`).
pub fn matmul_tn(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    let sa = Strides {
        rs: 1,
        cs: m as isize,
    };
    let sb = Strides {
        rs: n as isize,
        cs: 1,
    };
    product(
        c,
        n,
        a,
        sa,
        b,
        sb,
        m,
        n,
        k,
        accumulate,
        parallelism(m, n, k),
    );
}

/// Single-threaded product on sub-blocks with explicit row strides — for
/// callers that already parallelise outside (attention heads).
/// `c (m×n, row stride ldc) = a (m×k, row stride lda) · b` where `b` is
/// `(n×k, row stride ldb)ᵀ` when `b_transposed`, else `(k×n, row stride ldb)`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided(
    c: &mut [f32],
    ldc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    b_transposed: bool,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    let sa = Strides {
        rs: lda as isize,
        cs: 1,
    };
    let sb = if b_transposed {
        Strides {
            rs: 1,
            cs: ldb as isize,
        }
    } else {
        Strides {
            rs: ldb as isize,
            cs: 1,
        }
    };
    product(c, ldc, a, sa, b, sb, m, n, k, accumulate, Parallelism::None);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        a: impl Fn(usize, usize) -> f32,
        b: impl Fn(usize, usize) -> f32,
        m: usize,
        n: usize,
        k: usize,
    ) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|l| f64::from(a(i, l)) * f64::from(b(l, j)))
                    .sum::<f64>() as f32;
            }
        }
        c
    }

    fn close(x: &[f32], y: &[f32]) {
        assert_eq!(x.len(), y.len());
        for (a, b) in x.iter().zip(y) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn all_three_shapes_match_naive_products() {
        for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (70, 65, 130), (128, 96, 64)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let bt: Vec<f32> = (0..n * k)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 20.0)
                .collect();
            let b: Vec<f32> = (0..k * n).map(|i| bt[(i % n) * k + i / n]).collect(); // b = btᵀ
            let want = naive(|i, l| a[i * k + l], |l, j| bt[j * k + l], m, n, k);
            let mut c = vec![0.0; m * n];
            matmul_nt(&mut c, &a, &bt, m, n, k, false);
            close(&c, &want);
            matmul_nn(&mut c, &a, &b, m, n, k, false);
            close(&c, &want);
            let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect(); // at = aᵀ
            matmul_tn(&mut c, &at, &b, m, n, k, false);
            close(&c, &want);
            // Accumulate adds.
            matmul_nt(&mut c, &a, &bt, m, n, k, true);
            let twice: Vec<f32> = want.iter().map(|x| 2.0 * x).collect();
            close(&c, &twice);
            // Strided, written into a wider output.
            let mut wide = vec![7.0f32; m * (n + 3)];
            matmul_strided(&mut wide, n + 3, &a, k, &bt, k, true, m, n, k, false);
            for i in 0..m {
                close(
                    &wide[i * (n + 3)..i * (n + 3) + n],
                    &want[i * n..(i + 1) * n],
                );
                assert_eq!(&wide[i * (n + 3) + n..(i + 1) * (n + 3)], &[7.0; 3]);
            }
        }
    }
}
