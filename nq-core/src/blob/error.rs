//! Everything that can be wrong with a blob, one variant per rule.

use core::fmt;

/// Why a blob was rejected. Each variant names the FORMAT.md rule broken;
/// `index` fields are tensor-table positions.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum BlobError {
    /// The input is shorter than the 64-byte file header.
    TooShort {
        /// Bytes given.
        len: usize,
    },
    /// The magic bytes are wrong: not a nanoquant blob.
    BadMagic,
    /// A version this reader does not know.
    UnsupportedVersion(u32),
    /// `config_len` is not the version's config size.
    BadConfigLen(u32),
    /// More tensors than `MAX_TENSORS`.
    TooManyTensors(u32),
    /// `header_len` is not the size the tensor count implies.
    HeaderLenMismatch {
        /// Value in the header.
        found: u32,
        /// Value the table size requires.
        expected: u64,
    },
    /// `file_len` exceeds `MAX_FILE_LEN` or this target's address space.
    TooLarge(u64),
    /// The input is shorter than `file_len` says.
    Truncated {
        /// `file_len` from the header.
        expected: u64,
        /// Bytes given.
        actual: usize,
    },
    /// The input is longer than `file_len` says, or `file_len` extends past
    /// the last tensor's padding.
    TrailingBytes {
        /// Where the file should end.
        expected: u64,
        /// Where it ends.
        actual: u64,
    },
    /// The header CRC does not match the header bytes.
    HeaderCrcMismatch {
        /// CRC stored in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// A reserved field or flag bit is set.
    Reserved {
        /// Which field.
        field: &'static str,
    },
    /// Unknown architecture id.
    UnknownArch(u32),
    /// A model config field is out of range.
    BadConfig {
        /// Which field.
        field: &'static str,
    },
    /// A name is empty, too long, not printable ASCII or not zero-padded.
    BadName {
        /// Tensor index.
        index: u32,
    },
    /// Two tensors have the same name.
    DuplicateName {
        /// Index of the second one.
        index: u32,
    },
    /// Names are not in strictly increasing byte order.
    NamesNotSorted {
        /// Index of the first out-of-order name.
        index: u32,
    },
    /// Unknown kind id.
    UnknownKind {
        /// Tensor index.
        index: u32,
        /// The id.
        kind: u16,
    },
    /// Unknown dtype id.
    UnknownDtype {
        /// Tensor index.
        index: u32,
        /// The id.
        dtype: u16,
    },
    /// The (kind, dtype, ndim) combination is not allowed.
    KindDtypeMismatch {
        /// Tensor index.
        index: u32,
    },
    /// `ndim` is not 1 or 2.
    BadNdim {
        /// Tensor index.
        index: u32,
    },
    /// A dimension is 0, above `MAX_DIM`, or `dim1 != 1` for a vector.
    BadDim {
        /// Tensor index.
        index: u32,
    },
    /// Rank 0 or above `min(m, n)` for FACTORIZED, non-zero for other kinds.
    BadRank {
        /// Tensor index.
        index: u32,
    },
    /// Unknown tensor flag bits, or a bias flag on a kind without bias.
    BadTensorFlags {
        /// Tensor index.
        index: u32,
    },
    /// `length` differs from what kind, dtype and shape require.
    LengthMismatch {
        /// Tensor index.
        index: u32,
        /// Length the shape requires.
        expected: u64,
        /// Length in the entry.
        found: u64,
    },
    /// A tensor offset is not a multiple of 64.
    Misaligned {
        /// Tensor index.
        index: u32,
    },
    /// A tensor starts before the end of the previous one (or the header).
    Overlap {
        /// Tensor index.
        index: u32,
    },
    /// A tensor starts after the padding that ends the previous one.
    Hole {
        /// Tensor index.
        index: u32,
    },
    /// A tensor extends past the end of the file.
    OutOfBounds {
        /// Tensor index.
        index: u32,
    },
    /// A padding byte outside tensors is not zero.
    NonZeroPadding {
        /// File offset of the byte.
        offset: u64,
    },
    /// A tensor's CRC does not match its bytes (found by `verify`).
    TensorCrcMismatch {
        /// Tensor index.
        index: u32,
    },
    /// A tensor the model needs is not in the blob.
    MissingTensor {
        /// Its name.
        name: heapless::String<48>,
    },
    /// A tensor has a kind the accessor cannot use.
    WrongKind {
        /// Tensor index.
        index: u32,
    },
    /// A tensor's shape disagrees with the model config.
    ShapeMismatch {
        /// Tensor index.
        index: u32,
    },
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use BlobError::*;
        match self {
            TooShort { len } => write!(f, "blob is {len} bytes, shorter than its 64-byte header"),
            BadMagic => f.write_str("not a nanoquant blob (bad magic)"),
            UnsupportedVersion(v) => {
                write!(f, "unsupported blob version {v} (this reader knows 1)")
            }
            BadConfigLen(n) => write!(f, "config record is {n} bytes, expected 128"),
            TooManyTensors(n) => write!(f, "{n} tensors exceeds the limit of 4096"),
            HeaderLenMismatch { found, expected } => {
                write!(
                    f,
                    "header length {found} does not match the table size ({expected})"
                )
            }
            TooLarge(n) => write!(f, "declared file length {n} is too large"),
            Truncated { expected, actual } => {
                write!(
                    f,
                    "blob is truncated: {actual} bytes, header says {expected}"
                )
            }
            TrailingBytes { expected, actual } => {
                write!(f, "blob should end at byte {expected} but ends at {actual}")
            }
            HeaderCrcMismatch { stored, computed } => write!(
                f,
                "header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            Reserved { field } => write!(f, "reserved field or flag set: {field}"),
            UnknownArch(a) => write!(f, "unknown architecture id {a}"),
            BadConfig { field } => write!(f, "model config field out of range: {field}"),
            BadName { index } => write!(f, "tensor {index}: invalid name"),
            DuplicateName { index } => write!(f, "tensor {index}: duplicate name"),
            NamesNotSorted { index } => write!(f, "tensor {index}: names not in sorted order"),
            UnknownKind { index, kind } => write!(f, "tensor {index}: unknown kind id {kind}"),
            UnknownDtype { index, dtype } => write!(f, "tensor {index}: unknown dtype id {dtype}"),
            KindDtypeMismatch { index } => {
                write!(f, "tensor {index}: kind, dtype and ndim do not go together")
            }
            BadNdim { index } => write!(f, "tensor {index}: ndim must be 1 or 2"),
            BadDim { index } => write!(f, "tensor {index}: dimension out of range"),
            BadRank { index } => write!(f, "tensor {index}: rank out of range"),
            BadTensorFlags { index } => write!(f, "tensor {index}: invalid flags"),
            LengthMismatch {
                index,
                expected,
                found,
            } => {
                write!(
                    f,
                    "tensor {index}: length {found} but its shape needs {expected}"
                )
            }
            Misaligned { index } => write!(f, "tensor {index}: offset not 64-byte aligned"),
            Overlap { index } => write!(f, "tensor {index}: overlaps what comes before it"),
            Hole { index } => write!(f, "tensor {index}: unaccounted bytes before it"),
            OutOfBounds { index } => write!(f, "tensor {index}: extends past the end of the file"),
            NonZeroPadding { offset } => write!(f, "non-zero padding byte at offset {offset}"),
            TensorCrcMismatch { index } => write!(f, "tensor {index}: checksum mismatch"),
            MissingTensor { name } => write!(f, "missing tensor {name}"),
            WrongKind { index } => write!(f, "tensor {index}: kind not usable here"),
            ShapeMismatch { index } => {
                write!(f, "tensor {index}: shape disagrees with the model config")
            }
        }
    }
}

impl core::error::Error for BlobError {}
