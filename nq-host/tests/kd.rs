//! Model reconstruction on a compute device against the host run: the
//! device path on the CPU backend is the host path bit for bit; on the
//! emulated CUDA kernels (and on a GPU, when there is one) the trained
//! scales agree to a tolerance set by AdamW's sign-like first steps.

use nq_host::backend::{CpuBackend, ModelBackend};
use nq_host::model::synthetic::{random_model, tiny_config};
use nq_host::model::Arch;
use nq_host::quant::kd::{model_reconstruct, KdOptions};
use nq_host::quant::kd_device::model_reconstruct_on;
use nq_host::quant::pipeline::quantize_linears;
use nq_host::quant::stats::{collect, StatsOptions};
use nq_host::TensorPayload;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;

/// Three windows of 20 tokens and one of 12 (the device re-plans).
fn windows() -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    (0..4)
        .map(|i| {
            let len = if i == 2 { 12 } else { 20 };
            (0..len).map(|_| rng.gen_range(0..32)).collect()
        })
        .collect()
}

/// Every factorized payload's `(s_pre, s_post)` as f32.
fn scales(q: &[Vec<TensorPayload>]) -> Vec<(Vec<f32>, Vec<f32>)> {
    q.iter()
        .flatten()
        .map(|p| match p {
            TensorPayload::Factorized(f) => {
                (f.s_pre().iter().collect(), f.s_post().iter().collect())
            }
            _ => panic!("factorized payloads expected"),
        })
        .collect()
}

/// Host and device runs from the same quantized model; `tol` bounds each
/// scale's difference relative to its vector's largest scale (`0`: equal
/// bits, payloads and losses included).
fn device_kd_matches_host<B: ModelBackend>(be: &B, tol: f32) {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let w = random_model(tiny_config(arch), 9);
        let wins = windows();
        let stats = collect(&w, &wins, &StatsOptions::default(), |_, _| {}).unwrap();
        let start =
            quantize_linears(&w, Some(&stats), &common::nanoquant_opts(20), |_| {}).unwrap();
        let opts = KdOptions {
            epochs: 2,
            lr: 1e-2,
            top_k: 8,
        };
        let mut host =
            quantize_linears(&w, Some(&stats), &common::nanoquant_opts(20), |_| {}).unwrap();
        let hr = model_reconstruct(&w, &mut host, &wins, &opts, |_, _| {}).unwrap();
        let mut dev =
            quantize_linears(&w, Some(&stats), &common::nanoquant_opts(20), |_| {}).unwrap();
        let mut calls = 0;
        let dr = model_reconstruct_on(be, &w, &mut dev, &wins, &opts, usize::MAX, |s, total| {
            calls += 1;
            assert_eq!((s, total), (calls, 8));
        })
        .unwrap();
        assert_eq!(calls, 8, "{arch:?}");
        let (hs, ds, s0) = (
            scales(&host.payloads),
            scales(&dev.payloads),
            scales(&start.payloads),
        );
        assert_ne!(hs, s0, "{arch:?}: training moved the scales");
        if tol == 0.0 {
            assert_eq!(hr.loss_per_epoch, dr.loss_per_epoch, "{arch:?}");
            for (h, d) in host
                .payloads
                .iter()
                .flatten()
                .zip(dev.payloads.iter().flatten())
            {
                let (TensorPayload::Factorized(h), TensorPayload::Factorized(d)) = (h, d) else {
                    unreachable!()
                };
                assert_eq!(h.as_view(), d.as_view(), "{arch:?}");
            }
            continue;
        }
        for (a, b) in hr.loss_per_epoch.iter().zip(&dr.loss_per_epoch) {
            assert!((a - b).abs() < 1e-4 * a, "{arch:?}: loss {a} vs {b}");
        }
        let mut worst = 0.0f32;
        for ((h, d), s) in hs.iter().zip(&ds).zip(&s0) {
            for (hv, dv) in [(&h.0, &d.0), (&h.1, &d.1)] {
                let scale = hv.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (x, y) in hv.iter().zip(dv.iter()) {
                    worst = worst.max((x - y).abs() / scale);
                }
            }
            // Signs are frozen on both: the same starting payload's.
            assert_eq!(s.0.len(), d.0.len());
        }
        eprintln!("{arch:?}: largest relative scale difference {worst:.2e}");
        assert!(worst <= tol, "{arch:?}: {worst} > {tol}");
        for (s, d) in start
            .payloads
            .iter()
            .flatten()
            .zip(dev.payloads.iter().flatten())
        {
            let (TensorPayload::Factorized(s), TensorPayload::Factorized(d)) = (s, d) else {
                unreachable!()
            };
            assert_eq!((s.u(), s.v()), (d.u(), d.v()), "{arch:?}: signs frozen");
        }
    }
}

#[test]
fn device_kd_on_the_cpu_backend_is_the_host_run() {
    device_kd_matches_host(&CpuBackend::default(), 0.0);
}

#[test]
fn emulated_device_kd_matches_the_host() {
    device_kd_matches_host(&nq_cuda_emu::EmuBackend::default(), 1e-3);
}

/// The same on a GPU (skips visibly without one).
#[test]
fn cuda_kd_matches_the_host() {
    let Some(gpu) = common::cuda_backend() else {
        return;
    };
    device_kd_matches_host(&gpu, 1e-2);
}

#[test]
fn device_kd_needs_the_student_on_the_device() {
    let w = random_model(tiny_config(Arch::Llama), 9);
    let wins = windows();
    let mut q = quantize_linears(&w, None, &common::nanoquant_opts(20), |_| {}).unwrap();
    let before = scales(&q.payloads);
    let e = model_reconstruct_on(
        &CpuBackend::default(),
        &w,
        &mut q,
        &wins,
        &KdOptions::default(),
        0,
        |_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("whole student"), "{e}");
    assert_eq!(scales(&q.payloads), before, "nothing changed");
}
