//! The GGUF file format, as llama.cpp, Ollama and LM Studio keep models: metadata, a tensor
//! directory, and tensor data in ggml's block formats.
//!
//! - [`GgufFile`] opens and checks a file and reads any tensor dequantized to f32, bit-equal to
//!   the `gguf` Python package's `gguf.quants.dequantize` for every type in [`GgmlType`].
//! - [`write_gguf`] writes a version-3 file durably, storing tensors as F32, F16, BF16 or Q8_0.
//!
//! What a tensor or key means for a model (names like `blk.0.attn_q.weight`, `qwen2.*` keys,
//! the tokenizer) belongs to the model crate; this crate only knows the container.

mod error;
mod metadata;
mod quants;
mod read;
pub mod tokenizer;
mod types;
mod write;

pub use error::{GgufError, Result};
pub use metadata::{Value, ValueType};
pub use quants::{dequantize, quantize};
pub use read::{GgufFile, TensorInfo, DEFAULT_ALIGNMENT};
pub use types::{ggml_type_name, supported_type_names, GgmlType, QK_K};
pub use write::{write_gguf, TensorToWrite};

/// Whether `path` names a GGUF file (by its extension) rather than a model folder.
pub fn is_gguf_path(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        && !path.is_dir()
}
