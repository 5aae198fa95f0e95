//! Calibration statistics: the streaming, recomputing implementation against
//! energies computed directly from one full forward + backward with a tape.

use nq_host::model::backward::{backward, loss_and_dlogits, BackwardOptions, LinearId};
use nq_host::model::forward::{forward, Tape};
use nq_host::model::synthetic::{random_model, tiny_config};
use nq_host::model::Arch;
use nq_host::quant::stats::{collect, StatsOptions};

fn windows() -> Vec<Vec<u32>> {
    vec![
        vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 3],
        vec![2, 7, 1, 8, 2, 8, 1, 8, 2, 8],
        vec![1, 4, 1, 4, 2, 1, 3, 5, 6, 2],
    ]
}

/// Mean of squared entries per column of `rows` (`tokens × width`), over
/// several windows.
fn mean_sq(parts: &[&[f32]], width: usize) -> Vec<f64> {
    let mut acc = vec![0.0f64; width];
    let mut n = 0usize;
    for p in parts {
        for row in p.chunks_exact(width) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += f64::from(v) * f64::from(v);
            }
            n += 1;
        }
    }
    acc.iter().map(|a| a / n as f64).collect()
}

fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (j, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= 1e-4 * w.abs() + 1e-12,
            "{what}[{j}]: {g} vs {w}"
        );
    }
}

#[test]
fn streaming_statistics_equal_full_backward_energies() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let w = random_model(tiny_config(arch), 7);
        let wins = windows();
        let vocab = w.config.vocab_size as usize;
        // The independent path: full tape, every linear's output gradient.
        let mut tapes = Vec::new();
        let mut grads = Vec::new();
        for win in &wins {
            let mut tape = Tape::default();
            let logits = forward(&w, win, Some(&mut tape)).unwrap();
            let (_, dl) = loss_and_dlogits(&logits, win, vocab);
            let mut opts = BackwardOptions {
                weight_grads: false,
                keep_block_input_grads: false,
                keep_linear_output_grads: true,
                on_linear_output_grad: None,
            };
            grads.push(backward(&w, &tape, &dl, &mut opts));
            tapes.push(tape);
        }
        // No clipping (τ = the largest norm), no shrinkage, no scaling.
        let opts = StatsOptions {
            shrinkage: 0.0,
            clip_percentile: 1.0,
            output_scale: 1.0,
        };
        let stats = collect(&w, &wins, &opts, |_, _| {}).unwrap();
        for b in 0..w.layers.len() {
            for id in LinearId::ALL {
                let e = stats.get(b, id);
                let m = id.weight(&w.layers[b]);
                let inputs: Vec<&[f32]> = tapes.iter().map(|t| id.input(&t.blocks[b])).collect();
                close(
                    &e.input,
                    &mean_sq(&inputs, m.cols),
                    &format!("{arch:?} {b} {id:?} in"),
                );
                let outs: Vec<&[f32]> = grads.iter().map(|g| g.linear_outputs[b].get(id)).collect();
                close(
                    &e.output,
                    &mean_sq(&outs, m.rows),
                    &format!("{arch:?} {b} {id:?} out"),
                );
            }
        }
    }
}

#[test]
fn clipping_and_shrinkage_reduce_spread() {
    let w = random_model(tiny_config(Arch::Llama), 9);
    let wins = windows();
    let raw = StatsOptions {
        shrinkage: 0.0,
        clip_percentile: 1.0,
        output_scale: 1.0,
    };
    let a = collect(&w, &wins, &raw, |_, _| {}).unwrap();
    let shrunk = collect(
        &w,
        &wins,
        &StatsOptions {
            shrinkage: 0.5,
            ..raw
        },
        |_, _| {},
    )
    .unwrap();
    let clipped = collect(
        &w,
        &wins,
        &StatsOptions {
            clip_percentile: 0.5,
            ..raw
        },
        |_, _| {},
    )
    .unwrap();
    let spread = |v: &[f32]| {
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        v.iter().map(|x| (x - mean).abs()).sum::<f32>()
    };
    let (e, s, c) = (
        a.get(0, LinearId::Down),
        shrunk.get(0, LinearId::Down),
        clipped.get(0, LinearId::Down),
    );
    // γ = 0.5 halves every deviation from the mean.
    assert!((spread(&s.input) - 0.5 * spread(&e.input)).abs() <= 1e-4 * spread(&e.input));
    // Clipping at the median norm can only lower each channel's energy.
    for (x, y) in c.input.iter().zip(&e.input) {
        assert!(x <= &(y * (1.0 + 1e-5)), "{x} > {y}");
    }
    assert!(c.input.iter().sum::<f32>() < e.input.iter().sum::<f32>());
    assert!(a.mean_loss.is_finite() && a.mean_loss > 0.0);
    assert_eq!(a.tokens, 30);
}

mod common;

use nq_host::backend::{CpuBackend, ModelBackend};
use nq_host::quant::stats::ModelStats;
use nq_host::quant::stats_device::collect_on;

/// Windows of two lengths, so the device pass re-plans between them.
fn mixed_windows() -> Vec<Vec<u32>> {
    let mut w = windows();
    w.push(vec![9, 9, 8, 2, 7, 1]);
    w
}

fn energies(s: &ModelStats) -> Vec<(Vec<f32>, Vec<f32>)> {
    s.layers
        .iter()
        .flatten()
        .map(|e| (e.input.clone(), e.output.clone()))
        .collect()
}

/// The device pass on `be` against the host pass, for every architecture,
/// with the blocks resident and streamed: energies within `tol` (relative
/// to each vector's largest entry; `0` demands equal bits).
fn device_statistics_match_host<B: ModelBackend>(be: &B, tol: f64) {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let w = random_model(tiny_config(arch), 11);
        let wins = mixed_windows();
        let opts = StatsOptions {
            // Clip for real: the percentile lands inside each site.
            clip_percentile: 0.8,
            ..StatsOptions::default()
        };
        let host = collect(&w, &wins, &opts, |_, _| {}).unwrap();
        for resident in [usize::MAX, 0] {
            let mut calls = 0;
            let dev = collect_on(be, &w, &wins, &opts, resident, |done, total| {
                calls += 1;
                assert_eq!((done, total), (calls, wins.len()));
            })
            .unwrap();
            assert_eq!(calls, wins.len());
            assert_eq!(dev.tokens, host.tokens);
            let what = format!("{arch:?}, resident bytes {resident}");
            if tol == 0.0 {
                assert_eq!(dev.mean_loss.to_bits(), host.mean_loss.to_bits(), "{what}");
                assert_eq!(energies(&dev), energies(&host), "{what}");
                continue;
            }
            assert!(
                (dev.mean_loss - host.mean_loss).abs() < 1e-5 * host.mean_loss,
                "{what}"
            );
            for (i, (d, h)) in energies(&dev).iter().zip(energies(&host)).enumerate() {
                for (got, want) in [(&d.0, &h.0), (&d.1, &h.1)] {
                    let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
                    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    for (&g, &e) in got.iter().zip(&want) {
                        assert!(
                            (f64::from(g) - e).abs() <= tol * scale,
                            "{what}, linear {i}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn device_statistics_on_the_cpu_backend_are_the_host_pass() {
    device_statistics_match_host(&CpuBackend::default(), 0.0);
}

#[test]
fn emulated_device_statistics_match_the_host() {
    device_statistics_match_host(&nq_cuda_emu::EmuBackend::default(), 1e-4);
}

/// The same on a GPU (skips visibly without one).
#[test]
fn cuda_statistics_match_the_host() {
    let Some(gpu) = common::cuda_backend() else {
        return;
    };
    device_statistics_match_host(&gpu, 1e-4);
}

#[test]
fn device_statistics_refuse_bad_windows() {
    let w = random_model(tiny_config(Arch::Llama), 3);
    let be = CpuBackend::default();
    let opts = StatsOptions::default();
    let vocab = w.config.vocab_size;
    for (wins, want) in [
        (vec![], "no calibration windows"),
        (vec![vec![1]], "at least 2 tokens"),
        (vec![vec![1, vocab]], "outside the vocabulary"),
    ] {
        let e = collect_on(&be, &w, &wins, &opts, usize::MAX, |_, _| {}).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
        let e = collect(&w, &wins, &opts, |_, _| {}).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
}

/// The statistics ops refuse shapes that do not fit instead of panicking.
fn statistics_ops_refuse_bad_shapes<B: ModelBackend>(be: &B) {
    let empty = be.upload(&[]).unwrap();
    assert!(be.row_norms(&empty, 0).is_err(), "zero width");
    let x = be.upload(&[1.0, 2.0, 3.0]).unwrap();
    assert!(be.row_norms(&x, 2).is_err(), "3 values are not rows of 2");
    assert!(be
        .add_clipped_squares(&x, &[1.0, 1.0], &mut [0.0; 2])
        .is_err());
    let mut g = be.zeros(3).unwrap();
    assert!(
        be.cross_entropy(&x, &[0, 1, 5], 1, &mut g).is_err(),
        "token 5 ≥ vocab 1"
    );
    assert!(be.cross_entropy(&x, &[0], 3, &mut g).is_err(), "one token");
    assert!(
        be.kd_loss(&x, (&[4], &[1.0]), 1, 3, &mut g).is_err(),
        "id 4 ≥ vocab 3"
    );
}

#[test]
fn statistics_ops_refuse_bad_shapes_on_every_backend() {
    statistics_ops_refuse_bad_shapes(&CpuBackend::default());
    statistics_ops_refuse_bad_shapes(&nq_cuda_emu::EmuBackend::default());
    if let Some(gpu) = common::cuda_backend() {
        statistics_ops_refuse_bad_shapes(&gpu);
    }
}
