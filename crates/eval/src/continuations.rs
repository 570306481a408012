//! What a model writes itself, judged by the teacher: each model continues held-out prompts
//! (the first `prompt_len` tokens of the split's first blocks) by sampling at temperature 1
//! with a fixed seed, and the teacher's cross-entropy on those continuations is measured (nats
//! per generated token; lower means the teacher finds the model's own text more likely). This
//! is what on-policy distillation optimises and what word-level distillation never sees: the
//! text drifts into states the training data did not hold. The teacher's own row is its
//! cross-entropy on its own samples (about its entropy), the floor to compare with.
//!
//! The continuations are generated as training generates them (distill::on_policy: batched,
//! KV-cached, each row stopping at its eos) and scored with distill::measure's cross-entropy on
//! the generated tokens only.
//!
//! Across tokenizers the teacher reads its own tokens of the prompt's and the continuation's
//! text (encoded apart, so the boundary stays where the model put it), and its summed
//! cross-entropy over the continuation is divided by the model's generated tokens: nats per
//! model token, comparable between models of one tokenizer (no shared vocabulary needed).

use burn::tensor::backend::Backend;
use distill::cross_tokenizer::Aligner;
use distill::measure::{measure_batch, measurement_objective, Comparison, QualitySums};
use distill::objective::TeacherOutputs;
use distill::on_policy::continuation_batch;
use qwen2::generate::{generate_batch, Sampler, Sampling};
use qwen2::tokenizer::Tokenizer;
use qwen2::Model;
use serde::{Deserialize, Serialize};

use crate::error::EvalError;
use crate::speed::GenerationSample;

/// Rows generated at once.
const GENERATION_BATCH: usize = 16;

/// Continuations decoded into the report per model.
const SHOWN_SAMPLES: usize = 3;

/// Which prompts, and how to continue them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContinuationOptions {
    /// Held-out prompts: the first `prompt_len` tokens of this many blocks of the split.
    pub prompts: usize,
    pub prompt_len: usize,
    pub max_new_tokens: usize,
    /// Seed of the sampling (temperature 1, no top-k or top-p).
    pub seed: u64,
}

/// One model's continuations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContinuationReport {
    pub prompts: usize,
    /// Mean generated tokens per prompt (a row stops at an eos).
    pub mean_new_tokens: f64,
    /// The teacher's mean next-token cross-entropy on the generated tokens (nats); None
    /// without a teacher.
    pub teacher_cross_entropy: Option<f64>,
    /// Generated tokens per second of batched generation (prefill included).
    pub generation_tokens_per_second: f64,
    /// The first continuations, decoded.
    pub samples: Vec<GenerationSample>,
}

/// Who scores the continuations.
pub enum Scorer<'a, B: Backend> {
    /// A teacher of the model's tokenizer.
    SameTokenizer(&'a Model<B>),
    /// A teacher of another tokenizer, reading its own tokens of the text.
    AcrossTokenizers(&'a Model<B>, &'a Aligner),
}

/// Continues `prompts` with `model` and scores the continuations with `scorer`.
pub fn continuation_report<B: Backend>(
    model: &Model<B>,
    scorer: Option<Scorer<'_, B>>,
    tokenizer: &Tokenizer,
    eos_token_ids: &[u32],
    prompts: &[Vec<u32>],
    options: &ContinuationOptions,
) -> Result<ContinuationReport, EvalError> {
    let mut sampler = Sampler::new(&Sampling::Sample {
        temperature: 1.0,
        top_k: None,
        top_p: None,
        seed: options.seed,
    });
    let mut sums = QualitySums::default();
    let (mut new_tokens, mut seconds) = (0usize, 0f64);
    let mut samples = Vec::new();
    for chunk in prompts.chunks(GENERATION_BATCH) {
        let generation = generate_batch(
            model,
            chunk,
            options.max_new_tokens,
            eos_token_ids,
            &mut sampler,
        );
        new_tokens += generation.new_tokens();
        seconds += generation.time.as_secs_f64();
        for (prompt, tokens) in chunk.iter().zip(&generation.tokens) {
            if samples.len() < SHOWN_SAMPLES {
                samples.push(GenerationSample {
                    prompt: tokenizer.decode(prompt, true)?,
                    text: tokenizer.decode(tokens, true)?,
                    prompt_tokens: prompt.len(),
                    new_tokens: tokens.len(),
                    token_ids: tokens.clone(),
                    stopped_at_eos: tokens.last().is_some_and(|t| eos_token_ids.contains(t)),
                });
            }
        }
        match &scorer {
            None => {}
            Some(Scorer::SameTokenizer(teacher)) => {
                if let Some(id) = generation
                    .tokens
                    .iter()
                    .flatten()
                    .find(|&&id| id as usize >= teacher.vocab_size())
                {
                    return Err(EvalError::Invalid(format!(
                        "--continuations: the model generated token id {id}, which the teacher's \
                         {} embedding rows do not hold; the teacher cannot score it (evaluate \
                         without --continuations, or with a teacher of the same vocabulary)",
                        teacher.vocab_size()
                    )));
                }
                let batch = continuation_batch(chunk, &generation.tokens);
                sums.add(&score_continuations(teacher, model.vocab_size(), &batch));
            }
            Some(Scorer::AcrossTokenizers(teacher, aligner)) => {
                let (mut prompts, mut continuations) = (Vec::new(), Vec::new());
                for (prompt, tokens) in chunk.iter().zip(&generation.tokens) {
                    let (prompt, tokens) =
                        aligner
                            .teacher_tokens_of_continuation(prompt, tokens)
                            .map_err(|e| EvalError::Invalid(format!("--continuations: {e}")))?;
                    prompts.push(prompt);
                    continuations.push(tokens);
                }
                let batch = continuation_batch(&prompts, &continuations);
                let mut scored = score_continuations(teacher, teacher.vocab_size(), &batch);
                // Per model token, not per teacher token: the model's tokens are the unit
                // every row of the report shares.
                scored.labels = generation.new_tokens() as u64;
                sums.add(&scored);
            }
        }
    }
    Ok(ContinuationReport {
        prompts: prompts.len(),
        mean_new_tokens: new_tokens as f64 / prompts.len().max(1) as f64,
        teacher_cross_entropy: (scorer.is_some() && sums.labels > 0)
            .then(|| sums.mean_cross_entropy()),
        generation_tokens_per_second: new_tokens as f64 / seconds.max(1e-9),
        samples,
    })
}

/// The teacher's cross-entropy sums on the scored positions of `batch` (its own tokens).
fn score_continuations<B: Backend>(
    teacher: &Model<B>,
    model_vocab: usize,
    batch: &distill::objective::Batch,
) -> QualitySums {
    let comparison = Comparison::same_tokenizer(teacher.vocab_size(), model_vocab);
    let objective = measurement_objective(&comparison, 1.0, 256);
    measure_batch(teacher, &TeacherOutputs::absent(), batch, &objective)
}
