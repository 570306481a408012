//! A run's output directory ([`RunDir`]) and its checkpoints ([`Checkpoint`]): the one place
//! that knows their layout and file names. Written, restored and exported here:
//!
//! - `recipe.json`: the recipe of the run, rewritten on each start (`--resume` compares it);
//! - `checkpoint-STEP/`:
//!   - the student in the Hugging Face layout (config.json, generation_config.json,
//!     model.safetensors, tokenizer files; loadable by transformers as it is), always in
//!     float32 so that a resumed run continues from bit-identical weights (the final student
//!     uses `save_dtype`); for a LoRA student, the adapter alone in PEFT's layout
//!     (adapter_config.json, adapter_model.safetensors in f32), the base being the recipe's
//!     student;
//!   - `projections.safetensors`: the learned projections of intermediate matches
//!     ([`projections`]);
//!   - `optimizer-decay.bin`, `optimizer-no-decay.bin`: the optimizer's moments, one Burn
//!     record per parameter group (see `optimizer`);
//!   - `trainer_state.json`: the [`TrainerState`] plus what an exact resume needs (the pending
//!     logging window and the per-step loss history), [`ResumeState`];
//! - `final/`: the student in `save_dtype` (a LoRA student merged into its base), and for a
//!   LoRA run `final-adapter/`, the adapter alone in PEFT's layout.
//!
//! Everything is written into a `.NAME.tmp` directory and renamed at the end, so a directory
//! named `checkpoint-*` (or `final-adapter`) is always complete.

mod positional_ids;
mod projections;

use std::path::{Path, PathBuf};

use burn::tensor::backend::{AutodiffBackend, Backend};
use qwen2::lora::ADAPTER_CONFIG;
use qwen2::safetensors::Dtype;
use qwen2::{save_adapter, save_model, GenerationConfig, LoraSettings, ModelConfig, SaveOptions};
use serde::{Deserialize, Serialize};

pub use positional_ids::PositionalIds;
pub use projections::new_projections;
use projections::{read_projections, write_projections};

use crate::error::TrainError;
use crate::objective::{Projection, Student};
use crate::on_policy::RolloutWindow;
use crate::optimizer::GroupedAdamW;
use crate::recipe::Recipe;

const RECIPE_FILE: &str = "recipe.json";
const STATE_FILE: &str = "trainer_state.json";
const PROJECTIONS_FILE: &str = "projections.safetensors";
/// File stems (Burn's recorder adds `.bin`) of the optimizer's two parameter groups.
const DECAYED_STATE: &str = "optimizer-decay";
const UNDECAYED_STATE: &str = "optimizer-no-decay";
const FINAL_DIR: &str = "final";
/// Not inside `final`: transformers loads a directory holding adapter_config.json as an
/// adapter (when peft is installed), not as the merged model.
const FINAL_ADAPTER_DIR: &str = "final-adapter";

/// Where training stands; enough to continue exactly where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer updates done.
    pub global_step: usize,
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Micro-batches of this epoch already consumed (the data position).
    pub batches_in_epoch: usize,
    /// Real tokens trained on so far.
    pub tokens_seen: u64,
    /// Seed of the data order and of the projections' initialisation.
    pub seed: u64,
    /// Lowest evaluation loss so far and the checkpoint that has it.
    pub best_metric: Option<f64>,
    pub best_checkpoint: Option<String>,
}

/// One optimizer update, as recorded in `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

/// Sums since the last `logging_steps` line, so the first line after a resume averages the
/// same steps as the uninterrupted run's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogWindow {
    pub loss_sum: f64,
    pub steps: usize,
    pub tokens: u64,
    /// On-policy generation in the window (absent from word-level runs' files).
    #[serde(default, skip_serializing_if = "RolloutWindow::is_empty")]
    pub rollouts: RolloutWindow,
}

/// The content of `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeState {
    #[serde(flatten)]
    pub trainer: TrainerState,
    pub log_window: LogWindow,
    pub history: Vec<StepRecord>,
}

impl ResumeState {
    /// The state of a run that has not started.
    pub fn fresh(seed: u64) -> Self {
        Self {
            trainer: TrainerState {
                global_step: 0,
                epoch: 0,
                batches_in_epoch: 0,
                tokens_seen: 0,
                seed,
                best_metric: None,
                best_checkpoint: None,
            },
            log_window: LogWindow::default(),
            history: Vec::new(),
        }
    }
}

/// The student and what its files need beside its weights: what checkpoints and the final
/// export write.
pub struct StudentFiles<'a, B: Backend> {
    /// The inference copy of the trained student.
    pub student: &'a Student<B>,
    pub student_config: &'a ModelConfig,
    pub generation: &'a GenerationConfig,
    pub tokenizer_dir: &'a Path,
    /// The adapter's settings when the student is a LoRA student.
    pub lora: Option<&'a LoraSettings>,
    /// The base model's name as an adapter records it (`base_model_name_or_path`).
    pub base_model: &'a str,
}

impl<B: Backend> StudentFiles<'_, B> {
    /// The whole student (a LoRA student merged into its base) in the Hugging Face layout.
    fn save_model(&self, dir: &Path, dtype: Dtype) -> Result<(), TrainError> {
        save_model(
            &self.student.model,
            self.student_config,
            dir,
            &SaveOptions {
                dtype,
                tokenizer_dir: Some(self.tokenizer_dir),
                generation: Some(self.generation),
            },
        )?;
        Ok(())
    }

    /// A LoRA student's adapter alone, in PEFT's layout.
    fn save_adapter(&self, settings: &LoraSettings, dir: &Path) -> Result<(), TrainError> {
        save_adapter(&self.student.model, settings, self.base_model, dir)?;
        Ok(())
    }
}

/// Where the exported student went.
pub struct FinalStudent {
    pub model: PathBuf,
    pub adapter: Option<PathBuf>,
}

/// A run's output directory (`training.output_dir`).
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run directory at `root`, created when missing.
    pub fn create(root: &Path) -> Result<Self, TrainError> {
        std::fs::create_dir_all(root).map_err(TrainError::io(root))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The recipe the run was last started with.
    pub fn recipe_file(&self) -> PathBuf {
        self.root.join(RECIPE_FILE)
    }

    pub fn write_recipe(&self, recipe: &Recipe) -> Result<(), TrainError> {
        write_json(&self.recipe_file(), recipe)
    }

    /// The name of the checkpoint written after update `step`.
    pub fn checkpoint_name(step: usize) -> String {
        format!("checkpoint-{step}")
    }

    /// Complete checkpoints, oldest first.
    pub fn checkpoints(&self) -> Vec<(usize, Checkpoint)> {
        let mut found: Vec<(usize, Checkpoint)> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
                let checkpoint = Checkpoint { dir: entry.path() };
                checkpoint.is_complete().then_some((step, checkpoint))
            })
            .collect();
        found.sort_by_key(|(step, _)| *step);
        found
    }

    /// The checkpoint `--resume` continues from; refuses to start over a run's checkpoints
    /// without it, and `--resume` without one.
    pub fn checkpoint_to_resume(&self, resume: bool) -> Result<Option<Checkpoint>, TrainError> {
        match (resume, self.checkpoints().pop()) {
            (true, Some((_, checkpoint))) => Ok(Some(checkpoint)),
            (true, None) => Err(TrainError::Invalid(format!(
                "--resume: {} holds no complete checkpoint-* directory to resume from \
                 (run without --resume to start training)",
                self.root.display()
            ))),
            (false, Some((_, checkpoint))) => Err(TrainError::Invalid(format!(
                "{} already holds checkpoints of an earlier run (e.g. {}): pass --resume to \
                 continue it, or set training.output_dir to a new directory",
                self.root.display(),
                checkpoint.dir.display()
            ))),
            (false, None) => Ok(None),
        }
    }

    /// Deletes old checkpoints beyond `keep`, never the one named `best`.
    pub fn prune(&self, keep: usize, best: Option<&str>) -> Result<(), TrainError> {
        let checkpoints = self.checkpoints();
        let mut removable: Vec<&Path> = checkpoints
            .iter()
            .map(|(_, checkpoint)| checkpoint.dir.as_path())
            .filter(|dir| Some(dir.file_name().and_then(|n| n.to_str()).unwrap_or("")) != best)
            .collect();
        let kept_best = usize::from(checkpoints.len() > removable.len());
        while removable.len() + kept_best > keep.max(1) && !removable.is_empty() {
            let dir = removable.remove(0);
            std::fs::remove_dir_all(dir).map_err(TrainError::io(dir))?;
        }
        Ok(())
    }

    /// Writes `checkpoint-STEP` atomically: the student in float32 (a LoRA student as its
    /// adapter), its projections, the optimizer's moments and `state`.
    pub fn write_checkpoint<B: AutodiffBackend>(
        &self,
        files: &StudentFiles<'_, B::InnerBackend>,
        optimizer: &GroupedAdamW<B>,
        state: &ResumeState,
    ) -> Result<Checkpoint, TrainError> {
        let name = Self::checkpoint_name(state.trainer.global_step);
        let dir = self.write_atomically(&name, |staging| {
            match files.lora {
                Some(settings) => files.save_adapter(settings, staging)?,
                None => files.save_model(staging, Dtype::F32)?,
            }
            write_projections(&files.student.projections, &staging.join(PROJECTIONS_FILE))?;
            optimizer
                .save(&staging.join(DECAYED_STATE), &staging.join(UNDECAYED_STATE))
                .map_err(|e| TrainError::Record {
                    path: staging.to_path_buf(),
                    message: e.to_string(),
                })?;
            write_json(&staging.join(STATE_FILE), state)
        })?;
        Ok(Checkpoint { dir })
    }

    /// The student in `dtype`, as the hub ships models, in `final` (a LoRA student merged into
    /// its base), and a LoRA student's adapter alone, in PEFT's layout, in `final-adapter`.
    pub fn export_final<B: Backend>(
        &self,
        files: &StudentFiles<'_, B>,
        dtype: Dtype,
    ) -> Result<FinalStudent, TrainError> {
        let adapter = match files.lora {
            Some(settings) => Some(self.write_atomically(FINAL_ADAPTER_DIR, |staging| {
                files.save_adapter(settings, staging)
            })?),
            None => None,
        };
        let model = self.root.join(FINAL_DIR);
        files.save_model(&model, dtype)?;
        Ok(FinalStudent { model, adapter })
    }

    /// Fills `.NAME.tmp` with `write` and renames it to `NAME`, replacing what was there.
    fn write_atomically(
        &self,
        name: &str,
        write: impl FnOnce(&Path) -> Result<(), TrainError>,
    ) -> Result<PathBuf, TrainError> {
        let staging = self.root.join(format!(".{name}.tmp"));
        let target = self.root.join(name);
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(TrainError::io(&staging))?;
        }
        write(&staging)?;
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(TrainError::io(&target))?;
        }
        fsio::sync_dir(&staging);
        fsio::commit(&staging, &target)?;
        Ok(target)
    }
}

/// One complete `checkpoint-STEP` directory, read back part by part as the setup needs it.
pub struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    /// The directory; it is also the student's model directory (Hugging Face layout) or, for a
    /// LoRA run, its adapter directory (PEFT's layout).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn is_complete(&self) -> bool {
        self.dir.join(STATE_FILE).exists()
    }

    /// Whether the student was saved as a LoRA adapter.
    pub fn holds_adapter(&self) -> bool {
        self.dir.join(ADAPTER_CONFIG).exists()
    }

    /// Where training stood (`trainer_state.json`).
    pub fn resume_state(&self) -> Result<ResumeState, TrainError> {
        let path = self.dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(TrainError::io(&path))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Invalid(format!(
            "{}: not a trainer state this version can resume from: {e} (start a new run in another output_dir)",
            path.display()
        )))
    }

    /// The saved values of `fresh` projections.
    pub fn projections<B: Backend>(
        &self,
        fresh: Vec<Projection<B>>,
        device: &B::Device,
    ) -> Result<Vec<Projection<B>>, TrainError> {
        read_projections(fresh, &self.dir.join(PROJECTIONS_FILE), device)
    }

    /// `fresh` with the saved moments (the student's parameters must carry the ids they had
    /// when the checkpoint was written: see [`PositionalIds`]).
    pub fn optimizer<B: AutodiffBackend>(
        &self,
        fresh: GroupedAdamW<B>,
        device: &B::Device,
    ) -> Result<GroupedAdamW<B>, TrainError> {
        fresh
            .load(
                &self.dir.join(DECAYED_STATE),
                &self.dir.join(UNDECAYED_STATE),
                device,
            )
            .map_err(|e| TrainError::Record {
                path: self.dir.clone(),
                message: e.to_string(),
            })
    }
}

/// Writes `value` as pretty JSON, atomically and durably.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).expect("serialisable") + "\n";
    fsio::write_atomic(path, text.as_bytes())?;
    Ok(())
}
