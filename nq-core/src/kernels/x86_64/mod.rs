//! x86_64 kernels: AVX2 table lookups, AVX-512 VNNI dot products, AMX-INT8
//! tile products, and an F16C dot product for f16 tables.

pub(super) mod amx;
pub(super) mod avx2;
pub(super) mod avx512;
pub(super) mod f16c;
