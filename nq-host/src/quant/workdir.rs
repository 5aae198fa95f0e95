//! Resumable, crash-safe quantization runs (`nq-host quantize --work-dir`).
//!
//! After each reconstructed block the run writes `block-{b}.nqb`: a small
//! blob (same format, CRC-checked, written atomically) holding the block's
//! seven quantized linears and, as a BYTES tensor, its reports. A `key`
//! file names everything the result depends on. Rerunning the same command
//! loads the finished blocks, rebuilds the quantized stream from them (the
//! dequantized layers are bit-identical to the ones the run used) and
//! continues, so the final blob equals an uninterrupted run's byte for byte.
//! A work directory made with other settings is refused, not reused.

use std::path::{Path, PathBuf};

use nq_core::layers::{BinaryLinear, FactorizedLinear};
use nq_core::{F16Vector, SignMatrix};

use super::pipeline::LayerReport;
use super::recon::BlockReport;
use crate::blob_writer::{write_atomic, BlobBuilder, TensorPayload};
use crate::model::backward::LinearId;
use crate::model::ModelConfig;

const REPORTS: &str = "reports.json";

/// Why the work directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WorkDirError {
    /// Filesystem trouble.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// The directory belongs to a run with other settings.
    #[error("{0} holds a run with other settings; use a fresh --work-dir")]
    OtherRun(PathBuf),
    /// A checkpoint file is damaged.
    #[error("{path}: damaged checkpoint: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A run's checkpoint directory.
pub struct WorkDir {
    dir: PathBuf,
    config: ModelConfig,
}

/// One finished block as stored.
pub type SavedBlock = (Vec<TensorPayload>, Vec<LayerReport>, BlockReport);

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredReports {
    layers: Vec<StoredLayer>,
    block: f64,
    rel_output_error: f64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredLayer {
    name: String,
    m: usize,
    n: usize,
    rank: Option<usize>,
    bits: u64,
    weighted_rel_error: f64,
    seconds: f64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WorkDirError + '_ {
    move |error| WorkDirError::Io {
        path: path.to_path_buf(),
        error,
    }
}

impl WorkDir {
    /// Opens (creating) `dir` for a run described by `key`.
    pub fn open(dir: &Path, key: &str, config: ModelConfig) -> Result<Self, WorkDirError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key_path = dir.join("key");
        match std::fs::read_to_string(&key_path) {
            Ok(k) if k == key => {}
            Ok(_) => return Err(WorkDirError::OtherRun(dir.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomic(&key_path, key.as_bytes()).map_err(|e| WorkDirError::Io {
                    path: key_path.clone(),
                    error: std::io::Error::other(e.to_string()),
                })?;
            }
            Err(e) => return Err(io(&key_path)(e)),
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn block_path(&self, b: usize) -> PathBuf {
        self.dir.join(format!("block-{b}.nqb"))
    }

    /// Saves block `b` atomically.
    pub fn save(&self, b: usize, saved: &SavedBlock) -> Result<(), WorkDirError> {
        let (payloads, reports, block) = saved;
        let path = self.block_path(b);
        let mut builder = BlobBuilder::new(self.config);
        let damaged = |reason: String| WorkDirError::Damaged {
            path: path.clone(),
            reason,
        };
        for (id, p) in LinearId::ALL.into_iter().zip(payloads) {
            builder
                .add(super::export::linear_name(b, id), p.clone())
                .map_err(|e| damaged(e.to_string()))?;
        }
        let stored = StoredReports {
            layers: reports
                .iter()
                .map(|r| StoredLayer {
                    name: r.name.clone(),
                    m: r.m,
                    n: r.n,
                    rank: r.rank,
                    bits: r.bits,
                    weighted_rel_error: r.weighted_rel_error,
                    seconds: r.seconds,
                })
                .collect(),
            block: block.seconds,
            rel_output_error: block.rel_output_error,
        };
        let json = serde_json::to_vec(&stored).map_err(|e| damaged(e.to_string()))?;
        builder
            .add(REPORTS, TensorPayload::Bytes(json))
            .map_err(|e| damaged(e.to_string()))?;
        builder.write_file(&path).map_err(|e| WorkDirError::Io {
            path: path.clone(),
            error: std::io::Error::other(e.to_string()),
        })
    }

    /// Loads block `b` if it was saved.
    pub fn load(&self, b: usize) -> Result<Option<SavedBlock>, WorkDirError> {
        let path = self.block_path(b);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let damaged = |reason: String| WorkDirError::Damaged {
            path: path.clone(),
            reason,
        };
        let view = nq_core::Blob::parse(&bytes).map_err(|e| damaged(e.to_string()))?;
        view.verify().map_err(|e| damaged(e.to_string()))?;
        let mut payloads = Vec::with_capacity(7);
        for id in LinearId::ALL {
            let t = view
                .get(&super::export::linear_name(b, id))
                .map_err(|e| damaged(e.to_string()))?;
            let p = match (t.as_factorized(), t.as_binary()) {
                (Ok(f), _) => TensorPayload::Factorized(own_factorized(&f)),
                (_, Ok(bl)) => TensorPayload::Binary(own_binary(&bl)),
                _ => return Err(damaged(format!("{} is not a binary layer", t.name))),
            };
            payloads.push(p);
        }
        let json = view
            .get(REPORTS)
            .and_then(|t| t.as_raw_bytes())
            .map_err(|e| damaged(e.to_string()))?;
        let stored: StoredReports =
            serde_json::from_slice(json).map_err(|e| damaged(e.to_string()))?;
        let reports = stored
            .layers
            .into_iter()
            .map(|l| LayerReport {
                block: b,
                bpw: l.bits as f64 / (l.m * l.n) as f64,
                name: l.name,
                m: l.m,
                n: l.n,
                rank: l.rank,
                bits: l.bits,
                weighted_rel_error: l.weighted_rel_error,
                seconds: l.seconds,
            })
            .collect();
        Ok(Some((
            payloads,
            reports,
            BlockReport {
                block: b,
                rel_output_error: stored.rel_output_error,
                seconds: stored.block,
            },
        )))
    }
}

fn own_signs(s: &SignMatrix<&[u8]>) -> SignMatrix<Vec<u8>> {
    SignMatrix::new(s.rows(), s.cols(), s.as_bytes().to_vec()).expect("a parsed matrix is valid")
}

fn own_f16(v: &F16Vector<&[u8]>) -> F16Vector<Vec<u8>> {
    F16Vector::new(v.as_bytes().to_vec()).expect("a parsed vector is valid")
}

fn own_factorized(f: &FactorizedLinear<&[u8]>) -> FactorizedLinear<Vec<u8>> {
    FactorizedLinear::new(
        own_signs(f.u()),
        own_signs(f.v()),
        own_f16(f.s_pre()),
        own_f16(f.s_post()),
        f.bias().map(own_f16),
    )
    .expect("a parsed layer is valid")
}

fn own_binary(b: &BinaryLinear<&[u8]>) -> BinaryLinear<Vec<u8>> {
    BinaryLinear::new(
        own_signs(b.signs()),
        own_f16(b.s_col()),
        own_f16(b.s_row()),
        b.bias().map(own_f16),
    )
    .expect("a parsed layer is valid")
}
