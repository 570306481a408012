//! The evaluation report: every figure with how and where it was measured, as `report.json`
//! (for tools) and `report.md` (the table the seed promised, then the generations side by
//! side), and the same table as plain text for the terminal.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::continuations::ContinuationReport;
use crate::error::EvalError;
use crate::evaluate::{EvalOptions, ModelReport};
use crate::provenance::{utc_now_iso8601, Machine};
use crate::speed::GenerationSample;
use fsio::write_atomic;

pub const REPORT_JSON: &str = "report.json";
pub const REPORT_MD: &str = "report.md";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// One row per model, in the order given (e.g. teacher, student before, distilled student,
    /// hard-label student).
    pub models: Vec<ModelReport>,
    /// The command line that produced the report.
    pub command: String,
    pub machine: Machine,
    /// "ndarray" or "cuda".
    pub backend: String,
    /// When the report was made, UTC ISO-8601.
    pub date: String,
    /// The shard directory evaluated.
    pub shards: String,
    pub split: String,
    /// The teacher's directory, when KL and agreement were measured.
    pub teacher: Option<String>,
    pub options: EvalOptions,
    /// The training-curve plot, relative to the report's directory.
    pub curves_png: Option<String>,
    /// Remarks a reader needs (e.g. what a comparison shows), printed under the table.
    pub notes: Vec<String>,
}

impl Report {
    /// An empty report stamped with this machine and the current date.
    pub fn new(command: &str, backend: &str, shards: &Path, options: &EvalOptions) -> Self {
        Self {
            models: Vec::new(),
            command: command.to_string(),
            machine: Machine::current(),
            backend: backend.to_string(),
            date: utc_now_iso8601(),
            shards: shards.display().to_string(),
            split: options.split.clone(),
            teacher: None,
            options: options.clone(),
            curves_png: None,
            notes: Vec::new(),
        }
    }

    /// Writes `report.json` and `report.md` into `out_dir` (created), each atomically.
    /// Returns their paths.
    pub fn write(&self, out_dir: &Path) -> Result<(PathBuf, PathBuf), EvalError> {
        std::fs::create_dir_all(out_dir).map_err(EvalError::io("create directory", out_dir))?;
        let json_path = out_dir.join(REPORT_JSON);
        let mut json = serde_json::to_string_pretty(self).expect("a report serialises");
        json.push('\n');
        write_atomic(&json_path, json.as_bytes())?;
        let markdown_path = out_dir.join(REPORT_MD);
        write_atomic(&markdown_path, self.to_markdown().as_bytes())?;
        Ok((json_path, markdown_path))
    }

    /// The results table as aligned plain text (what the terminal shows).
    pub fn render_table(&self) -> String {
        let rows = self.table_rows();
        let widths: Vec<usize> = (0..COLUMNS.len())
            .map(|c| {
                rows.iter()
                    .map(|row| row[c].chars().count())
                    .chain([COLUMNS[c].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(c, cell)| {
                    if c == 0 {
                        format!("{cell:<width$}", width = widths[c])
                    } else {
                        format!("{cell:>width$}", width = widths[c])
                    }
                })
                .collect();
            padded.join("  ").trim_end().to_string()
        };
        let header: Vec<String> = COLUMNS.iter().map(|s| s.to_string()).collect();
        let mut text = line(&header);
        text.push('\n');
        text.push_str(
            &widths
                .iter()
                .map(|&w| "-".repeat(w))
                .collect::<Vec<_>>()
                .join("  "),
        );
        text.push('\n');
        for row in &rows {
            text.push_str(&line(row));
            text.push('\n');
        }
        text
    }

    /// The whole Markdown report.
    pub fn to_markdown(&self) -> String {
        let mut md = String::from("# Evaluation report\n\n");
        md.push_str(&format!("- date (UTC): {}\n", self.date));
        md.push_str(&format!(
            "- machine: {}, {} cores, {} RAM ({} {})\n",
            self.machine.cpu_model,
            self.machine.cores,
            self.machine.ram_bytes.map_or("unknown".into(), bytes),
            self.machine.os,
            self.machine.arch
        ));
        md.push_str(&format!("- backend: {}\n", self.backend));
        md.push_str(&format!(
            "- data: `{}`, split `{}`{}\n",
            self.shards,
            self.split,
            self.models.first().map_or(String::new(), |m| format!(
                ", {} blocks of {} tokens ({} scored labels)",
                m.blocks, m.seq_len, m.label_tokens
            ))
        ));
        if let Some(teacher) = &self.teacher {
            md.push_str(&format!("- teacher: `{teacher}`\n"));
        }
        md.push_str(&format!("- command: `{}`\n\n", self.command));

        md.push_str("## Results\n\n");
        md.push_str(&format!("| {} |\n", COLUMNS.join(" | ")));
        md.push_str(&format!(
            "|{}\n",
            COLUMNS
                .iter()
                .enumerate()
                .map(|(c, _)| if c == 0 { "---|" } else { "---:|" })
                .collect::<String>()
        ));
        for row in self.table_rows() {
            let cells: Vec<String> = row.iter().map(|c| markdown_cell(c)).collect();
            md.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        md.push('\n');
        md.push_str(&format!(
            "Eval loss: mean next-token cross-entropy (nats) over every real token of the split, as \
             transformers computes it; perplexity = exp(loss). KL to teacher: token mean of \
             KL(teacher || model) over real positions, temperature 1, full vocabulary. Top-1: share \
             of those positions where both models' most likely token agree. Latency: median of {} \
             forward passes of one sample (batch 1) of the split's first block. Generation: greedy \
             decoding tokens/s over the prompts below. Peak RSS: process high-water mark while the \
             model was loaded and evaluated (host memory; a teacher held for KL is included).\n\n",
            self.options.latency_repeats
        ));
        for note in &self.notes {
            md.push_str(&format!("> {note}\n\n"));
        }

        if let Some(curves) = &self.curves_png {
            md.push_str(&format!(
                "## Training curves\n\n![training and validation curves]({curves})\n\n"
            ));
        }

        let prompts: Vec<&str> = self
            .models
            .iter()
            .flat_map(|m| m.generations.iter().map(|g| g.prompt.as_str()))
            .fold(Vec::new(), |mut seen, prompt| {
                if !seen.contains(&prompt) {
                    seen.push(prompt);
                }
                seen
            });
        if !prompts.is_empty() {
            md.push_str(&format!(
                "## Generations (greedy, up to {} new tokens)\n\n",
                self.options.max_new_tokens
            ));
            for prompt in prompts {
                md.push_str(&format!(
                    "**{}**\n\n| model | continuation |\n|---|---|\n",
                    markdown_cell(prompt)
                ));
                for model in &self.models {
                    if let Some(sample) = model.generations.iter().find(|g| g.prompt == prompt) {
                        md.push_str(&format!(
                            "| {} | {} |\n",
                            markdown_cell(&model.label),
                            continuation_cell(sample)
                        ));
                    }
                }
                md.push('\n');
            }
        }
        md.push_str(&self.continuations_markdown());
        md
    }

    /// The continuations of held-out prompts, as a table (one line per model) and the first
    /// few side by side; empty when they were not measured.
    pub fn continuations_markdown(&self) -> String {
        let Some(options) = &self.options.continuations else {
            return String::new();
        };
        let measured: Vec<(&ModelReport, &ContinuationReport)> = self
            .models
            .iter()
            .filter_map(|m| m.continuations.as_ref().map(|c| (m, c)))
            .collect();
        if measured.is_empty() {
            return String::new();
        }
        let mut md = format!(
            "## Continuations of held-out prompts\n\nEach model continues the first {} tokens \
             of the split's first {} blocks, sampling at temperature 1 (seed {}), up to {} new \
             tokens. Teacher CE: the teacher's mean cross-entropy on those generated tokens \
             (nats; lower = the teacher finds the model's own text more likely; the teacher's \
             row is its own samples).\n\n| model | teacher CE on own continuations | mean new \
             tokens | gen tokens/s (batched) |\n|---|---:|---:|---:|\n",
            options.prompt_len, options.prompts, options.seed, options.max_new_tokens
        );
        for (model, c) in &measured {
            md.push_str(&format!(
                "| {} | {} | {:.1} | {:.1} |\n",
                markdown_cell(&model.label),
                c.teacher_cross_entropy
                    .map_or("-".into(), |ce| format!("{ce:.4}")),
                c.mean_new_tokens,
                c.generation_tokens_per_second
            ));
        }
        md.push('\n');
        let shown = measured
            .iter()
            .map(|(_, c)| c.samples.len())
            .max()
            .unwrap_or(0);
        for index in 0..shown {
            let Some(prompt) = measured
                .iter()
                .find_map(|(_, c)| c.samples.get(index).map(|s| s.prompt.clone()))
            else {
                continue;
            };
            md.push_str(&format!(
                "**{}**\n\n| model | continuation |\n|---|---|\n",
                markdown_cell(&prompt)
            ));
            for (model, c) in &measured {
                if let Some(sample) = c.samples.get(index) {
                    md.push_str(&format!(
                        "| {} | {} |\n",
                        markdown_cell(&model.label),
                        continuation_cell(sample)
                    ));
                }
            }
            md.push('\n');
        }
        md
    }

    fn table_rows(&self) -> Vec<Vec<String>> {
        self.models
            .iter()
            .map(|m| {
                vec![
                    m.label.clone(),
                    count(m.parameters as f64),
                    format!("{:.4}", m.eval_loss),
                    format!("{:.3}", m.perplexity),
                    m.kl_to_teacher.map_or("-".into(), |kl| format!("{kl:.4}")),
                    m.top1_agreement
                        .map_or("-".into(), |a| format!("{:.1}%", a * 100.0)),
                    format!("{:.2}", m.latency_ms_per_sample),
                    m.generation_tokens_per_second
                        .map_or("-".into(), |t| format!("{t:.1}")),
                    m.peak_rss_bytes.map_or("-".into(), bytes),
                ]
            })
            .collect()
    }
}

/// The table's columns, in order.
pub const COLUMNS: [&str; 9] = [
    "model",
    "params",
    "eval loss",
    "perplexity",
    "KL to teacher",
    "top-1 agree",
    "latency ms/sample",
    "gen tokens/s",
    "peak RSS",
];

/// The continuation's text, or its ids when they decode to nothing visible (a random model may
/// pick ids that no tokenizer entry maps to).
fn continuation_cell(sample: &GenerationSample) -> String {
    if sample.text.trim().is_empty() && !sample.token_ids.is_empty() {
        let ids: Vec<String> = sample.token_ids.iter().map(u32::to_string).collect();
        format!("(no text; token ids {})", ids.join(" "))
    } else {
        markdown_cell(&sample.text)
    }
}

/// Text that stays inside one Markdown table cell.
fn markdown_cell(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('\r', "")
        .replace('\n', "<br>")
}

/// 1234567 -> "1.23M".
fn count(value: f64) -> String {
    match value {
        v if v >= 1e9 => format!("{:.2}B", v / 1e9),
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}K", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// Bytes in MiB below 1 GiB, else GiB.
fn bytes(value: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    const GIB: f64 = (1u64 << 30) as f64;
    if (value as f64) < GIB {
        format!("{:.0} MiB", value as f64 / MIB)
    } else {
        format!("{:.2} GiB", value as f64 / GIB)
    }
}

#[cfg(test)]
mod tests {
    use super::{bytes, count, markdown_cell};

    #[test]
    fn human_units() {
        assert_eq!(count(1_543_714_304.0), "1.54B");
        assert_eq!(count(43_520.0), "43.5K");
        assert_eq!(bytes(200 << 20), "200 MiB");
        assert_eq!(bytes(3 << 30), "3.00 GiB");
    }

    #[test]
    fn cells_keep_pipes_and_newlines_inside() {
        assert_eq!(markdown_cell("a|b\nc"), "a\\|b<br>c");
    }
}
