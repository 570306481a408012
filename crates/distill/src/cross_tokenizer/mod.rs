//! Distillation across tokenizers: a teacher and a student whose vocabularies differ are
//! compared on the same text. `alignment` cuts the two tokenizations of a batch into groups
//! spelling the same bytes; `losses` compares the groups' distributions (ULD, or TRL GOLD's
//! hybrid). The trainer's live teacher reads the teacher's own tokens
//! ([`crate::objective::TeacherOutputs::from_model_aligned`]).

pub mod alignment;
pub mod losses;

pub use alignment::{
    AlignedBatch, AlignedGroup, Aligner, Alignment, AlignmentError, PredictedSpan,
};
pub use losses::{
    group_distributions, uld_per_group, CrossTokenizerLoss, CrossTokenizerLossKind, GroupRows,
    SharedColumns,
};
