//! The distillation objective of one batch and its gradients, computed so that no
//! vocabulary-sized tensor larger than one chunk of positions ever exists.
//!
//! total = hard_weight x hard + (1 - hard_weight) x soft + sum_i weight_i x intermediate_i
//!
//! How the memory bound works: the student runs up to its final hidden state `H` with the
//! autodiff graph. The vocabulary-sized part (lm_head, softmaxes, KL, CE) is then evaluated one
//! chunk of positions at a time on a *detached* copy of the chunk of `H`, and back-propagated at
//! once; that yields the chunk's gradient with respect to `H` and to the lm_head weights, and
//! frees the chunk's logits. Finally `sum(H * dL/dH) + intermediate losses` is back-propagated
//! through the body of the network, which gives exactly the gradients of the full loss.
//!
//! Files, each importing only those above it: `spec` (what the recipe asks: [`Objective`],
//! [`IntermediateMatch`], [`LossBreakdown`]), `student` (the trained model and its
//! projections), `batch` (token rows and the flattening of positions), `teacher` (what the
//! teacher says about a batch), `chunk` (one chunk's vocabulary-sized terms and the
//! intermediate losses), `body` (the body's backward, recorded or recomputed layer by layer),
//! `pass` (the gradient pass and the loss alone).

mod batch;
mod body;
mod chunk;
mod pass;
mod spec;
mod student;
mod teacher;

pub(crate) use batch::chunk_logits;
pub use batch::{flatten, Batch};
pub(crate) use chunk::{chunk_terms, chunked_terms, row_indices, PositionWeights};
pub use pass::{gradient_pass, loss_and_gradients, loss_only, GradientPass, PassTimes};
pub use spec::{IntermediateMatch, LossBreakdown, Objective};
pub use student::{inference_copy, Projection, Student};
pub(crate) use teacher::ChunkTeacher;
pub use teacher::{TeacherOutputs, TeacherSignal};
