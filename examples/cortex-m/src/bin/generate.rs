//! Bare-metal greedy generation from a blob that lies in memory.
//!
//! The blob is expected at [`BLOB_ADDR`] (under QEMU's mps2-an500:
//! `-device loader,file=model.nqb,addr=0x60000000`, 16 MiB of RAM there; on
//! a board, wherever the external flash is memory-mapped). The firmware
//! reads the blob's length from its header, parses and CRC-checks it, runs
//! the nq-core runtime over a static arena (f32 KV cache), generates
//! [`N_NEW`] tokens greedily after [`PROMPT`] (token ids: there is no
//! tokenizer on the device) and prints the ids and the text the blob's
//! `tokenizer.tokens` table gives them, through semihosting:
//!
//! ```text
//! generate: ids 12,40,7,...
//! generate: text "..."
//! generate: PASS
//! ```
#![no_std]
#![no_main]

use core::mem::size_of;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprint, hprintln};
use nq_core::blob::format::FileHeader;
use nq_core::runtime::{argmax, TokenTable, TOKEN_TABLE_TENSOR};
use nq_core::{Blob, KvDtype, Runtime};

/// Where the blob is mapped.
const BLOB_ADDR: usize = 0x6000_0000;
/// Most bytes a blob may span there.
const BLOB_MAX: usize = 16 << 20;
/// Arena bytes (static, in RAM; fits a 512 KiB part). Enough for the CI's
/// tiny model (`nq-host inspect --footprint` prints what a blob needs).
const ARENA: usize = 256 << 10;
/// Context capacity.
const CTX: usize = 32;
/// The prompt, as token ids (`nq-host run --prompt-ids` takes the same).
const PROMPT: [u32; 5] = [1, 2, 3, 4, 5];
/// Tokens to generate.
const N_NEW: usize = 16;

fn fail(what: &dyn core::fmt::Display) -> ! {
    hprintln!("generate: {}", what);
    hprintln!("generate: FAIL");
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

/// The blob region, cut to the length its header states.
fn blob_bytes() -> &'static [u8] {
    // SAFETY: the loader (or the board's flash mapping) provides BLOB_MAX
    // readable bytes at BLOB_ADDR for the whole run and nothing writes them.
    let region: &'static [u8] =
        unsafe { core::slice::from_raw_parts(BLOB_ADDR as *const u8, BLOB_MAX) };
    let header: FileHeader = bytemuck::pod_read_unaligned(&region[..size_of::<FileHeader>()]);
    let len = usize::try_from(header.file_len).unwrap_or(usize::MAX);
    match region.get(..len) {
        Some(b) => b,
        None => fail(&"blob length in the header exceeds the region"),
    }
}

#[entry]
fn main() -> ! {
    let bytes = blob_bytes();
    let view = match Blob::parse(bytes) {
        Ok(v) => v,
        Err(e) => fail(&e),
    };
    if let Err(e) = view.verify() {
        fail(&e);
    }
    let cfg = *view.config();
    hprintln!(
        "generate: blob {} bytes, {} layers, d_model {}, vocab {}",
        bytes.len(),
        cfg.n_layers,
        cfg.d_model,
        cfg.vocab_size
    );
    static mut ARENA_BYTES: [u8; ARENA] = [0; ARENA];
    // SAFETY: `main` runs once and never returns; this is the only
    // reference to the buffer, and no interrupt handler touches it.
    let arena: &'static mut [u8; ARENA] = unsafe { &mut *core::ptr::addr_of_mut!(ARENA_BYTES) };
    let need = Runtime::arena_bytes(&cfg, CTX, KvDtype::F32);
    hprintln!("generate: arena {} of {} bytes", need, ARENA);
    let mut rt = match Runtime::new(view, arena, CTX, KvDtype::F32) {
        Ok(r) => r,
        Err(e) => fail(&e),
    };
    let mut ids = [0u32; N_NEW];
    let mut next = match rt.prefill(&PROMPT) {
        Ok(l) => argmax(l),
        Err(e) => fail(&e),
    };
    for (i, id) in ids.iter_mut().enumerate() {
        *id = next;
        if i + 1 < N_NEW {
            next = match rt.decode(next) {
                Ok(l) => argmax(l),
                Err(e) => fail(&e),
            };
        }
    }
    hprint!("generate: ids ");
    for (i, id) in ids.iter().enumerate() {
        hprint!("{}{}", if i > 0 { "," } else { "" }, id);
    }
    hprintln!("");
    if let Some(t) = view.find(TOKEN_TABLE_TENSOR) {
        let table = match t.as_raw_bytes().map(TokenTable::parse) {
            Ok(Ok(t)) => t,
            _ => fail(&"bad tokenizer.tokens"),
        };
        hprint!("generate: text \"");
        for &id in &ids {
            for &b in table.token_bytes(id).unwrap_or(&[]) {
                // Printable ASCII as is, everything else escaped.
                if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
                    hprint!("{}", b as char);
                } else {
                    hprint!("\\x{:02x}", b);
                }
            }
        }
        hprintln!("\"");
    }
    hprintln!("generate: PASS");
    debug::exit(debug::EXIT_SUCCESS);
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    hprintln!("generate: panic: {}", info);
    hprintln!("generate: FAIL");
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
