//! `[memory]`: how frozen weights are stored, and activation checkpointing.

use qwen2::{FrozenDtype, FrozenProducts};
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
    /// How products with matrices frozen in bf16 are computed: "float32" (the default: widened
    /// to f32, exact) or "bfloat16" (activations rounded to bf16, bf16 products with f32 sums,
    /// as PyTorch's bf16; half the bytes read, no widened copies). Applies where
    /// `frozen_dtype` stores bf16: the live teacher and a LoRA student's base, forward and
    /// backward. The teacher cache is built with f32 products either way.
    pub frozen_products: FrozenProducts,
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
    "how the frozen weights are stored (bf16 rounds them) and multiplied (bf16 products round \
     the activations), or the gradients' arithmetic order",
)];
