//! The GGUF reader and loader against hand-written files (every value type,
//! a tiny llama/qwen model, crafted bad files, every truncation) and, when
//! `scripts/fetch-assets.sh` has run, against the real SmolLM2 GGUF.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use nq_host::gguf::{GgmlType, GgufError, GgufFile, GgufType, GgufValue, MAX_METADATA_VALUES};
use nq_host::model::load_gguf::{load_gguf_file, permute_rope_rows};
use nq_host::model::{load_gguf, Arch, LoadError, Matrix, ModelError};

// ---------------------------------------------------------------------------
// A minimal GGUF writer, written from the format description.

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn type_id(t: GgufType) -> u32 {
    use GgufType::*;
    match t {
        U8 => 0,
        I8 => 1,
        U16 => 2,
        I16 => 3,
        U32 => 4,
        I32 => 5,
        F32 => 6,
        Bool => 7,
        String => 8,
        Array => 9,
        U64 => 10,
        I64 => 11,
        F64 => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend(x.to_le_bytes()),
        GgufValue::U16(x) => out.extend(x.to_le_bytes()),
        GgufValue::I16(x) => out.extend(x.to_le_bytes()),
        GgufValue::U32(x) => out.extend(x.to_le_bytes()),
        GgufValue::I32(x) => out.extend(x.to_le_bytes()),
        GgufValue::F32(x) => out.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array { elem, items } => {
            out.extend(type_id(*elem).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        GgufValue::U64(x) => out.extend(x.to_le_bytes()),
        GgufValue::I64(x) => out.extend(x.to_le_bytes()),
        GgufValue::F64(x) => out.extend(x.to_le_bytes()),
    }
}

struct Tensor {
    name: String,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

#[derive(Default)]
struct Writer {
    kv: Vec<(String, GgufValue)>,
    tensors: Vec<Tensor>,
}

impl Writer {
    fn kv(mut self, key: &str, v: GgufValue) -> Self {
        self.kv.push((key.to_string(), v));
        self
    }

    fn tensor(mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors.push(Tensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            data,
        });
        self
    }

    /// An f32 tensor of `dims` (fastest first) from row-major values.
    fn f32_tensor(self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, 0, data)
    }

    fn build(&self) -> Vec<u8> {
        let align = match self.kv.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, GgufValue::U32(a))) => *a as usize,
            _ => 32,
        };
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut out, k);
            out.extend(type_id(v.ty()).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len()).div_ceil(align) * align;
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        let data_start = out.len();
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend(&t.data);
        }
        out
    }
}

fn s(x: &str) -> GgufValue {
    GgufValue::String(x.to_string())
}

fn strs(xs: &[&str]) -> GgufValue {
    GgufValue::Array {
        elem: GgufType::String,
        items: xs.iter().map(|x| s(x)).collect(),
    }
}

fn open(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(bytes)
}

// ---------------------------------------------------------------------------
// Metadata and tensor directory.

fn every_value_type() -> Vec<(&'static str, GgufValue)> {
    vec![
        ("t.u8", GgufValue::U8(200)),
        ("t.i8", GgufValue::I8(-100)),
        ("t.u16", GgufValue::U16(60_000)),
        ("t.i16", GgufValue::I16(-30_000)),
        ("t.u32", GgufValue::U32(4_000_000_000)),
        ("t.i32", GgufValue::I32(-2_000_000_000)),
        ("t.f32", GgufValue::F32(1.25e-5)),
        ("t.bool", GgufValue::Bool(true)),
        ("t.string", s("héllo ✓")),
        ("t.u64", GgufValue::U64(u64::MAX)),
        ("t.i64", GgufValue::I64(i64::MIN)),
        ("t.f64", GgufValue::F64(-0.1)),
        ("t.strs", strs(&["a", "", "Ġthe", "<|im_end|>"])),
        (
            "t.i32s",
            GgufValue::Array {
                elem: GgufType::I32,
                items: vec![GgufValue::I32(1), GgufValue::I32(-6)],
            },
        ),
        (
            "t.empty",
            GgufValue::Array {
                elem: GgufType::F32,
                items: vec![],
            },
        ),
        (
            "t.nested",
            GgufValue::Array {
                elem: GgufType::Array,
                items: vec![strs(&["x"]), strs(&[])],
            },
        ),
    ]
}

#[test]
fn every_value_type_round_trips() {
    let mut w = Writer::default();
    for (k, v) in every_value_type() {
        w = w.kv(k, v);
    }
    let f = open(w.build()).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    let md = f.metadata();
    let want = every_value_type();
    assert_eq!(md.len(), want.len());
    for ((k, v), (wk, wv)) in md.iter().zip(&want) {
        assert_eq!((k, v), (*wk, wv));
    }
    assert_eq!(md.get_str("t.string").unwrap(), "héllo ✓");
    assert_eq!(md.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(md.get_i32("t.i8").unwrap(), -100);
    assert_eq!(md.get_f32("t.f32").unwrap(), 1.25e-5);
    assert!(md.get_bool("t.bool").unwrap());
    assert_eq!(
        md.get_str_array("t.strs").unwrap(),
        ["a", "", "Ġthe", "<|im_end|>"]
    );
    assert_eq!(md.get_i32_array("t.i32s").unwrap(), [1, -6]);
    assert!(md.get_f32_array("t.empty").unwrap().is_empty());
    assert!(f.tensors().is_empty());
}

#[test]
fn tensors_are_placed_and_dequantized() {
    let q8: Vec<u8> = [0x00, 0x3c] // d = 1.0
        .into_iter()
        .chain((0..32).map(|i| i as u8))
        .collect();
    let f = open(
        Writer::default()
            .kv("general.alignment", GgufValue::U32(64))
            .f32_tensor("a", &[3], &[1.0, 2.0, 3.0])
            .tensor("b", &[32, 1], 8, q8)
            .build(),
    )
    .unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    let b = f.tensor_info("b").unwrap();
    assert_eq!(
        (b.ty, b.offset, b.n_elements, b.n_bytes),
        (GgmlType::Q8_0, 64, 32, 34)
    );
    assert_eq!(b.shape(), [1, 32]);
    assert_eq!(f.dequantize("a").unwrap(), [1.0, 2.0, 3.0]);
    let bv = f.dequantize("b").unwrap();
    assert_eq!(bv, (0..32).map(|i| i as f32).collect::<Vec<_>>());
    assert!(matches!(f.dequantize("c"), Err(GgufError::MissingTensor(n)) if n == "c"));
}

// ---------------------------------------------------------------------------
// Crafted bad files: the error names what is wrong, nothing panics.

fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(n_tensors.to_le_bytes());
    out.extend(n_kv.to_le_bytes());
    out
}

fn err_of(bytes: Vec<u8>) -> String {
    open(bytes).unwrap_err().to_string()
}

#[test]
fn bad_files_are_rejected_with_a_named_reason() {
    let mut b = header(0, 0);
    b[0] = b'X';
    assert!(err_of(b).contains("not a GGUF file"));
    let mut b = header(0, 0);
    b[4] = 1;
    assert!(err_of(b).contains("version 1"));
    assert!(err_of(header(u64::MAX, 0)).contains("tensor count"));
    assert!(err_of(header(3, 0)).contains("truncated"));
    assert!(err_of(header(0, 1 << 19)).contains("truncated"));

    // Unknown value type, bad bool, duplicate key, bad UTF-8.
    let mut b = header(0, 1);
    put_str(&mut b, "k.x");
    b.extend(13u32.to_le_bytes());
    let e = err_of(b);
    assert!(
        e.contains("k.x") && e.contains("unknown value type 13"),
        "{e}"
    );
    let mut b = header(0, 1);
    put_str(&mut b, "k.b");
    b.extend(7u32.to_le_bytes());
    b.push(2);
    assert!(err_of(b).contains("k.b"));
    let dup = Writer::default()
        .kv("k", GgufValue::U8(1))
        .kv("k", GgufValue::U8(2));
    assert!(err_of(dup.build()).contains("duplicate metadata key \"k\""));
    let mut b = header(0, 1);
    put_str(&mut b, "k.s");
    b.extend(8u32.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    b.extend([0xff, 0xfe]);
    let e = err_of(b);
    assert!(e.contains("k.s") && e.contains("UTF-8"), "{e}");

    // A huge array count must fail before allocating.
    let mut b = header(0, 1);
    put_str(&mut b, "k.arr");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(u64::MAX.to_le_bytes());
    assert!(err_of(b).contains("k.arr"));
    // So must one above the total element budget, even with the bytes there.
    let mut b = header(0, 1);
    put_str(&mut b, "k.big");
    b.extend(9u32.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend((MAX_METADATA_VALUES + 1).to_le_bytes());
    b.resize(b.len() + MAX_METADATA_VALUES as usize + 1, 0);
    let e = err_of(b);
    assert!(
        e.contains("k.big") && e.contains("exceeds the limit"),
        "{e}"
    );

    // Arrays nested too deep.
    let mut v = GgufValue::U8(0);
    for _ in 0..6 {
        v = GgufValue::Array {
            elem: v.ty(),
            items: vec![v],
        };
    }
    let e = err_of(Writer::default().kv("deep", v).build());
    assert!(e.contains("deep") && e.contains("nested"), "{e}");

    // Alignment not a power of two / not a u32.
    let w = Writer::default().kv("general.alignment", GgufValue::U32(24));
    assert!(err_of(w.build()).contains("general.alignment"));
    let w = Writer::default().kv("general.alignment", GgufValue::U64(32));
    assert!(err_of(w.build()).contains("general.alignment"));
}

#[test]
fn bad_tensor_infos_name_the_tensor() {
    let one = |dims: &[u64], ty: u32, data: Vec<u8>| {
        err_of(Writer::default().tensor("blk.7.w", dims, ty, data).build())
    };
    let e = one(&[], 0, vec![]);
    assert!(e.contains("blk.7.w") && e.contains("0 dimensions"), "{e}");
    let e = one(&[1, 1, 1, 1, 1], 0, vec![0; 4]);
    assert!(e.contains("5 dimensions"), "{e}");
    let e = one(&[4], 99, vec![]);
    assert!(
        e.contains("blk.7.w") && e.contains("unknown ggml type 99"),
        "{e}"
    );
    let e = one(&[16], 8, vec![0; 34]);
    assert!(e.contains("blk.7.w") && e.contains("block size"), "{e}");
    let e = one(&[u64::MAX, 2], 0, vec![]);
    assert!(e.contains("blk.7.w") && e.contains("overflow"), "{e}");
    let e = one(&[9], 0, vec![0; 32]);
    assert!(e.contains("blk.7.w") && e.contains("run past"), "{e}");

    // A tensor offset that is not aligned.
    let mut b = Writer::default().f32_tensor("t", &[1], &[1.0]).build();
    // header (24) + name "t" (8 + 1) + n_dims (4) + one dim (8) + type (4)
    b[24 + 9 + 4 + 8 + 4] = 4; // offset 4
    let e = err_of(b);
    assert!(e.contains("\"t\"") && e.contains("alignment"), "{e}");

    // Duplicate tensor names and overlong names.
    let dup = Writer::default()
        .f32_tensor("t", &[1], &[1.0])
        .f32_tensor("t", &[1], &[1.0]);
    assert!(err_of(dup.build()).contains("duplicate tensor name"));
    let long = "x".repeat(65);
    let e = err_of(Writer::default().f32_tensor(&long, &[1], &[1.0]).build());
    assert!(e.contains("name of tensor #0"), "{e}");
}

#[test]
fn every_truncation_and_byte_flip_is_an_error_not_a_panic() {
    let bytes = tiny_model(Arch::Llama).build();
    for len in 0..bytes.len() {
        let cut = bytes[..len].to_vec();
        assert!(open(cut).is_err(), "truncated at {len} parsed");
    }
    // Flip bits everywhere in the header region and in some data; the
    // result may parse (e.g. a changed value) but must never panic, and a
    // file that parses must load or fail cleanly.
    let header_len = open(bytes.clone()).unwrap().data_offset();
    for pos in (0..header_len).chain((header_len..bytes.len()).step_by(97)) {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[pos] ^= mask;
            if let Ok(f) = open(b) {
                let _ = load_gguf_file(&f);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// A tiny model through `load_gguf`.

const D: usize = 8;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 4;
const FFN: usize = 12;
const VOCAB: usize = 5;

/// Deterministic distinct values for tensor number `k`.
fn values(k: usize, n: usize) -> Vec<f32> {
    (0..n).map(|i| (k * 1000 + i) as f32 * 0.001).collect()
}

fn hf_matrix(k: usize, rows: usize, cols: usize) -> Matrix {
    Matrix::new(rows, cols, values(k, rows * cols)).unwrap()
}

/// A 2-layer model as a converter would write it: Q/K rows (and biases)
/// permuted for llama, as stored for qwen.
fn tiny_model(arch: Arch) -> Writer {
    let a = arch.name();
    let mut w = Writer::default()
        .kv("general.architecture", s(a))
        .kv(&format!("{a}.block_count"), GgufValue::U32(2))
        .kv(&format!("{a}.context_length"), GgufValue::U32(64))
        .kv(&format!("{a}.embedding_length"), GgufValue::U32(D as u32))
        .kv(
            &format!("{a}.feed_forward_length"),
            GgufValue::U32(FFN as u32),
        )
        .kv(
            &format!("{a}.attention.head_count"),
            GgufValue::U32(HEADS as u32),
        )
        .kv(
            &format!("{a}.attention.head_count_kv"),
            GgufValue::U32(KV_HEADS as u32),
        )
        .kv(&format!("{a}.rope.freq_base"), GgufValue::F32(5e4))
        .kv(
            &format!("{a}.attention.layer_norm_rms_epsilon"),
            GgufValue::F32(1e-6),
        )
        .kv("tokenizer.ggml.model", s("gpt2"))
        .kv("tokenizer.ggml.tokens", strs(&["a", "b", "c", "d", "e"]))
        .kv("tokenizer.ggml.merges", strs(&["a b"]))
        .kv("tokenizer.ggml.bos_token_id", GgufValue::U32(1))
        .kv("tokenizer.ggml.eos_token_id", GgufValue::I32(2));
    let dims = |rows: usize, cols: usize| [cols as u64, rows as u64];
    let perm = |m: &Matrix, heads: usize| match arch {
        Arch::Llama => permute_rope_rows(&m.data, m.cols, heads, HEAD_DIM),
        _ => m.data.clone(),
    };
    let emb = hf_matrix(1, VOCAB, D);
    w = w
        .f32_tensor("token_embd.weight", &dims(VOCAB, D), &emb.data)
        .f32_tensor("output_norm.weight", &[D as u64], &values(2, D));
    for l in 0..2 {
        let k = 100 * (l + 1);
        let n = |x: &str| format!("blk.{l}.{x}");
        let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
        w = w
            .f32_tensor(&n("attn_norm.weight"), &[D as u64], &values(k, D))
            .f32_tensor(
                &n("attn_q.weight"),
                &dims(q, D),
                &perm(&hf_matrix(k + 1, q, D), HEADS),
            )
            .f32_tensor(
                &n("attn_k.weight"),
                &dims(kv, D),
                &perm(&hf_matrix(k + 2, kv, D), KV_HEADS),
            )
            .f32_tensor(&n("attn_v.weight"), &dims(kv, D), &values(k + 3, kv * D))
            .f32_tensor(&n("attn_output.weight"), &dims(D, q), &values(k + 4, D * q))
            .f32_tensor(&n("ffn_norm.weight"), &[D as u64], &values(k + 5, D))
            .f32_tensor(
                &n("ffn_gate.weight"),
                &dims(FFN, D),
                &values(k + 6, FFN * D),
            )
            .f32_tensor(&n("ffn_up.weight"), &dims(FFN, D), &values(k + 7, FFN * D))
            .f32_tensor(
                &n("ffn_down.weight"),
                &dims(D, FFN),
                &values(k + 8, D * FFN),
            );
        if arch == Arch::Qwen2 {
            w = w
                .f32_tensor(&n("attn_q.bias"), &[q as u64], &values(k + 9, q))
                .f32_tensor(&n("attn_k.bias"), &[kv as u64], &values(k + 10, kv))
                .f32_tensor(&n("attn_v.bias"), &[kv as u64], &values(k + 11, kv));
        }
        if arch == Arch::Qwen3 {
            w = w
                .f32_tensor(
                    &n("attn_q_norm.weight"),
                    &[HEAD_DIM as u64],
                    &values(k + 12, HEAD_DIM),
                )
                .f32_tensor(
                    &n("attn_k_norm.weight"),
                    &[HEAD_DIM as u64],
                    &values(k + 13, HEAD_DIM),
                );
        }
    }
    w
}

#[test]
fn tiny_llama_loads_in_hf_layout() {
    let f = open(tiny_model(Arch::Llama).build()).unwrap();
    let m = load_gguf_file(&f).unwrap();
    let c = m.config;
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!((c.n_layers, c.d_model, c.d_ffn), (2, D as u32, FFN as u32));
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (2, 1, 4));
    assert_eq!((c.vocab_size, c.max_seq_len), (VOCAB as u32, 64));
    assert_eq!((c.rope_theta, c.norm_eps), (5e4, 1e-6));
    assert_eq!((c.bos_id, c.eos_id), (Some(1), Some(2)));
    assert!(c.tied_embeddings && !c.attn_bias && !c.qk_norm);
    assert!(m.output.is_none());
    assert_eq!(m.token_embd, hf_matrix(1, VOCAB, D));
    for (l, layer) in m.layers.iter().enumerate() {
        let k = 100 * (l + 1);
        assert_eq!(
            layer.wq,
            hf_matrix(k + 1, HEADS * HEAD_DIM, D),
            "layer {l} wq"
        );
        assert_eq!(
            layer.wk,
            hf_matrix(k + 2, KV_HEADS * HEAD_DIM, D),
            "layer {l} wk"
        );
        assert_eq!(layer.wv.data, values(k + 3, KV_HEADS * HEAD_DIM * D));
        assert_eq!((layer.wo.rows, layer.wo.cols), (D, HEADS * HEAD_DIM));
        assert_eq!((layer.w_down.rows, layer.w_down.cols), (D, FFN));
        assert_eq!(layer.w_down.data, values(k + 8, D * FFN));
    }
}

#[test]
fn tiny_qwen_models_keep_rows_and_load_extras() {
    let q2 = load_gguf_file(&open(tiny_model(Arch::Qwen2).build()).unwrap()).unwrap();
    assert!(q2.config.attn_bias && !q2.config.qk_norm);
    let l = &q2.layers[1];
    assert_eq!(l.wq, hf_matrix(201, HEADS * HEAD_DIM, D));
    assert_eq!(l.bq.as_deref(), Some(&values(209, HEADS * HEAD_DIM)[..]));
    assert_eq!(l.bv.as_deref(), Some(&values(211, KV_HEADS * HEAD_DIM)[..]));

    let q3 = load_gguf_file(&open(tiny_model(Arch::Qwen3).build()).unwrap()).unwrap();
    assert!(q3.config.qk_norm && !q3.config.attn_bias);
    assert_eq!(
        q3.layers[0].k_norm.as_deref(),
        Some(&values(113, HEAD_DIM)[..])
    );
}

#[test]
fn loader_errors() {
    // Unknown architecture.
    let mut w = tiny_model(Arch::Llama);
    w.kv[0].1 = s("mamba");
    let e = load_gguf_file(&open(w.build()).unwrap()).unwrap_err();
    assert!(
        matches!(e, LoadError::Model(ModelError::UnsupportedArch(ref a)) if a == "mamba"),
        "{e}"
    );
    // A missing tensor.
    let mut w = tiny_model(Arch::Llama);
    w.tensors.retain(|t| t.name != "blk.1.ffn_up.weight");
    let e = load_gguf_file(&open(w.build()).unwrap()).unwrap_err();
    assert!(e.to_string().contains("blk.1.ffn_up.weight"), "{e}");
    // A transposed tensor.
    let mut w = tiny_model(Arch::Llama);
    let t = w
        .tensors
        .iter_mut()
        .find(|t| t.name == "blk.0.ffn_down.weight")
        .unwrap();
    t.dims.reverse();
    let e = load_gguf_file(&open(w.build()).unwrap()).unwrap_err();
    assert!(
        matches!(e, LoadError::Model(ModelError::Shape { ref name, .. }) if name == "blk.0.ffn_down.weight"),
        "{e}"
    );
    // A missing hyper-parameter.
    let mut w = tiny_model(Arch::Llama);
    w.kv.retain(|(k, _)| k != "llama.feed_forward_length");
    let e = load_gguf_file(&open(w.build()).unwrap()).unwrap_err();
    assert!(e.to_string().contains("llama.feed_forward_length"), "{e}");
    // Rope scaling is refused rather than silently ignored.
    let w = tiny_model(Arch::Llama).kv("llama.rope.scaling.type", s("yarn"));
    let e = load_gguf_file(&open(w.build()).unwrap()).unwrap_err();
    assert!(e.to_string().contains("yarn"), "{e}");
    // A non-finite weight.
    let mut w = tiny_model(Arch::Llama);
    let t = w
        .tensors
        .iter_mut()
        .find(|t| t.name == "output_norm.weight")
        .unwrap();
    t.data[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    let e = load_gguf_file(&open(w.build()).unwrap()).unwrap_err();
    assert!(
        matches!(e, LoadError::Model(ModelError::NonFinite { index: 1, .. })),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// The real SmolLM2-135M-Instruct GGUF (assets/, see scripts/fetch-assets.sh).

fn smollm2() -> Option<PathBuf> {
    common::asset("SmolLM2-135M-Instruct.Q4_1.gguf")
}

#[test]
fn smollm2_metadata_and_tensor_types() {
    let Some(path) = smollm2() else { return };
    let f = GgufFile::open(&path).unwrap();
    let md = f.metadata();
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(md.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(md.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(md.get_u32("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(md.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(md.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(md.get_f32("llama.rope.freq_base").unwrap(), 100_000.0);
    assert_eq!(
        md.get_f32("llama.attention.layer_norm_rms_epsilon")
            .unwrap(),
        1e-5
    );
    let tok = f.tokenizer_data().unwrap();
    assert_eq!(tok.model, "gpt2");
    assert_eq!(tok.pre.as_deref(), Some("smollm"));
    assert_eq!(tok.tokens.len(), 49_152);
    assert_eq!(tok.merges.len(), 48_900);
    assert_eq!(tok.token_types.as_ref().map(Vec::len), Some(49_152));
    assert_eq!((tok.bos_id, tok.eos_id), (Some(1), Some(2)));
    assert_eq!(tok.add_bos, Some(false));

    assert_eq!(f.tensors().len(), 272);
    assert!(f.tensor_info("output.weight").is_none());
    let emb = f.tensor_info("token_embd.weight").unwrap();
    assert_eq!(
        (emb.ty, emb.dims.as_slice()),
        (GgmlType::Q8_0, &[576, 49_152][..])
    );
    let count = |ty| f.tensors().iter().filter(|t| t.ty == ty).count();
    assert_eq!(count(GgmlType::Q4_1), 210);
    assert_eq!(count(GgmlType::F32), 61);
    for t in f.tensors() {
        let want = if t.name.ends_with("norm.weight") {
            GgmlType::F32
        } else if t.name == "token_embd.weight" {
            GgmlType::Q8_0
        } else {
            GgmlType::Q4_1
        };
        assert_eq!(t.ty, want, "{}", t.name);
    }
    let q = f.tensor_info("blk.29.attn_q.weight").unwrap();
    assert_eq!(q.shape(), [576, 576]);
    let k = f.tensor_info("blk.0.attn_k.weight").unwrap();
    assert_eq!(k.shape(), [192, 576]);
}

#[test]
fn smollm2_loads_and_validates() {
    let Some(path) = smollm2() else { return };
    let t = Instant::now();
    let m = load_gguf(&path).unwrap();
    eprintln!("load_gguf(SmolLM2-135M Q4_1): {:?}", t.elapsed());
    let c = m.config;
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!((c.n_layers, c.d_model, c.d_ffn), (30, 576, 1536));
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (9, 3, 64));
    assert_eq!((c.vocab_size, c.max_seq_len), (49_152, 8192));
    assert_eq!((c.rope_theta, c.norm_eps), (100_000.0, 1e-5));
    assert_eq!((c.bos_id, c.eos_id), (Some(1), Some(2)));
    assert!(c.tied_embeddings && !c.attn_bias && !c.qk_norm);
    let linears: usize = m
        .layers
        .iter()
        .map(|l| {
            [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                .iter()
                .map(|w| w.data.len())
                .sum::<usize>()
        })
        .sum();
    let norms = m.output_norm.len()
        + m.layers
            .iter()
            .map(|l| l.attn_norm.len() + l.ffn_norm.len())
            .sum::<usize>();
    let total = linears + norms + m.token_embd.data.len();
    // 134.5M parameters (EVAL.md).
    assert_eq!(total, 134_515_008);

    // The Q rows really were re-ordered: HF row i of head 0 is GGUF row 2i.
    let f = GgufFile::open(&path).unwrap();
    let raw = f.dequantize("blk.3.attn_q.weight").unwrap();
    let l3 = &m.layers[3];
    assert_eq!(l3.wq.row(1), &raw[2 * 576..3 * 576]);
    assert_eq!(l3.wq.row(32), &raw[576..2 * 576]);
    let raw_k = f.dequantize("blk.3.attn_k.weight").unwrap();
    assert_eq!(l3.wk.row(64 + 33), &raw_k[(64 + 3) * 576..(64 + 4) * 576]);
}
