//! The model config record: what the runtime needs to know besides tensors.

use super::format::*;
use super::BlobError;

/// Decoder architecture family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Arch {
    /// Llama (SmolLM2, Llama 2/3, Mistral-style).
    Llama,
    /// Qwen2 (q/k/v bias).
    Qwen2,
    /// Qwen3 (per-head q/k RMSNorm).
    Qwen3,
}

impl Arch {
    /// The id stored in the blob.
    pub const fn id(self) -> u32 {
        match self {
            Self::Llama => 1,
            Self::Qwen2 => 2,
            Self::Qwen3 => 3,
        }
    }

    /// Decodes an id.
    pub const fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            1 => Self::Llama,
            2 => Self::Qwen2,
            3 => Self::Qwen3,
            _ => return None,
        })
    }

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }
}

/// A validated model config (FORMAT.md §4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Decoder layers.
    pub n_layers: u32,
    /// Hidden size.
    pub d_model: u32,
    /// SwiGLU inner size.
    pub d_ffn: u32,
    /// Query heads.
    pub n_heads: u32,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: u32,
    /// Per-head dimension.
    pub head_dim: u32,
    /// Vocabulary size.
    pub vocab_size: u32,
    /// Trained context length.
    pub max_seq_len: u32,
    /// RoPE base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// The LM head is the token embedding.
    pub tied_embeddings: bool,
    /// q/k/v carry biases.
    pub attn_bias: bool,
    /// Per-head q/k RMSNorm.
    pub qk_norm: bool,
    /// Beginning-of-sequence token.
    pub bos_id: Option<u32>,
    /// End-of-sequence token.
    pub eos_id: Option<u32>,
}

impl ModelConfig {
    /// Checks every range rule of FORMAT.md §4.
    pub fn validate(&self) -> Result<(), BlobError> {
        let bad = |field| Err(BlobError::BadConfig { field });
        let dim_ok = |d: u32| (1..=MAX_DIM).contains(&d);
        if !(1..=MAX_LAYERS).contains(&self.n_layers) {
            return bad("n_layers");
        }
        if !dim_ok(self.d_model) {
            return bad("d_model");
        }
        if !dim_ok(self.d_ffn) {
            return bad("d_ffn");
        }
        if self.n_heads == 0 {
            return bad("n_heads");
        }
        if self.n_kv_heads == 0 || self.n_heads % self.n_kv_heads != 0 {
            return bad("n_kv_heads");
        }
        if self.head_dim < 2 || self.head_dim % 2 != 0 {
            return bad("head_dim");
        }
        if !self.n_heads.checked_mul(self.head_dim).is_some_and(dim_ok) {
            return bad("head_dim");
        }
        if !(1..=MAX_VOCAB).contains(&self.vocab_size) {
            return bad("vocab_size");
        }
        if self.max_seq_len == 0 {
            return bad("max_seq_len");
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad("rope_theta");
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return bad("norm_eps");
        }
        if self.bos_id.is_some_and(|t| t >= self.vocab_size) {
            return bad("bos_id");
        }
        if self.eos_id.is_some_and(|t| t >= self.vocab_size) {
            return bad("eos_id");
        }
        Ok(())
    }

    /// Decodes and validates a raw record.
    pub fn from_raw(raw: &RawConfig) -> Result<Self, BlobError> {
        let arch = Arch::from_id(raw.arch).ok_or(BlobError::UnknownArch(raw.arch))?;
        if raw.flags & !CONFIG_KNOWN_FLAGS != 0 {
            return Err(BlobError::Reserved {
                field: "config.flags",
            });
        }
        if raw.reserved.iter().any(|&b| b != 0) {
            return Err(BlobError::Reserved {
                field: "config.reserved",
            });
        }
        let token = |t: u32| if t == NO_TOKEN { None } else { Some(t) };
        let cfg = Self {
            arch,
            n_layers: raw.n_layers,
            d_model: raw.d_model,
            d_ffn: raw.d_ffn,
            n_heads: raw.n_heads,
            n_kv_heads: raw.n_kv_heads,
            head_dim: raw.head_dim,
            vocab_size: raw.vocab_size,
            max_seq_len: raw.max_seq_len,
            rope_theta: raw.rope_theta,
            norm_eps: raw.norm_eps,
            tied_embeddings: raw.flags & CONFIG_TIED_EMBEDDINGS != 0,
            attn_bias: raw.flags & CONFIG_ATTN_BIAS != 0,
            qk_norm: raw.flags & CONFIG_QK_NORM != 0,
            bos_id: token(raw.bos_id),
            eos_id: token(raw.eos_id),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The raw record a writer stores.
    pub fn to_raw(&self) -> RawConfig {
        let mut flags = 0;
        if self.tied_embeddings {
            flags |= CONFIG_TIED_EMBEDDINGS;
        }
        if self.attn_bias {
            flags |= CONFIG_ATTN_BIAS;
        }
        if self.qk_norm {
            flags |= CONFIG_QK_NORM;
        }
        RawConfig {
            arch: self.arch.id(),
            n_layers: self.n_layers,
            d_model: self.d_model,
            d_ffn: self.d_ffn,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            vocab_size: self.vocab_size,
            max_seq_len: self.max_seq_len,
            rope_theta: self.rope_theta,
            norm_eps: self.norm_eps,
            flags,
            bos_id: self.bos_id.unwrap_or(NO_TOKEN),
            eos_id: self.eos_id.unwrap_or(NO_TOKEN),
            reserved: [0; 72],
        }
    }

    /// Width of the query projection output (`n_heads · head_dim`).
    pub fn q_dim(&self) -> u32 {
        self.n_heads.saturating_mul(self.head_dim)
    }

    /// Width of the key/value projection outputs (`n_kv_heads · head_dim`).
    pub fn kv_dim(&self) -> u32 {
        self.n_kv_heads.saturating_mul(self.head_dim)
    }
}
