//! The `.nqb` blob: a paranoid, zero-copy reader.
//!
//! [`Blob::parse`] walks the fixed-size header and tensor table — O(header)
//! work, no tensor byte touched — and rejects anything `docs/FORMAT.md` does
//! not allow, with one [`BlobError`] variant per rule. It never panics and
//! never indexes out of bounds: every read goes through `.get()` and every
//! value from the file through checked arithmetic. [`BlobView::verify`]
//! then checks the tensor CRCs.

mod config;
mod error;
pub mod format;
mod view;

pub use config::{Arch, ModelConfig};
pub use error::BlobError;
pub use format::{Dtype, Kind};
pub use view::{BlobView, BlockView, Embedding, Head, TensorView};

use format::*;

/// CRC-32/ISO-HDLC (zlib's), the checksum of FORMAT.md §1.
pub const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// CRC-32 of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    CRC32.checksum(bytes)
}

/// CRC of a header region with its `header_crc` field taken as zero.
///
/// Returns `None` if `header` is too short to contain the field.
pub fn header_crc(header: &[u8]) -> Option<u32> {
    let before = header.get(..HEADER_CRC_OFFSET)?;
    let after = header.get(HEADER_CRC_OFFSET + 4..)?;
    let mut digest = CRC32.digest();
    digest.update(before);
    digest.update(&[0; 4]);
    digest.update(after);
    Some(digest.finalize())
}

/// Entry point for reading blobs.
pub struct Blob;

impl Blob {
    /// Validates the structure of `bytes` and returns a view borrowing them.
    ///
    /// O(header) work; tensor CRCs are left to [`BlobView::verify`].
    pub fn parse(bytes: &[u8]) -> Result<BlobView<'_>, BlobError> {
        let header_bytes = bytes
            .get(..FILE_HEADER_LEN)
            .ok_or(BlobError::TooShort { len: bytes.len() })?;
        let header: FileHeader = bytemuck::pod_read_unaligned(header_bytes);
        if header.magic != MAGIC {
            return Err(BlobError::BadMagic);
        }
        if header.version != VERSION {
            return Err(BlobError::UnsupportedVersion(header.version));
        }
        if header.config_len as usize != CONFIG_LEN {
            return Err(BlobError::BadConfigLen(header.config_len));
        }
        if header.n_tensors > MAX_TENSORS {
            return Err(BlobError::TooManyTensors(header.n_tensors));
        }
        let n_tensors = header.n_tensors as usize;
        let table_end = (TABLE_OFFSET + ENTRY_LEN * n_tensors) as u64;
        let expected_header_len = align_up(table_end).ok_or(BlobError::TooLarge(table_end))?;
        if u64::from(header.header_len) != expected_header_len {
            return Err(BlobError::HeaderLenMismatch {
                found: header.header_len,
                expected: expected_header_len,
            });
        }
        if header.file_len > MAX_FILE_LEN || usize::try_from(header.file_len).is_err() {
            return Err(BlobError::TooLarge(header.file_len));
        }
        let file_len = header.file_len;
        if (bytes.len() as u64) < file_len {
            return Err(BlobError::Truncated {
                expected: file_len,
                actual: bytes.len(),
            });
        }
        if bytes.len() as u64 > file_len {
            return Err(BlobError::TrailingBytes {
                expected: file_len,
                actual: bytes.len() as u64,
            });
        }
        let header_len = header.header_len as usize;
        let header_region = bytes.get(..header_len).ok_or(BlobError::Truncated {
            expected: expected_header_len,
            actual: bytes.len(),
        })?;
        let computed = header_crc(header_region).ok_or(BlobError::TooShort { len: bytes.len() })?;
        if computed != header.header_crc {
            return Err(BlobError::HeaderCrcMismatch {
                stored: header.header_crc,
                computed,
            });
        }
        if header.flags != 0 {
            return Err(BlobError::Reserved {
                field: "header.flags",
            });
        }
        if header.reserved.iter().any(|&b| b != 0) {
            return Err(BlobError::Reserved {
                field: "header.reserved",
            });
        }
        let config_bytes = bytes
            .get(FILE_HEADER_LEN..TABLE_OFFSET)
            .ok_or(BlobError::TooShort { len: bytes.len() })?;
        let config = ModelConfig::from_raw(&bytemuck::pod_read_unaligned(config_bytes))?;
        check_zero(bytes, table_end, expected_header_len)?;

        let view = BlobView::new(bytes, config, n_tensors, header_len);
        let mut expected_offset = expected_header_len;
        let mut prev_name: &[u8] = &[];
        for index in 0..n_tensors {
            let idx = index as u32;
            let entry = view.entry(index)?;
            let name = entry.name.as_bytes();
            if index > 0 {
                match name.cmp(prev_name) {
                    core::cmp::Ordering::Equal => {
                        return Err(BlobError::DuplicateName { index: idx })
                    }
                    core::cmp::Ordering::Less => {
                        return Err(BlobError::NamesNotSorted { index: idx })
                    }
                    core::cmp::Ordering::Greater => {}
                }
            }
            prev_name = name;
            let offset = entry.offset;
            if offset % ALIGN as u64 != 0 {
                return Err(BlobError::Misaligned { index: idx });
            }
            if offset < expected_offset {
                return Err(BlobError::Overlap { index: idx });
            }
            if offset > expected_offset {
                return Err(BlobError::Hole { index: idx });
            }
            // `entry()` checked `offset + length ≤ file_len`.
            let end = offset + entry.data.len() as u64;
            expected_offset = align_up(end).ok_or(BlobError::OutOfBounds { index: idx })?;
            if expected_offset > file_len {
                return Err(BlobError::OutOfBounds { index: idx });
            }
            check_zero(bytes, end, expected_offset)?;
        }
        if expected_offset != file_len {
            return Err(BlobError::TrailingBytes {
                expected: expected_offset,
                actual: file_len,
            });
        }
        Ok(view)
    }
}

/// Checks that `bytes[start..end]` are all zero (padding).
fn check_zero(bytes: &[u8], start: u64, end: u64) -> Result<(), BlobError> {
    let (s, e) = (start as usize, end as usize);
    let pad = bytes.get(s..e).ok_or(BlobError::Truncated {
        expected: end,
        actual: bytes.len(),
    })?;
    match pad.iter().position(|&b| b != 0) {
        Some(k) => Err(BlobError::NonZeroPadding {
            offset: start + k as u64,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
