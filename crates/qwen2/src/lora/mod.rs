//! LoRA (Hu et al. 2021) as PEFT implements it: a frozen base and, beside each targeted linear
//! layer `W`, two trainable matrices `A` (`r x in`) and `B` (`out x r`) with
//! `y = x Wᵀ + b + (dropout(x) Aᵀ Bᵀ) * alpha / r`. `A` starts as PEFT's
//! `kaiming_uniform_(a = sqrt(5))`, i.e. uniform in ±1/sqrt(in), and `B` at zero, so training
//! starts from the base model exactly.
//!
//! Adapters are read and written in PEFT's layout (`adapter_config.json` and
//! `adapter_model.safetensors`, keys `base_model.model.<module>.lora_A.weight`), so
//! `PeftModel.from_pretrained(base, dir)` loads what this writes and the other way round.
//! [`merge_lora`] folds the adapters into the base weights: the merged model is a plain
//! Qwen2 checkpoint.
//!
//! - [`settings`]: what an adapter is (`LoraSettings`, the target names);
//! - [`adapter`]: one layer's adapter, the part the model runs;
//! - [`attach`]: fresh adapters on a frozen model, and merging them back;
//! - [`peft`]: adapters on disk in PEFT's layout (above `load` and `save`).

pub mod adapter;
pub mod attach;
pub mod peft;
pub mod settings;

pub use adapter::{with_dropout, Lora};
pub use attach::{attach_lora, merge_lora};
pub use peft::{
    adapter_base, load_adapter, load_merged, read_adapter_settings, save_adapter, ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
};
pub use settings::{LoraSettings, TARGET_MODULES};
