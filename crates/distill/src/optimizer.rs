//! AdamW as transformers' Trainer sets it up: torch's decoupled weight decay
//! (`p <- p - lr * wd * p`, then the Adam step), applied to matrices only. The Trainer leaves
//! biases and normalisation weights undecayed; in Qwen2 those are exactly the 1-D parameters,
//! so the parameters form two groups, each with its own Burn AdamW (one with decay, one
//! without). Each group's moments are saved in its own file of a checkpoint.
//!
//! On burn-flex each parameter's step is one fused pass in place ([`FusedAdamW`]), bit for bit
//! Burn's AdamW, whose ten-odd element-wise passes took a quarter of a 0.5B update; the state
//! is Burn's, so checkpoints are the same files.

use std::any::TypeId;
use std::path::Path;

use burn::backend::flex::FlexTensor;
use burn::module::{ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{
    AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, GradientsParams, LearningRate,
    Optimizer, SimpleOptimizer,
};
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};
use matmul::adamw::{adamw_step, AdamWStep};
use qwen2::backend::{flex_f32, from_flex, FlexCpu};

use crate::gradients::{global_norm, scale};
use crate::objective::Student;
use crate::recipe::Training;

type Adam<B> = OptimizerAdaptor<FusedAdamW, Student<B>, B>;

/// The two parameter groups' optimizers.
pub struct GroupedAdamW<B: AutodiffBackend> {
    decayed: Adam<B>,
    undecayed: Adam<B>,
}

fn config(training: &Training, weight_decay: f64) -> FusedAdamW {
    let config = AdamWConfig::new()
        .with_beta_1(training.adam_beta1 as f32)
        .with_beta_2(training.adam_beta2 as f32)
        .with_epsilon(training.adam_epsilon as f32)
        .with_weight_decay(weight_decay as f32);
    FusedAdamW {
        burn: config.build(),
        beta_1: training.adam_beta1 as f32,
        beta_2: training.adam_beta2 as f32,
        epsilon: training.adam_epsilon as f32,
        weight_decay: weight_decay as f32,
    }
}

impl<B: AutodiffBackend> GroupedAdamW<B> {
    pub fn new(training: &Training) -> Self {
        Self {
            decayed: OptimizerAdaptor::from(config(training, training.weight_decay)),
            undecayed: OptimizerAdaptor::from(config(training, 0.0)),
        }
    }

    /// One update of `student` with learning rate `lr`.
    pub fn step(&mut self, lr: f64, student: Student<B>, mut grads: GradientsParams) -> Student<B> {
        let mut split = SplitVectors {
            from: &mut grads,
            vectors: GradientsParams::new(),
        };
        burn::module::Module::visit(&student, &mut split);
        let vectors = split.vectors;
        let student = self.decayed.step(lr, student, grads);
        self.undecayed.step(lr, student, vectors)
    }

    /// The update once the gradients of `micro_batches` micro-batches are summed in `grads`:
    /// their mean, clipped by global norm to `max_grad_norm` (0: no clipping) as torch's
    /// `clip_grad_norm_`, then one step at `lr`. Returns the student and the norm before
    /// clipping. The trainer and `bench distill-step` both update through this.
    pub fn apply(
        &mut self,
        student: Student<B>,
        mut grads: GradientsParams,
        micro_batches: usize,
        max_grad_norm: f64,
        lr: f64,
    ) -> (Student<B>, f64) {
        scale(&student, &mut grads, 1.0 / micro_batches as f64);
        let grad_norm = global_norm(&student, &grads);
        if max_grad_norm > 0.0 && grad_norm > max_grad_norm {
            scale(&student, &mut grads, max_grad_norm / (grad_norm + 1e-6));
        }
        (self.step(lr, student, grads), grad_norm)
    }

    /// Writes the two groups' states to the files `decayed` and `undecayed` (stems: the
    /// recorder adds `.bin`); the checkpoint names them.
    pub fn save(
        &self,
        decayed: &Path,
        undecayed: &Path,
    ) -> Result<(), burn::record::RecorderError> {
        let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
        recorder.record(self.decayed.to_record(), decayed.to_path_buf())?;
        recorder.record(self.undecayed.to_record(), undecayed.to_path_buf())?;
        Ok(())
    }

    /// Restores the two groups' states written by [`GroupedAdamW::save`] (the student's
    /// parameters must carry the ids they had when they were written: see
    /// `checkpoint::PositionalIds`).
    pub fn load(
        self,
        decayed: &Path,
        undecayed: &Path,
        device: &B::Device,
    ) -> Result<Self, burn::record::RecorderError> {
        let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
        let decayed = recorder.load(decayed.to_path_buf(), device)?;
        let undecayed = recorder.load(undecayed.to_path_buf(), device)?;
        Ok(Self {
            decayed: self.decayed.load_record(decayed),
            undecayed: self.undecayed.load_record(undecayed),
        })
    }
}

/// Moves the gradients of 1-D parameters (biases, norm weights) into `vectors`.
struct SplitVectors<'a> {
    from: &'a mut GradientsParams,
    vectors: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SplitVectors<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if D == 1 {
            if let Some(gradient) = self.from.remove::<B::InnerBackend, D>(param.id) {
                self.vectors.register(param.id, gradient);
            }
        }
    }
}

/// Burn's AdamW (no AMSGrad, no cautious decay, as [`config`] sets it up) with each step on
/// burn-flex done by `matmul::adamw` in one pass, in place where the tensors are not shared.
/// Other backends run Burn's own step.
#[derive(Clone)]
pub struct FusedAdamW {
    burn: AdamW,
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
}

impl<B: Backend> SimpleOptimizer<B> for FusedAdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        if TypeId::of::<B>() != TypeId::of::<FlexCpu>() || tensor.dtype() != DType::F32 {
            return self.burn.step(lr, tensor, grad, state);
        }
        let dims = tensor.dims();
        let (time, moments) = match state {
            Some(state) => (
                state.momentum.time + 1,
                Some((state.momentum.moment_1, state.momentum.moment_2)),
            ),
            None => (1, None),
        };
        let mut param = owned_values(tensor);
        let grad = owned_values(grad);
        let (mut moment_1, mut moment_2) = match moments {
            Some((m, v)) => (owned_values(m), owned_values(v)),
            // Written whole on the first step.
            None => (zeros(&dims), zeros(&dims)),
        };
        let len = dims.iter().product::<usize>();
        let step = AdamWStep {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            time: time as i32,
            lr,
            weight_decay: self.weight_decay,
        };
        adamw_step(
            &step,
            &mut param.storage_mut::<f32>()[..len],
            &grad.storage::<f32>()[..len],
            &mut moment_1.storage_mut::<f32>()[..len],
            &mut moment_2.storage_mut::<f32>()[..len],
        );
        let back = from_flex::<B, D>;
        let momentum = AdaptiveMomentumState {
            time,
            moment_1: back(moment_1),
            moment_2: back(moment_2),
            max_moment_2: None,
        };
        (back(param), Some(AdamWState { momentum }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        <AdamW as SimpleOptimizer<B>>::to_device(state, device)
    }
}

/// The burn-flex tensor behind `tensor` (checked to be one by the caller).
fn owned_values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> FlexTensor {
    flex_f32(tensor).expect("a burn-flex f32 tensor")
}

fn zeros<const D: usize>(dims: &[usize; D]) -> FlexTensor {
    let len = dims.iter().product::<usize>();
    FlexTensor::from_data(TensorData::new(vec![0f32; len], *dims))
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    /// Three steps of each optimizer on the same values, with and without weight decay, and
    /// with a shared parameter (the fused step must not write through to the other owner).
    #[test]
    fn fused_steps_equal_burns_adamw_bit_for_bit() {
        let device = Default::default();
        for weight_decay in [0.0f32, 0.1] {
            let config = AdamWConfig::new()
                .with_beta_1(0.9)
                .with_beta_2(0.95)
                .with_epsilon(1e-8)
                .with_weight_decay(weight_decay);
            let fused = FusedAdamW {
                burn: config.build(),
                beta_1: 0.9,
                beta_2: 0.95,
                epsilon: 1e-8,
                weight_decay,
            };
            let burn = config.build();
            let start =
                Tensor::<FlexCpu, 2>::random([37, 300], Distribution::Normal(0.0, 1.0), &device);
            let kept = start.clone();
            let before = kept.to_data().to_vec::<f32>().unwrap();
            let (mut a, mut b) = (start.clone(), start);
            let (mut state_a, mut state_b) = (None, None);
            for step in 0..3 {
                let grad = Tensor::<FlexCpu, 2>::random(
                    [37, 300],
                    Distribution::Normal(0.0, 0.1 + step as f64),
                    &device,
                );
                let lr = 1e-3 * (step + 1) as f64;
                (a, state_a) = fused.step(lr, a, grad.clone(), state_a);
                (b, state_b) = burn.step(lr, b, grad, state_b);
                let bits = |t: &Tensor<FlexCpu, 2>| -> Vec<u32> {
                    t.to_data()
                        .to_vec::<f32>()
                        .unwrap()
                        .into_iter()
                        .map(f32::to_bits)
                        .collect()
                };
                assert_eq!(
                    bits(&a),
                    bits(&b),
                    "parameter, step {step}, decay {weight_decay}"
                );
                let (sa, sb) = (state_a.as_ref().unwrap(), state_b.as_ref().unwrap());
                assert_eq!(sa.momentum.time, sb.momentum.time);
                assert_eq!(bits(&sa.momentum.moment_1), bits(&sb.momentum.moment_1));
                assert_eq!(bits(&sa.momentum.moment_2), bits(&sb.momentum.moment_2));
            }
            // The starting values, shared with `a` before its first step, are untouched.
            assert_eq!(kept.to_data().to_vec::<f32>().unwrap(), before);
        }
    }
}
