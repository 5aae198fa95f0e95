//! GGUF metadata values and the key/value table with typed getters.
//!
//! Values are decoded into owned Rust values once, at open time (the largest
//! tables, a tokenizer's tokens and merges, take milliseconds). Integer
//! getters convert losslessly between the GGUF integer types, because
//! converters disagree on whether, say, a token id is stored as `u32` or
//! `i32`; a value that does not fit is a type error, never a silent wrap.

use std::collections::HashMap;

use super::GgufError;

/// A GGUF metadata value type (the `gguf_metadata_value_type` enum).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgufType {
    /// 8-bit unsigned integer.
    U8,
    /// 8-bit signed integer.
    I8,
    /// 16-bit unsigned integer.
    U16,
    /// 16-bit signed integer.
    I16,
    /// 32-bit unsigned integer.
    U32,
    /// 32-bit signed integer.
    I32,
    /// 32-bit IEEE float.
    F32,
    /// Boolean stored as one byte, 0 or 1.
    Bool,
    /// UTF-8 string with a `u64` length prefix.
    String,
    /// Typed array: element type, `u64` count, elements.
    Array,
    /// 64-bit unsigned integer.
    U64,
    /// 64-bit signed integer.
    I64,
    /// 64-bit IEEE float.
    F64,
}

impl GgufType {
    /// Decodes the on-disk type id.
    pub const fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// Lower-case name, as used in error messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::U8 => "u8",
            Self::I8 => "i8",
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::F32 => "f32",
            Self::Bool => "bool",
            Self::String => "string",
            Self::Array => "array",
            Self::U64 => "u64",
            Self::I64 => "i64",
            Self::F64 => "f64",
        }
    }

    /// The fewest bytes one value of this type occupies on disk (used to
    /// bound array counts before allocating).
    pub(crate) const fn min_encoded_len(self) -> usize {
        match self {
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 | Self::String => 8,
            // element type (4) + count (8)
            Self::Array => 12,
        }
    }
}

/// One decoded metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// Array; `elem` is kept so that an empty array still has a type.
    Array {
        /// Element type.
        elem: GgufType,
        /// Elements, all of type `elem`.
        items: Vec<GgufValue>,
    },
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f64`.
    F64(f64),
}

impl GgufValue {
    /// The value's type.
    pub fn ty(&self) -> GgufType {
        match self {
            Self::U8(_) => GgufType::U8,
            Self::I8(_) => GgufType::I8,
            Self::U16(_) => GgufType::U16,
            Self::I16(_) => GgufType::I16,
            Self::U32(_) => GgufType::U32,
            Self::I32(_) => GgufType::I32,
            Self::F32(_) => GgufType::F32,
            Self::Bool(_) => GgufType::Bool,
            Self::String(_) => GgufType::String,
            Self::Array { .. } => GgufType::Array,
            Self::U64(_) => GgufType::U64,
            Self::I64(_) => GgufType::I64,
            Self::F64(_) => GgufType::F64,
        }
    }

    /// A short description of the type (`array<string>` for arrays).
    pub fn type_name(&self) -> String {
        match self {
            Self::Array { elem, .. } => format!("array<{}>", elem.name()),
            v => v.ty().name().to_string(),
        }
    }

    /// Any integer value widened to `i128` (lossless for every GGUF integer).
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// A float value (`f32`, or `f64` narrowed to `f32`).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Self::F32(v) => Some(v),
            Self::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// A string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of an array value.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array { items, .. } => Some(items),
            _ => None,
        }
    }
}

/// Conversion from a metadata value, used by the typed getters of
/// [`Metadata`].
pub trait FromGguf<'a>: Sized {
    /// What the getter expects, for error messages.
    const EXPECTED: &'static str;
    /// The converted value, or `None` when the type does not match or the
    /// value does not fit.
    fn from_gguf(value: &'a GgufValue) -> Option<Self>;
}

macro_rules! from_gguf_int {
    ($($t:ty),*) => {$(
        impl FromGguf<'_> for $t {
            const EXPECTED: &'static str = stringify!($t);
            fn from_gguf(value: &GgufValue) -> Option<Self> {
                value.as_integer().and_then(|v| <$t>::try_from(v).ok())
            }
        }
    )*};
}
from_gguf_int!(u8, i8, u16, i16, u32, i32, u64, i64, usize);

impl FromGguf<'_> for f32 {
    const EXPECTED: &'static str = "f32";
    fn from_gguf(value: &GgufValue) -> Option<Self> {
        value.as_f32()
    }
}

impl FromGguf<'_> for f64 {
    const EXPECTED: &'static str = "f64";
    fn from_gguf(value: &GgufValue) -> Option<Self> {
        match *value {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }
}

impl FromGguf<'_> for bool {
    const EXPECTED: &'static str = "bool";
    fn from_gguf(value: &GgufValue) -> Option<Self> {
        match *value {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }
}

impl<'a> FromGguf<'a> for &'a str {
    const EXPECTED: &'static str = "string";
    fn from_gguf(value: &'a GgufValue) -> Option<Self> {
        value.as_str()
    }
}

impl<'a> FromGguf<'a> for &'a GgufValue {
    const EXPECTED: &'static str = "any value";
    fn from_gguf(value: &'a GgufValue) -> Option<Self> {
        Some(value)
    }
}

impl<'a, T: FromGguf<'a>> FromGguf<'a> for Vec<T> {
    // Element names are not known in a const context; "array" is enough
    // next to the found type in the message.
    const EXPECTED: &'static str = "array";
    fn from_gguf(value: &'a GgufValue) -> Option<Self> {
        value.as_array()?.iter().map(T::from_gguf).collect()
    }
}

/// The metadata key/value table, in file order, with lookup by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, GgufValue)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// Adds an entry; errors when the key is already present.
    pub(crate) fn insert(&mut self, key: String, value: GgufValue) -> Result<(), GgufError> {
        if self.index.contains_key(&key) {
            return Err(GgufError::DuplicateKey(key));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &GgufValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// True when `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// The value of `key` converted to `T`; errors when it is missing or of
    /// another type.
    pub fn get_as<'a, T: FromGguf<'a>>(&'a self, key: &str) -> Result<T, GgufError> {
        self.get_opt(key)?
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// Like [`get_as`](Self::get_as), but `Ok(None)` when the key is absent.
    /// A present value of the wrong type is still an error.
    pub fn get_opt<'a, T: FromGguf<'a>>(&'a self, key: &str) -> Result<Option<T>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => T::from_gguf(v)
                .map(Some)
                .ok_or_else(|| GgufError::WrongType {
                    key: key.to_string(),
                    expected: T::EXPECTED,
                    found: describe(v),
                }),
        }
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get_as(key)
    }

    /// An integer value that fits `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.get_as(key)
    }

    /// An integer value that fits `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_as(key)
    }

    /// An integer value that fits `i32`.
    pub fn get_i32(&self, key: &str) -> Result<i32, GgufError> {
        self.get_as(key)
    }

    /// A float value (`f64` is narrowed).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.get_as(key)
    }

    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        self.get_as(key)
    }

    /// An array of strings, borrowed.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        self.get_as(key)
    }

    /// An array of integers that each fit `i32`.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        self.get_as(key)
    }

    /// An array of integers that each fit `u32`.
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>, GgufError> {
        self.get_as(key)
    }

    /// An array of floats.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        self.get_as(key)
    }

    /// The element count of an array value.
    pub fn array_len(&self, key: &str) -> Result<usize, GgufError> {
        let v: &GgufValue = self.get_as(key)?;
        v.as_array()
            .map(<[_]>::len)
            .ok_or_else(|| GgufError::WrongType {
                key: key.to_string(),
                expected: "array",
                found: describe(v),
            })
    }
}

/// Type and, for scalars, the value — what a "wrong type" message shows.
fn describe(v: &GgufValue) -> String {
    match v {
        GgufValue::Array { items, .. } => format!("{} of {}", v.type_name(), items.len()),
        GgufValue::String(s) if s.len() > 40 => "string".to_string(),
        GgufValue::String(s) => format!("string {s:?}"),
        other => format!("{} {}", other.type_name(), scalar_text(other)),
    }
}

fn scalar_text(v: &GgufValue) -> String {
    match (v.as_integer(), v) {
        (Some(i), _) => i.to_string(),
        (None, GgufValue::F32(f)) => f.to_string(),
        (None, GgufValue::F64(f)) => f.to_string(),
        (None, GgufValue::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Metadata {
        let mut m = Metadata::default();
        m.insert("a.u8".into(), GgufValue::U8(7)).unwrap();
        m.insert("a.i32neg".into(), GgufValue::I32(-3)).unwrap();
        m.insert("a.u64big".into(), GgufValue::U64(u64::MAX))
            .unwrap();
        m.insert("a.f64".into(), GgufValue::F64(0.5)).unwrap();
        m.insert("a.s".into(), GgufValue::String("hi".into()))
            .unwrap();
        let strs = ["x", "y"].map(|s| GgufValue::String(s.into())).to_vec();
        m.insert(
            "a.strs".into(),
            GgufValue::Array {
                elem: GgufType::String,
                items: strs,
            },
        )
        .unwrap();
        m
    }

    #[test]
    fn integers_convert_losslessly_or_fail() {
        let m = table();
        assert_eq!(m.get_u32("a.u8").unwrap(), 7);
        assert_eq!(m.get_i32("a.i32neg").unwrap(), -3);
        assert!(matches!(
            m.get_u32("a.i32neg"),
            Err(GgufError::WrongType { .. })
        ));
        assert!(matches!(
            m.get_u32("a.u64big"),
            Err(GgufError::WrongType { .. })
        ));
        assert_eq!(m.get_u64("a.u64big").unwrap(), u64::MAX);
    }

    #[test]
    fn typed_getters_name_the_key() {
        let m = table();
        assert_eq!(m.get_f32("a.f64").unwrap(), 0.5);
        assert_eq!(m.get_str("a.s").unwrap(), "hi");
        assert_eq!(m.get_str_array("a.strs").unwrap(), vec!["x", "y"]);
        assert_eq!(m.array_len("a.strs").unwrap(), 2);
        let e = m.get_str("a.u8").unwrap_err().to_string();
        assert!(e.contains("a.u8") && e.contains("string"), "{e}");
        let e = m.get_u32("nope").unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        assert_eq!(m.get_opt::<u32>("nope").unwrap(), None);
        assert!(m.get_opt::<u32>("a.s").is_err());
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let mut m = table();
        assert!(matches!(
            m.insert("a.u8".into(), GgufValue::U8(1)),
            Err(GgufError::DuplicateKey(k)) if k == "a.u8"
        ));
    }
}
