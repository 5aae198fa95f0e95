//! What the fuzz targets do with an input, shared so that both targets
//! exercise exactly the same reader paths.
//!
//! `Blob::parse` must never panic or read out of bounds on any input
//! (FORMAT.md §1 rule 5), and everything it accepts must be memory-safe to
//! use (§9), so on success [`parse_and_use`] also runs `verify`, every typed
//! accessor and, for small layers, the reference forward pass.

use nq_core::{Blob, Linear};

/// Largest `m · n` whose reference forward is run (keeps each input fast).
const MAX_FORWARD_WEIGHTS: usize = 1 << 16;

/// Byte offset of `header_len` in the file header (FORMAT.md §3).
const HEADER_LEN_OFFSET: usize = 12;

/// Parses `data` and, if that succeeds, touches everything a runtime would.
pub fn parse_and_use(data: &[u8]) {
    let Ok(view) = Blob::parse(data) else {
        return;
    };
    let _ = view.verify();
    for t in view.tensors() {
        for k in 0..=t.section_count() {
            let _ = t.section(k);
        }
        let _ = t.as_embedding();
        let _ = t.as_dense();
        let _ = t.as_raw_bytes();
        if let Ok(linear) = t.as_linear() {
            forward_zeros(&linear);
        }
        // Names are strictly sorted, so lookup finds every tensor.
        assert_eq!(view.find(t.name).map(|f| f.index), Some(t.index));
    }
    if let Ok(block) = view.block(0) {
        for linear in [
            block.attn_q,
            block.attn_k,
            block.attn_v,
            block.attn_output,
            block.ffn_gate,
            block.ffn_up,
            block.ffn_down,
        ] {
            forward_zeros(&linear);
        }
    }
    let _ = view.lm_head();
}

/// Runs a small FACTORIZED or BINARY layer's reference forward on zeros.
fn forward_zeros(linear: &Linear<'_>) {
    let (m, n) = (linear.out_features(), linear.in_features());
    if !matches!(linear, Linear::Factorized(_) | Linear::Binary(_))
        || m.saturating_mul(n) > MAX_FORWARD_WEIGHTS
    {
        return;
    }
    let x = vec![0.0f32; n];
    let mut y = vec![0.0f32; m];
    let mut scratch = vec![0.0f32; linear.scratch_len()];
    linear.forward_ref(&x, &mut y, &mut scratch);
}

/// Rewrites the header CRC to match the region the header states, when that
/// region lies inside `data`, so a mutation gets past the checksum to the
/// config, table, offset and padding checks.
pub fn fix_header_crc(data: &mut [u8]) {
    let Some(field) = data.get(HEADER_LEN_OFFSET..HEADER_LEN_OFFSET + 4) else {
        return;
    };
    let stated = u32::from_le_bytes([field[0], field[1], field[2], field[3]]) as usize;
    let crc_at = nq_core::blob::format::HEADER_CRC_OFFSET;
    if let Some(crc) = data.get(..stated).and_then(nq_core::blob::header_crc) {
        data[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    }
}
