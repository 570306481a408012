//! The run's plan, made from the recipe and the files beside the weights (config.json, the
//! tokenizers, the shards' manifest, a teacher cache's record) before any weights load: the
//! shapes, where the teacher's signal comes from, the objective with the tokenizer check's
//! verdict, and the memory plan's inputs. Every check that needs nothing loaded is made here,
//! once: the trainer's setup, the teacher cache, `cargo xtask distill` (its memory check and
//! `--dry-run`) and `cargo xtask bench distill-step` all read this plan.

use std::path::Path;

use qwen2::memory::current_rss_bytes;
use qwen2::ModelConfig;

use crate::error::TrainError;
use crate::memory_plan::{MemoryPlan, RunShape};
use crate::objective::Objective;
use crate::on_policy;
use crate::recipe::Recipe;
use crate::teacher_cache::prepare::{self as cache, CachePlan};
use crate::verdict::objective_for;

/// Where the teacher's signal comes from, as planned.
pub enum TeacherPlan {
    /// Hard labels alone: no teacher.
    Absent,
    /// The teacher runs live on every batch.
    Live(ModelConfig),
    /// `--cache-teacher`: the caches to read (and build first, when missing).
    Cached(CachePlan),
}

impl TeacherPlan {
    /// The teacher's decoder layers, when there is a teacher.
    pub fn layers(&self) -> Option<usize> {
        match self {
            TeacherPlan::Absent => None,
            TeacherPlan::Live(config) => Some(config.num_hidden_layers),
            TeacherPlan::Cached(cache) => Some(cache.teacher_layers()),
        }
    }
}

/// What a run will hold and compute, known before anything loads.
pub struct RunPlan {
    pub student: ModelConfig,
    pub teacher: TeacherPlan,
    /// The objective, with the tokenizer check's verdict (masked ids, compared rows).
    pub objective: Objective,
    /// Tokens per block of the shards.
    pub block_len: usize,
}

impl RunPlan {
    /// The plan of `recipe`, from its files (`cache_teacher`: the teacher's signal from the
    /// offline cache). Refuses what cannot run: on-policy text with the cache or longer than
    /// the blocks, token ids the student has no rows for, intermediate matches on layers a
    /// model lacks, a cache that cannot serve the recipe.
    pub fn read(recipe: &Recipe, cache_teacher: bool) -> Result<Self, TrainError> {
        let manifest = preprocess::Manifest::load(&recipe.dataset.shards)?;
        on_policy::check_run(recipe, manifest.seq_len, cache_teacher)?;
        if let (Some(kind), true) = (recipe.distillation.cross_tokenizer, cache_teacher) {
            return Err(TrainError::Invalid(format!(
                "--cache-teacher with distillation.cross_tokenizer = \"{}\": the cache keeps the \
                 teacher's top-k at the student's positions, which across tokenizers are not the \
                 teacher's; train without --cache-teacher (the teacher runs live on its own tokens)",
                kind.name()
            )));
        }
        let student = ModelConfig::from_file(&recipe.student.local_dir)?;
        check_tokenizer_fits(recipe, manifest.tokenizer.vocab_size, &student)?;
        let (teacher, objective) = match (recipe.needs_teacher(), cache_teacher) {
            (false, _) => (
                TeacherPlan::Absent,
                objective_for(recipe, None, student.vocab_size)?,
            ),
            (true, true) => {
                let (plan, objective) = cache::plan(recipe, &student)?;
                (TeacherPlan::Cached(plan), objective)
            }
            (true, false) => {
                let teacher = ModelConfig::from_file(&recipe.teacher.local_dir)?;
                let objective =
                    objective_for(recipe, Some(teacher.vocab_size), student.vocab_size)?;
                (TeacherPlan::Live(teacher), objective)
            }
        };
        if let Some(layers) = teacher.layers() {
            recipe.distillation.check_layers(
                Path::new("recipe"),
                layers,
                student.num_hidden_layers,
            )?;
        }
        Ok(Self {
            student,
            teacher,
            objective,
            block_len: manifest.seq_len,
        })
    }

    /// The teacher's hidden width (the student's without a teacher), for the projections of
    /// intermediate matches.
    pub fn teacher_width(&self) -> usize {
        match &self.teacher {
            TeacherPlan::Absent => self.student.hidden_size,
            TeacherPlan::Live(config) => config.hidden_size,
            TeacherPlan::Cached(cache) => cache.teacher_width(),
        }
    }

    /// The memory plan's inputs; `teacher_bf16` and `student_base_bf16` say which frozen
    /// matrices are stored in bf16.
    pub fn run_shape<'a>(
        &'a self,
        recipe: &'a Recipe,
        teacher_bf16: bool,
        student_base_bf16: bool,
    ) -> RunShape<'a> {
        let on_policy = &recipe.on_policy;
        RunShape {
            student: &self.student,
            teacher: match &self.teacher {
                TeacherPlan::Live(config) => Some(config),
                _ => None,
            },
            cache_top_k: recipe.teacher_cache.top_k,
            batch: recipe.training.per_device_train_batch_size,
            seq_len: self.block_len,
            chunk_positions: self.objective.chunk_positions,
            baseline_bytes: current_rss_bytes().unwrap_or(0),
            lora: recipe.lora.as_ref(),
            teacher_bf16,
            student_base_bf16,
            generated_len: match on_policy.generates() {
                true => on_policy.prompt_len + on_policy.max_new_tokens,
                false => 0,
            },
            recompute_layers: recipe.memory.activation_checkpointing,
        }
    }

    /// The run's memory plan, with the frozen matrices' storage read from the weights' headers
    /// (`memory.frozen_dtype = "auto"` follows the checkpoint). A folder whose weights are not
    /// downloaded yet is planned from config.json's dtype (said in `notes`), so a user learns
    /// whether a job fits before fetching gigabytes.
    pub fn memory_plan(
        &self,
        recipe: &Recipe,
        notes: &mut Vec<String>,
    ) -> Result<MemoryPlan, TrainError> {
        let mut stores_bf16 = |path: &Path, config: &ModelConfig| -> Result<bool, TrainError> {
            let weights_absent = path.is_dir()
                && !path.join("model.safetensors").exists()
                && !path.join("model.safetensors.index.json").exists();
            if weights_absent {
                notes.push(format!(
                    "{} has no weight files yet; planning as if they are stored as its \
                     config.json says ({})",
                    path.display(),
                    config.torch_dtype
                ));
                return Ok(recipe
                    .memory
                    .frozen_dtype
                    .stores_bf16(config.torch_dtype == "bfloat16"));
            }
            Ok(qwen2::frozen_in_bf16(path, recipe.memory.frozen_dtype)?)
        };
        let teacher_bf16 = match &self.teacher {
            TeacherPlan::Live(config) => stores_bf16(&recipe.teacher.local_dir, config)?,
            _ => false,
        };
        let student_base_bf16 = match &recipe.lora {
            Some(_) => stores_bf16(&recipe.student.local_dir, &self.student)?,
            None => false,
        };
        Ok(MemoryPlan::estimate(&self.run_shape(
            recipe,
            teacher_bf16,
            student_base_bf16,
        )))
    }
}

/// Refuses shards whose token ids the student has no embedding rows for.
fn check_tokenizer_fits(
    recipe: &Recipe,
    tokenizer_vocab_size: usize,
    student: &ModelConfig,
) -> Result<(), TrainError> {
    if tokenizer_vocab_size > student.vocab_size {
        return Err(TrainError::Invalid(format!(
            "{}: the shards' tokenizer has {} ids but the student {} has {} embedding rows: \
             preprocess the data with the student's tokenizer",
            recipe.dataset.shards.display(),
            tokenizer_vocab_size,
            recipe.student.local_dir.display(),
            student.vocab_size
        )));
    }
    Ok(())
}
