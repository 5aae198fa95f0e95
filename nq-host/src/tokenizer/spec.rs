//! A byte-level BPE tokenizer described the way llama.cpp stores one in GGUF
//! metadata, and its translation into a `tokenizers` pipeline.
//!
//! GGUF keeps only the vocabulary, the merges, a token type per id and the
//! *name* of the pre-tokenizer (`tokenizer.ggml.pre`); the regexes live in
//! llama.cpp's source. This module maps the names it knows to the
//! equivalent Hugging Face pre-tokenizer and refuses the others, because a
//! wrong pre-tokenizer silently gives different ids.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

use super::TokenizerError;
use crate::gguf::GgufFile;

/// `tokenizer.ggml.pre` values that split every digit on its own before the
/// GPT-2 byte-level regex (llama.cpp gives them the regexes `\p{N}` then
/// the GPT-2 pattern). SmolLM/SmolLM2 use `"smollm"`.
pub const DIGIT_SPLITTING_PRE: &[&str] = &["smollm", "starcoder", "refact", "codeshell"];

/// `tokenizer.ggml.pre` values that use the GPT-2 byte-level regex alone.
pub const GPT2_PRE: &[&str] = &["gpt-2"];

/// llama.cpp's `LLAMA_TOKEN_TYPE_NORMAL`.
pub const TOKEN_TYPE_NORMAL: i32 = 1;
/// llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL`: special tokens such as `<|im_start|>`.
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// llama.cpp's `LLAMA_TOKEN_TYPE_USER_DEFINED`: added, non-special tokens.
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The tokenizer-related GGUF metadata of a byte-level BPE model
/// (`tokenizer.ggml.model == "gpt2"`), one field per key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ByteLevelBpeSpec {
    /// `tokenizer.ggml.model`; only `"gpt2"` (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`: one of [`DIGIT_SPLITTING_PRE`] or [`GPT2_PRE`].
    pub pre: String,
    /// `tokenizer.ggml.tokens`: token strings in the GPT-2 byte alphabet; the
    /// index is the id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token (`TOKEN_TYPE_*`); empty
    /// means all normal.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: `"left right"` pairs, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.add_space_prefix`; must be false for byte-level BPE.
    pub add_space_prefix: bool,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
}

/// How text is split before BPE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PreSplit {
    /// Every digit alone, then the GPT-2 regex.
    DigitsThenGpt2,
    /// The GPT-2 regex alone.
    Gpt2,
}

impl PreSplit {
    fn from_ggml_pre(name: &str) -> Option<Self> {
        if DIGIT_SPLITTING_PRE.contains(&name) {
            Some(Self::DigitsThenGpt2)
        } else if GPT2_PRE.contains(&name) {
            Some(Self::Gpt2)
        } else {
            None
        }
    }

    fn pre_tokenizer(self) -> PreTokenizerWrapper {
        // No prefix space; `use_regex` applies the GPT-2 split pattern.
        let byte_level = ByteLevel::new(false, true, true);
        match self {
            Self::DigitsThenGpt2 => PreTokenizerWrapper::Sequence(Sequence::new(vec![
                Digits::new(true).into(),
                byte_level.into(),
            ])),
            Self::Gpt2 => byte_level.into(),
        }
    }
}

impl ByteLevelBpeSpec {
    /// Reads the `tokenizer.ggml.*` keys (via [`GgufFile::tokenizer_data`]).
    /// A missing `pre` reads as `"default"`, as in llama.cpp, which
    /// [`build`](Self::build) then refuses.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, TokenizerError> {
        let data = gguf.tokenizer_data()?;
        let add_space_prefix = gguf
            .metadata()
            .get_opt("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(false);
        Ok(Self {
            model: data.model,
            pre: data.pre.unwrap_or_else(|| "default".to_owned()),
            tokens: data.tokens,
            token_types: data.token_types.unwrap_or_default(),
            merges: data.merges,
            add_space_prefix,
            bos_id: data.bos_id,
            eos_id: data.eos_id,
        })
    }

    /// Builds the equivalent `tokenizers` pipeline: BPE model, pre-tokenizer
    /// chosen by `pre`, byte-level decoder, no normalizer or post-processor.
    /// Control tokens become special added tokens and user-defined tokens
    /// non-special added tokens, so both are matched whole in input text.
    pub fn build(&self) -> Result<tokenizers::Tokenizer, TokenizerError> {
        self.check_header()?;
        let split = PreSplit::from_ggml_pre(&self.pre)
            .ok_or_else(|| TokenizerError::UnsupportedPre(self.pre.clone()))?;
        let bpe = BPE::builder()
            .vocab_and_merges(self.vocab()?, self.split_merges()?)
            .build()
            .map_err(TokenizerError::Hf)?;
        let mut hf = tokenizers::Tokenizer::new(bpe);
        hf.with_pre_tokenizer(Some(split.pre_tokenizer()));
        hf.with_decoder(Some(ByteLevelDecoder::default()));
        let (special, user) = self.added_tokens();
        hf.add_special_tokens(&special);
        hf.add_tokens(&user);
        Ok(hf)
    }

    fn check_header(&self) -> Result<(), TokenizerError> {
        if self.model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(self.model.clone()));
        }
        if self.add_space_prefix {
            return Err(TokenizerError::Invalid(
                "add_space_prefix is set, byte-level BPE never adds one".into(),
            ));
        }
        if !self.token_types.is_empty() && self.token_types.len() != self.tokens.len() {
            return Err(TokenizerError::Invalid(format!(
                "{} token types for {} tokens",
                self.token_types.len(),
                self.tokens.len()
            )));
        }
        let n = self.tokens.len();
        for (what, id) in [("bos", self.bos_id), ("eos", self.eos_id)] {
            if id.is_some_and(|id| usize::try_from(id).map_or(true, |id| id >= n)) {
                return Err(TokenizerError::Invalid(format!(
                    "{what} id {id:?} outside a vocabulary of {n}"
                )));
            }
        }
        Ok(())
    }

    fn vocab(&self) -> Result<Vocab, TokenizerError> {
        let mut vocab = Vocab::default();
        for (id, token) in self.tokens.iter().enumerate() {
            let id = u32::try_from(id)
                .map_err(|_| TokenizerError::Invalid("more than 2^32 tokens".into()))?;
            if let Some(first) = vocab.insert(token.clone(), id) {
                return Err(TokenizerError::Invalid(format!(
                    "token {token:?} appears twice (ids {first} and {id})"
                )));
            }
        }
        Ok(vocab)
    }

    fn split_merges(&self) -> Result<Merges, TokenizerError> {
        self.merges
            .iter()
            .map(|merge| match merge.split_once(' ') {
                Some((l, r)) if !l.is_empty() && !r.is_empty() && !r.contains(' ') => {
                    Ok((l.to_owned(), r.to_owned()))
                }
                _ => Err(TokenizerError::Invalid(format!(
                    "merge {merge:?} is not two tokens separated by one space"
                ))),
            })
            .collect()
    }

    /// (special, non-special) added tokens, in id order.
    fn added_tokens(&self) -> (Vec<AddedToken>, Vec<AddedToken>) {
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (token, &ty) in self.tokens.iter().zip(&self.token_types) {
            let added = || AddedToken::from(token.clone(), false).normalized(false);
            match ty {
                TOKEN_TYPE_CONTROL => special.push(added().special(true)),
                TOKEN_TYPE_USER_DEFINED => user.push(added()),
                _ => {}
            }
        }
        (special, user)
    }
}

#[cfg(test)]
mod tests {
    use super::{PreSplit, DIGIT_SPLITTING_PRE};

    #[test]
    fn known_pre_names() {
        assert_eq!(
            PreSplit::from_ggml_pre("smollm"),
            Some(PreSplit::DigitsThenGpt2)
        );
        assert_eq!(PreSplit::from_ggml_pre("gpt-2"), Some(PreSplit::Gpt2));
        assert_eq!(PreSplit::from_ggml_pre("llama-bpe"), None);
        assert!(DIGIT_SPLITTING_PRE.contains(&"smollm"));
    }
}
