//! The objective a recipe asks for, once the tokenizer check has given its verdict: which
//! vocabulary rows the two models compare and which input ids are left out of the soft loss.

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
    }
}
