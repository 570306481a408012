//! What `init-student` measured and decided: saved as importance.json beside the student,
//! printed as a table.

use std::fmt::Write;

use qwen2::ModelConfig;
use serde::Serialize;

use crate::importance::Importance;
use crate::plan::{importance_order, PrunePlan};

#[derive(Debug, Clone, Serialize)]
pub struct StudentReport {
    pub teacher: String,
    pub teacher_config: ModelConfig,
    pub student_config: ModelConfig,
    /// The depth measure `--num-layers` chose by.
    pub spec_layer_ranking: &'static str,
    pub plan: PrunePlan,
    pub importance: Option<Importance>,
    pub importance_seconds: f64,
    pub calibration_blocks: usize,
    pub held_out_blocks: usize,
    pub teacher_held_out_loss: Option<f64>,
    pub student_held_out_loss: Option<f64>,
}

impl StudentReport {
    /// The printed summary: the per-layer depth measures with both rankings, then the shapes,
    /// parameter counts and held-out losses of teacher and student.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if let Some(importance) = &self.importance {
            let layers = importance.block_influence.len();
            let increase = importance.loss_increase();
            let rank = |scores: &[f64]| {
                let mut ranks = vec![0; layers];
                for (position, layer) in importance_order(scores).into_iter().enumerate() {
                    ranks[layer] = position + 1;
                }
                ranks
            };
            let bi_rank = rank(&importance.block_influence);
            let loss_rank = rank(&increase);
            let _ = writeln!(
                out,
                "layer importance on {} calibration blocks ({} tokens, {:.0} s); teacher loss {:.4}; rank 1 = most important",
                importance.blocks, importance.tokens, self.importance_seconds, importance.loss
            );
            let _ = writeln!(
                out,
                "| layer | block influence | rank | loss without it | increase | rank | kept |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|");
            for layer in 0..layers {
                let kept = if self.plan.layers.contains(&layer) {
                    "yes"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "| {layer} | {:.4} | {} | {:.4} | {:+.4} | {} | {kept} |",
                    importance.block_influence[layer],
                    bi_rank[layer],
                    importance.loss_without_layer[layer],
                    increase[layer],
                    loss_rank[layer],
                );
            }
            let _ = writeln!(out);
        }
        let (t, s) = (&self.teacher_config, &self.student_config);
        let _ = writeln!(
            out,
            "| model | layers | hidden | heads (kv) | intermediate | parameters | held-out loss | perplexity |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
        for (name, config, loss) in [
            ("teacher", t, self.teacher_held_out_loss),
            ("student", s, self.student_held_out_loss),
        ] {
            let (loss, perplexity) = match loss {
                Some(loss) => (format!("{loss:.4}"), format!("{:.2}", loss.exp())),
                None => ("-".into(), "-".into()),
            };
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} ({}) | {} | {:.1}M | {loss} | {perplexity} |",
                config.num_hidden_layers,
                config.hidden_size,
                config.num_attention_heads,
                config.num_key_value_heads,
                config.intermediate_size,
                config.num_parameters() as f64 / 1e6,
            );
        }
        let _ = write!(out, "kept layers: {:?}", self.plan.layers);
        if self.held_out_blocks > 0 {
            let _ = write!(out, " (held-out loss on {} blocks)", self.held_out_blocks);
        }
        out
    }
}
