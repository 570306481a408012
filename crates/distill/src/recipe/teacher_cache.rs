//! `[teacher_cache]`: what `--cache-teacher` keeps of the teacher, and where.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Fields, OnResume, RecipeError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeacherCache {
    /// Logits kept per position by `--cache-teacher`.
    pub top_k: usize,
    /// Where the cache is written (default: `<shards>/teacher-cache`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

impl Default for TeacherCache {
    fn default() -> Self {
        Self {
            top_k: 64,
            dir: None,
        }
    }
}

impl TeacherCache {
    pub(super) fn validate(&self, fields: &Fields) -> Result<(), RecipeError> {
        if self.top_k == 0 {
            return Err(fields.error("teacher_cache.top_k", "must be at least 1"));
        }
        Ok(())
    }
}

/// What a change does on `--resume`.
pub(super) const ON_RESUME: &[OnResume] = &[
    OnResume::harmless("teacher_cache.dir", "where the teacher cache is read"),
    OnResume::changes("teacher_cache.", "the teacher's signal"),
];
