//! The trained model: the student and the learned projections of its intermediate matches.

use burn::module::{AutodiffModule, Module};
use burn::nn::Linear;
use burn::tensor::backend::{AutodiffBackend, Backend};
use qwen2::Model;

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

/// The inference copy of a student (for evaluation and saving).
pub fn inference_copy<B: AutodiffBackend>(student: &Student<B>) -> Student<B::InnerBackend> {
    student.valid()
}
