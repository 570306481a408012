//! The distillation objective of one batch and its gradients, computed so that no
//! vocabulary-sized tensor larger than one chunk of positions ever exists.
//!
//! total = hard_weight x hard + (1 - hard_weight) x soft + sum_i weight_i x intermediate_i
//!
//! How the memory bound works: the student runs up to its final hidden state `H` with the
//! autodiff graph. The vocabulary-sized part (lm_head, softmaxes, KL, CE) is then evaluated one
//! chunk of positions at a time on a *detached* copy of the chunk of `H`, and back-propagated at
//! once; that yields the chunk's gradient with respect to `H` and to the lm_head weights, and
//! frees the chunk's logits. Finally `sum(H * dL/dH) + intermediate losses` is back-propagated
//! through the body of the network, which gives exactly the gradients of the full loss.

use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::nn::Linear;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use qwen2::{AttentionMask, Model};
use serde::{Deserialize, Serialize};

use crate::losses::{
    cross_entropy_per_position, divergence_per_position, hidden_loss, top_k_kl_per_position,
    DivergenceParams, HiddenLoss, KdLoss,
};
use crate::recompute::BodyInputs;

/// One intermediate-layer match, layer indices in the transformers `hidden_states` convention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntermediateMatch {
    #[serde(rename = "layer_T")]
    pub layer_t: usize,
    #[serde(rename = "layer_S")]
    pub layer_s: usize,
    #[serde(default = "default_feature")]
    pub feature: String,
    #[serde(default = "default_hidden_loss")]
    pub loss: HiddenLoss,
    #[serde(default = "default_weight")]
    pub weight: f64,
}

fn default_feature() -> String {
    "hidden".into()
}
fn default_hidden_loss() -> HiddenLoss {
    HiddenLoss::Mse
}
fn default_weight() -> f64 {
    1.0
}

/// Everything the objective needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    pub temperature: f64,
    pub hard_label_weight: f64,
    pub kd_loss: KdLoss,
    /// The generalized JSD's beta and the skew KLs' alpha.
    pub divergence: DivergenceParams,
    pub intermediate_matches: Vec<IntermediateMatch>,
    /// Positions per chunk of the vocabulary-sized computation.
    pub chunk_positions: usize,
    /// Vocabulary rows both models share with the same meaning; `None` = all rows.
    pub vocab_rows: Option<Vec<u32>>,
    /// Input tokens whose meaning differs between teacher and student: their positions are
    /// left out of the soft loss.
    pub masked_token_ids: Vec<u32>,
}

/// The student and the learned projections of its intermediate matches, trained together.
#[derive(Module, Debug)]
pub struct Student<B: Backend> {
    pub model: Model<B>,
    /// One per intermediate match: `Some` when the widths differ (maps student -> teacher width).
    pub projections: Vec<Projection<B>>,
}

#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    /// No bias; weight `[student width, teacher width]` (Burn's layout of PyTorch's `[H_t, H_s]`).
    pub linear: Option<Linear<B>>,
}

/// A batch on the host: token rows, which tokens are real, and which positions the losses
/// score.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub input_ids: Vec<Vec<u32>>,
    pub mask: AttentionMask,
    /// `scored[b][t]`: position t of row b counts in the losses. `None`: every real position
    /// (text from the data). A generated sequence scores only the positions that predict a
    /// generated token, so its prompt is masked out (crate::on_policy).
    pub scored: Option<Vec<Vec<bool>>>,
}

impl Batch {
    pub fn new(input_ids: Vec<Vec<u32>>, mask: AttentionMask) -> Self {
        Self {
            input_ids,
            mask,
            scored: None,
        }
    }

    /// Whether position `t` of row `row` counts in the losses (real positions only).
    pub fn is_scored(&self, row: usize, t: usize) -> bool {
        self.scored.as_ref().is_none_or(|scored| scored[row][t])
    }

    pub fn batch_size(&self) -> usize {
        self.input_ids.len()
    }

    pub fn seq_len(&self) -> usize {
        self.input_ids.first().map_or(0, Vec::len)
    }

    pub fn real_tokens(&self) -> usize {
        self.mask.rows.iter().flatten().filter(|&&r| r).count()
    }

    pub fn ids_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        let values: Vec<i64> = self.input_ids.iter().flatten().map(|&t| t as i64).collect();
        Tensor::from_data(
            TensorData::new(values, [self.batch_size(), self.seq_len()]),
            device,
        )
    }
}

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
    fn into_autodiff<A: AutodiffBackend<InnerBackend = B>>(self) -> ChunkTeacher<A> {
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

/// `[B, T, H] -> [B*T, H]`
pub fn flatten<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 2> {
    let [batch, seq, width] = x.dims();
    x.reshape([batch * seq, width])
}

/// Loss values of one batch (means over the batch, as plain numbers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LossBreakdown {
    pub total: f64,
    pub hard: f64,
    pub soft: f64,
    /// weight-free value of each intermediate match.
    pub intermediate: Vec<f64>,
    pub real_tokens: usize,
}

/// Per-position weights and labels of a batch.
pub(crate) struct PositionWeights {
    /// 1/real count at positions counted by the soft loss.
    pub(crate) soft: Vec<f32>,
    /// 1/real count at real positions (intermediate losses).
    pub(crate) real: Vec<f32>,
    /// 1/valid-label count where position t has a real label t+1.
    hard: Vec<f32>,
    labels: Vec<i64>,
}

impl PositionWeights {
    pub(crate) fn new(batch: &Batch, objective: &Objective) -> Self {
        let seq = batch.seq_len();
        let mut soft = Vec::new();
        let mut real = Vec::new();
        let mut hard = Vec::new();
        let mut labels = Vec::new();
        for (row, (ids, mask)) in batch.input_ids.iter().zip(&batch.mask.rows).enumerate() {
            for t in 0..seq {
                let scored = mask[t] && batch.is_scored(row, t);
                real.push(f32::from(scored));
                soft.push(f32::from(
                    scored && !objective.masked_token_ids.contains(&ids[t]),
                ));
                let has_label = scored && t + 1 < seq && mask[t + 1];
                hard.push(f32::from(has_label));
                labels.push(if has_label { ids[t + 1] as i64 } else { 0 });
            }
        }
        let normalise = |weights: &mut Vec<f32>| {
            let count = weights.iter().filter(|&&w| w > 0.0).count().max(1) as f32;
            weights.iter_mut().for_each(|w| *w /= count);
        };
        normalise(&mut soft);
        normalise(&mut real);
        normalise(&mut hard);
        Self {
            soft,
            real,
            hard,
            labels,
        }
    }
}

fn vector<B: Backend>(values: &[f32], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

/// The vocabulary-sized terms of one chunk: `(hard, soft)` sums, weighted to batch means.
pub(crate) fn chunk_terms<B: Backend>(
    objective: &Objective,
    student_logits: Tensor<B, 2>,
    teacher: ChunkTeacher<B>,
    weights: &PositionWeights,
    start: usize,
    len: usize,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let device = student_logits.device();
    let range = start..start + len;
    let labels = Tensor::<B, 1, Int>::from_data(
        TensorData::new(weights.labels[range.clone()].to_vec(), [len]),
        &device,
    );
    let hard_weights = vector::<B>(&weights.hard[range.clone()], &device);
    let hard = (cross_entropy_per_position(student_logits.clone(), labels) * hard_weights).sum();

    let t = objective.temperature;
    let divergence = match teacher {
        ChunkTeacher::Absent => return (hard, Tensor::zeros([1], &device)),
        ChunkTeacher::Logits(teacher_logits) => {
            let (student_logits, teacher_logits) = match &objective.vocab_rows {
                Some(rows) => {
                    let rows = row_indices::<B>(rows, &device);
                    (
                        student_logits.select(1, rows.clone()),
                        teacher_logits.select(1, rows),
                    )
                }
                None => (student_logits, teacher_logits),
            };
            divergence_per_position(
                objective.kd_loss,
                student_logits,
                teacher_logits,
                t,
                objective.divergence,
            )
        }
        ChunkTeacher::TopK {
            ids,
            logits,
            rest_lse,
        } => {
            // As the live path: the student's softmax and its remaining mass over the compared
            // rows only. The cache's ids are vocabulary ids; renumber them to positions among
            // those rows (the cache keeps only compared rows, so every id has one).
            let (student_logits, ids) = match &objective.vocab_rows {
                Some(rows) => {
                    let vocab = student_logits.dims()[1];
                    let mut position_of = vec![0i64; vocab];
                    for (position, &row) in rows.iter().enumerate() {
                        position_of[row as usize] = position as i64;
                    }
                    let position_of = Tensor::<B, 1, Int>::from_data(
                        TensorData::new(position_of, [vocab]),
                        &device,
                    );
                    let [n, k] = ids.dims();
                    let ids = position_of.select(0, ids.reshape([n * k])).reshape([n, k]);
                    (
                        student_logits.select(1, row_indices::<B>(rows, &device)),
                        ids,
                    )
                }
                None => (student_logits, ids),
            };
            top_k_kl_per_position(student_logits, logits, ids, rest_lse, t)
        }
    };
    let scale = if objective.kd_loss.scaled_by_temperature_squared() {
        t * t
    } else {
        1.0
    };
    let soft = (divergence * vector::<B>(&weights.soft[range], &device)).sum() * scale;
    (hard, soft)
}

/// `rows` as an index tensor for `select`.
pub(crate) fn row_indices<B: Backend>(rows: &[u32], device: &B::Device) -> Tensor<B, 1, Int> {
    let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let len = rows.len();
    Tensor::from_data(TensorData::new(rows, [len]), device)
}

/// The intermediate-layer loss of match `index` (weight-free), `student_state` being the
/// student's hidden state `matched.layer_s`.
pub(crate) fn intermediate_loss<B: Backend>(
    student: &Student<B>,
    student_state: Tensor<B, 3>,
    teacher_state: Tensor<B, 2>,
    index: usize,
    matched: &IntermediateMatch,
    real_weights: Tensor<B, 1>,
) -> Tensor<B, 1> {
    let student_state = flatten(student_state);
    let student_state = match &student.projections[index].linear {
        Some(linear) => linear.forward(student_state),
        None => student_state,
    };
    hidden_loss(matched.loss, student_state, teacher_state, real_weights)
}

pub(crate) fn scalar<B: Backend>(x: Tensor<B, 1>) -> f64 {
    x.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("scalar")[0]
}

/// Logits of a `[len, H]` hidden chunk.
pub(crate) fn chunk_logits<B: Backend>(model: &Model<B>, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
    let [len, width] = hidden.dims();
    let logits = model.lm_head(hidden.reshape([1, len, width]));
    let vocab = logits.dims()[2];
    logits.reshape([len, vocab])
}

/// The student's flattened final hidden state `[B*T, H]` and, when intermediate matches need
/// them, all its hidden states.
fn student_forward<B: Backend>(
    student: &Student<B>,
    batch: &Batch,
    objective: &Objective,
) -> (Tensor<B, 2>, Option<Vec<Tensor<B, 3>>>) {
    let needs_states = !objective.intermediate_matches.is_empty();
    let ids = batch.ids_tensor(&student.model.device());
    let (final_hidden, states) = student.model.forward_hidden(ids, &batch.mask, needs_states);
    (flatten(final_hidden), states)
}

/// The student's body as the backward pass will need it: its recorded graph (with every hidden
/// state when intermediate matches read them), or the layers' inputs to run again.
enum Body<B: AutodiffBackend> {
    Recorded(Tensor<B, 2>, Option<Vec<Tensor<B, 3>>>),
    Recomputed(BodyInputs<B>),
}

/// Wall-clock seconds of the two phases of a gradient pass (CPU backends run synchronously,
/// so the clock measures the work; on an asynchronous GPU backend it measures launches).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PassTimes {
    /// The body's forward, plus each chunk's logits and loss (and the intermediate losses).
    pub student_forward_and_loss: f64,
    /// Each chunk's backward, plus the body's.
    pub backward: f64,
}

/// What a gradient pass over one batch gives.
pub struct GradientPass {
    pub gradients: GradientsParams,
    pub losses: LossBreakdown,
    pub times: PassTimes,
}

/// The chunk loop both modes share: `chunk(start, len)` evaluates (and, in the gradient mode,
/// back-propagates) the vocabulary-sized terms of positions `start..start+len` and returns
/// their `(hard, soft)` values; this sums them into the batch's breakdown.
pub(crate) fn chunked_terms(
    batch: &Batch,
    objective: &Objective,
    positions: usize,
    mut chunk: impl FnMut(usize, usize) -> (f64, f64),
) -> LossBreakdown {
    let mut breakdown = LossBreakdown {
        real_tokens: batch.real_tokens(),
        ..LossBreakdown::default()
    };
    let chunk_positions = objective.chunk_positions.max(1);
    for start in (0..positions).step_by(chunk_positions) {
        let (hard, soft) = chunk(start, chunk_positions.min(positions - start));
        breakdown.hard += hard;
        breakdown.soft += soft;
    }
    let alpha = objective.hard_label_weight;
    breakdown.total = alpha * breakdown.hard + (1.0 - alpha) * breakdown.soft;
    breakdown
}

/// The intermediate-layer losses (weight-free, in match order), added to `breakdown` with
/// their weights; returns the loss tensors.
fn intermediate_terms<B: Backend>(
    student: &Student<B>,
    states: &[Tensor<B, 3>],
    teacher_states: impl Fn(usize) -> Tensor<B, 2>,
    objective: &Objective,
    weights: &PositionWeights,
    breakdown: &mut LossBreakdown,
) -> Vec<Tensor<B, 1>> {
    let real = vector::<B>(&weights.real, &student.model.device());
    let mut values = Vec::with_capacity(objective.intermediate_matches.len());
    for (index, matched) in objective.intermediate_matches.iter().enumerate() {
        let value = intermediate_loss(
            student,
            states[matched.layer_s].clone(),
            teacher_states(index),
            index,
            matched,
            real.clone(),
        );
        let plain = scalar(value.clone());
        breakdown.intermediate.push(plain);
        breakdown.total += matched.weight * plain;
        values.push(value);
    }
    values
}

/// Loss and gradients of one batch for the student (and its projections).
pub fn loss_and_gradients<B: AutodiffBackend>(
    student: &Student<B>,
    teacher: &TeacherOutputs<B::InnerBackend>,
    batch: &Batch,
    objective: &Objective,
) -> (GradientsParams, LossBreakdown) {
    let pass = gradient_pass(student, teacher, batch, objective, false);
    (pass.gradients, pass.losses)
}

/// [`loss_and_gradients`] with the time of the forward and backward phases. With
/// `recompute_layers` the body keeps one layer's activations at a time (crate::recompute).
pub fn gradient_pass<B: AutodiffBackend>(
    student: &Student<B>,
    teacher: &TeacherOutputs<B::InnerBackend>,
    batch: &Batch,
    objective: &Objective,
    recompute_layers: bool,
) -> GradientPass {
    let mut times = PassTimes::default();
    let started = Instant::now();
    let weights = PositionWeights::new(batch, objective);
    let (final_hidden, body) = match recompute_layers {
        true => {
            let inputs = BodyInputs::forward(student, batch);
            (inputs.final_hidden(student), Body::Recomputed(inputs))
        }
        false => {
            let (final_hidden, states) = student_forward(student, batch, objective);
            (final_hidden.clone(), Body::Recorded(final_hidden, states))
        }
    };
    let positions = final_hidden.dims()[0];
    times.student_forward_and_loss += started.elapsed().as_secs_f64();

    let alpha = objective.hard_label_weight;
    let mut accumulator = GradientsAccumulator::<Student<B>>::new();
    let mut hidden_gradients = Vec::new();
    let mut breakdown = chunked_terms(batch, objective, positions, |start, len| {
        let started = Instant::now();
        // A leaf cut from the body's graph: the chunk's backward stops here, and its gradient
        // with respect to the hidden state is carried to the body's backward below.
        let hidden_leaf = final_hidden
            .clone()
            .detach()
            .narrow(0, start, len)
            .require_grad();
        let student_logits = chunk_logits(&student.model, hidden_leaf.clone());
        let teacher_chunk = teacher.chunk(start, len).into_autodiff::<B>();
        let (hard, soft) = chunk_terms(
            objective,
            student_logits,
            teacher_chunk,
            &weights,
            start,
            len,
        );
        let values = (scalar(hard.clone()), scalar(soft.clone()));
        times.student_forward_and_loss += started.elapsed().as_secs_f64();

        let started = Instant::now();
        let chunk_loss = hard * alpha + soft * (1.0 - alpha);
        let gradients = chunk_loss.backward();
        hidden_gradients.push(
            hidden_leaf
                .grad(&gradients)
                .expect("the chunk depends on its hidden state"),
        );
        accumulator.accumulate(student, GradientsParams::from_grads(gradients, student));
        times.backward += started.elapsed().as_secs_f64();
        values
    });

    let upstream = Tensor::<B, 2>::from_inner(Tensor::cat(hidden_gradients, 0));
    match body {
        Body::Recorded(final_hidden, states) => {
            let started = Instant::now();
            let intermediate = states.map(|states| {
                intermediate_terms(
                    student,
                    &states,
                    |index| Tensor::<B, 2>::from_inner(teacher.states[index].clone()),
                    objective,
                    &weights,
                    &mut breakdown,
                )
            });
            times.student_forward_and_loss += started.elapsed().as_secs_f64();

            // Back through the body: d/dθ sum(H * dL/dH) = dL/dθ for the body's parameters.
            let started = Instant::now();
            let mut body_loss = (final_hidden * upstream).sum();
            for (value, matched) in intermediate
                .into_iter()
                .flatten()
                .zip(&objective.intermediate_matches)
            {
                body_loss = body_loss + value * matched.weight;
            }
            accumulator.accumulate(
                student,
                GradientsParams::from_grads(body_loss.backward(), student),
            );
            times.backward += started.elapsed().as_secs_f64();
        }
        Body::Recomputed(inputs) => {
            let started = Instant::now();
            inputs.backward(
                student,
                batch,
                upstream,
                teacher,
                objective,
                &weights,
                &mut breakdown,
                &mut accumulator,
            );
            times.backward += started.elapsed().as_secs_f64();
        }
    }
    GradientPass {
        gradients: accumulator.grads(),
        losses: breakdown,
        times,
    }
}

/// The same loss without gradients (evaluation), on an inference backend.
pub fn loss_only<B: Backend>(
    student: &Student<B>,
    teacher: &TeacherOutputs<B>,
    batch: &Batch,
    objective: &Objective,
) -> LossBreakdown {
    let weights = PositionWeights::new(batch, objective);
    let (final_hidden, states) = student_forward(student, batch, objective);
    let positions = final_hidden.dims()[0];
    let mut breakdown = chunked_terms(batch, objective, positions, |start, len| {
        let student_logits =
            chunk_logits(&student.model, final_hidden.clone().narrow(0, start, len));
        let (hard, soft) = chunk_terms(
            objective,
            student_logits,
            teacher.chunk(start, len),
            &weights,
            start,
            len,
        );
        (scalar(hard), scalar(soft))
    });
    if let Some(states) = states {
        intermediate_terms(
            student,
            &states,
            |index| teacher.states[index].clone(),
            objective,
            &weights,
            &mut breakdown,
        );
    }
    breakdown
}

/// The inference copy of a student (for evaluation and saving).
pub fn inference_copy<B: AutodiffBackend>(student: &Student<B>) -> Student<B::InnerBackend> {
    student.valid()
}
