//! x86_64 kernels: AVX2 table lookups and AVX-512 VNNI dot products.

pub(super) mod avx2;
pub(super) mod avx512;
