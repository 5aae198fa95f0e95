//! Hugging Face checkpoint directories: `config.json` plus one or more
//! `*.safetensors` files (single, or sharded with
//! `model.safetensors.index.json`), f32 / f16 / bf16, memory-mapped.
//! Also the writer `nq-host convert` uses.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use super::{Arch, LayerWeights, Matrix, ModelConfig, ModelError, ModelWeights};

/// Why a Hugging Face directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// `config.json` or the shard index is not valid.
    #[error("{path}: {message}")]
    Json {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A safetensors file is malformed.
    #[error("{path}: invalid safetensors file: {message}")]
    SafeTensors {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor has a dtype we do not read.
    #[error("tensor {name}: unsupported dtype {dtype} (f32, f16, bf16 are supported)")]
    Dtype {
        /// Tensor name.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// The weights do not form a valid model.
    #[error(transparent)]
    Model(#[from] ModelError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HfError + '_ {
    move |source| HfError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The `config.json` fields we use (others are ignored).
#[derive(Debug, Deserialize, Serialize)]
pub struct HfConfig {
    /// `llama`, `qwen2`, `qwen3`, `mistral`.
    pub model_type: String,
    /// Architectures list, written back on convert.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Hidden size.
    pub hidden_size: u32,
    /// FFN inner size.
    pub intermediate_size: u32,
    /// Layers.
    pub num_hidden_layers: u32,
    /// Query heads.
    pub num_attention_heads: u32,
    /// Key/value heads (defaults to query heads).
    #[serde(default)]
    pub num_key_value_heads: Option<u32>,
    /// Head width (defaults to hidden / heads).
    #[serde(default)]
    pub head_dim: Option<u32>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    /// Vocabulary size.
    pub vocab_size: u32,
    /// Trained context.
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: u32,
    /// Whether the LM head is the token embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama's optional q/k/v/o bias switch.
    #[serde(default)]
    pub attention_bias: bool,
    /// BOS token.
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    /// EOS token (an id or a list of ids).
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// `torch_dtype` as written by transformers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
}

fn default_theta() -> f32 {
    10000.0
}

fn default_ctx() -> u32 {
    2048
}

fn first_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Some(serde_json::Value::Array(a)) => a
            .first()
            .and_then(|n| n.as_u64())
            .and_then(|n| u32::try_from(n).ok()),
        _ => None,
    }
}

impl HfConfig {
    /// Our config for this checkpoint.
    pub fn to_model_config(&self) -> Result<ModelConfig, ModelError> {
        let arch = match self.model_type.as_str() {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            other => return Err(ModelError::UnsupportedArch(other.to_string())),
        };
        if self.attention_bias && arch == Arch::Llama {
            return Err(ModelError::Config(
                "llama with attention_bias is not supported".into(),
            ));
        }
        if self.num_attention_heads == 0 {
            return Err(ModelError::Config("num_attention_heads is 0".into()));
        }
        let cfg = ModelConfig {
            arch,
            n_layers: self.num_hidden_layers,
            d_model: self.hidden_size,
            d_ffn: self.intermediate_size,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads),
            vocab_size: self.vocab_size,
            max_seq_len: self.max_position_embeddings,
            rope_theta: self.rope_theta,
            norm_eps: self.rms_norm_eps,
            tied_embeddings: self.tie_word_embeddings,
            attn_bias: arch == Arch::Qwen2,
            qk_norm: arch == Arch::Qwen3,
            bos_id: first_id(&self.bos_token_id),
            eos_id: first_id(&self.eos_token_id),
        };
        cfg.validate()
            .map_err(|e| ModelError::Config(e.to_string()))?;
        Ok(cfg)
    }

    /// The `config.json` that describes `c`.
    pub fn from_model_config(c: &ModelConfig, torch_dtype: &str) -> Self {
        let (model_type, class) = match c.arch {
            Arch::Llama => ("llama", "LlamaForCausalLM"),
            Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
            Arch::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
        };
        Self {
            model_type: model_type.into(),
            architectures: vec![class.into()],
            hidden_size: c.d_model,
            intermediate_size: c.d_ffn,
            num_hidden_layers: c.n_layers,
            num_attention_heads: c.n_heads,
            num_key_value_heads: Some(c.n_kv_heads),
            head_dim: Some(c.head_dim),
            rms_norm_eps: c.norm_eps,
            rope_theta: c.rope_theta,
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_seq_len,
            tie_word_embeddings: c.tied_embeddings,
            attention_bias: false,
            bos_token_id: c.bos_id.map(serde_json::Value::from),
            eos_token_id: c.eos_id.map(serde_json::Value::from),
            torch_dtype: Some(torch_dtype.into()),
        }
    }
}

/// Memory maps of every shard and which shard holds each tensor.
struct Shards {
    maps: Vec<(PathBuf, Mmap)>,
    index: HashMap<String, usize>,
}

fn map_file(path: &Path) -> Result<Mmap, HfError> {
    let f = File::open(path).map_err(io_err(path))?;
    // SAFETY: read-only map of a checkpoint file we do not modify; see the
    // usual mmap caveat about other processes truncating it.
    unsafe { Mmap::map(&f) }.map_err(io_err(path))
}

fn open_shards(dir: &Path) -> Result<Shards, HfError> {
    let index_path = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index_path.exists() {
        let text = std::fs::read_to_string(&index_path).map_err(io_err(&index_path))?;
        #[derive(Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let idx: Index = serde_json::from_str(&text).map_err(|e| HfError::Json {
            path: index_path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut files: Vec<String> = idx.weight_map.into_values().collect();
        files.sort();
        files.dedup();
        files.into_iter().map(|f| dir.join(f)).collect()
    } else {
        vec![dir.join("model.safetensors")]
    };
    let mut maps = Vec::new();
    let mut index = HashMap::new();
    for path in files {
        let map = map_file(&path)?;
        let st = SafeTensors::deserialize(&map).map_err(|e| HfError::SafeTensors {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        for name in st.names() {
            index.insert(name.clone(), maps.len());
        }
        drop(st);
        maps.push((path, map));
    }
    Ok(Shards { maps, index })
}

fn to_f32(name: &str, t: &TensorView<'_>) -> Result<Vec<f32>, HfError> {
    let b = t.data();
    Ok(match t.dtype() {
        StDtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        StDtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        StDtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(HfError::Dtype {
                name: name.into(),
                dtype: format!("{other:?}"),
            })
        }
    })
}

/// A tensor's shape and f32 values.
type Loaded = (Vec<usize>, Vec<f32>);

impl Shards {
    fn get(&self, name: &str) -> Result<Option<Loaded>, HfError> {
        let Some(&i) = self.index.get(name) else {
            return Ok(None);
        };
        let (path, map) = &self.maps[i];
        let st = SafeTensors::deserialize(map).map_err(|e| HfError::SafeTensors {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let t = st.tensor(name).map_err(|e| HfError::SafeTensors {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(Some((t.shape().to_vec(), to_f32(name, &t)?)))
    }

    fn required(&self, name: &str) -> Result<Loaded, HfError> {
        self.get(name)?
            .ok_or_else(|| HfError::Model(ModelError::MissingTensor(name.to_string())))
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix, HfError> {
        let (shape, data) = self.required(name)?;
        if shape != [rows, cols] {
            return Err(ModelError::Shape {
                name: name.into(),
                expected: vec![rows, cols],
                found: shape,
            }
            .into());
        }
        Ok(Matrix { rows, cols, data })
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, HfError> {
        let (shape, data) = self.required(name)?;
        if shape != [len] {
            return Err(ModelError::Shape {
                name: name.into(),
                expected: vec![len],
                found: shape,
            }
            .into());
        }
        Ok(data)
    }
}

/// Reads `config.json` of a directory.
pub fn read_config(dir: &Path) -> Result<HfConfig, HfError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    serde_json::from_str(&text).map_err(|e| HfError::Json {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Loads a Hugging Face Llama-family checkpoint directory.
pub fn load_hf_dir(dir: &Path) -> Result<ModelWeights, HfError> {
    let hf = read_config(dir)?;
    let mut config = hf.to_model_config()?;
    let shards = open_shards(dir)?;
    let c = config;
    let (d, q, kv, f, v, hd) = (
        c.d_model as usize,
        c.q_dim() as usize,
        c.kv_dim() as usize,
        c.d_ffn as usize,
        c.vocab_size as usize,
        c.head_dim as usize,
    );
    let token_embd = shards.matrix("model.embed_tokens.weight", v, d)?;
    // Some checkpoints say "untied" but ship no lm_head: they are tied.
    let output = if c.tied_embeddings || !shards.index.contains_key("lm_head.weight") {
        config.tied_embeddings = true;
        None
    } else {
        Some(shards.matrix("lm_head.weight", v, d)?)
    };
    let mut layers = Vec::with_capacity(c.n_layers as usize);
    for i in 0..c.n_layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let bias = |s: &str, len: usize| -> Result<Option<Vec<f32>>, HfError> {
            if c.attn_bias {
                shards.vector(&p(s), len).map(Some)
            } else {
                Ok(None)
            }
        };
        let norm = |s: &str| -> Result<Option<Vec<f32>>, HfError> {
            if c.qk_norm {
                shards.vector(&p(s), hd).map(Some)
            } else {
                Ok(None)
            }
        };
        layers.push(LayerWeights {
            attn_norm: shards.vector(&p("input_layernorm.weight"), d)?,
            wq: shards.matrix(&p("self_attn.q_proj.weight"), q, d)?,
            wk: shards.matrix(&p("self_attn.k_proj.weight"), kv, d)?,
            wv: shards.matrix(&p("self_attn.v_proj.weight"), kv, d)?,
            wo: shards.matrix(&p("self_attn.o_proj.weight"), d, q)?,
            bq: bias("self_attn.q_proj.bias", q)?,
            bk: bias("self_attn.k_proj.bias", kv)?,
            bv: bias("self_attn.v_proj.bias", kv)?,
            q_norm: norm("self_attn.q_norm.weight")?,
            k_norm: norm("self_attn.k_norm.weight")?,
            ffn_norm: shards.vector(&p("post_attention_layernorm.weight"), d)?,
            w_gate: shards.matrix(&p("mlp.gate_proj.weight"), f, d)?,
            w_up: shards.matrix(&p("mlp.up_proj.weight"), f, d)?,
            w_down: shards.matrix(&p("mlp.down_proj.weight"), d, f)?,
        });
    }
    let w = ModelWeights {
        config,
        token_embd,
        output_norm: shards.vector("model.norm.weight", d)?,
        output,
        layers,
    };
    w.validate()?;
    Ok(w)
}

/// Storage dtype for [`save_hf_dir`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SaveDtype {
    /// binary32.
    F32,
    /// binary16.
    F16,
    /// bfloat16.
    Bf16,
}

struct Owned {
    dtype: StDtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for &Owned {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn encode(values: &[f32], shape: Vec<usize>, dtype: SaveDtype) -> Owned {
    let (dtype, bytes) = match dtype {
        SaveDtype::F32 => (
            StDtype::F32,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        SaveDtype::F16 => (
            StDtype::F16,
            values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        ),
        SaveDtype::Bf16 => (
            StDtype::BF16,
            values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        ),
    };
    Owned {
        dtype,
        shape,
        bytes,
    }
}

/// Writes `w` as `config.json` + `model.safetensors` into `dir` (created if
/// needed; files are written to temporaries and renamed into place).
pub fn save_hf_dir(w: &ModelWeights, dir: &Path, dtype: SaveDtype) -> Result<(), HfError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut tensors: BTreeMap<String, Owned> = BTreeMap::new();
    let mut put_m = |name: String, m: &Matrix| {
        tensors.insert(name, encode(&m.data, vec![m.rows, m.cols], dtype));
    };
    put_m("model.embed_tokens.weight".into(), &w.token_embd);
    if let Some(o) = &w.output {
        put_m("lm_head.weight".into(), o);
    }
    for (i, l) in w.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        put_m(p("self_attn.q_proj.weight"), &l.wq);
        put_m(p("self_attn.k_proj.weight"), &l.wk);
        put_m(p("self_attn.v_proj.weight"), &l.wv);
        put_m(p("self_attn.o_proj.weight"), &l.wo);
        put_m(p("mlp.gate_proj.weight"), &l.w_gate);
        put_m(p("mlp.up_proj.weight"), &l.w_up);
        put_m(p("mlp.down_proj.weight"), &l.w_down);
    }
    let mut put_v = |name: String, v: &[f32]| {
        tensors.insert(name, encode(v, vec![v.len()], dtype));
    };
    put_v("model.norm.weight".into(), &w.output_norm);
    for (i, l) in w.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        put_v(p("input_layernorm.weight"), &l.attn_norm);
        put_v(p("post_attention_layernorm.weight"), &l.ffn_norm);
        for (name, b) in [
            ("self_attn.q_proj.bias", &l.bq),
            ("self_attn.k_proj.bias", &l.bk),
            ("self_attn.v_proj.bias", &l.bv),
            ("self_attn.q_norm.weight", &l.q_norm),
            ("self_attn.k_norm.weight", &l.k_norm),
        ] {
            if let Some(b) = b {
                put_v(p(name), b);
            }
        }
    }
    let st_path = dir.join("model.safetensors");
    let tmp = tempfile::Builder::new()
        .prefix(".model-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    safetensors::serialize_to_file(
        tensors.iter().map(|(k, v)| (k.clone(), v)),
        &None,
        tmp.path(),
    )
    .map_err(|e| HfError::SafeTensors {
        path: st_path.display().to_string(),
        message: e.to_string(),
    })?;
    tmp.persist(&st_path).map_err(|e| HfError::Io {
        path: st_path.display().to_string(),
        source: e.error,
    })?;
    let torch_dtype = match dtype {
        SaveDtype::F32 => "float32",
        SaveDtype::F16 => "float16",
        SaveDtype::Bf16 => "bfloat16",
    };
    let cfg = HfConfig::from_model_config(&w.config, torch_dtype);
    let json = serde_json::to_string_pretty(&cfg).expect("config serializes");
    let cfg_path = dir.join("config.json");
    crate::blob_writer::write_atomic(&cfg_path, json.as_bytes()).map_err(|e| HfError::Io {
        path: cfg_path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(())
}
