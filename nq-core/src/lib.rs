//! nq-core: run nanoquant models where they lie.
//!
//! This crate is `#![no_std]` in every configuration. It reads a `.nqb` blob
//! in place — from flash, XIP memory or an `mmap` — without copying it and
//! without an allocator, and hands out typed views of its layers:
//!
//! * [`SignMatrix`]: a packed matrix of ±1 in the blob's 16-row tile layout;
//! * [`FactorizedLinear`]: `y = s_post ⊙ (U · (V · (s_pre ⊙ x))) + bias`;
//! * [`BinaryLinear`]: `y = s_row ⊙ (B · (s_col ⊙ x)) + bias`;
//! * [`DenseTensor`] and [`RowQuantTensor`] for embeddings and norms;
//! * [`Runtime`]: a whole Llama/Qwen2/Qwen3 decoder over one caller-provided
//!   byte arena (KV cache f32/f16/int8), with a sampler and the blob's token
//!   text table ([`runtime`]).
//!
//! Every layer has a scalar `*_ref` forward: the dumb, obviously right oracle
//! every faster kernel is tested against.
//!
//! [`Blob::parse`] validates a blob in O(header) time and never panics on any
//! input; [`BlobView::verify`] checks every CRC. The format is specified in
//! `docs/FORMAT.md`.
//!
//! Features: `alloc` (owned, `Vec`-backed layers and builders), `std`
//! (`alloc` plus OS-dependent parts), `defmt` (`defmt::Format` impls).
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
// `x % k == 0` reads the same in const and non-const code; the crate's MSRV
// rose to 1.89 for the kernels, which is what turns this lint on.
#![allow(clippy::manual_is_multiple_of)]

#[cfg(feature = "alloc")]
extern crate alloc;
// Tests always have std (the harness needs it); the library only with `std`.
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod blob;
pub mod f16vec;
pub mod kernels;
pub mod layers;
pub mod runtime;
pub mod sign;

pub use blob::{Blob, BlobError, BlobView, ModelConfig, TensorView};
pub use f16vec::F16Vector;
pub use kernels::Kernel;
pub use layers::{
    BinaryLinear, DenseDtype, DenseTensor, FactorizedLinear, Linear, RowBits, RowQuantTensor,
    ShapeError,
};
pub use runtime::{ActPrecision, KvDtype, Runtime, RuntimeError, RuntimeOptions};
pub use sign::SignMatrix;
