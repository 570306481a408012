//! What a run reports when it ends.

use std::fmt;
use std::path::PathBuf;

use qwen2::memory::gib;

use crate::evaluate::EvalMetrics;
use crate::metrics::METRICS_FILE;
use crate::teacher_cache::prepare::TeacherCacheSummary;

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
    /// A LoRA run's final adapter alone, in PEFT's layout.
    pub final_adapter: Option<PathBuf>,
    /// What `[on_policy]` generated in this process (none without generation).
    pub rollouts: Option<crate::on_policy::RolloutWindow>,
    /// The run ended because `TrainOptions::stop` was set.
    pub stopped_early: bool,
    /// What `cache_teacher` built or reused. With a cache, `kl_to_teacher` of the evaluations
    /// is the top-k approximation (logged as `kl_to_teacher_topk`).
    pub teacher_cache: Option<TeacherCacheSummary>,
}

impl fmt::Display for TrainSummary {
    /// The run's report as `cargo xtask distill` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = if self.stopped_early {
            "stopped (Ctrl-C); continue with --resume"
        } else {
            "done"
        };
        writeln!(f, "training {status}")?;
        writeln!(
            f,
            "  steps {} | epochs completed {} | tokens {} | {:.0} tokens/s | peak RSS {}",
            self.steps,
            self.epochs_completed,
            self.train_tokens,
            self.tokens_per_second,
            self.peak_rss_bytes.map_or("unknown".into(), gib)
        )?;
        if let Some(rollouts) = &self.rollouts {
            let share = |count: usize| 100.0 * count as f64 / rollouts.micro_batches.max(1) as f64;
            writeln!(
                f,
                "  on-policy: {:.0}% of {} micro-batches continued by the student, {:.0}% by the teacher | \
                 {} tokens generated at {:.0} tokens/s, mean length {:.1}",
                share(rollouts.by_student),
                rollouts.micro_batches,
                share(rollouts.by_teacher),
                rollouts.generated_tokens,
                rollouts.generated_tokens as f64 / rollouts.generation_seconds.max(1e-9),
                rollouts.generated_tokens as f64 / rollouts.generated_rows.max(1) as f64,
            )?;
        }
        if let Some(cache) = &self.teacher_cache {
            let built = if cache.blocks_computed == 0 {
                "reused".to_string()
            } else {
                format!(
                    "built {} blocks in {:.1} s, peak RSS while building {}",
                    cache.blocks_computed,
                    cache.build_seconds,
                    cache.build_peak_rss_bytes.map_or("unknown".into(), gib)
                )
            };
            let dirs: Vec<String> = cache.dirs.iter().map(|d| d.display().to_string()).collect();
            writeln!(
                f,
                "  teacher cache (top-{}): {} | {:.1} MiB | {built}{}",
                cache.top_k,
                dirs.join(", "),
                cache.bytes as f64 / (1u64 << 20) as f64,
                if cache.teacher_dir_missing {
                    " | teacher dir absent: trained from the cache's teacher.json"
                } else {
                    ""
                }
            )?;
        }
        if let Some(loss) = self.last_train_loss {
            writeln!(f, "  last train loss {loss:.4}")?;
        }
        // From a cache the KL is the top-k approximation (a lower bound of the full KL).
        let kl_label = match &self.teacher_cache {
            Some(cache) => format!("KL to teacher (top-{} approx.)", cache.top_k),
            None => "KL to teacher".to_string(),
        };
        for (when, eval) in [
            ("  before training: ", &self.initial_eval),
            ("  ", &self.last_eval),
        ] {
            if let Some(eval) = eval {
                let kl = eval
                    .kl_to_teacher
                    .map_or("n/a (no teacher)".into(), |kl| format!("{kl:.4}"));
                writeln!(
                    f,
                    "{when}eval loss {:.4} | perplexity {:.2} | {kl_label} {kl}",
                    eval.loss, eval.perplexity
                )?;
            }
        }
        for (what, path) in [
            ("final student", &self.final_model),
            ("final adapter (PEFT)", &self.final_adapter),
            ("best checkpoint", &self.best_checkpoint),
            ("last checkpoint", &self.last_checkpoint),
        ] {
            if let Some(path) = path {
                writeln!(f, "  {what}: {}", path.display())?;
            }
        }
        writeln!(
            f,
            "  metrics: {} (TensorBoard: tensorboard --logdir {})",
            self.output_dir.join(METRICS_FILE).display(),
            self.output_dir.join("runs").display()
        )?;
        Ok(())
    }
}
