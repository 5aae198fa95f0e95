//! aarch64 kernels: NEON table lookups and dotprod (`SDOT`) dot products.

pub(super) mod dotprod;
pub(super) mod neon;
