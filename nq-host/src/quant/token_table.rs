//! The `tokenizer.tokens` BYTES tensor (docs/FORMAT.md §7.1): every token's
//! raw bytes, so nq-core's runtime can print text without a tokenizer.

use crate::tokenizer::Tokenizer;

/// Name of the tensor (the same constant nq-core reads).
pub const TOKEN_TABLE_TENSOR: &str = nq_core::runtime::TOKEN_TABLE_TENSOR;

/// `u32 count`, `u32 offsets[count + 1]`, then the concatenated token bytes
/// (all little-endian), for ids `0..tok.vocab_size()`.
pub fn token_table(tok: &Tokenizer) -> Vec<u8> {
    let tokens: Vec<Vec<u8>> = (0..tok.vocab_size() as u32)
        .map(|id| tok.token_bytes(id))
        .collect();
    pack(&tokens)
}

/// The table of the given token byte strings (id = position).
pub fn pack(tokens: &[Vec<u8>]) -> Vec<u8> {
    let n = tokens.len();
    let data_len: usize = tokens.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(4 * (n + 2) + data_len);
    out.extend_from_slice(&(n as u32).to_le_bytes());
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
