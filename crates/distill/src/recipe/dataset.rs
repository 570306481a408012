//! `[dataset]`: where the text comes from and which token shards the run reads.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Fields, OnResume, RecipeError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dataset {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Where the raw dataset files are (downloaded or local).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Token shards written by `cargo xtask preprocess` (required).
    pub shards: PathBuf,
    pub train_split: String,
    pub eval_split: String,
}

impl Default for Dataset {
    fn default() -> Self {
        Self {
            repo: None,
            local_dir: None,
            include: Vec::new(),
            shards: PathBuf::new(),
            train_split: "train".into(),
            eval_split: "validation".into(),
        }
    }
}

impl Dataset {
    pub(super) fn validate(&self, fields: &Fields) -> Result<(), RecipeError> {
        if self.shards.as_os_str().is_empty() {
            return Err(fields.error("dataset.shards", "is required"));
        }
        Ok(())
    }
}

/// What a change does on `--resume`.
pub(super) const ON_RESUME: &[OnResume] = &[
    OnResume::harmless("dataset.eval_split", "the split evaluation measures"),
    OnResume::harmless(
        "dataset.repo",
        "where `cargo xtask download` fetches the data",
    ),
    OnResume::changes("dataset.", "the training data"),
];
