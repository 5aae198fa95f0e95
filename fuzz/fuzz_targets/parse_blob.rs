//! Fuzz `Blob::parse` on raw bytes, then use whatever it accepts
//! (`verify`, every typed accessor, small reference forwards, `block(0)`,
//! `lm_head`): none of it may panic or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nanoquant_fuzz::parse_and_use(data));
