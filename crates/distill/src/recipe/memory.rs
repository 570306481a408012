//! `[memory]`: how frozen weights are stored, and activation checkpointing.

use qwen2::FrozenDtype;
use serde::{Deserialize, Serialize};

use super::OnResume;

/// Where memory goes: how frozen weights are stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Memory {
    /// Storage of the frozen weight matrices (the teacher, and the base under a LoRA student):
    /// "auto" keeps them in bf16 when the checkpoint is bf16 (as hub checkpoints are), so nothing
    /// is rounded; products are computed in f32 either way.
    pub frozen_dtype: FrozenDtype,
    /// Activation checkpointing by layer (crate::objective::body): the student's body runs forward
    /// without a graph, keeping each layer's input, and each layer runs again in the backward
    /// pass, so autodiff holds one layer's activations at a time, for one more forward pass.
    pub activation_checkpointing: bool,
}

impl Memory {
    pub(super) fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// What a change does on `--resume`.
pub(super) const ON_RESUME: &[OnResume] = &[OnResume::changes(
    "memory.",
    "how the frozen weights are stored (bf16 rounds them) or the gradients' arithmetic order",
)];
