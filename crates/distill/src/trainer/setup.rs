//! Setting a run up: the data, the teacher (live or cached), the student and the optimizer
//! (from the newest checkpoint when resuming), where training stands, and the logs.

use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use qwen2::{
    attach_lora, load_adapter, load_frozen_model, load_model, GenerationConfig, Model, ModelConfig,
};

use super::Trainer;
use crate::checkpoint::{new_projections, Checkpoint, PositionalIds, ResumeState, RunDir};
use crate::cross_tokenizer::Aligner;
use crate::data::{epoch_order, BatchSource};
use crate::error::TrainError;
use crate::metrics::MetricsLog;
use crate::objective::Student;
use crate::optimizer::GroupedAdamW;
use crate::options::TrainOptions;
use crate::plan::{RunPlan, TeacherPlan};
use crate::progress::Progress;
use crate::recipe::{EvalStrategy, Recipe, Training};
use crate::recipe_change::check_recipe_change;
use crate::schedule::LearningRate;
use crate::summary::TrainSummary;
use crate::teacher::TeacherSource;
use crate::teacher_cache::prepare::{self as cached_teacher, TeacherCacheSummary};

impl<'a, B: AutodiffBackend> Trainer<'a, B> {
    /// Opens the data, loads the teacher (or its cache) and the student (from the newest
    /// checkpoint with `options.resume`), and restores where training stands.
    pub fn setup(
        recipe: &'a Recipe,
        plan: RunPlan,
        options: &'a TrainOptions,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let t = &recipe.training;
        let run_dir = RunDir::create(&t.output_dir)?;
        let output_dir = run_dir.root().to_path_buf();
        let resume_from = run_dir.checkpoint_to_resume(options.resume)?;
        let max_steps = options.max_steps.unwrap_or(t.max_steps);
        let effective = with_max_steps(recipe, max_steps);
        if resume_from.is_some() {
            check_recipe_change(
                &run_dir.recipe_file(),
                &effective,
                options.allow_recipe_change,
            )?;
        }

        let (train_data, eval_data) = open_data(recipe)?;
        let teacher_width = plan.teacher_width();
        let RunPlan {
            student: student_config,
            teacher,
            objective,
            ..
        } = plan;
        let generation = GenerationConfig::from_dir(&recipe.student.local_dir, &student_config)?;
        let (teacher, cache_summary) = open_teacher::<B>(recipe, &teacher, options, device)?;

        let model = load_student::<B>(recipe, &student_config, resume_from.as_ref(), device)?;
        let mut projections = new_projections::<B>(
            &objective.intermediate_matches,
            student_config.hidden_size,
            teacher_width,
            t.seed,
            device,
        );
        if let Some(checkpoint) = &resume_from {
            projections = checkpoint.projections(projections, device)?;
        }
        let student = PositionalIds::assign(Student { model, projections });
        let mut optimizer = GroupedAdamW::<B>::new(t);
        if let Some(checkpoint) = &resume_from {
            optimizer = checkpoint.optimizer(optimizer, device)?;
        }

        let state = match &resume_from {
            Some(checkpoint) => checkpoint.resume_state()?,
            None => ResumeState::fresh(t.seed),
        };
        if state.trainer.seed != t.seed {
            return Err(TrainError::Invalid(format!(
                "--resume: the checkpoint was trained with training.seed = {}, the recipe says {}: \
                 the data order would change",
                state.trainer.seed, t.seed
            )));
        }
        let steps_per_epoch = train_data
            .batches_per_epoch()
            .div_ceil(t.gradient_accumulation_steps);
        let total_steps = if max_steps > 0 {
            max_steps
        } else {
            steps_per_epoch * t.num_train_epochs
        };
        let schedule = learning_rate(t, total_steps);
        run_dir.write_recipe(&effective)?;
        let metrics = match &resume_from {
            Some(_) => MetricsLog::open_resumed(&output_dir, state.trainer.global_step as u64)?,
            None => MetricsLog::open(&output_dir, false)?,
        };
        let progress = Progress::new(options.progress, total_steps, state.trainer.global_step);
        let summary = TrainSummary {
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
            last_checkpoint: resume_from.map(|checkpoint| checkpoint.dir().to_path_buf()),
            final_model: None,
            final_adapter: None,
            rollouts: None,
            stopped_early: false,
            teacher_cache: cache_summary,
        };
        let order = epoch_order(train_data.blocks(), t.seed, state.trainer.epoch);
        let resumed = summary.last_checkpoint.is_some();
        Ok(Self {
            recipe,
            options,
            run_dir,
            student_config,
            generation,
            teacher,
            objective,
            student: Some(student),
            optimizer,
            train_data,
            eval_data,
            order,
            schedule,
            total_steps,
            state,
            metrics,
            progress,
            summary,
            evaluated_at: None,
            resumed,
            train_seconds: 0.0,
            run_tokens: 0,
            window_started: Instant::now(),
        })
    }
}

/// The student: the recipe's model (or, resuming, the checkpoint's) with every parameter
/// trainable; or with `[lora]`, the recipe's model frozen (stored as `memory.frozen_dtype` says)
/// under fresh adapters (or the checkpoint's).
fn load_student<B: AutodiffBackend>(
    recipe: &Recipe,
    config: &ModelConfig,
    resume_from: Option<&Checkpoint>,
    device: &B::Device,
) -> Result<Model<B>, TrainError> {
    let student_dir = &recipe.student.local_dir;
    let checkpoint_has_adapter = resume_from.map(Checkpoint::holds_adapter);
    let resume_dir = resume_from.map(Checkpoint::dir);
    let Some(lora) = &recipe.lora else {
        if let (Some(dir), Some(true)) = (resume_dir, checkpoint_has_adapter) {
            return Err(TrainError::Invalid(format!(
                "--resume: {} holds a LoRA adapter but the recipe has no [lora] section: \
                 resume with the recipe the run was started with",
                dir.display()
            )));
        }
        let (model, _) = load_model::<B>(resume_dir.unwrap_or(student_dir), device)?;
        return Ok(model);
    };
    lora.validate(
        Some(config),
        &format!("recipe [lora] for the student {}", student_dir.display()),
    )?;
    if let (Some(dir), Some(false)) = (resume_dir, checkpoint_has_adapter) {
        return Err(TrainError::Invalid(format!(
            "--resume: {} holds a full-parameter student but the recipe has a [lora] section: \
             resume with the recipe the run was started with",
            dir.display()
        )));
    }
    let (base, _, _) = load_frozen_model::<B>(student_dir, device, recipe.memory.frozen_dtype)?;
    match resume_dir {
        Some(dir) => {
            let (model, saved) = load_adapter(base, config, dir)?;
            if saved != *lora {
                return Err(TrainError::Invalid(format!(
                    "--resume: the adapter in {} was trained with {saved:?}, the recipe's [lora] \
                     says {lora:?}",
                    dir.display()
                )));
            }
            Ok(model)
        }
        None => Ok(attach_lora(base, lora, false, recipe.training.seed)),
    }
}

/// `recipe` with `training.max_steps` as this run applies it (`--max-steps` overrides it), as
/// `recipe.json` records it.
fn with_max_steps(recipe: &Recipe, max_steps: usize) -> Recipe {
    let mut effective = recipe.clone();
    effective.training.max_steps = max_steps;
    effective
}

/// The training split and, when the recipe evaluates, the evaluation split.
fn open_data(recipe: &Recipe) -> Result<(BatchSource, Option<BatchSource>), TrainError> {
    let t = &recipe.training;
    let dataset = &recipe.dataset;
    let train_data = BatchSource::open(
        &dataset.shards,
        &dataset.train_split,
        t.per_device_train_batch_size,
    )?;
    if train_data.blocks() == 0 {
        return Err(TrainError::Invalid(format!(
            "{}: split `{}` has no blocks",
            dataset.shards.display(),
            dataset.train_split
        )));
    }
    let eval_data = match t.eval_strategy {
        EvalStrategy::No => None,
        _ => Some(BatchSource::open(
            &dataset.shards,
            &dataset.eval_split,
            t.per_device_eval_batch_size,
        )?),
    };
    Ok((train_data, eval_data))
}

/// The teacher's signal as planned: none, the model loaded (frozen, stored as
/// `memory.frozen_dtype` says), or the caches built or reused; with what the cache did.
fn open_teacher<B: AutodiffBackend>(
    recipe: &Recipe,
    teacher: &TeacherPlan,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<(TeacherSource<B::InnerBackend>, Option<TeacherCacheSummary>), TrainError> {
    match teacher {
        TeacherPlan::Absent => Ok((TeacherSource::Absent, None)),
        TeacherPlan::Cached(cache) => {
            let prepared =
                cached_teacher::prepare::<B::InnerBackend>(recipe, cache, options, device)?;
            Ok((prepared.source, Some(prepared.summary)))
        }
        TeacherPlan::Live(_) => {
            let (model, _, _) = load_frozen_model::<B::InnerBackend>(
                &recipe.teacher.local_dir,
                device,
                recipe.memory.frozen_dtype,
            )?;
            let model = Arc::new(model);
            if recipe.distillation.cross_tokenizer.is_some() {
                let aligner = Aligner::load(&recipe.teacher.local_dir, &recipe.student.local_dir)?;
                return Ok((
                    TeacherSource::AcrossTokenizers {
                        model,
                        aligner: Arc::new(aligner),
                    },
                    None,
                ));
            }
            Ok((TeacherSource::Live(model), None))
        }
    }
}

/// Warmup (`warmup_steps`, else `warmup_ratio` of the run), then the recipe's schedule.
fn learning_rate(t: &Training, total_steps: usize) -> LearningRate {
    let warmup_steps = if t.warmup_steps > 0 {
        t.warmup_steps
    } else {
        (t.warmup_ratio * total_steps as f64).ceil() as usize
    };
    LearningRate {
        base: t.learning_rate,
        schedule: t.lr_scheduler_type,
        warmup_steps,
        total_steps,
    }
}
