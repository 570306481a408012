//! `--cache-teacher` (`TrainOptions::cache_teacher`): the teacher runs once over the token
//! shards, its top-k logits (and the hidden states the intermediate matches need) are stored
//! beside them (crate::teacher_cache), and training reads them instead of running the teacher.
//!
//! - Where: `teacher_cache.dir` if the recipe sets it, else `<dataset.shards>/teacher-cache`;
//!   the training split's cache in `<that>/<train_split>`, the evaluation split's in
//!   `<that>/<eval_split>`.
//! - Two caches, because evaluation measures the KL at temperature 1 (a property of the two
//!   models, see crate::evaluate) while training uses the recipe's temperature, and a cache bakes
//!   its temperature into the rest-of-vocabulary log-sum-exp. The evaluation cache stores no
//!   hidden states. When the two splits are the same split and the temperature is 1 the
//!   training cache serves both; with another temperature the evaluation one is
//!   `<that>/<split>-temperature-1`.
//! - A complete cache that matches the run is opened without loading the teacher; otherwise the
//!   teacher is loaded, the missing caches are built (or completed), and the teacher is dropped
//!   before training starts, so the training phase never holds it. The peak RSS reported for
//!   training is then measured from that point (the build's peak is reported on its own).
//! - `teacher.json` in the training cache records what the run knew of the teacher (its
//!   fingerprint, sizes and the tokenizer check's verdict), so training from a complete cache
//!   works even without the teacher's directory (e.g. a cache built on a bigger machine).
//! - Evaluation's KL to the teacher from a cache is the top-k approximation (the teacher's
//!   kept tokens plus one bucket of the rest, a lower bound of the full KL): it is logged as
//!   `kl_to_teacher_topk`, never as `kl_to_teacher`. Eval loss and perplexity are exact.
//! - The cached soft loss is the forward KL only, so the recipe's `kd_loss_type` must be `kl`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use preprocess::ShardReader;
use qwen2::{load_model, ModelConfig};
use serde::{Deserialize, Serialize};

use super::{
    build_cache, BuildOptions, CacheSpec, CachedTeacher, TeacherCache, TeacherFingerprint,
};
use crate::error::TrainError;
use crate::losses::KdLoss;
use crate::measure::evaluation_objective;
use crate::objective::Objective;
use crate::options::TrainOptions;
use crate::recipe::{EvalStrategy, Recipe};
use crate::teacher::TeacherSource;
use crate::verdict::{objective_for, objective_with_verdict};

/// File of the training cache that records the teacher (see the module docs).
pub const TEACHER_RECORD_FILE: &str = "teacher.json";
const RECORD_FORMAT: &str = "distill-teacher-record/1";

/// The cache root of `recipe`: `teacher_cache.dir`, else `<dataset.shards>/teacher-cache`.
pub fn cache_root(recipe: &Recipe) -> PathBuf {
    recipe
        .teacher_cache
        .dir
        .clone()
        .unwrap_or_else(|| recipe.dataset.shards.join("teacher-cache"))
}

/// The training split's cache directory.
pub fn train_cache_dir(recipe: &Recipe) -> PathBuf {
    cache_root(recipe).join(&recipe.dataset.train_split)
}

/// The evaluation split's cache directory (temperature 1, no hidden states).
pub fn eval_cache_dir(recipe: &Recipe) -> PathBuf {
    let split = &recipe.dataset.eval_split;
    if *split == recipe.dataset.train_split && recipe.distillation.temperature != 1.0 {
        cache_root(recipe).join(format!("{split}-temperature-1"))
    } else {
        cache_root(recipe).join(split)
    }
}

/// What a run knew of the teacher when it built the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherRecord {
    pub format: String,
    pub teacher: TeacherFingerprint,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    /// The tokenizer check's verdict: input ids left out of the soft loss.
    pub masked_token_ids: Vec<u32>,
    /// The tokenizer check's verdict: vocabulary rows compared, as half-open `[start, end)`
    /// ranges; `None` = all rows.
    pub vocab_rows: Option<Vec<[u32; 2]>>,
    /// sha256 of the student's tokenizer.json the verdict was made with.
    pub student_tokenizer_sha256: String,
}

impl TeacherRecord {
    fn vocab_rows(&self) -> Option<Vec<u32>> {
        self.vocab_rows
            .as_ref()
            .map(|ranges| ranges.iter().flat_map(|&[a, b]| a..b).collect())
    }

    fn load(path: &Path) -> Result<Self, TrainError> {
        let bytes = std::fs::read(path).map_err(TrainError::io(path))?;
        let record: Self = serde_json::from_slice(&bytes).map_err(|err| {
            TrainError::Invalid(format!(
                "{}: unreadable teacher record ({err}); run once with the teacher present \
                 (teacher.local_dir) to rewrite it",
                path.display()
            ))
        })?;
        if record.format != RECORD_FORMAT {
            return Err(TrainError::Invalid(format!(
                "{}: format `{}`, this build reads `{RECORD_FORMAT}`; run once with the teacher \
                 present (teacher.local_dir) to rewrite it",
                path.display(),
                record.format
            )));
        }
        Ok(record)
    }
}

/// `rows` as half-open ranges of consecutive ids.
fn ranges(rows: &[u32]) -> Vec<[u32; 2]> {
    let mut out: Vec<[u32; 2]> = Vec::new();
    for &row in rows {
        match out.last_mut() {
            Some(last) if last[1] == row => last[1] = row + 1,
            _ => out.push([row, row + 1]),
        }
    }
    out
}

/// What `--cache-teacher` did, for the run's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherCacheSummary {
    /// The caches read (training split first).
    pub dirs: Vec<PathBuf>,
    pub top_k: usize,
    /// Bytes of the caches' part files.
    pub bytes: u64,
    /// Blocks the teacher ran over in this run (0 when complete caches were reused).
    pub blocks_computed: usize,
    /// Seconds spent loading the teacher and building (0 when reused).
    pub build_seconds: f64,
    /// Peak RSS while the teacher was loaded and the caches built (None when reused).
    pub build_peak_rss_bytes: Option<u64>,
    /// The teacher's directory was not there: its fingerprint and tokenizer verdict came from
    /// the cache's teacher.json.
    pub teacher_dir_missing: bool,
}

/// The opened caches, as the teacher's signal for training and evaluation, and what was done.
pub struct PreparedTeacher<B: Backend> {
    pub source: TeacherSource<B>,
    pub summary: TeacherCacheSummary,
}

struct Job {
    split: String,
    dir: PathBuf,
    spec: CacheSpec,
}

/// What `--cache-teacher` will read and build, decided before any weights load: the teacher's
/// record (from its directory, or the cache's teacher.json when the directory is gone) and one
/// job per cache (the training split's, then evaluation's).
pub struct CachePlan {
    record: TeacherRecord,
    teacher_present: bool,
    jobs: Vec<Job>,
}

impl CachePlan {
    /// The teacher's hidden width (for the projections of intermediate matches).
    pub fn teacher_width(&self) -> usize {
        self.record.hidden_size
    }

    /// The teacher's decoder layers.
    pub fn teacher_layers(&self) -> usize {
        self.record.num_hidden_layers
    }
}

/// The caches `recipe` needs and the objective they serve (the tokenizer check's verdict made
/// now with the teacher present, else read from the cache's record). Refuses what the cache
/// cannot serve: another soft loss than the forward KL, a record made with another student
/// tokenizer.
pub fn plan(
    recipe: &Recipe,
    student_config: &ModelConfig,
) -> Result<(CachePlan, Objective), TrainError> {
    if recipe.kd_loss() != KdLoss::Kl {
        return Err(TrainError::Invalid(format!(
            "--cache-teacher: distillation.kd_loss_type is `{}`, but the cached soft loss is the \
             top-k forward KL; set distillation.kd_loss_type = \"kl\" or train without \
             --cache-teacher",
            recipe.distillation.kd_loss_type.name()
        )));
    }
    let teacher_dir = &recipe.teacher.local_dir;
    let train_dir = train_cache_dir(recipe);
    let record_path = train_dir.join(TEACHER_RECORD_FILE);
    let student_tokenizer = &recipe.student.local_dir;
    let teacher_present = if qwen2::is_gguf(teacher_dir) {
        teacher_dir.is_file()
    } else {
        teacher_dir.join("config.json").is_file()
    };
    let (record, objective) = if teacher_present {
        let config = ModelConfig::from_file(teacher_dir)?;
        let objective = objective_for(recipe, Some(config.vocab_size), student_config.vocab_size)?;
        let record = TeacherRecord {
            format: RECORD_FORMAT.to_string(),
            teacher: TeacherFingerprint::of_dir(teacher_dir)?,
            vocab_size: config.vocab_size,
            hidden_size: config.hidden_size,
            num_hidden_layers: config.num_hidden_layers,
            masked_token_ids: objective.masked_token_ids.clone(),
            vocab_rows: objective.vocab_rows.as_deref().map(ranges),
            student_tokenizer_sha256: preprocess::tokenizer_sha256(student_tokenizer)?,
        };
        (record, objective)
    } else {
        if !record_path.is_file() {
            return Err(TrainError::Invalid(format!(
                "--cache-teacher: the teacher ({}, teacher.local_dir) is not there and no cache \
                 was built for this recipe ({} is missing): build the cache once with the teacher \
                 present",
                teacher_dir.display(),
                record_path.display()
            )));
        }
        let record = TeacherRecord::load(&record_path)?;
        if record.student_tokenizer_sha256 != preprocess::tokenizer_sha256(student_tokenizer)? {
            return Err(TrainError::Invalid(format!(
                "--cache-teacher: {} was made with another student tokenizer than {}, and the \
                 teacher ({}) is not there to check the tokenizers again: restore \
                 teacher.local_dir",
                record_path.display(),
                student_tokenizer.display(),
                teacher_dir.display()
            )));
        }
        let objective =
            objective_with_verdict(recipe, record.masked_token_ids.clone(), record.vocab_rows());
        (record, objective)
    };

    let top_k = recipe.teacher_cache.top_k;
    let batch_size = recipe.training.per_device_eval_batch_size;
    let mut jobs = vec![Job {
        split: recipe.dataset.train_split.clone(),
        dir: train_dir.clone(),
        spec: CacheSpec::for_objective(record.teacher.clone(), &objective, top_k, batch_size),
    }];
    if recipe.training.eval_strategy != EvalStrategy::No {
        jobs.push(Job {
            split: recipe.dataset.eval_split.clone(),
            dir: eval_cache_dir(recipe),
            spec: CacheSpec::for_objective(
                record.teacher.clone(),
                &evaluation_objective(&objective),
                top_k,
                batch_size,
            ),
        });
    }

    Ok((
        CachePlan {
            record,
            teacher_present,
            jobs,
        },
        objective,
    ))
}

/// Builds (or reuses) the caches `cache` plans and opens them; the teacher is loaded only
/// when a cache has to be built, and dropped before this returns. `options.stop` (Ctrl-C)
/// interrupts a build with [`CacheError::Stopped`](super::CacheError::Stopped),
/// keeping its finished part files; `options.progress` draws the build's progress bar.
pub fn prepare<B: Backend>(
    recipe: &Recipe,
    cache: &CachePlan,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<PreparedTeacher<B>, TrainError> {
    let progress = options.progress;
    let CachePlan {
        record,
        teacher_present,
        jobs,
    } = cache;
    let teacher_present = *teacher_present;
    let teacher_dir = &recipe.teacher.local_dir;
    let record_path = train_cache_dir(recipe).join(TEACHER_RECORD_FILE);
    let top_k = recipe.teacher_cache.top_k;

    // Which caches are missing or stale (they are built into directories of their own; an
    // evaluation cache that is the training cache is never built on its own).
    let mut to_build = Vec::new();
    for (index, job) in jobs.iter().enumerate() {
        if index > 0 && job.dir == jobs[0].dir {
            continue;
        }
        if let Err(error) = open_checked(recipe, job) {
            if !teacher_present {
                return Err(TrainError::Invalid(format!(
                    "--cache-teacher: {error}; the teacher ({}, teacher.local_dir) is not there \
                     to build it",
                    teacher_dir.display()
                )));
            }
            to_build.push(index);
        }
    }
    let mut summary = TeacherCacheSummary {
        dirs: Vec::new(),
        top_k,
        bytes: 0,
        blocks_computed: 0,
        build_seconds: 0.0,
        build_peak_rss_bytes: None,
        teacher_dir_missing: !teacher_present,
    };
    if !to_build.is_empty() {
        let started = Instant::now();
        let (teacher, _) = load_model::<B>(teacher_dir, device)?;
        for &index in &to_build {
            let job = &jobs[index];
            let mut shards = ShardReader::open(&recipe.dataset.shards, &job.split)?;
            if progress {
                eprintln!(
                    "caching the teacher's top-{top_k} logits of split `{}` in {}",
                    job.split,
                    job.dir.display()
                );
            }
            let built = build_cache(
                &teacher,
                &mut shards,
                &job.spec,
                &job.dir,
                &BuildOptions {
                    progress,
                    chunk_positions: recipe.distillation.chunk_positions,
                    blocks_per_file: None,
                    stop: Some(options.stop.clone()),
                },
            )?;
            summary.blocks_computed += built.blocks_computed;
        }
        summary.build_peak_rss_bytes = qwen2::memory::peak_rss_bytes();
        drop(teacher);
        release_freed_memory();
        summary.build_seconds = started.elapsed().as_secs_f64();
        // From here on the peak is training's own.
        qwen2::memory::reset_peak_rss();
    }
    if teacher_present {
        let current = TeacherRecord::load(&record_path).ok();
        if current.as_ref() != Some(record) {
            let text = serde_json::to_string_pretty(record).expect("serialisable") + "\n";
            fsio::write_atomic(&record_path, text.as_bytes())?;
        }
    }

    let mut caches = Vec::with_capacity(jobs.len());
    summary.dirs.clear();
    for job in jobs.iter() {
        let cache = open_checked(recipe, job)?;
        if !summary.dirs.contains(&job.dir) {
            summary.bytes += cache.manifest().bytes;
            summary.dirs.push(job.dir.clone());
        }
        caches.push(cache);
    }
    Ok(PreparedTeacher {
        source: TeacherSource::Cached(CachedTeacher::new(caches, device.clone())),
        summary,
    })
}

/// Hands the dropped teacher's memory back to the OS. glibc keeps freed blocks in its arenas
/// (one per thread that allocated, and rayon's threads ran the teacher), so without this the
/// training phase would still hold the teacher's pages in its RSS.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the OS; it touches no live memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Opens the cache of `job` and checks it against its split's token shards.
fn open_checked(recipe: &Recipe, job: &Job) -> Result<TeacherCache, TrainError> {
    let shards = ShardReader::open(&recipe.dataset.shards, &job.split)?;
    let cache = TeacherCache::open(&job.dir, &job.spec)?;
    cache.verify_tokens(&shards)?;
    Ok(cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_rows_round_trip_through_ranges() {
        let rows: Vec<u32> = (0..10).chain(12..13).chain(20..25).collect();
        let encoded = ranges(&rows);
        assert_eq!(encoded, vec![[0, 10], [12, 13], [20, 25]]);
        let record = TeacherRecord {
            format: RECORD_FORMAT.into(),
            teacher: TeacherFingerprint {
                dir: "t".into(),
                config_sha256: "0".repeat(64),
                weight_files: Vec::new(),
            },
            vocab_size: 30,
            hidden_size: 8,
            num_hidden_layers: 2,
            masked_token_ids: vec![10, 11],
            vocab_rows: Some(encoded),
            student_tokenizer_sha256: String::new(),
        };
        assert_eq!(record.vocab_rows(), Some(rows));
    }
}
