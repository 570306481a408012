//! Whole-model gradient operations the optimizer does not provide: the global L2 norm (what
//! torch's `clip_grad_norm_` clips; Burn's own clipping works per parameter) and scaling every
//! gradient by one factor (clipping, and averaging accumulated micro-batches).

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

struct SquaredNorm<'a> {
    gradients: &'a GradientsParams,
    sum: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(gradient) = self.gradients.get::<B::InnerBackend, D>(param.id) {
            self.sum += gradient.square().sum().into_scalar().elem_f64();
        }
    }
}

trait ElemF64 {
    fn elem_f64(self) -> f64;
}

impl<E: burn::tensor::ElementConversion> ElemF64 for E {
    fn elem_f64(self) -> f64 {
        self.elem::<f64>()
    }
}

/// sqrt(sum of squares of every gradient of `module`).
pub fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    gradients: &GradientsParams,
) -> f64 {
    let mut visitor = SquaredNorm {
        gradients,
        sum: 0.0,
    };
    module.visit(&mut visitor);
    visitor.sum.sqrt()
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
