//! The `tokenizer.tokens` BYTES tensor: every token's bytes, so a device can
//! print text without a tokenizer (`docs/FORMAT.md` §7.1).
//!
//! Layout (all integers little-endian `u32`):
//!
//! ```text
//! count
//! offsets[count + 1]     offsets[0] = 0, non-decreasing, offsets[count] = len(data)
//! data                   the token byte strings, concatenated
//! ```
//!
//! [`TokenTable::parse`] checks every offset once, so lookups cannot fail
//! afterwards except for an id out of range.

use core::fmt;

/// Name of the BYTES tensor holding a [`TokenTable`].
pub const TOKEN_TABLE_TENSOR: &str = "tokenizer.tokens";

/// Most tokens a table may hold (the blob's vocabulary limit is lower).
pub const MAX_TOKENS: u32 = 1 << 24;

/// Why a token table was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum TokenTableError {
    /// Shorter than its count and offsets say.
    Truncated,
    /// The count exceeds [`MAX_TOKENS`].
    TooManyTokens,
    /// `offsets[0] != 0`, an offset decreases, or the last one is not the data length.
    BadOffsets,
}

impl fmt::Display for TokenTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Truncated => "token table is truncated",
            Self::TooManyTokens => "token table holds too many tokens",
            Self::BadOffsets => "token table offsets are not a partition of its data",
        })
    }
}

impl core::error::Error for TokenTableError {}

/// A parsed, borrowing token table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenTable<'a> {
    count: usize,
    offsets: &'a [u8],
    data: &'a [u8],
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    let b: [u8; 4] = bytes.get(at..end)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

impl<'a> TokenTable<'a> {
    /// Parses and fully checks a table; never panics.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, TokenTableError> {
        let count = read_u32(bytes, 0).ok_or(TokenTableError::Truncated)?;
        if count > MAX_TOKENS {
            return Err(TokenTableError::TooManyTokens);
        }
        let count = count as usize;
        let offsets_len = (count + 1) * 4;
        let offsets = bytes
            .get(4..4 + offsets_len)
            .ok_or(TokenTableError::Truncated)?;
        let data = bytes.get(4 + offsets_len..).unwrap_or(&[]);
        let mut prev = 0u32;
        for k in 0..=count {
            let o = read_u32(offsets, 4 * k).ok_or(TokenTableError::Truncated)?;
            if (k == 0 && o != 0) || o < prev {
                return Err(TokenTableError::BadOffsets);
            }
            prev = o;
        }
        if prev as usize != data.len() {
            return Err(TokenTableError::BadOffsets);
        }
        Ok(Self {
            count,
            offsets,
            data,
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the table holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The bytes of token `id`, or `None` when out of range.
    pub fn token_bytes(&self, id: u32) -> Option<&'a [u8]> {
        let id = id as usize;
        if id >= self.count {
            return None;
        }
        let start = read_u32(self.offsets, 4 * id)? as usize;
        let end = read_u32(self.offsets, 4 * id + 4)? as usize;
        self.data.get(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn build(tokens: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
        let mut off = 0u32;
        out.extend_from_slice(&off.to_le_bytes());
        for t in tokens {
            off += t.len() as u32;
            out.extend_from_slice(&off.to_le_bytes());
        }
        for t in tokens {
            out.extend_from_slice(t);
        }
        out
    }

    #[test]
    fn looks_up_every_token() {
        let toks: [&[u8]; 4] = [b"a", b"", b"hello", b"\xff\x00"];
        let bytes = build(&toks);
        let t = TokenTable::parse(&bytes).unwrap();
        assert_eq!(t.len(), 4);
        for (i, want) in toks.iter().enumerate() {
            assert_eq!(t.token_bytes(i as u32), Some(*want));
        }
        assert_eq!(t.token_bytes(4), None);
        assert_eq!(t.token_bytes(u32::MAX), None);
    }

    #[test]
    fn rejects_crafted_tables() {
        let good = build(&[b"ab", b"c"]);
        // Every proper prefix is truncated or inconsistent.
        for cut in 0..good.len() {
            assert!(TokenTable::parse(&good[..cut]).is_err(), "prefix {cut}");
        }
        // Trailing garbage breaks `offsets[count] = len(data)`.
        let mut long = good.clone();
        long.push(0);
        assert_eq!(TokenTable::parse(&long), Err(TokenTableError::BadOffsets));
        // Decreasing offsets ([0, 2, 1, 3]), last one still right.
        let mut dec = build(&[b"a", b"b", b"c"]);
        dec[8..12].copy_from_slice(&2u32.to_le_bytes());
        dec[12..16].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(TokenTable::parse(&dec), Err(TokenTableError::BadOffsets));
        // Nonzero first offset.
        let mut first = good.clone();
        first[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(TokenTable::parse(&first), Err(TokenTableError::BadOffsets));
        // Huge count.
        let huge = (MAX_TOKENS + 1).to_le_bytes();
        assert_eq!(
            TokenTable::parse(&huge),
            Err(TokenTableError::TooManyTokens)
        );
        assert_eq!(
            TokenTable::parse(&u32::MAX.to_le_bytes()),
            Err(TokenTableError::TooManyTokens)
        );
    }

    #[test]
    fn random_bytes_never_panic_and_accepted_tables_are_consistent() {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for round in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Bias toward plausible headers so deeper paths run too.
            if round % 2 == 0 && bytes.len() >= 4 {
                let count = (next() % 4) as u32;
                bytes[..4].copy_from_slice(&count.to_le_bytes());
            }
            if let Ok(t) = TokenTable::parse(&bytes) {
                let total: usize = (0..t.len() as u32)
                    .map(|i| t.token_bytes(i).unwrap().len())
                    .sum();
                assert!(total <= bytes.len());
            }
        }
        // Mutations of a valid table: never panic.
        let good = build(&[b"xy", b"z", b""]);
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut m = good.clone();
                m[i] = v;
                let _ = TokenTable::parse(&m);
            }
        }
    }
}
