//! Like `parse_blob`, but with the header CRC recomputed first, so that
//! mutations of the config and tensor table reach the checks behind the
//! checksum (and, when they pass them, the typed accessors).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    nanoquant_fuzz::fix_header_crc(&mut bytes);
    nanoquant_fuzz::parse_and_use(&bytes);
});
