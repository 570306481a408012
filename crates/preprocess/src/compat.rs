//! Can the student learn from the teacher's logits? Comparing two models' tokenizers.
//!
//! Logit distillation compares the two distributions id by id, so it is only meaningful when an
//! id means the same token to both models. The Qwen2 family shares one byte-level BPE (ids
//! 0..151643) but each release puts its own added tokens at 151643..151664: DeepSeek-R1-Distill's
//! 151648 is `<think>` where Qwen2.5's is `<|box_start|>` (151643..151649 differ; 151650..151664
//! happen to carry the same strings). The verdict:
//! - [`TokenizerCompat::Identical`]: every id is the same token and both add the same BOS.
//! - [`TokenizerCompat::SpecialIdsDiffer`]: same BPE, but some (added) ids differ or only one
//!   tokenizer prepends a BOS. Distillation proceeds; the trainer masks [`CompatReport::ids_to_mask`]
//!   out of the loss and compares the first [`CompatReport::shared_vocab_rows`] logits.
//!
//! Once any added id differs, *every* added-token id of either tokenizer is masked, not only the
//! differing ones: added tokens are control tokens (chat roles, thinking, tool calls, vision)
//! whose use each release learned in its own fine-tuning, so even a token spelled the same need
//! not mean the same to both models, and the text shards never contain them (special-token
//! strings are encoded as text), so masking them costs no signal.
//! - [`TokenizerCompat::DifferentBpe`]: the same text splits into different ids; refuse.
//!
//! The trainer calls [`check_distillation_tokenizers`] when it starts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::errors::{PreprocessError, Result};
use crate::model_files::ModelFiles;
use crate::tokenize::added_special_ids;

/// The verdict of [`check_tokenizers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TokenizerCompat {
    /// Every id maps to the same token and both add the same special tokens.
    Identical,
    /// Same BPE; `ids` (sorted) map to different tokens or exist in only one tokenizer, and/or
    /// only one of them prepends a BOS. `ids` may be empty when only the BOS use differs.
    SpecialIdsDiffer {
        ids: Vec<u32>,
        /// Ids the distillation loss must ignore: `ids` plus every added-token id of either
        /// tokenizer (see the module docs), sorted.
        ids_to_mask: Vec<u32>,
        /// Logit rows both models have: the smaller config `vocab_size`.
        shared_vocab_rows: usize,
        bos_differs: bool,
    },
    /// The vocabularies, merges or text pipelines differ: distillation over ids is meaningless.
    DifferentBpe { reason: String },
}

/// One side of the comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenizerSummary {
    pub dir: PathBuf,
    /// Ids of tokenizer.json, added tokens included.
    pub tokenizer_size: usize,
    /// Ids of the BPE model alone (before added tokens).
    pub bpe_size: usize,
    /// config.json `vocab_size` (embedding/logit rows), if the directory has a config.
    pub config_vocab_size: Option<usize>,
    /// The BOS the post-processor prepends, with its token text.
    pub bos_added: Option<(u32, String)>,
    /// config.json `eos_token_id` (first entry of a list), with its token text.
    pub eos: Option<(u32, String)>,
}

/// An id that means different things to the two tokenizers (`None`: unknown to that side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdDifference {
    pub id: u32,
    pub teacher: Option<String>,
    pub student: Option<String>,
}

/// The full comparison: both summaries, the differences and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompatReport {
    pub teacher: TokenizerSummary,
    pub student: TokenizerSummary,
    /// Same BPE vocabulary, merges, normalizer and pre-tokenizer.
    pub same_bpe: bool,
    pub differing_ids: Vec<IdDifference>,
    /// Token strings both vocabularies have (added tokens included): what the `hybrid`
    /// cross-tokenizer loss compares exactly.
    pub shared_tokens: usize,
    pub verdict: TokenizerCompat,
}

/// Compares the tokenizers (and config.json files) of two model directories.
pub fn check_tokenizers(
    teacher_dir: impl AsRef<Path>,
    student_dir: impl AsRef<Path>,
) -> Result<CompatReport> {
    let teacher = LoadedSide::load(teacher_dir.as_ref())?;
    let student = LoadedSide::load(student_dir.as_ref())?;

    let bpe_difference = bpe_difference(&teacher, &student);
    let max_id = teacher
        .summary
        .tokenizer_size
        .max(student.summary.tokenizer_size) as u32;
    let differing_ids: Vec<IdDifference> = (0..max_id)
        .filter_map(|id| {
            let (t, s) = (
                teacher.tokenizer.id_to_token(id),
                student.tokenizer.id_to_token(id),
            );
            (t != s).then_some(IdDifference {
                id,
                teacher: t,
                student: s,
            })
        })
        .collect();
    let bos_differs = teacher.summary.bos_added != student.summary.bos_added;
    let student_vocabulary = student.tokenizer.get_vocab(true);
    let shared_tokens = teacher
        .tokenizer
        .get_vocab(true)
        .keys()
        .filter(|token| student_vocabulary.contains_key(*token))
        .count();
    let shared_vocab_rows = shared_vocab_rows(&teacher.summary, &student.summary);

    let verdict = match bpe_difference {
        Some(reason) => TokenizerCompat::DifferentBpe { reason },
        None if differing_ids.is_empty() && !bos_differs => TokenizerCompat::Identical,
        None => TokenizerCompat::SpecialIdsDiffer {
            ids: differing_ids.iter().map(|d| d.id).collect(),
            ids_to_mask: ids_to_mask(&teacher.tokenizer, &student.tokenizer, &differing_ids),
            shared_vocab_rows,
            bos_differs,
        },
    };
    Ok(CompatReport {
        same_bpe: !matches!(verdict, TokenizerCompat::DifferentBpe { .. }),
        teacher: teacher.summary,
        student: student.summary,
        differing_ids,
        shared_tokens,
        verdict,
    })
}

/// What the distillation trainer calls at start-up: the report when distillation can proceed
/// (print [`CompatReport::warnings`]), or [`PreprocessError::IncompatibleTokenizers`] explaining
/// why it cannot.
pub fn check_distillation_tokenizers(
    teacher_dir: impl AsRef<Path>,
    student_dir: impl AsRef<Path>,
) -> Result<CompatReport> {
    let report = check_tokenizers(teacher_dir, student_dir)?;
    report.require_distillable()?;
    Ok(report)
}

/// The differing ids plus all added-token ids of both tokenizers, sorted and deduplicated.
fn ids_to_mask(teacher: &Tokenizer, student: &Tokenizer, differing: &[IdDifference]) -> Vec<u32> {
    let mut ids: Vec<u32> = differing.iter().map(|d| d.id).collect();
    for tokenizer in [teacher, student] {
        ids.extend(tokenizer.get_added_tokens_decoder().keys().copied());
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn shared_vocab_rows(teacher: &TokenizerSummary, student: &TokenizerSummary) -> usize {
    let rows = |side: &TokenizerSummary| side.config_vocab_size.unwrap_or(side.tokenizer_size);
    rows(teacher).min(rows(student))
}

impl CompatReport {
    /// Ids whose logits and targets the distillation loss must ignore (sorted; empty when the
    /// tokenizers are identical or incompatible).
    pub fn ids_to_mask(&self) -> &[u32] {
        match &self.verdict {
            TokenizerCompat::SpecialIdsDiffer { ids_to_mask, .. } => ids_to_mask,
            _ => &[],
        }
    }

    /// Logit rows both models have (the smaller config `vocab_size`); compare only these.
    pub fn shared_vocab_rows(&self) -> usize {
        shared_vocab_rows(&self.teacher, &self.student)
    }

    /// `Err` with a message for the user when the verdict is [`TokenizerCompat::DifferentBpe`].
    pub fn require_distillable(&self) -> Result<()> {
        match &self.verdict {
            TokenizerCompat::DifferentBpe { reason } => Err(PreprocessError::IncompatibleTokenizers(format!(
                "cannot distill {} into {} id by id: their tokenizers are different BPEs ({reason}). \
                 Set `cross_tokenizer = \"hybrid\"` (exact divergence over the {} tokens both \
                 vocabularies spell the same, ULD over the rest) or `\"uld\"` under [distillation] \
                 to align the two tokenizations by text, or pick a student of the teacher's family",
                self.teacher.dir.display(),
                self.student.dir.display(),
                self.shared_tokens
            ))),
            _ => Ok(()),
        }
    }

    /// What a trainer should print before it starts (empty when identical).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let TokenizerCompat::SpecialIdsDiffer {
            ids,
            ids_to_mask,
            shared_vocab_rows,
            bos_differs,
        } = &self.verdict
        {
            if !ids.is_empty() {
                warnings.push(format!(
                    "{} ids mean different tokens to teacher and student ({})",
                    ids.len(),
                    format_id_ranges(ids)
                ));
            }
            warnings.push(format!(
                "{} ids ({}: the differing ones and every added/control token of either tokenizer) \
                 will be masked from the distillation loss",
                ids_to_mask.len(),
                format_id_ranges(ids_to_mask)
            ));
            if *bos_differs {
                warnings.push(format!(
                    "BOS differs: teacher {}, student {}; the shards carry no BOS (text is encoded \
                     without special tokens), so neither model sees one unless the trainer adds it",
                    describe_bos(&self.teacher),
                    describe_bos(&self.student)
                ));
            }
            if let (Some((teacher_eos, _)), Some((student_eos, _))) =
                (&self.teacher.eos, &self.student.eos)
            {
                if teacher_eos == student_eos && ids_to_mask.contains(teacher_eos) {
                    // Both models end a text with this id, whatever its spelling: it separates
                    // the documents in the shards and stays a valid hard-label target.
                    warnings.push(format!(
                        "eos {teacher_eos} is masked from the teacher-student logit comparison, but it \
                         is both models' end-of-text id and the shards' document separator: keep it as \
                         a next-token target"
                    ));
                }
            }
            warnings.push(format!(
                "the loss compares the first {shared_vocab_rows} logit rows"
            ));
        }
        for side in [&self.teacher, &self.student] {
            if let Some(rows) = side.config_vocab_size {
                if rows != side.tokenizer_size {
                    warnings.push(format!(
                        "{}: config vocab_size {rows} vs {} tokenizer ids{}",
                        side.dir.display(),
                        side.tokenizer_size,
                        if rows > side.tokenizer_size {
                            format!(
                                " ({} padding rows that no text produces)",
                                rows - side.tokenizer_size
                            )
                        } else {
                            " (the tokenizer can produce ids the model has no row for!)".to_string()
                        }
                    ));
                }
            }
        }
        warnings
    }

    /// A human-readable report (what `cargo xtask preprocess --check-tokenizers` prints).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (role, side) in [("teacher", &self.teacher), ("student", &self.student)] {
            let _ = writeln!(
                out,
                "{role}: {}\n  tokenizer.json: {} ids ({} BPE + {} added); config vocab_size: {}\n  \
                 BOS added by the tokenizer: {}; eos (config.json): {}",
                side.dir.display(),
                side.tokenizer_size,
                side.bpe_size,
                side.tokenizer_size.saturating_sub(side.bpe_size),
                side.config_vocab_size.map_or("none".to_string(), |v| v.to_string()),
                describe_bos(side),
                side.eos.as_ref().map_or("none".to_string(), |(id, token)| format!("{id} {token:?}")),
            );
        }
        let _ = writeln!(
            out,
            "same BPE vocabulary: {}",
            match &self.verdict {
                TokenizerCompat::DifferentBpe { reason } => format!("no ({reason})"),
                _ => "yes (vocabulary, merges, normalizer, pre-tokenizer and decoder are equal)"
                    .to_string(),
            }
        );
        if self.differing_ids.is_empty() {
            let _ = writeln!(out, "ids whose token differs: none");
        } else {
            let ids: Vec<u32> = self.differing_ids.iter().map(|d| d.id).collect();
            let _ = writeln!(
                out,
                "ids whose token differs: {} ({})",
                ids.len(),
                format_id_ranges(&ids)
            );
            for diff in self.differing_ids.iter().take(40) {
                let show = |t: &Option<String>| {
                    t.as_ref()
                        .map_or("(none)".to_string(), |t| format!("{t:?}"))
                };
                let _ = writeln!(
                    out,
                    "  {:>7}  teacher {:<28} student {}",
                    diff.id,
                    show(&diff.teacher),
                    show(&diff.student)
                );
            }
            if self.differing_ids.len() > 40 {
                let _ = writeln!(out, "  ... and {} more", self.differing_ids.len() - 40);
            }
        }
        let _ = writeln!(
            out,
            "tokens spelled the same in both vocabularies: {} ({:.1}% of the teacher's {}, {:.1}% of \
             the student's {})",
            self.shared_tokens,
            100.0 * self.shared_tokens as f64 / self.teacher.tokenizer_size.max(1) as f64,
            self.teacher.tokenizer_size,
            100.0 * self.shared_tokens as f64 / self.student.tokenizer_size.max(1) as f64,
            self.student.tokenizer_size,
        );
        for warning in self.warnings() {
            let _ = writeln!(out, "warning: {warning}");
        }
        let verdict = match &self.verdict {
            TokenizerCompat::Identical => "Identical: distillation can use every id as is".to_string(),
            TokenizerCompat::SpecialIdsDiffer { ids_to_mask, shared_vocab_rows, .. } => format!(
                "SpecialIdsDiffer: distillation can proceed with {} ids masked from the loss over {shared_vocab_rows} shared rows",
                ids_to_mask.len()
            ),
            TokenizerCompat::DifferentBpe { .. } => format!(
                "DifferentBpe: distillation id by id is refused; across tokenizers \
                 (`distillation.cross_tokenizer`) `hybrid` compares the {} shared tokens exactly and \
                 the rest by ULD, `uld` compares sorted distributions only",
                self.shared_tokens
            ),
        };
        let _ = writeln!(out, "verdict: {verdict}");
        out
    }
}

fn describe_bos(side: &TokenizerSummary) -> String {
    side.bos_added
        .as_ref()
        .map_or("none".to_string(), |(id, token)| format!("{id} {token:?}"))
}

/// `[1,2,3,7]` -> `"1..3, 7"`.
pub fn format_id_ranges(ids: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let start = ids[i];
        let mut end = start;
        while i + 1 < ids.len() && ids[i + 1] == end + 1 {
            i += 1;
            end += 1;
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}..{end}")
        });
        i += 1;
    }
    parts.join(", ")
}

struct LoadedSide {
    summary: TokenizerSummary,
    tokenizer: Tokenizer,
    json: Value,
}

impl LoadedSide {
    fn load(dir: &Path) -> Result<Self> {
        let ModelFiles {
            tokenizer,
            tokenizer_json: json,
            config,
            ..
        } = ModelFiles::read(dir)?;
        let config_vocab_size = config
            .as_ref()
            .and_then(|c| c.get("vocab_size"))
            .and_then(Value::as_u64)
            .map(|v| v as usize);
        let eos_id = config
            .as_ref()
            .and_then(|c| c.get("eos_token_id"))
            .and_then(|v| match v {
                Value::Array(ids) => ids.first().and_then(Value::as_u64),
                other => other.as_u64(),
            });
        let with_token = |id: u32| (id, tokenizer.id_to_token(id).unwrap_or_default());
        let (bos_id, _) = added_special_ids(&tokenizer)?;
        let summary = TokenizerSummary {
            dir: dir.to_path_buf(),
            tokenizer_size: tokenizer.get_vocab_size(true),
            bpe_size: tokenizer.get_vocab_size(false),
            config_vocab_size,
            bos_added: bos_id.map(with_token),
            eos: eos_id.and_then(|id| u32::try_from(id).ok()).map(with_token),
        };
        Ok(Self {
            summary,
            tokenizer,
            json,
        })
    }
}

/// Why the two BPEs would split text differently, or `None` when they would not.
fn bpe_difference(teacher: &LoadedSide, student: &LoadedSide) -> Option<String> {
    let (t, s) = (&teacher.json, &student.json);
    for part in ["normalizer", "pre_tokenizer", "decoder"] {
        if t.get(part) != s.get(part) {
            return Some(format!("their {part} settings differ"));
        }
    }
    let (t_model, s_model) = (t.get("model")?, s.get("model")?);
    // Settings of the model other than the two big tables (type, dropout, byte_fallback, ...).
    let settings = |model: &Value| -> Vec<(String, Value)> {
        model
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| *k != "vocab" && *k != "merges")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (mut t_settings, mut s_settings) = (settings(t_model), settings(s_model));
    t_settings.sort_by(|a, b| a.0.cmp(&b.0));
    s_settings.sort_by(|a, b| a.0.cmp(&b.0));
    if t_settings != s_settings {
        return Some("their model settings (type, byte fallback, ...) differ".to_string());
    }
    let (t_vocab, s_vocab) = (
        teacher.tokenizer.get_vocab(false),
        student.tokenizer.get_vocab(false),
    );
    if t_vocab != s_vocab {
        let mut examples: Vec<String> = t_vocab
            .iter()
            .filter(|(token, id)| s_vocab.get(*token) != Some(id))
            .map(|(token, id)| format!("{token:?} is {id} vs {:?}", s_vocab.get(token)))
            .collect();
        examples.sort();
        examples.truncate(3);
        return Some(format!(
            "BPE vocabularies differ: {} vs {} tokens; e.g. {}",
            t_vocab.len(),
            s_vocab.len(),
            if examples.is_empty() {
                "the student has extra tokens".to_string()
            } else {
                examples.join(", ")
            }
        ));
    }
    let merges = |model: &Value| -> Vec<String> {
        model
            .get("merges")
            .and_then(Value::as_array)
            .map_or_else(Vec::new, |merges| {
                merges
                    .iter()
                    .map(|m| match m {
                        Value::String(s) => s.clone(),
                        Value::Array(pair) => pair
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(" "),
                        other => other.to_string(),
                    })
                    .collect()
            })
    };
    let (t_merges, s_merges) = (merges(t_model), merges(s_model));
    if t_merges != s_merges {
        let first = t_merges
            .iter()
            .zip(&s_merges)
            .position(|(a, b)| a != b)
            .unwrap_or(t_merges.len().min(s_merges.len()));
        return Some(format!(
            "BPE merges differ ({} vs {} merges, first difference at rank {first})",
            t_merges.len(),
            s_merges.len()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_ranges_are_compact() {
        assert_eq!(
            format_id_ranges(&[151643, 151644, 151645, 151648, 151650, 151651]),
            "151643..151645, 151648, 151650..151651"
        );
        assert_eq!(format_id_ranges(&[]), "");
    }
}
