//! aarch64 kernels: NEON table lookups, dotprod (`SDOT`) and I8MM
//! (`SMMLA`) dot products.

pub(super) mod dotprod;
pub(super) mod i8mm;
pub(super) mod neon;
