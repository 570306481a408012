//! AdamW as transformers' Trainer sets it up: torch's decoupled weight decay
//! (`p <- p - lr * wd * p`, then the Adam step), applied to matrices only. The Trainer leaves
//! biases and normalisation weights undecayed; in Qwen2 those are exactly the 1-D parameters,
//! so the parameters form two groups, each with its own Burn AdamW (one with decay, one
//! without). Each group's moments are saved in its own file of a checkpoint.

use std::path::Path;

use burn::module::{ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

use crate::gradients::{global_norm, scale};
use crate::objective::Student;
use crate::recipe::Training;

type Adam<B> = OptimizerAdaptor<AdamW, Student<B>, B>;

/// The two parameter groups' optimizers.
pub struct GroupedAdamW<B: AutodiffBackend> {
    decayed: Adam<B>,
    undecayed: Adam<B>,
}

fn config(training: &Training, weight_decay: f64) -> AdamWConfig {
    AdamWConfig::new()
        .with_beta_1(training.adam_beta1 as f32)
        .with_beta_2(training.adam_beta2 as f32)
        .with_epsilon(training.adam_epsilon as f32)
        .with_weight_decay(weight_decay as f32)
}

impl<B: AutodiffBackend> GroupedAdamW<B> {
    pub fn new(training: &Training) -> Self {
        Self {
            decayed: config(training, training.weight_decay).init(),
            undecayed: config(training, 0.0).init(),
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
