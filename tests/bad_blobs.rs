//! The crafted bad-blob corpus: every file in `tests/data/bad-blobs/` breaks
//! exactly one rule of `docs/FORMAT.md`, and the reader must reject it with
//! that rule's [`BlobError`] variant.
//!
//! The expected errors in [`expectations`] are written from the spec (with
//! offsets, lengths and indices computed by hand from the layout of
//! [`base_blob`]), not copied from what the parser happens to return.
//!
//! The files are committed; [`regenerate_bad_blob_corpus`] rebuilds them
//! from a small valid blob made with `BlobBuilder`:
//!
//! ```text
//! cargo test --test bad_blobs -- --ignored regenerate_bad_blob_corpus
//! ```
//!
//! Structural corruptions recompute the header CRC so that the rule under
//! test fires, not the checksum. [`write_fuzz_seeds`] copies the corpus and
//! the valid blob into `fuzz/corpus/parse_blob` (see `docs/FUZZING.md`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use nq_core::blob::{header_crc, Arch, Blob, BlobError, ModelConfig};
use nq_core::layers::{BinaryLinear, FactorizedLinear, RowBits, RowQuantTensor};
use nq_core::{F16Vector, SignMatrix};
use nq_host::{BlobBuilder, TensorPayload};

// ---------------------------------------------------------------------------
// Layout of the base blob, computed by hand from FORMAT.md §2 and §6.
//
//   #  name          kind            shape    sections                   length
//   0  blk.0.attn_k  BINARY + bias   12×20    signs 64, s_col @64 (40),
//                                             s_row @128 (24), bias @192  216
//   1  blk.0.attn_q  FACTORIZED r=4  24×20    U 32·4=128, V @128 16·4=64,
//                                             s_pre @192 (40), s_post @256 304
//   2  output_norm   DENSE f16       20       values 40                    40
//   3  token_embd    ROW_QUANT i8    16×20    codes 320, scales @320 (32) 352
//
// header_len = 192 + 4·128 = 704; offsets 704, 704+256 = 960, 960+320 = 1280,
// 1280+64 = 1344; file_len = 1344 + 384 = 1728.
// ---------------------------------------------------------------------------

const HEADER_LEN: usize = 704;
const FILE_LEN: usize = 1728;
const OFFSETS: [usize; 4] = [704, 960, 1280, 1344];
const LENGTHS: [usize; 4] = [216, 304, 40, 352];

// FileHeader fields (§3), absolute offsets.
const H_VERSION: usize = 8;
const H_HEADER_LEN: usize = 12;
const H_N_TENSORS: usize = 16;
const H_CONFIG_LEN: usize = 20;
const H_FILE_LEN: usize = 24;
const H_CRC: usize = 32;
const H_FLAGS: usize = 36;
const H_RESERVED: usize = 40;

// ModelConfig fields (§4), absolute offsets (the record starts at 64).
const C_ARCH: usize = 64;
const C_N_LAYERS: usize = 68;
const C_D_MODEL: usize = 72;
const C_D_FFN: usize = 76;
const C_N_HEADS: usize = 80;
const C_N_KV_HEADS: usize = 84;
const C_HEAD_DIM: usize = 88;
const C_VOCAB: usize = 92;
const C_MAX_SEQ: usize = 96;
const C_ROPE_THETA: usize = 100;
const C_NORM_EPS: usize = 104;
const C_FLAGS: usize = 108;
const C_BOS: usize = 112;
const C_EOS: usize = 116;
const C_RESERVED: usize = 120;

// TensorEntry fields (§5), relative to the entry.
const TABLE: usize = 192;
const ENTRY: usize = 128;
const E_KIND: usize = 48;
const E_DTYPE: usize = 50;
const E_FLAGS: usize = 52;
const E_NDIM: usize = 56;
const E_DIM0: usize = 60;
const E_DIM1: usize = 64;
const E_RANK: usize = 68;
const E_OFFSET: usize = 72;
const E_LENGTH: usize = 80;
const E_CRC: usize = 88;
const E_RESERVED: usize = 92;

const MAX_DIM: u32 = 1 << 24;
const MAX_VOCAB: u32 = 1 << 22;

/// Where the stored corpus lives.
fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad-blobs")
}

// ---------------------------------------------------------------------------
// Expectations: file name → the error the spec requires.
// ---------------------------------------------------------------------------

/// Which reader call must report the error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// `Blob::parse` rejects the file.
    Parse,
    /// `Blob::parse` accepts it and `BlobView::verify` rejects it.
    Verify,
}

struct Case {
    file: &'static str,
    stage: Stage,
    expect: fn(&BlobError) -> bool,
    pattern: &'static str,
}

macro_rules! case {
    ($file:literal, $stage:ident, $pat:pat) => {
        Case {
            file: $file,
            stage: Stage::$stage,
            expect: |e| matches!(e, $pat),
            pattern: stringify!($pat),
        }
    };
}

/// The table of expected errors, one row per file in the corpus.
fn expectations() -> Vec<Case> {
    use BlobError as E;
    vec![
        // §3 FileHeader: size, magic, version, lengths.
        case!("empty.nqb", Parse, E::TooShort { len: 0 }),
        case!("too_short_63.nqb", Parse, E::TooShort { len: 63 }),
        case!(
            "truncated_in_table.nqb",
            Parse,
            E::Truncated {
                expected: 1728,
                actual: 400
            }
        ),
        case!(
            "truncated_tail.nqb",
            Parse,
            E::Truncated {
                expected: 1728,
                actual: 1500
            }
        ),
        case!("bad_magic.nqb", Parse, E::BadMagic),
        case!("bad_magic_text_mode.nqb", Parse, E::BadMagic),
        case!("version_0.nqb", Parse, E::UnsupportedVersion(0)),
        case!("version_2.nqb", Parse, E::UnsupportedVersion(2)),
        case!("config_len_64.nqb", Parse, E::BadConfigLen(64)),
        case!("n_tensors_4097.nqb", Parse, E::TooManyTensors(4097)),
        case!("n_tensors_u32_max.nqb", Parse, E::TooManyTensors(u32::MAX)),
        case!(
            "header_len_mismatch.nqb",
            Parse,
            E::HeaderLenMismatch {
                found: 768,
                expected: 704
            }
        ),
        case!(
            "header_len_with_padding.nqb",
            Parse,
            E::HeaderLenMismatch {
                found: 768,
                expected: 704
            }
        ),
        case!(
            "file_len_over_max.nqb",
            Parse,
            E::TooLarge(1_099_511_627_840)
        ),
        case!("file_len_u64_max.nqb", Parse, E::TooLarge(u64::MAX)),
        case!(
            "file_len_past_eof.nqb",
            Parse,
            E::Truncated {
                expected: 1792,
                actual: 1728
            }
        ),
        case!(
            "trailing_garbage.nqb",
            Parse,
            E::TrailingBytes {
                expected: 1728,
                actual: 1792
            }
        ),
        case!(
            "trailing_declared.nqb",
            Parse,
            E::TrailingBytes {
                expected: 1728,
                actual: 1792
            }
        ),
        case!("header_crc_flipped.nqb", Parse, E::HeaderCrcMismatch { .. }),
        case!("header_crc_stale.nqb", Parse, E::HeaderCrcMismatch { .. }),
        case!(
            "header_flags.nqb",
            Parse,
            E::Reserved {
                field: "header.flags"
            }
        ),
        case!(
            "header_reserved.nqb",
            Parse,
            E::Reserved {
                field: "header.reserved"
            }
        ),
        // §4 ModelConfig.
        case!("arch_0.nqb", Parse, E::UnknownArch(0)),
        case!("arch_4.nqb", Parse, E::UnknownArch(4)),
        case!(
            "config_flags_reserved.nqb",
            Parse,
            E::Reserved {
                field: "config.flags"
            }
        ),
        case!(
            "config_reserved.nqb",
            Parse,
            E::Reserved {
                field: "config.reserved"
            }
        ),
        case!(
            "config_n_layers_0.nqb",
            Parse,
            E::BadConfig { field: "n_layers" }
        ),
        case!(
            "config_n_layers_over_max.nqb",
            Parse,
            E::BadConfig { field: "n_layers" }
        ),
        case!(
            "config_d_model_0.nqb",
            Parse,
            E::BadConfig { field: "d_model" }
        ),
        case!(
            "config_d_ffn_over_max.nqb",
            Parse,
            E::BadConfig { field: "d_ffn" }
        ),
        case!(
            "config_n_heads_0.nqb",
            Parse,
            E::BadConfig { field: "n_heads" }
        ),
        case!(
            "config_n_kv_heads_0.nqb",
            Parse,
            E::BadConfig {
                field: "n_kv_heads"
            }
        ),
        case!(
            "config_n_kv_heads_not_divisor.nqb",
            Parse,
            E::BadConfig {
                field: "n_kv_heads"
            }
        ),
        case!(
            "config_head_dim_odd.nqb",
            Parse,
            E::BadConfig { field: "head_dim" }
        ),
        case!(
            "config_q_dim_over_max.nqb",
            Parse,
            E::BadConfig { field: "head_dim" }
        ),
        case!(
            "config_vocab_over_max.nqb",
            Parse,
            E::BadConfig {
                field: "vocab_size"
            }
        ),
        case!(
            "config_max_seq_len_0.nqb",
            Parse,
            E::BadConfig {
                field: "max_seq_len"
            }
        ),
        case!(
            "config_rope_theta_nan.nqb",
            Parse,
            E::BadConfig {
                field: "rope_theta"
            }
        ),
        case!(
            "config_rope_theta_negative.nqb",
            Parse,
            E::BadConfig {
                field: "rope_theta"
            }
        ),
        case!(
            "config_norm_eps_0.nqb",
            Parse,
            E::BadConfig { field: "norm_eps" }
        ),
        case!(
            "config_norm_eps_inf.nqb",
            Parse,
            E::BadConfig { field: "norm_eps" }
        ),
        case!(
            "config_bos_eq_vocab.nqb",
            Parse,
            E::BadConfig { field: "bos_id" }
        ),
        case!(
            "config_eos_over_vocab.nqb",
            Parse,
            E::BadConfig { field: "eos_id" }
        ),
        // §5 TensorEntry: names.
        case!("name_empty.nqb", Parse, E::BadName { index: 1 }),
        case!("name_control_char.nqb", Parse, E::BadName { index: 2 }),
        case!("name_space.nqb", Parse, E::BadName { index: 2 }),
        case!("name_non_ascii.nqb", Parse, E::BadName { index: 3 }),
        case!("name_garbage_after_nul.nqb", Parse, E::BadName { index: 0 }),
        case!("name_no_nul.nqb", Parse, E::BadName { index: 3 }),
        case!("name_duplicate.nqb", Parse, E::DuplicateName { index: 2 }),
        case!(
            "names_not_sorted.nqb",
            Parse,
            E::NamesNotSorted { index: 3 }
        ),
        // §5/§6: kind, dtype, shape, rank, flags, length.
        case!("kind_0.nqb", Parse, E::UnknownKind { index: 2, kind: 0 }),
        case!("kind_6.nqb", Parse, E::UnknownKind { index: 1, kind: 6 }),
        case!("dtype_0.nqb", Parse, E::UnknownDtype { index: 3, dtype: 0 }),
        case!("dtype_7.nqb", Parse, E::UnknownDtype { index: 0, dtype: 7 }),
        case!(
            "kind_dtype_factorized_f16.nqb",
            Parse,
            E::KindDtypeMismatch { index: 1 }
        ),
        case!(
            "kind_dtype_dense_sign.nqb",
            Parse,
            E::KindDtypeMismatch { index: 2 }
        ),
        case!(
            "kind_dtype_row_quant_f32.nqb",
            Parse,
            E::KindDtypeMismatch { index: 3 }
        ),
        case!("ndim_0.nqb", Parse, E::BadNdim { index: 2 }),
        case!("ndim_3.nqb", Parse, E::BadNdim { index: 3 }),
        case!("dim0_zero.nqb", Parse, E::BadDim { index: 3 }),
        case!("dim1_zero.nqb", Parse, E::BadDim { index: 1 }),
        case!("dim0_over_max.nqb", Parse, E::BadDim { index: 2 }),
        case!("vector_dim1_not_1.nqb", Parse, E::BadDim { index: 2 }),
        case!("rank_0.nqb", Parse, E::BadRank { index: 1 }),
        case!("rank_over_min.nqb", Parse, E::BadRank { index: 1 }),
        case!("rank_on_dense.nqb", Parse, E::BadRank { index: 2 }),
        case!("rank_on_binary.nqb", Parse, E::BadRank { index: 0 }),
        case!(
            "flags_bias_on_dense.nqb",
            Parse,
            E::BadTensorFlags { index: 2 }
        ),
        case!(
            "flags_bias_on_row_quant.nqb",
            Parse,
            E::BadTensorFlags { index: 3 }
        ),
        case!(
            "flags_unknown_bit.nqb",
            Parse,
            E::BadTensorFlags { index: 0 }
        ),
        case!(
            "tensor_reserved.nqb",
            Parse,
            E::Reserved {
                field: "tensor.reserved"
            }
        ),
        case!(
            "length_plus_one.nqb",
            Parse,
            E::LengthMismatch {
                index: 3,
                expected: 352,
                found: 353
            }
        ),
        case!(
            "length_bias_flag_cleared.nqb",
            Parse,
            E::LengthMismatch {
                index: 0,
                expected: 152,
                found: 216
            }
        ),
        // §2: offsets and padding.
        case!("offset_misaligned.nqb", Parse, E::Misaligned { index: 1 }),
        case!("offset_overlap.nqb", Parse, E::Overlap { index: 1 }),
        case!("offset_into_header.nqb", Parse, E::Overlap { index: 0 }),
        case!("offset_hole.nqb", Parse, E::Hole { index: 1 }),
        case!("offset_past_eof.nqb", Parse, E::OutOfBounds { index: 3 }),
        case!("offset_overflow.nqb", Parse, E::OutOfBounds { index: 3 }),
        case!(
            "missing_final_padding.nqb",
            Parse,
            E::OutOfBounds { index: 3 }
        ),
        case!(
            "padding_between_tensors.nqb",
            Parse,
            E::NonZeroPadding { offset: 950 }
        ),
        case!(
            "padding_after_vector.nqb",
            Parse,
            E::NonZeroPadding { offset: 1320 }
        ),
        case!(
            "padding_after_last_tensor.nqb",
            Parse,
            E::NonZeroPadding { offset: 1727 }
        ),
        // §9: tensor CRCs are verify's job.
        case!(
            "tensor_crc_data.nqb",
            Verify,
            E::TensorCrcMismatch { index: 3 }
        ),
        case!(
            "tensor_crc_field.nqb",
            Verify,
            E::TensorCrcMismatch { index: 1 }
        ),
        case!(
            "tensor_crc_section_padding.nqb",
            Verify,
            E::TensorCrcMismatch { index: 1 }
        ),
        case!(
            "tensor_crc_sign_padding.nqb",
            Verify,
            E::TensorCrcMismatch { index: 0 }
        ),
    ]
}

// ---------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------

fn corpus_files() -> BTreeSet<String> {
    let dir = corpus_dir();
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {dir:?}: {e}")) {
        let name = entry.expect("directory entry").file_name();
        let name = name.to_str().expect("UTF-8 file name").to_owned();
        if name.ends_with(".nqb") {
            names.insert(name);
        }
    }
    names
}

#[test]
fn folder_and_table_list_the_same_files() {
    let table: BTreeSet<String> = expectations().iter().map(|c| c.file.to_owned()).collect();
    assert_eq!(
        table.len(),
        expectations().len(),
        "a file name appears twice in the table"
    );
    let on_disk = corpus_files();
    let missing: Vec<_> = table.difference(&on_disk).collect();
    let unexpected: Vec<_> = on_disk.difference(&table).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "corpus and table disagree; in the table only: {missing:?}; on disk only: {unexpected:?} \
         (regenerate with `cargo test --test bad_blobs -- --ignored regenerate_bad_blob_corpus`)"
    );
    assert!(on_disk.len() >= 30, "only {} bad blobs", on_disk.len());
}

#[test]
fn every_bad_blob_is_rejected_for_its_rule() {
    let dir = corpus_dir();
    let mut failures = Vec::new();
    for case in expectations() {
        let bytes = fs::read(dir.join(case.file))
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", case.file));
        let got = match (case.stage, Blob::parse(&bytes)) {
            (Stage::Parse, Ok(_)) => Err("parse accepted it".to_owned()),
            (Stage::Parse, Err(e)) => Ok(e),
            (Stage::Verify, Err(e)) => Err(format!("parse rejected it with {e:?}")),
            (Stage::Verify, Ok(view)) => view
                .verify()
                .err()
                .ok_or_else(|| "verify accepted it".to_owned()),
        };
        match got {
            Ok(e) if (case.expect)(&e) => {
                let msg = e.to_string();
                if msg.chars().next().is_some_and(char::is_uppercase) {
                    failures.push(format!("{}: message not lower-case: {msg}", case.file));
                }
            }
            Ok(e) => failures.push(format!(
                "{}: expected {}, got {e:?}",
                case.file, case.pattern
            )),
            Err(why) => failures.push(format!(
                "{}: expected {} from {:?}, but {why}",
                case.file, case.pattern, case.stage
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad blob(s) misjudged:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Files whose header CRC is wrong or cannot be computed on purpose; every
/// other file keeps a valid header CRC so its own rule is what fires.
const CRC_NOT_KEPT: &[&str] = &[
    "empty.nqb",
    "too_short_63.nqb",
    "truncated_in_table.nqb",
    "bad_magic_text_mode.nqb",
    "header_crc_flipped.nqb",
    "header_crc_stale.nqb",
];

#[test]
fn structural_corruptions_keep_the_header_crc_valid() {
    for name in corpus_files() {
        if CRC_NOT_KEPT.contains(&name.as_str()) {
            continue;
        }
        let bytes = fs::read(corpus_dir().join(&name)).expect("read bad blob");
        let region = (get_u32(&bytes, H_HEADER_LEN) as usize).min(bytes.len());
        assert_eq!(
            header_crc(&bytes[..region]),
            Some(get_u32(&bytes, H_CRC)),
            "{name}: header CRC is not valid"
        );
    }
}

#[test]
fn base_blob_layout_matches_the_spec() {
    let blob = base_blob();
    assert_eq!(blob.len(), FILE_LEN);
    let view = Blob::parse(&blob).expect("base blob parses");
    view.verify().expect("base blob verifies");
    assert_eq!(view.header_len(), HEADER_LEN);
    let placed: Vec<(usize, usize)> = view
        .tensors()
        .map(|t| (t.offset as usize, t.data.len()))
        .collect();
    let expected: Vec<(usize, usize)> = OFFSETS.into_iter().zip(LENGTHS).collect();
    assert_eq!(placed, expected);
}

/// Rebuilds `tests/data/bad-blobs/` from [`base_blob`].
#[test]
#[ignore = "writes the committed corpus; run on purpose"]
fn regenerate_bad_blob_corpus() {
    let dir = corpus_dir();
    fs::create_dir_all(&dir).expect("create corpus dir");
    let corpus = bad_blobs();
    let generated: BTreeSet<String> = corpus.iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(generated.len(), corpus.len(), "duplicate file name");
    let table: BTreeSet<String> = expectations().iter().map(|c| c.file.to_owned()).collect();
    assert_eq!(generated, table, "generator and table disagree");
    for stale in corpus_files().difference(&generated) {
        fs::remove_file(dir.join(stale)).expect("remove stale file");
    }
    for (name, bytes) in &corpus {
        fs::write(dir.join(name), bytes).expect("write bad blob");
    }
}

/// Seeds both fuzz targets' corpora (`fuzz/corpus/{parse_blob,
/// parse_blob_crc_fixed}`) with the valid base blob plus every bad blob.
#[test]
#[ignore = "writes fuzz/corpus; see docs/FUZZING.md"]
fn write_fuzz_seeds() {
    for target in ["parse_blob", "parse_blob_crc_fixed"] {
        let out = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        fs::create_dir_all(&out).expect("create fuzz corpus dir");
        fs::write(out.join("valid.nqb"), base_blob()).expect("write valid seed");
        for name in corpus_files() {
            fs::copy(corpus_dir().join(&name), out.join(&name)).expect("copy seed");
        }
    }
}

// ---------------------------------------------------------------------------
// The generator.
// ---------------------------------------------------------------------------

/// Deterministic pseudo-random values in [-1, 1).
fn values(seed: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|k| ((k * 37 + seed * 11) % 23) as f32 / 11.5 - 1.0)
        .collect()
}

fn config() -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        n_layers: 1,
        d_model: 20,
        d_ffn: 32,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 6,
        vocab_size: 16,
        max_seq_len: 64,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        tied_embeddings: true,
        attn_bias: false,
        qk_norm: false,
        bos_id: Some(1),
        eos_id: Some(2),
    }
}

/// The valid blob every bad blob starts from (layout at the top of the file).
fn base_blob() -> Vec<u8> {
    let pos = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| 0.5 + x.abs()).collect() };
    let binary = BinaryLinear::new(
        SignMatrix::from_fn(12, 20, |i, j| (i * 7 + j * 3) % 5 < 2),
        F16Vector::from_f32(&pos(values(1, 20))),
        F16Vector::from_f32(&pos(values(2, 12))),
        Some(F16Vector::from_f32(&values(3, 12))),
    )
    .expect("binary parts agree");
    let factorized = FactorizedLinear::new(
        SignMatrix::from_fn(24, 4, |i, k| (i + 2 * k) % 3 == 0),
        SignMatrix::from_fn(4, 20, |k, j| (k * 5 + j) % 4 == 1),
        F16Vector::from_f32(&pos(values(4, 20))),
        F16Vector::from_f32(&pos(values(5, 24))),
        None,
    )
    .expect("factorized parts agree");
    let mut b = BlobBuilder::new(config());
    b.add("blk.0.attn_k", TensorPayload::Binary(binary))
        .and_then(|b| b.add("blk.0.attn_q", TensorPayload::Factorized(factorized)))
        .and_then(|b| {
            b.add(
                "output_norm",
                TensorPayload::vector_f16(&pos(values(6, 20))),
            )
        })
        .and_then(|b| {
            b.add(
                "token_embd",
                TensorPayload::RowQuant(RowQuantTensor::quantize(
                    16,
                    20,
                    RowBits::I8,
                    &values(7, 320),
                )),
            )
        })
        .expect("valid tensors");
    b.to_bytes().expect("valid blob")
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_f32(b: &mut [u8], at: usize, v: f32) {
    put_u32(b, at, v.to_bits());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Absolute offset of field `field` of entry `index`.
fn entry(index: usize, field: usize) -> usize {
    TABLE + index * ENTRY + field
}

/// Sets entry `index`'s name field (48 bytes, zero-filled).
fn put_name(b: &mut [u8], index: usize, name: &[u8]) {
    let at = entry(index, 0);
    b[at..at + 48].fill(0);
    b[at..at + name.len()].copy_from_slice(name);
}

/// Recomputes the header CRC over `[0, header_len)` as the header states it
/// (or over the real header region when that value is out of range), so a
/// structural corruption is reported as itself, not as a CRC mismatch.
fn fix_header_crc(b: &mut [u8]) {
    let stated = get_u32(b, H_HEADER_LEN) as usize;
    let region = if (H_CRC + 4..=b.len()).contains(&stated) {
        stated
    } else {
        HEADER_LEN.min(b.len())
    };
    let crc = header_crc(&b[..region]).expect("region holds the crc field");
    put_u32(b, H_CRC, crc);
}

/// A copy of `base` changed by `f`, header CRC recomputed.
fn edit(base: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = base.to_vec();
    f(&mut b);
    fix_header_crc(&mut b);
    b
}

/// A copy of `base` changed by `f`, header CRC left as it was.
fn edit_raw(base: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = base.to_vec();
    f(&mut b);
    b
}

/// Lays the base blob's tensors out again in `order` (indices may repeat),
/// with `header_pad` zero bytes after the table and, for `hole = Some((at,
/// len))`, `len` zero bytes before the tensor at position `at`; every offset, `n_tensors`,
/// `header_len`, `file_len` and the header CRC are rewritten to match, so
/// only the rule under test is broken.
fn relayout(
    base: &[u8],
    order: &[usize],
    header_pad: usize,
    hole: Option<(usize, usize)>,
) -> Vec<u8> {
    let n = order.len();
    let header_len = TABLE + n * ENTRY + header_pad;
    let mut out = base[..TABLE].to_vec();
    for &i in order {
        out.extend_from_slice(&base[entry(i, 0)..entry(i + 1, 0)]);
    }
    out.resize(header_len, 0);
    for (pos, &i) in order.iter().enumerate() {
        if let Some((_, len)) = hole.filter(|&(at, _)| at == pos) {
            out.resize(out.len() + len, 0);
        }
        let offset = out.len();
        put_u64(&mut out, entry(pos, E_OFFSET), offset as u64);
        out.extend_from_slice(&base[OFFSETS[i]..OFFSETS[i] + LENGTHS[i]]);
        out.resize(out.len().next_multiple_of(64), 0);
    }
    put_u32(&mut out, H_N_TENSORS, n as u32);
    put_u32(&mut out, H_HEADER_LEN, header_len as u32);
    let file_len = out.len() as u64;
    put_u64(&mut out, H_FILE_LEN, file_len);
    fix_header_crc(&mut out);
    out
}

/// Every bad blob, by file name.
fn bad_blobs() -> Vec<(&'static str, Vec<u8>)> {
    let base = base_blob();
    let b = base.as_slice();
    let u32_at = |at: usize, v: u32| edit(b, move |x| put_u32(x, at, v));
    let f32_at = |at: usize, v: f32| edit(b, move |x| put_f32(x, at, v));
    let e_u16 = |i: usize, f: usize, v: u16| edit(b, move |x| put_u16(x, entry(i, f), v));
    let e_u32 = |i: usize, f: usize, v: u32| edit(b, move |x| put_u32(x, entry(i, f), v));
    let e_u64 = |i: usize, f: usize, v: u64| edit(b, move |x| put_u64(x, entry(i, f), v));
    let name = |i: usize, n: &'static [u8]| edit(b, move |x| put_name(x, i, n));
    let byte = |at: usize, v: u8| edit(b, move |x| x[at] = v);
    let mut with_trailer = base.clone();
    with_trailer.extend_from_slice(&[0; 64]);
    let mut garbage = base.clone();
    garbage.extend(b"garbage!".iter().cycle().take(64));
    let mut text_mode = base.clone();
    text_mode.remove(4); // "\r\n" → "\n", as a text-mode transfer does

    vec![
        // §3 FileHeader.
        ("empty.nqb", Vec::new()),
        ("too_short_63.nqb", b[..63].to_vec()),
        ("truncated_in_table.nqb", b[..400].to_vec()),
        ("truncated_tail.nqb", b[..1500].to_vec()),
        ("bad_magic.nqb", byte(1, b'n')),
        ("bad_magic_text_mode.nqb", text_mode),
        ("version_0.nqb", u32_at(H_VERSION, 0)),
        ("version_2.nqb", u32_at(H_VERSION, 2)),
        ("config_len_64.nqb", u32_at(H_CONFIG_LEN, 64)),
        ("n_tensors_4097.nqb", u32_at(H_N_TENSORS, 4097)),
        ("n_tensors_u32_max.nqb", u32_at(H_N_TENSORS, u32::MAX)),
        ("header_len_mismatch.nqb", u32_at(H_HEADER_LEN, 768)),
        (
            "header_len_with_padding.nqb",
            relayout(b, &[0, 1, 2, 3], 64, None),
        ),
        (
            "file_len_over_max.nqb",
            edit(b, |x| put_u64(x, H_FILE_LEN, (1 << 40) + 64)),
        ),
        (
            "file_len_u64_max.nqb",
            edit(b, |x| put_u64(x, H_FILE_LEN, u64::MAX)),
        ),
        (
            "file_len_past_eof.nqb",
            edit(b, |x| put_u64(x, H_FILE_LEN, 1792)),
        ),
        ("trailing_garbage.nqb", garbage),
        (
            "trailing_declared.nqb",
            edit(&with_trailer, |x| put_u64(x, H_FILE_LEN, 1792)),
        ),
        ("header_crc_flipped.nqb", edit_raw(b, |x| x[H_CRC] ^= 1)),
        (
            "header_crc_stale.nqb",
            edit_raw(b, |x| put_u32(x, C_MAX_SEQ, 65)),
        ),
        ("header_flags.nqb", u32_at(H_FLAGS, 1)),
        ("header_reserved.nqb", byte(H_RESERVED + 23, 1)),
        // §4 ModelConfig.
        ("arch_0.nqb", u32_at(C_ARCH, 0)),
        ("arch_4.nqb", u32_at(C_ARCH, 4)),
        ("config_flags_reserved.nqb", u32_at(C_FLAGS, 1 | 1 << 3)),
        ("config_reserved.nqb", byte(C_RESERVED + 40, 0x80)),
        ("config_n_layers_0.nqb", u32_at(C_N_LAYERS, 0)),
        ("config_n_layers_over_max.nqb", u32_at(C_N_LAYERS, 1025)),
        ("config_d_model_0.nqb", u32_at(C_D_MODEL, 0)),
        ("config_d_ffn_over_max.nqb", u32_at(C_D_FFN, MAX_DIM + 1)),
        ("config_n_heads_0.nqb", u32_at(C_N_HEADS, 0)),
        ("config_n_kv_heads_0.nqb", u32_at(C_N_KV_HEADS, 0)),
        ("config_n_kv_heads_not_divisor.nqb", u32_at(C_N_KV_HEADS, 3)),
        ("config_head_dim_odd.nqb", u32_at(C_HEAD_DIM, 7)),
        ("config_q_dim_over_max.nqb", u32_at(C_HEAD_DIM, 1 << 23)),
        ("config_vocab_over_max.nqb", u32_at(C_VOCAB, MAX_VOCAB + 1)),
        ("config_max_seq_len_0.nqb", u32_at(C_MAX_SEQ, 0)),
        ("config_rope_theta_nan.nqb", f32_at(C_ROPE_THETA, f32::NAN)),
        (
            "config_rope_theta_negative.nqb",
            f32_at(C_ROPE_THETA, -10_000.0),
        ),
        ("config_norm_eps_0.nqb", f32_at(C_NORM_EPS, 0.0)),
        ("config_norm_eps_inf.nqb", f32_at(C_NORM_EPS, f32::INFINITY)),
        ("config_bos_eq_vocab.nqb", u32_at(C_BOS, 16)),
        ("config_eos_over_vocab.nqb", u32_at(C_EOS, 1000)),
        // §5 names.
        ("name_empty.nqb", name(1, b"")),
        ("name_control_char.nqb", name(2, b"output\x07norm")),
        ("name_space.nqb", name(2, b"output norm")),
        ("name_non_ascii.nqb", name(3, "token_embé".as_bytes())),
        (
            "name_garbage_after_nul.nqb",
            byte(entry(0, 40), b'x'), // "blk.0.attn_k\0…\0x\0…"
        ),
        (
            "name_no_nul.nqb",
            name(3, &[b'z'; 48]), // 48 printable bytes, no terminating zero
        ),
        ("name_duplicate.nqb", relayout(b, &[0, 1, 1, 2, 3], 0, None)),
        ("names_not_sorted.nqb", relayout(b, &[0, 1, 3, 2], 0, None)),
        // §5/§6 kind, dtype, shape, rank, flags, length.
        ("kind_0.nqb", e_u16(2, E_KIND, 0)),
        ("kind_6.nqb", e_u16(1, E_KIND, 6)),
        ("dtype_0.nqb", e_u16(3, E_DTYPE, 0)),
        ("dtype_7.nqb", e_u16(0, E_DTYPE, 7)),
        ("kind_dtype_factorized_f16.nqb", e_u16(1, E_DTYPE, 2)),
        ("kind_dtype_dense_sign.nqb", e_u16(2, E_DTYPE, 5)),
        ("kind_dtype_row_quant_f32.nqb", e_u16(3, E_DTYPE, 1)),
        ("ndim_0.nqb", e_u32(2, E_NDIM, 0)),
        ("ndim_3.nqb", e_u32(3, E_NDIM, 3)),
        ("dim0_zero.nqb", e_u32(3, E_DIM0, 0)),
        ("dim1_zero.nqb", e_u32(1, E_DIM1, 0)),
        ("dim0_over_max.nqb", e_u32(2, E_DIM0, MAX_DIM + 1)),
        ("vector_dim1_not_1.nqb", e_u32(2, E_DIM1, 2)),
        ("rank_0.nqb", e_u32(1, E_RANK, 0)),
        ("rank_over_min.nqb", e_u32(1, E_RANK, 21)),
        ("rank_on_dense.nqb", e_u32(2, E_RANK, 1)),
        ("rank_on_binary.nqb", e_u32(0, E_RANK, 4)),
        ("flags_bias_on_dense.nqb", e_u32(2, E_FLAGS, 1)),
        ("flags_bias_on_row_quant.nqb", e_u32(3, E_FLAGS, 1)),
        ("flags_unknown_bit.nqb", e_u32(0, E_FLAGS, 0b11)),
        ("tensor_reserved.nqb", byte(entry(1, E_RESERVED + 35), 1)),
        ("length_plus_one.nqb", e_u64(3, E_LENGTH, 353)),
        ("length_bias_flag_cleared.nqb", e_u32(0, E_FLAGS, 0)),
        // §2 offsets and padding.
        ("offset_misaligned.nqb", e_u64(1, E_OFFSET, 961)),
        ("offset_overlap.nqb", e_u64(1, E_OFFSET, 896)),
        ("offset_into_header.nqb", e_u64(0, E_OFFSET, 640)),
        (
            "offset_hole.nqb",
            relayout(b, &[0, 1, 2, 3], 0, Some((1, 64))),
        ),
        ("offset_past_eof.nqb", e_u64(3, E_OFFSET, FILE_LEN as u64)),
        ("offset_overflow.nqb", e_u64(3, E_OFFSET, u64::MAX - 63)),
        (
            "missing_final_padding.nqb",
            edit(&b[..1696], |x| put_u64(x, H_FILE_LEN, 1696)),
        ),
        ("padding_between_tensors.nqb", byte(950, 0x5A)),
        ("padding_after_vector.nqb", byte(1320, 0x01)),
        ("padding_after_last_tensor.nqb", byte(1727, 0x01)),
        // §9 tensor CRCs.
        ("tensor_crc_data.nqb", edit_raw(b, |x| x[1344 + 5] ^= 0x10)),
        (
            "tensor_crc_field.nqb",
            edit(b, |x| x[entry(1, E_CRC) + 3] ^= 0x80),
        ),
        // attn_q: s_pre ends at 192 + 40 = 232, s_post starts at 256.
        ("tensor_crc_section_padding.nqb", byte(960 + 240, 0xFF)),
        // attn_k: signs 12×20 padded to 16 rows; byte(13, 0) = 13.
        ("tensor_crc_sign_padding.nqb", byte(704 + 13, 0x01)),
    ]
}
