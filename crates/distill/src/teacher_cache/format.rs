//! What a cache holds: the spec a run asks for, the contents that decide its bytes, the
//! manifest, and the one check of a cache against what is wanted of it
//! ([`CacheContents::difference`]), used by the build (reuse or complete only what it would
//! have written) and by the reader (serve only the values the run would have computed).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use preprocess::ShardReader;
use serde::{Deserialize, Serialize};

use super::{
    hidden_column, CacheError, BLOCK, EMPTY_REST_LSE, FORMAT, MANIFEST_FILE, REST_LSE, TOP_IDS,
    TOP_LOGITS,
};
use crate::objective::Objective;

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
    /// Fingerprints the checkpoint directory `dir` (config.json + *.safetensors), or a GGUF
    /// file (its metadata's config and its size).
    pub fn of_dir(dir: &Path) -> Result<Self, CacheError> {
        if qwen2::is_gguf(dir) {
            let config = qwen2::ModelConfig::from_file(dir)
                .map_err(|err| CacheError::io(dir, std::io::Error::other(err.to_string())))?;
            let bytes = std::fs::metadata(dir)
                .map_err(|err| CacheError::io(dir, err))?
                .len();
            let name = dir
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            return Ok(Self {
                dir: dir.display().to_string(),
                config_sha256: fsio::sha256_hex(
                    serde_json::to_string(&config).expect("json").as_bytes(),
                ),
                weight_files: vec![(name, bytes)],
            });
        }
        let config = dir.join("config.json");
        let config_sha256 = fsio::sha256_file(&config)?;
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

    pub(crate) fn describe(&self) -> String {
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
    pub(crate) fn stored_layers(&self) -> Vec<usize> {
        let mut layers = self.hidden_layers.clone();
        layers.sort_unstable();
        layers.dedup();
        layers
    }

    pub(crate) fn vocab_rows_info(&self) -> Option<VocabRows> {
        self.vocab_rows.as_ref().map(|rows| VocabRows::of(rows))
    }

    /// Checks the spec against the teacher that will fill the cache.
    pub(crate) fn validate(&self, vocab_size: usize, num_layers: usize) -> Result<(), CacheError> {
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
        let bytes: Vec<u8> = rows.iter().flat_map(|row| row.to_le_bytes()).collect();
        Self {
            count: rows.len(),
            sha256: fsio::sha256_hex(&bytes),
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
    /// `(first block, blocks)` of each part file.
    pub(crate) fn plan(&self) -> Vec<(usize, usize)> {
        let per_file = self.blocks_per_file.max(1);
        (0..self.blocks)
            .step_by(per_file)
            .map(|first| (first, per_file.min(self.blocks - first)))
            .collect()
    }

    pub(crate) fn schema(&self) -> SchemaRef {
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

pub(crate) fn describe_rows(rows: &Option<VocabRows>) -> String {
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

    pub(crate) fn files_present(&self, dir: &Path) -> bool {
        self.files.iter().all(|file| {
            std::fs::metadata(dir.join(&file.file))
                .is_ok_and(|m| m.is_file() && m.len() == file.bytes)
        })
    }
}

pub(crate) fn column_descriptions(contents: &CacheContents) -> BTreeMap<String, String> {
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

/// A field of a cache that differs from what is wanted, named as the recipe (or the data)
/// names it, with the cached and the wanted value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Difference {
    pub field: &'static str,
    pub cached: String,
    pub wanted: String,
}

/// What is wanted of a cache; a field left `None` is not known to the caller and not checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Wanted {
    pub format: Option<String>,
    pub teacher: Option<TeacherFingerprint>,
    pub split: Option<String>,
    pub token_shards: Option<Vec<String>>,
    pub seq_len: Option<usize>,
    pub blocks: Option<usize>,
    pub top_k: Option<usize>,
    pub temperature: Option<f64>,
    /// The hidden layers wanted; with `more_layers_ok`, a cache holding others too serves.
    pub hidden_layers: Option<Vec<usize>>,
    pub more_layers_ok: bool,
    pub hidden_size: Option<usize>,
    pub vocab_size: Option<usize>,
    pub vocab_rows: Option<Option<VocabRows>>,
    pub blocks_per_file: Option<usize>,
}

impl Wanted {
    /// Exactly `contents`: what a build reuses or completes (it would write the same bytes).
    pub fn exactly(contents: &CacheContents) -> Self {
        let c = contents.clone();
        Self {
            format: Some(c.format),
            teacher: Some(c.teacher),
            split: Some(c.split),
            token_shards: Some(c.token_shards),
            seq_len: Some(c.seq_len),
            blocks: Some(c.blocks),
            top_k: Some(c.top_k),
            temperature: Some(c.temperature),
            hidden_layers: Some(c.hidden_layers),
            more_layers_ok: false,
            hidden_size: Some(c.hidden_size),
            vocab_size: Some(c.vocab_size),
            vocab_rows: Some(c.vocab_rows),
            blocks_per_file: Some(c.blocks_per_file),
        }
    }

    /// The values a run with `spec` reads: same teacher, top k, temperature and vocabulary
    /// rows, and at least its hidden layers.
    pub fn values_of(spec: &CacheSpec) -> Self {
        Self {
            teacher: Some(spec.teacher.clone()),
            top_k: Some(spec.top_k),
            temperature: Some(spec.temperature),
            hidden_layers: Some(spec.stored_layers()),
            more_layers_ok: true,
            vocab_rows: Some(spec.vocab_rows_info()),
            ..Self::default()
        }
    }

    /// The blocks `shards` reads: same split, block length, count and token files.
    pub fn tokens_of(shards: &ShardReader) -> Self {
        Self {
            split: Some(shards.split().to_string()),
            token_shards: Some(token_shard_hashes(shards)),
            seq_len: Some(shards.seq_len()),
            blocks: Some(shards.len()),
            ..Self::default()
        }
    }
}

/// sha256 of each token shard file of the split `shards` reads, from its manifest.
pub(crate) fn token_shard_hashes(shards: &ShardReader) -> Vec<String> {
    shards
        .manifest()
        .splits
        .get(shards.split())
        .map(|split| split.shards.iter().map(|s| s.sha256.clone()).collect())
        .unwrap_or_default()
}

impl CacheContents {
    /// The one check of a cache against what is wanted of it: the first field that differs
    /// (in the order below), or `None` when the cache serves.
    pub(crate) fn difference(&self, wanted: &Wanted) -> Option<Difference> {
        fn differs<T: PartialEq>(
            field: &'static str,
            cached: &T,
            wanted: &Option<T>,
            show: impl Fn(&T) -> String,
        ) -> Option<Difference> {
            let wanted = wanted.as_ref()?;
            (cached != wanted).then(|| Difference {
                field,
                cached: show(cached),
                wanted: show(wanted),
            })
        }
        let number = |n: &usize| n.to_string();
        differs("format", &self.format, &wanted.format, String::clone)
            .or_else(|| {
                differs(
                    "teacher.local_dir",
                    &self.teacher,
                    &wanted.teacher,
                    TeacherFingerprint::describe,
                )
            })
            .or_else(|| differs("split", &self.split, &wanted.split, String::clone))
            .or_else(|| {
                differs("dataset.shards", &self.seq_len, &wanted.seq_len, |n| {
                    format!("blocks of {n} tokens")
                })
            })
            .or_else(|| {
                differs("dataset.shards", &self.blocks, &wanted.blocks, |n| {
                    format!("{n} blocks")
                })
            })
            .or_else(|| {
                differs(
                    "dataset.shards",
                    &self.token_shards,
                    &wanted.token_shards,
                    |shards| format!("token shards {shards:?}"),
                )
            })
            .or_else(|| differs("teacher_cache.top_k", &self.top_k, &wanted.top_k, number))
            .or_else(|| {
                differs(
                    "distillation.temperature",
                    &self.temperature,
                    &wanted.temperature,
                    f64::to_string,
                )
            })
            .or_else(|| self.layer_difference(wanted))
            .or_else(|| {
                differs(
                    "hidden_size",
                    &self.hidden_size,
                    &wanted.hidden_size,
                    number,
                )
            })
            .or_else(|| differs("vocab_size", &self.vocab_size, &wanted.vocab_size, number))
            .or_else(|| {
                differs(
                    "vocab_rows",
                    &self.vocab_rows,
                    &wanted.vocab_rows,
                    describe_rows,
                )
            })
            .or_else(|| {
                differs(
                    "blocks_per_file",
                    &self.blocks_per_file,
                    &wanted.blocks_per_file,
                    number,
                )
            })
    }

    fn layer_difference(&self, wanted: &Wanted) -> Option<Difference> {
        const FIELD: &str = "distillation.intermediate_matches.layer_T";
        let layers = wanted.hidden_layers.as_ref()?;
        if !wanted.more_layers_ok {
            return (&self.hidden_layers != layers).then(|| Difference {
                field: FIELD,
                cached: format!("{:?}", self.hidden_layers),
                wanted: format!("{layers:?}"),
            });
        }
        let missing = layers.iter().find(|l| !self.hidden_layers.contains(l))?;
        Some(Difference {
            field: FIELD,
            cached: format!("{:?} (hidden states cached)", self.hidden_layers),
            wanted: format!("layer {missing} too"),
        })
    }

    /// [`CacheContents::difference`] as the error a run sees.
    pub(crate) fn check(&self, wanted: &Wanted, dir: &Path) -> Result<(), CacheError> {
        match self.difference(wanted) {
            None => Ok(()),
            Some(Difference {
                field,
                cached,
                wanted,
            }) => Err(CacheError::Mismatch {
                path: dir.join(MANIFEST_FILE),
                field: field.to_string(),
                cached,
                expected: wanted,
            }),
        }
    }
}
