//! Tokenizer tests: tiny hand-built BPEs (always run) and the SmolLM2 GGUF
//! against the Botchan reference ids of EVAL.md (skipped, visibly, when
//! `scripts/fetch-assets.sh` has not been run).

mod common;

use std::sync::OnceLock;
use std::time::Instant;

use nq_host::gguf::GgufFile;
use nq_host::tokenizer::{
    read_text_for_eval, ByteLevelBpeSpec, Tokenizer, TokenizerError, TOKEN_TYPE_CONTROL,
    TOKEN_TYPE_NORMAL,
};

// ---------------------------------------------------------------- tiny BPE

/// GPT-2's `bytes_to_unicode()`, written out independently of the crate:
/// the character that spells each byte.
use common::gpt2_byte_chars;

/// A control token (id 0), one token per byte (ids 1..=256, byte order) and
/// four merges: `a b` ranks before `Ġ ab`, which ranks before `ab c`.
fn tiny_spec(pre: &str) -> ByteLevelBpeSpec {
    let mut tokens = vec!["<|endoftext|>".to_string()];
    tokens.extend(gpt2_byte_chars().iter().map(char::to_string));
    tokens.extend(["ab", "Ġab", "abc", "12"].map(String::from));
    let mut token_types = vec![TOKEN_TYPE_NORMAL; tokens.len()];
    token_types[0] = TOKEN_TYPE_CONTROL;
    ByteLevelBpeSpec {
        model: "gpt2".into(),
        pre: pre.into(),
        tokens,
        token_types,
        merges: ["a b", "Ġ ab", "ab c", "1 2"].map(String::from).to_vec(),
        add_space_prefix: false,
        bos_id: Some(0),
        eos_id: Some(0),
    }
}

fn tiny(pre: &str) -> Tokenizer {
    Tokenizer::from_spec(&tiny_spec(pre)).expect("tiny tokenizer builds")
}

/// The ids of tokens given by their vocabulary strings.
fn ids_of(t: &Tokenizer, tokens: &[&str]) -> Vec<u32> {
    tokens
        .iter()
        .map(|s| t.hf().token_to_id(s).expect("token in vocabulary"))
        .collect()
}

#[test]
fn tiny_bpe_applies_merges_by_rank() {
    let t = tiny("smollm");
    // "ab abc" → words "ab", "Ġabc"; in the second, "a b" then "Ġ ab" (rank 1)
    // win over "ab c" (rank 2), leaving "Ġab" + "c".
    assert_eq!(t.encode("ab abc").unwrap(), ids_of(&t, &["ab", "Ġab", "c"]));
    assert_eq!(t.encode("abc").unwrap(), ids_of(&t, &["abc"]));
    assert_eq!(t.encode("ba").unwrap(), ids_of(&t, &["b", "a"]));
    assert_eq!(t.encode("").unwrap(), Vec::<u32>::new());
    assert_eq!(t.vocab_size(), 261);
    assert_eq!((t.bos_id(), t.eos_id()), (Some(0), Some(0)));
}

#[test]
fn tiny_bpe_splits_digits_one_by_one() {
    // "smollm": every digit alone, so the "1 2" merge never applies.
    let t = tiny("smollm");
    assert_eq!(t.encode("123").unwrap(), ids_of(&t, &["1", "2", "3"]));
    assert_eq!(t.encode("a12").unwrap(), ids_of(&t, &["a", "1", "2"]));
    assert_eq!(t.encode(" 12").unwrap(), ids_of(&t, &["Ġ", "1", "2"]));
    // "gpt-2": digits stay one word and merge.
    let t = tiny("gpt-2");
    assert_eq!(t.encode("123").unwrap(), ids_of(&t, &["12", "3"]));
}

#[test]
fn tiny_bpe_decodes_bytes_and_special_tokens() {
    let t = tiny("smollm");
    let id = |s: &str| ids_of(&t, &[s])[0];
    assert_eq!(t.token_bytes(id("Ġab")), b" ab");
    assert_eq!(t.token_bytes(id("Ċ")), b"\n");
    assert_eq!(t.token_bytes(id("Ã")), [0xC3]);
    for b in 0..=255u8 {
        assert_eq!(t.token_bytes(1 + u32::from(b)), [b]);
    }
    assert_eq!(t.token_bytes(0), b"<|endoftext|>");
    assert_eq!(t.token_bytes(261), b"");
    let text = "ab abc\n12<|endoftext|>cab é🦀";
    let ids = t.encode(text).unwrap();
    assert!(ids.contains(&0), "control token matched whole: {ids:?}");
    assert_eq!(t.decode(&ids), text);
    assert_eq!(t.decode(&[id("a"), 999]), "a\u{FFFD}");
    // Half a UTF-8 sequence decodes lossily, like the tokenizers decoder.
    assert_eq!(t.decode(&[id("Ã")]), "\u{FFFD}");
}

#[test]
fn tiny_bpe_survives_tokenizer_json() {
    let t = tiny("smollm");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    t.to_tokenizer_json(&path).unwrap();
    let back = Tokenizer::from_tokenizer_json(&path).unwrap();
    for text in ["ab abc", "123 abc12", "c<|endoftext|>a\n", "ü ß"] {
        assert_eq!(
            back.encode(text).unwrap(),
            t.encode(text).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(back.vocab_size(), t.vocab_size());
    assert_eq!(back.bos_id(), None, "tokenizer.json carries no bos id");
}

#[test]
fn bytes_without_a_token_are_reported_and_dropped() {
    assert_eq!(tiny("smollm").unencodable_bytes(), b"");
    // As in tokenizers and llama.cpp, a character with no token vanishes.
    let mut spec = tiny_spec("smollm");
    spec.tokens[1 + usize::from(b'q')] = "qq".into();
    let t = Tokenizer::from_spec(&spec).unwrap();
    assert_eq!(t.unencodable_bytes(), b"q");
    // Inside a word the neighbours then merge as if it had never been there.
    assert_eq!(t.encode("aqb").unwrap(), ids_of(&t, &["ab"]));
}

#[test]
fn unsupported_or_broken_specs_are_refused() {
    let err = |spec: ByteLevelBpeSpec| Tokenizer::from_spec(&spec).unwrap_err();

    let e = err(tiny_spec("llama-bpe"));
    assert!(matches!(e, TokenizerError::UnsupportedPre(ref p) if p == "llama-bpe"));
    assert!(e.to_string().contains("smollm"), "{e}");

    let mut spec = tiny_spec("smollm");
    spec.model = "llama".into();
    assert!(matches!(err(spec), TokenizerError::UnsupportedModel(_)));

    let mut spec = tiny_spec("smollm");
    spec.merges.push("abc".into());
    assert!(matches!(err(spec), TokenizerError::Invalid(_)));

    let mut spec = tiny_spec("smollm");
    spec.merges.push("a z".into());
    assert!(matches!(err(spec), TokenizerError::Hf(_)));

    let mut spec = tiny_spec("smollm");
    spec.tokens[260] = "ab".into();
    assert!(matches!(err(spec), TokenizerError::Invalid(_)));

    let mut spec = tiny_spec("smollm");
    spec.token_types.pop();
    assert!(matches!(err(spec), TokenizerError::Invalid(_)));

    let mut spec = tiny_spec("smollm");
    spec.eos_id = Some(261);
    assert!(matches!(err(spec), TokenizerError::Invalid(_)));
}

#[test]
fn non_byte_level_tokenizer_json_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(
        &path,
        r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null,
            "decoder": null, "model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}}"#,
    )
    .unwrap();
    let e = Tokenizer::from_tokenizer_json(&path).unwrap_err();
    assert!(matches!(e, TokenizerError::NotByteLevel(_)), "{e}");
    let missing = dir.path().join("absent.json");
    let e = Tokenizer::from_tokenizer_json(&missing).unwrap_err();
    assert!(e.to_string().contains("absent.json"), "{e}");
}

#[test]
fn eval_text_drops_only_a_leading_bom() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.txt");
    std::fs::write(&path, b"\xEF\xBB\xBFone\r\ntwo \xEF\xBB\xBF\n").unwrap();
    assert_eq!(read_text_for_eval(&path).unwrap(), "one\r\ntwo \u{FEFF}\n");
    std::fs::write(&path, b"no bom").unwrap();
    assert_eq!(read_text_for_eval(&path).unwrap(), "no bom");
    std::fs::write(&path, b"ok\xFFbad").unwrap();
    let e = read_text_for_eval(&path).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("byte 2"), "{e}");
}

// ------------------------------------------------------- SmolLM2 + Botchan

/// EVAL.md: Botchan has 74,411 ids and starts with these.
const BOTCHAN_COUNT: usize = 74_411;
const BOTCHAN_FIRST: [u32; 12] = [
    14892, 45382, 506, 14639, 2410, 365, 23534, 9117, 1519, 643, 411, 25131,
];

use common::workspace;

/// The SmolLM2 tokenizer and the Botchan text, or `None` (after saying so)
/// when the assets are absent. Built once for all tests.
fn smollm2_and_botchan() -> Option<&'static (Tokenizer, String)> {
    static ASSETS: OnceLock<Option<(Tokenizer, String)>> = OnceLock::new();
    let loaded = ASSETS.get_or_init(|| {
        let gguf = common::asset("SmolLM2-135M-Instruct.Q4_1.gguf")?;
        let text = common::asset("botchan.txt")?;
        let start = Instant::now();
        let file = GgufFile::open(&gguf).expect("gguf opens");
        let tokenizer = Tokenizer::from_gguf(&file).expect("tokenizer from gguf");
        eprintln!("tokenizer from gguf: {:.2?}", start.elapsed());
        Some((tokenizer, read_text_for_eval(&text).expect("botchan reads")))
    });
    loaded.as_ref()
}

fn timed_encode(t: &Tokenizer, text: &str, what: &str) -> Vec<u32> {
    let start = Instant::now();
    let ids = t.encode(text).expect("encode");
    eprintln!("{what}: {} ids in {:.2?}", ids.len(), start.elapsed());
    ids
}

#[test]
fn smollm2_metadata() {
    let Some((t, _)) = smollm2_and_botchan() else {
        return;
    };
    assert_eq!(t.vocab_size(), 49_152);
    assert_eq!((t.bos_id(), t.eos_id()), (Some(1), Some(2)));
    assert_eq!(t.token_bytes(0), b"<|endoftext|>");
    assert_eq!(t.encode("<|im_start|>").unwrap(), vec![1]);
    // SmolLM2 has no token for these bytes (HF and llama.cpp drop them too).
    let mut missing = vec![0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2];
    missing.extend(0xF5..=0xFF);
    assert_eq!(t.unencodable_bytes(), missing);
    let (a, b) = (t.encode("a").unwrap(), t.encode("b").unwrap());
    assert_eq!(t.encode("a\u{4}b").unwrap(), [a, b].concat());
}

#[test]
fn botchan_matches_reference_ids() {
    let Some((t, text)) = smollm2_and_botchan() else {
        return;
    };
    let ids = timed_encode(t, text, "botchan");
    assert_eq!(ids.len(), BOTCHAN_COUNT);
    assert_eq!(ids[..12], BOTCHAN_FIRST);

    let reference = workspace().join("../shared/reference/botchan_ids.txt");
    let Ok(reference) = std::fs::read_to_string(&reference) else {
        eprintln!(
            "SKIP: {} absent, checked count and first ids only",
            reference.display()
        );
        return;
    };
    let reference: Vec<u32> = reference
        .split_whitespace()
        .map(|s| s.parse().expect("reference id"))
        .collect();
    if let Some(i) = (0..ids.len().min(reference.len())).find(|&i| ids[i] != reference[i]) {
        panic!(
            "first mismatch at {i}: got {:?}, want {:?}",
            &ids[i..(i + 8).min(ids.len())],
            &reference[i..(i + 8).min(reference.len())]
        );
    }
    assert_eq!(ids.len(), reference.len());
}

#[test]
fn botchan_round_trips() {
    let Some((t, text)) = smollm2_and_botchan() else {
        return;
    };
    let ids = t.encode(text).unwrap();
    let start = Instant::now();
    assert!(t.decode(&ids) == *text, "decode(encode(botchan)) differs");
    eprintln!("botchan decode: {:.2?}", start.elapsed());
    // The byte table alone (what a runtime keeps) rebuilds the text too,
    // and agrees with the tokenizers decoder.
    let bytes: Vec<u8> = ids.iter().flat_map(|&id| t.token_bytes(id)).collect();
    assert!(bytes == text.as_bytes());
    assert!(t.hf().decode(&ids, false).unwrap() == *text);
}

#[test]
fn unicode_round_trips() {
    let Some((t, _)) = smollm2_and_botchan() else {
        return;
    };
    for text in [
        "héllo wörld, naïve café",
        "日本語のテキストと漢字",
        "Ελληνικά и русский",
        "emoji 🦀👍🏽 and ZWJ 👨‍👩‍👧",
        "digits 1234567890 ١٢٣ ½ Ⅻ",
        "tabs\tand\r\nCRLF  \n\n   trailing   ",
        "\u{FEFF}\u{200B}\u{0}\u{7F}",
        "<|im_start|>user\nhi<|im_end|>",
    ] {
        let ids = t.encode(text).unwrap();
        assert_eq!(t.decode(&ids), text, "ids {ids:?}");
    }
    // Digits are split one by one.
    let ids = t.encode("2024").unwrap();
    assert_eq!(ids.len(), 4, "{ids:?}");
}

#[test]
fn botchan_survives_tokenizer_json() {
    let Some((t, text)) = smollm2_and_botchan() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    t.to_tokenizer_json(&path).unwrap();
    let back = Tokenizer::from_tokenizer_json(&path).unwrap();
    assert_eq!(back.vocab_size(), t.vocab_size());
    let ids = t.encode(text).unwrap();
    let back_ids = timed_encode(&back, text, "botchan via tokenizer.json");
    assert!(back_ids == ids, "tokenizer.json gives other ids");
    assert!((0..t.vocab_size() as u32).all(|id| back.token_bytes(id) == t.token_bytes(id)));
}
