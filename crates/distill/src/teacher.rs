//! Where the teacher's signal comes from: none, a live model (on the student's tokens, or on
//! its own tokens of the same text), or the offline cache.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use qwen2::Model;

use crate::cross_tokenizer::Aligner;
use crate::error::TrainError;
use crate::objective::{Batch, Objective, TeacherOutputs};
use crate::teacher_cache::CachedTeacher;

/// Where the teacher's signal comes from.
pub enum TeacherSource<B: Backend> {
    /// Hard-label training (`hard_label_weight = 1`, no intermediate matches): no teacher.
    Absent,
    /// A frozen teacher model run on every batch, on the inference backend.
    Live(Arc<Model<B>>),
    /// A frozen teacher of another tokenizer, run on its own tokens of each batch's text
    /// (`distillation.cross_tokenizer`).
    AcrossTokenizers {
        model: Arc<Model<B>>,
        aligner: Arc<Aligner>,
    },
    /// The offline teacher cache (`--cache-teacher`): the cached top-k logits (and hidden
    /// states) of `split` and `blocks`.
    Cached(CachedTeacher<B>),
}

impl<B: Backend> TeacherSource<B> {
    pub fn is_present(&self) -> bool {
        !matches!(self, TeacherSource::Absent)
    }

    /// The teacher model, when it runs live.
    pub fn live(&self) -> Option<&Arc<Model<B>>> {
        match self {
            TeacherSource::Live(model) | TeacherSource::AcrossTokenizers { model, .. } => {
                Some(model)
            }
            _ => None,
        }
    }

    /// The teacher's outputs for `batch`, whose blocks are `blocks` of `split`; `None` without
    /// a teacher.
    pub fn outputs(
        &self,
        batch: &Batch,
        split: &str,
        blocks: &[usize],
        objective: &Objective,
    ) -> Result<Option<TeacherOutputs<B>>, TrainError> {
        Ok(match self {
            TeacherSource::Absent => None,
            TeacherSource::Live(model) => Some(TeacherOutputs::from_model(model, batch, objective)),
            TeacherSource::AcrossTokenizers { model, aligner } => {
                let aligned = aligner.align(&batch.input_ids, &batch.mask.rows)?;
                Some(TeacherOutputs::from_model_aligned(model, aligned))
            }
            TeacherSource::Cached(cache) => Some(cache.outputs(batch, split, blocks, objective)?),
        })
    }

    /// The metric name of evaluation's KL to the teacher: from a cache it is the top-k
    /// approximation (a lower bound of the full KL), named apart so curves never mix the two.
    pub fn kl_metric_name(&self) -> &'static str {
        match self {
            TeacherSource::Cached(_) => "kl_to_teacher_topk",
            _ => "kl_to_teacher",
        }
    }
}
