//! The objective a recipe asks for, once the tokenizer check has given its verdict: which
//! vocabulary rows the two models compare and which input ids are left out of the soft loss.

use crate::cross_tokenizer::{CrossTokenizerLoss, CrossTokenizerLossKind, SharedColumns};
use crate::error::TrainError;
use crate::losses::DivergenceParams;
use crate::measure::Comparison;
use crate::objective::Objective;
use crate::recipe::Recipe;

/// The objective of `recipe`, with the vocabulary rows and masked ids that the tokenizer
/// check decides (no check and no restriction without a teacher).
pub fn objective_for(
    recipe: &Recipe,
    teacher_vocab: Option<usize>,
    student_vocab: usize,
) -> Result<Objective, TrainError> {
    let Some(teacher_vocab) = teacher_vocab else {
        return Ok(objective_with_verdict(recipe, Vec::new(), None));
    };
    if let Some(kind) = recipe.distillation.cross_tokenizer {
        let teacher = preprocess::TokenText::load(&recipe.teacher.local_dir)?;
        let student = preprocess::TokenText::load(&recipe.student.local_dir)?;
        let shared = preprocess::SharedTokens::of(&teacher, &student);
        let columns = SharedColumns::new(&shared, teacher_vocab, student_vocab);
        let mut objective = objective_with_verdict(recipe, Vec::new(), None);
        let d = &recipe.distillation;
        let loss = CrossTokenizerLoss {
            kind,
            shared: columns,
            weights: d.hybrid_matched_weight.zip(d.hybrid_unmatched_weight),
            beta: d.jsd_beta,
        };
        eprintln!("{}", describe_cross_tokenizer(&loss, &teacher, &student));
        objective.cross_tokenizer = Some(loss);
        return Ok(objective);
    }
    let comparison = Comparison::of_tokenizers(
        &recipe.teacher.local_dir,
        &recipe.student.local_dir,
        teacher_vocab,
        student_vocab,
    )?;
    Ok(objective_with_verdict(
        recipe,
        comparison.masked_token_ids,
        comparison.vocab_rows,
    ))
}

/// The objective of `recipe` with a tokenizer check's verdict already made (masked input ids,
/// compared vocabulary rows).
pub fn objective_with_verdict(
    recipe: &Recipe,
    masked_token_ids: Vec<u32>,
    vocab_rows: Option<Vec<u32>>,
) -> Objective {
    let d = &recipe.distillation;
    Objective {
        temperature: d.temperature,
        hard_label_weight: d.hard_label_weight,
        kd_loss: recipe.kd_loss(),
        divergence: DivergenceParams {
            jsd_beta: d.jsd_beta,
            skew_alpha: d.skew_alpha,
        },
        intermediate_matches: d.intermediate_matches.clone(),
        chunk_positions: d.chunk_positions,
        vocab_rows,
        masked_token_ids,
        cross_tokenizer: None,
    }
}

/// What the tokenizer check says about a run across tokenizers.
pub fn describe_cross_tokenizer(
    loss: &CrossTokenizerLoss,
    teacher: &preprocess::TokenText,
    student: &preprocess::TokenText,
) -> String {
    let shared = loss.shared.teacher.len();
    let mut text = format!(
        "tokenizers: teacher {} ({} ids), student {} ({} ids); {shared} tokens spelled the same \
         in both ({:.1}% of the teacher's, {:.1}% of the student's); loss across tokenizers: {}",
        teacher.dir().display(),
        teacher.len(),
        student.dir().display(),
        student.len(),
        100.0 * shared as f64 / teacher.len().max(1) as f64,
        100.0 * shared as f64 / student.len().max(1) as f64,
        loss.kind.name(),
    );
    if loss.kind == CrossTokenizerLossKind::Hybrid {
        let (matched, unmatched) = loss.hybrid_weights();
        text += &format!(
            " (generalized JSD, beta {}, over the shared tokens x {matched:.4} + ULD over the rest x \
             {unmatched:.4}{})",
            loss.beta,
            if loss.weights.is_none() { ", adaptive weights" } else { "" }
        );
    }
    text
}
