//! nq-host: the workstation half of nanoquant.
//!
//! Checkpoint readers (GGUF, Hugging Face safetensors), the tokenizer, the
//! FP32 reference transformer with its backward pass, perplexity evaluation,
//! and the deterministic blob writer and inspector.
#![deny(missing_docs)]

pub mod backend;
pub mod bench;
pub mod blob_writer;
pub mod eval;
pub mod gguf;
pub mod inspect;
pub mod linalg;
pub mod model;
pub mod quant;
pub mod source;
pub mod tokenizer;

pub use blob_writer::{write_atomic, BlobBuilder, TensorPayload, WriteError};
