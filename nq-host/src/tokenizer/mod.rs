//! Text ↔ token ids for the models nanoquant quantizes.
//!
//! Why it exists: perplexity numbers are only comparable when the ids are
//! exactly the reference ids (EVAL.md), and the edge runtime needs a table
//! of the bytes each id stands for. The heavy lifting is done by Hugging
//! Face `tokenizers` (pure-Rust build, `fancy-regex` instead of oniguruma);
//! this module builds its pipeline from a GGUF file or a `tokenizer.json`
//! and adds the byte table.
//!
//! Supported: byte-level BPE (GPT-2 byte alphabet) only. From GGUF, the
//! `tokenizer.ggml.pre` values in [`DIGIT_SPLITTING_PRE`] (SmolLM2's
//! `"smollm"`: every digit alone, then the GPT-2 regex, no prefix space)
//! and [`GPT2_PRE`]; any other value is an [`TokenizerError::UnsupportedPre`]
//! error rather than silently different ids.
//!
//! Encoding never adds BOS/EOS. Control and user-defined tokens written in
//! the input text (`<|im_start|>`) are matched whole, as Hugging Face does
//! and llama.cpp does with special-token parsing on.

mod byte_level;
mod eval_text;
mod spec;

use std::path::{Path, PathBuf};

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::ModelWrapper;

use crate::gguf::{GgufError, GgufFile};
use byte_level::ByteAlphabet;

pub use eval_text::read_text_for_eval;
pub use spec::{
    ByteLevelBpeSpec, DIGIT_SPLITTING_PRE, GPT2_PRE, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL,
    TOKEN_TYPE_USER_DEFINED,
};

/// Why a tokenizer could not be built, loaded, saved or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// A GGUF metadata key is missing or has the wrong type.
    #[error("gguf tokenizer metadata: {0}")]
    Gguf(#[from] GgufError),
    /// `tokenizer.ggml.model` is not byte-level BPE.
    #[error("unsupported tokenizer model {0:?}: only \"gpt2\" (byte-level bpe) is supported")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this module does not reproduce.
    #[error(
        "unsupported pre-tokenizer {0:?}: supported are {DIGIT_SPLITTING_PRE:?} (digits split \
         one by one) and {GPT2_PRE:?}"
    )]
    UnsupportedPre(String),
    /// A `tokenizer.json` that is not a byte-level BPE tokenizer.
    #[error("not a byte-level bpe tokenizer: {0}")]
    NotByteLevel(String),
    /// Tokenizer data that contradicts itself (duplicate tokens, bad merges, …).
    #[error("invalid tokenizer: {0}")]
    Invalid(String),
    /// Reading or writing a `tokenizer.json` failed.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What `tokenizers` reported.
        #[source]
        source: tokenizers::Error,
    },
    /// Any other error reported by `tokenizers`.
    #[error("tokenizers: {0}")]
    Hf(#[source] tokenizers::Error),
}

/// A byte-level BPE tokenizer plus the bytes each id stands for.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    hf: tokenizers::Tokenizer,
    table: TokenTable,
    unencodable: Vec<u8>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`. It must be a BPE model with a
    /// `ByteLevel` decoder. BOS/EOS ids are not part of that file: set them
    /// with [`with_special_ids`](Self::with_special_ids) if needed.
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let hf = tokenizers::Tokenizer::from_file(path).map_err(|source| TokenizerError::File {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_hf(hf)
    }

    /// Builds the tokenizer stored in a GGUF file's `tokenizer.ggml.*` keys.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, TokenizerError> {
        Self::from_spec(&ByteLevelBpeSpec::from_gguf(gguf)?)
    }

    /// Builds a tokenizer from GGUF-style parts (also how tests build tiny ones).
    pub fn from_spec(spec: &ByteLevelBpeSpec) -> Result<Self, TokenizerError> {
        Ok(Self::from_hf(spec.build()?)?.with_special_ids(spec.bos_id, spec.eos_id))
    }

    /// Wraps an existing `tokenizers` pipeline after checking it is a
    /// byte-level BPE with contiguous ids. Truncation and padding are
    /// switched off: evaluation tokenizes whole texts.
    pub fn from_hf(mut hf: tokenizers::Tokenizer) -> Result<Self, TokenizerError> {
        if !matches!(hf.get_model(), ModelWrapper::BPE(_)) {
            return Err(TokenizerError::NotByteLevel("the model is not BPE".into()));
        }
        if !matches!(hf.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
            return Err(TokenizerError::NotByteLevel(
                "the decoder is not ByteLevel".into(),
            ));
        }
        hf.with_truncation(None).map_err(TokenizerError::Hf)?;
        hf.with_padding(None);
        let table = TokenTable::new(&hf)?;
        let unencodable = missing_byte_tokens(&hf);
        Ok(Self {
            hf,
            table,
            unencodable,
            bos_id: None,
            eos_id: None,
        })
    }

    /// Sets the BOS and EOS ids (which `tokenizer.json` does not carry).
    pub fn with_special_ids(mut self, bos_id: Option<u32>, eos_id: Option<u32>) -> Self {
        self.bos_id = bos_id;
        self.eos_id = eos_id;
        self
    }

    /// Writes a Hugging Face `tokenizer.json` (pretty-printed) that
    /// [`from_tokenizer_json`](Self::from_tokenizer_json) and the Python
    /// `tokenizers` load to the same ids. BOS/EOS ids are not written.
    pub fn to_tokenizer_json(&self, path: impl AsRef<Path>) -> Result<(), TokenizerError> {
        let path = path.as_ref();
        self.hf
            .save(path, true)
            .map_err(|source| TokenizerError::File {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Loads a `tokenizer.json` held in memory (as stored in a blob).
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self, TokenizerError> {
        let hf = tokenizers::Tokenizer::from_bytes(bytes).map_err(TokenizerError::Hf)?;
        Self::from_hf(hf)
    }

    /// The `tokenizer.json` text (compact) that
    /// [`from_json_bytes`](Self::from_json_bytes) reads back to the same ids.
    pub fn to_json_string(&self) -> Result<String, TokenizerError> {
        self.hf.to_string(false).map_err(TokenizerError::Hf)
    }

    /// Token ids of `text`, no BOS/EOS added.
    ///
    /// Characters containing a byte from
    /// [`unencodable_bytes`](Self::unencodable_bytes) lose that byte, exactly
    /// as in Hugging Face `tokenizers` and llama.cpp (the reference ids), so
    /// `decode(encode(t)) == t` holds only for text without them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .hf
            .encode_fast(text, false)
            .map_err(TokenizerError::Hf)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`: their bytes ([`token_bytes`](Self::token_bytes))
    /// concatenated, invalid UTF-8 replaced by U+FFFD — what the `tokenizers`
    /// `ByteLevel` decoder gives. Special tokens are kept, so
    /// `decode(encode(t)) == t`. An id outside the vocabulary decodes to U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            match self.table.get(id) {
                Some(b) => bytes.extend_from_slice(b),
                None => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Number of ids, added tokens included (49,152 for SmolLM2).
    pub fn vocab_size(&self) -> usize {
        self.table.len()
    }

    /// The beginning-of-sequence id, when known.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The end-of-sequence id, when known.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// The raw bytes token `id` stands for, the GPT-2 byte mapping undone
    /// (`"Ġthe"` → `b" the"`; special tokens give their text). Empty for an
    /// id outside the vocabulary. This is the table an edge runtime stores.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.table.get(id).map(<[u8]>::to_vec).unwrap_or_default()
    }

    /// Bytes the vocabulary has no token for, ascending (SmolLM2: 21 of
    /// them, six ASCII controls such as U+0004 and bytes that never or
    /// rarely occur in UTF-8). Empty for a complete byte-level vocabulary.
    pub fn unencodable_bytes(&self) -> &[u8] {
        &self.unencodable
    }

    /// The underlying `tokenizers` pipeline.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.hf
    }
}

/// The bytes of every id, packed: token `i` is `bytes[ends[i-1]..ends[i]]`.
#[derive(Clone, Debug)]
struct TokenTable {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl TokenTable {
    fn new(hf: &tokenizers::Tokenizer) -> Result<Self, TokenizerError> {
        let n = hf.get_vocab_size(true);
        let alphabet = ByteAlphabet::new();
        let mut table = Self {
            bytes: Vec::new(),
            ends: Vec::with_capacity(n),
        };
        for id in 0..n {
            let token = u32::try_from(id)
                .ok()
                .and_then(|id| hf.id_to_token(id))
                .ok_or_else(|| {
                    TokenizerError::Invalid(format!("ids are not contiguous: no token {id} of {n}"))
                })?;
            table.bytes.extend(alphabet.token_bytes(&token));
            table.ends.push(table.bytes.len());
        }
        Ok(table)
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, id: u32) -> Option<&[u8]> {
        let i = usize::try_from(id).ok()?;
        let end = *self.ends.get(i)?;
        let start = match i.checked_sub(1) {
            Some(prev) => *self.ends.get(prev)?,
            None => 0,
        };
        self.bytes.get(start..end)
    }
}

/// Bytes with no single-byte token: `tokenizers`' BPE (no unknown token)
/// and llama.cpp both drop such characters from the input.
fn missing_byte_tokens(hf: &tokenizers::Tokenizer) -> Vec<u8> {
    let alphabet = ByteAlphabet::new();
    (0..=255u8)
        .filter(|&b| {
            let c = alphabet.char(b);
            hf.token_to_id(c.encode_utf8(&mut [0; 4])).is_none()
        })
        .collect()
}
