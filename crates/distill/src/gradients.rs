//! Whole-model gradient operations the optimizer does not provide: the global L2 norm (what
//! torch's `clip_grad_norm_` clips; Burn's own clipping works per parameter) and scaling every
//! gradient by one factor (clipping, and averaging accumulated micro-batches).

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use qwen2::backend::{flex_f32_whole, from_flex_values};
use rayon::prelude::*;

/// Collects each gradient's sum of squares as a one-element tensor, so the whole norm costs
/// one read from the device instead of one per parameter (a sync each on a GPU).
struct SquaredNorms<'a, B: AutodiffBackend> {
    gradients: &'a GradientsParams,
    sums: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorms<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(gradient) = self.gradients.get::<B::InnerBackend, D>(param.id) {
            // On burn-flex, read in place: `square()` would write a copy of every gradient.
            let sum = match flex_f32_whole(gradient.clone()) {
                Some(values) => {
                    let count = gradient.dims().iter().product::<usize>();
                    let sum = sum_of_squares(&values.storage::<f32>()[..count]) as f32;
                    from_flex_values(vec![sum], [1])
                }
                None => gradient.square().sum(),
            };
            self.sums.push(sum);
        }
    }
}

/// `sum(x²)` in sixteen f32 lanes per block of 4096, the blocks' sums added in f64.
fn sum_of_squares(values: &[f32]) -> f64 {
    values
        .par_chunks(4096)
        .map(|block| {
            let mut lanes = [0f32; 16];
            let mut chunks = block.chunks_exact(16);
            for chunk in &mut chunks {
                for (lane, &v) in lanes.iter_mut().zip(chunk) {
                    *lane += v * v;
                }
            }
            let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
            lanes.iter().map(|&v| v as f64).sum::<f64>() + tail as f64
        })
        // Collected in order and added in order: the same sum on every run and thread count.
        .collect::<Vec<f64>>()
        .iter()
        .sum()
}

/// The L2 norm of all gradients together. Each tensor's sum of squares is taken on the device
/// in f32 (on burn-flex in blocks added in f64); the sums are added in f64, in parameter order.
pub fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    gradients: &GradientsParams,
) -> f64 {
    let mut visitor = SquaredNorms::<B> {
        gradients,
        sums: Vec::new(),
    };
    module.visit(&mut visitor);
    if visitor.sums.is_empty() {
        return 0.0;
    }
    let sums = Tensor::cat(visitor.sums, 0)
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("float gradient sums");
    sums.iter().sum::<f64>().sqrt()
}

struct Scale<'a> {
    gradients: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(gradient) = self.gradients.remove::<B::InnerBackend, D>(param.id) {
            self.gradients.register(param.id, gradient * self.factor);
        }
    }
}

/// Multiplies every gradient of `module` by `factor`.
pub fn scale<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    gradients: &mut GradientsParams,
    factor: f64,
) {
    if factor != 1.0 {
        module.visit(&mut Scale { gradients, factor });
    }
}
