//! Small random models for tests and gradient checks.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::{LayerWeights, Matrix, ModelConfig, ModelWeights};

/// A model with `N(0, 1/fan_in)` weights, norms near 1, biases / q-k norms
/// as the config asks; the same seed always gives the same model.
pub fn random_model(config: ModelConfig, seed: u64) -> ModelWeights {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = config;
    let (d, q, kv, f, v) = (
        c.d_model as usize,
        c.q_dim() as usize,
        c.kv_dim() as usize,
        c.d_ffn as usize,
        c.vocab_size as usize,
    );
    let mat = |rows: usize, cols: usize, rng: &mut ChaCha8Rng| {
        let n = Normal::new(0.0f32, 1.0 / (cols as f32).sqrt()).expect("valid std");
        Matrix {
            rows,
            cols,
            data: (0..rows * cols).map(|_| n.sample(rng)).collect(),
        }
    };
    let vec_near = |len: usize, center: f32, rng: &mut ChaCha8Rng| -> Vec<f32> {
        (0..len)
            .map(|_| center + rng.gen_range(-0.2f32..0.2))
            .collect()
    };
    let token_embd = mat(v, d, &mut rng);
    let output = (!c.tied_embeddings).then(|| mat(v, d, &mut rng));
    let layers = (0..c.n_layers)
        .map(|_| LayerWeights {
            attn_norm: vec_near(d, 1.0, &mut rng),
            wq: mat(q, d, &mut rng),
            wk: mat(kv, d, &mut rng),
            wv: mat(kv, d, &mut rng),
            wo: mat(d, q, &mut rng),
            bq: c.attn_bias.then(|| vec_near(q, 0.0, &mut rng)),
            bk: c.attn_bias.then(|| vec_near(kv, 0.0, &mut rng)),
            bv: c.attn_bias.then(|| vec_near(kv, 0.0, &mut rng)),
            q_norm: c
                .qk_norm
                .then(|| vec_near(c.head_dim as usize, 1.0, &mut rng)),
            k_norm: c
                .qk_norm
                .then(|| vec_near(c.head_dim as usize, 1.0, &mut rng)),
            ffn_norm: vec_near(d, 1.0, &mut rng),
            w_gate: mat(f, d, &mut rng),
            w_up: mat(f, d, &mut rng),
            w_down: mat(d, f, &mut rng),
        })
        .collect();
    ModelWeights {
        config,
        token_embd,
        output_norm: vec_near(d, 1.0, &mut rng),
        output,
        layers,
    }
}

/// A tiny config of the given architecture flavour.
pub fn tiny_config(arch: super::Arch) -> ModelConfig {
    use super::Arch;
    ModelConfig {
        arch,
        n_layers: 2,
        d_model: 16,
        d_ffn: 24,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 4,
        vocab_size: 32,
        max_seq_len: 64,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_embeddings: !matches!(arch, Arch::Qwen2),
        attn_bias: matches!(arch, Arch::Qwen2),
        qk_norm: matches!(arch, Arch::Qwen3),
        bos_id: None,
        eos_id: None,
    }
}
