//! The memory a distillation run needs, estimated from its shapes before anything is loaded,
//! part by part, and compared with the memory the machine has, so a run that cannot fit stops
//! at once instead of meeting the OOM killer hours later.
//!
//! Model weights, gradients and AdamW's moments are exact (4 bytes per f32 element). The
//! activations autodiff keeps for the backward pass and the vocabulary-sized transients are
//! per-token coefficients, counted from what the model's forward pass saves (see
//! `activation_floats_per_token_layer`) and checked against measured peaks (docs/memory-and-lora.md;
//! `cargo xtask bench distill-step` prints the plan beside the measured peak).

use qwen2::{LoraSettings, ModelConfig};
use serde::Serialize;

const F32: u64 = 4;
const BF16: u64 = 2;

/// One line of the plan.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemoryPart {
    pub name: &'static str,
    pub bytes: u64,
}

/// What a run will hold at its peak (the end of the backward pass, with the optimizer's state
/// and every gradient alive), part by part.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemoryPlan {
    pub parts: Vec<MemoryPart>,
}

/// The shapes a plan is made from.
#[derive(Debug, Clone)]
pub struct RunShape<'a> {
    pub student: &'a ModelConfig,
    /// `None` when the teacher's outputs come from the offline cache.
    pub teacher: Option<&'a ModelConfig>,
    /// Cached top-k logits per position when training from the cache.
    pub cache_top_k: usize,
    /// Sequences per micro-batch.
    pub batch: usize,
    pub seq_len: usize,
    /// Positions per chunk of the vocabulary-sized loss computation.
    pub chunk_positions: usize,
    /// What the process holds before any model is loaded (its current RSS).
    pub baseline_bytes: u64,
    /// The adapters of a LoRA student (its base frozen); `None`: every parameter trains.
    pub lora: Option<&'a LoraSettings>,
    /// Whether the teacher's matrices are stored in bf16 (`memory.frozen_dtype`).
    pub teacher_bf16: bool,
    /// Whether a LoRA student's base matrices are stored in bf16.
    pub student_base_bf16: bool,
    /// Tokens per generated sequence (prompt + continuation) when micro-batches are generated
    /// (`[on_policy]`); 0 when none are.
    pub generated_len: usize,
    /// Activation checkpointing by layer: one layer's activations at a time, plus every
    /// layer's input.
    pub recompute_layers: bool,
}

/// Floats autodiff keeps per token per decoder layer: the MLP's gate, SiLU, up and product
/// (about 5 x intermediate), the attention scores, masked scores and probabilities
/// (3 x heads x keys) and a few hidden-width tensors (norm inputs, q/k/v/o, the residual stream;
/// about 4 x hidden). Fitted to measured peaks: Qwen2.5-0.5B full-parameter at 128, 256 and 512
/// tokens and Qwen2.5-1.5B LoRA at 256 and 512 (docs/memory-and-lora.md).
fn activation_floats_per_token_layer(config: &ModelConfig, keys: usize) -> u64 {
    let h = config.hidden_size as u64;
    let i = config.intermediate_size as u64;
    let heads = config.num_attention_heads as u64;
    4 * h + 5 * i + 3 * heads * keys as u64
}

/// Vocabulary-sized tensors alive at once per position of a loss chunk (the student's logits
/// and their gradient; the rest are freed as the chunk's loss is formed).
const VOCAB_TRANSIENTS: u64 = 2;

/// Embedding-sized tensors alive at once at the end of the backward pass, beside the
/// gradients: one contribution (the embedding lookup's or the lm_head's) to the tied matrix's
/// gradient before it is summed into the other.
const EMBEDDING_TRANSIENTS: u64 = 1;

impl MemoryPlan {
    pub fn estimate(shape: &RunShape) -> Self {
        let student = shape.student;
        let student_params = student.num_parameters() as u64;
        let tokens = (shape.batch * shape.seq_len) as u64;
        let vocab = student.vocab_size as u64;
        let mut parts = match shape.lora {
            None => vec![
                MemoryPart {
                    name: "student weights (f32)",
                    bytes: student_params * F32,
                },
                MemoryPart {
                    name: "student gradients (f32)",
                    bytes: student_params * F32,
                },
                MemoryPart {
                    name: "AdamW moments (2 x f32)",
                    bytes: 2 * student_params * F32,
                },
            ],
            Some(lora) => {
                let adapters = lora.parameters(student) as u64;
                vec![
                    MemoryPart {
                        name: if shape.student_base_bf16 {
                            "student base weights (bf16, frozen)"
                        } else {
                            "student base weights (f32, frozen)"
                        },
                        bytes: frozen_bytes(student, shape.student_base_bf16),
                    },
                    MemoryPart {
                        name: "LoRA adapters, gradients, AdamW moments",
                        bytes: 4 * adapters * F32,
                    },
                ]
            }
        };
        match shape.teacher {
            Some(teacher) => {
                parts.push(MemoryPart {
                    name: if shape.teacher_bf16 {
                        "teacher weights (bf16)"
                    } else {
                        "teacher weights (f32)"
                    },
                    bytes: frozen_bytes(teacher, shape.teacher_bf16),
                });
                parts.push(MemoryPart {
                    name: "teacher logits of a micro-batch",
                    bytes: tokens * teacher.vocab_size as u64 * F32,
                });
            }
            None => parts.push(MemoryPart {
                name: "cached teacher rows of a micro-batch",
                bytes: tokens * (shape.cache_top_k as u64 * 2 + 1) * F32,
            }),
        }
        let layer_activations =
            tokens * activation_floats_per_token_layer(student, shape.seq_len) * F32;
        let layers = student.num_hidden_layers as u64;
        parts.push(match shape.recompute_layers {
            false => MemoryPart {
                name: "student activations kept for backward",
                bytes: layers * layer_activations,
            },
            true => MemoryPart {
                name: "one layer's activations + every layer's input",
                bytes: layer_activations + layers * tokens * student.hidden_size as u64 * F32,
            },
        });
        let chunk = shape.chunk_positions.min(shape.seq_len).max(1) as u64 * shape.batch as u64;
        parts.push(MemoryPart {
            name: "loss chunk (vocabulary-sized transients)",
            bytes: chunk.min(tokens) * vocab * VOCAB_TRANSIENTS * F32,
        });
        // Layers whose activations autodiff holds at once.
        let layers_kept = match shape.recompute_layers {
            true => 1,
            false => student.num_hidden_layers as u64,
        };
        if let Some(lora) = shape.lora.filter(|lora| lora.dropout > 0.0) {
            // Dropout keeps its mask and its output (the adapter's input): two copies of each
            // targeted layer's input.
            let inputs: u64 = lora
                .targets()
                .iter()
                .map(|name| if *name == "down_proj" { student.intermediate_size } else { student.hidden_size } as u64)
                .sum();
            parts.push(MemoryPart {
                name: "LoRA dropout copies kept for backward",
                bytes: 2 * tokens * layers_kept * inputs * F32,
            });
        }
        if shape.generated_len > 0 {
            // Keys and values of every layer, of the student and the teacher (which may
            // continue the prompts instead), for the micro-batch's rows.
            let kv = |config: &ModelConfig| {
                (2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim) as u64
            };
            let models = kv(student) + shape.teacher.map_or(0, kv);
            parts.push(MemoryPart {
                name: "KV caches of on-policy generation",
                bytes: models * (shape.batch * shape.generated_len) as u64 * F32,
            });
        }
        let embedding = vocab * student.hidden_size as u64 * F32;
        if shape.lora.is_none() {
            parts.push(MemoryPart {
                name: "embedding-sized gradient transients",
                bytes: EMBEDDING_TRANSIENTS * embedding,
            });
        }
        if shape.teacher_bf16 || (shape.lora.is_some() && shape.student_base_bf16) {
            // A bf16 matrix is widened to f32 for the one product that reads it, at most
            // `qwen2::weight::BLOCK_COLUMNS` columns at a time; the widest block of the
            // vocabulary-sized lm_head sets the peak, with the product's blocks beside it.
            let block = qwen2::weight::BLOCK_COLUMNS;
            let widest_block = [Some(student), shape.teacher]
                .into_iter()
                .flatten()
                .flat_map(ModelConfig::tensor_shapes)
                .filter(|(_, hf_shape)| hf_shape.len() == 2)
                .map(|(_, hf_shape)| (hf_shape[1] * hf_shape[0].min(block)) as u64)
                .max()
                .unwrap_or(0);
            parts.push(MemoryPart {
                name: "f32 widening of a bf16 matrix block",
                bytes: widest_block * F32,
            });
        }
        parts.push(MemoryPart {
            name: "this process before loading",
            bytes: shape.baseline_bytes,
        });
        Self { parts }
    }

    pub fn total(&self) -> u64 {
        self.parts.iter().map(|part| part.bytes).sum()
    }

    /// The memory available now when the plan exceeds it; `None` when it fits or the machine's
    /// memory cannot be read.
    pub fn shortfall(&self) -> Option<u64> {
        let (_, available) = machine_memory()?;
        (self.total() > available).then_some(available)
    }

    /// The plan as an aligned table, largest parts first, with the total.
    pub fn table(&self) -> String {
        let mut parts = self.parts.clone();
        parts.sort_by_key(|part| std::cmp::Reverse(part.bytes));
        let mut text = String::new();
        for part in &parts {
            text.push_str(&format!("  {:<42} {:>10}\n", part.name, gib(part.bytes)));
        }
        text.push_str(&format!("  {:<42} {:>10}\n", "total", gib(self.total())));
        text
    }
}

/// Bytes of a frozen model: matrices in bf16 or f32, norms and biases in f32.
fn frozen_bytes(config: &ModelConfig, bf16: bool) -> u64 {
    let vectors: u64 = config
        .tensor_shapes()
        .iter()
        .filter(|(_, shape)| shape.len() == 1)
        .map(|(_, shape)| shape[0] as u64)
        .sum();
    let matrices = config.num_parameters() as u64 - vectors;
    matrices * if bf16 { BF16 } else { F32 } + vectors * F32
}

/// The machine's memory from /proc/meminfo: (total, available now), in bytes.
pub fn machine_memory() -> Option<(u64, u64)> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = info.lines().find(|line| line.starts_with(name))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_sixteen_bytes_per_student_parameter_and_the_cache_drops_the_teacher() {
        let student = ModelConfig::preset("qwen2.5-0.5b").unwrap();
        let live_shape = RunShape {
            student: &student,
            teacher: Some(&student),
            cache_top_k: 64,
            batch: 1,
            seq_len: 256,
            chunk_positions: 256,
            baseline_bytes: 0,
            lora: None,
            teacher_bf16: false,
            student_base_bf16: false,
            generated_len: 0,
            recompute_layers: false,
        };
        let live = MemoryPlan::estimate(&live_shape);
        let states: u64 = live.parts[..3].iter().map(|p| p.bytes).sum();
        assert_eq!(states, 16 * student.num_parameters() as u64);
        let cached = MemoryPlan::estimate(&RunShape {
            teacher: None,
            ..live_shape
        });
        assert!(live.total() - cached.total() >= 4 * student.num_parameters() as u64);
        assert!(live.table().contains("total"));
    }
}
