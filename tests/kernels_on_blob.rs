//! The kernels run on layers viewed straight out of a parsed blob: the sign
//! bytes they read are the blob's own (no repacking), and every kernel this
//! CPU has matches the scalar oracle within the documented int8 budget and
//! the portable kernel bit for bit.

use nq_core::blob::{Arch, Blob, ModelConfig};
use nq_core::kernels::{self, error_bound_binary, error_bound_factorized, Kernel};
use nq_core::{BinaryLinear, F16Vector, FactorizedLinear, SignMatrix};
use nq_host::{BlobBuilder, TensorPayload};

fn config() -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        n_layers: 1,
        d_model: 96,
        d_ffn: 200,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 24,
        vocab_size: 256,
        max_seq_len: 64,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_embeddings: true,
        attn_bias: false,
        qk_norm: false,
        bos_id: Some(1),
        eos_id: None,
    }
}

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn within(data: &[u8], part: &[u8]) -> bool {
    let range = data.as_ptr_range();
    range.start <= part.as_ptr() && part.as_ptr_range().end <= range.end
}

#[test]
fn every_kernel_runs_on_blob_bytes_in_place() {
    let (m, n, r) = (200, 96, 40);
    let fact = FactorizedLinear::new(
        SignMatrix::from_fn(m, r, |i, k| (i * 7 + k * 3) % 5 < 2),
        SignMatrix::from_fn(r, n, |k, j| (k + 2 * j) % 3 == 0),
        F16Vector::from_f32(&values(n, 1)),
        F16Vector::from_f32(&values(m, 2)),
        Some(F16Vector::from_f32(&values(m, 3))),
    )
    .unwrap();
    let bin = BinaryLinear::new(
        SignMatrix::from_fn(n, m, |i, j| (i ^ j) % 3 == 1),
        F16Vector::from_f32(&values(m, 4)),
        F16Vector::from_f32(&values(n, 5)),
        None,
    )
    .unwrap();
    let mut builder = BlobBuilder::new(config());
    builder
        .add("blk.0.ffn_up", TensorPayload::Factorized(fact))
        .unwrap();
    builder
        .add("blk.0.ffn_down", TensorPayload::Binary(bin))
        .unwrap();
    let bytes = builder.to_bytes().unwrap();
    let view = Blob::parse(&bytes).unwrap();
    let up = view.get("blk.0.ffn_up").unwrap().as_factorized().unwrap();
    let down = view.get("blk.0.ffn_down").unwrap().as_binary().unwrap();
    assert!(within(&bytes, up.u().as_bytes()) && within(&bytes, up.v().as_bytes()));
    assert!(within(&bytes, down.signs().as_bytes()));

    for batch in [1, 3, 16] {
        let x = values(batch * n, 6 + batch as u64);
        let mut portable = (vec![0.0f32; batch * m], vec![0.0f32; batch * n]);
        for k in kernels::available() {
            // up: n → m (factorized), down: m → n (binary).
            let mut h = vec![0.0f32; batch * m];
            let mut out = vec![0.0f32; batch * n];
            let mut scratch = vec![0.0f32; up.forward_scratch_len(batch)];
            up.forward_with(k, &x, batch, &mut h, &mut scratch);
            let mut scratch = vec![0.0f32; down.forward_scratch_len(batch)];
            down.forward_with(k, &h, batch, &mut out, &mut scratch);
            if k == Kernel::Portable {
                portable = (h.clone(), out.clone());
            } else {
                assert_eq!(h, portable.0, "{k}: factorized differs from portable");
                assert_eq!(out, portable.1, "{k}: binary differs from portable");
            }
            for b in 0..batch {
                let xb = &x[b * n..(b + 1) * n];
                let mut want = vec![0.0f32; m];
                let mut t = vec![0.0f32; r];
                up.forward_ref(xb, &mut want, &mut t);
                let max_z = (0..n).fold(0.0f32, |a, j| a.max((up.s_pre().get(j) * xb[j]).abs()));
                let max_t = t.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let budget = error_bound_factorized(n, r, max_z, max_t);
                for i in 0..m {
                    let tol = up.s_post().get(i).abs() * budget * 1.001 + 1e-4;
                    let err = (h[b * m + i] - want[i]).abs();
                    assert!(err <= tol, "{k}: up token {b} row {i}: err {err} > {tol}");
                }
                let hb = &h[b * m..(b + 1) * m];
                let mut want = vec![0.0f32; n];
                let mut tmp = vec![0.0f32; m];
                down.forward_ref(hb, &mut want, &mut tmp);
                let max_z = (0..m).fold(0.0f32, |a, j| a.max((down.s_col().get(j) * hb[j]).abs()));
                let budget = error_bound_binary(m, max_z);
                for i in 0..n {
                    let tol = down.s_row().get(i).abs() * budget * 1.001 + 1e-4;
                    let err = (out[b * n + i] - want[i]).abs();
                    assert!(err <= tol, "{k}: down token {b} row {i}: err {err} > {tol}");
                }
            }
        }
    }
}
