//! The offline teacher: run the teacher once over a split's token shards, keep what the
//! objective needs from it, and train later without loading the teacher at all.
//!
//! # What is stored, per position (every position of every block, padding included)
//! - `top_ids` / `top_logits`: the teacher's `k` largest logits and their vocabulary ids,
//!   sorted descending (ties: lower id first). The logits are **raw** (temperature 1), in f32,
//!   exactly as the live teacher's lm_head produces them.
//! - `rest_lse`: `log sum_{v not in top k} exp(logit_v / T)`, the log-sum-exp of the other
//!   tokens **at the objective's temperature T** (computed in f64 from the f32 logits). This is
//!   what [`TeacherSignal::TopK`] and
//!   [`top_k_kl_per_position`](crate::losses::top_k_kl_per_position)
//!   expect. T is baked in: the manifest records it, and opening the cache for another
//!   temperature is an error naming `distillation.temperature`. When `k` = V there is nothing
//!   left and `rest_lse` holds [`EMPTY_REST_LSE`], a finite stand-in for log 0 that keeps the
//!   bucket's `0 x log 0` term at 0 (an actual -inf would make it NaN).
//! - `hidden_<L>`: the teacher's hidden state `L` (transformers `hidden_states` convention:
//!   0 = embeddings, `num_layers` = after the final norm) for each layer the intermediate
//!   matches need, f32 `[seq_len, hidden]`.
//!
//! When the teacher and student share only some vocabulary rows (`vocab_rows`), the top k and
//! the rest are taken over those rows only, as the live path compares only those rows; the
//! stored ids are still vocabulary ids.
//!
//! # The approximation
//! With a cache, the soft loss is the KL divergence between two distributions over k + 1
//! outcomes: the teacher's k kept tokens, plus one bucket holding all the teacher's remaining
//! mass, against the student's probabilities of the same k tokens plus the student's remaining
//! mass (`1 - sum of those k`). Merging outcomes never increases a KL divergence, so the cached
//! soft loss is a lower bound of the full-vocabulary one, and equal to it when k = V. The
//! gradient pushes the student's kept tokens to the teacher's probabilities and its remaining
//! mass to the teacher's remaining mass, but says nothing about how that remaining mass is
//! spread over the other tokens. The other losses (hard CE, intermediate states) are exact.
//! `tests/teacher_cache.rs` measures the error against the full loss as k grows.
//!
//! # Who builds and reads it
//! `cargo xtask distill --cache-teacher` (`TrainOptions::cache_teacher`, see
//! [`prepare`]): the training split's cache at the recipe's temperature
//! with the matched hidden states, and the evaluation split's at temperature 1 (evaluation's
//! KL, logged as `kl_to_teacher_topk`) without them. Only the forward KL has a cached form.
//!
//! # Layout
//! `<dir>/manifest.json` ([`CacheManifest`]) and `<dir>/part-NNNNN.parquet`, one row per block
//! and one row group per row (so reading one block of a shuffled batch decodes only that
//! block). The conventional `<dir>` is `<token shards>/teacher-cache/<split>`
//! ([`cache_dir`]).
//!
//! # Building is resumable and atomic
//! Each part is written as `part-NNNNN.parquet.tmp`, synced, then renamed; the manifest is
//! written last the same way, so a directory with a manifest is complete. A build that finds a
//! complete cache for the same teacher, tokens and settings returns it without running the
//! teacher. One that finds parts but no manifest keeps each finished part whose footer says it
//! was built with the same settings for the blocks the plan gives it, and computes the rest.
//!
//! # Modules
//! [`format`]: what a cache holds and the one check of a cache against what a run wants;
//! [`build`]: running the teacher into a cache; [`read`]: reading one back. The run-level
//! decision (which caches a recipe needs, build or reuse): [`prepare`].

mod build;
mod format;
pub mod prepare;
mod read;
mod serve;

use std::path::{Path, PathBuf};

pub use build::{build_cache, BuildOptions, CacheBuild};
pub use format::{
    CacheContents, CacheFileInfo, CacheManifest, CacheSpec, TeacherFingerprint, VocabRows,
};
pub use read::{CachedBlock, TeacherCache};
pub use serve::CachedTeacher;

/// Identifies this cache layout; bumped when the schema or the stored quantities change.
pub const FORMAT: &str = "qwen2-teacher-cache/1";
/// File name of the manifest inside a cache directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// `rest_lse` when the top k is the whole vocabulary: a finite stand-in for log 0.
pub const EMPTY_REST_LSE: f32 = -1.0e30;
/// The fix every mismatch error points at.
pub(crate) const REBUILD: &str = "rebuild the cache with `cargo xtask distill --cache-teacher`";

pub(crate) const TOP_IDS: &str = "top_ids";
pub(crate) const TOP_LOGITS: &str = "top_logits";
pub(crate) const REST_LSE: &str = "rest_lse";
pub(crate) const BLOCK: &str = "block";
pub(crate) const META_CONTENTS: &str = "teacher_cache.contents";
pub(crate) const META_FIRST_BLOCK: &str = "teacher_cache.first_block";

/// The conventional cache directory of `split`: `<token shards>/teacher-cache/<split>`.
pub fn cache_dir(shards_dir: &Path, split: &str) -> PathBuf {
    shards_dir.join("teacher-cache").join(split)
}

pub(crate) fn hidden_column(layer: usize) -> String {
    format!("hidden_{layer}")
}

pub(crate) fn part_file_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

/// Everything that can go wrong building or reading a teacher cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("teacher cache {dir} is not built (no {MANIFEST_FILE}): {REBUILD}")]
    NotBuilt { dir: PathBuf },
    #[error("teacher cache {path}: {message}; {REBUILD}")]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "teacher cache {path}: `{field}` is {cached} in the cache but {expected} in this run; \
         {REBUILD} (or set `{field}` back to {cached})"
    )]
    Mismatch {
        path: PathBuf,
        field: String,
        cached: String,
        expected: String,
    },
    #[error("teacher cache settings: `{field}` {message}")]
    InvalidSpec { field: String, message: String },
    #[error(
        "the teacher produced a non-finite logit at block {block}, position {position}: \
         the teacher weights are broken (check its safetensors)"
    )]
    NonFiniteLogit { block: usize, position: usize },
    #[error(
        "token shards {dir}: block {block} holds token id {id}, but the teacher has only {vocab} \
         embedding rows: the shards were made with another tokenizer; preprocess them with the \
         teacher's tokenizer"
    )]
    TokenOutOfVocabulary {
        dir: PathBuf,
        block: usize,
        id: u32,
        vocab: usize,
    },
    #[error("teacher cache {path}: block {index} is out of range (the cache has {len} blocks)")]
    BlockOutOfRange {
        path: PathBuf,
        index: usize,
        len: usize,
    },
    #[error(
        "stopped while caching the teacher into {}: {done} of {parts} part files are complete \
         and kept; run the same command again to continue from them",
        dir.display()
    )]
    Stopped {
        dir: PathBuf,
        done: usize,
        parts: usize,
    },
    #[error(transparent)]
    Tokens(#[from] preprocess::PreprocessError),
    #[error(transparent)]
    File(#[from] fsio::FileError),
}

impl CacheError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
