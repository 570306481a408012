//! A Hugging Face Qwen2 folder -> llama.cpp's `qwen2` GGUF (`cargo xtask export-gguf`), as
//! llama.cpp's `convert_hf_to_gguf.py` writes it: the same tensor names and metadata keys,
//! matrices as F32, F16, BF16 or Q8_0 and vectors (norms, biases) as F32, the tokenizer and the
//! chat template, so llama.cpp, Ollama and LM Studio run the result.

use std::path::Path;

use gguf::tokenizer::TokenizerMetadata;
use gguf::{GgmlType, TensorToWrite, Value};

use crate::config::{gguf_tensor_name, Architecture, DecoderVariant, ModelConfig};
use crate::error::{read_json, ModelError, Result};
use crate::safetensors::Checkpoint;

/// What an export wrote.
pub struct ExportSummary {
    pub config: ModelConfig,
    pub tensors: usize,
    /// Matrices whose rows are not whole Q8_0 blocks, stored as F16 instead (llama.cpp does the
    /// same).
    pub fallbacks: Vec<String>,
}

/// llama.cpp's `general.file_type` for a file whose matrices are `kind`.
fn file_type(kind: GgmlType) -> u32 {
    match kind {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q8_0 => 7,
        GgmlType::BF16 => 32,
        other => panic!("no export to {}", other.name()),
    }
}

/// The types `export-gguf --type` accepts.
pub const EXPORT_TYPES: &str = "f32, f16, bf16, q8_0";

/// The ggml type named `name` (case-insensitive) if exports can store matrices in it.
pub fn export_type(name: &str) -> Option<GgmlType> {
    match name.to_ascii_lowercase().as_str() {
        "f32" => Some(GgmlType::F32),
        "f16" => Some(GgmlType::F16),
        "bf16" => Some(GgmlType::BF16),
        "q8_0" => Some(GgmlType::Q8_0),
        _ => None,
    }
}

/// Writes the Hugging Face model folder `dir` as a GGUF file `out` (whole or not at all),
/// storing its matrices as `kind`.
pub fn export_gguf(dir: &Path, out: &Path, kind: GgmlType, name: &str) -> Result<ExportSummary> {
    let config = ModelConfig::from_file(dir)?;
    // llama.cpp's `llama` layout permutes q and k for its RoPE and `qwen3` has other keys:
    // only the `qwen2` layout is written, and written exactly.
    if config.variant != DecoderVariant::default() {
        let architecture = config.variant.architecture.model_type();
        return Err(ModelError::Config {
            path: dir.join("config.json"),
            field: if config.variant.architecture == Architecture::Qwen2 {
                "rope_scaling".into()
            } else {
                "model_type".into()
            },
            message: format!(
                "GGUF export writes llama.cpp's qwen2 layout only (Qwen2 without RoPE scaling); \
                 this is a {architecture} model: export it with llama.cpp's convert_hf_to_gguf.py"
            ),
        });
    }
    let checkpoint = Checkpoint::open(dir)?;
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(ModelError::Tokenizer {
            path: tokenizer_path,
            message: "missing: a GGUF carries its tokenizer; copy the model's tokenizer.json here"
                .into(),
        });
    }
    let tokenizer_json = read_json(&tokenizer_path)?;
    let tokenizer_config = match dir.join("tokenizer_config.json") {
        path if path.is_file() => read_json(&path)?,
        _ => serde_json::Value::Null,
    };
    let chat_template = crate::tokenizer::chat_template(dir).ok().map(|(t, _)| t);
    let tokenizer = crate::tokenizer::Tokenizer::from_dir(dir)?;
    let token_id = |field: &str| -> Option<u32> {
        let content = match &tokenizer_config[field] {
            serde_json::Value::String(s) => s.as_str(),
            serde_json::Value::Object(o) => o.get("content")?.as_str()?,
            _ => return None,
        };
        tokenizer.token_to_id(content)
    };
    let eos = config
        .eos_token_ids
        .first()
        .copied()
        .or_else(|| token_id("eos_token"));
    let tokenizer_keys = TokenizerMetadata {
        tokenizer_json: &tokenizer_json,
        vocab_size: config.vocab_size,
        bos_token_id: config.bos_token_id.or_else(|| token_id("bos_token")),
        eos_token_id: eos,
        padding_token_id: token_id("pad_token").or(eos),
        add_bos_token: tokenizer_config["add_bos_token"].as_bool().unwrap_or(false),
        chat_template: chat_template.as_deref(),
    }
    .to_metadata()
    .map_err(|message| ModelError::Tokenizer {
        path: dir.join("tokenizer.json"),
        message: format!("{message}; cannot write it to GGUF"),
    })?;

    let arch = |key: &str| format!("qwen2.{key}");
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("qwen2".into())),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(name.into())),
        (
            arch("block_count"),
            Value::U32(config.num_hidden_layers as u32),
        ),
        (
            arch("context_length"),
            Value::U32(config.max_position_embeddings as u32),
        ),
        (
            arch("embedding_length"),
            Value::U32(config.hidden_size as u32),
        ),
        (
            arch("feed_forward_length"),
            Value::U32(config.intermediate_size as u32),
        ),
        (
            arch("attention.head_count"),
            Value::U32(config.num_attention_heads as u32),
        ),
        (
            arch("attention.head_count_kv"),
            Value::U32(config.num_key_value_heads as u32),
        ),
        (arch("rope.freq_base"), Value::F32(config.rope_theta as f32)),
        (
            arch("attention.layer_norm_rms_epsilon"),
            Value::F32(config.rms_norm_eps as f32),
        ),
        ("general.file_type".into(), Value::U32(file_type(kind))),
    ];
    if kind == GgmlType::Q8_0 {
        metadata.push(("general.quantization_version".into(), Value::U32(2)));
    }
    metadata.extend(tokenizer_keys);

    let mut fallbacks = Vec::new();
    let tensors: Vec<TensorToWrite<'_>> = config
        .tensor_shapes()
        .into_iter()
        .map(|(hf_name, shape)| {
            let gguf_name = gguf_tensor_name(&hf_name).expect("every Qwen2 parameter maps");
            let tensor_kind = if shape.len() == 1 {
                GgmlType::F32
            } else if kind.byte_len(shape[1]).is_none() {
                fallbacks.push(gguf_name.clone());
                GgmlType::F16
            } else {
                kind
            };
            let checkpoint = &checkpoint;
            TensorToWrite {
                name: gguf_name,
                shape: shape.clone(),
                kind: tensor_kind,
                values: Box::new(move || {
                    checkpoint
                        .read_f32(&hf_name, &shape, false)
                        .unwrap_or_else(|e| panic!("{e}"))
                }),
            }
        })
        .collect();
    // Every tensor is checked before the file is started, so a wrong checkpoint fails here,
    // with its own message, rather than inside the write.
    for (hf_name, shape) in config.tensor_shapes() {
        if !checkpoint.contains(&hf_name) {
            return Err(ModelError::MissingTensor {
                path: dir.join("model.safetensors"),
                name: hf_name,
            });
        }
        checkpoint.check_shape(&hf_name, &shape)?;
    }
    let count = tensors.len();
    gguf::write_gguf(out, &metadata, tensors)?;
    Ok(ExportSummary {
        config,
        tensors: count,
        fallbacks,
    })
}
