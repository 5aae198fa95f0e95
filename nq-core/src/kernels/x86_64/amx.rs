//! AMX-INT8 (Intel Xeon, Sapphire Rapids and later): `tdpbssd` tile
//! products for batches of 3 tokens and more; 1 or 2 tokens stay on the
//! AVX2 lookups, which are cheaper there (see `uses_tables`).
//!
//! One `tdpbssd` multiplies a 16 × 64 int8 tile by a 64 × 16 int8 tile into
//! 16 × 16 int32: 16,384 multiply-adds, where a 512-bit `vpdpbusd` does 64.
//! The product is laid out so the blob's bytes need no repacking:
//!
//! * **A** (16 tokens × 64 columns) is the int8 activations, copied once
//!   per call into whole 1 KB tiles (`pack_tiles`).
//! * **B** (64 columns × 16 rows, AMX's "VNNI" layout of 16 rows of 64
//!   bytes, row `k` holding columns `4k..4k+4` of each of the 16 matrix rows)
//!   is one tile's column bytes expanded to ±1: broadcast 16 rows' byte,
//!   `vpshufb` it into the four bytes of each int32 lane, test the bits
//!   (`1, 2, 4, 8` for the low four columns, `16 … 128` for the high four)
//!   and blend `+1`/`−1`. Two 64-byte rows per column byte, stored to a 1 KB
//!   staging buffer in L1 that `tileloadd` reads back.
//! * **C** (16 tokens × 16 rows, int32) is `S · q` exactly, stored straight
//!   into the token-major accumulator.
//!
//! Each tile's expansion is shared by up to [`GROUP`] chunks of 16 tokens
//! (three C tiles, three A tiles and one B tile of the eight tile registers).
//! A chunk of fewer than 16 tokens uses tiles of fewer rows.
//!
//! The tile registers need the operating system's consent: Linux hands them
//! out per process after `arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`, which
//! [`is_available`] asks for once. Without `std` (or off Linux) the kernel
//! reports itself unavailable.

use core::arch::asm;
use core::arch::x86_64::*;

use super::avx512::replicate_rows;
use crate::kernels::SignOperand;
use crate::sign::TILE_ROWS;

/// Chunks of 16 tokens that share one expansion of the signs.
const GROUP: usize = 3;
/// Tokens per chunk: the rows of an A and a C tile.
const CHUNK: usize = 16;
/// Bytes of one tile row (64 int8 columns, or 16 int32).
const ROW_BYTES: usize = 64;

/// Whether this CPU and operating system run this kernel: the AVX-512
/// kernel's features (it shares batch 1 and the float loops), AMX-TILE and
/// AMX-INT8 in CPUID, the tile state enabled in XCR0, and Linux's permission
/// for the tile data (asked for on the first call, then cached).
pub(crate) fn is_available() -> bool {
    #[cfg(all(feature = "std", target_os = "linux"))]
    {
        use core::sync::atomic::{AtomicU8, Ordering};
        // 0: not checked yet, 1: no, 2: yes.
        static STATE: AtomicU8 = AtomicU8::new(0);
        match STATE.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => {
                let ok = super::avx512::is_available() && cpu_has_amx() && request_tile_data();
                STATE.store(if ok { 2 } else { 1 }, Ordering::Relaxed);
                ok
            }
        }
    }
    #[cfg(not(all(feature = "std", target_os = "linux")))]
    {
        false
    }
}

/// CPUID leaf 7 (EDX bits 24 and 25: AMX-TILE, AMX-INT8) and XCR0 bits 17
/// and 18 (tile configuration and data state enabled by the OS).
#[cfg(all(feature = "std", target_os = "linux"))]
fn cpu_has_amx() -> bool {
    // CPUID exists on every x86_64 CPU; leaf 7 is valid when leaf 0 says so.
    let max_leaf = __cpuid(0).eax;
    if max_leaf < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
    if edx & (3 << 24) != 3 << 24 || !osxsave {
        return false;
    }
    // SAFETY: OSXSAVE is set, so XGETBV is enabled.
    let xcr0 = unsafe { _xgetbv(0) };
    xcr0 & (3 << 17) == 3 << 17
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: whether Linux
/// lets this process use the tile data registers (Linux 5.16 and later).
#[cfg(all(feature = "std", target_os = "linux"))]
fn request_tile_data() -> bool {
    const SYS_ARCH_PRCTL: usize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: a plain system call that only changes this process's
    // permissions; it touches no memory of ours.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL as isize => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// Bytes of work space [`int_product`] needs for `batch` tokens of `cols_p`
/// padded columns: the activations repacked into A tiles.
pub(crate) fn work_len(batch: usize, cols_p: usize) -> usize {
    batch * cols_p.next_multiple_of(ROW_BYTES)
}

/// Copies token-after-token activations (`cols_p` bytes each) into whole A
/// tiles: for the chunk of `m ≤ 16` tokens that starts at token `16c`, the
/// tile of K step `k` is `m` rows of 64 bytes at `16c·stride + 64·m·k`
/// (`stride` = `cols_p` rounded up to 64, the tail zero-filled). Rows of a
/// tile are then 64 bytes apart. Read in place, a tile's rows are `cols_p`
/// bytes apart (4 KB at 4096 columns, all in one L1 set); packed, the
/// 4096×4096 layer at 1.0 bpw took 7 % less time at batch 32 and 12 % less
/// at batch 48 (the same at batch 16).
fn pack_tiles(q: &[i8], batch: usize, cols_p: usize, work: &mut [i8]) {
    let stride = cols_p.next_multiple_of(ROW_BYTES);
    for (c, chunk) in q[..batch * cols_p].chunks(CHUNK * cols_p).enumerate() {
        let m = chunk.len() / cols_p;
        let base = c * CHUNK * stride;
        for (r, token) in chunk.chunks_exact(cols_p).enumerate() {
            for (k, src) in token.chunks(ROW_BYTES).enumerate() {
                let dst = &mut work[base + ROW_BYTES * (m * k + r)..][..ROW_BYTES];
                dst[..src.len()].copy_from_slice(src);
                dst[src.len()..].fill(0);
            }
        }
    }
}

/// The tile configuration (palette 1) that `ldtilecfg` reads.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    _reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// C tiles `tmm0..GROUP`, A tiles `tmm3..3+GROUP` (`rows[j]` tokens
    /// each, 0 for an unused slot), the B tile `tmm6`.
    fn new(rows: [usize; GROUP]) -> Self {
        let mut c = TileConfig {
            palette: 1,
            start_row: 0,
            _reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for (j, &m) in rows.iter().enumerate() {
            if m > 0 {
                for t in [j, GROUP + j] {
                    c.colsb[t] = ROW_BYTES as u16;
                    c.rows[t] = m as u8;
                }
            }
        }
        c.colsb[2 * GROUP] = ROW_BYTES as u16;
        c.rows[2 * GROUP] = 16;
        c
    }
}

/// K steps between expanding a B tile and loading it.
const AHEAD: usize = 4;
/// Staging buffers for B tiles, used in turn (more than [`AHEAD`]).
const STAGES: usize = 8;

/// The staging buffers for the expanded B tiles.
#[repr(C, align(64))]
struct Stage([[i8; 16 * ROW_BYTES]; STAGES]);

/// The integer core for `batch ≥ 1` tokens: `acc[t·rows_p + i] = Σ_j S(i, j)
/// · q[t·cols_p + j]`, see [`super::super::int_product`].
///
/// `q` holds the tokens' activations one after another; `work` at least
/// [`work_len`] bytes.
///
/// # Safety
/// The CPU must support this kernel ([`is_available`], which also obtained
/// the tile permission); `q.len() ≥ batch · cols_p`, `acc.len() ≥ batch ·
/// rows_p`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn int_product(
    s: &SignOperand<'_>,
    q: &[i8],
    work: &mut [i8],
    batch: usize,
    acc: &mut [i32],
) {
    let cols_p = s.col_bytes * 8;
    let rows_p = s.tiles * TILE_ROWS;
    assert!(q.len() >= batch * cols_p && acc.len() >= batch * rows_p);
    assert!(work.len() >= work_len(batch, cols_p));
    assert!(batch < usize::MAX / CHUNK && rows_p * 4 <= isize::MAX as usize);
    pack_tiles(q, batch, cols_p, work);
    let stride = cols_p.next_multiple_of(ROW_BYTES);
    let a = &work[..batch * stride];
    // The signs are expanded `AHEAD` steps before `tileloadd` reads them:
    // a tile load right behind the stores that wrote its bytes waits for
    // them to reach L1 (measured: the batch-2 layer took 509 µs that way,
    // against 190 µs for the expansion alone and 99 µs for the tile work).
    // Rows past a half K step (the last one when `col_bytes % 8 == 4`) meet
    // zero activations; they only need to be defined, hence the zeroing.
    let mut stage = Stage([[0; 16 * ROW_BYTES]; STAGES]);
    let k_steps = s.col_bytes.div_ceil(8);
    let steps = s.tiles * k_steps;
    let expand_step = |i: usize, b: &mut [i8; 16 * ROW_BYTES]| {
        let (tile, k) = (i / k_steps, i % k_steps);
        let cb = (s.col_bytes - 8 * k).min(8);
        expand_pm1(
            &s.tile(tile)[TILE_ROWS * 8 * k..TILE_ROWS * (8 * k + cb)],
            b,
        );
    };
    let mut t0 = 0;
    while t0 < batch {
        let mut rows = [0usize; GROUP];
        for (j, r) in rows.iter_mut().enumerate() {
            *r = (batch - t0).saturating_sub(j * CHUNK).min(CHUNK);
        }
        let cfg = TileConfig::new(rows);
        // SAFETY: AMX is available (the caller's contract); the
        // configuration is a valid palette-1 layout.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, preserves_flags)) };
        for i in 0..AHEAD.min(steps) {
            expand_step(i, &mut stage.0[i % STAGES]);
        }
        for i in 0..steps {
            if i + AHEAD < steps {
                expand_step(i + AHEAD, &mut stage.0[(i + AHEAD) % STAGES]);
            }
            let (tile, k) = (i / k_steps, i % k_steps);
            for (j, &m) in rows.iter().enumerate() {
                if m > 0 && k == 0 {
                    // SAFETY: tile j is configured (m > 0).
                    unsafe { tile_op(Op::Zero, j, core::ptr::null_mut(), 0) };
                }
            }
            let b = &mut stage.0[i % STAGES];
            // SAFETY: the B tile (16 rows of 64 bytes) reads the 1 KB
            // staging buffer of step i.
            unsafe { tile_op(Op::LoadB, 0, b.as_mut_ptr().cast(), ROW_BYTES) };
            for (j, &m) in rows.iter().enumerate() {
                if m > 0 {
                    let first = (t0 + j * CHUNK) * stride + ROW_BYTES * m * k;
                    // SAFETY: A tile j reads the m rows of 64 bytes that
                    // `pack_tiles` put at `first`: chunk t0/16 + j holds
                    // m·stride bytes from (t0+16j)·stride, and
                    // 64·m·k + 64·m ≤ m·stride.
                    let p = a[first..].as_ptr().cast_mut().cast();
                    unsafe {
                        tile_op(Op::LoadA, j, p, ROW_BYTES);
                        tile_op(Op::Dot, j, core::ptr::null_mut(), 0);
                    }
                }
            }
            if k + 1 == k_steps {
                for (j, &m) in rows.iter().enumerate() {
                    if m > 0 {
                        let first = (t0 + j * CHUNK) * rows_p + tile * TILE_ROWS;
                        // SAFETY: C tile j writes m rows of 16 i32, `rows_p`
                        // apart, from token t0 + 16j, row tile·16 on: inside
                        // `acc`.
                        let p = acc[first..].as_mut_ptr().cast();
                        unsafe { tile_op(Op::Store, j, p, rows_p * 4) };
                    }
                }
            }
        }
        t0 += GROUP * CHUNK;
    }
    // SAFETY: releases the tile state this function configured.
    unsafe { asm!("tilerelease", options(nostack, preserves_flags)) };
}

/// One tile instruction on slot `j` (C tile `j`, A tile `3 + j`).
#[derive(Clone, Copy)]
enum Op {
    /// `tilezero` C.
    Zero,
    /// `tileloadd` A from `p`, rows `stride` bytes apart.
    LoadA,
    /// `tileloadd` B (`tmm6`) from `p`, rows `stride` bytes apart.
    LoadB,
    /// `tdpbssd` C += A · B.
    Dot,
    /// `tilestored` C to `p`, rows `stride` bytes apart.
    Store,
}

/// Runs `op` on slot `j < GROUP` (the tile registers are named in the
/// instruction, hence one `asm!` per register).
///
/// # Safety
/// AMX configured by [`int_product`] with slot `j` in use; `p` valid for
/// the tile's rows `stride` bytes apart (reads for loads, writes for the
/// store).
#[inline(always)]
unsafe fn tile_op(op: Op, j: usize, p: *mut u8, stride: usize) {
    macro_rules! on_slot {
        ($c:literal, $a:literal) => {
            // SAFETY: the caller's contract.
            unsafe {
                match op {
                    Op::Zero => asm!(concat!("tilezero ", $c), options(nostack, preserves_flags)),
                    Op::LoadA => asm!(
                        concat!("tileloadd ", $a, ", [{p} + {s}*1]"),
                        p = in(reg) p, s = in(reg) stride,
                        options(nostack, preserves_flags)
                    ),
                    Op::LoadB => asm!(
                        "tileloadd tmm6, [{p} + {s}*1]",
                        p = in(reg) p, s = in(reg) stride,
                        options(nostack, preserves_flags)
                    ),
                    Op::Dot => asm!(
                        concat!("tdpbssd ", $c, ", ", $a, ", tmm6"),
                        options(nostack, preserves_flags)
                    ),
                    Op::Store => asm!(
                        concat!("tilestored [{p} + {s}*1], ", $c),
                        p = in(reg) p, s = in(reg) stride,
                        options(nostack, preserves_flags)
                    ),
                }
            }
        };
    }
    match j {
        0 => on_slot!("tmm0", "tmm3"),
        1 => on_slot!("tmm1", "tmm4"),
        _ => on_slot!("tmm2", "tmm5"),
    }
}

/// Expands `cols.len() / 16 ≤ 8` column bytes of a tile (16 rows' bytes
/// each) into B rows of ±1: row `2c` holds columns `8c..8c+4` of the 16
/// rows (int32 lane `i` = row `i`), row `2c + 1` columns `8c+4..8c+8`.
/// Bit set means −1, as everywhere in the blob.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
#[inline]
fn expand_pm1(cols: &[u8], b: &mut [i8; 16 * ROW_BYTES]) {
    let idx = replicate_rows();
    let m_lo = _mm512_set1_epi32(0x0804_0201);
    let m_hi = _mm512_set1_epi32(0x8040_2010_u32 as i32);
    let plus = _mm512_set1_epi8(1);
    let minus = _mm512_set1_epi8(-1);
    for (rows, out) in cols
        .chunks_exact(TILE_ROWS)
        .zip(b.chunks_exact_mut(2 * ROW_BYTES))
    {
        // SAFETY: `rows` is 16 bytes and `out` 128.
        unsafe {
            let x = _mm512_shuffle_epi8(
                _mm512_broadcast_i32x4(_mm_loadu_si128(rows.as_ptr().cast())),
                idx,
            );
            let lo = _mm512_mask_blend_epi8(_mm512_test_epi8_mask(x, m_lo), plus, minus);
            let hi = _mm512_mask_blend_epi8(_mm512_test_epi8_mask(x, m_hi), plus, minus);
            _mm512_storeu_si512(out.as_mut_ptr().cast(), lo);
            _mm512_storeu_si512(out.as_mut_ptr().add(ROW_BYTES).cast(), hi);
        }
    }
}
