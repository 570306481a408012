//! Which teacher layer, head, FFN neuron and embedding channel each part of the student is.
//! Width is chosen the same in every kept layer (one `intermediate_size` and one head count in
//! config.json), by each layer's own importance; kept parts stay in the teacher's order.

use qwen2::ModelConfig;
use serde::{Deserialize, Serialize};

use crate::error::{flag_error, Result};
use crate::importance::Importance;
use crate::spec::{LayerChoice, LayerRanking, PruneSpec, NUM_LAYERS};

/// The student as a selection of the teacher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrunePlan {
    /// Student layer j is teacher layer `layers[j]`.
    pub layers: Vec<usize>,
    /// Per student layer: the teacher's query heads it keeps, key/value group by group.
    pub heads: Vec<Vec<usize>>,
    /// Per student layer: the teacher's FFN neurons it keeps.
    pub neurons: Vec<Vec<usize>>,
    /// The teacher's embedding channels the student keeps (one set for the whole residual
    /// stream: embeddings, every norm, every projection's hidden side, lm_head).
    pub channels: Vec<usize>,
}

impl PrunePlan {
    /// The plan `spec` asks for. `importance` is needed where [`PruneSpec::needs_importance`].
    pub fn new(
        spec: &PruneSpec,
        teacher: &ModelConfig,
        importance: Option<&Importance>,
    ) -> Result<Self> {
        spec.validate(teacher)?;
        let needed = || {
            importance.ok_or_else(|| {
                flag_error(
                    "--calibration",
                    "choosing by importance needs calibration shards: give --calibration DIR",
                )
            })
        };
        let all = |n: usize| (0..n).collect::<Vec<_>>();
        let layers = match &spec.layers {
            None => all(teacher.num_hidden_layers),
            Some(LayerChoice::Keep(kept)) => kept.clone(),
            Some(LayerChoice::EveryOther) => (0..teacher.num_hidden_layers).step_by(2).collect(),
            Some(LayerChoice::Count(n)) => {
                let importance = needed()?;
                let scores = match spec.layer_ranking {
                    LayerRanking::Loss => importance.loss_increase(),
                    LayerRanking::BlockInfluence => importance.block_influence.clone(),
                };
                if scores.iter().any(|s| s.is_nan()) {
                    return Err(flag_error(NUM_LAYERS, "a layer's importance is NaN"));
                }
                most_important(&scores, *n)
            }
        };

        let heads = match spec.num_attention_heads {
            None => vec![all(teacher.num_attention_heads); layers.len()],
            Some(n) => {
                let importance = needed()?;
                let groups = teacher.num_key_value_heads;
                let group = teacher.num_attention_heads / groups;
                let keep = n / groups;
                layers
                    .iter()
                    .map(|&layer| {
                        (0..groups)
                            .flat_map(|g| {
                                let scores = &importance.heads[layer][g * group..(g + 1) * group];
                                most_important(scores, keep)
                                    .into_iter()
                                    .map(move |h| g * group + h)
                            })
                            .collect()
                    })
                    .collect()
            }
        };
        let neurons = match spec.intermediate_size {
            None => vec![all(teacher.intermediate_size); layers.len()],
            Some(n) => {
                let importance = needed()?;
                layers
                    .iter()
                    .map(|&layer| most_important(&importance.neurons[layer], n))
                    .collect()
            }
        };
        let channels = match spec.hidden_size {
            None => all(teacher.hidden_size),
            Some(n) => {
                let importance = needed()?;
                let mut scores = vec![0.0; teacher.hidden_size];
                for &layer in &layers {
                    for (total, value) in scores.iter_mut().zip(&importance.channels[layer]) {
                        *total += value;
                    }
                }
                most_important(&scores, n)
            }
        };
        Ok(Self {
            layers,
            heads,
            neurons,
            channels,
        })
    }

    /// The student's config.json: the teacher's, with the kept counts.
    pub fn student_config(&self, teacher: &ModelConfig) -> ModelConfig {
        ModelConfig {
            num_hidden_layers: self.layers.len(),
            num_attention_heads: self.heads.first().map_or(0, Vec::len),
            intermediate_size: self.neurons.first().map_or(0, Vec::len),
            hidden_size: self.channels.len(),
            ..teacher.clone()
        }
    }
}

/// The indices of the `keep` largest `scores`, in increasing index order (ties keep the
/// lower index).
pub fn most_important(scores: &[f64], keep: usize) -> Vec<usize> {
    let mut kept = importance_order(scores);
    kept.truncate(keep);
    kept.sort_unstable();
    kept
}

/// Every index, the largest score first (ties: the lower index first).
pub fn importance_order(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}
