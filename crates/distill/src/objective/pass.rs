//! The gradient pass over one batch (chunked, so no vocabulary-sized tensor larger than one
//! chunk exists), and the same loss without gradients.

use std::time::Instant;

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

use super::batch::{chunk_logits, Batch};
use super::body::{student_forward, Body, BodyInputs};
use super::chunk::{chunk_terms, chunked_terms, intermediate_terms, scalar, PositionWeights};
use super::spec::{LossBreakdown, Objective};
use super::student::Student;
use super::teacher::TeacherOutputs;

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
/// `recompute_layers` the body keeps one layer's activations at a time (crate::objective::body).
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
    let mut breakdown = chunked_terms(
        batch,
        objective,
        teacher.chunk_ranges(positions, objective.chunk_positions),
        |start, len| {
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
        },
    );

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
    let mut breakdown = chunked_terms(
        batch,
        objective,
        teacher.chunk_ranges(positions, objective.chunk_positions),
        |start, len| {
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
        },
    );
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
