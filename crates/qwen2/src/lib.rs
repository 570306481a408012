//! Qwen2 (the architecture of Qwen2.5 and DeepSeek-R1-Distill-Qwen) in Burn, equal to Hugging
//! Face transformers to float32 precision: load a checkpoint, run it, generate, save it back.

pub mod backend;
pub mod config;
pub mod error;
mod flex_kernels;
pub mod generate;
pub mod gguf;
pub mod load;
pub mod lora;
pub mod loss;
pub mod memory;
pub mod model;
pub mod safetensors;
pub mod save;
pub mod tokenizer;
pub mod weight;

pub use config::{GenerationConfig, ModelConfig};
pub use error::{ModelError, Result};
pub use generate::{generate, Sampling};
pub use gguf::{is_gguf, GgufModel, GgufOptions};
pub use load::{
    build_frozen_model, build_model, frozen_in_bf16, load_frozen_model, load_model, open_weights,
    RandomWeights, WeightSource,
};
pub use lora::{
    adapter_base, attach_lora, load_adapter, load_merged, merge_lora, save_adapter, LoraSettings,
};
pub use model::{freeze, AttentionMask, KvCache, LayerContext, LayerProbe, Model, ModelOutput};
pub use save::{save_model, SaveOptions};
pub use weight::{transpose_matrix, FrozenDtype, FrozenProducts};
