//! Fused element-wise steps of the forward pass for burn-flex without autodiff (the teacher,
//! evaluation, generation): each reads its inputs once and writes its output once, where the
//! composed Burn operations make several passes and iterate broadcast operands element by
//! element through strided indices. Each returns `None` for any other backend (autodiff
//! included, whose backward pass needs the composed operations), which then runs those.
//!
//! Same formulas, same f32 arithmetic, only the order of a row's sum of squares may differ from
//! burn-flex's reduction: the parity tests hold both paths to transformers.

use std::any::TypeId;

use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use crate::backend::FlexCpu;
use crate::weight::same_type;

/// The values of `t` as one contiguous f32 run, when `B` is burn-flex.
fn flex_values<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<FlexTensor> {
    if TypeId::of::<B>() != TypeId::of::<FlexCpu>() {
        return None;
    }
    let t: Tensor<FlexCpu, D> = same_type(t.clone());
    let t = t.into_primitive().tensor();
    let t = match t.is_contiguous() && t.layout().start_offset() == 0 {
        true => t,
        false => t.to_contiguous(),
    };
    (t.dtype() == DType::F32 && t.layout().start_offset() == 0).then_some(t)
}

fn to_tensor<B: Backend, const D: usize>(values: Vec<f32>, dims: [usize; D]) -> Tensor<B, D> {
    let t = Tensor::<FlexCpu, D>::from_data(TensorData::new(values, dims), &Default::default());
    same_type(t)
}

/// RMSNorm over the last axis: `x / sqrt(mean(x²) + eps) * weight`.
pub fn rms_norm<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, D>> {
    let (xs, ws) = (flex_values(x)?, flex_values(weight)?);
    let dims = x.dims();
    let width = dims[D - 1];
    let count = dims.iter().product::<usize>();
    let (xs, ws) = (&xs.storage::<f32>()[..count], &ws.storage::<f32>()[..width]);
    let eps = eps as f32;
    let mut out = vec![0f32; count];
    out.par_chunks_mut(width)
        .zip(xs.par_chunks(width))
        .with_min_len(8)
        .for_each(|(out, row)| {
            // Sixteen running sums, so the loop vectorizes.
            let mut lanes = [0f32; 16];
            let mut chunks = row.chunks_exact(16);
            for chunk in &mut chunks {
                for (lane, &v) in lanes.iter_mut().zip(chunk) {
                    *lane += v * v;
                }
            }
            let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
            let mean = (lanes.iter().sum::<f32>() + tail) / width as f32;
            let inverse_rms = 1.0 / (mean + eps).sqrt();
            for ((o, &v), &g) in out.iter_mut().zip(row).zip(ws) {
                *o = v * inverse_rms * g;
            }
        });
    Some(to_tensor(out, dims))
}

/// The MLP's activation `silu(gate) * up`, with silu(g) = g * sigmoid(g) computed as burn-flex
/// computes sigmoid (no overflow for either sign).
pub fn silu_times<B: Backend, const D: usize>(
    gate: &Tensor<B, D>,
    up: &Tensor<B, D>,
) -> Option<Tensor<B, D>> {
    let (gs, us) = (flex_values(gate)?, flex_values(up)?);
    let dims = gate.dims();
    if up.dims() != dims {
        return None;
    }
    let count = dims.iter().product::<usize>();
    let (gs, us) = (&gs.storage::<f32>()[..count], &us.storage::<f32>()[..count]);
    let mut out = vec![0f32; count];
    out.par_chunks_mut(4096)
        .zip(gs.par_chunks(4096).zip(us.par_chunks(4096)))
        .for_each(|(out, (gs, us))| {
            for ((o, &g), &u) in out.iter_mut().zip(gs).zip(us) {
                let sigmoid = match g >= 0.0 {
                    true => 1.0 / (1.0 + (-g).exp()),
                    false => {
                        let e = g.exp();
                        e / (1.0 + e)
                    }
                };
                *o = g * sigmoid * u;
            }
        });
    Some(to_tensor(out, dims))
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::silu;
    use burn::tensor::Distribution;

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
        let composed = silu(gate) * up;
        assert_eq!(largest_difference(fused, composed), 0.0, "silu(gate) * up");
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
