//! Fuzz `TokenTable::parse` on raw bytes, then look up every id it accepts
//! (and one past the end): nothing may panic or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nq_core::runtime::TokenTable;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = TokenTable::parse(data) {
        for id in 0..=t.len().min(1 << 16) as u32 {
            let _ = t.token_bytes(id);
        }
    }
});
