//! nq-host: the workstation half of nanoquant.
//!
//! Today: the deterministic blob writer and blob inspection. The checkpoint
//! readers, FP32 reference model and quantizer build on these.
#![deny(missing_docs)]

pub mod blob_writer;
pub mod eval;
pub mod gguf;
pub mod inspect;
pub mod linalg;
pub mod model;
pub mod tokenizer;

pub use blob_writer::{write_atomic, BlobBuilder, TensorPayload, WriteError};
