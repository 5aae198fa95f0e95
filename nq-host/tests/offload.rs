//! The large-product hook of `nq_host::linalg` (`--device cuda` sends the
//! statistics', reconstruction's and KD's big GEMMs through it), driven by
//! a CPU stand-in device that computes each product from the strides it is
//! handed. Its own test binary: the hook is process-wide.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use nq_host::linalg::{
    matmul_nn, matmul_nt, matmul_strided, matmul_tn, set_offload, GemmOffload, OFFLOAD_MIN_MACS,
};

/// Computes the product in f64 from the strides, counting calls; declines
/// when told to.
#[derive(Default)]
struct Standin {
    calls: AtomicUsize,
    decline: AtomicBool,
}

impl GemmOffload for Standin {
    fn gemm(
        &self,
        c: &mut [f32],
        ldc: usize,
        a: &[f32],
        (ars, acs): (usize, usize),
        b: &[f32],
        (brs, bcs): (usize, usize),
        (m, n, k): (usize, usize, usize),
        accumulate: bool,
    ) -> bool {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.decline.load(Ordering::Relaxed) {
            return false;
        }
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|p| f64::from(a[i * ars + p * acs]) * f64::from(b[p * brs + j * bcs]))
                    .sum();
                let o = &mut c[i * ldc + j];
                *o = if accumulate { *o + s as f32 } else { s as f32 };
            }
        }
        true
    }
}

fn data(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 1001.0)
        .collect()
}

fn close(x: &[f32], y: &[f32]) {
    assert_eq!(x.len(), y.len());
    for (a, b) in x.iter().zip(y) {
        assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn large_products_go_to_the_device_and_agree_with_the_cpu() {
    // Just above the threshold: 1024 × 256 × 256 = 2^26 multiply-adds.
    let (m, n, k) = (1024, 256, 256);
    assert!(m * n * k >= OFFLOAD_MIN_MACS);
    let a = data(m * k, 1);
    let b = data(k * n, 2);
    let bt: Vec<f32> = (0..n * k).map(|e| b[(e % k) * n + e / k]).collect();
    let at: Vec<f32> = (0..k * m).map(|e| a[(e % m) * k + e / m]).collect();
    let cpu = |f: &dyn Fn(&mut [f32])| {
        let mut c = vec![0.5f32; m * n];
        f(&mut c);
        c
    };
    type Product<'a> = (&'a str, Box<dyn Fn(&mut [f32]) + 'a>);
    let products: [Product<'_>; 4] = [
        (
            "nt",
            Box::new(|c: &mut [f32]| matmul_nt(c, &a, &bt, m, n, k, false)),
        ),
        (
            "nn",
            Box::new(|c: &mut [f32]| matmul_nn(c, &a, &b, m, n, k, false)),
        ),
        (
            "tn",
            Box::new(|c: &mut [f32]| matmul_tn(c, &at, &b, m, n, k, false)),
        ),
        (
            "nn+",
            Box::new(|c: &mut [f32]| matmul_nn(c, &a, &b, m, n, k, true)),
        ),
    ];
    let want: Vec<Vec<f32>> = products.iter().map(|(_, f)| cpu(f.as_ref())).collect();

    let dev = Arc::new(Standin::default());
    set_offload(Some(dev.clone()));
    for ((name, f), want) in products.iter().zip(&want) {
        let before = dev.calls.load(Ordering::Relaxed);
        let got = cpu(f.as_ref());
        assert_eq!(
            dev.calls.load(Ordering::Relaxed),
            before + 1,
            "{name} not offloaded"
        );
        close(&got, want);
    }
    // A strided product into a wider output: the gaps survive.
    let ldc = n + 5;
    let mut wide = vec![7.0f32; m * ldc];
    matmul_strided(&mut wide, ldc, &a, k, &bt, k, true, m, n, k, false);
    for i in 0..m {
        close(&wide[i * ldc..i * ldc + n], &want[0][i * n..(i + 1) * n]);
        assert!(wide[i * ldc + n..(i + 1) * ldc].iter().all(|&x| x == 7.0));
    }
    // Small products stay on the CPU.
    let calls = dev.calls.load(Ordering::Relaxed);
    let mut small = vec![0.0; 64 * 64];
    matmul_nn(&mut small, &a[..64 * 64], &b[..64 * 64], 64, 64, 64, false);
    assert_eq!(dev.calls.load(Ordering::Relaxed), calls);
    // A device that declines hands the product back: the CPU's result.
    dev.decline.store(true, Ordering::Relaxed);
    let got = cpu(products[0].1.as_ref());
    assert_eq!(dev.calls.load(Ordering::Relaxed), calls + 1);
    assert_eq!(got, want[0]);
    // Uninstalled: no more calls.
    set_offload(None);
    let _ = cpu(products[1].1.as_ref());
    assert_eq!(dev.calls.load(Ordering::Relaxed), calls + 1);
}
