//! Damage a valid blob every way a transfer or a flash can, and check that
//! the reader notices without ever panicking:
//!
//! * every strict prefix is rejected by `Blob::parse` (§3: `file_len`);
//! * every single-bit flip is caught — by `parse` in the header region and
//!   in padding (header CRC, §1 rule 3), by `verify` inside a tensor (its
//!   CRC, §9) — and every single-byte substitution in the file header,
//!   config and first table entry is caught by `parse`;
//! * random bytes, and the valid blob with random bytes overwritten (with
//!   and without a recomputed header CRC), never make the reader or the
//!   typed accessors panic.

use std::sync::OnceLock;

use nq_core::blob::{header_crc, Arch, Blob, BlobError, BlobView, ModelConfig};
use nq_core::layers::{BinaryLinear, FactorizedLinear, Linear, RowBits, RowQuantTensor};
use nq_core::{F16Vector, SignMatrix};
use nq_host::{BlobBuilder, TensorPayload};
use proptest::prelude::*;

/// Byte offset of `header_crc` (FORMAT.md §3).
const H_CRC: usize = 32;
/// Byte offset of `header_len`.
const H_HEADER_LEN: usize = 12;

fn values(seed: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|k| ((k * 29 + seed * 13) % 31) as f32 / 15.5 - 1.0)
        .collect()
}

fn positive(seed: usize, len: usize) -> Vec<f32> {
    values(seed, len)
        .into_iter()
        .map(|x| 0.25 + x.abs())
        .collect()
}

fn f16s(values: &[f32]) -> F16Vector<Vec<u8>> {
    F16Vector::from_f32(values)
}

/// Sign matrix with a deterministic pattern.
fn signs(rows: usize, cols: usize, seed: usize) -> SignMatrix<Vec<u8>> {
    SignMatrix::from_fn(rows, cols, |i, j| (i * 7 + j * 3 + seed) % 5 < 2)
}

fn factorized(m: usize, n: usize, r: usize, bias: bool, seed: usize) -> TensorPayload {
    let layer = FactorizedLinear::new(
        signs(m, r, seed),
        signs(r, n, seed + 1),
        f16s(&positive(seed, n)),
        f16s(&positive(seed + 1, m)),
        bias.then(|| f16s(&values(seed + 2, m))),
    )
    .expect("factorized parts agree");
    TensorPayload::Factorized(layer)
}

fn binary(m: usize, n: usize, bias: bool, seed: usize) -> TensorPayload {
    let layer = BinaryLinear::new(
        signs(m, n, seed),
        f16s(&positive(seed, n)),
        f16s(&positive(seed + 1, m)),
        bias.then(|| f16s(&values(seed + 2, m))),
    )
    .expect("binary parts agree");
    TensorPayload::Binary(layer)
}

fn row_quant(rows: usize, cols: usize, bits: RowBits, seed: usize) -> TensorPayload {
    let q = RowQuantTensor::quantize(rows, cols, bits, &values(seed, rows * cols));
    TensorPayload::RowQuant(q)
}

/// The config of [`valid_blob`]: a one-layer qwen2 with q/k/v biases.
fn config() -> ModelConfig {
    ModelConfig {
        arch: Arch::Qwen2,
        n_layers: 1,
        d_model: 32,
        d_ffn: 48,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        vocab_size: 32,
        max_seq_len: 128,
        rope_theta: 1_000_000.0,
        norm_eps: 1e-6,
        tied_embeddings: false,
        attn_bias: true,
        qk_norm: false,
        bos_id: None,
        eos_id: Some(31),
    }
}

/// A small valid blob (about 6 KB): a complete one-layer model with every
/// tensor kind (FACTORIZED and BINARY with and without bias, DENSE vectors
/// and a matrix, ROW_QUANT i8 and q4, BYTES), padded sign tiles, padding
/// between sections and between tensors.
fn valid_blob() -> Vec<u8> {
    static BLOB: OnceLock<Vec<u8>> = OnceLock::new();
    BLOB.get_or_init(|| {
        let (d, q, kv, f, v) = (32, 32, 16, 48, 32);
        let tensors = [
            ("blk.0.attn_k", binary(kv, d, true, 1)),
            (
                "blk.0.attn_norm",
                TensorPayload::vector_f16(&positive(2, d)),
            ),
            ("blk.0.attn_output", binary(d, q, false, 3)),
            ("blk.0.attn_q", factorized(q, d, 4, true, 4)),
            ("blk.0.attn_v", factorized(kv, d, 3, true, 5)),
            ("blk.0.ffn_down", factorized(d, f, 6, false, 6)),
            ("blk.0.ffn_gate", factorized(f, d, 5, false, 7)),
            ("blk.0.ffn_norm", TensorPayload::vector_f16(&positive(8, d))),
            ("blk.0.ffn_up", binary(f, d, false, 9)),
            (
                "blk.0.probe",
                TensorPayload::matrix_f16(3, 21, &values(10, 63)),
            ),
            ("output", row_quant(v, d, RowBits::Q4, 11)),
            ("output_norm", TensorPayload::vector_f16(&positive(12, d))),
            ("token_embd", row_quant(v, d, RowBits::I8, 13)),
            (
                "tokenizer.json",
                TensorPayload::Bytes(b"{\"v\":1}".repeat(13)),
            ),
        ];
        let mut b = BlobBuilder::new(config());
        for (name, payload) in tensors {
            b.add(name, payload).expect("valid tensor");
        }
        b.to_bytes().expect("valid blob")
    })
    .clone()
}

/// Seeds both fuzz targets with this complete one-layer model, which
/// reaches the `block`/`lm_head` paths that the bad-blob corpus's base blob
/// does not.
#[test]
#[ignore = "writes fuzz/corpus; see docs/FUZZING.md"]
fn write_fuzz_seeds() {
    for target in ["parse_blob", "parse_blob_crc_fixed"] {
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        std::fs::create_dir_all(&out).expect("create fuzz corpus dir");
        std::fs::write(out.join("full_model.nqb"), valid_blob()).expect("write seed");
    }
}

/// What a corruption at one byte offset must produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    /// Header, config, table: `parse` fails.
    Header,
    /// Inside tensor `index`: `parse` succeeds, `verify` reports that tensor.
    Tensor(u32),
    /// Zero padding after a tensor: `parse` reports this very byte.
    Padding,
}

/// The region of every byte of the valid blob, from its own table.
fn regions(blob: &[u8]) -> Vec<Region> {
    let view = Blob::parse(blob).expect("valid blob parses");
    let mut map = vec![Region::Padding; blob.len()];
    map[..view.header_len()].fill(Region::Header);
    for t in view.tensors() {
        let start = t.offset as usize;
        map[start..start + t.data.len()].fill(Region::Tensor(t.index));
    }
    map
}

/// Touches everything a runtime would touch; must never panic.
fn exercise(view: &BlobView<'_>) {
    let _ = view.verify();
    for t in view.tensors() {
        let _ = (t.bits_per_weight(), t.crc_ok(), t.section_count());
        for k in 0..t.section_count() + 1 {
            let _ = t.section(k);
        }
        let _ = (t.as_embedding(), t.as_dense(), t.as_raw_bytes());
        if let Ok(linear) = t.as_linear() {
            let (m, n) = (linear.out_features(), linear.in_features());
            if m * n <= 1 << 16 {
                let x = vec![0.5f32; n];
                let mut y = vec![0.0f32; m];
                let mut scratch = vec![0.0f32; linear.scratch_len()];
                linear.forward_ref(&x, &mut y, &mut scratch);
            }
            if let Linear::Factorized(f) = linear {
                let _ = f.rank();
            }
        }
        assert_eq!(view.find(t.name).map(|f| f.index), Some(t.index));
    }
    let _ = view.block(0);
    let _ = view.lm_head();
    let _ = view.token_embd();
    let _ = view.output_norm();
}

/// Parses and, if that works, exercises; never panics.
fn parse_and_exercise(bytes: &[u8]) {
    if let Ok(view) = Blob::parse(bytes) {
        exercise(&view);
    }
}

#[test]
fn valid_blob_parses_verifies_and_runs() {
    let blob = valid_blob();
    assert!(
        (4096..8192).contains(&blob.len()),
        "blob is {} bytes",
        blob.len()
    );
    let view = Blob::parse(&blob).expect("parses");
    view.verify().expect("verifies");
    assert_eq!(view.len(), 14);
    view.block(0).expect("complete block");
    view.lm_head().expect("untied head");
    view.token_embd().expect("embedding");
    view.output_norm().expect("final norm");
    exercise(&view);
    // Every kind of region occurs, so the flip test below covers all three.
    let map = regions(&blob);
    assert!(map.contains(&Region::Padding));
    assert!(map.contains(&Region::Tensor(13)));
}

#[test]
fn every_strict_prefix_is_rejected() {
    let blob = valid_blob();
    for len in 0..blob.len() {
        let err = Blob::parse(&blob[..len]).expect_err("a strict prefix must be rejected");
        if len < 64 {
            assert_eq!(err, BlobError::TooShort { len }, "prefix of {len} bytes");
        } else {
            assert_eq!(
                err,
                BlobError::Truncated {
                    expected: blob.len() as u64,
                    actual: len
                },
                "prefix of {len} bytes"
            );
        }
    }
}

#[test]
fn every_single_bit_flip_is_detected() {
    let mut blob = valid_blob();
    let map = regions(&blob);
    for (pos, &region) in map.iter().enumerate() {
        for bit in 0..8 {
            blob[pos] ^= 1 << bit;
            match (region, Blob::parse(&blob)) {
                (Region::Header, Ok(_)) => panic!("flip of bit {bit} at {pos} (header) parsed"),
                (Region::Header, Err(_)) => {}
                (Region::Padding, r) => assert_eq!(
                    r.err(),
                    Some(BlobError::NonZeroPadding { offset: pos as u64 }),
                    "flip of bit {bit} at {pos} (padding)"
                ),
                (Region::Tensor(index), Err(e)) => {
                    panic!("flip of bit {bit} at {pos} (tensor {index}) failed to parse: {e:?}")
                }
                (Region::Tensor(index), Ok(view)) => assert_eq!(
                    view.verify(),
                    Err(BlobError::TensorCrcMismatch { index }),
                    "flip of bit {bit} at {pos} (tensor {index})"
                ),
            }
            blob[pos] ^= 1 << bit;
        }
    }
    assert!(Blob::parse(&blob).expect("restored").verify().is_ok());
}

/// Every value of every byte of the file header, the config and the first
/// table entry (the fields with the most distinct rules); the bit flips
/// above already cover the rest of the header region.
#[test]
fn every_byte_substitution_in_the_header_fields_is_rejected() {
    let mut blob = valid_blob();
    for pos in 0..192 + 128 {
        let original = blob[pos];
        for delta in 1..=255u8 {
            blob[pos] = original ^ delta;
            assert!(
                Blob::parse(&blob).is_err(),
                "byte {pos} set to {:#04x} was accepted",
                blob[pos]
            );
        }
        blob[pos] = original;
    }
}

/// Recomputes the header CRC over the region the header states, when that
/// region is inside the buffer, so a corruption reaches the later checks.
fn fix_header_crc(bytes: &mut [u8]) {
    let Some(field) = bytes.get(H_HEADER_LEN..H_HEADER_LEN + 4) else {
        return;
    };
    let stated = u32::from_le_bytes(field.try_into().expect("4 bytes")) as usize;
    if let Some(crc) = bytes.get(..stated).and_then(header_crc) {
        bytes[H_CRC..H_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8192))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        parse_and_exercise(&bytes);
    }

    #[test]
    fn random_tail_after_a_valid_header_never_panics(
        keep in 0usize..2048,
        tail in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let mut bytes = valid_blob();
        bytes.truncate(keep);
        bytes.extend_from_slice(&tail);
        parse_and_exercise(&bytes);
        fix_header_crc(&mut bytes);
        parse_and_exercise(&bytes);
    }

    #[test]
    fn overwritten_bytes_never_panic(
        writes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        header_only in any::<bool>(),
    ) {
        let mut bytes = valid_blob();
        let header_len = Blob::parse(&bytes).expect("valid").header_len();
        let span = if header_only { header_len } else { bytes.len() };
        for (at, value) in &writes {
            bytes[at.index(span)] = *value;
        }
        parse_and_exercise(&bytes);
        // Again with the header CRC made to match, so the corruption reaches
        // the config, table and offset checks and, if it passes them, the
        // typed accessors.
        fix_header_crc(&mut bytes);
        parse_and_exercise(&bytes);
    }

    #[test]
    fn overwritten_table_fields_never_panic(
        index in 0usize..14,
        field in prop::sample::select(vec![48usize, 50, 52, 56, 60, 64, 68, 72, 80]),
        value in prop_oneof![
            Just(0u64), Just(1), Just(2), Just(64), Just(u64::from(u32::MAX)), Just(u64::MAX),
            Just(1 << 24), Just((1 << 24) + 1), Just(1 << 40), any::<u64>(), 0u64..10_000,
        ],
    ) {
        let mut bytes = valid_blob();
        let at = 192 + index * 128 + field;
        let width = match field { 48 | 50 => 2, 72 | 80 => 8, _ => 4 };
        bytes[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        fix_header_crc(&mut bytes);
        parse_and_exercise(&bytes);
    }
}
