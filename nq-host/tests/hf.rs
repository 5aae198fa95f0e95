//! Hugging Face directories: write → read gives the same model, for every
//! architecture flavour and storage dtype; bad directories give clear errors.

use nq_host::model::forward::forward;
use nq_host::model::hf::{load_hf_dir, save_hf_dir, SaveDtype};
use nq_host::model::synthetic::{random_model, tiny_config};
use nq_host::model::Arch;

#[test]
fn f32_round_trip_is_exact_for_every_flavour() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let w = random_model(tiny_config(arch), 11);
        let dir = tempfile::tempdir().unwrap();
        save_hf_dir(&w, dir.path(), SaveDtype::F32).unwrap();
        let back = load_hf_dir(dir.path()).unwrap();
        assert_eq!(back, w, "{arch:?}");
        let toks = [3u32, 1, 4, 1, 5, 9, 2, 6];
        assert_eq!(
            forward(&back, &toks, None).unwrap(),
            forward(&w, &toks, None).unwrap()
        );
    }
}

#[test]
fn half_precision_round_trips_within_rounding() {
    let w = random_model(tiny_config(Arch::Llama), 5);
    for (dtype, rel) in [
        (SaveDtype::F16, 1.0 / 1024.0),
        (SaveDtype::Bf16, 1.0 / 128.0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        save_hf_dir(&w, dir.path(), dtype).unwrap();
        let back = load_hf_dir(dir.path()).unwrap();
        for (a, b) in back.layers[1]
            .w_down
            .data
            .iter()
            .zip(&w.layers[1].w_down.data)
        {
            assert!(
                (a - b).abs() <= rel * b.abs() + 1e-7,
                "{dtype:?}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn broken_directories_name_the_problem() {
    let w = random_model(tiny_config(Arch::Llama), 5);
    let dir = tempfile::tempdir().unwrap();
    assert!(load_hf_dir(dir.path())
        .unwrap_err()
        .to_string()
        .contains("config.json"));

    save_hf_dir(&w, dir.path(), SaveDtype::F32).unwrap();
    let cfg_path = dir.path().join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, cfg.replace("\"llama\"", "\"gpt2\"")).unwrap();
    let err = load_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("unsupported architecture") && err.contains("gpt2"),
        "{err}"
    );

    std::fs::write(
        &cfg_path,
        cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    let err = load_hf_dir(dir.path()).unwrap_err().to_string();
    assert_eq!(err, "missing tensor model.layers.2.input_layernorm.weight");

    std::fs::write(
        &cfg_path,
        cfg.replace("\"hidden_size\": 16", "\"hidden_size\": 8"),
    )
    .unwrap();
    let err = load_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("model.embed_tokens.weight") && err.contains("shape"),
        "{err}"
    );

    std::fs::write(&cfg_path, &cfg).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
    let err = load_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("invalid safetensors"), "{err}");
}
