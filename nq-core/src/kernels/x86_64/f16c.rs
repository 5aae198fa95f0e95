//! F16C + FMA: the dot product of an f16 row with an f32 vector, for LM
//! heads and embeddings stored as f16 (the tied head of a small model is
//! most of a decode step's memory traffic).

use core::arch::x86_64::*;

/// Whether this CPU runs AVX, F16C and FMA.
pub(crate) fn is_available() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx")
            && std::is_x86_feature_detected!("f16c")
            && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(
            target_feature = "avx",
            target_feature = "f16c",
            target_feature = "fma"
        ))
    }
}

/// `Σ f16(row_j) · x_j`, `row` holding `x.len()` little-endian f16 values.
///
/// # Safety
/// The CPU must support AVX, F16C and FMA.
///
/// # Panics
/// If `row.len() < 2 · x.len()`.
#[target_feature(enable = "avx,f16c,fma")]
pub(crate) unsafe fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    assert!(row.len() >= 2 * n, "row too short");
    let (r, xp) = (row.as_ptr(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut j = 0;
    while j + 32 <= n {
        for (u, a) in acc.iter_mut().enumerate() {
            let k = j + 8 * u;
            // SAFETY: k + 8 ≤ n, so 16 bytes of `row` and 8 floats of `x`
            // from k are in bounds; unaligned loads.
            unsafe {
                let h = _mm_loadu_si128(r.add(2 * k).cast());
                *a = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(xp.add(k)), *a);
            }
        }
        j += 32;
    }
    while j + 8 <= n {
        // SAFETY: as above, j + 8 ≤ n.
        unsafe {
            let h = _mm_loadu_si128(r.add(2 * j).cast());
            acc[0] = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(xp.add(j)), acc[0]);
        }
        j += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
    let mut total = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (k, &xv) in x.iter().enumerate().skip(j) {
        let h = u16::from_le_bytes([row[2 * k], row[2 * k + 1]]);
        total += half::f16::from_bits(h).to_f32() * xv;
    }
    total
}
