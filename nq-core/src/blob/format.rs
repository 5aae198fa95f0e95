//! On-disk records, ids, limits and the section layout of every tensor kind.
//!
//! Everything here is a transcription of `docs/FORMAT.md`; the reader and
//! the host-side writer both use it, so the two agree by construction and the
//! tests check it against hand-computed numbers from the spec.

use bytemuck::{Pod, Zeroable};

/// File magic: `\x89NQB\r\n\x1a\n`.
pub const MAGIC: [u8; 8] = [0x89, b'N', b'Q', b'B', b'\r', b'\n', 0x1A, b'\n'];
/// The only version this reader knows.
pub const VERSION: u32 = 1;
/// Alignment of the header region, every tensor and every section.
pub const ALIGN: usize = 64;
/// Size of [`FileHeader`].
pub const FILE_HEADER_LEN: usize = 64;
/// Size of [`RawConfig`].
pub const CONFIG_LEN: usize = 128;
/// Size of one [`RawEntry`].
pub const ENTRY_LEN: usize = 128;
/// Offset of the first tensor entry.
pub const TABLE_OFFSET: usize = FILE_HEADER_LEN + CONFIG_LEN;

/// Most tensors a blob may list.
pub const MAX_TENSORS: u32 = 4096;
/// Longest tensor name in bytes (the field is 48 bytes with a terminating 0).
pub const MAX_NAME_LEN: usize = 47;
/// Largest single dimension.
pub const MAX_DIM: u32 = 1 << 24;
/// Most decoder layers.
pub const MAX_LAYERS: u32 = 1024;
/// Largest vocabulary.
pub const MAX_VOCAB: u32 = 1 << 22;
/// Largest file (and so every offset and length).
pub const MAX_FILE_LEN: u64 = 1 << 40;
/// Most sections a tensor kind has.
pub const MAX_SECTIONS: usize = 5;

/// `ModelConfig.flags`: the LM head is `token_embd`.
pub const CONFIG_TIED_EMBEDDINGS: u32 = 1 << 0;
/// `ModelConfig.flags`: q/k/v projections carry a bias.
pub const CONFIG_ATTN_BIAS: u32 = 1 << 1;
/// `ModelConfig.flags`: per-head RMSNorm on q and k.
pub const CONFIG_QK_NORM: u32 = 1 << 2;
/// All defined config flag bits.
pub const CONFIG_KNOWN_FLAGS: u32 = CONFIG_TIED_EMBEDDINGS | CONFIG_ATTN_BIAS | CONFIG_QK_NORM;
/// `TensorEntry.flags`: a linear layer has a bias section.
pub const TENSOR_HAS_BIAS: u32 = 1 << 0;
/// `bos_id`/`eos_id` value meaning "none".
pub const NO_TOKEN: u32 = u32::MAX;

/// The 64-byte file header (FORMAT.md §3).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct FileHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: u32,
    /// Bytes of the header region.
    pub header_len: u32,
    /// Entries in the tensor table.
    pub n_tensors: u32,
    /// [`CONFIG_LEN`].
    pub config_len: u32,
    /// Length of the whole file.
    pub file_len: u64,
    /// CRC-32 of the header region with this field taken as zero.
    pub header_crc: u32,
    /// Zero in version 1.
    pub flags: u32,
    /// Zero.
    pub reserved: [u8; 24],
}

/// The 128-byte model config record (FORMAT.md §4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct RawConfig {
    /// Architecture id.
    pub arch: u32,
    /// Decoder layers.
    pub n_layers: u32,
    /// Hidden size.
    pub d_model: u32,
    /// SwiGLU inner size.
    pub d_ffn: u32,
    /// Query heads.
    pub n_heads: u32,
    /// Key/value heads.
    pub n_kv_heads: u32,
    /// Per-head dimension.
    pub head_dim: u32,
    /// Vocabulary size.
    pub vocab_size: u32,
    /// Trained context length.
    pub max_seq_len: u32,
    /// RoPE base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// Beginning-of-sequence token or [`NO_TOKEN`].
    pub bos_id: u32,
    /// End-of-sequence token or [`NO_TOKEN`].
    pub eos_id: u32,
    /// Zero.
    pub reserved: [u8; 72],
}

/// One 128-byte tensor table entry (FORMAT.md §5).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct RawEntry {
    /// Zero-terminated printable-ASCII name.
    pub name: [u8; 48],
    /// [`Kind`] id.
    pub kind: u16,
    /// [`Dtype`] id.
    pub dtype: u16,
    /// `TENSOR_*` bits.
    pub flags: u32,
    /// 1 or 2.
    pub ndim: u32,
    /// Rows / length.
    pub dim0: u32,
    /// Columns (1 for vectors).
    pub dim1: u32,
    /// Inner rank (FACTORIZED only).
    pub rank: u32,
    /// Absolute file offset of the data.
    pub offset: u64,
    /// Data length in bytes.
    pub length: u64,
    /// CRC-32 of the data.
    pub crc: u32,
    /// Zero.
    pub reserved: [u8; 36],
}

const _: () = assert!(core::mem::size_of::<FileHeader>() == FILE_HEADER_LEN);
const _: () = assert!(core::mem::size_of::<RawConfig>() == CONFIG_LEN);
const _: () = assert!(core::mem::size_of::<RawEntry>() == ENTRY_LEN);
const _: () = assert!(TABLE_OFFSET % 64 == 0 && ALIGN == 64);
// Records are read with `pod_read_unaligned`, i.e. in native byte order.
#[cfg(target_endian = "big")]
compile_error!(
    "nq-core reads little-endian blob records natively; big-endian targets are unsupported"
);

/// Byte offset of the `header_crc` field.
pub const HEADER_CRC_OFFSET: usize = 32;

/// Tensor kinds (FORMAT.md §6). Ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u16)]
pub enum Kind {
    /// Dense f32/f16 values.
    Dense = 1,
    /// Row-quantized int8 / 4-bit codes with f16 row scales.
    RowQuant = 2,
    /// Low-rank binary factors.
    Factorized = 3,
    /// Full-rank binary with row and column scales.
    Binary = 4,
    /// Opaque bytes.
    Bytes = 5,
}

impl Kind {
    /// Decodes an id.
    pub const fn from_id(id: u16) -> Option<Self> {
        Some(match id {
            1 => Self::Dense,
            2 => Self::RowQuant,
            3 => Self::Factorized,
            4 => Self::Binary,
            5 => Self::Bytes,
            _ => return None,
        })
    }

    /// Lower-case name, as `nq-host inspect` prints it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Dense => "dense",
            Self::RowQuant => "row-quant",
            Self::Factorized => "factorized",
            Self::Binary => "binary",
            Self::Bytes => "bytes",
        }
    }

    /// Whether this kind is a linear layer that may carry a bias.
    pub const fn is_quantized_linear(self) -> bool {
        matches!(self, Self::Factorized | Self::Binary)
    }
}

/// Element types (FORMAT.md §6). Ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u16)]
pub enum Dtype {
    /// binary32.
    F32 = 1,
    /// binary16.
    F16 = 2,
    /// Signed byte codes.
    I8 = 3,
    /// 4-bit codes, offset 8.
    Q4 = 4,
    /// Packed ±1.
    Sign = 5,
    /// Raw bytes.
    U8 = 6,
}

impl Dtype {
    /// Decodes an id.
    pub const fn from_id(id: u16) -> Option<Self> {
        Some(match id {
            1 => Self::F32,
            2 => Self::F16,
            3 => Self::I8,
            4 => Self::Q4,
            5 => Self::Sign,
            6 => Self::U8,
            _ => return None,
        })
    }

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::I8 => "i8",
            Self::Q4 => "q4",
            Self::Sign => "sign",
            Self::U8 => "u8",
        }
    }
}

/// Whether FORMAT.md §6 allows this (kind, dtype, ndim) combination.
pub const fn combination_allowed(kind: Kind, dtype: Dtype, ndim: u32) -> bool {
    match kind {
        Kind::Dense => matches!(dtype, Dtype::F32 | Dtype::F16) && (ndim == 1 || ndim == 2),
        Kind::RowQuant => matches!(dtype, Dtype::I8 | Dtype::Q4) && ndim == 2,
        Kind::Factorized | Kind::Binary => matches!(dtype, Dtype::Sign) && ndim == 2,
        Kind::Bytes => matches!(dtype, Dtype::U8) && ndim == 1,
    }
}

/// Rounds `x` up to a multiple of [`ALIGN`]; `None` on overflow.
#[inline]
pub const fn align_up(x: u64) -> Option<u64> {
    match x.checked_add(ALIGN as u64 - 1) {
        Some(v) => Some(v & !(ALIGN as u64 - 1)),
        None => None,
    }
}

/// The byte ranges of a tensor's sections, relative to the tensor start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sections {
    ranges: [(u64, u64); MAX_SECTIONS],
    count: usize,
}

impl Sections {
    /// Section `k` as `(start, end)`.
    pub fn get(&self, k: usize) -> Option<(u64, u64)> {
        if k < self.count {
            Some(self.ranges[k])
        } else {
            None
        }
    }

    /// Number of sections.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none (never for a valid tensor).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The tensor's `length`: the end of the last section.
    pub fn total_len(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.ranges[self.count - 1].1
        }
    }

    fn push(&mut self, len: u64) -> Option<()> {
        let start = if self.count == 0 {
            0
        } else {
            align_up(self.ranges[self.count - 1].1)?
        };
        let end = start.checked_add(len)?;
        *self.ranges.get_mut(self.count)? = (start, end);
        self.count += 1;
        Some(())
    }
}

/// Bytes of a packed `rows × cols` sign section (FORMAT.md §6.1).
pub fn sign_section_len(rows: u64, cols: u64) -> Option<u64> {
    let col_bytes = cols.checked_add(31)? / 32 * 4;
    let padded_rows = rows.checked_add(15)? / 16 * 16;
    padded_rows.checked_mul(col_bytes)
}

/// Section layout for a tensor with these header fields, or `None` when the
/// combination is not allowed or a size overflows. Does not check ranges.
pub fn sections(
    kind: Kind,
    dtype: Dtype,
    dims: [u32; 2],
    rank: u32,
    has_bias: bool,
) -> Option<Sections> {
    let (m, n, r) = (u64::from(dims[0]), u64::from(dims[1]), u64::from(rank));
    let mut s = Sections {
        ranges: [(0, 0); MAX_SECTIONS],
        count: 0,
    };
    match (kind, dtype) {
        (Kind::Dense, Dtype::F32) => s.push(m.checked_mul(n)?.checked_mul(4)?)?,
        (Kind::Dense, Dtype::F16) => s.push(m.checked_mul(n)?.checked_mul(2)?)?,
        (Kind::RowQuant, Dtype::I8) => {
            s.push(m.checked_mul(n)?)?;
            s.push(m.checked_mul(2)?)?;
        }
        (Kind::RowQuant, Dtype::Q4) => {
            s.push(m.checked_mul(n.checked_add(1)? / 2)?)?;
            s.push(m.checked_mul(2)?)?;
        }
        (Kind::Factorized, Dtype::Sign) => {
            s.push(sign_section_len(m, r)?)?;
            s.push(sign_section_len(r, n)?)?;
            s.push(n.checked_mul(2)?)?;
            s.push(m.checked_mul(2)?)?;
            if has_bias {
                s.push(m.checked_mul(2)?)?;
            }
        }
        (Kind::Binary, Dtype::Sign) => {
            s.push(sign_section_len(m, n)?)?;
            s.push(n.checked_mul(2)?)?;
            s.push(m.checked_mul(2)?)?;
            if has_bias {
                s.push(m.checked_mul(2)?)?;
            }
        }
        (Kind::Bytes, Dtype::U8) => s.push(m)?,
        _ => return None,
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_layout_matches_hand_computation() {
        // FACTORIZED 576×576 rank 256, no bias (SmolLM2 attn_q at 1 bpw):
        // U 576×256 → 36 tiles · 16 · 32 = 18432; V 256×576 → 16·16·72 = 18432;
        // s_pre 1152 at 36864; s_post at align(36864+1152)=38016, ends 39168.
        let s = sections(Kind::Factorized, Dtype::Sign, [576, 576], 256, false).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s.get(0), Some((0, 18432)));
        assert_eq!(s.get(1), Some((18432, 36864)));
        assert_eq!(s.get(2), Some((36864, 38016)));
        assert_eq!(s.get(3), Some((38016, 39168)));
        assert_eq!(s.total_len(), 39168);
        // BINARY 3×5 with bias: signs 64; s_col 10 at 64; s_row 6 at 128; bias 6 at 192.
        let s = sections(Kind::Binary, Dtype::Sign, [3, 5], 0, true).unwrap();
        assert_eq!(s.total_len(), 198);
        // ROW_QUANT Q4 3×5: codes 3·3 = 9; scales at 64, 6 bytes.
        let s = sections(Kind::RowQuant, Dtype::Q4, [3, 5], 0, false).unwrap();
        assert_eq!(s.total_len(), 70);
        assert!(sections(Kind::Dense, Dtype::Sign, [1, 1], 0, false).is_none());
    }

    #[test]
    fn crc_is_the_zlib_crc() {
        assert_eq!(super::super::crc32(b"123456789"), 0xCBF4_3926);
    }
}
