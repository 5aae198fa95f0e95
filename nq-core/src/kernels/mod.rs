//! Fast sign-matrix products: the kernels behind [`FactorizedLinear::forward`]
//! and [`BinaryLinear::forward`].
//!
//! [`FactorizedLinear::forward`]: crate::FactorizedLinear::forward
//! [`BinaryLinear::forward`]: crate::BinaryLinear::forward
//!
//! # One integer core, several instruction sets
//!
//! Every kernel computes the same thing: for each token `t` (a row of the
//! input batch), the input `z = scale ⊙ x_t` is quantized to int8 with one
//! absmax scale per token (`δ = max|z| / 127`, `q = round(z / δ)`, ties to
//! even, see [`quant`]), and the sign matrix `S` (±1) is multiplied by
//! `q` **exactly in integers**: `A = S · q`. The float result is `δ · A`.
//! Because the integer part is exact and the float parts (quantizer,
//! epilogue) are shared scalar code, every kernel returns *bit-identical*
//! results on a given machine; the tests check exactly that, and check the
//! integer core against an unpacked ±1 oracle bit for bit.
//!
//! How the integer product is computed is what differs:
//!
//! * **Lookup tables (batch 1, and batches on kernels without a dot
//!   product).** For each group of 4 input columns a table holds the 16
//!   signed sums `±q0 ±q1 ±q2 ±q3` (int16, `|T| ≤ 508`; 8 computed, 8 by
//!   symmetry). A row's 4 sign bits (one nibble of the blob's sign byte) index
//!   that table. The blob stores 16 rows' bytes for the same 8 columns next to
//!   each other (`docs/FORMAT.md` §6.1), so one 16-byte load and one
//!   `pshufb`/`tbl` per table byte look up 16 rows at once. The portable
//!   kernel does the same lookup one row at a time (nibble tables: Cortex-M
//!   has no popcount and no SIMD shuffles, and this needs neither).
//! * **Dot products (batch ≥ 2 where the CPU has them).** Sign bits are
//!   expanded once per tile to 0/1 bytes `β` (`s = 1 − 2β`) and multiplied
//!   with the int8 activations of every token in the batch by `vpdpbusd`
//!   (AVX-512 VNNI) or `SDOT` (Armv8.2 dotprod): `A = Σq − 2·(β · q)`.
//!   On AVX-512, a full chunk of 16 tokens sends 4 of them through the
//!   lookup tables instead, in the same loop: the lookups use shuffle ports
//!   the dot products leave idle (`x86_64/avx512.rs`). With Armv8.6 I8MM,
//!   `SMMLA` multiplies two rows' `β` by two tokens' activations as 2×8 by
//!   8×2 matrices, twice `SDOT`'s multiply-adds per instruction
//!   (`aarch64/i8mm.rs`).
//! * **Tile products (batch ≥ 3 on Intel CPUs with AMX-INT8).** Sign bits
//!   are expanded to ±1 bytes, 16 rows × 64 columns at a time, and one
//!   `tdpbssd` multiplies them by 16 tokens' activations (packed into tiles):
//!   16,384 multiply-adds per instruction, so the expansion, shared by up
//!   to 48 tokens, is what costs (`x86_64/amx.rs`).
//!
//! Nothing here allocates: the caller passes a `&mut [f32]` scratch buffer of
//! at least [`FactorizedLinear::forward_scratch_len`] /
//! [`BinaryLinear::forward_scratch_len`] floats, which is enough for every
//! kernel.
//!
//! [`FactorizedLinear::forward_scratch_len`]: crate::FactorizedLinear::forward_scratch_len
//! [`BinaryLinear::forward_scratch_len`]: crate::BinaryLinear::forward_scratch_len
//!
//! # Error budget (int8 activations)
//!
//! For one sign product over `n` inputs the quantization error of each input
//! is at most `δ/2`, so `|δ·A − S·z| ≤ n·δ/2` per output (worst case; with
//! independent rounding errors the typical error is `≈ δ·√(n/12)`). The float
//! arithmetic around it (`z = scale·x` in f32, `δ·A`, the epilogue) adds a
//! relative error of a few f32 ulps.
//!
//! * `BinaryLinear` (`y = s_row ⊙ (B · (s_col ⊙ x)) + bias`): per output
//!   `|y_i − y_ref_i| ≤ |s_row_i| · n · δ/2` plus f32 rounding, with
//!   `δ = max_j |s_col_j · x_j| / 127`.
//! * `FactorizedLinear`: the rank-`r` intermediate `t = V·(s_pre ⊙ x)` is off
//!   by at most `e1 = n·δ1/2` per entry; it is then quantized again
//!   (`δ2 = max|t|/127`), so `|y_i − y_ref_i| ≤ |s_post_i| · r · (e1 + δ2/2)`
//!   plus f32 rounding.
//!
//! [`error_bound_binary`] and [`error_bound_factorized`] compute these
//! bounds; the tests use them as their tolerance.
//!
//! # Choosing a kernel
//!
//! [`selected`] is what `forward` uses: the kernel forced with
//! [`set_forced_kernel`], or else [`best`]. Under feature `std` [`best`]
//! detects the CPU once and caches the answer; without `std` it is fixed at
//! compile time by `cfg(target_feature)`. [`available`] lists every kernel
//! this CPU can run, for tests and benchmarks; `forward_with` runs a given
//! one.
//!
//! The int8 tables cost 8 bytes per input column per token (built once per
//! call and shared by all rows); x86_64 and aarch64 build them with SIMD.
//!
//! # Exact activations (f32)
//!
//! `FactorizedLinear::forward_f32` / `BinaryLinear::forward_f32` skip the
//! int8 step: an f32 sign product (the same nibble lookups on f32 tables,
//! see `f32_product`) computes `S · z` as the f32 reference does, up to
//! summation order ([`error_bound_f32`]: `(n/8 + 8) · ε · Σ|z|`). Slower than
//! the int8 kernels; the x86_64 kernels look up 8 (AVX2) or 16 (AVX-512)
//! rows per `vpermps`, the aarch64 ones 4 per `tbl`, the portable kernel
//! runs the plain loop, with the same bits everywhere. It is what the
//! runtime's `ActPrecision::F32` runs, to reproduce the reference token for
//! token.
//!
//! This module holds the only `cfg(target_arch)` gates of the crate.

use core::sync::atomic::{AtomicU8, Ordering};

mod f32_product;
mod portable;
pub mod quant;
mod sign_product;

#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(target_arch = "aarch64")]
mod aarch64;

pub use f32_product::error_bound_f32;
pub(crate) use f32_product::{sign_product_f32, sign_product_f32_scratch_len};
pub use quant::{error_bound_binary, error_bound_factorized};
pub(crate) use sign_product::{sign_product, sign_product_scratch_len};

#[cfg(all(test, feature = "alloc"))]
mod tests;

/// One implementation of the sign-matrix product.
///
/// All variants exist on every target; [`Kernel::is_available`] says which
/// this CPU can run. More may be added (e.g. a Cortex-M DSP path), hence
/// `non_exhaustive`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Kernel {
    /// Plain Rust, no SIMD: nibble-table lookups (what Cortex-M runs).
    Portable,
    /// x86_64 AVX2: `vpshufb` table lookups, 16 rows at once.
    Avx2,
    /// x86_64 AVX-512 (F, BW, VL, VNNI): AVX2 lookups for batch 1,
    /// `vpdpbusd` dot products for batches.
    Avx512,
    /// x86_64 AMX-INT8 (with the AVX-512 kernel's features, on Linux under
    /// `std`): AVX2 lookups for 1–2 tokens, `tdpbssd` 16 × 64 × 16 tile
    /// products for batches of 3 and more.
    ///
    /// Checking whether it is available (which [`best`] and [`available`]
    /// do) asks Linux once for the process-wide permission to use the AMX
    /// tile registers (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); where that is
    /// refused the kernel is simply unavailable.
    Amx,
    /// aarch64 NEON: `tbl` table lookups, 16 rows at once.
    Neon,
    /// aarch64 NEON with dotprod: `tbl` lookups for batch 1, `SDOT` for
    /// batches.
    NeonDotprod,
    /// aarch64 NEON with dotprod and I8MM: `tbl` lookups for batch 1,
    /// `SMMLA` 2×2 matrix products for batches (`SDOT` for a lone token).
    NeonI8mm,
}

impl Kernel {
    /// Every kernel, in order of preference (last is best where available).
    pub const ALL: [Kernel; 7] = [
        Kernel::Portable,
        Kernel::Avx2,
        Kernel::Avx512,
        Kernel::Amx,
        Kernel::Neon,
        Kernel::NeonDotprod,
        Kernel::NeonI8mm,
    ];

    /// A short lower-case name (`"portable"`, `"avx2"`, …).
    pub const fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
            Kernel::Amx => "amx",
            Kernel::Neon => "neon",
            Kernel::NeonDotprod => "neon-dotprod",
            Kernel::NeonI8mm => "neon-i8mm",
        }
    }

    /// Whether this CPU (at run time under `std`, else as compiled) can run
    /// the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => x86_64::avx2::is_available(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => x86_64::avx512::is_available(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => x86_64::amx::is_available(),
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => aarch64::neon::is_available(),
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonDotprod => aarch64::dotprod::is_available(),
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonI8mm => aarch64::i8mm::is_available(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Kernel::Portable => 1,
            Kernel::Avx2 => 2,
            Kernel::Avx512 => 3,
            Kernel::Neon => 4,
            Kernel::NeonDotprod => 5,
            Kernel::NeonI8mm => 6,
            Kernel::Amx => 7,
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        Kernel::ALL.into_iter().find(|k| k.to_u8() == v)
    }
}

impl core::fmt::Display for Kernel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The kernels this CPU can run, portable first.
pub fn available() -> impl Iterator<Item = Kernel> {
    Kernel::ALL.into_iter().filter(|k| k.is_available())
}

/// 0: not detected yet; else `Kernel::to_u8`.
static BEST: AtomicU8 = AtomicU8::new(0);
/// 0: nothing forced; else `Kernel::to_u8`.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// The fastest kernel this CPU can run, detected once and cached.
pub fn best() -> Kernel {
    if let Some(k) = Kernel::from_u8(BEST.load(Ordering::Relaxed)) {
        return k;
    }
    let k = available().last().unwrap_or(Kernel::Portable);
    // Racing initialisations store the same value: a plain store suffices
    // (and works on targets without compare-and-swap, like Cortex-M0+).
    BEST.store(k.to_u8(), Ordering::Relaxed);
    k
}

/// Makes [`selected`] (and so every `forward`) use `kernel`, or [`best`]
/// again with `None`. Process-wide; meant for tests and benchmarks.
///
/// # Panics
/// If `kernel` is not available on this CPU.
pub fn set_forced_kernel(kernel: Option<Kernel>) {
    let v = match kernel {
        Some(k) => {
            assert!(k.is_available(), "kernel {k} is not available on this CPU");
            k.to_u8()
        }
        None => 0,
    };
    FORCED.store(v, Ordering::Relaxed);
}

/// The kernel forced with [`set_forced_kernel`], if any.
pub fn forced_kernel() -> Option<Kernel> {
    Kernel::from_u8(FORCED.load(Ordering::Relaxed))
}

/// `Σ f16(row_j) · x_j` (little-endian f16 `row`, `x.len()` values) with
/// F16C where this CPU has it, else `None` (the caller's portable loop).
/// Sums in a different order than a portable loop: last-bit differences.
pub(crate) fn dot_f16_simd(row: &[u8], x: &[f32]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if x86_64::f16c::is_available() {
        // SAFETY: the CPU has AVX, F16C and FMA (checked just above).
        return Some(unsafe { x86_64::f16c::dot_f16(row, x) });
    }
    let _ = (row, x);
    None
}

/// The kernel `forward` uses: the forced one, or else [`best`].
pub fn selected() -> Kernel {
    forced_kernel().unwrap_or_else(best)
}

/// The integer core: `acc[t·rows_p + i] = Σ_j S(i, j) · q[t·cols_p + j]` for
/// every token `t < batch` and every padded row `i < rows_p`.
///
/// `q` holds each token's activations (`cols_p` bytes, token after token).
/// `tables` holds each token's lookup tables in the layout `kernel` wants
/// (built by [`build_tables_for`]) when [`uses_tables`] says so; otherwise
/// it is work space (the dot-product kernels interleave `q` into it, and
/// build there the tables of the tokens a mixed tile looks up).
///
/// # Panics
/// If `kernel` is unavailable or a buffer is too short.
pub(crate) fn int_product(
    kernel: Kernel,
    signs: &SignOperand<'_>,
    q: &[i8],
    qsum: &[i32],
    tables: &mut [i16],
    batch: usize,
    acc: &mut [i32],
) {
    assert!(kernel.is_available(), "kernel {kernel} is not available");
    let rows_p = signs.tiles * sign::TILE_ROWS;
    let cols_p = signs.col_bytes * 8;
    assert!(acc.len() >= batch * rows_p, "accumulator length");
    assert!(q.len() >= batch * cols_p, "activation length");
    assert!(qsum.len() >= batch, "activation sums length");
    assert!(
        tables.len() >= batch * quant::table_len(cols_p),
        "table length"
    );
    let acc = &mut acc[..batch * rows_p];
    if uses_tables(kernel, batch) {
        lut_product(kernel, signs, tables, batch, acc);
    } else if kernel == Kernel::Amx {
        amx_product(signs, q, tables, batch, acc);
    } else {
        // Interleaved activations first (`batch · cols_p` bytes, an even
        // number), then the tables of the tokens a mixed tile looks up.
        let (work, lut) = tables.split_at_mut(batch * cols_p / 2);
        let work: &mut [i8] = bytemuck::cast_slice_mut(work);
        interleave_tokens(q, batch, cols_p, dot_chunk_max(kernel), work);
        let lut = mixed_tables(kernel, q, batch, cols_p, lut);
        dot_product(kernel, signs, work, qsum, lut, batch, acc);
    }
}

/// The AMX kernel's tile products (lengths checked by [`int_product`]);
/// `tables` is work space for the activations packed into A tiles.
fn amx_product(
    signs: &SignOperand<'_>,
    q: &[i8],
    tables: &mut [i16],
    batch: usize,
    acc: &mut [i32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        // The scratch holds `4 · cols_p` i16 of tables per token, more than
        // the `cols_p + 32` bytes a token takes in A tiles.
        let work: &mut [i8] = bytemuck::cast_slice_mut(tables);
        // SAFETY: `int_product` asserted availability and the lengths of
        // `q` and `acc`; `amx::int_product` checks `work`'s.
        unsafe { x86_64::amx::int_product(signs, q, work, batch, acc) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (signs, q, tables, batch, acc);
        unreachable!("the AMX kernel is x86_64 only")
    }
}

/// The table-lookup kernels (lengths checked by [`int_product`]).
fn lut_product(
    kernel: Kernel,
    signs: &SignOperand<'_>,
    tables: &[i16],
    batch: usize,
    acc: &mut [i32],
) {
    match kernel {
        Kernel::Portable => portable::lut_product(signs, tables, batch, acc),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::Avx512 | Kernel::Amx => {
            // SAFETY: `int_product` asserted availability (AVX-512 and AMX
            // here imply AVX2) and the buffer lengths.
            unsafe { x86_64::avx2::lut_product(signs, tables, batch, acc) }
        }
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon | Kernel::NeonDotprod | Kernel::NeonI8mm => {
            // SAFETY: `int_product` asserted availability (dotprod and
            // I8MM here imply NEON) and the buffer lengths.
            unsafe { aarch64::neon::lut_product(signs, tables, batch, acc) }
        }
        #[allow(unreachable_patterns)]
        _ => unreachable!("available kernel without an implementation"),
    }
}

/// Tokens of each full chunk that `kernel`'s dot-product path multiplies
/// through lookup tables instead (the last ones of the chunk).
fn mixed_lut_tokens(kernel: Kernel) -> usize {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => x86_64::avx512::MIXED_LUT,
        _ => 0,
    }
}

/// Builds, for every full chunk of the dot-product path, the tables of the
/// tokens it looks up ([`mixed_lut_tokens`]), chunk after chunk, into
/// `space`; returns them.
///
/// The scratch fits: [`int_product`] gets room for every token's tables
/// (`4·cols_p` i16 each); interleaving takes `cols_p / 2` per token and a
/// chunk looks up fewer than `7/8` of its tokens.
fn mixed_tables<'a>(
    kernel: Kernel,
    q: &[i8],
    batch: usize,
    cols_p: usize,
    space: &'a mut [i16],
) -> &'a [i16] {
    let per_chunk = mixed_lut_tokens(kernel);
    let chunk = dot_chunk_max(kernel);
    let tlen = quant::table_len(cols_p);
    let mut used = 0;
    for c in 0..batch / chunk {
        for t in (c + 1) * chunk - per_chunk..(c + 1) * chunk {
            build_tables_for(kernel, &q[t * cols_p..(t + 1) * cols_p], &mut space[used..]);
            used += tlen;
        }
    }
    &space[..used]
}

/// The dot-product kernels, on chunk-interleaved activations (lengths
/// checked by [`int_product`]), with the tables of [`mixed_tables`].
/// Unreachable on targets without one.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(unused_variables)
)]
fn dot_product(
    kernel: Kernel,
    signs: &SignOperand<'_>,
    q: &[i8],
    qsum: &[i32],
    lut: &[i16],
    batch: usize,
    acc: &mut [i32],
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            // SAFETY: `int_product` asserted availability and the lengths;
            // `q` is interleaved with this kernel's chunk size and `lut`
            // holds the mixed chunks' tables.
            unsafe { x86_64::avx512::dot_product(signs, q, qsum, lut, batch, acc) }
        }
        #[cfg(target_arch = "aarch64")]
        Kernel::NeonDotprod => {
            // No mixed tiles here: `lut` is empty.
            let _ = lut;
            // SAFETY: `int_product` asserted availability and the lengths;
            // `q` is interleaved with this kernel's chunk size.
            unsafe { aarch64::dotprod::dot_product(signs, q, qsum, batch, acc) }
        }
        #[cfg(target_arch = "aarch64")]
        Kernel::NeonI8mm => {
            // No mixed tiles here either.
            let _ = lut;
            // SAFETY: as for NeonDotprod (the same chunk size of 4).
            unsafe { aarch64::i8mm::dot_product(signs, q, qsum, batch, acc) }
        }
        _ => unreachable!("kernel {kernel} has no dot-product path"),
    }
}

/// Whether `kernel` multiplies a batch of `batch` tokens through lookup
/// tables (else through dot products on `q`).
///
/// AMX takes batches from 3 tokens on: its fixed cost per tile (expanding
/// the signs to int8) is about that of 2.2 tokens' lookups (4096×4096 at
/// 1.0 bpw: 282 µs for 2 tokens against 254 µs through the lookups).
pub(crate) fn uses_tables(kernel: Kernel, batch: usize) -> bool {
    match kernel {
        Kernel::Amx => batch <= 2,
        Kernel::Avx512 | Kernel::NeonDotprod | Kernel::NeonI8mm => batch == 1,
        _ => true,
    }
}

/// The f32 sign product's lookups over whole tiles (see `f32_product`)
/// with `kernel`'s instructions; `false` where the kernel has none here
/// (the caller then runs the portable loop).
fn simd_tiles_f32(
    kernel: Kernel,
    tiles: &[u8],
    col_bytes: usize,
    tab: &[f32],
    out: &mut [f32],
) -> bool {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 | Kernel::Amx if kernel.is_available() => {
            // SAFETY: both kernels imply AVX-512F, available as just checked.
            unsafe { x86_64::avx512::sign_tiles_f32(tiles, col_bytes, tab, out) };
            true
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 if kernel.is_available() => {
            // SAFETY: AVX2, available as just checked.
            unsafe { x86_64::avx2::sign_tiles_f32(tiles, col_bytes, tab, out) };
            true
        }
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon | Kernel::NeonDotprod | Kernel::NeonI8mm if kernel.is_available() => {
            // SAFETY: all three imply NEON, available as just checked.
            unsafe { aarch64::neon::sign_tiles_f32(tiles, col_bytes, tab, out) };
            true
        }
        _ => {
            let _ = (tiles, col_bytes, tab, out);
            false
        }
    }
}

/// Runs `f` inside a function compiled for the vector extension `kernel`
/// runs on (AVX2 for both x86_64 kernels), so the plain loops `f` inlines —
/// quantization, scaling, the epilogues — vectorize with it rather than with
/// the target's baseline (SSE2 on x86_64). They are elementwise IEEE
/// operations (Rust never contracts them into FMAs) and integer sums, so the
/// results are bit for bit what the baseline build computes. Elsewhere it
/// just calls `f`.
#[inline(always)]
pub(crate) fn vectorized<R>(kernel: Kernel, f: impl FnOnce() -> R) -> R {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::Avx512 | Kernel::Amx if kernel.is_available() => {
            // SAFETY: these kernels imply AVX2, available as just checked.
            unsafe { x86_64::avx2::vectorized(f) }
        }
        _ => f(),
    }
}

/// Builds one token's tables (`q.len()` padded columns) for `kernel`: the
/// layout it reads, with its fastest builder. Every builder writes exactly
/// what [`quant::build_tables`] writes.
///
/// # Panics
/// If `out` is shorter than `quant::table_len(q.len())`.
pub(crate) fn build_tables_for(kernel: Kernel, q: &[i8], out: &mut [i16]) {
    assert!(out.len() >= quant::table_len(q.len()), "table length");
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::Avx512 | Kernel::Amx if kernel.is_available() => {
            // SAFETY: these kernels imply AVX2; the length is asserted above.
            unsafe { x86_64::avx2::build_tables(q, out) }
        }
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon | Kernel::NeonDotprod | Kernel::NeonI8mm if kernel.is_available() => {
            // SAFETY: these kernels imply NEON; the length is asserted above.
            unsafe { aarch64::neon::build_tables(q, out) }
        }
        _ => quant::build_tables(table_layout(kernel), q, out),
    }
}

/// Largest token chunk a dot-product kernel takes at once; it splits a
/// batch greedily into chunks of `max, max/2, …, 1` tokens ([`dot_chunk`]).
fn dot_chunk_max(kernel: Kernel) -> usize {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => x86_64::avx512::CHUNK,
        Kernel::NeonDotprod | Kernel::NeonI8mm => 4,
        _ => 1,
    }
}

/// Size of the next chunk when `left` tokens remain: the largest power of
/// two `≤ max` that is `≤ left` (`max` a power of two). The kernels' own
/// `match` on `left` must agree.
fn dot_chunk(max: usize, left: usize) -> usize {
    let mut n = max;
    while n > left {
        n /= 2;
    }
    n
}

/// Rewrites token-after-token activations (`cols_p` bytes each) into the
/// chunk-interleaved layout of the dot-product kernels: for a chunk of `n`
/// tokens starting at token `t0`, the 8 bytes of column byte `c` of token
/// `t0 + j` go to `t0·cols_p + 8·(c·n + j)`.
fn interleave_tokens(q: &[i8], batch: usize, cols_p: usize, max_chunk: usize, out: &mut [i8]) {
    let mut t0 = 0;
    while t0 < batch {
        let n = dot_chunk(max_chunk, batch - t0);
        let dst = &mut out[t0 * cols_p..(t0 + n) * cols_p];
        for j in 0..n {
            let src = &q[(t0 + j) * cols_p..(t0 + j + 1) * cols_p];
            for (c, bytes) in src.chunks_exact(8).enumerate() {
                dst[8 * (c * n + j)..8 * (c * n + j) + 8].copy_from_slice(bytes);
            }
        }
        t0 += n;
    }
}

/// Which table layout `kernel` reads.
pub(crate) fn table_layout(kernel: Kernel) -> quant::TableLayout {
    match kernel {
        Kernel::Portable => quant::TableLayout::Wide,
        _ => quant::TableLayout::SplitBytes,
    }
}

use crate::sign;

/// A sign matrix as the kernels see it: whole 16-row tiles of `col_bytes`
/// bytes per row (`col_bytes` a multiple of 4), in the blob layout.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SignOperand<'a> {
    /// The packed bytes, `tiles · 16 · col_bytes` of them.
    pub bytes: &'a [u8],
    /// Row tiles.
    pub tiles: usize,
    /// Bytes per row.
    pub col_bytes: usize,
}

impl<'a> SignOperand<'a> {
    /// The operand for a validated sign matrix.
    pub fn new(m: crate::SignMatrix<&'a [u8]>) -> Self {
        let tiles = m.rows().div_ceil(sign::TILE_ROWS);
        let col_bytes = m.col_bytes();
        let bytes: &'a [u8] = m.into_inner();
        debug_assert_eq!(bytes.len(), tiles * sign::TILE_ROWS * col_bytes);
        Self {
            bytes,
            tiles,
            col_bytes,
        }
    }

    /// The bytes of tile `t`.
    #[inline]
    pub fn tile(&self, t: usize) -> &'a [u8] {
        let len = sign::TILE_ROWS * self.col_bytes;
        &self.bytes[t * len..(t + 1) * len]
    }
}
