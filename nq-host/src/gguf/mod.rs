//! A GGUF (v2/v3) reader: memory-mapped, bounds-checked, no panics.
//!
//! GGUF is llama.cpp's model file. We read it to get the real checkpoints
//! people ship (here SmolLM2-135M-Instruct) without a model hub.
//!
//! # What a file must look like (the rules [`GgufFile::open`] enforces)
//!
//! All integers are little-endian.
//!
//! 1. It MUST start with the magic `GGUF` and a `u32` version 2 or 3
//!    (big-endian files and the v1 format are rejected).
//! 2. Then `u64` tensor count and `u64` metadata count; each MUST be within
//!    [`MAX_TENSORS`] / [`MAX_METADATA_KV`] and fit the bytes left.
//! 3. Each metadata entry is a string key (`u64` length + UTF-8 bytes, at
//!    most [`MAX_KEY_LEN`]), a `u32` value type and the value. Keys MUST be
//!    unique; strings MUST be UTF-8; bools MUST be 0 or 1; arrays MAY nest up
//!    to [`MAX_ARRAY_DEPTH`] levels and hold at most [`MAX_METADATA_VALUES`]
//!    elements in all.
//! 4. `general.alignment`, when present, MUST be a `u32` power of two; it
//!    defaults to [`DEFAULT_ALIGNMENT`].
//! 5. Each tensor info is a name (at most [`MAX_TENSOR_NAME_LEN`] bytes,
//!    unique), `u32` dimension count (1..=[`MAX_DIMS`]), the dimensions
//!    fastest-varying first, a `u32` ggml type and a `u64` offset.
//!    The first dimension MUST be a multiple of the type's block length; the
//!    offset MUST be a multiple of the alignment.
//! 6. The data section starts at the end of the tensor infos rounded up to
//!    the alignment; every tensor's bytes MUST lie inside the file.
//!
//! Tensor bytes are not touched at open time; [`GgufFile::dequantize`]
//! converts one tensor to f32 on demand ([`dequant`] lists the types).

pub mod dequant;
mod parse;
mod tensor;
mod tokenizer;
mod value;

use std::fs::File;
use std::path::Path;

pub use dequant::DequantError;
pub use parse::MAGIC;
pub use tensor::{GgmlType, TensorInfo};
pub use tokenizer::TokenizerData;
pub use value::{FromGguf, GgufType, GgufValue, Metadata};

/// Alignment of the data section and of tensor offsets when the file does
/// not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most tensors a file may declare.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Most metadata entries a file may declare.
pub const MAX_METADATA_KV: u64 = 1 << 20;
/// Most array elements in all metadata values together. Decoded values take
/// up to 32 bytes each whatever their size on disk, so this bounds the memory
/// a small crafted file can make us allocate (512 MiB); real files hold about
/// a million (vocabulary-sized tables).
pub const MAX_METADATA_VALUES: u64 = 1 << 24;
/// Longest metadata key, in bytes.
pub const MAX_KEY_LEN: u64 = 65_535;
/// Longest tensor name, in bytes (ggml's `GGML_MAX_NAME`).
pub const MAX_TENSOR_NAME_LEN: u64 = 64;
/// Most tensor dimensions (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays inside a metadata value.
pub const MAX_ARRAY_DEPTH: usize = 4;

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// Opening or mapping the file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file (magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// The version is not 2 or 3.
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    /// The file ends inside a structure.
    #[error("file truncated in {what}")]
    Truncated {
        /// What was being read.
        what: String,
    },
    /// A count is above its limit.
    #[error("{what}: {count} exceeds the limit {limit}")]
    TooMany {
        /// What was counted.
        what: String,
        /// The count in the file.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// A string is not UTF-8.
    #[error("{what}: invalid UTF-8")]
    InvalidUtf8 {
        /// Which string.
        what: String,
    },
    /// A metadata value type id is unknown.
    #[error("metadata key {key:?}: unknown value type {ty}")]
    UnknownValueType {
        /// The key.
        key: String,
        /// The type id.
        ty: u32,
    },
    /// A bool byte is neither 0 nor 1.
    #[error("metadata key {key:?}: bool byte {value} is neither 0 nor 1")]
    BadBool {
        /// The key.
        key: String,
        /// The byte.
        value: u8,
    },
    /// Arrays nest deeper than [`MAX_ARRAY_DEPTH`].
    #[error("metadata key {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH}")]
    ArrayTooDeep {
        /// The key.
        key: String,
    },
    /// Two metadata entries share a key.
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    /// `general.alignment` is not a `u32` power of two.
    #[error("general.alignment {0} is not a u32 power of two")]
    BadAlignment(String),
    /// Two tensors share a name.
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    /// A tensor has no or too many dimensions.
    #[error("tensor {tensor:?}: {n_dims} dimensions (allowed 1..={MAX_DIMS})")]
    BadDims {
        /// The tensor.
        tensor: String,
        /// Its dimension count.
        n_dims: u32,
    },
    /// A tensor's dimensions are unusable.
    #[error("tensor {tensor:?}: dims {dims:?}: {reason}")]
    BadShape {
        /// The tensor.
        tensor: String,
        /// Its dims, fastest first.
        dims: Vec<u64>,
        /// What is wrong.
        reason: &'static str,
    },
    /// A tensor's ggml type id is unknown.
    #[error("tensor {tensor:?}: unknown ggml type {ty}")]
    UnknownTensorType {
        /// The tensor.
        tensor: String,
        /// The type id.
        ty: u32,
    },
    /// A tensor offset is not a multiple of the alignment.
    #[error("tensor {tensor:?}: offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        /// The tensor.
        tensor: String,
        /// Its offset in the data section.
        offset: u64,
        /// The alignment.
        alignment: u64,
    },
    /// A tensor's bytes run past the end of the file.
    #[error("tensor {tensor:?}: {n_bytes} bytes at offset {offset} run past the data section ({data_len} bytes)")]
    TensorOutOfBounds {
        /// The tensor.
        tensor: String,
        /// Its offset in the data section.
        offset: u64,
        /// Its size.
        n_bytes: usize,
        /// Size of the data section.
        data_len: usize,
    },
    /// A metadata key the caller needs is absent.
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    /// A metadata value has another type than the caller needs.
    #[error("metadata key {key:?}: expected {expected}, found {found}")]
    WrongType {
        /// The key.
        key: String,
        /// What the caller asked for.
        expected: &'static str,
        /// What the file holds.
        found: String,
    },
    /// A tensor the caller needs is absent.
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    /// A tensor could not be dequantized.
    #[error("tensor {tensor:?}: {source}")]
    Dequant {
        /// The tensor.
        tensor: String,
        /// Cause.
        source: DequantError,
    },
}

/// The bytes behind a [`GgufFile`].
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
        }
    }
}

/// An open GGUF file: parsed metadata and tensor directory over the
/// file's bytes.
pub struct GgufFile {
    storage: Storage,
    layout: parse::Layout,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.layout.version)
            .field("metadata_entries", &self.layout.metadata.len())
            .field("tensors", &self.layout.tensors.len())
            .field("alignment", &self.layout.alignment)
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Memory-maps `path` and parses its header, metadata and tensor infos.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this process. A file
        // truncated or rewritten by another process while mapped is outside
        // what we can guard against (as for every mmap-based model loader);
        // every access below is still bounds-checked against the length the
        // map had when it was created.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_storage(Storage::Mapped(map))
    }

    /// Parses a file held in memory (tests, fuzzing, downloaded buffers).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::from_storage(Storage::Owned(bytes))
    }

    fn from_storage(storage: Storage) -> Result<Self, GgufError> {
        let layout = parse::parse(storage.bytes())?;
        Ok(Self { storage, layout })
    }

    /// Format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.layout.version
    }

    /// Alignment of the data section and tensor offsets.
    pub fn alignment(&self) -> u64 {
        self.layout.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> usize {
        self.layout.data_offset
    }

    /// The metadata key/value table.
    pub fn metadata(&self) -> &Metadata {
        &self.layout.metadata
    }

    /// `general.architecture` (`llama`, `qwen2`, …).
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.metadata().get_str("general.architecture")
    }

    /// The tokenizer tables of the `tokenizer.ggml.*` keys.
    pub fn tokenizer_data(&self) -> Result<TokenizerData, GgufError> {
        TokenizerData::from_metadata(self.metadata())
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.layout.tensors
    }

    /// The info of tensor `name`, if present.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.layout
            .by_name
            .get(name)
            .and_then(|&i| self.layout.tensors.get(i))
    }

    /// The raw bytes of tensor `name`.
    pub fn tensor_data(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))?;
        self.bytes_of(info)
    }

    /// Tensor `name` dequantized to f32, in storage order (row-major with the
    /// first GGUF dimension fastest).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))?;
        let bytes = self.bytes_of(info)?;
        dequant::dequantize_to_vec(info.ty, bytes, info.n_elements).map_err(|source| {
            GgufError::Dequant {
                tensor: name.to_string(),
                source,
            }
        })
    }

    fn bytes_of(&self, info: &TensorInfo) -> Result<&[u8], GgufError> {
        // Placement was checked at open; recheck rather than index.
        let out_of_bounds = || GgufError::TensorOutOfBounds {
            tensor: info.name.clone(),
            offset: info.offset,
            n_bytes: info.n_bytes,
            data_len: self
                .storage
                .bytes()
                .len()
                .saturating_sub(self.layout.data_offset),
        };
        let start = usize::try_from(info.offset)
            .ok()
            .and_then(|o| o.checked_add(self.layout.data_offset))
            .ok_or_else(out_of_bounds)?;
        let end = start.checked_add(info.n_bytes).ok_or_else(out_of_bounds)?;
        self.storage
            .bytes()
            .get(start..end)
            .ok_or_else(out_of_bounds)
    }
}
