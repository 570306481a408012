//! What an adapter is (PEFT's `LoraConfig` fields this crate implements) and which layers it
//! can target.

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// The linear layers LoRA can target, named as PEFT and torchtune name them.
pub const TARGET_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// What an adapter is: PEFT's `LoraConfig` fields this crate implements. The defaults: every
/// linear layer (as QLoRA), rank 16, alpha 32, no dropout (as PEFT and torchtune).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSettings {
    /// `r`: the adapters' inner width.
    pub rank: usize,
    /// `lora_alpha`: the update is scaled by alpha / rank (alpha / sqrt(rank) with rsLoRA).
    pub alpha: f64,
    /// `lora_dropout`: dropout on the adapter's input, in training only.
    pub dropout: f64,
    /// `target_modules`: names from [`TARGET_MODULES`], or `["all-linear"]` for all of them.
    pub target_modules: Vec<String>,
    /// `use_rslora`: scale by alpha / sqrt(rank) (Kalajdzievski 2023).
    pub use_rslora: bool,
}

impl Default for LoraSettings {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            dropout: 0.0,
            target_modules: vec!["all-linear".into()],
            use_rslora: false,
        }
    }
}

impl LoraSettings {
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// The targeted module names, `all-linear` expanded.
    pub fn targets(&self) -> Vec<&'static str> {
        if self.target_modules.iter().any(|m| m == "all-linear") {
            return TARGET_MODULES.to_vec();
        }
        TARGET_MODULES
            .into_iter()
            .filter(|name| self.target_modules.iter().any(|m| m == name))
            .collect()
    }

    /// Refuses settings no model can take and, given the model's `config`, settings that model
    /// cannot take; `origin` names the file and section they came from, for the message.
    pub fn validate(&self, config: Option<&ModelConfig>, origin: &str) -> Result<()> {
        let invalid = |field: &str, message: String| {
            Err(ModelError::Invalid(format!(
                "{origin}: `{field}`: {message}"
            )))
        };
        if self.target_modules.is_empty() {
            return invalid(
                "target_modules",
                format!("is empty; name some of {TARGET_MODULES:?} or \"all-linear\""),
            );
        }
        for name in &self.target_modules {
            if name != "all-linear" && !TARGET_MODULES.contains(&name.as_str()) {
                return invalid(
                    "target_modules",
                    format!(
                        "\"{name}\" names no linear layer of a Qwen2 model; the layers are {TARGET_MODULES:?} (or \"all-linear\")"
                    ),
                );
            }
        }
        let narrowest = config.map_or(usize::MAX, |config| {
            self.targets()
                .iter()
                .map(|name| {
                    let [inputs, outputs] = module_shape(config, name);
                    inputs.min(outputs)
                })
                .min()
                .unwrap_or(0)
        });
        if self.rank == 0 {
            return invalid("rank", "is 0; it must be at least 1".into());
        }
        if self.rank > narrowest {
            return invalid(
                "rank",
                format!(
                    "is {}; it must be between 1 and {narrowest}, the narrowest width of the targeted layers",
                    self.rank
                ),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return invalid(
                "dropout",
                format!("is {}; it must be in [0, 1)", self.dropout),
            );
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return invalid("alpha", format!("is {}; it must be positive", self.alpha));
        }
        Ok(())
    }

    /// Trainable parameters the adapters add to a model of `config`'s shape.
    pub fn parameters(&self, config: &ModelConfig) -> usize {
        self.targets()
            .iter()
            .map(|name| {
                let [inputs, outputs] = module_shape(config, name);
                self.rank * (inputs + outputs)
            })
            .sum::<usize>()
            * config.num_hidden_layers
    }
}

/// `[in, out]` of a targeted module in a model of `config`'s shape.
fn module_shape(config: &ModelConfig, name: &str) -> [usize; 2] {
    let h = config.hidden_size;
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    let i = config.intermediate_size;
    match name {
        "q_proj" => [h, q],
        "k_proj" | "v_proj" => [h, kv],
        "o_proj" => [q, h],
        "gate_proj" | "up_proj" => [h, i],
        "down_proj" => [i, h],
        _ => unreachable!("validated target {name}"),
    }
}
