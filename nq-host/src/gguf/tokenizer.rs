//! The tokenizer tables a GGUF file carries (`tokenizer.ggml.*`).
//!
//! This module only extracts them; building a tokenizer from them is the
//! tokenizer module's job.

use super::value::Metadata;
use super::GgufError;

/// Everything under `tokenizer.ggml.*` that a tokenizer needs.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerData {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE), `llama` (SentencePiece), …
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name (`smollm`, `qwen2`, …).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: token strings, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: llama.cpp token types (1 normal,
    /// 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.scores`: SentencePiece scores.
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.merges`: BPE merges as `"left right"`, by rank
    /// (empty when absent).
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

impl TokenizerData {
    /// Extracts the tables; `tokenizer.ggml.model` and `tokenizer.ggml.tokens`
    /// are required, the rest optional. Array lengths must agree with the
    /// token count and special ids must be in range.
    pub fn from_metadata(md: &Metadata) -> Result<Self, GgufError> {
        let owned = |v: Vec<&str>| v.into_iter().map(str::to_string).collect::<Vec<_>>();
        let tokens = owned(md.get_str_array("tokenizer.ggml.tokens")?);
        let n = tokens.len();
        let token_types: Option<Vec<i32>> = md.get_opt("tokenizer.ggml.token_type")?;
        let scores: Option<Vec<f32>> = md.get_opt("tokenizer.ggml.scores")?;
        for (key, len) in [
            (
                "tokenizer.ggml.token_type",
                token_types.as_ref().map(Vec::len),
            ),
            ("tokenizer.ggml.scores", scores.as_ref().map(Vec::len)),
        ] {
            if let Some(len) = len.filter(|&len| len != n) {
                return Err(GgufError::WrongType {
                    key: key.to_string(),
                    expected: "one entry per token",
                    found: format!("{len} entries for {n} tokens"),
                });
            }
        }
        let id = |key: &str| -> Result<Option<u32>, GgufError> {
            let v: Option<u32> = md.get_opt(key)?;
            match v {
                Some(t) if t as usize >= n => Err(GgufError::WrongType {
                    key: key.to_string(),
                    expected: "a token id below the vocabulary size",
                    found: format!("{t} with {n} tokens"),
                }),
                v => Ok(v),
            }
        };
        let merges: Option<Vec<&str>> = md.get_opt("tokenizer.ggml.merges")?;
        Ok(Self {
            model: md.get_str("tokenizer.ggml.model")?.to_string(),
            pre: md
                .get_opt::<&str>("tokenizer.ggml.pre")?
                .map(str::to_string),
            merges: merges.map(owned).unwrap_or_default(),
            token_types,
            scores,
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            unk_id: id("tokenizer.ggml.unknown_token_id")?,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos: md.get_opt("tokenizer.ggml.add_bos_token")?,
            add_eos: md.get_opt("tokenizer.ggml.add_eos_token")?,
            chat_template: md
                .get_opt::<&str>("tokenizer.chat_template")?
                .map(str::to_string),
            tokens,
        })
    }
}
