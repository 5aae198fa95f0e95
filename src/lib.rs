//! nanoquant: one import for the whole workspace.
//!
//! The work happens in the member crates: [`nq_core`] (the `no_std` blob
//! reader, layer types and kernels), [`nq_host`] (quantizer and CLI) and
//! [`nq_cuda`] (the CUDA backend). This umbrella crate exists so the
//! cross-crate tests, benchmarks and host examples have a home.
#![deny(missing_docs)]

pub use nq_core;
pub use nq_cuda;
pub use nq_host;
