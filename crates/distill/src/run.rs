//! A run as a user starts it: the recipe made ready for this machine (cached repo ids found,
//! the GPU's storage), the shards' presence, the plan ([`crate::RunPlan`]) checked against the
//! machine's memory; then [`crate::train_planned`] trains. The CLI keeps only its flags, Ctrl-C and printing.

use std::path::Path;

use qwen2::memory::gib;
use qwen2::FrozenDtype;

use crate::error::TrainError;
use crate::memory_plan::MemoryPlan;
use crate::recipe::Recipe;

/// Where a run computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A GPU holds its tensors in its own memory, which the memory plan does not describe.
    Gpu,
}

/// A recipe ready to run, and what was changed or assumed on the way.
pub struct PreparedRun {
    pub recipe: Recipe,
    /// One line per adjustment or assumption, for the user to read.
    pub notes: Vec<String>,
}

/// The recipe at `config` (with `overrides`) as this run applies it: a model `local_dir` that
/// is a repo id in the Hugging Face cache becomes that snapshot (anything else stays as
/// written: a teacher folder may be absent on purpose when the cache covers it), and frozen
/// weights stay float32 on a GPU. Refuses shards that were never made, naming the command that
/// makes them.
pub fn prepare(
    config: &Path,
    overrides: &[String],
    device: Device,
) -> Result<PreparedRun, TrainError> {
    let mut recipe = Recipe::load(config, overrides)?;
    let mut notes = Vec::new();
    for model in [&mut recipe.teacher, &mut recipe.student] {
        let written = model.local_dir.to_string_lossy().into_owned();
        if let Ok(snapshot) = hub::resolve_model_dir_at(&written, model.revision.as_deref()) {
            model.local_dir = snapshot;
        }
    }
    if device == Device::Gpu && recipe.memory.frozen_dtype != FrozenDtype::Float32 {
        // bf16 storage keeps frozen matrices in host memory and widens them per product: a
        // memory saving for CPU runs, a host-to-device copy per product on a GPU.
        notes.push(format!(
            "on the GPU the frozen weights stay float32 (memory.frozen_dtype = {:?} is a CPU setting)",
            recipe.memory.frozen_dtype
        ));
        recipe.memory.frozen_dtype = FrozenDtype::Float32;
    }
    check_shards_exist(&recipe, config)?;
    Ok(PreparedRun { recipe, notes })
}

/// Shards that were never made get the command that makes them, before anything else fails on
/// their absence.
fn check_shards_exist(recipe: &Recipe, config: &Path) -> Result<(), TrainError> {
    let shards = &recipe.dataset.shards;
    if shards.join("manifest.json").is_file() {
        return Ok(());
    }
    let make = if shards.starts_with("data/quickstart") {
        "`cargo xtask quickstart` makes them (and the quickstart's student) first".to_string()
    } else {
        format!(
            "make them with `cargo xtask preprocess --tokenizer {} --input <WikiText folder> --out {} --seq-len <N>`",
            recipe.student.local_dir.display(),
            shards.display()
        )
    };
    Err(TrainError::Invalid(format!(
        "{}: dataset.shards = {} holds no token shards (no manifest.json): {make}",
        config.display(),
        shards.display()
    )))
}

/// Refuses a CPU run whose plan exceeds the memory available now, with the plan part by part
/// and the options that would fit.
pub fn check_fits(plan: &MemoryPlan, device: Device) -> Result<(), TrainError> {
    if device == Device::Gpu {
        return Ok(());
    }
    match plan.shortfall() {
        None => Ok(()),
        Some(available) => Err(TrainError::Invalid(format!(
            "this run needs about {} at its peak but the machine has {} available:\n{}\
             Ways to fit: a LoRA student ([lora] in the recipe: the base frozen, in bf16 with \
             memory.frozen_dtype), --cache-teacher (the teacher is not held while training), \
             memory.frozen_dtype = \"bfloat16\" (the teacher in half the memory), a smaller \
             training.per_device_train_batch_size (with gradient_accumulation_steps for the same \
             batch), shorter blocks (cargo xtask preprocess --seq-len), a smaller \
             distillation.chunk_positions, or a GPU (--backend cuda). --ignore-memory-plan starts \
             it anyway; --dry-run prints this plan alone.",
            gib(plan.total()),
            gib(available),
            plan.table()
        ))),
    }
}
