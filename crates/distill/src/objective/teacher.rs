//! What the teacher says about a batch: a live model's hidden state (on the student's tokens,
//! or on its own tokens of the same text, aligned), or the cache's top-k.

use std::ops::Range;
use std::sync::Arc;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use qwen2::{AttentionMask, Model};

use super::batch::{chunk_logits, flatten, Batch};
use super::spec::Objective;
use crate::cross_tokenizer::{AlignedBatch, Alignment, GroupRows};

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
    /// A live teacher of another tokenizer: its final hidden state over its own tokens of
    /// the batch's text (`[N_t, H]`), and how its tokens align with the student's.
    Aligned {
        final_hidden: Tensor<B, 2>,
        model: std::sync::Arc<Model<B>>,
        alignment: Arc<Alignment>,
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

    /// Runs a live teacher of another tokenizer over its own tokens of the batch's text.
    pub fn from_model_aligned(teacher: &Arc<Model<B>>, aligned: AlignedBatch) -> Self {
        let device = teacher.device();
        let batch = Batch::new(
            aligned.teacher_ids,
            AttentionMask {
                rows: aligned.teacher_mask,
            },
        );
        let (final_hidden, _) =
            teacher.forward_hidden(batch.ids_tensor(&device), &batch.mask, false);
        Self {
            signal: TeacherSignal::Aligned {
                final_hidden: flatten(final_hidden),
                model: teacher.clone(),
                alignment: Arc::new(aligned.alignment),
            },
            states: Vec::new(),
        }
    }

    /// The chunks of the student's `positions` that the vocabulary-sized terms are evaluated
    /// in: `chunk` positions each, or, across tokenizers, never cutting an aligned group.
    pub(crate) fn chunk_ranges(&self, positions: usize, chunk: usize) -> Vec<Range<usize>> {
        match &self.signal {
            TeacherSignal::Aligned { alignment, .. } => alignment.chunk_ranges(positions, chunk),
            _ => {
                let chunk = chunk.max(1);
                (0..positions)
                    .step_by(chunk)
                    .map(|start| start..(start + chunk).min(positions))
                    .collect()
            }
        }
    }

    /// The teacher's view of positions `start..start+len`.
    pub(crate) fn chunk(&self, start: usize, len: usize) -> ChunkTeacher<B> {
        match &self.signal {
            TeacherSignal::Absent => ChunkTeacher::Absent,
            TeacherSignal::Aligned {
                final_hidden,
                model,
                alignment,
            } => {
                let (student, teacher, teacher_positions) = alignment.rows_in(start..start + len);
                let groups = student.last.len();
                let total_groups = alignment.groups.len();
                if groups == 0 {
                    return ChunkTeacher::Aligned {
                        teacher_logits: None,
                        student,
                        teacher,
                        total_groups,
                    };
                }
                let device = final_hidden.device();
                let count = teacher_positions.len();
                let teacher_positions: Vec<i64> =
                    teacher_positions.into_iter().map(|p| p as i64).collect();
                let rows = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(teacher_positions, [count]),
                    &device,
                );
                let hidden = final_hidden.clone().select(0, rows);
                ChunkTeacher::Aligned {
                    teacher_logits: Some(chunk_logits(model, hidden)),
                    student,
                    teacher,
                    total_groups,
                }
            }
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
    /// Across tokenizers: the groups whose student positions lie in the chunk, with the
    /// teacher's logits at their positions (`None` when the chunk holds no group).
    Aligned {
        teacher_logits: Option<Tensor<B, 2>>,
        student: GroupRows,
        teacher: GroupRows,
        /// Groups in the whole batch: each group weighs 1 / total_groups.
        total_groups: usize,
    },
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
            ChunkTeacher::Aligned {
                teacher_logits,
                student,
                teacher,
                total_groups,
            } => ChunkTeacher::Aligned {
                teacher_logits: teacher_logits.map(Tensor::from_inner),
                student,
                teacher,
                total_groups,
            },
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
