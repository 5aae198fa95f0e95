//! The `nq-host` binary as users run it: output, exit codes, error lines.

use std::path::Path;
use std::process::{Command, Output};

use nq_core::blob::{Arch, ModelConfig};
use nq_core::layers::{BinaryLinear, FactorizedLinear};
use nq_core::{F16Vector, SignMatrix};
use nq_host::{BlobBuilder, TensorPayload};

fn nq_host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nq-host"))
        .args(args)
        .output()
        .expect("run nq-host")
}

fn config() -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        n_layers: 1,
        d_model: 64,
        d_ffn: 128,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        vocab_size: 100,
        max_seq_len: 256,
        rope_theta: 100000.0,
        norm_eps: 1e-5,
        tied_embeddings: true,
        attn_bias: false,
        qk_norm: false,
        bos_id: None,
        eos_id: Some(2),
    }
}

/// A blob with one 64×64 rank-32 factorized layer, one 128×64 binary layer,
/// a 100×64 f16 embedding and a 64-vector.
fn write_blob(path: &Path) -> Vec<u8> {
    let mut b = BlobBuilder::new(config());
    let fact = FactorizedLinear::new(
        SignMatrix::from_fn(64, 32, |i, k| (i + k) % 2 == 0),
        SignMatrix::from_fn(32, 64, |k, j| (k * 7 + j) % 3 == 0),
        F16Vector::from_f32(&[0.5; 64]),
        F16Vector::from_f32(&[0.25; 64]),
        None,
    )
    .unwrap();
    let bin = BinaryLinear::new(
        SignMatrix::from_fn(128, 64, |i, j| (i ^ j) & 4 == 0),
        F16Vector::from_f32(&[1.0; 64]),
        F16Vector::from_f32(&[0.1; 128]),
        Some(F16Vector::from_f32(&[0.0; 128])),
    )
    .unwrap();
    b.add("blk.0.attn_q", TensorPayload::Factorized(fact))
        .unwrap();
    b.add("blk.0.ffn_up", TensorPayload::Binary(bin)).unwrap();
    b.add(
        "token_embd",
        TensorPayload::matrix_f16(100, 64, &vec![0.01; 6400]),
    )
    .unwrap();
    b.add("output_norm", TensorPayload::vector_f16(&[1.0; 64]))
        .unwrap();
    b.write_file(path).unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn inspect_prints_config_tensors_and_totals() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.nqb");
    let bytes = write_blob(&path);
    let out = nq_host(&["inspect", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("architecture    llama"));
    assert!(text.contains("heads           4 (kv 2, head_dim 16)"));
    // attn_q: U 64×32 → 4 tiles·16·4 = 256 B, V 32×64 → 2·16·8 = 256 B,
    // s_pre 128 B at 512, s_post 128 B at 640 → 768 B = 1.5 bits/weight.
    let q = text
        .lines()
        .find(|l| l.starts_with("blk.0.attn_q"))
        .unwrap();
    let cols: Vec<&str> = q.split_whitespace().collect();
    assert_eq!(
        cols,
        [
            "blk.0.attn_q",
            "factorized",
            "sign",
            "64x64",
            "32",
            "768",
            "1.500"
        ]
    );
    // ffn_up: signs 128×64 = 1024 B; s_col 128 B at 1024; s_row 256 B at
    // 1152; bias 256 B at 1408 → 1664 B for 8192 weights = 1.625 bits/weight.
    let up = text
        .lines()
        .find(|l| l.starts_with("blk.0.ffn_up"))
        .unwrap();
    assert!(
        up.contains("binary+b") && up.contains("1664") && up.contains("1.625"),
        "{up}"
    );
    // Decoder linears: (768 + 1664)·8 / (4096 + 8192) bits.
    assert!(
        text.contains("2432 bytes for 12288 weights = 1.5833 bits/weight"),
        "{text}"
    );
    let total_weights = 4096 + 8192 + 6400 + 64;
    let file_bpw = bytes.len() as f64 * 8.0 / total_weights as f64;
    assert!(text.contains(&format!(
        "{} bytes for {total_weights} weights = {file_bpw:.4}",
        bytes.len()
    )));
    assert!(text.contains("checksums             ok"));
}

fn assert_one_line_error(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "partial output on error");
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "{err:?}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn inspect_rejects_bad_files_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.nqb");
    assert_one_line_error(
        &nq_host(&["inspect", missing.to_str().unwrap()]),
        "cannot open",
    );

    let empty = dir.path().join("empty.nqb");
    std::fs::write(&empty, b"").unwrap();
    assert_one_line_error(
        &nq_host(&["inspect", empty.to_str().unwrap()]),
        "shorter than its 64-byte header",
    );

    let good = dir.path().join("good.nqb");
    let bytes = write_blob(&good);
    let cut = dir.path().join("cut.nqb");
    std::fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
    assert_one_line_error(&nq_host(&["inspect", cut.to_str().unwrap()]), "truncated");

    // A flipped bit inside a tensor: structure is fine, the checksum is not.
    let mut flipped = bytes.clone();
    let last = flipped.len() - 200;
    flipped[last] ^= 0x10;
    let bad = dir.path().join("flipped.nqb");
    std::fs::write(&bad, &flipped).unwrap();
    let out = nq_host(&["inspect", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1);
    assert!(err.contains("checksum mismatch"), "{err}");
    // ... and --no-verify reads it without complaint.
    assert!(nq_host(&["inspect", "--no-verify", bad.to_str().unwrap()])
        .status
        .success());
}

#[test]
fn blobs_are_written_atomically_and_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_blob(&dir.path().join("a.nqb"));
    let b = write_blob(&dir.path().join("b.nqb"));
    assert_eq!(a, b);
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // An unwritable destination is an error, and nothing appears.
    let err = BlobBuilder::new(config())
        .write_file(&dir.path().join("no/such/dir/x.nqb"))
        .unwrap_err();
    assert!(err.to_string().starts_with("cannot write"), "{err}");
}

#[test]
fn devices_never_panics() {
    let out = nq_host(&["devices"]);
    assert!(out.status.success());
    assert!(!out.stdout.is_empty());
}

/// A tiny Llama checkpoint directory (no tokenizer.json) and a text file.
fn tiny_hf_dir(dir: &Path) -> std::path::PathBuf {
    use nq_host::model::hf::{save_hf_dir, SaveDtype};
    use nq_host::model::synthetic::{random_model, tiny_config};
    let model = dir.join("tiny");
    save_hf_dir(
        &random_model(tiny_config(Arch::Llama), 3),
        &model,
        SaveDtype::F32,
    )
    .unwrap();
    model
}

#[test]
fn eval_and_convert_reject_bad_input_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "some text to score").unwrap();
    let text = text.to_str().unwrap();
    let missing = dir.path().join("nope.gguf");
    let missing = missing.to_str().unwrap();
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"not a model at all").unwrap();
    let junk = junk.to_str().unwrap();
    let model = tiny_hf_dir(dir.path());
    let model = model.to_str().unwrap();

    let eval = |m: &str, extra: &[&str]| {
        let mut args = vec!["eval", "--model", m, "--text", text];
        args.extend_from_slice(extra);
        nq_host(&args)
    };
    assert_one_line_error(&eval(missing, &[]), "nope.gguf");
    assert_one_line_error(&eval(junk, &[]), "not a GGUF file");
    assert_one_line_error(&eval(model, &[]), "pass --tokenizer");
    assert_one_line_error(&eval(model, &["--ctx", "1"]), "--ctx");
    assert_one_line_error(&eval(model, &["--windows", "0"]), "--windows");
    assert_one_line_error(&eval(model, &["--threads", "0"]), "--threads");
    assert_one_line_error(&eval(model, &["--tokenizer", junk]), "junk.bin");
    let missing_text = nq_host(&["eval", "--model", model, "--text", missing]);
    assert_one_line_error(&missing_text, "nope.gguf");

    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    assert_one_line_error(&nq_host(&["convert", missing, "--out", out]), "nope.gguf");
    assert_one_line_error(
        &nq_host(&["convert", junk, "--out", out]),
        "not a GGUF file",
    );
    assert!(!Path::new(out).exists(), "failed convert left {out}");
    // A file where the directory should go.
    assert_one_line_error(&nq_host(&["convert", model, "--out", text]), "is a file");
}

#[test]
fn convert_writes_a_loadable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(dir.path());
    let out = dir.path().join("as-bf16");
    let o = nq_host(&[
        "convert",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = nq_host::model::hf::load_hf_dir(&model).unwrap();
    let b = nq_host::model::hf::load_hf_dir(&out).unwrap();
    assert_eq!(a.config, b.config);
    // bf16 keeps 8 bits of mantissa: every weight within 2⁻⁸ relative.
    for (x, y) in a.token_embd.data.iter().zip(&b.token_embd.data) {
        assert!((x - y).abs() <= x.abs() / 256.0, "{x} vs {y}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["torch_dtype"], "bfloat16");
}

/// `run` on a blob goes through the nq-core runtime: greedy ids are
/// deterministic, text comes from the blob's `tokenizer.tokens`, stderr
/// reports the arena and speeds, bad prompts are errors; `inspect
/// --footprint` agrees with `Runtime::arena_bytes`.
#[test]
fn run_and_footprint_on_a_synthetic_blob() {
    use nq_host::quant::export::EmbedFormat;
    use nq_host::quant::synthetic_blob::synthetic_blob;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.nqb");
    let mut c = config();
    c.n_layers = 2;
    let bytes = synthetic_blob(c, 8, 1.0, EmbedFormat::Q8, 20).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let p = path.to_str().unwrap();
    let args = [
        "run",
        "--model",
        p,
        "--prompt-ids",
        "3,1,4,1,5",
        "-n",
        "12",
        "--print-ids",
    ];
    let a = nq_host(&args);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let ids = String::from_utf8(a.stdout.clone()).unwrap();
    let ids: Vec<u32> = ids.trim().split(',').map(|t| t.parse().unwrap()).collect();
    assert_eq!(ids.len(), 12);
    assert!(ids.iter().all(|&t| t < 100));
    assert_eq!(nq_host(&args).stdout, a.stdout, "not deterministic");
    let err = String::from_utf8_lossy(&a.stderr);
    assert!(
        err.contains("arena") && err.contains("11 decode steps"),
        "{err}"
    );
    // Text mode prints the tokenizer.tokens strings of the same ids.
    let t = nq_host(&args[..args.len() - 1]);
    let text = String::from_utf8(t.stdout).unwrap();
    let want: String = ids
        .iter()
        .map(|&i| match i {
            0..=25 => ((b'a' + i as u8) as char).to_string(),
            _ => format!(" t{i}"),
        })
        .collect();
    assert_eq!(text.trim_end_matches('\n'), want);
    // Sampling with a seed is reproducible too, and bad flags are errors.
    let s = [
        "run",
        "--model",
        p,
        "--prompt-ids",
        "3,1",
        "--temperature",
        "0.8",
        "--top-k",
        "5",
        "--top-p",
        "0.9",
        "--seed",
        "4",
        "--print-ids",
    ];
    assert_eq!(nq_host(&s).stdout, nq_host(&s).stdout);
    // The issue's spellings `--blob` and `--temp` are the same flags.
    let alias: Vec<&str> = s
        .iter()
        .map(|&f| match f {
            "--model" => "--blob",
            "--temperature" => "--temp",
            f => f,
        })
        .collect();
    let (x, y) = (nq_host(&s), nq_host(&alias));
    assert!(y.status.success(), "{}", String::from_utf8_lossy(&y.stderr));
    assert_eq!(x.stdout, y.stdout);
    assert!(!nq_host(&["run", "--model", p, "--prompt-ids", "3,x"])
        .status
        .success());
    assert!(!nq_host(&["run", "--model", p, "--prompt-ids", "300"])
        .status
        .success());

    // --act f32 (the runtime on f32 activations) prints the reference's
    // greedy tokens; --reference needs no tokenizer for ids in and out and
    // honours --ctx like the runtime.
    let exact = nq_host(&[&args[..], &["--act", "f32"]].concat());
    assert!(
        exact.status.success(),
        "{}",
        String::from_utf8_lossy(&exact.stderr)
    );
    assert!(String::from_utf8_lossy(&exact.stderr).contains("act f32"));
    let reference = nq_host(&[&args[..], &["--reference"]].concat());
    assert!(
        reference.status.success(),
        "{}",
        String::from_utf8_lossy(&reference.stderr)
    );
    assert_eq!(exact.stdout, reference.stdout);
    let short = ["--ctx", "8"];
    let a8 = nq_host(&[&args[..], &short].concat());
    let r8 = nq_host(&[&args[..], &short, &["--reference", "--act", "f32"]].concat());
    assert_eq!(String::from_utf8_lossy(&a8.stdout).split(',').count(), 3);
    assert_eq!(
        r8.stdout,
        nq_host(&[&args[..], &short, &["--act", "f32"]].concat()).stdout
    );
    assert!(!nq_host(&[&args[..], &["--act", "f64"]].concat())
        .status
        .success());

    let f = nq_host(&["inspect", p, "--footprint", "--ctx", "64", "--kv", "int8"]);
    assert!(f.status.success());
    let out = String::from_utf8(f.stdout).unwrap();
    let view = nq_core::Blob::parse(&bytes).unwrap();
    let need = nq_core::Runtime::arena_bytes(view.config(), 64, nq_core::KvDtype::I8);
    assert!(
        out.contains(&format!("flash: {} bytes", bytes.len())),
        "{out}"
    );
    assert!(out.contains(&format!("RAM:   {need} bytes")), "{out}");
}

#[test]
fn bench_stats_reports_a_pass_and_refuses_bad_sizes() {
    let out = nq_host(&[
        "bench",
        "stats",
        "--layers",
        "1",
        "--windows",
        "2",
        "--ctx",
        "8",
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &rows.as_array().unwrap()[0];
    assert_eq!(row["device"], "cpu");
    assert_eq!(
        (row["layers"].as_u64(), row["windows"].as_u64()),
        (Some(1), Some(2))
    );
    assert!(row["tokens_per_second"].as_f64().unwrap() > 0.0);
    // Random weights over a 49,152-token vocabulary: a loss near ln(vocab).
    let loss = row["mean_loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 1.0, "{loss}");
    assert!(
        row["max_rel_diff"].is_null(),
        "one device, nothing to compare"
    );
    let bad = nq_host(&["bench", "stats", "--ctx", "1", "--device", "cpu"]);
    assert_one_line_error(&bad, "--ctx at least 2");
}

#[test]
fn bench_runtime_measures_every_combination() {
    use nq_host::quant::export::EmbedFormat;
    use nq_host::quant::synthetic_blob::synthetic_blob;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.nqb");
    let mut c = config();
    c.n_layers = 2;
    let bytes = synthetic_blob(c, 5, 1.0, EmbedFormat::Q8, 10).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let p = path.to_str().unwrap();
    let common = [
        "bench", "runtime", "--model", p, "-p", "8,24", "-n", "6", "-b", "1,8", "-r", "2",
    ];
    let out = nq_host(
        &[
            &common[..],
            &["-k", "all", "--kv", "f32,int8", "-o", "json"],
        ]
        .concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["model"], "s.nqb");
    assert_eq!(doc["size_bytes"].as_u64(), Some(bytes.len() as u64));
    let rows = doc["rows"].as_array().unwrap();
    let kernels: Vec<&str> = nq_core::kernels::available().map(|k| k.name()).collect();
    // Per KV type and kernel: 2 prompts × 2 batches, then 1 generation.
    assert_eq!(rows.len(), 2 * kernels.len() * 5);
    let view = nq_core::Blob::parse(&bytes).unwrap();
    for (i, r) in rows.iter().enumerate() {
        let kv = if i < rows.len() / 2 { "f32" } else { "int8" };
        let kernel = kernels[(i % (rows.len() / 2)) / 5];
        assert_eq!(
            (r["kv"].as_str(), r["kernel"].as_str()),
            (Some(kv), Some(kernel))
        );
        let (test, batch) = match i % 5 {
            0 => ("pp8", Some(1)),
            1 => ("pp24", Some(1)),
            2 => ("pp8", Some(8)),
            3 => ("pp24", Some(8)),
            _ => ("tg6", None),
        };
        assert_eq!(r["test"], test, "row {i}");
        assert_eq!(r["batch"].as_u64(), batch, "row {i}");
        assert_eq!(
            r["tokens"].as_u64().unwrap(),
            test[2..].parse::<u64>().unwrap()
        );
        let samples: Vec<f64> = r["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(samples.len(), 2);
        assert!(samples.iter().all(|s| s.is_finite() && *s > 0.0));
        let mean = r["tokens_per_second"].as_f64().unwrap();
        assert!((mean - (samples[0] + samples[1]) / 2.0).abs() <= 1e-9 * mean);
        let sd = r["stddev"].as_f64().unwrap();
        assert!((sd - (samples[0] - samples[1]).abs() / 2f64.sqrt()).abs() <= 1e-9 * mean);
        // The arena of the runtime the row ran on: ctx 24, its batch, its KV.
        let kvd = if kv == "f32" {
            nq_core::KvDtype::F32
        } else {
            nq_core::KvDtype::I8
        };
        let opts = nq_core::RuntimeOptions::new(kvd).with_max_batch(if i % 5 < 2 { 1 } else { 8 });
        let need = nq_core::Runtime::arena_bytes_with(view.config(), 24, opts);
        assert_eq!(r["arena_bytes"].as_u64(), Some(need as u64), "row {i}");
    }

    // Markdown (default) and CSV: a header, then one line per row.
    let md = nq_host(&common);
    assert!(md.status.success());
    let md = String::from_utf8(md.stdout).unwrap();
    assert_eq!(md.lines().count(), 2 + 5, "{md}");
    assert!(md.lines().nth(6).unwrap().contains("| - | tg6 |"), "{md}");
    let csv = nq_host(&[&common[..], &["-o", "csv", "--act", "f32", "-k", "all"]].concat());
    let csv = String::from_utf8(csv.stdout).unwrap();
    // f32 activations run on every kernel too (their f32 lookups differ).
    let names: Vec<&str> = nq_core::kernels::available()
        .map(nq_core::kernels::Kernel::name)
        .collect();
    assert_eq!(csv.lines().count(), 1 + 5 * names.len(), "{csv}");
    for k in &names {
        let tag = format!(",{k},f32,");
        assert_eq!(
            csv.lines().filter(|l| l.contains(&tag)).count(),
            5,
            "{k}: {csv}"
        );
    }

    assert_one_line_error(
        &nq_host(&["bench", "runtime", "--model", p, "-p", "0", "-n", "0"]),
        "nothing to measure",
    );
    assert_one_line_error(
        &nq_host(&["bench", "runtime", "--model", p, "-p", "300"]),
        "more than the model's context (256)",
    );
    assert_one_line_error(
        &nq_host(&["bench", "runtime", "--model", p, "-p", "8", "-k", "sse9"]),
        "unknown kernel",
    );
    if let Some(k) = nq_core::kernels::Kernel::ALL
        .into_iter()
        .find(|k| !k.is_available())
    {
        assert_one_line_error(
            &nq_host(&["bench", "runtime", "--model", p, "-p", "8", "-k", k.name()]),
            "not available on this CPU",
        );
    }
    let short = dir.path().join("short.nqb");
    std::fs::write(&short, &bytes[..bytes.len() / 2]).unwrap();
    assert_one_line_error(
        &nq_host(&["bench", "runtime", "--model", short.to_str().unwrap()]),
        "not a valid blob",
    );
}
