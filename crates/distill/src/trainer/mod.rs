//! What the training loop carries from one update to the next ([`Trainer`]) and the phases the
//! loop calls: [`Trainer::step`], [`Trainer::log`], [`Trainer::evaluate`], [`Trainer::save`],
//! [`Trainer::finish`]. How it is set up (fresh or resumed) is in [`setup`].

mod setup;

use std::sync::atomic::Ordering;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use qwen2::{GenerationConfig, ModelConfig};

use crate::checkpoint::{FinalStudent, ResumeState, RunDir, StepRecord, StudentFiles};
use crate::data::{epoch_order, BatchSource, SourceBatch};
use crate::error::TrainError;
use crate::evaluate::{evaluate, EvalMetrics};
use crate::metrics::{MetricsLog, Split};
use crate::objective::{inference_copy, Batch, Objective, Student, TeacherOutputs};
use crate::on_policy::{self, roll_out, TextSource};
use crate::optimizer::GroupedAdamW;
use crate::options::TrainOptions;
use crate::progress::Progress;
use crate::recipe::{EvalStrategy, Recipe, SaveStrategy};
use crate::schedule::LearningRate;
use crate::summary::TrainSummary;
use crate::teacher::TeacherSource;
use crate::update::GradientAccumulation;

/// One optimizer update, as the phases after it see it.
#[derive(Debug, Clone, Copy)]
pub struct Update {
    /// Updates done, this one included (1-based).
    pub step: usize,
    /// Mean loss of the update's micro-batches.
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// This update finished an epoch.
    pub epoch_done: bool,
    /// The last update the run was asked for.
    pub last: bool,
}

/// Everything the loop carries: models, data, optimizer, where training stands, and the logs.
pub struct Trainer<'a, B: AutodiffBackend> {
    recipe: &'a Recipe,
    options: &'a TrainOptions,
    run_dir: RunDir,
    student_config: ModelConfig,
    generation: GenerationConfig,
    teacher: TeacherSource<B::InnerBackend>,
    objective: Objective,
    /// `None` only while the optimizer, which takes the student by value, updates it.
    student: Option<Student<B>>,
    optimizer: GroupedAdamW<B>,
    train_data: BatchSource,
    eval_data: Option<BatchSource>,
    /// The data order of the epoch in progress.
    order: Vec<usize>,
    schedule: LearningRate,
    total_steps: usize,
    /// What a checkpoint records: the position, the best evaluation, the pending log window.
    state: ResumeState,
    metrics: MetricsLog,
    progress: Progress,
    summary: TrainSummary,
    /// The step of the last evaluation in this process.
    evaluated_at: Option<usize>,
    resumed: bool,
    /// Training time (forward, backward, update) and real tokens of this process.
    train_seconds: f64,
    run_tokens: u64,
    window_started: Instant,
}

impl<'a, B: AutodiffBackend> Trainer<'a, B> {
    /// Whether every update the run was asked for is done.
    pub fn finished(&self) -> bool {
        self.state.trainer.global_step >= self.total_steps
    }

    /// Whether this run started from a checkpoint.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    fn student(&self) -> &Student<B> {
        self.student.as_ref().expect("put back after each update")
    }

    /// One optimizer update: the gradients of `gradient_accumulation_steps` micro-batches
    /// (fewer at the end of an epoch) averaged, clipped, applied; then the data position moves
    /// on, into the next epoch when this one is done.
    pub fn step(&mut self) -> Result<Update, TrainError> {
        let t = &self.recipe.training;
        let step = self.state.trainer.global_step;
        let started = Instant::now();
        let batches_per_epoch = self.train_data.batches_per_epoch();
        let micro_batches = t
            .gradient_accumulation_steps
            .min(batches_per_epoch - self.state.trainer.batches_in_epoch);
        let mut accumulation = GradientAccumulation::<B>::default();
        for k in 0..micro_batches {
            let SourceBatch { batch, blocks } = self
                .train_data
                .batch(&self.order, self.state.trainer.batches_in_epoch + k)?;
            let (batch, blocks) = self.text_of(batch, blocks, step, k)?;
            let outputs = self
                .teacher
                .outputs(&batch, self.train_data.split(), &blocks, &self.objective)?
                .unwrap_or_else(TeacherOutputs::absent);
            accumulation.add(
                self.student(),
                &outputs,
                &batch,
                &self.objective,
                self.recipe,
                step,
                k,
            );
        }
        let loss = accumulation.mean_loss();
        let step_tokens = accumulation.tokens();
        if !loss.is_finite() {
            self.progress.abandon();
            return Err(TrainError::NonFinite {
                step: step + 1,
                epoch: self.state.trainer.epoch,
                loss,
            });
        }
        let lr = self.schedule.at(step);
        let student = self.student.take().expect("put back after each update");
        let (student, grad_norm) =
            accumulation.apply(student, &mut self.optimizer, self.recipe, lr);
        self.student = Some(student);
        self.train_seconds += started.elapsed().as_secs_f64();

        let position = &mut self.state.trainer;
        position.global_step += 1;
        position.batches_in_epoch += micro_batches;
        position.tokens_seen += step_tokens;
        self.run_tokens += step_tokens;
        let step = position.global_step;
        let epoch_done = position.batches_in_epoch >= batches_per_epoch;
        if epoch_done {
            position.epoch += 1;
            position.batches_in_epoch = 0;
            self.order = epoch_order(self.train_data.blocks(), t.seed, position.epoch);
        }
        self.state.history.push(StepRecord {
            step,
            loss,
            lr,
            grad_norm,
        });
        let window = &mut self.state.log_window;
        window.loss_sum += loss;
        window.steps += 1;
        window.tokens += step_tokens;
        self.summary.last_train_loss = Some(loss);
        Ok(Update {
            step,
            loss,
            lr,
            grad_norm,
            epoch_done,
            last: step == self.total_steps,
        })
    }

    /// The text micro-batch `k` of update `step` trains on (crate::on_policy): the data's
    /// `batch` of `blocks`, or its prompts continued by the student or the teacher (then no
    /// blocks: the teacher scores the new text live).
    fn text_of(
        &mut self,
        batch: Batch,
        blocks: Vec<usize>,
        step: usize,
        k: usize,
    ) -> Result<(Batch, Vec<usize>), TrainError> {
        let on_policy = &self.recipe.on_policy;
        if !on_policy.generates() {
            return Ok((batch, blocks));
        }
        let source = on_policy::draw(on_policy, step, k);
        let eos = &self.generation.eos_token_ids;
        let rollout = match source {
            TextSource::Data => None,
            TextSource::Student => {
                let student = inference_copy(self.student());
                Some(roll_out(&student.model, &batch, on_policy, eos, step, k))
            }
            TextSource::Teacher => {
                let teacher = self.teacher.live().ok_or_else(|| {
                    TrainError::Invalid(
                        "on_policy.seq_kd needs the live teacher to generate; train without \
                         --cache-teacher"
                            .into(),
                    )
                })?;
                Some(roll_out(teacher, &batch, on_policy, eos, step, k))
            }
        };
        self.state
            .log_window
            .rollouts
            .record(source, rollout.as_ref());
        self.summary
            .rollouts
            .get_or_insert_with(Default::default)
            .record(source, rollout.as_ref());
        Ok(match rollout {
            Some(rollout) => (rollout.batch, Vec::new()),
            None => (batch, blocks),
        })
    }

    /// Epochs done, fractional (e.g. 1.25 a quarter into the second epoch).
    fn epoch_position(&self) -> f64 {
        let position = &self.state.trainer;
        position.epoch as f64
            + position.batches_in_epoch as f64 / self.train_data.batches_per_epoch() as f64
    }

    /// Every `logging_steps` and after the last update (so even a run shorter than
    /// `logging_steps` leaves a training row): the window's mean loss, the learning rate, the
    /// gradient norm and the throughput to the metrics log (and a plain progress line without
    /// a terminal); the progress bar on every update.
    pub fn log(&mut self, update: &Update) -> Result<(), TrainError> {
        let epoch = self.epoch_position();
        if update.last
            || update
                .step
                .is_multiple_of(self.recipe.training.logging_steps)
        {
            let window = std::mem::take(&mut self.state.log_window);
            let seconds = self.window_started.elapsed().as_secs_f64().max(1e-9);
            let mean_loss = window.loss_sum / window.steps as f64;
            let tokens_per_second = window.tokens as f64 / seconds;
            let mut values = vec![
                ("loss", mean_loss),
                ("lr", update.lr),
                ("grad_norm", update.grad_norm),
                ("tokens_per_s", tokens_per_second),
            ];
            let on_policy = &self.recipe.on_policy;
            if on_policy.generates() {
                values.extend(window.rollouts.metrics(on_policy.seq_kd));
            }
            self.metrics
                .log(update.step as u64, epoch, Split::Train, &values)?;
            self.progress
                .logging_step(update.step, epoch, mean_loss, tokens_per_second);
            self.window_started = Instant::now();
        }
        let tokens_per_second = self.run_tokens as f64 / self.train_seconds.max(1e-9);
        self.progress
            .update(update.step, epoch, update.loss, tokens_per_second);
        Ok(())
    }

    /// Whether `eval_strategy` asks for an evaluation after `update`.
    pub fn evaluation_due(&self, update: &Update) -> bool {
        match self.recipe.training.eval_strategy {
            EvalStrategy::No => false,
            EvalStrategy::Steps => update.step.is_multiple_of(self.recipe.training.eval_steps),
            EvalStrategy::Epoch => update.epoch_done,
        }
    }

    /// Evaluates the student on the eval split now and logs it at the current step; `None`
    /// when the run has no evaluation (`eval_strategy = "no"`).
    pub fn evaluate(&mut self) -> Result<Option<EvalMetrics>, TrainError> {
        let student = inference_copy(self.student());
        let Some(data) = self.eval_data.as_mut() else {
            return Ok(None);
        };
        let result = evaluate(
            &student,
            &self.teacher,
            data,
            &self.objective,
            self.recipe.training.max_eval_batches,
        )?;
        let step = self.state.trainer.global_step;
        let mut values = vec![("loss", result.loss), ("perplexity", result.perplexity)];
        if let Some(kl) = result.kl_to_teacher {
            values.push((self.teacher.kl_metric_name(), kl));
        }
        self.metrics
            .log(step as u64, self.epoch_position(), Split::Eval, &values)?;
        self.evaluated_at = Some(step);
        if step == 0 {
            self.summary.initial_eval = Some(result);
        } else {
            self.summary.last_eval = Some(result);
        }
        Ok(Some(result))
    }

    /// Records `result` as the best so far when its loss is the lowest; says whether it was.
    pub fn record_best(&mut self, result: &EvalMetrics) -> bool {
        let best = &mut self.state.trainer.best_metric;
        let improved = best.is_none_or(|best| result.loss < best);
        if improved {
            *best = Some(result.loss);
        }
        improved
    }

    /// Whether a checkpoint is due after `update`: always at the end, otherwise as
    /// `save_strategy` says (`improved`: this update's evaluation is the best so far).
    pub fn save_due(&self, update: &Update, improved: bool) -> bool {
        update.last
            || match self.recipe.training.save_strategy {
                SaveStrategy::Best => improved,
                SaveStrategy::Last | SaveStrategy::Steps => {
                    update.step.is_multiple_of(self.recipe.training.save_steps)
                }
                SaveStrategy::Epoch => update.epoch_done,
            }
    }

    /// Writes `checkpoint-STEP` (marked best when `improved`) and prunes the older ones.
    pub fn save(&mut self, improved: bool) -> Result<(), TrainError> {
        let t = &self.recipe.training;
        if improved {
            self.state.trainer.best_checkpoint =
                Some(RunDir::checkpoint_name(self.state.trainer.global_step));
        }
        let student = inference_copy(self.student());
        let base_model = self.base_model_name();
        let checkpoint = self.run_dir.write_checkpoint(
            &self.student_files(&student, &base_model),
            &self.optimizer,
            &self.state,
        )?;
        let keep = match t.save_strategy {
            SaveStrategy::Last => 1,
            _ => t.save_total_limit,
        };
        self.run_dir
            .prune(keep, self.state.trainer.best_checkpoint.as_deref())?;
        self.summary.last_checkpoint = Some(checkpoint.dir().to_path_buf());
        Ok(())
    }

    /// Whether Ctrl-C (`options.stop`) asks the run to end.
    pub fn stop_requested(&self) -> bool {
        self.options.stop.load(Ordering::SeqCst)
    }

    /// Ends the run: when it was not stopped early, an evaluation of the final student (unless
    /// the last update was just evaluated) and the final student in `output_dir/final`.
    pub fn finish(mut self, stopped_early: bool) -> Result<TrainSummary, TrainError> {
        self.metrics.flush()?;
        if !stopped_early {
            if self.evaluated_at != Some(self.state.trainer.global_step) {
                self.evaluate()?;
            }
            let exported = self.export_final_student()?;
            self.summary.final_model = Some(exported.model);
            self.summary.final_adapter = exported.adapter;
        }
        self.progress.finish();
        let trainer = &self.state.trainer;
        let summary = &mut self.summary;
        summary.stopped_early = stopped_early;
        summary.steps = trainer.global_step;
        summary.epochs_completed = trainer.epoch;
        summary.train_tokens = trainer.tokens_seen;
        summary.tokens_per_second = self.run_tokens as f64 / self.train_seconds.max(1e-9);
        summary.peak_rss_bytes = qwen2::memory::peak_rss_bytes();
        summary.best_checkpoint = trainer
            .best_checkpoint
            .as_ref()
            .map(|name| self.run_dir.root().join(name))
            .filter(|dir| dir.exists());
        Ok(self.summary)
    }

    /// How an adapter names its base: the hub repository when the recipe names one, else the
    /// local directory.
    fn base_model_name(&self) -> String {
        let student = &self.recipe.student;
        student
            .repo
            .clone()
            .unwrap_or_else(|| student.local_dir.display().to_string())
    }

    /// What the files of `student` (the inference copy) are written with.
    fn student_files<'s>(
        &'s self,
        student: &'s Student<B::InnerBackend>,
        base_model: &'s str,
    ) -> StudentFiles<'s, B::InnerBackend> {
        StudentFiles {
            student,
            student_config: &self.student_config,
            generation: &self.generation,
            tokenizer_dir: &self.recipe.student.local_dir,
            lora: self.recipe.lora.as_ref(),
            base_model,
        }
    }

    /// The student in `save_dtype`, as the hub ships models (see [`RunDir::export_final`]).
    fn export_final_student(&self) -> Result<FinalStudent, TrainError> {
        let student = inference_copy(self.student());
        let base_model = self.base_model_name();
        self.run_dir.export_final(
            &self.student_files(&student, &base_model),
            self.recipe.training.save_dtype.dtype(),
        )
    }
}
