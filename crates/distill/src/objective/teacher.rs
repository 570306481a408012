//! What the teacher says about a batch: a live model's hidden state, or the cache's top-k.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use qwen2::Model;

use super::batch::{chunk_logits, flatten, Batch};
use super::spec::Objective;

/// What the teacher says about a batch, flattened to positions `[N = B*T, ...]`.
pub enum TeacherSignal<B: Backend> {
    /// No teacher: pure hard-label training (`hard_label_weight = 1`, no intermediate
    /// matches); the soft loss is 0 and the teacher is never loaded.
    Absent,
    /// A live teacher: its final hidden state and its lm_head.
    Model {
        final_hidden: Tensor<B, 2>,
        model: std::sync::Arc<Model<B>>,
    },
    /// The offline cache: top-k logits and ids, and the log-sum-exp at temperature T of the rest.
    TopK {
        ids: Tensor<B, 2, Int>,
        logits: Tensor<B, 2>,
        rest_lse: Tensor<B, 1>,
    },
}

/// Teacher outputs for one batch.
pub struct TeacherOutputs<B: Backend> {
    pub signal: TeacherSignal<B>,
    /// `[N, H_t]` hidden states of each intermediate match, in match order.
    pub states: Vec<Tensor<B, 2>>,
}

impl<B: Backend> TeacherOutputs<B> {
    /// No teacher (hard-label training).
    pub fn absent() -> Self {
        Self {
            signal: TeacherSignal::Absent,
            states: Vec::new(),
        }
    }

    /// Runs a live teacher over `batch` (no autodiff graph: `B` is an inference backend).
    pub fn from_model(
        teacher: &std::sync::Arc<Model<B>>,
        batch: &Batch,
        objective: &Objective,
    ) -> Self {
        let device = teacher.device();
        let needs_states = !objective.intermediate_matches.is_empty();
        let (final_hidden, states) =
            teacher.forward_hidden(batch.ids_tensor(&device), &batch.mask, needs_states);
        let states = states
            .map(|states| {
                objective
                    .intermediate_matches
                    .iter()
                    .map(|m| flatten(states[m.layer_t].clone()))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            signal: TeacherSignal::Model {
                final_hidden: flatten(final_hidden),
                model: teacher.clone(),
            },
            states,
        }
    }

    /// The teacher's view of positions `start..start+len`.
    pub(crate) fn chunk(&self, start: usize, len: usize) -> ChunkTeacher<B> {
        match &self.signal {
            TeacherSignal::Absent => ChunkTeacher::Absent,
            TeacherSignal::Model {
                final_hidden,
                model,
            } => {
                let hidden = final_hidden.clone().narrow(0, start, len);
                ChunkTeacher::Logits(chunk_logits(model, hidden))
            }
            TeacherSignal::TopK {
                ids,
                logits,
                rest_lse,
            } => ChunkTeacher::TopK {
                ids: ids.clone().narrow(0, start, len),
                logits: logits.clone().narrow(0, start, len),
                rest_lse: rest_lse.clone().narrow(0, start, len),
            },
        }
    }
}

/// The teacher on one chunk of positions.
pub(crate) enum ChunkTeacher<B: Backend> {
    Absent,
    Logits(Tensor<B, 2>),
    TopK {
        ids: Tensor<B, 2, Int>,
        logits: Tensor<B, 2>,
        rest_lse: Tensor<B, 1>,
    },
}

impl<B: Backend> ChunkTeacher<B> {
    /// Moves the (constant) teacher tensors onto the autodiff backend of `A`.
    pub(super) fn into_autodiff<A: AutodiffBackend<InnerBackend = B>>(self) -> ChunkTeacher<A> {
        match self {
            ChunkTeacher::Absent => ChunkTeacher::Absent,
            ChunkTeacher::Logits(logits) => ChunkTeacher::Logits(Tensor::from_inner(logits)),
            ChunkTeacher::TopK {
                ids,
                logits,
                rest_lse,
            } => ChunkTeacher::TopK {
                ids: Tensor::from_inner(ids),
                logits: Tensor::from_inner(logits),
                rest_lse: Tensor::from_inner(rest_lse),
            },
        }
    }
}
