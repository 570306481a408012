//! Writing a model back in the Hugging Face layout, so that transformers'
//! `AutoModelForCausalLM.from_pretrained(dir)` loads it unchanged.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::config::{GenerationConfig, ModelConfig};
use crate::error::{ModelError, Result};
use crate::lora::adapter::Lora;
use crate::model::Model;
use crate::safetensors::{write_safetensors, Dtype, TensorToWrite};
use crate::weight::Weight;

/// The files besides the weights that make a directory loadable by tokenizers and transformers.
/// `chat_template.jinja` is where transformers 5 keeps the chat template; a source that has
/// one has no `chat_template` in tokenizer_config.json, so the student must keep the file.
pub const TOKENIZER_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    crate::tokenizer::CHAT_TEMPLATE_FILE,
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

/// A parameter by its Hugging Face name. Matrices are read when asked for, one at a time, so
/// a model frozen in bf16 (or carrying LoRA adapters, which are merged on the way out) is never
/// widened to f32 all at once. Matrices are held in Burn's layout, the transpose of the
/// PyTorch `[out, in]` shape in `hf_shape`.
pub enum NamedTensor<'a, B: Backend> {
    Matrix {
        name: String,
        hf_shape: [usize; 2],
        weight: &'a Weight<B>,
        /// Folded in as `W + scaling * A B` (crate::lora::merge_lora does the same).
        lora: Option<&'a Lora<B>>,
    },
    Vector {
        name: String,
        value: Tensor<B, 1>,
    },
}

impl<B: Backend> NamedTensor<'_, B> {
    pub fn name(&self) -> &str {
        match self {
            NamedTensor::Matrix { name, .. } | NamedTensor::Vector { name, .. } => name,
        }
    }

    pub fn hf_shape(&self) -> Vec<usize> {
        match self {
            NamedTensor::Matrix { hf_shape, .. } => hf_shape.to_vec(),
            NamedTensor::Vector { value, .. } => value.dims().to_vec(),
        }
    }

    /// The values in the PyTorch layout, row-major.
    pub fn hf_values(&self) -> Vec<f32> {
        match self {
            NamedTensor::Matrix { weight, lora, .. } => {
                let value = match lora {
                    Some(lora) => lora.merged_into(weight),
                    None => weight.val(),
                };
                to_f32(value.transpose().into_data())
            }
            NamedTensor::Vector { value, .. } => to_f32(value.clone().into_data()),
        }
    }
}

fn to_f32(data: burn::tensor::TensorData) -> Vec<f32> {
    data.convert::<f32>()
        .to_vec::<f32>()
        .expect("float tensor data")
}

impl<B: Backend> Model<B> {
    /// Every parameter under its Hugging Face name (a tied lm_head appears once, as the
    /// embedding), LoRA adapters merged into their layers.
    pub fn named_tensors(&self) -> Vec<NamedTensor<'_, B>> {
        fn matrix<'a, B: Backend>(
            name: String,
            weight: &'a Weight<B>,
            lora: Option<&'a Lora<B>>,
        ) -> NamedTensor<'a, B> {
            let [inputs, outputs] = weight.dims();
            NamedTensor::Matrix {
                name,
                hf_shape: [outputs, inputs],
                weight,
                lora,
            }
        }
        let vector = |name: String, value: Tensor<B, 1>| NamedTensor::Vector { name, value };
        let mut tensors = vec![matrix(
            "model.embed_tokens.weight".into(),
            &self.embed_tokens,
            None,
        )];
        for (index, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{index}");
            for (part, _, linear) in layer.linears() {
                tensors.push(matrix(
                    format!("{p}.{part}.weight"),
                    &linear.weight,
                    linear.lora.as_ref(),
                ));
                if let Some(bias) = &linear.bias {
                    tensors.push(vector(format!("{p}.{part}.bias"), bias.val()));
                }
            }
            let attention = &layer.self_attn;
            for (part, norm) in [
                ("self_attn.q_norm", &attention.q_norm),
                ("self_attn.k_norm", &attention.k_norm),
            ] {
                if let Some(norm) = norm {
                    tensors.push(vector(format!("{p}.{part}.weight"), norm.weight.val()));
                }
            }
            tensors.push(vector(
                format!("{p}.input_layernorm.weight"),
                layer.input_layernorm.weight.val(),
            ));
            tensors.push(vector(
                format!("{p}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.weight.val(),
            ));
        }
        tensors.push(vector("model.norm.weight".into(), self.norm.weight.val()));
        if let Some(lm_head) = &self.lm_head {
            tensors.push(matrix("lm_head.weight".into(), lm_head, None));
        }
        tensors
    }
}

/// What to write besides the weights.
pub struct SaveOptions<'a> {
    pub dtype: Dtype,
    /// Copy tokenizer files from this directory (or write them from this GGUF file's tokenizer),
    /// when given.
    pub tokenizer_dir: Option<&'a Path>,
    pub generation: Option<&'a GenerationConfig>,
}

/// Writes `model` to `dir` in the Hugging Face layout: config.json, generation_config.json,
/// model.safetensors with the exact tensor names, and the tokenizer files. The directory is
/// written under a temporary name and swapped in at the end, so a crash never leaves a
/// half-written model where a complete one is expected.
pub fn save_model<B: Backend>(
    model: &Model<B>,
    config: &ModelConfig,
    dir: &Path,
    options: &SaveOptions<'_>,
) -> Result<()> {
    write_dir_atomically(dir, |staging| {
        write_model_files(model, config, staging, options)
    })
}

fn write_model_files<B: Backend>(
    model: &Model<B>,
    config: &ModelConfig,
    staging: &Path,
    options: &SaveOptions<'_>,
) -> Result<()> {
    write_configs(config, options.dtype, options.generation, staging)?;
    let tensors = model
        .named_tensors()
        .into_iter()
        .map(|tensor| TensorToWrite {
            name: tensor.name().to_string(),
            shape: tensor.hf_shape(),
            values: Box::new(move || tensor.hf_values()),
        })
        .collect();
    write_safetensors(&staging.join("model.safetensors"), tensors, options.dtype)?;

    match options.tokenizer_dir {
        Some(source) => write_tokenizer_files(source, staging),
        None => Ok(()),
    }
}

/// config.json (with `torch_dtype` set to the weights' `dtype`) and generation_config.json
/// (the given one, or greedy decoding stopping at config.json's eos).
pub(crate) fn write_configs(
    config: &ModelConfig,
    dtype: Dtype,
    generation: Option<&GenerationConfig>,
    dir: &Path,
) -> Result<()> {
    let mut config = config.clone();
    config.torch_dtype = dtype.torch_name().to_string();
    write_json(&dir.join("config.json"), &config.to_hf_json())?;
    let generation = generation.cloned().unwrap_or_else(|| GenerationConfig {
        eos_token_ids: config.eos_token_ids.clone(),
        bos_token_id: config.bos_token_id,
        ..GenerationConfig::default()
    });
    write_json(
        &dir.join("generation_config.json"),
        &generation.to_hf_json(),
    )
}

/// The tokenizer files of the model at `source` into `dir`: copied from a folder, or written
/// from a GGUF file's tokenizer.
pub(crate) fn write_tokenizer_files(source: &Path, dir: &Path) -> Result<()> {
    if gguf::is_gguf_path(source) {
        crate::tokenizer::write_gguf_tokenizer_files(source, dir)?;
    } else {
        for file in TOKENIZER_FILES {
            let from = source.join(file);
            if from.exists() {
                let bytes = std::fs::read(&from).map_err(|source| ModelError::Io {
                    path: from.clone(),
                    source,
                })?;
                fsio::write_atomic(&dir.join(file), &bytes)?;
            }
        }
    }
    Ok(())
}

/// Writes the directory `dir` whole or not at all: `write` fills a fresh staging directory
/// beside it, which is synced and swapped in at the end, so a crash never leaves a
/// half-written model where a complete one is expected.
pub fn write_dir_atomically(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    let staging = sibling(dir, "tmp");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    if let Err(error) = write(&staging) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(error);
    }
    fsio::sync_dir(&staging);

    // rename() cannot replace a non-empty directory: the old one is moved aside first, so
    // between the two renames the model is absent, never half-written.
    let previous = sibling(dir, "old");
    if dir.exists() {
        if previous.exists() {
            std::fs::remove_dir_all(&previous).map_err(io(&previous))?;
        }
        fsio::commit(dir, &previous)?;
    }
    fsio::commit(&staging, dir)?;
    if previous.exists() {
        std::fs::remove_dir_all(&previous).map_err(io(&previous))?;
    }
    Ok(())
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.{suffix}"))
}

/// Writes pretty JSON whole or not at all, durably.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("json") + "\n";
    fsio::write_atomic(path, text.as_bytes())?;
    Ok(())
}
