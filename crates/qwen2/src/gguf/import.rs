//! GGUF -> the Hugging Face layout (`cargo xtask import-gguf`): config.json,
//! generation_config.json, model.safetensors under transformers' names, and the tokenizer
//! files, written one tensor at a time into a folder swapped in whole.

use std::path::Path;

use super::{GgufModel, GgufOptions};
use crate::error::Result;
use crate::safetensors::{write_safetensors, Dtype, TensorToWrite};
use crate::save::{write_configs, write_dir_atomically, write_tokenizer_files};

/// What an import wrote.
pub struct ImportSummary {
    pub config: crate::ModelConfig,
    /// The GGUF's types and how its output matrix was read ([`GgufModel::describe`]).
    pub description: String,
    pub tensors: usize,
}

/// Writes the GGUF model at `path` to `out` in the Hugging Face layout, storing weights as
/// `dtype` (bf16 halves the size; dequantized 4-6 bit values then lose up to 2^-9 of their
/// magnitude, f32 keeps them exactly).
pub fn import_gguf(
    path: &Path,
    out: &Path,
    dtype: Dtype,
    options: GgufOptions,
) -> Result<ImportSummary> {
    let model = GgufModel::open_with(path, options)?;
    let config = model.config.clone();
    let description = model.describe();
    let names = config.tensor_shapes();
    let count = names.len();
    write_dir_atomically(out, |staging| {
        write_configs(&config, dtype, None, staging)?;
        let tensors = names
            .into_iter()
            .map(|(name, shape)| {
                let model = &model;
                let gguf_name = model.gguf_name(&name).expect("every Qwen2 name maps");
                TensorToWrite {
                    name,
                    shape: shape.clone(),
                    values: Box::new(move || {
                        model
                            .file
                            .read_f32(&gguf_name, &shape)
                            .expect("shapes checked when the file was opened")
                    }),
                }
            })
            .collect();
        write_safetensors(&staging.join("model.safetensors"), tensors, dtype)?;
        write_tokenizer_files(path, staging)
    })?;
    Ok(ImportSummary {
        config,
        description,
        tensors: count,
    })
}
