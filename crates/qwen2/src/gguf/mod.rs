//! A GGUF file (llama.cpp's `qwen2` layout) as a Qwen2 model: its config from the `qwen2.*`
//! metadata, its tensors dequantized under their Hugging Face names, its tokenizer and chat
//! template from `tokenizer.*`. Anywhere a model folder is accepted, a `.gguf` path works.
//!
//! **Tied or untied output.** The Qwen GGUFs store an `output.weight` beside `token_embd.weight`
//! although the model ties them: the same matrix quantized twice, to different types (Q8_0 and
//! Q5_0 in Qwen2.5-Coder-0.5B's Q4_K_M file). When the two agree to within quantization noise
//! (`config::GGUF_TIED_TOLERANCE`), the model is tied and the more finely quantized copy serves
//! as both embedding and lm_head; otherwise `output.weight` is a separate lm_head.
//! transformers instead loads a present `output.weight` as an untied lm_head always;
//! [`GgufOptions::untie`] reads the file that way (its logits then equal transformers').

use std::path::Path;

mod export;
mod import;

pub use export::{export_gguf, export_type, ExportSummary, EXPORT_TYPES};
pub use import::{import_gguf, ImportSummary};

use gguf::GgufFile;

use crate::config::Qwen2Config;
use crate::error::Result;

/// Whether `path` names a GGUF file rather than a model folder.
pub fn is_gguf(path: &Path) -> bool {
    gguf::is_gguf_path(path)
}

/// How a GGUF's output matrix is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GgufOptions {
    /// Keep a present `output.weight` as its own lm_head even when it equals the embedding
    /// (transformers' reading).
    pub untie: bool,
}

/// An opened GGUF model: the file and what its metadata says.
pub struct GgufModel {
    pub file: GgufFile,
    pub config: Qwen2Config,
    /// When tied, the stored copy that serves as the one matrix.
    tied_source: &'static str,
}

impl GgufModel {
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, GgufOptions::default())
    }

    pub fn open_with(path: &Path, options: GgufOptions) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let config = Qwen2Config::from_gguf(&file, options.untie)?;
        let bits = |name: &str| {
            file.tensor(name)
                .and_then(|t| t.kind())
                .map_or(0.0, |k| (k.type_size() * 8) as f64 / k.block_size() as f64)
        };
        let tied_source = if file.tensor("output.weight").is_some()
            && bits("output.weight") > bits("token_embd.weight")
        {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        Ok(Self {
            file,
            config,
            tied_source,
        })
    }

    /// The GGUF tensor that holds the Hugging Face parameter `hf_name`.
    pub fn gguf_name(&self, hf_name: &str) -> Option<String> {
        if hf_name == "model.embed_tokens.weight" && self.config.tie_word_embeddings {
            return Some(self.tied_source.to_string());
        }
        crate::config::gguf_tensor_name(hf_name)
    }

    /// A one-line account of the file: its types and how the output matrix was read.
    pub fn describe(&self) -> String {
        let types: Vec<String> = self
            .file
            .type_counts()
            .into_iter()
            .map(|(name, count)| format!("{name} x{count}"))
            .collect();
        let output = if self.file.tensor("output.weight").is_none() {
            "tied embeddings (no output.weight)".to_string()
        } else if self.config.tie_word_embeddings {
            format!(
                "tied embeddings: output.weight equals token_embd.weight within quantization \
                 noise; {} (the finer) serves as both",
                self.tied_source
            )
        } else {
            "untied lm_head from output.weight".to_string()
        };
        format!(
            "{} tensors ({}); {output}",
            self.file.tensors().len(),
            types.join(", ")
        )
    }

    /// Whether most matrices are stored quantized (not F32/F16/BF16), so `frozen_dtype = auto`
    /// keeps frozen matrices in bf16: the dequantized values are exact in no float type narrower
    /// than f32, and bf16 halves the memory.
    pub fn is_quantized(&self) -> bool {
        self.file
            .type_counts()
            .into_iter()
            .filter(|(name, _)| name != "F32")
            .max_by_key(|(_, count)| *count)
            .is_some_and(|(name, _)| !matches!(name.as_str(), "F16" | "BF16"))
    }
}

/// `[rows, cols]` row-major to `[cols, rows]`, blocked so both sides stay in cache.
pub(crate) fn transpose_matrix(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    const BLOCK: usize = 64;
    for row_block in (0..rows).step_by(BLOCK) {
        for col_block in (0..cols).step_by(BLOCK) {
            for row in row_block..(row_block + BLOCK).min(rows) {
                for col in col_block..(col_block + BLOCK).min(cols) {
                    out[col * rows + row] = values[row * cols + col];
                }
            }
        }
    }
    out
}

/// Writes the Hugging Face tokenizer files of a GGUF's tokenizer into `dir`: tokenizer.json
/// (as `gguf::tokenizer` builds it, which transformers' GGUF reading equals) and
/// tokenizer_config.json with the chat template and the special tokens, as transformers
/// derives them from the file.
pub fn write_tokenizer_files(gguf_path: &Path, dir: &Path) -> Result<()> {
    let file = GgufFile::open(gguf_path)?;
    let tokenizer = gguf::tokenizer::tokenizer_json(&file)?;
    fsio::write_atomic(
        &dir.join("tokenizer.json"),
        serde_json::to_string(&tokenizer).expect("json").as_bytes(),
    )?;
    let token = |key: &str| {
        file.get(key)
            .and_then(|v| v.as_u64())
            .and_then(|id| gguf::tokenizer::token_string(&file, id))
    };
    let flag = |key: &str| file.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
    let mut config = serde_json::json!({
        // The tokenizer.json above is complete; a model-specific class would rebuild parts of it.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": flag("tokenizer.ggml.add_bos_token"),
        "add_eos_token": flag("tokenizer.ggml.add_eos_token"),
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "clean_up_tokenization_spaces": false,
        "model_max_length": file.get("qwen2.context_length").and_then(|v| v.as_u64()),
    });
    if let Some(template) = file.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
        config["chat_template"] = template.into();
    }
    crate::save::write_json(&dir.join("tokenizer_config.json"), &config)
}
