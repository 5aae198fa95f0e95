//! Oracles against dense float arithmetic written out here from the layer
//! definitions (signs as ±1.0, scales as stored in f16).

use super::*;
use crate::{F16Vector, SignMatrix};
use alloc::vec::Vec;
use proptest::prelude::*;

fn f16r(x: f32) -> f64 {
    f64::from(half::f16::from_f32(x).to_f32())
}

fn signs(len: usize) -> impl Strategy<Value = Vec<bool>> {
    proptest::collection::vec(any::<bool>(), len)
}

fn vals(len: usize) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec(prop_oneof![Just(0.0f32), -3.0f32..3.0], len)
}

proptest! {
    #[test]
    fn factorized_oracle_matches_dense_math(
        (m, n, r, u, v, s_pre, s_post, bias, x) in (1usize..24, 1usize..40)
            .prop_flat_map(|(m, n)| (Just(m), Just(n), 1..=m.min(n)))
            .prop_flat_map(|(m, n, r)| (Just(m), Just(n), Just(r), signs(m * r), signs(r * n),
                vals(n), vals(m), proptest::option::of(vals(m)), vals(n)))
    ) {
        let l = FactorizedLinear::new(
            SignMatrix::from_fn(m, r, |i, k| u[i * r + k]),
            SignMatrix::from_fn(r, n, |k, j| v[k * n + j]),
            F16Vector::from_f32(&s_pre),
            F16Vector::from_f32(&s_post),
            bias.as_deref().map(F16Vector::from_f32),
        ).unwrap();
        let mut y = alloc::vec![0.0f32; m];
        let mut t = alloc::vec![0.0f32; r];
        l.forward_ref(&x, &mut y, &mut t);
        let s = |neg: bool| if neg { -1.0 } else { 1.0 };
        for i in 0..m {
            let mut want = 0.0f64;
            let mut mag = 0.0f64;
            for j in 0..n {
                let w: f64 = (0..r).map(|k| s(u[i * r + k]) * s(v[k * n + j])).sum::<f64>()
                    * f16r(s_post[i]) * f16r(s_pre[j]);
                want += w * f64::from(x[j]);
                // The oracle rounds the rank-r intermediate to f32, so the
                // budget counts terms before the ±1 sums cancel.
                mag += r as f64 * (f16r(s_post[i]) * f16r(s_pre[j]) * f64::from(x[j])).abs();
            }
            let b = bias.as_ref().map_or(0.0, |b| f16r(b[i]));
            prop_assert!((f64::from(y[i]) - want - b).abs() <= 1e-5 * (mag + b.abs()) + 1e-6);
        }
    }

    #[test]
    fn binary_oracle_matches_dense_math(
        (m, n, bits, s_col, s_row, x) in (1usize..24, 1usize..70)
            .prop_flat_map(|(m, n)| (Just(m), Just(n), signs(m * n), vals(n), vals(m), vals(n)))
    ) {
        let l = BinaryLinear::new(
            SignMatrix::from_fn(m, n, |i, j| bits[i * n + j]),
            F16Vector::from_f32(&s_col),
            F16Vector::from_f32(&s_row),
            None,
        ).unwrap();
        let mut y = alloc::vec![0.0f32; m];
        let mut scratch = alloc::vec![0.0f32; n];
        l.forward_ref(&x, &mut y, &mut scratch);
        for i in 0..m {
            let terms = (0..n).map(|j| {
                let sg = if bits[i * n + j] { -1.0 } else { 1.0 };
                f16r(s_row[i]) * sg * f16r(s_col[j]) * f64::from(x[j])
            });
            let (want, mag) = terms.fold((0.0, 0.0), |(a, b), t| (a + t, b + t.abs()));
            prop_assert!((f64::from(y[i]) - want).abs() <= 1e-5 * mag + 1e-6);
        }
    }

    #[test]
    fn row_quant_codes_stay_in_range_and_close(
        (rows, cols, values, q4) in (1usize..8, 1usize..33)
            .prop_flat_map(|(r, c)| (Just(r), Just(c), vals(r * c), any::<bool>()))
    ) {
        let bits = if q4 { RowBits::Q4 } else { RowBits::I8 };
        let q = RowQuantTensor::quantize(rows, cols, bits, &values);
        for i in 0..rows {
            let max = values[i * cols..(i + 1) * cols].iter().fold(0.0f32, |a, v| a.max(v.abs()));
            for j in 0..cols {
                let c = q.code(i, j);
                let in_range = if q4 { (-8..=7).contains(&c) } else { (-127..=127).contains(&c) };
                prop_assert!(in_range);
                let step = if q4 { max / 8.0 } else { max / 127.0 };
                // Q4's positive side tops out at 7 steps: allow one step there.
                let err = (q.get(i, j) - values[i * cols + j]).abs();
                let slack = if q4 { 1.01 } else { 0.51 };
                prop_assert!(err <= step * slack + 2e-3 * max + 1e-6);
            }
        }
    }
}

#[test]
fn sign_matrix_round_trips_through_bits() {
    let (rows, cols) = (19, 45);
    let pattern = |i: usize, j: usize| (i * 31 + j * 17) % 7 < 3;
    let m = SignMatrix::from_fn(rows, cols, pattern);
    for i in 0..rows {
        for j in 0..cols {
            assert_eq!(m.is_negative(i, j), pattern(i, j));
        }
    }
    // Padding rows and columns stay zero.
    let bytes = m.as_bytes();
    let cb = crate::sign::col_bytes(cols);
    for i in rows..32 {
        for c in 0..cb {
            assert_eq!(bytes[crate::sign::byte_index(cb, i, c)], 0);
        }
    }
    for i in 0..rows {
        // Columns 45..64 live in bytes 5 (bits 5..) to 7.
        assert_eq!(bytes[crate::sign::byte_index(cb, i, 5)] >> 5, 0);
        assert_eq!(bytes[crate::sign::byte_index(cb, i, 6)], 0);
        assert_eq!(bytes[crate::sign::byte_index(cb, i, 7)], 0);
    }
    let from_floats = SignMatrix::from_signs_of(1, 3, &[-0.0, 0.0, -1e-30]);
    assert_eq!(
        (
            from_floats.sign(0, 0),
            from_floats.sign(0, 1),
            from_floats.sign(0, 2)
        ),
        (1, 1, -1)
    );
}
