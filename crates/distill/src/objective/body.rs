//! The student's body as the backward pass needs it: its recorded autodiff graph, or the
//! layers' inputs alone (activation checkpointing by layer, `memory.activation_checkpointing`).
//! Recomputed, the body runs forward without a graph, keeping only each decoder layer's input;
//! the backward pass then goes layer by layer from the top, running each layer again with a
//! graph and back-propagating through it alone. What autodiff keeps at any moment is one
//! layer's activations instead of every layer's (at the seed's shapes, 512 tokens: about
//! 0.13 GiB instead of 3.7 GiB), for one more forward pass of the body.
//!
//! The gradient is the recorded pass's: each layer's backward receives `dL/d(output)` and is
//! run on `sum(output * dL/d(output))` (plus the intermediate losses read at its input), whose
//! gradients are exactly the layer's share of `dL`.

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

use super::batch::{flatten, Batch};
use super::chunk::{intermediate_loss, scalar, PositionWeights};
use super::spec::{LossBreakdown, Objective};
use super::student::Student;
use super::teacher::TeacherOutputs;

/// The student's flattened final hidden state `[B*T, H]` and, when intermediate matches need
/// them, all its hidden states.
pub(super) fn student_forward<B: Backend>(
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
pub(super) enum Body<B: AutodiffBackend> {
    Recorded(Tensor<B, 2>, Option<Vec<Tensor<B, 3>>>),
    Recomputed(BodyInputs<B>),
}

/// The body's forward pass without a graph: each decoder layer's input and the last layer's
/// output, on the inference backend.
pub(super) struct BodyInputs<B: AutodiffBackend> {
    layer_inputs: Vec<Tensor<B::InnerBackend, 3>>,
    last_output: Tensor<B::InnerBackend, 3>,
}

impl<B: AutodiffBackend> BodyInputs<B> {
    pub(super) fn forward(student: &Student<B>, batch: &Batch) -> Self {
        let model = student.model.valid();
        let context = model.layer_context(&batch.mask);
        let mut x = model.embed(batch.ids_tensor(&model.device()));
        let mut layer_inputs = Vec::with_capacity(model.num_layers());
        for index in 0..model.num_layers() {
            layer_inputs.push(x.clone());
            x = model.layer_forward(index, x, &context);
        }
        Self {
            layer_inputs,
            last_output: x,
        }
    }

    /// The final normed hidden state `[B*T, H]`, without a graph (the chunks' leaves).
    pub(super) fn final_hidden(&self, student: &Student<B>) -> Tensor<B, 2> {
        let norm = student.model.norm.valid();
        Tensor::from_inner(flatten(norm.forward(self.last_output.clone())))
    }

    /// Back-propagates `upstream` (`dL/d(final hidden)`, `[B*T, H]`) and the intermediate
    /// losses through the body, layer by layer from the top, into `accumulator`; adds the
    /// intermediate losses' values to `breakdown`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward(
        self,
        student: &Student<B>,
        batch: &Batch,
        upstream: Tensor<B, 2>,
        teacher: &TeacherOutputs<B::InnerBackend>,
        objective: &Objective,
        weights: &PositionWeights,
        breakdown: &mut LossBreakdown,
        accumulator: &mut GradientsAccumulator<Student<B>>,
    ) {
        let model = &student.model;
        let layers = model.num_layers();
        let device = model.device();
        let real = Tensor::<B, 1>::from_data(
            burn::tensor::TensorData::new(weights.real.clone(), [weights.real.len()]),
            &device,
        );
        let mut intermediate = vec![0.0; objective.intermediate_matches.len()];
        // The intermediate losses read at hidden state `state`, as one weighted sum.
        let mut matched_at = |state: usize, hidden: Tensor<B, 3>| -> Option<Tensor<B, 1>> {
            let mut sum: Option<Tensor<B, 1>> = None;
            for (index, matched) in objective.intermediate_matches.iter().enumerate() {
                if matched.layer_s != state {
                    continue;
                }
                let value = intermediate_loss(
                    student,
                    hidden.clone(),
                    Tensor::from_inner(teacher.states[index].clone()),
                    index,
                    matched,
                    real.clone(),
                );
                intermediate[index] = scalar(value.clone());
                let weighted = value * matched.weight;
                sum = Some(match sum {
                    Some(sum) => sum + weighted,
                    None => weighted,
                });
            }
            sum
        };
        let mut backward = |loss: Tensor<B, 1>, leaf: &Tensor<B, 3>| {
            let gradients = loss.backward();
            let input_gradient = leaf.grad(&gradients);
            accumulator.accumulate(student, GradientsParams::from_grads(gradients, student));
            input_gradient
        };

        // The final norm (hidden state `layers`).
        let leaf = Tensor::<B, 3>::from_inner(self.last_output).require_grad();
        let normed = model.norm.forward(leaf.clone());
        let mut loss = (flatten(normed.clone()) * upstream).sum();
        if let Some(matched) = matched_at(layers, normed) {
            loss = loss + matched;
        }
        let mut gradient = backward(loss, &leaf).expect("the final norm reads its input");

        // Each layer from the top: its input is hidden state `index`.
        let context = model.layer_context(&batch.mask);
        for (index, input) in self.layer_inputs.into_iter().enumerate().rev() {
            let leaf = Tensor::<B, 3>::from_inner(input).require_grad();
            let output = model.layer_forward(index, leaf.clone(), &context);
            let mut loss = (output * Tensor::from_inner(gradient)).sum();
            if let Some(matched) = matched_at(index, leaf.clone()) {
                loss = loss + matched;
            }
            gradient = backward(loss, &leaf).expect("a layer reads its input");
        }

        // The embeddings, when they train (a LoRA student's are frozen).
        if model.embed_tokens.is_trainable() {
            let embedded = model.embed(batch.ids_tensor(&device));
            let loss = (embedded * Tensor::from_inner(gradient)).sum();
            accumulator.accumulate(
                student,
                GradientsParams::from_grads(loss.backward(), student),
            );
        }
        for (index, matched) in objective.intermediate_matches.iter().enumerate() {
            breakdown.intermediate.push(intermediate[index]);
            breakdown.total += matched.weight * intermediate[index];
        }
    }
}
