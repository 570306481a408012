//! Checkpoints in `output_dir/checkpoint-<step>/`: the student in the Hugging Face layout
//! (loadable by transformers as it is), the learned projections, the optimizer state, and the
//! trainer state. A checkpoint is written under a temporary name and renamed when complete, so
//! a directory named `checkpoint-*` is always whole.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

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

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer";
pub const PROJECTIONS_FILE: &str = "projections.safetensors";

pub fn checkpoint_name(step: usize) -> String {
    format!("checkpoint-{step}")
}

/// Complete checkpoints in `output_dir`, oldest first.
pub fn list_checkpoints(output_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(output_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            entry
                .path()
                .join(STATE_FILE)
                .exists()
                .then(|| (step, entry.path()))
        })
        .collect();
    found.sort();
    found
}

pub fn read_state(dir: &Path) -> std::io::Result<TrainerState> {
    let text = std::fs::read_to_string(dir.join(STATE_FILE))?;
    serde_json::from_str(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Deletes old checkpoints beyond `keep`, never the best one.
pub fn prune(output_dir: &Path, keep: usize, best: Option<&str>) -> std::io::Result<()> {
    let checkpoints = list_checkpoints(output_dir);
    let mut removable: Vec<&PathBuf> = checkpoints
        .iter()
        .map(|(_, path)| path)
        .filter(|path| Some(path.file_name().and_then(|n| n.to_str()).unwrap_or("")) != best)
        .collect();
    let kept_best = usize::from(checkpoints.len() > removable.len());
    while removable.len() + kept_best > keep.max(1) && !removable.is_empty() {
        std::fs::remove_dir_all(removable.remove(0))?;
    }
    Ok(())
}

/// Gives every parameter an id from its position in the module, so the optimizer state saved
/// by one process finds its parameters again in the next (Burn draws ids at random otherwise).
pub struct PositionalIds {
    next: u64,
}

impl PositionalIds {
    pub fn assign<B: Backend, M: Module<B>>(module: M) -> M {
        module.map(&mut PositionalIds { next: 1 })
    }
}

impl<B: Backend> ModuleMapper<B> for PositionalIds {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (_, tensor, mapper) = param.consume();
        let id = ParamId::from(self.next);
        self.next += 1;
        Param::from_mapped_value(id, tensor, mapper)
    }
}
