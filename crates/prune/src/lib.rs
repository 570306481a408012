//! Students built from their teacher. The student keeps a subset of the teacher's layers
//! (depth), of its heads, FFN neurons and embedding channels (width), chosen by hand or by
//! importance measured on calibration data, and is written as a plain Hugging Face checkpoint
//! that any recipe can name as its student.
//!
//! - [`spec`]: what the user asks, checked against the teacher's config.json;
//! - [`importance`]: Block Influence, loss without each layer, activation importance;
//! - [`plan`]: which teacher part each student part is;
//! - [`weights`]: the teacher's tensors cut to the plan, as a weight source;
//! - [`student`]: the whole command as one function; [`report`]: what it measured.

pub mod error;
pub mod importance;
pub mod plan;
pub mod report;
pub mod spec;
pub mod student;
pub mod weights;

pub use error::{PruneError, Result};
pub use importance::{held_out_loss, measure_importance, Importance};
pub use plan::PrunePlan;
pub use report::StudentReport;
pub use spec::{LayerChoice, LayerRanking, PruneSpec};
pub use student::{init_student, InitStudent, IMPORTANCE_FILE};
pub use weights::PrunedWeights;
