//! Writes `.nqb` blobs (docs/FORMAT.md), deterministically.
//!
//! The same config and tensors always give the same bytes: tensors are
//! ordered by name (the format requires it), padding is zero, and nothing
//! time- or machine-dependent is stored. Files are written to a temporary
//! file next to the target and renamed into place, so a crash never leaves
//! a partial blob behind.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use nq_core::blob::format::{
    self, align_up, Dtype, FileHeader, Kind, RawEntry, ALIGN, CONFIG_LEN, ENTRY_LEN,
    FILE_HEADER_LEN, MAGIC, MAX_NAME_LEN, MAX_TENSORS, TABLE_OFFSET, TENSOR_HAS_BIAS, VERSION,
};
use nq_core::blob::{crc32, header_crc, BlobError, ModelConfig};
use nq_core::layers::{
    BinaryLinear, DenseDtype, DenseTensor, FactorizedLinear, RowBits, RowQuantTensor,
};

/// Why a blob could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The model config breaks a FORMAT.md §4 rule.
    #[error("invalid model config: {0}")]
    Config(BlobError),
    /// A tensor name is empty, too long or not printable ASCII.
    #[error("invalid tensor name {0:?} (1..=47 printable ASCII bytes)")]
    BadName(String),
    /// Two tensors share a name.
    #[error("duplicate tensor name {0:?}")]
    DuplicateName(String),
    /// More than `MAX_TENSORS` tensors.
    #[error("too many tensors (limit {MAX_TENSORS})")]
    TooManyTensors,
    /// A tensor's shape is outside the format's limits.
    #[error("tensor {0:?}: shape outside the format's limits")]
    BadShape(String),
    /// The blob would exceed `MAX_FILE_LEN`.
    #[error("blob would exceed the format's size limit")]
    TooLarge,
    /// Writing the file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// Target path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// One tensor's contents, in the owned nq-core layer types.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorPayload {
    /// A dense f16/f32 matrix (`rows × cols`).
    Matrix(DenseTensor<Vec<u8>>),
    /// A dense f16/f32 vector (stored with `ndim = 1`); the tensor is `len × 1`.
    Vector(DenseTensor<Vec<u8>>),
    /// Row-quantized int8 / 4-bit rows.
    RowQuant(RowQuantTensor<Vec<u8>>),
    /// Low-rank binary factors.
    Factorized(FactorizedLinear<Vec<u8>>),
    /// Full-rank binary with row/column scales.
    Binary(BinaryLinear<Vec<u8>>),
    /// Opaque bytes (at least one).
    Bytes(Vec<u8>),
}

/// The header fields a payload implies, plus its sections' bytes.
struct Encoded<'a> {
    kind: Kind,
    dtype: Dtype,
    ndim: u32,
    dims: [usize; 2],
    rank: usize,
    has_bias: bool,
    sections: Vec<&'a [u8]>,
}

impl TensorPayload {
    /// A dense f16 vector.
    pub fn vector_f16(values: &[f32]) -> Self {
        Self::Vector(DenseTensor::from_f32(
            values.len(),
            1,
            DenseDtype::F16,
            values,
        ))
    }

    /// A dense row-major f16 matrix.
    pub fn matrix_f16(rows: usize, cols: usize, values: &[f32]) -> Self {
        Self::Matrix(DenseTensor::from_f32(rows, cols, DenseDtype::F16, values))
    }

    fn encode(&self) -> Encoded<'_> {
        let dense_dtype = |d: &DenseTensor<Vec<u8>>| match d.dtype() {
            DenseDtype::F32 => Dtype::F32,
            DenseDtype::F16 => Dtype::F16,
        };
        let e = |kind, dtype, ndim, dims, rank, has_bias, sections| Encoded {
            kind,
            dtype,
            ndim,
            dims,
            rank,
            has_bias,
            sections,
        };
        match self {
            Self::Matrix(d) => e(
                Kind::Dense,
                dense_dtype(d),
                2,
                [d.rows(), d.cols()],
                0,
                false,
                vec![d.as_bytes()],
            ),
            Self::Vector(d) => e(
                Kind::Dense,
                dense_dtype(d),
                1,
                [d.len(), 1],
                0,
                false,
                vec![d.as_bytes()],
            ),
            Self::RowQuant(q) => {
                let dtype = match q.bits() {
                    RowBits::I8 => Dtype::I8,
                    RowBits::Q4 => Dtype::Q4,
                };
                e(
                    Kind::RowQuant,
                    dtype,
                    2,
                    [q.rows(), q.cols()],
                    0,
                    false,
                    vec![q.codes(), q.scales().as_bytes()],
                )
            }
            Self::Factorized(l) => {
                let mut s = vec![
                    l.u().as_bytes(),
                    l.v().as_bytes(),
                    l.s_pre().as_bytes(),
                    l.s_post().as_bytes(),
                ];
                s.extend(l.bias().map(|b| b.as_bytes()));
                let dims = [l.out_features(), l.in_features()];
                e(
                    Kind::Factorized,
                    Dtype::Sign,
                    2,
                    dims,
                    l.rank(),
                    l.bias().is_some(),
                    s,
                )
            }
            Self::Binary(l) => {
                let mut s = vec![
                    l.signs().as_bytes(),
                    l.s_col().as_bytes(),
                    l.s_row().as_bytes(),
                ];
                s.extend(l.bias().map(|b| b.as_bytes()));
                let dims = [l.out_features(), l.in_features()];
                e(Kind::Binary, Dtype::Sign, 2, dims, 0, l.bias().is_some(), s)
            }
            Self::Bytes(b) => e(
                Kind::Bytes,
                Dtype::U8,
                1,
                [b.len(), 1],
                0,
                false,
                vec![b.as_slice()],
            ),
        }
    }
}

/// Collects a config and named tensors, then writes them as one blob.
#[derive(Clone, Debug)]
pub struct BlobBuilder {
    config: ModelConfig,
    tensors: BTreeMap<String, TensorPayload>,
}

impl BlobBuilder {
    /// Starts a blob for `config`.
    pub fn new(config: ModelConfig) -> Self {
        Self {
            config,
            tensors: BTreeMap::new(),
        }
    }

    /// Adds a tensor; names must be unique, 1..=47 printable ASCII bytes.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        payload: TensorPayload,
    ) -> Result<&mut Self, WriteError> {
        let name = name.into();
        let printable = name.bytes().all(|b| (0x21..=0x7E).contains(&b));
        if name.is_empty() || name.len() > MAX_NAME_LEN || !printable {
            return Err(WriteError::BadName(name));
        }
        if self.tensors.contains_key(&name) {
            return Err(WriteError::DuplicateName(name));
        }
        if self.tensors.len() >= MAX_TENSORS as usize {
            return Err(WriteError::TooManyTensors);
        }
        self.tensors.insert(name, payload);
        Ok(self)
    }

    /// Number of tensors added.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether no tensor was added.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The whole blob as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WriteError> {
        self.config.validate().map_err(WriteError::Config)?;
        let n = self.tensors.len();
        let table_end = (TABLE_OFFSET + ENTRY_LEN * n) as u64;
        let header_len = align_up(table_end).ok_or(WriteError::TooLarge)?;

        // Lay out every tensor, then fill in the bytes.
        let mut entries = Vec::with_capacity(n);
        let mut offset = header_len;
        for (name, payload) in &self.tensors {
            let enc = payload.encode();
            let shape_err = || WriteError::BadShape(name.clone());
            let dim = |d: usize| {
                u32::try_from(d)
                    .ok()
                    .filter(|&d| (1..=format::MAX_DIM).contains(&d))
            };
            let (dim0, dim1) = (
                dim(enc.dims[0]).ok_or_else(shape_err)?,
                dim(enc.dims[1]).ok_or_else(shape_err)?,
            );
            let rank = u32::try_from(enc.rank).map_err(|_| shape_err())?;
            if enc.kind == Kind::Factorized && (rank == 0 || rank > dim0.min(dim1)) {
                return Err(shape_err());
            }
            let layout = format::sections(enc.kind, enc.dtype, [dim0, dim1], rank, enc.has_bias)
                .ok_or_else(shape_err)?;
            let mut name_field = [0u8; 48];
            name_field[..name.len()].copy_from_slice(name.as_bytes());
            let length = layout.total_len();
            entries.push((
                RawEntry {
                    name: name_field,
                    kind: enc.kind as u16,
                    dtype: enc.dtype as u16,
                    flags: if enc.has_bias { TENSOR_HAS_BIAS } else { 0 },
                    ndim: enc.ndim,
                    dim0,
                    dim1,
                    rank,
                    offset,
                    length,
                    crc: 0,
                    reserved: [0; 36],
                },
                layout,
                enc.sections,
            ));
            offset = offset
                .checked_add(length)
                .and_then(align_up)
                .filter(|&o| o <= format::MAX_FILE_LEN)
                .ok_or(WriteError::TooLarge)?;
        }
        let file_len = offset;
        let mut out = vec![0u8; usize::try_from(file_len).map_err(|_| WriteError::TooLarge)?];
        for (i, (entry, layout, sections)) in entries.iter_mut().enumerate() {
            let base = entry.offset as usize;
            for (k, bytes) in sections.iter().enumerate() {
                let (start, end) = layout.get(k).expect("one layout range per section");
                assert_eq!(
                    (end - start) as usize,
                    bytes.len(),
                    "section size disagrees with layout"
                );
                out[base + start as usize..base + end as usize].copy_from_slice(bytes);
            }
            entry.crc = crc32(&out[base..base + entry.length as usize]);
            let at = TABLE_OFFSET + i * ENTRY_LEN;
            out[at..at + ENTRY_LEN].copy_from_slice(bytemuck::bytes_of(entry));
        }
        let header = FileHeader {
            magic: MAGIC,
            version: VERSION,
            header_len: header_len as u32,
            n_tensors: n as u32,
            config_len: CONFIG_LEN as u32,
            file_len,
            header_crc: 0,
            flags: 0,
            reserved: [0; 24],
        };
        out[..FILE_HEADER_LEN].copy_from_slice(bytemuck::bytes_of(&header));
        out[FILE_HEADER_LEN..TABLE_OFFSET]
            .copy_from_slice(bytemuck::bytes_of(&self.config.to_raw()));
        let crc =
            header_crc(&out[..header_len as usize]).expect("header region holds the crc field");
        out[format::HEADER_CRC_OFFSET..format::HEADER_CRC_OFFSET + 4]
            .copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(header_len as usize % ALIGN, 0);
        Ok(out)
    }

    /// Writes the blob to `path` atomically (temporary file, then rename).
    pub fn write_file(&self, path: &Path) -> Result<(), WriteError> {
        let bytes = self.to_bytes()?;
        write_atomic(path, &bytes)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// and a rename, so readers never see a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let io = |source| WriteError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".nqb-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}
