//! Write → parse round trips: every tensor comes back identical, every layer
//! computes what its float description says, and the bytes are deterministic.
//!
//! The expected layer outputs are computed here from the original floats
//! (signs as ±1.0, scales rounded to f16) in f64 — independently of the
//! packed layouts and of nq-core's oracles.

use half::f16;
use nq_core::blob::{Arch, Blob, Kind, ModelConfig};
use nq_core::layers::{
    BinaryLinear, DenseDtype, DenseTensor, FactorizedLinear, RowBits, RowQuantTensor,
};
use nq_core::{F16Vector, SignMatrix};
use nq_host::{BlobBuilder, TensorPayload};
use proptest::prelude::*;

/// A layer described by plain floats, the test's source of truth.
#[derive(Clone, Debug)]
enum Spec {
    Factorized {
        m: usize,
        n: usize,
        r: usize,
        u: Vec<bool>, // m×r, true = −1
        v: Vec<bool>, // r×n
        s_pre: Vec<f32>,
        s_post: Vec<f32>,
        bias: Option<Vec<f32>>,
    },
    Binary {
        m: usize,
        n: usize,
        b: Vec<bool>,
        s_col: Vec<f32>,
        s_row: Vec<f32>,
        bias: Option<Vec<f32>>,
    },
    Dense {
        rows: usize,
        cols: usize,
        vector: bool,
        f32: bool,
        values: Vec<f32>,
    },
    RowQuant {
        rows: usize,
        cols: usize,
        q4: bool,
        values: Vec<f32>,
    },
    Bytes(Vec<u8>),
}

fn h(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

fn sgn(neg: bool) -> f64 {
    if neg {
        -1.0
    } else {
        1.0
    }
}

fn scale() -> impl Strategy<Value = f32> {
    prop_oneof![Just(0.0f32), -4.0f32..4.0, 1e-3f32..1e-2]
}

fn spec() -> impl Strategy<Value = Spec> {
    let fact = (1usize..40, 1usize..70)
        .prop_flat_map(|(m, n)| (Just(m), Just(n), 1..=m.min(n)))
        .prop_flat_map(|(m, n, r)| {
            (
                Just((m, n, r)),
                proptest::collection::vec(any::<bool>(), m * r),
                proptest::collection::vec(any::<bool>(), r * n),
                proptest::collection::vec(scale(), n),
                proptest::collection::vec(scale(), m),
                proptest::option::of(proptest::collection::vec(-2.0f32..2.0, m)),
            )
        })
        .prop_map(|((m, n, r), u, v, s_pre, s_post, bias)| Spec::Factorized {
            m,
            n,
            r,
            u,
            v,
            s_pre,
            s_post,
            bias,
        });
    let bin = (1usize..40, 1usize..70)
        .prop_flat_map(|(m, n)| {
            (
                Just((m, n)),
                proptest::collection::vec(any::<bool>(), m * n),
                proptest::collection::vec(scale(), n),
                proptest::collection::vec(scale(), m),
                proptest::option::of(proptest::collection::vec(-2.0f32..2.0, m)),
            )
        })
        .prop_map(|((m, n), b, s_col, s_row, bias)| Spec::Binary {
            m,
            n,
            b,
            s_col,
            s_row,
            bias,
        });
    let dense = (1usize..30, 1usize..30, any::<bool>(), any::<bool>())
        .prop_flat_map(|(rows, cols, vector, f32)| {
            let cols = if vector { 1 } else { cols };
            (
                Just((rows, cols, vector, f32)),
                proptest::collection::vec(-8.0f32..8.0, rows * cols),
            )
        })
        .prop_map(|((rows, cols, vector, f32), values)| Spec::Dense {
            rows,
            cols,
            vector,
            f32,
            values,
        });
    let rq = (1usize..20, 1usize..40, any::<bool>())
        .prop_flat_map(|(rows, cols, q4)| {
            (
                Just((rows, cols, q4)),
                proptest::collection::vec(-3.0f32..3.0, rows * cols),
            )
        })
        .prop_map(|((rows, cols, q4), values)| Spec::RowQuant {
            rows,
            cols,
            q4,
            values,
        });
    let bytes = proptest::collection::vec(any::<u8>(), 1..200).prop_map(Spec::Bytes);
    prop_oneof![fact, bin, dense, rq, bytes]
}

fn payload(s: &Spec) -> TensorPayload {
    match s {
        Spec::Factorized {
            m,
            n,
            r,
            u,
            v,
            s_pre,
            s_post,
            bias,
        } => TensorPayload::Factorized(
            FactorizedLinear::new(
                SignMatrix::from_fn(*m, *r, |i, k| u[i * r + k]),
                SignMatrix::from_fn(*r, *n, |k, j| v[k * n + j]),
                F16Vector::from_f32(s_pre),
                F16Vector::from_f32(s_post),
                bias.as_deref().map(F16Vector::from_f32),
            )
            .unwrap(),
        ),
        Spec::Binary {
            m,
            n,
            b,
            s_col,
            s_row,
            bias,
        } => TensorPayload::Binary(
            BinaryLinear::new(
                SignMatrix::from_fn(*m, *n, |i, j| b[i * n + j]),
                F16Vector::from_f32(s_col),
                F16Vector::from_f32(s_row),
                bias.as_deref().map(F16Vector::from_f32),
            )
            .unwrap(),
        ),
        Spec::Dense {
            rows,
            cols,
            vector,
            f32,
            values,
        } => {
            let dtype = if *f32 {
                DenseDtype::F32
            } else {
                DenseDtype::F16
            };
            let t = DenseTensor::from_f32(*rows, *cols, dtype, values);
            if *vector {
                TensorPayload::Vector(t)
            } else {
                TensorPayload::Matrix(t)
            }
        }
        Spec::RowQuant {
            rows,
            cols,
            q4,
            values,
        } => {
            let bits = if *q4 { RowBits::Q4 } else { RowBits::I8 };
            TensorPayload::RowQuant(RowQuantTensor::quantize(*rows, *cols, bits, values))
        }
        Spec::Bytes(b) => TensorPayload::Bytes(b.clone()),
    }
}

/// The dense matrix a linear spec stands for, in f64 with f16-rounded scales.
fn dense_of(s: &Spec) -> Option<(usize, usize, Vec<f64>, Vec<f64>)> {
    match s {
        Spec::Factorized {
            m,
            n,
            r,
            u,
            v,
            s_pre,
            s_post,
            bias,
        } => {
            let mut w = vec![0.0; m * n];
            for i in 0..*m {
                for j in 0..*n {
                    let dot: f64 = (0..*r).map(|k| sgn(u[i * r + k]) * sgn(v[k * n + j])).sum();
                    w[i * n + j] = f64::from(h(s_post[i])) * dot * f64::from(h(s_pre[j]));
                }
            }
            let b = bias.as_ref().map_or(vec![0.0; *m], |b| {
                b.iter().map(|&x| f64::from(h(x))).collect()
            });
            Some((*m, *n, w, b))
        }
        Spec::Binary {
            m,
            n,
            b,
            s_col,
            s_row,
            bias,
        } => {
            let mut w = vec![0.0; m * n];
            for i in 0..*m {
                for j in 0..*n {
                    w[i * n + j] =
                        f64::from(h(s_row[i])) * sgn(b[i * n + j]) * f64::from(h(s_col[j]));
                }
            }
            let bb = bias.as_ref().map_or(vec![0.0; *m], |b| {
                b.iter().map(|&x| f64::from(h(x))).collect()
            });
            Some((*m, *n, w, bb))
        }
        _ => None,
    }
}

fn config() -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        n_layers: 2,
        d_model: 64,
        d_ffn: 128,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        vocab_size: 256,
        max_seq_len: 128,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_embeddings: true,
        attn_bias: false,
        qk_norm: false,
        bos_id: Some(1),
        eos_id: None,
    }
}

fn name_strategy() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_.]{0,46}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn write_parse_round_trip(
        tensors in proptest::collection::btree_map(name_strategy(), spec(), 0..6),
        x_seed in any::<u64>(),
    ) {
        let mut builder = BlobBuilder::new(config());
        for (name, s) in &tensors {
            builder.add(name.clone(), payload(s)).unwrap();
        }
        let bytes = builder.to_bytes().unwrap();
        prop_assert_eq!(bytes.len() % 64, 0);

        // Deterministic, and independent of insertion order.
        let mut reversed = BlobBuilder::new(config());
        for (name, s) in tensors.iter().rev() {
            reversed.add(name.clone(), payload(s)).unwrap();
        }
        prop_assert!(reversed.to_bytes().unwrap() == bytes);

        let view = Blob::parse(&bytes).unwrap();
        view.verify().unwrap();
        prop_assert_eq!(view.config(), &config());
        prop_assert_eq!(view.len(), tensors.len());

        let mut rng = x_seed;
        for (name, s) in &tensors {
            let t = view.find(name).unwrap();
            prop_assert_eq!(t.name, name.as_str());
            prop_assert_eq!(t.offset % 64, 0);
            match s {
                Spec::Factorized { m, n, r, u, v, s_pre, s_post, bias } => {
                    let l = t.as_factorized().unwrap();
                    prop_assert_eq!((l.out_features(), l.in_features(), l.rank()), (*m, *n, *r));
                    for i in 0..*m { for k in 0..*r { prop_assert_eq!(l.u().is_negative(i, k), u[i * r + k]); } }
                    for k in 0..*r { for j in 0..*n { prop_assert_eq!(l.v().is_negative(k, j), v[k * n + j]); } }
                    prop_assert!(l.s_pre().iter().eq(s_pre.iter().map(|&x| h(x))));
                    prop_assert!(l.s_post().iter().eq(s_post.iter().map(|&x| h(x))));
                    prop_assert_eq!(l.bias().is_some(), bias.is_some());
                }
                Spec::Binary { m, n, b, s_col, s_row, bias } => {
                    let l = t.as_binary().unwrap();
                    prop_assert_eq!((l.out_features(), l.in_features()), (*m, *n));
                    for i in 0..*m { for j in 0..*n { prop_assert_eq!(l.signs().is_negative(i, j), b[i * n + j]); } }
                    prop_assert!(l.s_col().iter().eq(s_col.iter().map(|&x| h(x))));
                    prop_assert!(l.s_row().iter().eq(s_row.iter().map(|&x| h(x))));
                    prop_assert_eq!(l.bias().is_some(), bias.is_some());
                }
                Spec::Dense { rows, cols, vector, f32, values } => {
                    let d = t.as_dense().unwrap();
                    prop_assert_eq!(t.ndim, if *vector { 1 } else { 2 });
                    prop_assert_eq!((d.rows(), d.cols()), (*rows, *cols));
                    for (k, &x) in values.iter().enumerate() {
                        let want = if *f32 { x } else { h(x) };
                        prop_assert_eq!(d.get_flat(k).to_bits(), want.to_bits());
                    }
                }
                Spec::RowQuant { rows, cols, q4, values } => {
                    let q = t.as_row_quant().unwrap();
                    prop_assert_eq!((q.rows(), q.cols()), (*rows, *cols));
                    // Independent error bound: half a quantization step plus
                    // the f16 rounding of the scale.
                    for i in 0..*rows {
                        let row = &values[i * cols..(i + 1) * cols];
                        let max = row.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                        let step = if *q4 { max / 8.0 } else { max / 127.0 };
                        for (j, &want) in row.iter().enumerate() {
                            let err = (q.get(i, j) - want).abs();
                            prop_assert!(err <= 0.5 * step + 2e-3 * max + 1e-6 || (*q4 && want > 0.0 && err <= 1.01 * step),
                                "({i},{j}) {} vs {want}", q.get(i, j));
                        }
                    }
                }
                Spec::Bytes(b) => prop_assert_eq!(t.as_raw_bytes().unwrap(), b.as_slice()),
            }

            // Layer outputs against the float description.
            if let Some((m, n, w, bias)) = dense_of(s) {
                let lin = t.as_linear().unwrap();
                let x: Vec<f32> = (0..n).map(|_| {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                }).collect();
                let mut y = vec![0.0f32; m];
                let mut scratch = vec![0.0f32; lin.scratch_len()];
                lin.forward_ref(&x, &mut y, &mut scratch);
                for i in 0..m {
                    let want: f64 = (0..n).map(|j| w[i * n + j] * f64::from(x[j])).sum::<f64>() + bias[i];
                    let mag: f64 = (0..n).map(|j| (w[i * n + j] * f64::from(x[j])).abs()).sum::<f64>() + bias[i].abs();
                    prop_assert!((f64::from(y[i]) - want).abs() <= 1e-5 * mag + 1e-6, "row {i}: {} vs {want}", y[i]);
                }
                // The dense matrix the layer reports is the described one.
                let mut deq = vec![0.0f32; m * n];
                match t.kind {
                    Kind::Factorized => t.as_factorized().unwrap().dequantize_into(&mut deq),
                    _ => t.as_binary().unwrap().dequantize_into(&mut deq),
                }
                for (a, b) in deq.iter().zip(&w) {
                    prop_assert!((f64::from(*a) - b).abs() <= 1e-6 * b.abs() + 1e-9);
                }
            }
        }
    }
}

#[test]
fn smollm2_attn_q_at_one_bit_has_the_spec_size() {
    // 576×576 at rank 256: sections 18432 + 18432 + 1152 (+ pad) + 1152 = 39168
    // bytes (FORMAT.md §6 worked by hand) → 0.9444 bits per weight.
    let (m, n, r) = (576, 576, 256);
    let l = FactorizedLinear::new(
        SignMatrix::from_fn(m, r, |i, k| (i + k) % 3 == 0),
        SignMatrix::from_fn(r, n, |k, j| (k * j) % 5 == 1),
        F16Vector::from_f32(&vec![0.5; n]),
        F16Vector::from_f32(&vec![0.25; m]),
        None,
    )
    .unwrap();
    let mut b = BlobBuilder::new(config());
    b.add("blk.0.attn_q", TensorPayload::Factorized(l)).unwrap();
    let bytes = b.to_bytes().unwrap();
    // header 64 + config 128 + 1 entry 128 = 320 → header_len 320; tensor at 320.
    assert_eq!(bytes.len(), 320 + 39168);
    let view = Blob::parse(&bytes).unwrap();
    let t = view.find("blk.0.attn_q").unwrap();
    assert_eq!(t.offset, 320);
    assert!((t.bits_per_weight() - 39168.0 * 8.0 / (576.0 * 576.0)).abs() < 1e-12);
}

#[test]
fn a_model_shaped_blob_gives_typed_blocks() {
    let c = ModelConfig {
        n_layers: 1,
        d_model: 32,
        d_ffn: 64,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        vocab_size: 50,
        ..config()
    };
    let lin = |m: usize, n: usize| {
        TensorPayload::Factorized(
            FactorizedLinear::new(
                SignMatrix::from_fn(m, 8, |i, k| (i ^ k) & 1 == 1),
                SignMatrix::from_fn(8, n, |k, j| (k + j) % 3 == 0),
                F16Vector::from_f32(&vec![1.0; n]),
                F16Vector::from_f32(&vec![0.1; m]),
                None,
            )
            .unwrap(),
        )
    };
    let mut b = BlobBuilder::new(c);
    b.add(
        "token_embd",
        TensorPayload::matrix_f16(50, 32, &vec![0.5; 50 * 32]),
    )
    .unwrap();
    b.add("output_norm", TensorPayload::vector_f16(&[1.0; 32]))
        .unwrap();
    for (name, m, n) in [
        ("attn_q", 32, 32),
        ("attn_k", 16, 32),
        ("attn_v", 16, 32),
        ("attn_output", 32, 32),
        ("ffn_gate", 64, 32),
        ("ffn_up", 64, 32),
        ("ffn_down", 32, 64),
    ] {
        b.add(format!("blk.0.{name}"), lin(m, n)).unwrap();
    }
    b.add("blk.0.attn_norm", TensorPayload::vector_f16(&[1.0; 32]))
        .unwrap();
    let bytes_missing_norm = b.to_bytes().unwrap();
    let view = Blob::parse(&bytes_missing_norm).unwrap();
    let err = view.block(0).unwrap_err();
    assert_eq!(err.to_string(), "missing tensor blk.0.ffn_norm");

    b.add("blk.0.ffn_norm", TensorPayload::vector_f16(&[1.0; 32]))
        .unwrap();
    let bytes = b.to_bytes().unwrap();
    let view = Blob::parse(&bytes).unwrap();
    let blk = view.block(0).unwrap();
    assert_eq!(blk.ffn_down.in_features(), 64);
    assert_eq!(blk.attn_k.out_features(), 16);
    assert!(view.block(1).is_err());
    assert!(matches!(
        view.lm_head().unwrap(),
        nq_core::blob::Head::Embedding(_)
    ));
    assert_eq!(view.output_norm().unwrap().len(), 32);
}
