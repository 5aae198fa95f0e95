//! Dequantization of GGML tensor data to f32.
//!
//! Written from the public block layouts (GGUF/ggml documentation). Every
//! block is a `#[repr(C)]` record of byte arrays — alignment 1, so a block
//! slice can be viewed straight out of the memory map — with its size
//! checked at compile time. All multi-byte fields are little-endian.
//!
//! | type | block | bytes | value |
//! |---|---|---|---|
//! | Q4_0 | 32 | 18 | `d · (q − 8)`, q a nibble |
//! | Q4_1 | 32 | 20 | `d · q + m` |
//! | Q8_0 | 32 | 34 | `d · q`, q an i8 |
//! | Q4_K | 256 | 144 | `d·sc_j · q − dmin·m_j`, 8 sub-blocks of 32, 6-bit sc/m |
//! | Q6_K | 256 | 210 | `d · sc_j · (q − 32)`, 16 sub-blocks of 16, i8 sc, 6-bit q |
//!
//! In the 32-element types the low nibble of byte `j` is element `j` and the
//! high nibble element `j + 16`. Arithmetic follows ggml's order of
//! operations in f32 so that results match llama.cpp bit for bit.

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;

use super::tensor::GgmlType;

/// Why tensor bytes could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    /// The type has no dequantizer here.
    #[error("dequantizing {0} is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)")]
    Unsupported(GgmlType),
    /// Byte and value counts do not describe the same number of blocks.
    #[error("{bytes} bytes of {ty} do not hold {values} values")]
    Length {
        /// Element type.
        ty: GgmlType,
        /// Bytes given.
        bytes: usize,
        /// Values asked for.
        values: usize,
    },
}

/// Q4_0: 32 values, `d · (nibble − 8)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale (f16).
    pub d: [u8; 2],
    /// Nibbles: low = element `j`, high = element `j + 16`.
    pub qs: [u8; 16],
}

/// Q4_1: 32 values, `d · nibble + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// Scale (f16).
    pub d: [u8; 2],
    /// Offset (f16).
    pub m: [u8; 2],
    /// Nibbles: low = element `j`, high = element `j + 16`.
    pub qs: [u8; 16],
}

/// Q8_0: 32 values, `d · q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// Scale (f16).
    pub d: [u8; 2],
    /// Signed quants.
    pub qs: [i8; 32],
}

/// Q4_K: 256 values in 8 sub-blocks of 32 with 6-bit scales and mins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4K {
    /// Super-block scale for the scales (f16).
    pub d: [u8; 2],
    /// Super-block scale for the mins (f16).
    pub dmin: [u8; 2],
    /// 8 scales and 8 mins, 6 bits each (see [`q4k_scale_min`]).
    pub scales: [u8; 12],
    /// Nibbles: bytes `32c..32c+32` hold sub-block `2c` (low) and `2c+1` (high).
    pub qs: [u8; 128],
}

/// Q6_K: 256 values in 16 sub-blocks of 16 with i8 scales.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ6K {
    /// Low 4 bits of the quants.
    pub ql: [u8; 128],
    /// High 2 bits of the quants.
    pub qh: [u8; 64],
    /// Sub-block scales.
    pub scales: [i8; 16],
    /// Super-block scale (f16).
    pub d: [u8; 2],
}

const _: () = assert!(size_of::<BlockQ4_0>() == 18);
const _: () = assert!(size_of::<BlockQ4_1>() == 20);
const _: () = assert!(size_of::<BlockQ8_0>() == 34);
const _: () = assert!(size_of::<BlockQ4K>() == 144);
const _: () = assert!(size_of::<BlockQ6K>() == 210);

/// Blocks handed to one rayon task (big enough to amortize scheduling).
const BLOCKS_PER_TASK: usize = 2048;

/// Whether [`dequantize`] handles `ty`.
pub fn supports(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, F32 | F16 | Bf16 | Q8_0 | Q4_0 | Q4_1 | Q4K | Q6K)
}

/// Dequantizes `src` (whole blocks of `ty`) into `dst`, in parallel.
///
/// `dst.len()` must be the number of values `src` encodes.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), DequantError> {
    match ty {
        GgmlType::F32 => run::<[u8; 4], 1>(ty, src, dst, |b, o| o[0] = f32::from_le_bytes(*b)),
        GgmlType::F16 => run::<[u8; 2], 1>(ty, src, dst, |b, o| o[0] = f16_le(*b)),
        GgmlType::Bf16 => run::<[u8; 2], 1>(ty, src, dst, |b, o| o[0] = bf16_le(*b)),
        GgmlType::Q8_0 => run::<BlockQ8_0, 32>(ty, src, dst, block_q8_0),
        GgmlType::Q4_0 => run::<BlockQ4_0, 32>(ty, src, dst, block_q4_0),
        GgmlType::Q4_1 => run::<BlockQ4_1, 32>(ty, src, dst, block_q4_1),
        GgmlType::Q4K => run::<BlockQ4K, 256>(ty, src, dst, block_q4k),
        GgmlType::Q6K => run::<BlockQ6K, 256>(ty, src, dst, block_q6k),
        other => Err(DequantError::Unsupported(other)),
    }
}

/// Dequantizes into a new vector of `n_values`.
pub fn dequantize_to_vec(
    ty: GgmlType,
    src: &[u8],
    n_values: usize,
) -> Result<Vec<f32>, DequantError> {
    if !supports(ty) {
        return Err(DequantError::Unsupported(ty));
    }
    let mut out = vec![0.0; n_values];
    dequantize(ty, src, &mut out)?;
    Ok(out)
}

/// Views `src` as blocks `B` of `N` values and runs `f` on each, in parallel.
fn run<B: Pod + Sync, const N: usize>(
    ty: GgmlType,
    src: &[u8],
    dst: &mut [f32],
    f: fn(&B, &mut [f32; N]),
) -> Result<(), DequantError> {
    let length = || DequantError::Length {
        ty,
        bytes: src.len(),
        values: dst.len(),
    };
    // Every block type is made of byte arrays (alignment 1), so the cast can
    // only fail on a length that is not a whole number of blocks.
    let blocks: &[B] = bytemuck::try_cast_slice(src).map_err(|_| length())?;
    if blocks.len().checked_mul(N) != Some(dst.len()) {
        return Err(length());
    }
    blocks
        .par_chunks(BLOCKS_PER_TASK)
        .zip(dst.par_chunks_mut(BLOCKS_PER_TASK * N))
        .for_each(|(bs, out)| {
            for (b, o) in bs.iter().zip(out.chunks_exact_mut(N)) {
                // `chunks_exact_mut(N)` yields slices of exactly N values.
                if let Ok(o) = <&mut [f32; N]>::try_from(o) {
                    f(b, o);
                }
            }
        });
    Ok(())
}

/// An f16 stored little-endian.
pub fn f16_le(b: [u8; 2]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes(b)).to_f32()
}

/// A bf16 stored little-endian (the top half of an f32).
pub fn bf16_le(b: [u8; 2]) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16)
}

/// Dequantizes one Q8_0 block.
pub fn block_q8_0(b: &BlockQ8_0, out: &mut [f32; 32]) {
    let d = f16_le(b.d);
    for (o, &q) in out.iter_mut().zip(&b.qs) {
        *o = f32::from(q) * d;
    }
}

/// Dequantizes one Q4_0 block.
pub fn block_q4_0(b: &BlockQ4_0, out: &mut [f32; 32]) {
    let d = f16_le(b.d);
    let (lo, hi) = out.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b.qs) {
        *l = f32::from(i16::from(q & 0x0f) - 8) * d;
        *h = f32::from(i16::from(q >> 4) - 8) * d;
    }
}

/// Dequantizes one Q4_1 block.
pub fn block_q4_1(b: &BlockQ4_1, out: &mut [f32; 32]) {
    let (d, m) = (f16_le(b.d), f16_le(b.m));
    let (lo, hi) = out.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b.qs) {
        *l = f32::from(q & 0x0f) * d + m;
        *h = f32::from(q >> 4) * d + m;
    }
}

/// Scale and min of Q4_K sub-block `j` (0..8), both 6-bit.
///
/// Bytes 0..4 hold scales 0..4 in their low 6 bits, bytes 4..8 mins 0..4;
/// scales/mins 4..8 keep their low 4 bits in the nibbles of bytes 8..12 and
/// their top 2 bits in the top 2 bits of bytes 0..4 (scales) and 4..8 (mins).
pub fn q4k_scale_min(scales: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        let low = scales[j + 4];
        (
            (low & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (low >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Dequantizes one Q4_K block.
pub fn block_q4k(b: &BlockQ4K, out: &mut [f32; 256]) {
    let (d, dmin) = (f16_le(b.d), f16_le(b.dmin));
    for (c, (out, qs)) in out
        .chunks_exact_mut(64)
        .zip(b.qs.chunks_exact(32))
        .enumerate()
    {
        let (sc1, m1) = q4k_scale_min(&b.scales, 2 * c);
        let (sc2, m2) = q4k_scale_min(&b.scales, 2 * c + 1);
        let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let (lo, hi) = out.split_at_mut(32);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(qs) {
            *l = d1 * f32::from(q & 0x0f) - m1;
            *h = d2 * f32::from(q >> 4) - m2;
        }
    }
}

/// Dequantizes one Q6_K block.
///
/// Each half of 128 values uses 64 `ql` bytes, 32 `qh` bytes and 8 scales.
/// Within a half, value `32k + l` (k in 0..4, l in 0..32) takes its low 4
/// bits from `ql[l + 32·(k & 1)]` (low nibble for k < 2, high otherwise)
/// and its high 2 bits from bits `2k..2k+2` of `qh[l]`; its scale is
/// `scales[2k + l / 16]`.
pub fn block_q6k(b: &BlockQ6K, out: &mut [f32; 256]) {
    let d = f16_le(b.d);
    let halves = out
        .chunks_exact_mut(128)
        .zip(b.ql.chunks_exact(64))
        .zip(b.qh.chunks_exact(32))
        .zip(b.scales.chunks_exact(8));
    for (((out, ql), qh), sc) in halves {
        for (k, out) in out.chunks_exact_mut(32).enumerate() {
            let ql = &ql[32 * (k & 1)..32 * (k & 1) + 32];
            let shift = if k < 2 { 0 } else { 4 };
            for (l, o) in out.iter_mut().enumerate() {
                let q = ((ql[l] >> shift) & 0x0f) | (((qh[l] >> (2 * k)) & 3) << 4);
                let s = f32::from(sc[2 * k + l / 16]);
                *o = d * s * f32::from(i16::from(q) - 32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each test builds blocks byte by byte from the layout description
    //! (an encoder written independently of the decoder above), with
    //! scales that are exact in f16 so expected values are exact in f32.

    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_bits().to_le_bytes()
    }

    fn deq(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
        dequantize_to_vec(ty, bytes, n).unwrap()
    }

    #[test]
    fn plain_types() {
        let vals = [1.5f32, -2.25, 0.0, 65504.0];
        let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(deq(GgmlType::F32, &f32b, 4), vals);
        let f16b: Vec<u8> = vals.iter().flat_map(|&v| f16_bytes(v)).collect();
        assert_eq!(deq(GgmlType::F16, &f16b, 4), vals);
        // bf16 is the high half of the f32 bit pattern.
        let bf16b: Vec<u8> = vals
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        assert_eq!(deq(GgmlType::Bf16, &bf16b, 4), [1.5, -2.25, 0.0, 65280.0]);
        // f16 subnormal and bf16 of 1.0 (0x3f80) spelled out in bytes.
        assert_eq!(deq(GgmlType::F16, &[0x01, 0x00], 1), [2f32.powi(-24)]);
        assert_eq!(deq(GgmlType::Bf16, &[0x80, 0x3f], 1), [1.0]);
    }

    #[test]
    fn q8_0() {
        // d = 0.5 (f16 0x3800), q_j = j - 16 for j in 0..32.
        let mut bytes = vec![0x00, 0x38];
        bytes.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let want: Vec<f32> = (0..32).map(|j| (j as f32 - 16.0) * 0.5).collect();
        assert_eq!(deq(GgmlType::Q8_0, &bytes, 32), want);
        // Extremes of i8.
        bytes[2] = 0x80;
        bytes[3] = 0x7f;
        let got = deq(GgmlType::Q8_0, &bytes, 32);
        assert_eq!((got[0], got[1]), (-64.0, 63.5));
    }

    /// Nibble codes for element e of a 32-block: 16 distinct values each half.
    fn code32(e: usize) -> u8 {
        ((e * 7 + 3) % 16) as u8
    }

    fn nibbles32() -> Vec<u8> {
        (0..16).map(|j| code32(j) | (code32(j + 16) << 4)).collect()
    }

    #[test]
    fn q4_0() {
        // d = -2.0 (f16 0xc000).
        let mut bytes = vec![0x00, 0xc0];
        bytes.extend(nibbles32());
        let want: Vec<f32> = (0..32).map(|e| (code32(e) as f32 - 8.0) * -2.0).collect();
        assert_eq!(deq(GgmlType::Q4_0, &bytes, 32), want);
    }

    #[test]
    fn q4_1() {
        // d = 0.25 (f16 0x3400), m = -1.5 (f16 0xbe00).
        let mut bytes = vec![0x00, 0x34, 0x00, 0xbe];
        bytes.extend(nibbles32());
        let want: Vec<f32> = (0..32).map(|e| code32(e) as f32 * 0.25 - 1.5).collect();
        assert_eq!(deq(GgmlType::Q4_1, &bytes, 32), want);
    }

    /// Packs 8 six-bit scales and mins into the 12-byte Q4_K field.
    fn pack_q4k_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
        let mut out = [0u8; 12];
        for j in 0..4 {
            out[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            out[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            out[j + 8] = (sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4);
        }
        out
    }

    #[test]
    fn q4k_scale_unpacking() {
        let sc = [1, 63, 17, 32, 48, 5, 62, 33];
        let m = [0, 21, 63, 40, 16, 59, 1, 47];
        let packed = pack_q4k_scales(sc, m);
        for j in 0..8 {
            assert_eq!(q4k_scale_min(&packed, j), (sc[j], m[j]), "sub-block {j}");
        }
    }

    #[test]
    fn q4k() {
        let sc = [1, 63, 17, 32, 48, 5, 62, 33];
        let m = [0, 21, 63, 40, 16, 59, 1, 47];
        // Element e: sub-block e / 32, code (e * 5 + e / 32) % 16.
        let code = |e: usize| ((e * 5 + e / 32) % 16) as u8;
        let mut bytes = Vec::new();
        bytes.extend(f16_bytes(0.125)); // d
        bytes.extend(f16_bytes(0.0625)); // dmin
        bytes.extend(pack_q4k_scales(sc, m));
        for c in 0..4 {
            for l in 0..32 {
                let (lo, hi) = (64 * c + l, 64 * c + 32 + l);
                bytes.push(code(lo) | (code(hi) << 4));
            }
        }
        assert_eq!(bytes.len(), 144);
        let want: Vec<f32> = (0..256)
            .map(|e| {
                let j = e / 32;
                0.125 * sc[j] as f32 * code(e) as f32 - 0.0625 * m[j] as f32
            })
            .collect();
        assert_eq!(deq(GgmlType::Q4K, &bytes, 256), want);
    }

    #[test]
    fn q6k() {
        // Element e: 6-bit code (e * 37 + 11) % 64, scale index e / 16.
        let code = |e: usize| ((e * 37 + 11) % 64) as u8;
        let scales: [i8; 16] = [
            1, -1, 127, -128, 3, -7, 64, -64, 2, 9, -33, 100, -100, 5, 0, 17,
        ];
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for e in 0..256 {
            let (half, r) = (e / 128, e % 128);
            let (k, l) = (r / 32, r % 32);
            let q = code(e);
            ql[64 * half + l + 32 * (k & 1)] |= (q & 0x0f) << (4 * (k / 2));
            qh[32 * half + l] |= (q >> 4) << (2 * k);
        }
        let mut bytes = Vec::new();
        bytes.extend(ql);
        bytes.extend(qh);
        bytes.extend(scales.map(|s| s as u8));
        bytes.extend(f16_bytes(0.5));
        assert_eq!(bytes.len(), 210);
        let want: Vec<f32> = (0..256)
            .map(|e| 0.5 * scales[e / 16] as f32 * (code(e) as f32 - 32.0))
            .collect();
        assert_eq!(deq(GgmlType::Q6K, &bytes, 256), want);
    }

    #[test]
    fn many_blocks_in_parallel_match_one_by_one() {
        // More blocks than one task so the rayon split is exercised.
        let n_blocks = BLOCKS_PER_TASK * 2 + 3;
        let bytes: Vec<u8> = (0..n_blocks * 20)
            .map(|i| {
                // Keep the f16 fields finite: exponent bits never all ones.
                let x = ((i as u64).wrapping_mul(2_654_435_761) >> 7) as u8;
                if i % 20 == 1 || i % 20 == 3 {
                    x & 0x3b
                } else {
                    x
                }
            })
            .collect();
        let all = deq(GgmlType::Q4_1, &bytes, n_blocks * 32);
        for (b, chunk) in bytes.chunks_exact(20).enumerate() {
            let block: &BlockQ4_1 = bytemuck::from_bytes(chunk);
            let mut one = [0.0; 32];
            block_q4_1(block, &mut one);
            assert_eq!(&all[b * 32..b * 32 + 32], &one[..]);
        }
    }

    #[test]
    fn length_and_type_errors() {
        assert!(matches!(
            dequantize_to_vec(GgmlType::Q8_0, &[0; 33], 32),
            Err(DequantError::Length { .. })
        ));
        assert!(matches!(
            dequantize_to_vec(GgmlType::Q8_0, &[0; 34], 64),
            Err(DequantError::Length { .. })
        ));
        assert!(matches!(
            dequantize_to_vec(GgmlType::F32, &[0; 7], 2),
            Err(DequantError::Length { .. })
        ));
        assert_eq!(
            dequantize_to_vec(GgmlType::Q5K, &[0; 176], 256),
            Err(DequantError::Unsupported(GgmlType::Q5K))
        );
        assert!(dequantize_to_vec(GgmlType::Q4K, &[], 0).unwrap().is_empty());
    }
}
