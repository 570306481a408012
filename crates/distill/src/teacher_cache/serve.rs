//! The teacher's outputs for a run that trains from caches: each batch's from the cache of its
//! split at the objective's temperature (training's or evaluation's).

use burn::tensor::backend::Backend;

use super::TeacherCache;
use crate::error::TrainError;
use crate::objective::{Batch, Objective, TeacherOutputs};

/// The teacher outputs of a run that trains from caches.
pub struct CachedTeacher<B: Backend> {
    caches: Vec<TeacherCache>,
    device: B::Device,
}

impl<B: Backend> CachedTeacher<B> {
    /// Serves from `caches` (training's first, then evaluation's), on `device`.
    pub fn new(caches: Vec<TeacherCache>, device: B::Device) -> Self {
        Self { caches, device }
    }

    /// The cached outputs of `blocks` of `split` for `objective` (whose temperature picks the
    /// cache: training's or evaluation's).
    pub fn outputs(
        &self,
        batch: &Batch,
        split: &str,
        blocks: &[usize],
        objective: &Objective,
    ) -> Result<TeacherOutputs<B>, TrainError> {
        let cache = self
            .caches
            .iter()
            .find(|c| {
                let contents = &c.manifest().contents;
                contents.split == split && contents.temperature == objective.temperature
            })
            .ok_or_else(|| {
                TrainError::Invalid(format!(
                    "no teacher cache for split `{split}` at temperature {} (caches: {})",
                    objective.temperature,
                    self.caches
                        .iter()
                        .map(|c| c.dir().display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        // TeacherCache::outputs returns every position of full-length blocks in the order
        // given; data.rs makes batches exactly so (rows of seq_len tokens, mask = real_len).
        if batch.batch_size() != blocks.len() || batch.seq_len() != cache.seq_len() {
            return Err(TrainError::Invalid(format!(
                "teacher cache {}: a batch of {} rows of {} tokens for {} blocks of {}",
                cache.dir().display(),
                batch.batch_size(),
                batch.seq_len(),
                blocks.len(),
                cache.seq_len()
            )));
        }
        let mut outputs = cache.outputs::<B>(blocks, &self.device)?;
        if objective.intermediate_matches.is_empty() {
            outputs.states.clear();
        } else if outputs.states.len() != objective.intermediate_matches.len() {
            return Err(TrainError::Invalid(format!(
                "teacher cache {}: opened for {} hidden states, the objective matches {}",
                cache.dir().display(),
                outputs.states.len(),
                objective.intermediate_matches.len()
            )));
        }
        Ok(outputs)
    }
}
