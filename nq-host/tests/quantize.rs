//! `nq-host quantize` end to end on a tiny random checkpoint: the blob it
//! writes, its determinism, and every user error it must refuse cleanly.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nq_host::model::hf::{save_hf_dir, SaveDtype};
use nq_host::model::synthetic::random_model;
use nq_host::model::{Arch, ModelConfig};
use nq_host::tokenizer::{ByteLevelBpeSpec, Tokenizer, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL};

fn nq_host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nq-host"))
        .args(args)
        .output()
        .expect("run nq-host")
}

fn config(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        n_layers: 2,
        d_model: 64,
        d_ffn: 96,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        vocab_size: 257,
        max_seq_len: 128,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_embeddings: arch != Arch::Qwen2,
        attn_bias: arch == Arch::Qwen2,
        qk_norm: arch == Arch::Qwen3,
        bos_id: Some(0),
        eos_id: Some(0),
    }
}

/// A byte-level tokenizer with one control token and the 256 bytes.
fn tokenizer() -> Tokenizer {
    let mut tokens = vec!["<|endoftext|>".to_string()];
    tokens.extend(common::gpt2_byte_chars().iter().map(char::to_string));
    let mut token_types = vec![TOKEN_TYPE_NORMAL; tokens.len()];
    token_types[0] = TOKEN_TYPE_CONTROL;
    Tokenizer::from_spec(&ByteLevelBpeSpec {
        model: "gpt2".into(),
        pre: "smollm".into(),
        tokens,
        token_types,
        merges: vec![],
        add_space_prefix: false,
        bos_id: Some(0),
        eos_id: Some(0),
    })
    .unwrap()
}

/// A Hugging Face checkpoint directory with tokenizer.json.
fn checkpoint(dir: &Path, arch: Arch, poison: bool) -> PathBuf {
    let mut w = random_model(config(arch), 21);
    if poison {
        w.layers[1].w_up.data[5] = f32::NAN;
    }
    let p = dir.join(format!("{arch:?}{}", if poison { "-nan" } else { "" }));
    save_hf_dir(&w, &p, SaveDtype::F32).unwrap();
    tokenizer()
        .to_tokenizer_json(p.join("tokenizer.json"))
        .unwrap();
    p
}

fn text(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

const CALIB: &str = "It was the best of times, it was the worst of times, it was the age \
    of wisdom, it was the age of foolishness, it was the epoch of belief, it was the \
    epoch of incredulity, it was the season of Light, it was the season of Darkness.";

fn quantize_args(model: &Path, calib: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--bpw",
        "1.0",
        "--calib",
        calib.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    // A fast recipe, unless the test sets these itself.
    for pair in [
        ["--calib-windows", "3"],
        ["--calib-len", "32"],
        ["--admm-iters", "8"],
        ["--rank-multiple", "8"],
    ] {
        if !extra.contains(&pair[0]) {
            args.extend(pair.map(String::from));
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn quantize(model: &Path, calib: &Path, out: &Path, extra: &[&str]) -> Output {
    let args = quantize_args(model, calib, out, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    nq_host(&args)
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn quantize_writes_a_deterministic_evaluable_blob() {
    let dir = tempfile::tempdir().unwrap();
    let calib = text(dir.path(), "calib.txt", CALIB);
    let eval_text = text(dir.path(), "eval.txt", &"Call me Ishmael. ".repeat(20));
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let model = checkpoint(dir.path(), arch, false);
        let a = dir.path().join(format!("{arch:?}-a.nqb"));
        let b = dir.path().join(format!("{arch:?}-b.nqb"));
        let report = dir.path().join(format!("{arch:?}.json"));
        ok(&quantize(
            &model,
            &calib,
            &a,
            &["--report", report.to_str().unwrap()],
        ));
        // Another thread count, same bytes.
        ok(&quantize(&model, &calib, &b, &["--threads", "1"]));
        let (ba, bb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(ba == bb, "{arch:?}: blobs differ between runs");

        // The blob parses and verifies, and every decoder linear is factorized
        // at the rank the formula gives (64×64 at 1 bpw: 64·64/128 − 16 = 16).
        let view = nq_core::Blob::parse(&ba).unwrap();
        view.verify().unwrap();
        let q = view.get("blk.0.attn_q").unwrap().as_factorized().unwrap();
        assert_eq!((q.out_features(), q.in_features(), q.rank()), (64, 64, 16));
        assert!(view.find("tokenizer.json").is_some());
        assert_eq!(q.bias().is_some(), arch == Arch::Qwen2);

        // The report holds every linear and the totals.
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(r["layers"].as_array().unwrap().len(), 14);
        assert_eq!(r["method"], "nanoquant");
        let bpw = r["decoder_linear_bpw"].as_f64().unwrap();
        assert!(bpw > 0.5 && bpw <= 1.0, "decoder bpw {bpw}");

        // eval and run accept the blob (tokenizer from inside it).
        let e = nq_host(&[
            "eval",
            "--model",
            a.to_str().unwrap(),
            "--text",
            eval_text.to_str().unwrap(),
            "--ctx",
            "64",
            "--json",
        ]);
        ok(&e);
        let e: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
        assert!(e["ppl"].as_f64().unwrap().is_finite());
        ok(&nq_host(&[
            "run",
            "--model",
            a.to_str().unwrap(),
            "--prompt",
            "It was",
            "--tokens",
            "4",
        ]));
    }
}

#[test]
fn every_method_quantizes_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let calib = text(dir.path(), "calib.txt", CALIB);
    let model = checkpoint(dir.path(), Arch::Llama, false);
    for (method, kind) in [
        ("nanoquant", "factorized"),
        ("svd-sign", "factorized"),
        ("sign", "binary"),
        ("arb-rc", "binary"),
        ("arb-oa", "binary"),
    ] {
        let out = dir.path().join(format!("{method}.nqb"));
        ok(&quantize(&model, &calib, &out, &["--method", method]));
        let bytes = std::fs::read(&out).unwrap();
        let view = nq_core::Blob::parse(&bytes).unwrap();
        let t = view.get("blk.1.ffn_down").unwrap();
        match kind {
            "factorized" => assert!(t.as_factorized().is_ok(), "{method}"),
            _ => assert!(t.as_binary().is_ok(), "{method}"),
        }
        // Converting the blob gives a loadable HF directory.
        let hf = dir.path().join(format!("{method}-hf"));
        ok(&nq_host(&[
            "convert",
            out.to_str().unwrap(),
            "--out",
            hf.to_str().unwrap(),
        ]));
        nq_host::model::hf::load_hf_dir(&hf).unwrap();
    }
    // Row-quantized embeddings.
    let out = dir.path().join("q8.nqb");
    ok(&quantize(&model, &calib, &out, &["--embed", "q8"]));
    let bytes = std::fs::read(&out).unwrap();
    let view = nq_core::Blob::parse(&bytes).unwrap();
    assert!(view.get("token_embd").unwrap().as_row_quant().is_ok());
}

fn assert_refused(o: &Output, needle: &str, out: &Path) {
    assert!(!o.status.success(), "expected failure ({needle})");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "partial output {} left", out.display());
}

#[test]
fn quantize_refuses_bad_input_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let calib = text(dir.path(), "calib.txt", CALIB);
    let empty = text(dir.path(), "empty.txt", "");
    let short = text(dir.path(), "short.txt", "tiny");
    let model = checkpoint(dir.path(), Arch::Llama, false);
    let nan = checkpoint(dir.path(), Arch::Llama, true);
    let out = dir.path().join("out.nqb");
    let q = |m: &Path, c: &Path, extra: &[&str]| quantize(m, c, &out, extra);

    for bpw in ["0", "-1", "16", "40", "nan"] {
        let flag = format!("--bpw={bpw}");
        let o = nq_host(&[
            "quantize",
            "--model",
            model.to_str().unwrap(),
            &flag,
            "--calib",
            calib.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_refused(&o, "--bpw", &out);
    }
    assert_refused(
        &q(&model, &calib, &["--rank-multiple", "0"]),
        "--rank-multiple",
        &out,
    );
    assert_refused(
        &q(&dir.path().join("missing"), &calib, &[]),
        "missing",
        &out,
    );
    assert_refused(&q(&calib, &calib, &[]), "not a GGUF file", &out);
    assert_refused(&q(&model, &empty, &[]), "fewer than one window", &out);
    assert_refused(&q(&model, &short, &[]), "fewer than one window", &out);
    assert_refused(
        &q(&model, &dir.path().join("nope.txt"), &[]),
        "nope.txt",
        &out,
    );
    assert_refused(&q(&nan, &calib, &[]), "blk.1.ffn_up", &out);
    // Without a usable GPU, `--device cuda` is refused (with one it runs).
    if nq_cuda::probe().devices().is_empty() {
        assert_refused(
            &q(&model, &calib, &["--device", "cuda"]),
            "no usable CUDA GPU",
            &out,
        );
    }
    // A bad option value is clap's usage error: the error on the first line,
    // then the possible values and a pointer to --help.
    let o = q(&model, &calib, &["--gpu-math", "fast"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !out.exists());
    assert!(
        err.lines().next().unwrap_or("").contains("'--gpu-math"),
        "{err}"
    );
    assert!(
        err.contains("f32, tf32, bf16") && !err.contains("panicked"),
        "{err}"
    );
    assert_refused(
        &q(&model, &calib, &["--calib-windows", "0"]),
        "at least 1 window",
        &out,
    );
    // Unwritable output: its directory does not exist.
    let bad_out = dir.path().join("no-such-dir/out.nqb");
    let o = quantize(&model, &calib, &bad_out, &[]);
    assert_refused(&o, "no-such-dir", &bad_out);
    assert!(!out.exists());
}

#[test]
fn statistics_cache_is_reused_only_for_the_same_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let calib = text(dir.path(), "calib.txt", CALIB);
    let model = checkpoint(dir.path(), Arch::Llama, false);
    let stats = dir.path().join("stats.json");
    let s = stats.to_str().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(format!("{name}.nqb"));
        let report = dir.path().join(format!("{name}.json"));
        let mut args = vec!["--stats", s, "--report", report.to_str().unwrap()];
        args.extend_from_slice(extra);
        ok(&quantize(&model, &calib, &out, &args));
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
        (
            std::fs::read(out).unwrap(),
            r["stats_cached"].as_bool().unwrap(),
        )
    };
    let (a, cached_a) = run("a", &[]);
    assert!(!cached_a && stats.exists());
    let (b, cached_b) = run("b", &[]);
    assert!(cached_b, "same inputs: the cache is used");
    assert!(a == b, "cached statistics give the same blob");
    // The GPU's product arithmetic does not touch a CPU run.
    let (e, cached_e) = run("e", &["--device", "cpu", "--gpu-math", "tf32"]);
    assert!(cached_e && a == e, "--gpu-math is ignored on the CPU");
    let (_, cached_c) = run("c", &["--seed", "5"]);
    assert!(!cached_c, "other calibration windows: recomputed");
    std::fs::write(&stats, b"garbage").unwrap();
    let o = quantize(&model, &calib, &dir.path().join("d.nqb"), &["--stats", s]);
    assert_refused(&o, "not a statistics file", &dir.path().join("d.nqb"));
}

#[test]
fn killed_runs_resume_to_the_same_blob() {
    let dir = tempfile::tempdir().unwrap();
    let calib = text(dir.path(), "calib.txt", CALIB);
    let model = checkpoint(dir.path(), Arch::Llama, false);
    let reference = dir.path().join("reference.nqb");
    ok(&quantize(&model, &calib, &reference, &[]));
    let reference = std::fs::read(reference).unwrap();

    // A crash right after block 0 was saved (abort: no cleanup, no output).
    let work = dir.path().join("work");
    let w = work.to_str().unwrap();
    let out = dir.path().join("resumed.nqb");
    let crashed = Command::new(env!("CARGO_BIN_EXE_nq-host"))
        .env("NQ_TEST_CRASH_AFTER_BLOCK", "0")
        .args(quantize_args(&model, &calib, &out, &["--work-dir", w]))
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    assert!(!out.exists(), "a crashed run left an output file");
    assert!(work.join("block-0.nqb").exists());
    assert!(!work.join("block-1.nqb").exists());
    ok(&quantize(&model, &calib, &out, &["--work-dir", w]));
    assert!(
        std::fs::read(&out).unwrap() == reference,
        "resumed blob differs"
    );

    // Killed at an arbitrary moment, then rerun.
    let work2 = dir.path().join("work2");
    let w2 = work2.to_str().unwrap();
    let out2 = dir.path().join("killed.nqb");
    for delay_ms in [30, 120] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nq-host"))
            .args(quantize_args(&model, &calib, &out2, &["--work-dir", w2]))
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
    }
    ok(&quantize(&model, &calib, &out2, &["--work-dir", w2]));
    assert!(
        std::fs::read(&out2).unwrap() == reference,
        "blob after kills differs"
    );

    // The same directory with other settings is refused.
    let o = quantize(
        &model,
        &calib,
        &dir.path().join("x.nqb"),
        &["--work-dir", w, "--seed", "9"],
    );
    assert_refused(&o, "other settings", &dir.path().join("x.nqb"));
}
