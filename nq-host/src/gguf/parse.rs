//! The GGUF header walk: bounds-checked reads over a byte slice.
//!
//! Every read goes through [`Cursor`], which only hands out bytes that
//! exist; every count from the file is checked against the bytes left
//! before anything is allocated, and every offset computation is checked.

use std::collections::HashMap;

use super::tensor::{GgmlType, TensorInfo};
use super::value::{GgufType, GgufValue, Metadata};
use super::{
    GgufError, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_KEY_LEN, MAX_METADATA_KV,
    MAX_METADATA_VALUES, MAX_TENSORS, MAX_TENSOR_NAME_LEN,
};

/// `"GGUF"` as the first four bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";

/// The parsed header, metadata and tensor directory of a file.
#[derive(Debug)]
pub(crate) struct Layout {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub by_name: HashMap<String, usize>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: usize,
}

/// A forward-only reader that never reads past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Array elements still allowed in the metadata ([`MAX_METADATA_VALUES`]).
    values_left: u64,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes, or a truncation error naming `what`.
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.bytes.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(GgufError::Truncated { what: what() }),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N, what)?;
        // `take` returned exactly N bytes.
        <[u8; N]>::try_from(s).map_err(|_| GgufError::Truncated { what: what() })
    }

    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A `u64` count that must fit both `limit` and the bytes left, at
    /// `min_len` bytes per item.
    fn count(
        &mut self,
        limit: u64,
        min_len: usize,
        what: &dyn Fn() -> String,
    ) -> Result<usize, GgufError> {
        let n = self.u64(what)?;
        if n > limit {
            return Err(GgufError::TooMany {
                what: what(),
                count: n,
                limit,
            });
        }
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_len))
            .is_some_and(|len| len <= self.remaining());
        if !fits {
            return Err(GgufError::Truncated { what: what() });
        }
        // `fits` implies the conversion succeeded.
        usize::try_from(n).map_err(|_| GgufError::Truncated { what: what() })
    }

    /// A GGUF string (`u64` length + UTF-8 bytes) of at most `max_len` bytes.
    fn string(&mut self, max_len: u64, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.count(max_len, 1, what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 { what: what() })
    }
}

/// Parses everything before the data section and checks every tensor
/// against the file length.
pub(crate) fn parse(bytes: &[u8]) -> Result<Layout, GgufError> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        values_left: MAX_METADATA_VALUES,
    };
    let magic: [u8; 4] = c.array(&|| "magic".into())?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic(magic));
    }
    let version = c.u32(&|| "version".into())?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    // Minimal encoded sizes: a tensor info is name (8) + n_dims (4) +
    // type (4) + offset (8); a key/value is key (8) + type (4) + value (1).
    let n_tensors = c.count(MAX_TENSORS, 24, &|| "tensor count".into())?;
    let n_kv = c.count(MAX_METADATA_KV, 13, &|| "metadata count".into())?;

    let mut metadata = Metadata::default();
    for i in 0..n_kv {
        let key = c.string(MAX_KEY_LEN, &|| format!("key of metadata entry #{i}"))?;
        let what = || format!("metadata key {key:?}");
        let ty = c.u32(&what)?;
        let ty = GgufType::from_id(ty).ok_or_else(|| GgufError::UnknownValueType {
            key: key.clone(),
            ty,
        })?;
        let value = read_value(&mut c, ty, &key, 0)?;
        metadata.insert(key, value)?;
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(GgufValue::U32(a)) if *a != 0 && a.is_power_of_two() => u64::from(*a),
        Some(GgufValue::U32(a)) => return Err(GgufError::BadAlignment(a.to_string())),
        Some(other) => return Err(GgufError::BadAlignment(format!("{other:?}"))),
    };

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut by_name = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let info = read_tensor_info(&mut c, i)?;
        if by_name.insert(info.name.clone(), i).is_some() {
            return Err(GgufError::DuplicateTensor(info.name));
        }
        tensors.push(info);
    }

    let data_offset = align_up(c.pos, alignment).ok_or_else(|| GgufError::Truncated {
        what: "padding before the data section".into(),
    })?;
    let data_len = bytes.len().saturating_sub(data_offset);
    if n_tensors > 0 && data_offset > bytes.len() {
        return Err(GgufError::Truncated {
            what: "padding before the data section".into(),
        });
    }
    for t in &tensors {
        check_placement(t, alignment, data_len)?;
    }
    Ok(Layout {
        version,
        metadata,
        tensors,
        by_name,
        alignment,
        data_offset,
    })
}

/// Reads one value of type `ty`; `depth` counts enclosing arrays.
fn read_value(
    c: &mut Cursor<'_>,
    ty: GgufType,
    key: &str,
    depth: usize,
) -> Result<GgufValue, GgufError> {
    let what = || format!("value of metadata key {key:?}");
    Ok(match ty {
        GgufType::U8 => GgufValue::U8(c.u8(&what)?),
        GgufType::I8 => GgufValue::I8(i8::from_le_bytes(c.array(&what)?)),
        GgufType::U16 => GgufValue::U16(u16::from_le_bytes(c.array(&what)?)),
        GgufType::I16 => GgufValue::I16(i16::from_le_bytes(c.array(&what)?)),
        GgufType::U32 => GgufValue::U32(c.u32(&what)?),
        GgufType::I32 => GgufValue::I32(i32::from_le_bytes(c.array(&what)?)),
        GgufType::F32 => GgufValue::F32(f32::from_le_bytes(c.array(&what)?)),
        GgufType::U64 => GgufValue::U64(c.u64(&what)?),
        GgufType::I64 => GgufValue::I64(i64::from_le_bytes(c.array(&what)?)),
        GgufType::F64 => GgufValue::F64(f64::from_le_bytes(c.array(&what)?)),
        GgufType::Bool => match c.u8(&what)? {
            0 => GgufValue::Bool(false),
            1 => GgufValue::Bool(true),
            value => {
                return Err(GgufError::BadBool {
                    key: key.to_string(),
                    value,
                })
            }
        },
        // Metadata strings are bounded only by the file.
        GgufType::String => GgufValue::String(c.string(u64::MAX, &what)?),
        GgufType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(GgufError::ArrayTooDeep {
                    key: key.to_string(),
                });
            }
            let elem = c.u32(&what)?;
            let elem = GgufType::from_id(elem).ok_or_else(|| GgufError::UnknownValueType {
                key: key.to_string(),
                ty: elem,
            })?;
            let n = c.count(c.values_left, elem.min_encoded_len(), &what)?;
            // `count` checked n <= values_left.
            c.values_left -= n as u64;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_value(c, elem, key, depth + 1)?);
            }
            GgufValue::Array { elem, items }
        }
    })
}

/// Reads tensor info `#i` and computes its element and byte counts.
fn read_tensor_info(c: &mut Cursor<'_>, i: usize) -> Result<TensorInfo, GgufError> {
    let name = c.string(MAX_TENSOR_NAME_LEN, &|| format!("name of tensor #{i}"))?;
    let what = || format!("info of tensor {name:?}");
    let n_dims = c.u32(&what)?;
    if !(1..=MAX_DIMS).contains(&n_dims) {
        return Err(GgufError::BadDims {
            tensor: name,
            n_dims,
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(c.u64(&what)?);
    }
    let ty_id = c.u32(&what)?;
    let offset = c.u64(&what)?;
    let ty = GgmlType::from_id(ty_id).ok_or_else(|| GgufError::UnknownTensorType {
        tensor: name.clone(),
        ty: ty_id,
    })?;
    let bad_shape = |reason: &'static str| GgufError::BadShape {
        tensor: name.clone(),
        dims: dims.clone(),
        reason,
    };
    // ggml stores dims as i64.
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| i64::try_from(n).is_ok())
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| bad_shape("element count overflows"))?;
    let block = ty.block_len();
    if dims[0] % block as u64 != 0 {
        return Err(bad_shape(
            "first dimension is not a multiple of the block size",
        ));
    }
    let n_bytes = (n_elements / block)
        .checked_mul(ty.block_bytes())
        .ok_or_else(|| bad_shape("byte size overflows"))?;
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        n_elements,
        n_bytes,
    })
}

/// Checks alignment and that the tensor lies inside the data section.
fn check_placement(t: &TensorInfo, alignment: u64, data_len: usize) -> Result<(), GgufError> {
    if !t.offset.is_multiple_of(alignment) {
        return Err(GgufError::MisalignedTensor {
            tensor: t.name.clone(),
            offset: t.offset,
            alignment,
        });
    }
    let end = t.offset.checked_add(t.n_bytes as u64);
    if end.is_none_or(|end| end > data_len as u64) {
        return Err(GgufError::TensorOutOfBounds {
            tensor: t.name.clone(),
            offset: t.offset,
            n_bytes: t.n_bytes,
            data_len,
        });
    }
    Ok(())
}

/// `x` rounded up to a multiple of `align` (a power of two).
fn align_up(x: usize, align: u64) -> Option<usize> {
    let align = usize::try_from(align).ok()?;
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}
