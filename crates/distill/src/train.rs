//! The training loop: a frozen teacher on the inference backend (no autodiff graph), the
//! student with autodiff, AdamW in two parameter groups as transformers' Trainer, warmup then
//! a linear/cosine/constant schedule, gradient accumulation, clipping by the global norm,
//! a seeded data order per epoch, evaluation, checkpoints, exact resume, Ctrl-C, logs.
//!
//! Conventions, as transformers' Trainer has them:
//! - an update averages the gradients of `gradient_accumulation_steps` micro-batches (each
//!   micro-batch's loss is its own token mean); the last update of an epoch may use fewer;
//! - `max_steps > 0` overrides `num_train_epochs` (epochs repeat until it is reached);
//! - update `s` (0-based) uses the learning rate `schedule(s)`;
//! - gradients are clipped as `clip_grad_norm_`: scaled by `max_norm / (norm + 1e-6)` when the
//!   global norm exceeds `max_norm`; the logged `grad_norm` is the norm before clipping.
//!
//! Resume: every checkpoint holds the float32 student, the projections, the optimizer moments
//! and the data position, so `resume` continues with the very losses the uninterrupted run
//! would have had (tested to 1e-6 in tests/train.rs).
//!
//! The teacher runs live on every batch, or, with `TrainOptions::cache_teacher`, once before
//! training into an offline cache that training reads instead ([`cached_teacher`]).

pub mod cached_teacher;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::optim::GradientsAccumulator;
use burn::tensor::backend::{AutodiffBackend, Backend};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use qwen2::{load_model, GenerationConfig, Model, Qwen2Config, SaveOptions};

use crate::checkpoint::{list_checkpoints, prune, PositionalIds, TrainerState, PROJECTIONS_FILE};
use crate::data::{epoch_order, BatchSource, SourceBatch};
use crate::evaluate::{evaluate, EvalMetrics};
use crate::gradients::{global_norm, scale};
use crate::metrics::{MetricsError, MetricsLog, Split};
use crate::objective::{
    inference_copy, loss_and_gradients, Batch, Objective, Student, TeacherOutputs,
};
use crate::optimizer::GroupedAdamW;
use crate::recipe::{EvalStrategy, Recipe, RecipeError, SaveStrategy};
use crate::schedule::LearningRate;
use crate::teacher_cache::CacheError;
use crate::trainer_checkpoint::{
    new_projections, read_projections, read_resume_state, write_checkpoint, write_json_atomically,
    CheckpointParts, LogWindow, ResumeState, StepRecord,
};
pub use cached_teacher::{CachedTeacher, TeacherCacheSummary};

/// How to run (as opposed to what to train, which the recipe says).
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from the newest complete checkpoint in `output_dir`.
    pub resume: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop at the next update: a checkpoint is written and
    /// `train` returns with `stopped_early`.
    pub stop: Arc<AtomicBool>,
    /// Overrides the recipe's `max_steps`.
    pub max_steps: Option<usize>,
    /// Train from the offline teacher cache (`--cache-teacher`): build it first if it is
    /// missing or stale (the only time the teacher is loaded), then never run the teacher.
    pub cache_teacher: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Optimizer updates done in total (including those before a resume).
    pub steps: usize,
    pub epochs_completed: usize,
    /// Real tokens trained on in total (including those before a resume).
    pub train_tokens: u64,
    /// Real tokens per second of training (forward, backward, update; not evaluation or
    /// saving) in this process.
    pub tokens_per_second: f64,
    /// Peak resident memory of the process (VmHWM), when the OS reports it. When this run
    /// built a teacher cache, the peak of training alone (measured from after the teacher was
    /// dropped); the build's is in `teacher_cache`.
    pub peak_rss_bytes: Option<u64>,
    /// Mean loss of the last update.
    pub last_train_loss: Option<f64>,
    /// Evaluation of the student as loaded, before the first update (fresh runs with an
    /// eval_strategy; also logged at step 0), the baseline the later evaluations improve on.
    pub initial_eval: Option<EvalMetrics>,
    pub last_eval: Option<EvalMetrics>,
    pub output_dir: PathBuf,
    /// The checkpoint with the lowest evaluation loss, when it was saved.
    pub best_checkpoint: Option<PathBuf>,
    pub last_checkpoint: Option<PathBuf>,
    /// The final student (`output_dir/final`), absent when the run was stopped early.
    pub final_model: Option<PathBuf>,
    /// The run ended because `TrainOptions::stop` was set.
    pub stopped_early: bool,
    /// What `cache_teacher` built or reused. With a cache, `kl_to_teacher` of the evaluations
    /// is the top-k approximation (logged as `kl_to_teacher_topk`).
    pub teacher_cache: Option<TeacherCacheSummary>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Model(#[from] qwen2::ModelError),
    #[error(transparent)]
    Data(#[from] preprocess::PreprocessError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: optimizer state: {message}", path.display())]
    Record { path: PathBuf, message: String },
    #[error("the training loss became {loss} at step {step} (epoch {epoch}): lower training.learning_rate, set training.max_grad_norm, or check the data; the last checkpoint is intact")]
    NonFinite {
        step: usize,
        epoch: usize,
        loss: f64,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Where the teacher's signal comes from.
pub enum TeacherSource<B: Backend> {
    /// Hard-label training (`hard_label_weight = 1`, no intermediate matches): no teacher.
    Absent,
    /// A frozen teacher model run on every batch, on the inference backend.
    Live(Arc<Model<B>>),
    /// The offline teacher cache (`--cache-teacher`): the cached top-k logits (and hidden
    /// states) of `split` and `blocks`.
    Cached(CachedTeacher<B>),
}

impl<B: Backend> TeacherSource<B> {
    pub fn is_present(&self) -> bool {
        !matches!(self, TeacherSource::Absent)
    }

    /// The teacher's outputs for `batch`, whose blocks are `blocks` of `split`; `None` without
    /// a teacher.
    pub fn outputs(
        &self,
        batch: &Batch,
        split: &str,
        blocks: &[usize],
        objective: &Objective,
    ) -> Result<Option<TeacherOutputs<B>>, TrainError> {
        Ok(match self {
            TeacherSource::Absent => None,
            TeacherSource::Live(model) => Some(TeacherOutputs::from_model(model, batch, objective)),
            TeacherSource::Cached(cache) => Some(cache.outputs(batch, split, blocks, objective)?),
        })
    }

    /// The metric name of evaluation's KL to the teacher: from a cache it is the top-k
    /// approximation (a lower bound of the full KL), named apart so curves never mix the two.
    pub fn kl_metric_name(&self) -> &'static str {
        match self {
            TeacherSource::Cached(_) => "kl_to_teacher_topk",
            _ => "kl_to_teacher",
        }
    }
}

/// Whether the recipe needs a teacher at all.
pub fn needs_teacher(recipe: &Recipe) -> bool {
    recipe.distillation.hard_label_weight < 1.0
        || !recipe.distillation.intermediate_matches.is_empty()
}

/// The objective of `recipe`, with the vocabulary rows and masked ids that the tokenizer
/// check decides (no check and no restriction without a teacher).
pub fn objective_for(
    recipe: &Recipe,
    teacher_vocab: Option<usize>,
    student_vocab: usize,
) -> Result<Objective, TrainError> {
    let Some(teacher_vocab) = teacher_vocab else {
        return Ok(objective_with_verdict(recipe, Vec::new(), None));
    };
    let report = preprocess::check_distillation_tokenizers(
        &recipe.teacher.local_dir,
        &recipe.student.local_dir,
    )?;
    for warning in report.warnings() {
        eprintln!("warning: {warning}");
    }
    let masked = report.ids_to_mask().to_vec();
    let shared = report
        .shared_vocab_rows()
        .min(teacher_vocab)
        .min(student_vocab);
    let vocab_rows = (!masked.is_empty() || teacher_vocab != student_vocab).then(|| {
        (0..shared as u32)
            .filter(|id| masked.binary_search(id).is_err())
            .collect()
    });
    Ok(objective_with_verdict(recipe, masked, vocab_rows))
}

/// The objective of `recipe` with a tokenizer check's verdict already made (masked input ids,
/// compared vocabulary rows).
pub fn objective_with_verdict(
    recipe: &Recipe,
    masked_token_ids: Vec<u32>,
    vocab_rows: Option<Vec<u32>>,
) -> Objective {
    let d = &recipe.distillation;
    Objective {
        temperature: d.temperature,
        hard_label_weight: d.hard_label_weight,
        kd_loss: recipe.kd_loss(),
        jsd_beta: d.jsd_beta,
        intermediate_matches: d.intermediate_matches.clone(),
        chunk_positions: d.chunk_positions,
        vocab_rows,
        masked_token_ids,
    }
}

/// Runs (or resumes) the training `recipe` describes.
pub fn train<B: AutodiffBackend>(
    recipe: &Recipe,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<TrainSummary, TrainError> {
    let t = &recipe.training;
    let output_dir = t.output_dir.clone();
    std::fs::create_dir_all(&output_dir).map_err(|source| TrainError::Io {
        path: output_dir.clone(),
        source,
    })?;
    let resume_from = if options.resume {
        let (_, dir) = list_checkpoints(&output_dir).pop().ok_or_else(|| {
            TrainError::Invalid(format!(
                "--resume: {} holds no complete checkpoint-* directory to resume from \
                 (run without --resume to start training)",
                output_dir.display()
            ))
        })?;
        Some(dir)
    } else {
        if let Some((_, dir)) = list_checkpoints(&output_dir).pop() {
            return Err(TrainError::Invalid(format!(
                "{} already holds checkpoints of an earlier run (e.g. {}): pass --resume to \
                 continue it, or set training.output_dir to a new directory",
                output_dir.display(),
                dir.display()
            )));
        }
        None
    };

    // Data.
    let mut train_data = BatchSource::open(
        &recipe.dataset.shards,
        &recipe.dataset.train_split,
        t.per_device_train_batch_size,
    )?;
    if train_data.blocks() == 0 {
        return Err(TrainError::Invalid(format!(
            "{}: split `{}` has no blocks",
            recipe.dataset.shards.display(),
            recipe.dataset.train_split
        )));
    }
    let mut eval_data = match t.eval_strategy {
        EvalStrategy::No => None,
        _ => Some(BatchSource::open(
            &recipe.dataset.shards,
            &recipe.dataset.eval_split,
            t.per_device_eval_batch_size,
        )?),
    };

    // Models.
    let student_dir = &recipe.student.local_dir;
    let student_config = Qwen2Config::from_file(student_dir)?;
    let generation = GenerationConfig::from_dir(student_dir, &student_config)?;
    if train_data.tokenizer_vocab_size() > student_config.vocab_size {
        return Err(TrainError::Invalid(format!(
            "{}: the shards' tokenizer has {} ids but the student {} has {} embedding rows: \
             preprocess the data with the student's tokenizer",
            recipe.dataset.shards.display(),
            train_data.tokenizer_vocab_size(),
            student_dir.display(),
            student_config.vocab_size
        )));
    }
    let mut cache_summary = None;
    let (teacher, objective, teacher_width) = if !needs_teacher(recipe) {
        let objective = objective_for(recipe, None, student_config.vocab_size)?;
        (TeacherSource::Absent, objective, student_config.hidden_size)
    } else if options.cache_teacher {
        let prepared =
            cached_teacher::prepare::<B::InnerBackend>(recipe, &student_config, options, device)?;
        cache_summary = Some(prepared.summary);
        (prepared.source, prepared.objective, prepared.teacher_width)
    } else {
        let (model, config) = load_model::<B::InnerBackend>(&recipe.teacher.local_dir, device)?;
        recipe.check_layers(
            Path::new("recipe"),
            config.num_hidden_layers,
            student_config.num_hidden_layers,
        )?;
        let objective = objective_for(recipe, Some(model.vocab_size()), student_config.vocab_size)?;
        let width = model.hidden_size();
        (TeacherSource::Live(Arc::new(model)), objective, width)
    };

    let weights_dir = resume_from.as_deref().unwrap_or(student_dir);
    let (model, _) = load_model::<B>(weights_dir, device)?;
    let mut projections = new_projections::<B>(
        &objective.intermediate_matches,
        student_config.hidden_size,
        teacher_width,
        t.seed,
        device,
    );
    if let Some(dir) = &resume_from {
        projections = read_projections(projections, &dir.join(PROJECTIONS_FILE), device)?;
    }
    let mut student = PositionalIds::assign(Student { model, projections });
    let mut optimizer = GroupedAdamW::<B>::new(t);
    if let Some(dir) = &resume_from {
        optimizer = optimizer
            .load(dir, device)
            .map_err(|e| TrainError::Record {
                path: dir.clone(),
                message: e.to_string(),
            })?;
    }

    // Where training stands.
    let mut state = match &resume_from {
        Some(dir) => read_resume_state(dir)?,
        None => ResumeState {
            trainer: TrainerState {
                global_step: 0,
                epoch: 0,
                batches_in_epoch: 0,
                tokens_seen: 0,
                seed: t.seed,
                best_metric: None,
                best_checkpoint: None,
            },
            log_window: LogWindow::default(),
            history: Vec::new(),
        },
    };
    if state.trainer.seed != t.seed {
        return Err(TrainError::Invalid(format!(
            "--resume: the checkpoint was trained with training.seed = {}, the recipe says {}: \
             the data order would change",
            state.trainer.seed, t.seed
        )));
    }
    let batches_per_epoch = train_data.batches_per_epoch();
    let accumulation = t.gradient_accumulation_steps;
    let steps_per_epoch = batches_per_epoch.div_ceil(accumulation);
    let max_steps = options.max_steps.unwrap_or(t.max_steps);
    let total_steps = if max_steps > 0 {
        max_steps
    } else {
        steps_per_epoch * t.num_train_epochs
    };
    let warmup_steps = if t.warmup_steps > 0 {
        t.warmup_steps
    } else {
        (t.warmup_ratio * total_steps as f64).ceil() as usize
    };
    let schedule = LearningRate {
        base: t.learning_rate,
        schedule: t.lr_scheduler_type,
        warmup_steps,
        total_steps,
    };
    write_json_atomically(&output_dir.join("recipe.json"), recipe)?;
    let mut metrics = match &resume_from {
        Some(_) => MetricsLog::open_resumed(&output_dir, state.trainer.global_step as u64)?,
        None => MetricsLog::open(&output_dir, false)?,
    };

    let progress = progress_bar(options.progress, total_steps, state.trainer.global_step);
    let mut summary = TrainSummary {
        steps: state.trainer.global_step,
        epochs_completed: state.trainer.epoch,
        train_tokens: state.trainer.tokens_seen,
        tokens_per_second: 0.0,
        peak_rss_bytes: None,
        last_train_loss: state.history.last().map(|r| r.loss),
        initial_eval: None,
        last_eval: None,
        output_dir: output_dir.clone(),
        best_checkpoint: state
            .trainer
            .best_checkpoint
            .as_ref()
            .map(|name| output_dir.join(name)),
        last_checkpoint: resume_from.clone(),
        final_model: None,
        stopped_early: false,
        teacher_cache: cache_summary,
    };
    let mut saved_at = resume_from.as_ref().map(|_| state.trainer.global_step);
    let mut evaluated_at = None;
    let mut train_seconds = 0.0;
    let mut run_tokens = 0u64;
    let mut window_started = Instant::now();
    let mut order = epoch_order(train_data.blocks(), t.seed, state.trainer.epoch);
    if let (None, Some(data)) = (&resume_from, eval_data.as_mut()) {
        let result = run_eval(&student, &teacher, data, &objective, t.max_eval_batches)?;
        log_eval(&mut metrics, 0, 0.0, &result, &teacher)?;
        summary.initial_eval = Some(result);
    }

    while state.trainer.global_step < total_steps {
        let step = state.trainer.global_step;
        let started = Instant::now();
        let micro_batches = accumulation.min(batches_per_epoch - state.trainer.batches_in_epoch);
        let mut accumulator = GradientsAccumulator::<Student<B>>::new();
        let (mut loss_sum, mut step_tokens) = (0.0, 0u64);
        for k in 0..micro_batches {
            let SourceBatch { batch, blocks } =
                train_data.batch(&order, state.trainer.batches_in_epoch + k)?;
            let outputs = teacher
                .outputs(&batch, train_data.split(), &blocks, &objective)?
                .unwrap_or_else(TeacherOutputs::absent);
            let (grads, losses) = loss_and_gradients(&student, &outputs, &batch, &objective);
            loss_sum += losses.total;
            step_tokens += losses.real_tokens as u64;
            accumulator.accumulate(&student, grads);
        }
        let loss = loss_sum / micro_batches as f64;
        if !loss.is_finite() {
            progress.abandon();
            return Err(TrainError::NonFinite {
                step: step + 1,
                epoch: state.trainer.epoch,
                loss,
            });
        }
        let mut grads = accumulator.grads();
        scale(&student, &mut grads, 1.0 / micro_batches as f64);
        let grad_norm = global_norm(&student, &grads);
        if t.max_grad_norm > 0.0 && grad_norm > t.max_grad_norm {
            scale(&student, &mut grads, t.max_grad_norm / (grad_norm + 1e-6));
        }
        let lr = schedule.at(step);
        student = optimizer.step(lr, student, grads);
        train_seconds += started.elapsed().as_secs_f64();

        state.trainer.global_step += 1;
        state.trainer.batches_in_epoch += micro_batches;
        state.trainer.tokens_seen += step_tokens;
        run_tokens += step_tokens;
        let step = state.trainer.global_step;
        state.history.push(StepRecord {
            step,
            loss,
            lr,
            grad_norm,
        });
        summary.last_train_loss = Some(loss);
        let epoch_done = state.trainer.batches_in_epoch >= batches_per_epoch;
        let epoch_position = state.trainer.epoch as f64
            + state.trainer.batches_in_epoch as f64 / batches_per_epoch as f64;
        if epoch_done {
            state.trainer.epoch += 1;
            state.trainer.batches_in_epoch = 0;
            order = epoch_order(train_data.blocks(), t.seed, state.trainer.epoch);
        }

        let window = &mut state.log_window;
        window.loss_sum += loss;
        window.steps += 1;
        window.tokens += step_tokens;
        if step % t.logging_steps == 0 {
            let seconds = window_started.elapsed().as_secs_f64().max(1e-9);
            metrics.log(
                step as u64,
                epoch_position,
                Split::Train,
                &[
                    ("loss", window.loss_sum / window.steps as f64),
                    ("lr", lr),
                    ("grad_norm", grad_norm),
                    ("tokens_per_s", window.tokens as f64 / seconds),
                ],
            )?;
            *window = LogWindow::default();
            window_started = Instant::now();
        }
        let tokens_per_second = run_tokens as f64 / train_seconds.max(1e-9);
        progress.set_position(step as u64);
        progress.set_message(format!(
            "epoch {epoch_position:.2} | loss {loss:.4} | {tokens_per_second:.0} tok/s"
        ));

        // Evaluation.
        let eval_now = match t.eval_strategy {
            EvalStrategy::No => false,
            EvalStrategy::Steps => step % t.eval_steps == 0,
            EvalStrategy::Epoch => epoch_done,
        };
        let mut improved = false;
        if eval_now {
            let data = eval_data
                .as_mut()
                .expect("opened when eval_strategy is not no");
            let result = run_eval(&student, &teacher, data, &objective, t.max_eval_batches)?;
            log_eval(&mut metrics, step, epoch_position, &result, &teacher)?;
            improved = state
                .trainer
                .best_metric
                .is_none_or(|best| result.loss < best);
            if improved {
                state.trainer.best_metric = Some(result.loss);
            }
            summary.last_eval = Some(result);
            evaluated_at = Some(step);
        }

        // Checkpoints.
        let stop = options.stop.load(Ordering::SeqCst);
        let last = step == total_steps;
        let save_now = stop
            || last
            || match t.save_strategy {
                SaveStrategy::Best => improved,
                SaveStrategy::Last | SaveStrategy::Steps => step % t.save_steps == 0,
                SaveStrategy::Epoch => epoch_done,
            };
        if save_now {
            if improved {
                state.trainer.best_checkpoint = Some(crate::checkpoint::checkpoint_name(step));
            }
            let parts = CheckpointParts {
                student: &student,
                student_config: &student_config,
                generation: &generation,
                tokenizer_dir: student_dir,
                optimizer: &optimizer,
            };
            let dir = write_checkpoint(&output_dir, &parts, &state)?;
            let keep = match t.save_strategy {
                SaveStrategy::Last => 1,
                _ => t.save_total_limit,
            };
            prune(&output_dir, keep, state.trainer.best_checkpoint.as_deref()).map_err(
                |source| TrainError::Io {
                    path: output_dir.clone(),
                    source,
                },
            )?;
            summary.last_checkpoint = Some(dir);
            saved_at = Some(step);
        }
        if stop && !last {
            summary.stopped_early = true;
            break;
        }
    }
    metrics.flush()?;

    if !summary.stopped_early {
        let step = state.trainer.global_step;
        if let (Some(data), true) = (eval_data.as_mut(), evaluated_at != Some(step)) {
            let result = run_eval(&student, &teacher, data, &objective, t.max_eval_batches)?;
            let epoch = state.trainer.epoch as f64
                + state.trainer.batches_in_epoch as f64 / batches_per_epoch as f64;
            log_eval(&mut metrics, step, epoch, &result, &teacher)?;
            summary.last_eval = Some(result);
        }
        if saved_at != Some(step) && step > 0 {
            // Only reached when a resumed run had nothing left to do but its checkpoint is older.
            let parts = CheckpointParts {
                student: &student,
                student_config: &student_config,
                generation: &generation,
                tokenizer_dir: student_dir,
                optimizer: &optimizer,
            };
            summary.last_checkpoint = Some(write_checkpoint(&output_dir, &parts, &state)?);
        }
        let final_dir = output_dir.join("final");
        let dtype = match t.save_dtype.as_str() {
            "float32" => qwen2::safetensors::Dtype::F32,
            _ => qwen2::safetensors::Dtype::BF16,
        };
        qwen2::save_model(
            &inference_copy(&student).model,
            &student_config,
            &final_dir,
            &SaveOptions {
                dtype,
                tokenizer_dir: Some(student_dir),
                generation: Some(&generation),
            },
        )?;
        summary.final_model = Some(final_dir);
    }
    progress.finish();

    summary.steps = state.trainer.global_step;
    summary.epochs_completed = state.trainer.epoch;
    summary.train_tokens = state.trainer.tokens_seen;
    summary.tokens_per_second = run_tokens as f64 / train_seconds.max(1e-9);
    summary.peak_rss_bytes = qwen2::memory::peak_rss_bytes();
    summary.best_checkpoint = state
        .trainer
        .best_checkpoint
        .as_ref()
        .map(|name| output_dir.join(name))
        .filter(|dir| dir.exists());
    Ok(summary)
}

fn run_eval<B: AutodiffBackend>(
    student: &Student<B>,
    teacher: &TeacherSource<B::InnerBackend>,
    data: &mut BatchSource,
    objective: &Objective,
    max_batches: usize,
) -> Result<EvalMetrics, TrainError> {
    evaluate(
        &inference_copy(student),
        teacher,
        data,
        objective,
        max_batches,
    )
}

fn log_eval<B: Backend>(
    metrics: &mut MetricsLog,
    step: usize,
    epoch: f64,
    result: &EvalMetrics,
    teacher: &TeacherSource<B>,
) -> Result<(), TrainError> {
    let mut values = vec![("loss", result.loss), ("perplexity", result.perplexity)];
    if let Some(kl) = result.kl_to_teacher {
        values.push((teacher.kl_metric_name(), kl));
    }
    metrics.log(step as u64, epoch, Split::Eval, &values)?;
    Ok(())
}

fn progress_bar(visible: bool, total_steps: usize, position: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total_steps as u64),
        if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} step {pos}/{len} | {msg} | {elapsed_precise} elapsed, ETA {eta_precise}",
        )
        .expect("valid template"),
    );
    bar.set_position(position as u64);
    bar.reset_eta();
    bar
}
