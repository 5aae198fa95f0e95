//! Opening whatever checkpoint a user points the CLI at.
//!
//! `--model PATH` may be a GGUF file or a Hugging Face directory
//! (`config.json`, `*.safetensors`, `tokenizer.json`). The kind is decided by
//! content, not by file name: a directory is a Hugging Face checkpoint, a file
//! starting with the GGUF magic is GGUF, a file starting with the blob magic
//! is a nanoquant blob (read back as f32 weights, see
//! [`crate::quant::export::dequantize_blob`]).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::gguf::{GgufError, GgufFile};
use crate::model::hf::{self, HfError};
use crate::model::load_gguf::{load_gguf_file, LoadError};
use crate::model::ModelWeights;
use crate::quant::export;
use crate::tokenizer::{Tokenizer, TokenizerError};

/// What kind of checkpoint a path holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A GGUF v3 file.
    Gguf,
    /// A Hugging Face style directory.
    HfDir,
    /// A nanoquant `.nqb` blob.
    Blob,
}

impl SourceKind {
    /// Short human name.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Gguf => "GGUF",
            SourceKind::HfDir => "Hugging Face directory",
            SourceKind::Blob => "nanoquant blob",
        }
    }
}

/// Why a checkpoint could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The path does not exist or cannot be read.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The file is neither GGUF nor a blob.
    #[error("{0}: not a GGUF file, nanoquant blob or Hugging Face directory")]
    Unknown(PathBuf),
    /// GGUF parse errors.
    #[error("{path}: {error}")]
    Gguf {
        /// The path.
        path: PathBuf,
        /// The error.
        error: GgufError,
    },
    /// GGUF model errors.
    #[error("{path}: {error}")]
    GgufModel {
        /// The path.
        path: PathBuf,
        /// The error.
        error: LoadError,
    },
    /// Hugging Face directory errors.
    #[error("{path}: {error}")]
    Hf {
        /// The path.
        path: PathBuf,
        /// The error.
        error: HfError,
    },
    /// Blob errors.
    #[error("{path}: {error}")]
    Blob {
        /// The path.
        path: PathBuf,
        /// The error.
        error: export::DequantError,
    },
    /// The checkpoint carries no tokenizer and none was given.
    #[error("{0} has no tokenizer; pass --tokenizer")]
    NoTokenizer(PathBuf),
    /// Tokenizer errors.
    #[error("{path}: tokenizer: {error}")]
    Tokenizer {
        /// The path.
        path: PathBuf,
        /// The error.
        error: TokenizerError,
    },
}

/// Decides what `path` holds by looking at it.
pub fn detect(path: &Path) -> Result<SourceKind, SourceError> {
    let io = |error| SourceError::Io {
        path: path.to_path_buf(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_dir() {
        return Ok(SourceKind::HfDir);
    }
    let mut head = [0u8; 8];
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]).map_err(io)? {
            0 => break,
            k => n += k,
        }
    }
    if n >= 4 && &head[..4] == b"GGUF" {
        Ok(SourceKind::Gguf)
    } else if n == 8 && head == nq_core::blob::format::MAGIC {
        Ok(SourceKind::Blob)
    } else {
        Err(SourceError::Unknown(path.to_path_buf()))
    }
}

/// A full-precision model with its tokenizer.
pub struct Loaded {
    /// The weights, validated.
    pub weights: ModelWeights,
    /// The tokenizer shipped with the checkpoint, if any.
    pub tokenizer: Option<Tokenizer>,
    /// What the path held.
    pub kind: SourceKind,
}

/// Loads a GGUF file, a Hugging Face directory or a blob as f32 weights plus
/// its tokenizer (`tokenizer.json` in a directory is optional; its absence is not
/// an error, a broken one is).
pub fn load(path: &Path) -> Result<Loaded, SourceError> {
    let p = || path.to_path_buf();
    match detect(path)? {
        SourceKind::Gguf => {
            let file =
                GgufFile::open(path).map_err(|error| SourceError::Gguf { path: p(), error })?;
            let weights = load_gguf_file(&file)
                .map_err(|error| SourceError::GgufModel { path: p(), error })?;
            let tokenizer = Tokenizer::from_gguf(&file)
                .map_err(|error| SourceError::Tokenizer { path: p(), error })?;
            Ok(Loaded {
                weights,
                tokenizer: Some(tokenizer),
                kind: SourceKind::Gguf,
            })
        }
        SourceKind::HfDir => {
            let weights =
                hf::load_hf_dir(path).map_err(|error| SourceError::Hf { path: p(), error })?;
            let tj = path.join("tokenizer.json");
            let tokenizer = if tj.is_file() {
                Some(
                    Tokenizer::from_tokenizer_json(&tj)
                        .map_err(|error| SourceError::Tokenizer { path: tj, error })?
                        .with_special_ids(weights.config.bos_id, weights.config.eos_id),
                )
            } else {
                None
            };
            Ok(Loaded {
                weights,
                tokenizer,
                kind: SourceKind::HfDir,
            })
        }
        SourceKind::Blob => load_blob(path),
    }
}

/// A blob read and checked but not dequantized: its bytes (parse them with
/// `nq_core::Blob::parse`, which cannot fail on them now), its config and
/// its tokenizer, if it stores one. For consumers that run the packed
/// layers themselves (the GPU evaluator).
pub fn load_blob_packed(
    path: &Path,
) -> Result<(Vec<u8>, nq_core::ModelConfig, Option<Tokenizer>), SourceError> {
    let p = || path.to_path_buf();
    let bytes = std::fs::read(path).map_err(|error| SourceError::Io { path: p(), error })?;
    let blob_err = |error| SourceError::Blob { path: p(), error };
    let view = nq_core::Blob::parse(&bytes).map_err(|e| blob_err(e.into()))?;
    view.verify().map_err(|e| blob_err(e.into()))?;
    let config = *view.config();
    let tokenizer = match export::blob_tokenizer_json(&view).map_err(|e| blob_err(e.into()))? {
        Some(json) => Some(
            Tokenizer::from_json_bytes(json)
                .map_err(|error| SourceError::Tokenizer { path: p(), error })?
                .with_special_ids(config.bos_id, config.eos_id),
        ),
        None => None,
    };
    Ok((bytes, config, tokenizer))
}

fn load_blob(path: &Path) -> Result<Loaded, SourceError> {
    let p = || path.to_path_buf();
    let bytes = std::fs::read(path).map_err(|error| SourceError::Io { path: p(), error })?;
    let blob_err = |error| SourceError::Blob { path: p(), error };
    let view = nq_core::Blob::parse(&bytes).map_err(|e| blob_err(e.into()))?;
    view.verify().map_err(|e| blob_err(e.into()))?;
    let weights = export::dequantize_blob(&view).map_err(blob_err)?;
    let tokenizer = match export::blob_tokenizer_json(&view).map_err(|e| blob_err(e.into()))? {
        Some(json) => Some(
            Tokenizer::from_json_bytes(json)
                .map_err(|error| SourceError::Tokenizer { path: p(), error })?
                .with_special_ids(weights.config.bos_id, weights.config.eos_id),
        ),
        None => None,
    };
    Ok(Loaded {
        weights,
        tokenizer,
        kind: SourceKind::Blob,
    })
}

/// Loads a tokenizer on its own: a `tokenizer.json`, a GGUF file or a
/// directory holding `tokenizer.json`.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, SourceError> {
    let p = || path.to_path_buf();
    let meta = std::fs::metadata(path).map_err(|error| SourceError::Io { path: p(), error })?;
    if meta.is_dir() {
        let tj = path.join("tokenizer.json");
        return Tokenizer::from_tokenizer_json(&tj)
            .map_err(|error| SourceError::Tokenizer { path: tj, error });
    }
    if matches!(detect(path), Ok(SourceKind::Gguf)) {
        let file = GgufFile::open(path).map_err(|error| SourceError::Gguf { path: p(), error })?;
        return Tokenizer::from_gguf(&file)
            .map_err(|error| SourceError::Tokenizer { path: p(), error });
    }
    Tokenizer::from_tokenizer_json(path)
        .map_err(|error| SourceError::Tokenizer { path: p(), error })
}

/// The tokenizer to use with `loaded` (from `model`): the one at
/// `override_path` when given, else the checkpoint's own.
pub fn choose_tokenizer(
    model: &Path,
    loaded: Option<Tokenizer>,
    override_path: Option<&Path>,
) -> Result<Tokenizer, SourceError> {
    match (override_path, loaded) {
        (Some(p), _) => load_tokenizer(p),
        (None, Some(t)) => Ok(t),
        (None, None) => Err(SourceError::NoTokenizer(model.to_path_buf())),
    }
}
