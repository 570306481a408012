//! Fused element-wise steps of the forward pass on burn-flex: each reads its inputs once and
//! writes its output once, where the composed Burn operations make several passes and iterate
//! broadcast operands element by element through strided indices. Without autodiff (the
//! teacher, evaluation, generation) they run fused; while a graph is recorded (training) each
//! is one operation with its own backward step, keeping only its inputs (or, for softmax, its
//! output) for the backward pass. Each returns `None` where it does not apply (another backend,
//! a constant that is part of the graph), and the caller composes the operations.
//!
//! The loops are `matmul::rowwise`'s (no Burn there); this file moves tensors in and out. Same
//! formulas in f32; two things differ from the composed operations, within the parity tests'
//! tolerances (which hold both paths to transformers): the order of a row's sum of squares, and
//! `exp` in softmax and silu (`matmul::rowwise::exp`, within 2 ulp of libm's).

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData, TensorPrimitive};

use crate::backend::{
    contiguous_f32, flex_f32, flex_f32_whole, from_flex, from_flex_values, record, same_type,
    FlexAutodiff, FlexCpu, RecordedTensor,
};
use matmul::rowwise::{self, AttentionRows};

/// RMSNorm over the last axis: `x / sqrt(mean(x²) + eps) * weight`.
pub fn rms_norm<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, D>> {
    if TypeId::of::<B>() == TypeId::of::<FlexAutodiff>() {
        return recorded_rms_norm::<D>(same_type(x.clone()), same_type(weight.clone()), eps)
            .map(same_type);
    }
    let (xs, ws) = (flex_f32(x.clone())?, flex_f32(weight.clone())?);
    let dims = x.dims();
    let count = dims.iter().product::<usize>();
    let (xs, ws) = (
        &xs.storage::<f32>()[..count],
        &ws.storage::<f32>()[..dims[D - 1]],
    );
    Some(from_flex_values(
        rowwise::rms_norm(xs, ws, eps as f32),
        dims,
    ))
}

/// The MLP's activation `silu(gate) * up`.
pub fn silu_times<B: Backend, const D: usize>(
    gate: &Tensor<B, D>,
    up: &Tensor<B, D>,
) -> Option<Tensor<B, D>> {
    if TypeId::of::<B>() == TypeId::of::<FlexAutodiff>() {
        return recorded_silu_times::<D>(same_type(gate.clone()), same_type(up.clone()))
            .map(same_type);
    }
    let (gs, us) = (flex_f32(gate.clone())?, flex_f32(up.clone())?);
    let dims = gate.dims();
    if up.dims() != dims {
        return None;
    }
    let count = dims.iter().product::<usize>();
    let (gs, us) = (&gs.storage::<f32>()[..count], &us.storage::<f32>()[..count]);
    Some(from_flex_values(rowwise::silu_times(gs, us), dims))
}

/// `t` laid out contiguously, for a reshape that would otherwise copy a permuted view in
/// burn-flex's element-by-element walk on one thread: on burn-flex without autodiff the copy
/// runs row by row on every thread (`matmul::strided`); elsewhere `t` is returned as it is.
pub fn contiguous<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    if TypeId::of::<B>() != TypeId::of::<FlexCpu>() {
        return t;
    }
    match flex_f32(t.clone()) {
        Some(values) => from_flex(values),
        None => t,
    }
}

/// RoPE of `x [B, T, heads, head_dim]` with tables `[B, T, 1, head_dim]` (see
/// `model::Rope`): `x * cos + cat(x[d/2:], x[:d/2]) * signed_sin`, the same products and sum.
pub fn rope<B: Backend>(
    x: &Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    signed_sin: &Tensor<B, 4>,
) -> Option<Tensor<B, 4>> {
    if TypeId::of::<B>() == TypeId::of::<FlexAutodiff>() {
        return recorded_rope(
            same_type(x.clone()),
            same_type(cos.clone()),
            same_type(signed_sin.clone()),
        )
        .map(same_type);
    }
    let (xs, cs, ss) = (
        flex_f32(x.clone())?,
        flex_f32(cos.clone())?,
        flex_f32(signed_sin.clone())?,
    );
    let dims = x.dims();
    let [batch, seq, heads, head_dim] = dims;
    if cos.dims() != [batch, seq, 1, head_dim] || signed_sin.dims() != cos.dims() {
        return None;
    }
    let table = batch * seq * head_dim;
    let rotated = rowwise::rope(
        &xs.storage::<f32>()[..table * heads],
        head_dim,
        &cs.storage::<f32>()[..table],
        &ss.storage::<f32>()[..table],
    );
    Some(from_flex_values(rotated, dims))
}

/// Attention probabilities from raw scores: `softmax(mask_fill(scores * scale, blocked,
/// f32::MIN))` over the last axis, for `scores [B, kv_heads, group * T, S]` (the query heads
/// sharing a kv head folded into the query axis) and `blocked [B, 1, T, S]`, without expanding
/// the mask over heads.
pub fn masked_softmax<B: Backend>(
    scores: &Tensor<B, 4>,
    scale: f32,
    blocked: &Tensor<B, 4, Bool>,
) -> Option<Tensor<B, 4>> {
    let recorded = TypeId::of::<B>() == TypeId::of::<FlexAutodiff>();
    if TypeId::of::<B>() != TypeId::of::<FlexCpu>() && !recorded {
        return None;
    }
    let dims = scores.dims();
    let [batch, kv_heads, rows, keys] = dims;
    let [mask_batch, one, seq, mask_keys] = blocked.dims();
    if mask_batch != batch || one != 1 || mask_keys != keys || seq == 0 || rows % seq != 0 {
        return None;
    }
    // A bool tensor is the inner backend's under autodiff too.
    let mask: FlexMask = same_type(blocked.clone().into_primitive());
    let mask = match mask.is_contiguous() && mask.layout().start_offset() == 0 {
        true => mask,
        false => mask.to_contiguous(),
    };
    if mask.bytes().len() != batch * seq * keys {
        return None;
    }
    let layout = AttentionRows {
        keys,
        heads: kv_heads,
        queries_per_head: rows,
        seq,
    };
    if recorded {
        let scores: Tensor<FlexAutodiff, 4> = same_type(scores.clone());
        return recorded_masked_softmax(scores, mask, layout, scale).map(same_type);
    }
    let values = flex_f32(scores.clone())?;
    let values = &values.storage::<f32>()[..batch * kv_heads * rows * keys];
    let probabilities = rowwise::masked_softmax(values, layout, mask.bytes(), scale);
    Some(from_flex_values(probabilities, dims))
}

/// burn-flex's bool tensor.
type FlexMask = <FlexCpu as burn::tensor::backend::BackendTypes>::BoolTensorPrimitive;

/// The embedding lookup of a `[hidden, vocab]` table: columns `ids` as rows, `[ids.len(),
/// hidden]` (`ids` is called only on burn-flex). Under autodiff its backward step adds the
/// gradient's rows into the table's columns in place: into the gradient already registered for
/// the table when there is one (a tied lm_head's in the same graph: the lookup is the graph's
/// first operation, so its backward step comes last), else into one fresh zeroed table. Burn's
/// `select` backward makes a zeroed table-sized tensor, which burn-flex allocates and then
/// copies to align it, and copies it again to add into: at Qwen2.5-0.5B's vocabulary two more
/// fresh 545 MB buffers per update, which took 76% of an update's page faults.
pub fn embedding_columns<B: Backend>(
    table: &Tensor<B, 2>,
    ids: impl FnOnce() -> Vec<usize>,
) -> Option<Tensor<B, 2>> {
    if TypeId::of::<B>() == TypeId::of::<FlexAutodiff>() {
        return recorded_embedding_columns(same_type(table.clone()), &ids()).map(same_type);
    }
    let values = flex_f32_whole(table.clone())?;
    let ids = ids();
    let columns = gather_columns(&values, table.dims(), &ids)?;
    Some(from_flex_values(columns, [ids.len(), table.dims()[0]]))
}

/// Columns `ids` of the row-major `[hidden, vocab]` f32 `table`, as `[ids.len(), hidden]`
/// values; `None` for an id past the vocabulary (Burn's `select` then reports it).
fn gather_columns(table: &FlexTensor, dims: [usize; 2], ids: &[usize]) -> Option<Vec<f32>> {
    let [hidden, vocab] = dims;
    if ids.iter().any(|&id| id >= vocab) {
        return None;
    }
    let values = &table.storage::<f32>()[..hidden * vocab];
    let mut out = vec![0f32; ids.len() * hidden];
    for (h, row) in values.chunks_exact(vocab).enumerate() {
        for (t, &id) in ids.iter().enumerate() {
            out[t * hidden + h] = row[id];
        }
    }
    Some(out)
}

fn recorded_embedding_columns(
    table: Tensor<FlexAutodiff, 2>,
    ids: &[usize],
) -> Option<Tensor<FlexAutodiff, 2>> {
    let dims = table.dims();
    let table = table.into_primitive().tensor();
    let values = contiguous_f32(table.primitive.clone())?;
    let columns = gather_columns(&values, dims, ids)?;
    let output = FlexTensor::from_data(TensorData::new(columns, [ids.len(), dims[0]]));
    let state = (ids.to_vec(), table.clone(), dims);
    let output = record(EmbeddingColumnsBackward, [&table], state, output);
    Some(Tensor::from_primitive(TensorPrimitive::Float(output)))
}

#[derive(Debug)]
struct EmbeddingColumnsBackward;

impl Backward<FlexCpu, 1> for EmbeddingColumnsBackward {
    /// The ids, the table (whose registered gradient the step adds into) and its dimensions.
    type State = (Vec<usize>, RecordedTensor, [usize; 2]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (ids, table, [hidden, vocab]) = ops.state;
        let grad = contiguous_f32(grads.consume::<FlexCpu>(&ops.node)).expect("an f32 gradient");
        let [Some(node)] = ops.parents else {
            return;
        };
        let whole = |t: &FlexTensor| {
            t.is_contiguous()
                && t.layout().start_offset() == 0
                && t.layout().shape().num_elements() == hidden * vocab
        };
        let mut dense = match grads.remove::<FlexCpu>(&table) {
            Some(registered) if whole(&registered) => registered,
            // Summed by `register` below, as Burn would.
            Some(registered) => {
                grads.register::<FlexCpu>(node.id, registered);
                FlexTensor::from_data(TensorData::new(vec![0f32; hidden * vocab], [hidden, vocab]))
            }
            None => {
                FlexTensor::from_data(TensorData::new(vec![0f32; hidden * vocab], [hidden, vocab]))
            }
        };
        let g = &grad.storage::<f32>()[..ids.len() * hidden];
        let values = dense.storage_mut::<f32>();
        for (t, &id) in ids.iter().enumerate() {
            for (h, &gradient) in g[t * hidden..(t + 1) * hidden].iter().enumerate() {
                values[h * vocab + id] += gradient;
            }
        }
        grads.register::<FlexCpu>(node.id, dense);
    }
}

fn recorded_rms_norm<const D: usize>(
    x: Tensor<FlexAutodiff, D>,
    weight: Tensor<FlexAutodiff, 1>,
    eps: f64,
) -> Option<Tensor<FlexAutodiff, D>> {
    let dims = x.dims();
    let (x, weight) = (
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
    );
    let xs = contiguous_f32(x.primitive.clone())?;
    let ws = contiguous_f32(weight.primitive.clone())?;
    let count = dims.iter().product::<usize>();
    let width = dims[D - 1];
    let normed = rowwise::rms_norm(
        &xs.storage::<f32>()[..count],
        &ws.storage::<f32>()[..width],
        eps as f32,
    );
    let output = FlexTensor::from_data(TensorData::new(normed, dims));
    let output = record(
        RmsNormBackward,
        [&x, &weight],
        (xs, ws, eps as f32, dims.to_vec()),
        output,
    );
    Some(Tensor::from_primitive(TensorPrimitive::Float(output)))
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<FlexCpu, 2> for RmsNormBackward {
    /// x and the weight (contiguous f32), eps and x's dimensions.
    type State = (FlexTensor, FlexTensor, f32, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, weight, eps, dims) = ops.state;
        let count = dims.iter().product::<usize>();
        let width = dims[dims.len() - 1];
        let grad = contiguous_f32(grads.consume::<FlexCpu>(&ops.node)).expect("an f32 gradient");
        let (dx, dw) = rowwise::rms_norm_backward(
            &x.storage::<f32>()[..count],
            &weight.storage::<f32>()[..width],
            eps,
            &grad.storage::<f32>()[..count],
        );
        let [x_node, weight_node] = ops.parents;
        if let Some(node) = x_node {
            let dx = FlexTensor::from_data(TensorData::new(dx, dims));
            grads.register::<FlexCpu>(node.id, dx);
        }
        if let Some(node) = weight_node {
            let dw = FlexTensor::from_data(TensorData::new(dw, [width]));
            grads.register::<FlexCpu>(node.id, dw);
        }
    }
}

/// RoPE of a recorded `x`; the tables must be constants (they are: built from positions).
fn recorded_rope(
    x: Tensor<FlexAutodiff, 4>,
    cos: Tensor<FlexAutodiff, 4>,
    signed_sin: Tensor<FlexAutodiff, 4>,
) -> Option<Tensor<FlexAutodiff, 4>> {
    let dims = x.dims();
    let [batch, seq, _, head_dim] = dims;
    if cos.dims() != [batch, seq, 1, head_dim] || signed_sin.dims() != cos.dims() {
        return None;
    }
    let x = x.into_primitive().tensor();
    let (cos, sin) = (
        cos.into_primitive().tensor(),
        signed_sin.into_primitive().tensor(),
    );
    if !cos.node.requirement.is_none() || !sin.node.requirement.is_none() {
        return None;
    }
    let xs = contiguous_f32(x.primitive.clone())?;
    let cs = contiguous_f32(cos.primitive)?;
    let ss = contiguous_f32(sin.primitive)?;
    let table = batch * seq * head_dim;
    let rotated = rowwise::rope(
        &xs.storage::<f32>()[..table * dims[2]],
        head_dim,
        &cs.storage::<f32>()[..table],
        &ss.storage::<f32>()[..table],
    );
    let output = FlexTensor::from_data(TensorData::new(rotated, dims));
    let output = record(RopeBackward, [&x], (cs, ss, dims), output);
    Some(Tensor::from_primitive(TensorPrimitive::Float(output)))
}

#[derive(Debug)]
struct RopeBackward;

impl Backward<FlexCpu, 1> for RopeBackward {
    /// The cos and signed sin tables and x's dimensions.
    type State = (FlexTensor, FlexTensor, [usize; 4]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (cos, sin, dims) = ops.state;
        unary::<FlexCpu, _>(ops.parents, ops.node, grads, |grad| {
            let [batch, seq, heads, head_dim] = dims;
            let table = batch * seq * head_dim;
            let half = head_dim / 2;
            // out₁ = x₁ c₁ + x₂ s₁ and out₂ = x₂ c₂ + x₁ s₂ (per position, s signed), so
            // dx₁ = g₁ c₁ + g₂ s₂ and dx₂ = g₂ c₂ + g₁ s₁: RoPE of g with s's halves swapped.
            let swapped: Vec<f32> = sin.storage::<f32>()[..table]
                .chunks_exact(head_dim)
                .flat_map(|s| s[half..].iter().chain(&s[..half]).copied())
                .collect();
            let grad = contiguous_f32(grad).expect("an f32 gradient");
            let dx = rowwise::rope(
                &grad.storage::<f32>()[..table * heads],
                head_dim,
                &cos.storage::<f32>()[..table],
                &swapped,
            );
            FlexTensor::from_data(TensorData::new(dx, dims))
        });
    }
}

fn recorded_silu_times<const D: usize>(
    gate: Tensor<FlexAutodiff, D>,
    up: Tensor<FlexAutodiff, D>,
) -> Option<Tensor<FlexAutodiff, D>> {
    let dims = gate.dims();
    if up.dims() != dims {
        return None;
    }
    let (gate, up) = (gate.into_primitive().tensor(), up.into_primitive().tensor());
    let gs = contiguous_f32(gate.primitive.clone())?;
    let us = contiguous_f32(up.primitive.clone())?;
    let count = dims.iter().product::<usize>();
    let product = rowwise::silu_times(&gs.storage::<f32>()[..count], &us.storage::<f32>()[..count]);
    let output = FlexTensor::from_data(TensorData::new(product, dims));
    let output = record(
        SiluTimesBackward,
        [&gate, &up],
        (gs, us, dims.to_vec()),
        output,
    );
    Some(Tensor::from_primitive(TensorPrimitive::Float(output)))
}

#[derive(Debug)]
struct SiluTimesBackward;

impl Backward<FlexCpu, 2> for SiluTimesBackward {
    /// gate, up (contiguous f32) and their dimensions.
    type State = (FlexTensor, FlexTensor, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (gate, up, dims) = ops.state;
        let count = dims.iter().product::<usize>();
        let grad = contiguous_f32(grads.consume::<FlexCpu>(&ops.node)).expect("an f32 gradient");
        let (d_gate, d_up) = rowwise::silu_times_backward(
            &gate.storage::<f32>()[..count],
            &up.storage::<f32>()[..count],
            &grad.storage::<f32>()[..count],
        );
        let [gate_node, up_node] = ops.parents;
        for (node, gradient) in [(gate_node, d_gate), (up_node, d_up)] {
            if let Some(node) = node {
                let gradient = FlexTensor::from_data(TensorData::new(gradient, dims.clone()));
                grads.register::<FlexCpu>(node.id, gradient);
            }
        }
    }
}

fn recorded_masked_softmax(
    scores: Tensor<FlexAutodiff, 4>,
    mask: FlexMask,
    layout: AttentionRows,
    scale: f32,
) -> Option<Tensor<FlexAutodiff, 4>> {
    let dims = scores.dims();
    let scores = scores.into_primitive().tensor();
    let values = contiguous_f32(scores.primitive.clone())?;
    let count = dims.iter().product::<usize>();
    let probabilities = rowwise::masked_softmax(
        &values.storage::<f32>()[..count],
        layout,
        mask.bytes(),
        scale,
    );
    let output = FlexTensor::from_data(TensorData::new(probabilities, dims));
    let output = record(
        MaskedSoftmaxBackward,
        [&scores],
        (output.clone(), mask, layout, scale),
        output,
    );
    Some(Tensor::from_primitive(TensorPrimitive::Float(output)))
}

#[derive(Debug)]
struct MaskedSoftmaxBackward;

impl Backward<FlexCpu, 1> for MaskedSoftmaxBackward {
    /// The probabilities (the forward output), the contiguous mask, its layout and the scale.
    type State = (FlexTensor, FlexMask, AttentionRows, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (probabilities, mask, layout, scale) = ops.state;
        unary::<FlexCpu, _>(ops.parents, ops.node, grads, |grad| {
            let dims = probabilities.layout().shape().clone();
            let count = probabilities.layout().shape().num_elements();
            let grad = contiguous_f32(grad).expect("an f32 gradient");
            let scores_gradient = rowwise::masked_softmax_backward(
                &probabilities.storage::<f32>()[..count],
                &grad.storage::<f32>()[..count],
                layout,
                mask.bytes(),
                scale,
            );
            FlexTensor::from_data(TensorData::new(scores_gradient, dims))
        });
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::silu;
    use burn::tensor::{Distribution, TensorData};

    use super::*;

    fn largest_difference<const D: usize>(a: Tensor<FlexCpu, D>, b: Tensor<FlexCpu, D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn fused_steps_equal_the_composed_operations() {
        let device = Default::default();
        // A strided view (heads moved to axis 1), as the q/k norms of Qwen3 would not see, but
        // as any caller may pass.
        let x =
            Tensor::<FlexCpu, 4>::random([2, 5, 3, 37], Distribution::Normal(0.0, 3.0), &device)
                .swap_dims(1, 2);
        let weight = Tensor::<FlexCpu, 1>::random([37], Distribution::Normal(1.0, 0.2), &device);
        let fused = rms_norm(&x, &weight, 1e-6).expect("flex");
        let rms = (x.clone().square().mean_dim(3) + 1e-6).sqrt();
        let composed = x.clone() * (Tensor::ones_like(&rms) / rms) * weight.unsqueeze::<4>();
        let difference = largest_difference(fused, composed);
        assert!(difference <= 2e-6, "rms_norm differs by {difference}");

        // Gates far past where exp overflows f32, both signs.
        let gate =
            Tensor::<FlexCpu, 3>::random([3, 7, 300], Distribution::Normal(0.0, 60.0), &device);
        let up = Tensor::<FlexCpu, 3>::random([3, 7, 300], Distribution::Normal(0.0, 1.0), &device);
        let fused = silu_times(&gate, &up).expect("flex");
        let composed = silu(gate) * up.clone();
        let difference = largest_difference(fused, composed);
        let scale: f32 = up.abs().max().into_scalar() * 200.0;
        assert!(
            difference <= 2e-7 * scale,
            "silu(gate) * up differs by {difference}"
        );

        let x =
            Tensor::<FlexCpu, 4>::random([2, 3, 4, 16], Distribution::Normal(0.0, 2.0), &device);
        let angles =
            Tensor::<FlexCpu, 4>::random([2, 3, 1, 16], Distribution::Normal(0.0, 3.0), &device);
        let (cos, sin) = (angles.clone().cos(), angles.sin());
        let fused = rope(&x, &cos, &sin).expect("flex");
        let swapped = Tensor::cat(
            vec![x.clone().narrow(3, 8, 8), x.clone().narrow(3, 0, 8)],
            3,
        );
        let composed = x * cos + swapped * sin;
        assert_eq!(largest_difference(fused, composed), 0.0, "rope");

        // Two kv heads, each serving a group of 3 query heads over 4 positions; batch row 1 has
        // a query that sees no key.
        let (seq, keys) = (4, 5);
        let scores = Tensor::<FlexCpu, 4>::random(
            [2, 2, 3 * seq, keys],
            Distribution::Normal(0.0, 4.0),
            &device,
        );
        let blocked: Vec<bool> = (0..2 * seq * keys)
            .map(|i| {
                let (b, t, s) = (i / (seq * keys), i / keys % seq, i % keys);
                s > t + 1 || (b == 1 && t == 2)
            })
            .collect();
        let blocked = Tensor::<FlexCpu, 4, Bool>::from_data(
            TensorData::new(blocked, [2, 1, seq, keys]),
            &device,
        );
        let fused = masked_softmax(&scores, 0.125, &blocked).expect("flex");
        let expanded = blocked
            .unsqueeze_dim::<5>(2)
            .expand([2, 1, 3, seq, keys])
            .reshape([2, 1, 3 * seq, keys])
            .expand([2, 2, 3 * seq, keys]);
        let composed =
            burn::tensor::activation::softmax((scores * 0.125).mask_fill(expanded, f32::MIN), 3);
        let difference = largest_difference(fused.clone(), composed);
        assert!(difference <= 1e-6, "masked softmax differs by {difference}");
        let uniform = fused.narrow(0, 1, 1).narrow(2, 2, 1).narrow(1, 0, 1);
        let expected = Tensor::<FlexCpu, 4>::full([1, 1, 1, keys], 1.0 / keys as f32, &device);
        assert!(
            largest_difference(uniform, expected) <= 1e-7,
            "a row that sees no key"
        );
    }

    /// Values and gradients of the recorded fused steps against the composed operations'
    /// under the same autodiff backend.
    #[test]
    fn recorded_steps_give_the_composed_gradients() {
        type A = FlexAutodiff;
        let device = Default::default();
        let close = |what: &str, a: Tensor<A, 3>, b: Tensor<A, 3>, tolerance: f32| {
            let (a, b) = (a.inner(), b.inner());
            let scale: f32 = b.clone().abs().max().into_scalar().max(1e-6);
            let difference = largest_difference(a, b);
            assert!(
                difference <= tolerance * scale,
                "{what} differs by {difference} (largest {scale})"
            );
        };

        let random = |dims: [usize; 3], std: f64| {
            Tensor::<A, 3>::random(dims, Distribution::Normal(0.0, std), &device)
        };
        let (gate, up, weights) = (
            random([2, 5, 300], 4.0).require_grad(),
            random([2, 5, 300], 1.0).require_grad(),
            random([2, 5, 300], 1.0),
        );
        let fused = silu_times(&gate, &up).expect("flex under autodiff");
        let composed = silu(gate.clone()) * up.clone();
        close("silu(gate) * up", fused.clone(), composed.clone(), 1e-6);
        let fused_grads = (fused * weights.clone()).sum().backward();
        let composed_grads = (composed * weights).sum().backward();
        for (what, x) in [("d gate", &gate), ("d up", &up)] {
            let a = Tensor::<A, 3>::from_inner(x.grad(&fused_grads).expect(what));
            let b = Tensor::<A, 3>::from_inner(x.grad(&composed_grads).expect(what));
            close(what, a, b, 1e-6);
        }

        // RMSNorm on rows of 37 (a partial block of sixteen), 13 rows (a partial block of 8).
        let (x, norm_weight, weights) = (
            random([1, 13, 37], 3.0).require_grad(),
            Tensor::<A, 1>::random([37], Distribution::Normal(1.0, 0.2), &device).require_grad(),
            random([1, 13, 37], 1.0),
        );
        let fused = rms_norm(&x, &norm_weight, 1e-6).expect("flex under autodiff");
        let rms = (x.clone().square().mean_dim(2) + 1e-6).sqrt();
        let composed =
            x.clone() * (Tensor::ones_like(&rms) / rms) * norm_weight.clone().unsqueeze::<3>();
        close("rms_norm", fused.clone(), composed.clone(), 1e-6);
        let fused_grads = (fused * weights.clone()).sum().backward();
        let composed_grads = (composed * weights).sum().backward();
        let (a, b) = (
            x.grad(&fused_grads).unwrap(),
            x.grad(&composed_grads).unwrap(),
        );
        close("d x", Tensor::from_inner(a), Tensor::from_inner(b), 2e-6);
        let (a, b) = (
            norm_weight.grad(&fused_grads).unwrap(),
            norm_weight.grad(&composed_grads).unwrap(),
        );
        let as3 = |t: Tensor<FlexCpu, 1>| Tensor::<A, 3>::from_inner(t.reshape([1, 1, 37]));
        close("d weight", as3(a), as3(b), 2e-6);

        // RoPE: x [2, 3, 4 heads, 16], tables per position.
        let x = Tensor::<A, 4>::random([2, 3, 4, 16], Distribution::Normal(0.0, 2.0), &device)
            .require_grad();
        let angles = Tensor::<A, 4>::random([2, 3, 1, 16], Distribution::Normal(0.0, 3.0), &device);
        let (cos, sin) = (angles.clone().cos(), angles.sin());
        let weights =
            Tensor::<A, 4>::random([2, 3, 4, 16], Distribution::Normal(0.0, 1.0), &device);
        let fused = rope(&x, &cos, &sin).expect("flex under autodiff");
        let swapped = Tensor::cat(
            vec![x.clone().narrow(3, 8, 8), x.clone().narrow(3, 0, 8)],
            3,
        );
        let composed = x.clone() * cos + swapped * sin;
        let flat = |t: Tensor<A, 4>| t.reshape([6, 4, 16]);
        close("rope", flat(fused.clone()), flat(composed.clone()), 1e-6);
        let a = x.grad(&(fused * weights.clone()).sum().backward()).unwrap();
        let b = x.grad(&(composed * weights).sum().backward()).unwrap();
        let unflat = |t: Tensor<FlexCpu, 4>| flat(Tensor::<A, 4>::from_inner(t));
        close("d rope", unflat(a), unflat(b), 1e-6);

        // Two kv heads, each serving 3 query heads over 4 positions; batch row 1 has a query
        // that sees no key.
        let (seq, keys) = (4, 5);
        let scores = Tensor::<A, 4>::random(
            [2, 2, 3 * seq, keys],
            Distribution::Normal(0.0, 4.0),
            &device,
        )
        .require_grad();
        let blocked: Vec<bool> = (0..2 * seq * keys)
            .map(|i| {
                let (b, t, s) = (i / (seq * keys), i / keys % seq, i % keys);
                s > t + 1 || (b == 1 && t == 2)
            })
            .collect();
        let blocked =
            Tensor::<A, 4, Bool>::from_data(TensorData::new(blocked, [2, 1, seq, keys]), &device);
        let weights = Tensor::<A, 4>::random(
            [2, 2, 3 * seq, keys],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let fused = masked_softmax(&scores, 0.125, &blocked).expect("flex under autodiff");
        let expanded = blocked
            .unsqueeze_dim::<5>(2)
            .expand([2, 1, 3, seq, keys])
            .reshape([2, 1, 3 * seq, keys])
            .expand([2, 2, 3 * seq, keys]);
        let composed = burn::tensor::activation::softmax(
            (scores.clone() * 0.125).mask_fill(expanded, f32::MIN),
            3,
        );
        let flat = |t: Tensor<A, 4>| t.reshape([2, 2 * 3 * seq, keys]);
        close(
            "masked softmax",
            flat(fused.clone()),
            flat(composed.clone()),
            1e-6,
        );
        let a = scores
            .grad(&(fused * weights.clone()).sum().backward())
            .unwrap();
        let b = scores.grad(&(composed * weights).sum().backward()).unwrap();
        let unflat = |t: Tensor<FlexCpu, 4>| flat(Tensor::<A, 4>::from_inner(t));
        close("d scores", unflat(a), unflat(b), 1e-6);
    }

    /// The lookup of a `[hidden, vocab]` table, alone and tied to an lm_head product (whose
    /// gradient the lookup's backward step adds into), with a repeated id: Burn's `select`
    /// values and gradients (the same sums; a repeated id's may differ in the last bit).
    #[test]
    fn embedding_lookup_gives_select_and_its_gradients() {
        type A = FlexAutodiff;
        let device = Default::default();
        let (hidden, vocab) = (24, 70);
        let ids = vec![3, 69, 0, 3, 41];
        let table =
            Tensor::<A, 2>::random([hidden, vocab], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
        let id_tensor = Tensor::<A, 1, burn::tensor::Int>::from_data(
            TensorData::new(
                ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [ids.len()],
            ),
            &device,
        );
        let weights =
            Tensor::<A, 2>::random([ids.len(), hidden], Distribution::Normal(0.0, 1.0), &device);
        let head_weights =
            Tensor::<A, 2>::random([ids.len(), vocab], Distribution::Normal(0.0, 1.0), &device);
        let looked_up = embedding_columns(&table, || ids.clone()).expect("flex under autodiff");
        let selected = table.clone().select(1, id_tensor.clone()).transpose();
        assert_eq!(
            looked_up.clone().into_data().to_vec::<f32>().unwrap(),
            selected.clone().into_data().to_vec::<f32>().unwrap()
        );
        for tied in [false, true] {
            // A backward pass consumes its graph: each pass records its own.
            let looked_up = embedding_columns(&table, || ids.clone()).expect("flex");
            let selected = table.clone().select(1, id_tensor.clone()).transpose();
            let loss = |rows: Tensor<A, 2>| {
                let lookup = (rows.clone() * weights.clone()).sum();
                match tied {
                    true => lookup + (rows.matmul(table.clone()) * head_weights.clone()).sum(),
                    false => lookup,
                }
            };
            let ours = table.grad(&loss(looked_up.clone()).backward()).unwrap();
            let burns = table.grad(&loss(selected.clone()).backward()).unwrap();
            let scale: f32 = burns.clone().abs().max().into_scalar();
            let difference = largest_difference(ours, burns);
            assert!(
                difference <= 1e-6 * scale,
                "tied {tied}: d table differs by {difference}"
            );
        }
        let plain = table.inner();
        let looked_up = embedding_columns(&plain, || ids.clone()).expect("flex");
        let selected = plain.select(1, id_tensor.inner()).transpose();
        assert_eq!(largest_difference(looked_up, selected), 0.0);
    }

    #[test]
    fn other_backends_take_the_composed_operations() {
        let device = Default::default();
        let x = Tensor::<crate::backend::NdArrayCpu, 2>::ones([2, 4], &device);
        let weight = Tensor::<crate::backend::NdArrayCpu, 1>::ones([4], &device);
        assert!(rms_norm(&x, &weight, 1e-6).is_none());
        assert!(silu_times(&x, &x).is_none());
    }
}
