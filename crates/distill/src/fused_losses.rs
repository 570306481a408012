//! The vocabulary-sized losses' heavy parts as single operations on burn-flex, each with its
//! own backward step (the loops are `matmul::log_softmax`'s): the log-softmax read at a few ids
//! per row (next-token cross-entropy, the teacher cache's top-k KL) and forward KL. The composed
//! Burn operations make a `[positions, vocab]` tensor for `logits / T`, the log-softmax, its
//! exponential, the log-ratio and their product, and as many again in the backward pass; these
//! keep one log-normaliser per row and recompute the exponentials when the gradient is asked.
//!
//! Each function returns `None` on any other backend, whose caller then composes the
//! operations ([`crate::losses`]): the same formulas, which the tests hold these to. Burn adds
//! an operation with a backward step only to the concrete `Autodiff<burn-flex>` (there is no
//! hook for any `AutodiffBackend`), so that type is matched here, as qwen2's frozen products do.

use std::any::TypeId;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};
use matmul::log_softmax;
use qwen2::backend::{
    contiguous_f32, flex_f32, from_flex, record, same_type, usize_values, FlexAutodiff, FlexCpu,
    RecordedTensor,
};

/// `log_softmax(logits / T)` at `ids` (`[N, V]` logits, `[N, k]` ids -> `[N, k]`).
pub(crate) fn gathered_log_softmax<B: Backend>(
    logits: &Tensor<B, 2>,
    ids: &Tensor<B, 2, Int>,
    temperature: f64,
) -> Option<Tensor<B, 2>> {
    let [rows, per_row] = ids.dims();
    let vocab = logits.dims()[1];
    let inverse_t = (1.0 / temperature) as f32;
    let (x, recorded) = flex_input(logits)?;
    let ids = Arc::new(usize_values(ids));
    let (gathered, log_z) = log_softmax::gathered_log_softmax(
        values(&x, rows * vocab),
        vocab,
        &ids,
        per_row,
        inverse_t,
    );
    let state = || GatheredState {
        logits: x,
        ids,
        per_row,
        inverse_t,
        log_z: Arc::new(log_z),
    };
    Some(flex_output(
        gathered,
        [rows, per_row],
        recorded.map(|logits| (GatheredLogSoftmaxBackward, [logits], state())),
    ))
}

/// Forward KL per row between `softmax(teacher / T)` and `softmax(student / T)` (`[N, V]` each
/// -> `[N]`), differentiable in the student's logits only: `None` (compose instead) when the
/// teacher's logits are part of a graph too.
pub(crate) fn forward_kl<B: Backend>(
    student: &Tensor<B, 2>,
    teacher: &Tensor<B, 2>,
    temperature: f64,
) -> Option<Tensor<B, 1>> {
    let [rows, vocab] = student.dims();
    let inverse_t = (1.0 / temperature) as f32;
    if teacher.dims() != [rows, vocab] {
        return None;
    }
    let (s, recorded) = flex_input(student)?;
    let (t, recorded_teacher) = flex_input(teacher)?;
    if recorded_teacher.is_some_and(|teacher| !teacher.node.requirement.is_none()) {
        return None;
    }
    let (kl, log_z) = log_softmax::forward_kl(
        values(&s, rows * vocab),
        values(&t, rows * vocab),
        vocab,
        inverse_t,
    );
    let state = || KlState {
        student: s,
        teacher: t,
        inverse_t,
        log_z: Arc::new(log_z),
    };
    Some(flex_output(
        kl,
        [rows],
        recorded.map(|student| (ForwardKlBackward, [student], state())),
    ))
}

/// `t`'s values as one contiguous f32 run, and its graph node's tensor when `B` records a
/// graph (burn-flex under autodiff); `None` on any other backend.
fn flex_input<B: Backend, const D: usize>(
    t: &Tensor<B, D>,
) -> Option<(FlexTensor, Option<RecordedTensor>)> {
    if TypeId::of::<B>() == TypeId::of::<FlexCpu>() {
        return Some((flex_f32(t.clone())?, None));
    }
    if TypeId::of::<B>() != TypeId::of::<FlexAutodiff>() {
        return None;
    }
    let t: Tensor<FlexAutodiff, D> = same_type(t.clone());
    let t = t.into_primitive().tensor();
    Some((contiguous_f32(t.primitive.clone())?, Some(t)))
}

/// The tensor of `values` for the backend [`flex_input`] found: plain on burn-flex, or entered
/// in the graph as the result of `step` on its parents.
fn flex_output<B: Backend, S: Backward<FlexCpu, 1>, const D: usize>(
    values: Vec<f32>,
    dims: [usize; D],
    recorded: Option<(S, [RecordedTensor; 1], S::State)>,
) -> Tensor<B, D> {
    let output = FlexTensor::from_data(TensorData::new(values, dims));
    match recorded {
        None => from_flex(output),
        Some((step, [parent], state)) => same_type(Tensor::<FlexAutodiff, D>::from_primitive(
            TensorPrimitive::Float(record(step, [&parent], state, output)),
        )),
    }
}

#[derive(Debug, Clone)]
struct GatheredState {
    logits: FlexTensor,
    ids: Arc<Vec<usize>>,
    per_row: usize,
    inverse_t: f32,
    log_z: Arc<Vec<f32>>,
}

#[derive(Debug)]
struct GatheredLogSoftmaxBackward;

impl Backward<FlexCpu, 1> for GatheredLogSoftmaxBackward {
    type State = GatheredState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let state = ops.state;
        unary::<FlexCpu, _>(ops.parents, ops.node, grads, |upstream| {
            let rows = state.log_z.len();
            let vocab = state.logits.layout().shape()[1];
            let upstream = contiguous_f32(upstream).expect("an f32 gradient");
            let gradient = log_softmax::gathered_log_softmax_backward(
                values(&state.logits, rows * vocab),
                vocab,
                &state.ids,
                state.per_row,
                state.inverse_t,
                &state.log_z,
                values(&upstream, rows * state.per_row),
            );
            FlexTensor::from_data(TensorData::new(gradient, [rows, vocab]))
        });
    }
}

#[derive(Debug, Clone)]
struct KlState {
    student: FlexTensor,
    teacher: FlexTensor,
    inverse_t: f32,
    log_z: Arc<Vec<f32>>,
}

#[derive(Debug)]
struct ForwardKlBackward;

impl Backward<FlexCpu, 1> for ForwardKlBackward {
    type State = KlState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let state = ops.state;
        unary::<FlexCpu, _>(ops.parents, ops.node, grads, |upstream| {
            let [rows, vocab] = [state.log_z.len() / 2, state.student.layout().shape()[1]];
            let upstream = contiguous_f32(upstream).expect("an f32 gradient");
            let gradient = log_softmax::forward_kl_backward(
                values(&state.student, rows * vocab),
                values(&state.teacher, rows * vocab),
                vocab,
                state.inverse_t,
                &state.log_z,
                values(&upstream, rows),
            );
            FlexTensor::from_data(TensorData::new(gradient, [rows, vocab]))
        });
    }
}

fn values(t: &FlexTensor, count: usize) -> &[f32] {
    &t.storage::<f32>()[..count]
}
