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
