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
//! [`crate::train::cached_teacher`]): the training split's cache at the recipe's temperature
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

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, FixedSizeListArray, Float32Array, Int32Array, Int64Array, RecordBatch,
};
use arrow::datatypes::{DataType, Field, Float32Type, Int32Type, Schema, SchemaRef};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use preprocess::{open_parquet_with_schema, Block, ShardReader};
use qwen2::{AttentionMask, Model};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::objective::{flatten, Objective, TeacherOutputs, TeacherSignal};

/// Identifies this cache layout; bumped when the schema or the stored quantities change.
pub const FORMAT: &str = "qwen2-teacher-cache/1";
/// File name of the manifest inside a cache directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// `rest_lse` when the top k is the whole vocabulary: a finite stand-in for log 0.
pub const EMPTY_REST_LSE: f32 = -1.0e30;
/// The fix every mismatch error points at.
const REBUILD: &str = "rebuild the cache with `cargo xtask distill --cache-teacher`";

const TOP_IDS: &str = "top_ids";
const TOP_LOGITS: &str = "top_logits";
const REST_LSE: &str = "rest_lse";
const BLOCK: &str = "block";
const META_CONTENTS: &str = "teacher_cache.contents";
const META_FIRST_BLOCK: &str = "teacher_cache.first_block";

/// The conventional cache directory of `split`: `<token shards>/teacher-cache/<split>`.
pub fn cache_dir(shards_dir: &Path, split: &str) -> PathBuf {
    shards_dir.join("teacher-cache").join(split)
}

fn hidden_column(layer: usize) -> String {
    format!("hidden_{layer}")
}

fn part_file_name(index: usize) -> String {
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
}

impl CacheError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Which teacher a cache was built from: config.json's sha256 and the size of every weight
/// file. Sizes rather than hashes because this is checked on every run and hashing 3.5 GB of
/// safetensors would take longer than the check is worth; a retrained checkpoint of the same
/// shape changes config.json's sha or, in practice, not at all, so delete the cache by hand
/// after overwriting weights in place.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherFingerprint {
    /// The model directory as given (informational; moving the model does not invalidate).
    pub dir: String,
    pub config_sha256: String,
    /// `(file name, bytes)` of every `*.safetensors` file, sorted by name.
    pub weight_files: Vec<(String, u64)>,
}

impl TeacherFingerprint {
    /// Fingerprints the checkpoint directory `dir` (config.json + *.safetensors).
    pub fn of_dir(dir: &Path) -> Result<Self, CacheError> {
        let config = dir.join("config.json");
        let config_sha256 = sha256_file(&config)?;
        let mut weight_files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|err| CacheError::io(dir, err))? {
            let entry = entry.map_err(|err| CacheError::io(dir, err))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".safetensors") {
                let bytes = entry
                    .metadata()
                    .map_err(|err| CacheError::io(&entry.path(), err))?
                    .len();
                weight_files.push((name, bytes));
            }
        }
        weight_files.sort();
        Ok(Self {
            dir: dir.display().to_string(),
            config_sha256,
            weight_files,
        })
    }

    fn describe(&self) -> String {
        let bytes: u64 = self.weight_files.iter().map(|(_, b)| b).sum();
        format!(
            "the model in {} (config.json sha256 {}…, {} weight file(s), {bytes} bytes)",
            self.dir,
            &self.config_sha256[..self.config_sha256.len().min(12)],
            self.weight_files.len()
        )
    }
}

impl PartialEq for TeacherFingerprint {
    /// The same model, wherever it lives.
    fn eq(&self, other: &Self) -> bool {
        self.config_sha256 == other.config_sha256 && self.weight_files == other.weight_files
    }
}

fn sha256_file(path: &Path) -> Result<String, CacheError> {
    let mut file = File::open(path).map_err(|err| CacheError::io(path, err))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|err| CacheError::io(path, err))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// What a run needs from the cache (and, for building, how to build it).
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSpec {
    pub teacher: TeacherFingerprint,
    /// Logits kept per position (`teacher_cache.top_k`).
    pub top_k: usize,
    /// The objective's temperature (`distillation.temperature`); baked into `rest_lse`.
    pub temperature: f64,
    /// Teacher hidden states the intermediate matches need, transformers `hidden_states`
    /// indices, one per match in match order (repeats allowed): [`TeacherCache::outputs`]
    /// returns the states in this order, as [`TeacherOutputs::from_model`] does.
    pub hidden_layers: Vec<usize>,
    /// Vocabulary rows compared by the loss (`Objective::vocab_rows`); `None` = all rows.
    pub vocab_rows: Option<Vec<u32>>,
    /// Blocks per teacher forward pass while building (does not change the contents).
    pub batch_size: usize,
}

impl CacheSpec {
    /// The spec that serves `objective`: its temperature, the teacher layers of its
    /// intermediate matches, and its vocabulary rows.
    pub fn for_objective(
        teacher: TeacherFingerprint,
        objective: &Objective,
        top_k: usize,
        batch_size: usize,
    ) -> Self {
        Self {
            teacher,
            top_k,
            temperature: objective.temperature,
            hidden_layers: objective
                .intermediate_matches
                .iter()
                .map(|m| m.layer_t)
                .collect(),
            vocab_rows: objective.vocab_rows.clone(),
            batch_size,
        }
    }

    /// The distinct layers, ascending (what the cache stores).
    fn stored_layers(&self) -> Vec<usize> {
        let mut layers = self.hidden_layers.clone();
        layers.sort_unstable();
        layers.dedup();
        layers
    }

    fn vocab_rows_info(&self) -> Option<VocabRows> {
        self.vocab_rows.as_ref().map(|rows| VocabRows::of(rows))
    }

    /// Checks the spec against the teacher that will fill the cache.
    fn validate(&self, vocab_size: usize, num_layers: usize) -> Result<(), CacheError> {
        let invalid = |field: &str, message: String| CacheError::InvalidSpec {
            field: field.to_string(),
            message,
        };
        let compared = match &self.vocab_rows {
            Some(rows) => {
                if let Some(bad) = rows.iter().find(|&&r| r as usize >= vocab_size) {
                    return Err(invalid(
                        "vocab_rows",
                        format!("holds row {bad}, but the teacher has {vocab_size} rows"),
                    ));
                }
                rows.len()
            }
            None => vocab_size,
        };
        if self.top_k == 0 || self.top_k > compared {
            return Err(invalid(
                "teacher_cache.top_k",
                format!(
                    "is {}: it must be between 1 and the {compared} vocabulary rows compared",
                    self.top_k
                ),
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(invalid(
                "distillation.temperature",
                format!("is {}: it must be a finite number > 0", self.temperature),
            ));
        }
        if let Some(&bad) = self.hidden_layers.iter().find(|&&l| l > num_layers) {
            return Err(invalid(
                "distillation.intermediate_matches.layer_T",
                format!(
                    "is {bad}: the teacher has {num_layers} layers, so hidden states 0..={num_layers}"
                ),
            ));
        }
        if self.batch_size == 0 {
            return Err(invalid("batch_size", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// The vocabulary rows a cache was restricted to, by count and sha256 of their ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VocabRows {
    pub count: usize,
    pub sha256: String,
}

impl VocabRows {
    fn of(rows: &[u32]) -> Self {
        let mut hasher = Sha256::new();
        for row in rows {
            hasher.update(row.to_le_bytes());
        }
        Self {
            count: rows.len(),
            sha256: hex::encode(hasher.finalize()),
        }
    }
}

/// Everything that decides the bytes of a cache. Two builds with equal contents write the same
/// values, so a complete cache with the contents a build wants is reused as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheContents {
    pub format: String,
    pub teacher: TeacherFingerprint,
    pub split: String,
    /// sha256 of each token shard file of the split, from the token manifest.
    pub token_shards: Vec<String>,
    pub seq_len: usize,
    pub blocks: usize,
    pub top_k: usize,
    pub temperature: f64,
    /// Stored hidden states (distinct, ascending).
    pub hidden_layers: Vec<usize>,
    pub hidden_size: usize,
    /// The teacher's vocabulary size.
    pub vocab_size: usize,
    pub vocab_rows: Option<VocabRows>,
    pub blocks_per_file: usize,
}

impl CacheContents {
    /// The first field that differs, as `(field, cached, wanted)`.
    fn first_difference(&self, wanted: &Self) -> Option<(&'static str, String, String)> {
        let pair = |field: &'static str, a: String, b: String| (a != b).then_some((field, a, b));
        if self.teacher != wanted.teacher {
            return Some((
                "teacher.local_dir",
                self.teacher.describe(),
                wanted.teacher.describe(),
            ));
        }
        pair("format", self.format.clone(), wanted.format.clone())
            .or_else(|| pair("split", self.split.clone(), wanted.split.clone()))
            .or_else(|| {
                pair(
                    "dataset.shards",
                    format!("token shards {:?}", self.token_shards),
                    format!("token shards {:?}", wanted.token_shards),
                )
            })
            .or_else(|| {
                pair(
                    "seq_len",
                    self.seq_len.to_string(),
                    wanted.seq_len.to_string(),
                )
            })
            .or_else(|| pair("blocks", self.blocks.to_string(), wanted.blocks.to_string()))
            .or_else(|| {
                pair(
                    "teacher_cache.top_k",
                    self.top_k.to_string(),
                    wanted.top_k.to_string(),
                )
            })
            .or_else(|| {
                pair(
                    "distillation.temperature",
                    self.temperature.to_string(),
                    wanted.temperature.to_string(),
                )
            })
            .or_else(|| {
                pair(
                    "distillation.intermediate_matches.layer_T",
                    format!("{:?}", self.hidden_layers),
                    format!("{:?}", wanted.hidden_layers),
                )
            })
            .or_else(|| {
                pair(
                    "hidden_size",
                    self.hidden_size.to_string(),
                    wanted.hidden_size.to_string(),
                )
            })
            .or_else(|| {
                pair(
                    "vocab_size",
                    self.vocab_size.to_string(),
                    wanted.vocab_size.to_string(),
                )
            })
            .or_else(|| {
                pair(
                    "vocab_rows",
                    describe_rows(&self.vocab_rows),
                    describe_rows(&wanted.vocab_rows),
                )
            })
            .or_else(|| {
                pair(
                    "blocks_per_file",
                    self.blocks_per_file.to_string(),
                    wanted.blocks_per_file.to_string(),
                )
            })
    }

    /// `(first block, blocks)` of each part file.
    fn plan(&self) -> Vec<(usize, usize)> {
        let per_file = self.blocks_per_file.max(1);
        (0..self.blocks)
            .step_by(per_file)
            .map(|first| (first, per_file.min(self.blocks - first)))
            .collect()
    }

    fn schema(&self) -> SchemaRef {
        let list = |name: &str, item: DataType, len: usize| {
            Field::new(
                name,
                DataType::FixedSizeList(Arc::new(Field::new("item", item, false)), len as i32),
                false,
            )
        };
        let positions = self.seq_len;
        let mut fields = vec![
            Field::new(BLOCK, DataType::Int64, false),
            list(TOP_IDS, DataType::Int32, positions * self.top_k),
            list(TOP_LOGITS, DataType::Float32, positions * self.top_k),
            list(REST_LSE, DataType::Float32, positions),
        ];
        for &layer in &self.hidden_layers {
            fields.push(list(
                &hidden_column(layer),
                DataType::Float32,
                positions * self.hidden_size,
            ));
        }
        Arc::new(Schema::new(fields))
    }
}

fn describe_rows(rows: &Option<VocabRows>) -> String {
    match rows {
        None => "all rows".into(),
        Some(rows) => format!("{} rows (sha256 {}…)", rows.count, &rows.sha256[..12]),
    }
}

/// `manifest.json` of a cache directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheManifest {
    #[serde(flatten)]
    pub contents: CacheContents,
    /// `CARGO_PKG_VERSION` of the distill crate that wrote it.
    pub tool_version: String,
    /// What each column means, so the files explain themselves.
    pub columns: BTreeMap<String, String>,
    pub files: Vec<CacheFileInfo>,
    /// Bytes of all part files.
    pub bytes: u64,
}

/// One part file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheFileInfo {
    pub file: String,
    pub first_block: usize,
    pub blocks: usize,
    pub bytes: u64,
}

impl CacheManifest {
    /// Reads `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self, CacheError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(CacheError::NotBuilt {
                    dir: dir.to_path_buf(),
                })
            }
            Err(err) => return Err(CacheError::io(&path, err)),
        };
        let manifest: Self = serde_json::from_slice(&bytes).map_err(|err| CacheError::Corrupt {
            path: path.clone(),
            message: format!("unreadable manifest: {err}"),
        })?;
        if manifest.contents.format != FORMAT {
            return Err(CacheError::Corrupt {
                path,
                message: format!(
                    "format `{}`, this build reads `{FORMAT}`",
                    manifest.contents.format
                ),
            });
        }
        Ok(manifest)
    }

    /// Positions (tokens, padding included) the cache covers.
    pub fn positions(&self) -> usize {
        self.contents.blocks * self.contents.seq_len
    }

    /// Bytes of part files per cached position.
    pub fn bytes_per_position(&self) -> f64 {
        self.bytes as f64 / self.positions().max(1) as f64
    }

    fn files_present(&self, dir: &Path) -> bool {
        self.files.iter().all(|file| {
            std::fs::metadata(dir.join(&file.file))
                .is_ok_and(|m| m.is_file() && m.len() == file.bytes)
        })
    }
}

fn column_descriptions(contents: &CacheContents) -> BTreeMap<String, String> {
    let (t, k, h) = (contents.seq_len, contents.top_k, contents.hidden_size);
    let mut columns = BTreeMap::from([
        (BLOCK.to_string(), "Int64: index of the block in the split's token shards".to_string()),
        (
            TOP_IDS.to_string(),
            format!(
                "FixedSizeList<Int32, {t} x {k}>: per position, the vocabulary ids of the teacher's \
                 {k} largest logits, largest first (ties: lower id first)"
            ),
        ),
        (
            TOP_LOGITS.to_string(),
            format!(
                "FixedSizeList<Float32, {t} x {k}>: the raw logits (temperature 1) of top_ids"
            ),
        ),
        (
            REST_LSE.to_string(),
            format!(
                "FixedSizeList<Float32, {t}>: log-sum-exp of logit / {} over the tokens not in \
                 top_ids ({EMPTY_REST_LSE:e} when there are none)",
                contents.temperature
            ),
        ),
    ]);
    for &layer in &contents.hidden_layers {
        columns.insert(
            hidden_column(layer),
            format!(
                "FixedSizeList<Float32, {t} x {h}>: transformers hidden_states[{layer}] per position"
            ),
        );
    }
    columns
}

/// Build options that do not change what is stored.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Positions whose `[positions, V]` logits exist at once (memory vs speed).
    pub chunk_positions: usize,
    /// Blocks per part file (the unit of resumption); `None` = about 256 MiB per file.
    pub blocks_per_file: Option<usize>,
    /// When set (e.g. by a Ctrl-C handler), the build stops before its next batch of blocks
    /// with [`CacheError::Stopped`]; finished part files are kept for the next build.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            progress: false,
            chunk_positions: 256,
            blocks_per_file: None,
            stop: None,
        }
    }
}

/// What [`build_cache`] did.
#[derive(Debug, Clone)]
pub struct CacheBuild {
    pub manifest: CacheManifest,
    /// Blocks the teacher ran over in this call (0 when a complete cache was reused).
    pub blocks_computed: usize,
}

/// Runs `teacher` once over every block of the split `shards` reads and writes the cache into
/// `out_dir` (see the module docs). A complete cache with the same contents is reused; a
/// partial one is completed.
///
/// Memory: one batch of `spec.batch_size` blocks through the teacher, one chunk of
/// `options.chunk_positions` vocabulary-sized logits, and the host copy of one batch's rows.
pub fn build_cache<B: Backend>(
    teacher: &Model<B>,
    shards: &mut ShardReader,
    spec: &CacheSpec,
    out_dir: &Path,
    options: &BuildOptions,
) -> Result<CacheBuild, CacheError> {
    spec.validate(teacher.vocab_size(), teacher.num_layers())?;
    let token_manifest = shards.manifest();
    let token_shards = token_manifest
        .splits
        .get(shards.split())
        .map(|split| split.shards.iter().map(|s| s.sha256.clone()).collect())
        .unwrap_or_default();
    let seq_len = shards.seq_len();
    let hidden_layers = spec.stored_layers();
    let mut contents = CacheContents {
        format: FORMAT.to_string(),
        teacher: spec.teacher.clone(),
        split: shards.split().to_string(),
        token_shards,
        seq_len,
        blocks: shards.len(),
        top_k: spec.top_k,
        temperature: spec.temperature,
        hidden_layers,
        hidden_size: teacher.hidden_size(),
        vocab_size: teacher.vocab_size(),
        vocab_rows: spec.vocab_rows_info(),
        blocks_per_file: 0,
    };
    contents.blocks_per_file = options.blocks_per_file.unwrap_or_else(|| {
        let per_block = seq_len
            * (8 * spec.top_k + 4 + 4 * contents.hidden_size * contents.hidden_layers.len());
        ((256usize << 20) / per_block.max(1)).max(1)
    });
    contents.blocks_per_file = contents.blocks_per_file.max(1);

    std::fs::create_dir_all(out_dir).map_err(|err| CacheError::io(out_dir, err))?;
    if let Ok(existing) = CacheManifest::load(out_dir) {
        if existing.contents.first_difference(&contents).is_none()
            && existing.files_present(out_dir)
        {
            return Ok(CacheBuild {
                manifest: existing,
                blocks_computed: 0,
            });
        }
    }
    // From here on the directory is not a complete cache until the new manifest lands.
    remove_if_present(&out_dir.join(MANIFEST_FILE))?;

    let plan = contents.plan();
    let kept = keep_finished_parts(out_dir, &contents, &plan)?;
    let mut files: Vec<CacheFileInfo> = kept;
    let remaining: usize = plan[files.len()..].iter().map(|(_, n)| n).sum();
    let bar = progress_bar(options.progress, remaining as u64);
    let mut writer = PartWriter {
        teacher,
        spec,
        contents: &contents,
        schema: contents.schema(),
        rows: spec.vocab_rows.as_ref().map(|rows| {
            let ids: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [rows.len()]), &teacher.device())
        }),
        chunk_positions: options.chunk_positions.max(1),
        bar: &bar,
        stop: options.stop.as_deref(),
    };
    for (index, &(first_block, blocks)) in plan.iter().enumerate().skip(files.len()) {
        match writer.write_part(shards, out_dir, index, first_block, blocks)? {
            Some(file) => files.push(file),
            None => {
                bar.abandon();
                return Err(CacheError::Stopped {
                    dir: out_dir.to_path_buf(),
                    done: files.len(),
                    parts: plan.len(),
                });
            }
        }
    }
    bar.finish_and_clear();

    let manifest = CacheManifest {
        columns: column_descriptions(&contents),
        bytes: files.iter().map(|f| f.bytes).sum(),
        files,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        contents,
    };
    let mut json = serde_json::to_string_pretty(&manifest).expect("the manifest serializes");
    json.push('\n');
    write_atomically(&out_dir.join(MANIFEST_FILE), json.as_bytes())?;
    Ok(CacheBuild {
        manifest,
        blocks_computed: remaining,
    })
}

fn progress_bar(show: bool, blocks: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(blocks);
    bar.set_style(
        ProgressStyle::with_template(
            "caching teacher {bar:30} {pos}/{len} blocks  {per_sec}  ETA {eta}",
        )
        .expect("valid template"),
    );
    bar
}

fn remove_if_present(path: &Path) -> Result<(), CacheError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(CacheError::io(path, err)),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let temporary = path.with_extension("json.tmp");
    let mut file = File::create(&temporary).map_err(|err| CacheError::io(&temporary, err))?;
    std::io::Write::write_all(&mut file, bytes).map_err(|err| CacheError::io(&temporary, err))?;
    file.sync_all()
        .map_err(|err| CacheError::io(&temporary, err))?;
    std::fs::rename(&temporary, path).map_err(|err| CacheError::io(path, err))?;
    sync_dir(path);
    Ok(())
}

/// Makes a rename durable; best effort (not every filesystem lets a directory be synced).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
}

/// Keeps the leading part files that a previous build finished with the same contents for the
/// blocks `plan` gives them; deletes everything else a build could have left.
fn keep_finished_parts(
    dir: &Path,
    contents: &CacheContents,
    plan: &[(usize, usize)],
) -> Result<Vec<CacheFileInfo>, CacheError> {
    let mut kept = Vec::new();
    for (index, &(first_block, blocks)) in plan.iter().enumerate() {
        let path = dir.join(part_file_name(index));
        let Ok(file) = File::open(&path) else { break };
        let Ok(metadata) = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()) else {
            break;
        };
        let value = |key: &str| {
            metadata
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .and_then(|kv| kv.iter().find(|e| e.key == key))
                .and_then(|e| e.value.clone())
        };
        let same_contents = value(META_CONTENTS)
            .and_then(|json| serde_json::from_str::<CacheContents>(&json).ok())
            .is_some_and(|found| found.first_difference(contents).is_none());
        let rows = metadata.metadata().file_metadata().num_rows() as usize;
        if !same_contents
            || value(META_FIRST_BLOCK) != Some(first_block.to_string())
            || rows != blocks
        {
            break;
        }
        let bytes = file
            .metadata()
            .map_err(|err| CacheError::io(&path, err))?
            .len();
        kept.push(CacheFileInfo {
            file: part_file_name(index),
            first_block,
            blocks,
            bytes,
        });
    }
    // Anything else that looks like a part (later parts, stale or foreign ones, temporaries).
    for entry in std::fs::read_dir(dir).map_err(|err| CacheError::io(dir, err))? {
        let entry = entry.map_err(|err| CacheError::io(dir, err))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_part = name.starts_with("part-") && name.contains(".parquet");
        if is_part && !kept.iter().any(|k| k.file == name) {
            remove_if_present(&entry.path())?;
        }
    }
    Ok(kept)
}

/// Host copy of the cached values of a run of consecutive positions.
#[derive(Debug, Clone, Default)]
struct Rows {
    top_ids: Vec<i32>,
    top_logits: Vec<f32>,
    rest_lse: Vec<f32>,
    /// One `[positions * hidden]` vector per stored layer.
    states: Vec<Vec<f32>>,
}

struct PartWriter<'a, B: Backend> {
    teacher: &'a Model<B>,
    spec: &'a CacheSpec,
    contents: &'a CacheContents,
    schema: SchemaRef,
    rows: Option<Tensor<B, 1, Int>>,
    chunk_positions: usize,
    bar: &'a ProgressBar,
    stop: Option<&'a AtomicBool>,
}

impl<B: Backend> PartWriter<'_, B> {
    /// Writes part `index`; `None` when `stop` was set before it was complete (its temporary
    /// file is removed).
    fn write_part(
        &mut self,
        shards: &mut ShardReader,
        dir: &Path,
        index: usize,
        first_block: usize,
        blocks: usize,
    ) -> Result<Option<CacheFileInfo>, CacheError> {
        let name = part_file_name(index);
        let path = dir.join(&name);
        let temporary = dir.join(format!("{name}.tmp"));
        let parquet_error = |err: parquet::errors::ParquetError| CacheError::Corrupt {
            path: temporary.clone(),
            message: format!("cannot write parquet: {err}"),
        };
        let file = File::create(&temporary).map_err(|err| CacheError::io(&temporary, err))?;
        let metadata = vec![
            KeyValue::new(
                META_CONTENTS.to_string(),
                serde_json::to_string(self.contents).expect("contents serialize"),
            ),
            KeyValue::new(META_FIRST_BLOCK.to_string(), first_block.to_string()),
        ];
        // One row group per block: random access decodes one block. Logits are close to
        // incompressible; snappy still shrinks the ids and costs little.
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::None)
            .set_max_row_group_row_count(Some(1))
            .set_key_value_metadata(Some(metadata))
            .build();
        let mut writer =
            ArrowWriter::try_new(BufWriter::new(file), self.schema.clone(), Some(properties))
                .map_err(parquet_error)?;
        let end = first_block + blocks;
        for start in (first_block..end).step_by(self.spec.batch_size) {
            if self.stop.is_some_and(|stop| stop.load(Ordering::SeqCst)) {
                drop(writer);
                remove_if_present(&temporary)?;
                return Ok(None);
            }
            let indices: Vec<usize> = (start..end.min(start + self.spec.batch_size)).collect();
            let batch_blocks = indices
                .iter()
                .map(|&i| shards.block(i))
                .collect::<Result<Vec<Block>, _>>()?;
            // An id beyond the embeddings would panic inside the backend's gather.
            let vocab = self.contents.vocab_size;
            for (&index, block) in indices.iter().zip(&batch_blocks) {
                if let Some(&id) = block.ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(CacheError::TokenOutOfVocabulary {
                        dir: shards.dir().to_path_buf(),
                        block: index,
                        id,
                        vocab,
                    });
                }
            }
            let rows = self.run_teacher(&batch_blocks, start)?;
            let batch = self.record_batch(&indices, rows);
            writer.write(&batch).map_err(parquet_error)?;
            self.bar.inc(indices.len() as u64);
        }
        let file = writer
            .into_inner()
            .map_err(parquet_error)?
            .into_inner()
            .map_err(|err| CacheError::io(&temporary, err.into_error()))?;
        file.sync_all()
            .map_err(|err| CacheError::io(&temporary, err))?;
        let bytes = file
            .metadata()
            .map_err(|err| CacheError::io(&temporary, err))?
            .len();
        drop(file);
        std::fs::rename(&temporary, &path).map_err(|err| CacheError::io(&path, err))?;
        sync_dir(&path);
        Ok(Some(CacheFileInfo {
            file: name,
            first_block,
            blocks,
            bytes,
        }))
    }

    /// The teacher over one batch of blocks: top k, rest and states of every position.
    fn run_teacher(&self, blocks: &[Block], first_block: usize) -> Result<Rows, CacheError> {
        let seq = self.contents.seq_len;
        let device = self.teacher.device();
        let ids: Vec<i64> = blocks
            .iter()
            .flat_map(|b| b.ids.iter().map(|&t| t as i64))
            .collect();
        let ids =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [blocks.len(), seq]), &device);
        let mask = AttentionMask {
            rows: blocks
                .iter()
                .map(|b| (0..seq).map(|t| t < b.real_len).collect())
                .collect(),
        };
        let layers = &self.contents.hidden_layers;
        let (final_hidden, states) = self.teacher.forward_hidden(ids, &mask, !layers.is_empty());
        let final_hidden = flatten(final_hidden);
        let positions = final_hidden.dims()[0];
        let k = self.spec.top_k;

        let mut rows = Rows {
            top_ids: vec![0; positions * k],
            top_logits: vec![0.0; positions * k],
            rest_lse: vec![0.0; positions],
            states: Vec::new(),
        };
        for start in (0..positions).step_by(self.chunk_positions) {
            let len = self.chunk_positions.min(positions - start);
            let [_, width] = final_hidden.dims();
            let hidden = final_hidden.clone().narrow(0, start, len);
            let logits = self.teacher.lm_head(hidden.reshape([1, len, width]));
            let vocab = logits.dims()[2];
            let mut logits = logits.reshape([len, vocab]);
            if let Some(rows) = &self.rows {
                logits = logits.select(1, rows.clone());
            }
            let logits = logits
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("float logits");
            let range = start * k..(start + len) * k;
            let bad = top_k_rows(
                &logits,
                k,
                self.spec.temperature,
                self.spec.vocab_rows.as_deref(),
                &mut rows.top_ids[range.clone()],
                &mut rows.top_logits[range],
                &mut rows.rest_lse[start..start + len],
            );
            if let Some(position) = bad {
                let position = start + position;
                return Err(CacheError::NonFiniteLogit {
                    block: first_block + position / seq,
                    position: position % seq,
                });
            }
        }
        if let Some(states) = states {
            rows.states = layers
                .iter()
                .map(|&layer| {
                    flatten(states[layer].clone())
                        .into_data()
                        .convert::<f32>()
                        .to_vec::<f32>()
                        .expect("float states")
                })
                .collect();
        }
        Ok(rows)
    }

    fn record_batch(&self, indices: &[usize], rows: Rows) -> RecordBatch {
        let list = |values: ArrayRef, len: usize, item: DataType| -> ArrayRef {
            let field = Arc::new(Field::new("item", item, false));
            Arc::new(FixedSizeListArray::new(field, len as i32, values, None))
        };
        let seq = self.contents.seq_len;
        let k = self.contents.top_k;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(
                indices.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            )),
            list(
                Arc::new(Int32Array::from(rows.top_ids)),
                seq * k,
                DataType::Int32,
            ),
            list(
                Arc::new(Float32Array::from(rows.top_logits)),
                seq * k,
                DataType::Float32,
            ),
            list(
                Arc::new(Float32Array::from(rows.rest_lse)),
                seq,
                DataType::Float32,
            ),
        ];
        for state in rows.states {
            columns.push(list(
                Arc::new(Float32Array::from(state)),
                seq * self.contents.hidden_size,
                DataType::Float32,
            ));
        }
        RecordBatch::try_new(self.schema.clone(), columns).expect("columns match the cache schema")
    }
}

/// For each row of `logits` (`[positions, V]`, row-major): its `k` largest values, largest
/// first (ties: lower index first), their ids (`vocab_rows[index]` when given), and the
/// log-sum-exp at `temperature` of the others, in f64. Returns the first position holding a
/// non-finite logit, if any.
fn top_k_rows(
    logits: &[f32],
    k: usize,
    temperature: f64,
    vocab_rows: Option<&[u32]>,
    top_ids: &mut [i32],
    top_logits: &mut [f32],
    rest_lse: &mut [f32],
) -> Option<usize> {
    let vocab = logits.len() / rest_lse.len().max(1);
    let finite: Vec<bool> = logits
        .par_chunks(vocab)
        .zip(top_ids.par_chunks_mut(k))
        .zip(top_logits.par_chunks_mut(k))
        .zip(rest_lse.par_iter_mut())
        .map_init(
            || Vec::with_capacity(vocab),
            |order: &mut Vec<u32>, (((row, ids), values), rest)| {
                if row.iter().any(|v| !v.is_finite()) {
                    return false;
                }
                order.clear();
                order.extend(0..vocab as u32);
                let by_rank =
                    |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
                if k < vocab {
                    order.select_nth_unstable_by(k, by_rank);
                }
                let (top, others) = order.split_at_mut(k);
                top.sort_unstable_by(by_rank);
                for ((id, value), &index) in ids.iter_mut().zip(values.iter_mut()).zip(top.iter()) {
                    *value = row[index as usize];
                    *id = vocab_rows.map_or(index, |rows| rows[index as usize]) as i32;
                }
                *rest = if others.is_empty() {
                    EMPTY_REST_LSE
                } else {
                    let max = others
                        .iter()
                        .map(|&i| row[i as usize])
                        .fold(f32::NEG_INFINITY, f32::max) as f64
                        / temperature;
                    let sum: f64 = others
                        .iter()
                        .map(|&i| (row[i as usize] as f64 / temperature - max).exp())
                        .sum();
                    (max + sum.ln()) as f32
                };
                true
            },
        )
        .collect();
    finite.iter().position(|ok| !ok)
}

/// A built cache, opened for reading.
pub struct TeacherCache {
    dir: PathBuf,
    manifest: CacheManifest,
    files: Vec<PartFile>,
    /// The stored layer behind each state [`TeacherCache::outputs`] returns.
    state_layers: Vec<usize>,
}

struct PartFile {
    path: PathBuf,
    file: File,
    metadata: ArrowReaderMetadata,
    first_block: usize,
    blocks: usize,
    /// Root columns to decode: top ids, top logits, rest, then the needed hidden states.
    projection: ProjectionMask,
}

/// The cached values of one block (host memory).
#[derive(Debug, Clone, PartialEq)]
pub struct CachedBlock {
    /// `[seq_len * k]`
    pub top_ids: Vec<i32>,
    /// `[seq_len * k]`, raw logits.
    pub top_logits: Vec<f32>,
    /// `[seq_len]`, at the cache's temperature.
    pub rest_lse: Vec<f32>,
    /// `(layer, [seq_len * hidden])` for each distinct layer the opening spec asked for.
    pub states: Vec<(usize, Vec<f32>)>,
}

impl TeacherCache {
    /// Opens the cache in `dir` for a run that needs `expected`; any difference that changes
    /// the values (teacher, top_k, temperature, vocabulary rows, a missing hidden layer) is an
    /// error naming the field and the fix. The cache may hold more layers than needed.
    pub fn open(dir: &Path, expected: &CacheSpec) -> Result<Self, CacheError> {
        let manifest = CacheManifest::load(dir)?;
        let path = dir.join(MANIFEST_FILE);
        let contents = &manifest.contents;
        let mismatch = |field: &str, cached: String, expected: String| CacheError::Mismatch {
            path: path.clone(),
            field: field.to_string(),
            cached,
            expected,
        };
        if contents.teacher != expected.teacher {
            return Err(mismatch(
                "teacher.local_dir",
                contents.teacher.describe(),
                expected.teacher.describe(),
            ));
        }
        if contents.top_k != expected.top_k {
            return Err(mismatch(
                "teacher_cache.top_k",
                contents.top_k.to_string(),
                expected.top_k.to_string(),
            ));
        }
        if contents.temperature != expected.temperature {
            return Err(mismatch(
                "distillation.temperature",
                contents.temperature.to_string(),
                expected.temperature.to_string(),
            ));
        }
        if let Some(&missing) = expected
            .hidden_layers
            .iter()
            .find(|l| !contents.hidden_layers.contains(l))
        {
            return Err(mismatch(
                "distillation.intermediate_matches.layer_T",
                format!("{:?} (hidden states cached)", contents.hidden_layers),
                format!("layer {missing} too"),
            ));
        }
        if contents.vocab_rows != expected.vocab_rows_info() {
            return Err(mismatch(
                "vocab_rows",
                describe_rows(&contents.vocab_rows),
                describe_rows(&expected.vocab_rows_info()),
            ));
        }

        let needed = expected.stored_layers();
        let schema = contents.schema();
        let mut files = Vec::with_capacity(manifest.files.len());
        let mut next_block = 0;
        for info in &manifest.files {
            let path = dir.join(&info.file);
            let corrupt = |message: String| CacheError::Corrupt {
                path: path.clone(),
                message,
            };
            let (file, metadata) = open_parquet_with_schema(&path, &schema).map_err(corrupt)?;
            let groups = metadata.metadata().row_groups();
            if info.first_block != next_block
                || groups.len() != info.blocks
                || groups.iter().any(|g| g.num_rows() != 1)
            {
                return Err(corrupt(format!(
                    "{} row groups, the manifest says {} blocks from block {}",
                    groups.len(),
                    info.blocks,
                    info.first_block
                )));
            }
            next_block += info.blocks;
            let mut roots = vec![
                schema.index_of(TOP_IDS).expect("column"),
                schema.index_of(TOP_LOGITS).expect("column"),
                schema.index_of(REST_LSE).expect("column"),
            ];
            roots.extend(
                needed
                    .iter()
                    .map(|&l| schema.index_of(&hidden_column(l)).expect("column")),
            );
            let projection = ProjectionMask::roots(metadata.parquet_schema(), roots);
            files.push(PartFile {
                path,
                file,
                metadata,
                first_block: info.first_block,
                blocks: info.blocks,
                projection,
            });
        }
        if next_block != contents.blocks {
            return Err(CacheError::Corrupt {
                path,
                message: format!(
                    "the files hold {next_block} blocks, the manifest says {}",
                    contents.blocks
                ),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            state_layers: expected.hidden_layers.clone(),
            manifest,
            files,
        })
    }

    pub fn manifest(&self) -> &CacheManifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Blocks cached.
    pub fn len(&self) -> usize {
        self.manifest.contents.blocks
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn seq_len(&self) -> usize {
        self.manifest.contents.seq_len
    }

    /// Checks that the cache was built from the blocks `shards` reads (same split, block
    /// length, count and token files).
    pub fn verify_tokens(&self, shards: &ShardReader) -> Result<(), CacheError> {
        let contents = &self.manifest.contents;
        let token_shards: Vec<String> = shards
            .manifest()
            .splits
            .get(shards.split())
            .map(|split| split.shards.iter().map(|s| s.sha256.clone()).collect())
            .unwrap_or_default();
        let mismatch = |field: &str, cached: String, expected: String| CacheError::Mismatch {
            path: self.dir.join(MANIFEST_FILE),
            field: field.to_string(),
            cached,
            expected,
        };
        if contents.split != shards.split() {
            return Err(mismatch(
                "split",
                contents.split.clone(),
                shards.split().into(),
            ));
        }
        if contents.seq_len != shards.seq_len() || contents.blocks != shards.len() {
            return Err(mismatch(
                "dataset.shards",
                format!("{} blocks of {}", contents.blocks, contents.seq_len),
                format!(
                    "{} blocks of {} in {}",
                    shards.len(),
                    shards.seq_len(),
                    shards.dir().display()
                ),
            ));
        }
        if contents.token_shards != token_shards {
            return Err(mismatch(
                "dataset.shards",
                format!("token shards {:?}", contents.token_shards),
                format!(
                    "token shards {token_shards:?} in {}",
                    shards.dir().display()
                ),
            ));
        }
        Ok(())
    }

    /// Reads block `index` from its part file (one row group decode).
    pub fn block(&self, index: usize) -> Result<CachedBlock, CacheError> {
        if index >= self.len() {
            return Err(CacheError::BlockOutOfRange {
                path: self.dir.clone(),
                index,
                len: self.len(),
            });
        }
        let part = &self.files[self.files.partition_point(|f| f.first_block <= index) - 1];
        debug_assert!(index < part.first_block + part.blocks);
        let corrupt = |message: String| CacheError::Corrupt {
            path: part.path.clone(),
            message,
        };
        let file = part
            .file
            .try_clone()
            .map_err(|err| CacheError::io(&part.path, err))?;
        let mut reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(file, part.metadata.clone())
                .with_row_groups(vec![index - part.first_block])
                .with_projection(part.projection.clone())
                .with_batch_size(1)
                .build()
                .map_err(|err| corrupt(err.to_string()))?;
        let batch = reader
            .next()
            .ok_or_else(|| corrupt(format!("block {index} decoded to nothing")))?
            .map_err(|err| corrupt(err.to_string()))?;
        let floats = |name: &str| -> Result<Vec<f32>, CacheError> {
            let column = batch
                .column_by_name(name)
                .ok_or_else(|| corrupt(format!("no column {name}")))?
                .as_fixed_size_list();
            Ok(column
                .values()
                .as_primitive::<Float32Type>()
                .values()
                .to_vec())
        };
        let top_ids = batch
            .column_by_name(TOP_IDS)
            .ok_or_else(|| corrupt(format!("no column {TOP_IDS}")))?
            .as_fixed_size_list()
            .values()
            .as_primitive::<Int32Type>()
            .values()
            .to_vec();
        let mut layers = self.state_layers.clone();
        layers.sort_unstable();
        layers.dedup();
        let states = layers
            .into_iter()
            .map(|layer| Ok((layer, floats(&hidden_column(layer))?)))
            .collect::<Result<Vec<_>, CacheError>>()?;
        Ok(CachedBlock {
            top_ids,
            top_logits: floats(TOP_LOGITS)?,
            rest_lse: floats(REST_LSE)?,
            states,
        })
    }

    /// The teacher outputs of a batch made of `block_indices` in that order, flattened to
    /// `[N = blocks * seq_len, ...]` positions as the live teacher's are (block-major, every
    /// position of a block including its padding; the objective's weights drop the padding).
    /// The batch must use full-length rows (`seq_len` tokens, mask = `real_len`).
    pub fn outputs<B: Backend>(
        &self,
        block_indices: &[usize],
        device: &B::Device,
    ) -> Result<TeacherOutputs<B>, CacheError> {
        let seq = self.seq_len();
        let k = self.manifest.contents.top_k;
        let width = self.manifest.contents.hidden_size;
        let positions = block_indices.len() * seq;
        let mut ids = Vec::with_capacity(positions * k);
        let mut logits = Vec::with_capacity(positions * k);
        let mut rest = Vec::with_capacity(positions);
        let mut states: Vec<Vec<f32>> =
            vec![Vec::with_capacity(positions * width); self.state_layers.len()];
        for &index in block_indices {
            let block = self.block(index)?;
            ids.extend(block.top_ids.iter().map(|&id| id as i64));
            logits.extend_from_slice(&block.top_logits);
            rest.extend_from_slice(&block.rest_lse);
            for (state, layer) in states.iter_mut().zip(&self.state_layers) {
                let (_, values) = block
                    .states
                    .iter()
                    .find(|(l, _)| l == layer)
                    .expect("every requested layer is read");
                state.extend_from_slice(values);
            }
        }
        Ok(TeacherOutputs {
            signal: TeacherSignal::TopK {
                ids: Tensor::from_data(TensorData::new(ids, [positions, k]), device),
                logits: Tensor::from_data(TensorData::new(logits, [positions, k]), device),
                rest_lse: Tensor::from_data(TensorData::new(rest, [positions]), device),
            },
            states: states
                .into_iter()
                .map(|values| {
                    Tensor::from_data(TensorData::new(values, [positions, width]), device)
                })
                .collect(),
        })
    }
}
