//! `[teacher]` and `[student]`: the two models a recipe names.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::OnResume;

/// A model the recipe names: where it lives locally, and (for `cargo xtask download`) which hub
/// repository it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    pub local_dir: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// What a change does on `--resume`.
pub(super) const ON_RESUME: &[OnResume] = &[
    OnResume::changes("teacher.", "the teacher's signal"),
    OnResume::changes("student.", "the student the checkpoint belongs to"),
];
