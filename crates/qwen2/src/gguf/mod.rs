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

use crate::config::ModelConfig;
use crate::error::Result;

/// Whether a path names a GGUF file rather than a model folder.
pub use gguf::is_gguf_path as is_gguf;

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
    pub config: ModelConfig,
    /// When tied, the stored copy that serves as the one matrix.
    tied_source: &'static str,
}

impl GgufModel {
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, GgufOptions::default())
    }

    pub fn open_with(path: &Path, options: GgufOptions) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let config = ModelConfig::from_gguf(&file, options.untie)?;
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
        } else {
            let difference = crate::config::gguf_output_difference(&self.file, &self.config)
                .map_or_else(|e| e.to_string(), |d| format!("{d:.4}"));
            if self.config.tie_word_embeddings {
                format!(
                    "tied embeddings: output.weight equals token_embd.weight within quantization \
                     noise (relative RMS difference {difference}); {} (the finer) serves as both",
                    self.tied_source
                )
            } else {
                format!(
                    "untied lm_head from output.weight (relative RMS difference from \
                     token_embd.weight {difference})"
                )
            }
        };
        format!(
            "{} tensors ({}); {output}",
            self.file.tensors().len(),
            types.join(", ")
        )
    }

    /// Whether most matrices are stored quantized ([`mostly_quantized`]).
    pub fn is_quantized(&self) -> bool {
        mostly_quantized(&self.file)
    }
}

/// Whether most matrices of `file` are stored quantized (not F32/F16/BF16), so
/// `frozen_dtype = auto` keeps frozen matrices in bf16: the dequantized values are exact in no
/// float type narrower than f32, and bf16 halves the memory.
pub fn mostly_quantized(file: &GgufFile) -> bool {
    file.type_counts()
        .into_iter()
        .filter(|(name, _)| name != "F32")
        .max_by_key(|(_, count)| *count)
        .is_some_and(|(name, _)| !matches!(name.as_str(), "F16" | "BF16"))
}
