//! `config.json` of a decoder checkpoint (Qwen2, Llama, Qwen3), in both styles found in the
//! wild: transformers 4.x (`rope_theta` and `rope_scaling` at top level, `rope_theta` possibly
//! a JSON integer; `torch_dtype`) and transformers 5.x (`rope_parameters: {rope_theta,
//! rope_type, ...}`; `dtype`).
//! The three architectures are one decoder with switches ([`DecoderVariant`]): which linear
//! layers carry a bias, whether q and k are RMS-normed per head (Qwen3), and how RoPE
//! frequencies are scaled (Llama 3's `llama3`, `linear`).
//! What this implementation cannot run is refused here, naming the field, rather than
//! silently computing something else.

use std::path::{Path, PathBuf};

use gguf::GgufFile;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{read_json, ModelError, Result};

/// The decoder families this implementation runs, by transformers' `model_type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    #[default]
    Qwen2,
    Llama,
    Qwen3,
}

impl Architecture {
    /// For error texts.
    pub const SUPPORTED: &'static str =
        "qwen2 (Qwen2ForCausalLM), llama (LlamaForCausalLM), qwen3 (Qwen3ForCausalLM)";

    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "qwen2" => Some(Self::Qwen2),
            "llama" => Some(Self::Llama),
            "qwen3" => Some(Self::Qwen3),
            _ => None,
        }
    }

    /// config.json's `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Qwen2 => "qwen2",
            Self::Llama => "llama",
            Self::Qwen3 => "qwen3",
        }
    }

    /// config.json's `architectures` entry.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// How RoPE's inverse frequencies are rescaled for long contexts (transformers'
/// `rope_type`). Neither scaling changes the attention factor (it stays 1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    #[default]
    Default,
    /// Every frequency divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's: long wavelengths divided by `factor`, short ones kept, a smooth blend
    /// between `original_max_position_embeddings / low_freq_factor` and `/ high_freq_factor`.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// What the three decoders do differently; everything else is shared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderVariant {
    pub architecture: Architecture,
    /// q, k and v projections have biases (Qwen2 always; Llama and Qwen3 with
    /// `attention_bias`).
    pub qkv_bias: bool,
    /// o_proj has a bias (Llama and Qwen3 with `attention_bias`; never Qwen2).
    pub o_proj_bias: bool,
    /// gate, up and down projections have biases (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// q and k are RMS-normed per head before RoPE (Qwen3's `q_norm`, `k_norm`).
    pub qk_norm: bool,
    pub rope_scaling: RopeScaling,
}

impl Default for DecoderVariant {
    /// Qwen2's.
    fn default() -> Self {
        Self {
            architecture: Architecture::Qwen2,
            qkv_bias: true,
            o_proj_bias: false,
            mlp_bias: false,
            qk_norm: false,
            rope_scaling: RopeScaling::Default,
        }
    }
}

/// The architecture hyper-parameters, as a plain struct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint was saved in (`bfloat16`, `float16`, `float32`).
    pub torch_dtype: String,
    /// Qwen2's unless the checkpoint says otherwise (records written before Llama and Qwen3
    /// were supported are all Qwen2).
    #[serde(default)]
    pub variant: DecoderVariant,
}

impl ModelConfig {
    /// Reads `DIR/config.json` (or a path to the file itself), or a GGUF file's metadata.
    pub fn from_file(path: &Path) -> Result<Self> {
        if gguf::is_gguf_path(path) {
            return Self::from_gguf(&GgufFile::open(path)?, false);
        }
        let path = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let json = read_json(&path)?;
        Self::from_json(&json, &path)
    }

    /// Parses and validates a config.json value; `path` is only used in error messages.
    pub fn from_json(json: &Value, path: &Path) -> Result<Self> {
        let fields = Fields { json, path };
        let model_type = fields.string("model_type")?;
        let Some(architecture) = Architecture::from_model_type(&model_type) else {
            return Err(fields.error(
                "model_type",
                format!(
                    "`{model_type}` is not supported; supported: {}",
                    Architecture::SUPPORTED
                ),
            ));
        };
        if fields
            .optional("use_sliding_window")
            .and_then(Value::as_bool)
            == Some(true)
        {
            return Err(fields.error(
                "use_sliding_window",
                "sliding-window attention is not implemented; set it to false (Qwen2.5, Qwen3 and \
                 DeepSeek-R1-Distill checkpoints ship false)"
                    .into(),
            ));
        }
        if let Some(act) = fields.optional("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(fields.error(
                    "hidden_act",
                    format!("`{act}` is not supported: only `silu` is"),
                ));
            }
        }

        let rope_parameters = fields.optional("rope_parameters").filter(|v| !v.is_null());
        let rope_scaling = fields.optional("rope_scaling").filter(|v| !v.is_null());
        let rope_scaling = match (rope_parameters, rope_scaling) {
            (Some(params), _) if rope_type(params) != "default" => {
                fields.rope_scaling("rope_parameters", params)?
            }
            (_, Some(params)) => fields.rope_scaling("rope_scaling", params)?,
            _ => RopeScaling::Default,
        };
        let rope_theta = match fields.optional("rope_theta").filter(|v| !v.is_null()) {
            Some(value) => number(value)
                .ok_or_else(|| fields.error("rope_theta", "expected a number".into()))?,
            None => match rope_parameters.and_then(|p| p.get("rope_theta")) {
                Some(value) => number(value).ok_or_else(|| {
                    fields.error("rope_parameters.rope_theta", "expected a number".into())
                })?,
                None => {
                    return Err(fields.error(
                        "rope_theta",
                        "missing: give `rope_theta` or `rope_parameters.rope_theta`".into(),
                    ))
                }
            },
        };
        let flag = |name: &str| -> Result<bool> {
            match fields.optional(name) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(value)) => Ok(*value),
                Some(other) => {
                    Err(fields.error(name, format!("expected true or false, found {other}")))
                }
            }
        };
        let variant = match architecture {
            Architecture::Qwen2 => DecoderVariant {
                rope_scaling,
                ..DecoderVariant::default()
            },
            Architecture::Llama | Architecture::Qwen3 => {
                let attention_bias = flag("attention_bias")?;
                DecoderVariant {
                    architecture,
                    qkv_bias: attention_bias,
                    o_proj_bias: attention_bias,
                    // Qwen3's MLP has no bias switch (transformers ignores the key there).
                    mlp_bias: architecture == Architecture::Llama && flag("mlp_bias")?,
                    qk_norm: architecture == Architecture::Qwen3,
                    rope_scaling,
                }
            }
        };

        let hidden_size = fields.usize("hidden_size")?;
        let num_attention_heads = fields.usize("num_attention_heads")?;
        let num_key_value_heads = match fields.optional("num_key_value_heads") {
            Some(_) => fields.usize("num_key_value_heads")?,
            None => num_attention_heads,
        };
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(fields.error(
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"),
            ));
        }
        // An explicit head_dim need not be hidden_size / heads (Qwen3-0.6B: 16 heads of 128 in
        // a 1024-wide model); without one, the heads must split hidden_size evenly.
        let head_dim = match fields.optional("head_dim").filter(|v| !v.is_null()) {
            Some(_) => fields.usize("head_dim")?,
            None if hidden_size % num_attention_heads != 0 => {
                return Err(fields.error(
                    "num_attention_heads",
                    format!(
                        "{num_attention_heads} does not divide hidden_size {hidden_size} (and no \
                         head_dim is given)"
                    ),
                ))
            }
            None => hidden_size / num_attention_heads,
        };
        if head_dim % 2 != 0 {
            return Err(fields.error("head_dim", format!("{head_dim} must be even for RoPE")));
        }

        let eos_token_ids = match fields.optional("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(value) => token_ids(value).ok_or_else(|| {
                fields.error(
                    "eos_token_id",
                    "expected a token id or a list of ids".into(),
                )
            })?,
        };
        let bos_token_id = fields
            .optional("bos_token_id")
            .and_then(Value::as_u64)
            .map(|v| v as u32);
        let torch_dtype = fields
            .optional("torch_dtype")
            .or_else(|| fields.optional("dtype"))
            .and_then(Value::as_str)
            .unwrap_or("float32")
            .to_string();

        Ok(Self {
            vocab_size: fields.usize("vocab_size")?,
            hidden_size,
            intermediate_size: fields.usize("intermediate_size")?,
            num_hidden_layers: fields.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: match fields.optional("max_position_embeddings") {
                Some(_) => fields.usize("max_position_embeddings")?,
                None => 32768,
            },
            rms_norm_eps: match fields.optional("rms_norm_eps") {
                Some(value) => number(value)
                    .ok_or_else(|| fields.error("rms_norm_eps", "expected a number".into()))?,
                None => 1e-6,
            },
            rope_theta,
            tie_word_embeddings: fields
                .optional("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos_token_id,
            eos_token_ids,
            torch_dtype,
            variant,
        })
    }

    /// The config.json that transformers writes for this architecture (4.x style, which both
    /// transformers 4 and 5 read).
    pub fn to_hf_json(&self) -> Value {
        let eos = match self.eos_token_ids.as_slice() {
            [one] => Value::from(*one),
            many => Value::from(many.to_vec()),
        };
        let variant = &self.variant;
        let architecture = variant.architecture;
        let mut json = serde_json::json!({
            "architectures": [architecture.class_name()],
            "model_type": architecture.model_type(),
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "head_dim": self.head_dim,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": self.torch_dtype,
            "use_cache": true,
            "vocab_size": self.vocab_size,
        });
        match architecture {
            Architecture::Qwen2 | Architecture::Qwen3 => {
                json["max_window_layers"] = self.num_hidden_layers.into();
                json["sliding_window"] = Value::Null;
                json["use_sliding_window"] = false.into();
            }
            Architecture::Llama => {
                json["mlp_bias"] = variant.mlp_bias.into();
                json["pretraining_tp"] = 1.into();
            }
        }
        if architecture != Architecture::Qwen2 {
            json["attention_bias"] = variant.qkv_bias.into();
        }
        if variant.rope_scaling != RopeScaling::Default {
            json["rope_scaling"] =
                serde_json::to_value(&variant.rope_scaling).expect("plain struct");
        }
        json
    }

    /// Every parameter of the model, by its Hugging Face name and PyTorch shape, in the order
    /// transformers lists them (a tied lm_head is the embedding, listed once).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let variant = &self.variant;
        let mut names = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for layer in 0..self.num_hidden_layers {
            let p = format!("model.layers.{layer}");
            let mut push =
                |part: &str, shape: Vec<usize>| names.push((format!("{p}.{part}"), shape));
            push("input_layernorm.weight", vec![h]);
            for (linear, out_features, in_features, bias) in [
                ("self_attn.q_proj", q, h, variant.qkv_bias),
                ("self_attn.k_proj", kv, h, variant.qkv_bias),
                ("self_attn.v_proj", kv, h, variant.qkv_bias),
                ("self_attn.o_proj", h, q, variant.o_proj_bias),
            ] {
                push(&format!("{linear}.weight"), vec![out_features, in_features]);
                if bias {
                    push(&format!("{linear}.bias"), vec![out_features]);
                }
            }
            if variant.qk_norm {
                push("self_attn.q_norm.weight", vec![self.head_dim]);
                push("self_attn.k_norm.weight", vec![self.head_dim]);
            }
            push("post_attention_layernorm.weight", vec![h]);
            for (linear, out_features, in_features) in [
                ("mlp.gate_proj", i, h),
                ("mlp.up_proj", i, h),
                ("mlp.down_proj", h, i),
            ] {
                push(&format!("{linear}.weight"), vec![out_features, in_features]);
                if variant.mlp_bias {
                    push(&format!("{linear}.bias"), vec![out_features]);
                }
            }
        }
        names.push(("model.norm.weight".into(), vec![h]));
        if !self.tie_word_embeddings {
            names.push(("lm_head.weight".into(), vec![v, h]));
        }
        names
    }

    /// Number of parameters, counting a tied embedding once.
    pub fn num_parameters(&self) -> usize {
        self.tensor_shapes()
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum()
    }

    /// Floating-point operations of one forward pass, per token, counting a multiply-add as two:
    /// every linear layer and the lm_head (2 x their weights; the embedding lookup is free) and
    /// attention's two matmuls against `context` keys. The model computes the full score square
    /// (masked, not skipped), so no causal halving. A backward pass costs twice this.
    pub fn forward_flops_per_token(&self, context: usize) -> f64 {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let linear = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size;
        let attention = 2 * context * q;
        (2 * self.num_hidden_layers * (linear + attention)) as f64 + self.lm_head_flops_per_token()
    }

    /// The lm_head's part of [`ModelConfig::forward_flops_per_token`]: what a pass that keeps
    /// only some positions' logits (generation's prefill keeps the last) saves per dropped one.
    pub fn lm_head_flops_per_token(&self) -> f64 {
        (2 * self.vocab_size * self.hidden_size) as f64
    }

    /// The names [`ModelConfig::preset`] knows, for help and error texts.
    pub const PRESETS: &'static str = "tiny, qwen2.5-0.5b, qwen2.5-1.5b, \
         deepseek-r1-distill-qwen-1.5b, smollm2-135m, llama-3.2-1b, qwen3-0.6b";

    /// Architecture shapes of published checkpoints, for benchmarks with random weights.
    pub fn preset(name: &str) -> Option<Self> {
        let shape = |vocab, hidden, inter, layers, heads, kv, tie, theta| Self {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: hidden / heads,
            max_position_embeddings: 32768,
            rms_norm_eps: 1e-6,
            rope_theta: theta,
            tie_word_embeddings: tie,
            bos_token_id: Some(151643),
            eos_token_ids: vec![151643],
            torch_dtype: "float32".into(),
            variant: DecoderVariant::default(),
        };
        match name {
            "tiny" => Some(shape(512, 64, 160, 4, 4, 2, true, 1e6)),
            "qwen2.5-0.5b" => Some(shape(151936, 896, 4864, 24, 14, 2, true, 1e6)),
            "qwen2.5-1.5b" => Some(shape(151936, 1536, 8960, 28, 12, 2, true, 1e6)),
            // The seed's teacher: Qwen2.5-Math-1.5B's body, untied lm_head, rope_theta 10000.
            "deepseek-r1-distill-qwen-1.5b" => {
                Some(shape(151936, 1536, 8960, 28, 12, 2, false, 1e4))
            }
            "smollm2-135m" => Some(Self {
                variant: Self::llama_variant(RopeScaling::Default),
                ..shape(49152, 576, 1536, 30, 9, 3, true, 1e5)
            }),
            "llama-3.2-1b" => Some(Self {
                variant: Self::llama_variant(RopeScaling::Llama3 {
                    factor: 32.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                }),
                ..shape(128256, 2048, 8192, 16, 32, 8, true, 5e5)
            }),
            "qwen3-0.6b" => Some(Self {
                head_dim: 128,
                variant: DecoderVariant {
                    architecture: Architecture::Qwen3,
                    qkv_bias: false,
                    qk_norm: true,
                    ..DecoderVariant::default()
                },
                ..shape(151936, 1024, 3072, 28, 16, 8, true, 1e6)
            }),
            _ => None,
        }
    }

    fn llama_variant(rope_scaling: RopeScaling) -> DecoderVariant {
        DecoderVariant {
            architecture: Architecture::Llama,
            qkv_bias: false,
            rope_scaling,
            ..DecoderVariant::default()
        }
    }
}

/// The `rope_type` (5.x) or `type` (4.x) of a rope parameters object.
fn rope_type(params: &Value) -> &str {
    params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default")
}

/// A JSON number that may be an integer (`10000`) or a float (`1000000.0`).
fn number(value: &Value) -> Option<f64> {
    value.as_f64()
}

fn token_ids(value: &Value) -> Option<Vec<u32>> {
    match value {
        Value::Number(n) => n.as_u64().map(|id| vec![id as u32]),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_u64().map(|id| id as u32))
            .collect(),
        _ => None,
    }
}

/// Field access that names the file and the field in every error.
struct Fields<'a> {
    json: &'a Value,
    path: &'a Path,
}

impl Fields<'_> {
    fn optional(&self, field: &str) -> Option<&Value> {
        self.json.get(field)
    }

    fn error(&self, field: &str, message: String) -> ModelError {
        ModelError::Config {
            path: PathBuf::from(self.path),
            field: field.to_string(),
            message,
        }
    }

    fn string(&self, field: &str) -> Result<String> {
        match self.json.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.error(field, "expected a string".into())),
            None => Err(self.error(field, "missing".into())),
        }
    }

    /// The RoPE scaling that `params` (the object under `field`) describes.
    fn rope_scaling(&self, field: &str, params: &Value) -> Result<RopeScaling> {
        let value = |key: &str| -> Result<f64> {
            params.get(key).and_then(number).ok_or_else(|| {
                self.error(&format!("{field}.{key}"), "missing or not a number".into())
            })
        };
        let rope_type = rope_type(params);
        match rope_type {
            "default" => Ok(RopeScaling::Default),
            "linear" => Ok(RopeScaling::Linear {
                factor: value("factor")?,
            }),
            "llama3" => {
                let scaling = RopeScaling::Llama3 {
                    factor: value("factor")?,
                    low_freq_factor: value("low_freq_factor")?,
                    high_freq_factor: value("high_freq_factor")?,
                    original_max_position_embeddings: value("original_max_position_embeddings")?
                        as usize,
                };
                if let RopeScaling::Llama3 {
                    low_freq_factor,
                    high_freq_factor,
                    ..
                } = scaling
                {
                    if high_freq_factor <= low_freq_factor {
                        return Err(self.error(
                            &format!("{field}.high_freq_factor"),
                            format!(
                                "{high_freq_factor} must exceed low_freq_factor {low_freq_factor}"
                            ),
                        ));
                    }
                }
                Ok(scaling)
            }
            other => Err(self.error(
                &format!("{field}.rope_type"),
                format!(
                    "`{other}` RoPE scaling is not supported: only `default`, `linear` and \
                     `llama3` are"
                ),
            )),
        }
    }

    fn usize(&self, field: &str) -> Result<usize> {
        match self.json.get(field) {
            Some(value) => value
                .as_u64()
                .filter(|v| *v > 0)
                .map(|v| v as usize)
                .ok_or_else(|| {
                    self.error(field, format!("expected a positive integer, found {value}"))
                }),
            None => Err(self.error(field, "missing".into())),
        }
    }
}

/// `generation_config.json`: how the model's authors want it sampled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    pub do_sample: bool,
    pub temperature: Option<f64>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    pub max_new_tokens: Option<usize>,
}

impl GenerationConfig {
    /// Reads `DIR/generation_config.json`; a model without one generates greedily and stops at
    /// config.json's eos.
    pub fn from_dir(dir: &Path, config: &ModelConfig) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(Self {
                eos_token_ids: config.eos_token_ids.clone(),
                bos_token_id: config.bos_token_id,
                ..Self::default()
            });
        }
        let json = read_json(&path)?;
        let fields = Fields {
            json: &json,
            path: &path,
        };
        let eos_token_ids = match json.get("eos_token_id") {
            None | Some(Value::Null) => config.eos_token_ids.clone(),
            Some(value) => token_ids(value).ok_or_else(|| {
                fields.error(
                    "eos_token_id",
                    "expected a token id or a list of ids".into(),
                )
            })?,
        };
        Ok(Self {
            do_sample: json
                .get("do_sample")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            temperature: json.get("temperature").and_then(Value::as_f64),
            top_k: json
                .get("top_k")
                .and_then(Value::as_u64)
                .map(|v| v as usize),
            top_p: json.get("top_p").and_then(Value::as_f64),
            eos_token_ids,
            bos_token_id: json
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|v| v as u32),
            max_new_tokens: json
                .get("max_new_tokens")
                .and_then(Value::as_u64)
                .map(|v| v as usize),
        })
    }

    /// The generation_config.json to save beside a model.
    pub fn to_hf_json(&self) -> Value {
        let mut json = serde_json::json!({ "do_sample": self.do_sample });
        let eos = match self.eos_token_ids.as_slice() {
            [one] => Value::from(*one),
            many => Value::from(many.to_vec()),
        };
        json["eos_token_id"] = eos;
        if let Some(bos) = self.bos_token_id {
            json["bos_token_id"] = bos.into();
        }
        if let Some(t) = self.temperature {
            json["temperature"] = t.into();
        }
        if let Some(k) = self.top_k {
            json["top_k"] = k.into();
        }
        if let Some(p) = self.top_p {
            json["top_p"] = p.into();
        }
        if let Some(n) = self.max_new_tokens {
            json["max_new_tokens"] = n.into();
        }
        json
    }
}

// ---- GGUF metadata (llama.cpp's `qwen2` layout) ----

/// The architectures a GGUF may declare in `general.architecture`, for error messages.
pub const GGUF_ARCHITECTURES: &str =
    "qwen2 (Qwen2, Qwen2.5, Qwen2.5-Coder, DeepSeek-R1-Distill-Qwen)";

/// The largest relative RMS difference between a GGUF's `output.weight` and
/// `token_embd.weight` at which the two are taken for one matrix quantized twice (the Qwen
/// GGUFs store their tied embedding so). Quantization noise of the 4- to 8-bit types is a few
/// percent of the values' RMS; two unrelated matrices differ by about 141%.
pub const GGUF_TIED_TOLERANCE: f64 = 0.15;

impl ModelConfig {
    /// The hyper-parameters of a GGUF file from its `general.*`, `qwen2.*` and
    /// `tokenizer.ggml.*` keys, checked against its tensors' shapes. The output is tied when the
    /// file has no `output.weight`, or (unless `untie`) when it has one that equals
    /// `token_embd.weight` within quantization noise ([`gguf_output_difference`]).
    pub fn from_gguf(file: &GgufFile, untie: bool) -> Result<Self> {
        let error =
            |key: &str, message: String| ModelError::Gguf(file.metadata_error(key, message));
        let architecture = file.require_str("general.architecture")?;
        if architecture != "qwen2" {
            return Err(error(
                "general.architecture",
                format!("`{architecture}` is not supported; supported: {GGUF_ARCHITECTURES}"),
            ));
        }
        let key = |name: &str| format!("qwen2.{name}");
        let count = |name: &str| -> Result<usize> {
            match file.require_u64(&key(name))? {
                0 => Err(error(&key(name), "must be positive".into())),
                value => Ok(value as usize),
            }
        };
        let float = |name: &str, default: f64| -> Result<f64> {
            match file.get(&key(name)) {
                Some(value) => value.as_f64().ok_or_else(|| {
                    error(&key(name), format!("{} is not a number", value.describe()))
                }),
                None => Ok(default),
            }
        };
        let hidden_size = count("embedding_length")?;
        let num_attention_heads = count("attention.head_count")?;
        let num_key_value_heads = match file.get(&key("attention.head_count_kv")) {
            Some(_) => count("attention.head_count_kv")?,
            None => num_attention_heads,
        };
        if hidden_size % num_attention_heads != 0 {
            return Err(error(
                &key("attention.head_count"),
                format!(
                    "{num_attention_heads} does not divide qwen2.embedding_length {hidden_size}"
                ),
            ));
        }
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(error(
                &key("attention.head_count_kv"),
                format!("{num_key_value_heads} does not divide qwen2.attention.head_count {num_attention_heads}"),
            ));
        }
        if let Some(value) = file.get(&key("rope.scaling.type")) {
            if value.as_str() != Some("none") {
                return Err(error(
                    &key("rope.scaling.type"),
                    format!(
                        "{} RoPE scaling is not supported: only none",
                        value.describe()
                    ),
                ));
            }
        }
        // The vocabulary is the embedding's row count (llama.cpp pads the token list to it).
        let vocab_size = match file.tensor("token_embd.weight").map(|t| t.shape()) {
            Some(shape) if shape.len() == 2 && shape[1] == hidden_size => shape[0],
            Some(shape) => {
                return Err(ModelError::Gguf(gguf::GgufError::WrongShape {
                    path: file.path().to_path_buf(),
                    name: "token_embd.weight".into(),
                    expected: vec![shape.first().copied().unwrap_or(0), hidden_size],
                    found: shape,
                }))
            }
            None => {
                return Err(ModelError::Gguf(gguf::GgufError::MissingTensor {
                    path: file.path().to_path_buf(),
                    name: "token_embd.weight".into(),
                }))
            }
        };
        let token_id = |name: &str| {
            file.get(&format!("tokenizer.ggml.{name}"))
                .and_then(|v| v.as_u64())
                .map(|v| v as u32)
        };
        let mut config = ModelConfig {
            vocab_size,
            hidden_size,
            intermediate_size: count("feed_forward_length")?,
            num_hidden_layers: count("block_count")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim: hidden_size / num_attention_heads,
            max_position_embeddings: match file.get(&key("context_length")) {
                Some(_) => count("context_length")?,
                None => 32768,
            },
            rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-6)?,
            rope_theta: float("rope.freq_base", 10000.0)?,
            tie_word_embeddings: true,
            bos_token_id: token_id("bos_token_id"),
            eos_token_ids: token_id("eos_token_id").into_iter().collect(),
            torch_dtype: "bfloat16".into(),
            variant: DecoderVariant::default(),
        };
        config.check_gguf_shapes(file)?;
        if file.tensor("output.weight").is_some() {
            config.tie_word_embeddings =
                !untie && gguf_output_difference(file, &config)? < GGUF_TIED_TOLERANCE;
        }
        Ok(config)
    }

    /// Every tensor has the shape the metadata implies, named before any weight is read.
    fn check_gguf_shapes(&self, file: &GgufFile) -> Result<()> {
        let mut expected = self.tensor_shapes();
        if file.tensor("output.weight").is_some() {
            expected.push((
                "lm_head.weight".into(),
                vec![self.vocab_size, self.hidden_size],
            ));
        }
        for (hf_name, shape) in expected {
            let name = gguf_tensor_name(&hf_name).expect("every Qwen2 parameter has a GGUF name");
            let Some(info) = file.tensor(&name) else {
                return Err(ModelError::Gguf(gguf::GgufError::MissingTensor {
                    path: file.path().to_path_buf(),
                    name: format!(
                        "{name} (qwen2.block_count says {} layers)",
                        self.num_hidden_layers
                    ),
                }));
            };
            if info.shape() != shape {
                return Err(ModelError::Gguf(gguf::GgufError::WrongShape {
                    path: file.path().to_path_buf(),
                    name,
                    expected: shape,
                    found: info.shape(),
                }));
            }
        }
        Ok(())
    }
}

/// llama.cpp's name of a Hugging Face Qwen2 parameter (`convert_hf_to_gguf.py`'s mapping).
pub fn gguf_tensor_name(hf_name: &str) -> Option<String> {
    match hf_name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = part.rsplit_once('.')?;
    let gguf_module = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf_module}.{suffix}"))
}

/// The relative RMS difference between a GGUF's `output.weight` and `token_embd.weight`, over
/// every 16th row (enough to tell one matrix quantized twice from two matrices).
pub fn gguf_output_difference(file: &GgufFile, config: &ModelConfig) -> Result<f64> {
    let rows: Vec<usize> = (0..config.vocab_size).step_by(16).collect();
    let embedding = file.read_rows_f32("token_embd.weight", &rows)?;
    let output = file.read_rows_f32("output.weight", &rows)?;
    let (mut difference, mut norm) = (0f64, 0f64);
    for (x, y) in embedding.iter().zip(&output) {
        difference += ((x - y) as f64).powi(2);
        norm += (*x as f64).powi(2);
    }
    Ok((difference / norm.max(f64::MIN_POSITIVE)).sqrt())
}
