//! On-policy and sequence-level distillation (GKD, Agarwal et al. 2024; TRL's GKDTrainer with
//! `lmbda` and `seq_kd`): the text a micro-batch trains on, and how generated text becomes a
//! batch.
//!
//! Each micro-batch draws its text once ([`draw`]): with probability `lmbda` the student
//! continues prompts (on-policy), otherwise with `seq_kd` the teacher does (sequence-level KD),
//! otherwise it is the data's block (word-level KD, exactly the run without `[on_policy]`). The
//! prompts are the first `prompt_len` tokens of the micro-batch's blocks. The continuations are
//! generated with the KV cache, all rows at once, each row stopping at its eos, on the
//! inference backend (no autodiff graph: gradients never flow through the sampling). The
//! sequence (prompt + continuation, right-padded) is then scored as any batch: the teacher in
//! one forward pass, the student through the objective, on the positions that predict a
//! generated token only ([`Batch::scored`]), as TRL masks the prompt's labels.
//!
//! Every draw (which text, and the sampled tokens) comes from a generator seeded by
//! `(on_policy.seed, update, micro-batch)` alone, so a resumed run generates exactly what the
//! uninterrupted run did, with no generator state in the checkpoint.

use burn::tensor::backend::Backend;
use qwen2::generate::{generate_batch, Sampler, Sampling};
use qwen2::{AttentionMask, Model};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::objective::Batch;
use crate::recipe::{OnPolicy, Recipe};

/// Where the text of a micro-batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextSource {
    /// The data's block (word-level distillation).
    Data,
    /// Prompts continued by the student (on-policy).
    Student,
    /// Prompts continued by the teacher (sequence-level KD).
    Teacher,
}

/// The text source of micro-batch `micro_batch` of update `step` (0-based).
pub fn draw(on_policy: &OnPolicy, step: usize, micro_batch: usize) -> TextSource {
    if !on_policy.generates() {
        return TextSource::Data;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(stream_seed(
        on_policy.seed,
        step,
        micro_batch,
        Stream::Source,
    ));
    let draw: f64 = rng.random();
    if draw < on_policy.lmbda {
        TextSource::Student
    } else if on_policy.seq_kd {
        TextSource::Teacher
    } else {
        TextSource::Data
    }
}

/// The independent random streams of one micro-batch.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Source = 1,
    Tokens = 2,
}

/// A seed for one stream of one micro-batch: splitmix64 over the four numbers, so nearby
/// updates and micro-batches get unrelated generators.
fn stream_seed(seed: u64, step: usize, micro_batch: usize, stream: Stream) -> u64 {
    let mut state = seed;
    for value in [step as u64, micro_batch as u64, stream as u64] {
        state = splitmix64(state ^ splitmix64(value));
    }
    state
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How the recipe samples, with the micro-batch's own seed.
pub fn sampling(on_policy: &OnPolicy, seed: u64) -> Sampling {
    Sampling::Sample {
        temperature: on_policy.temperature,
        top_k: (on_policy.top_k > 0).then_some(on_policy.top_k),
        top_p: (on_policy.top_p < 1.0).then_some(on_policy.top_p),
        seed,
    }
}

/// The first `prompt_len` real tokens of each row (all of them in a shorter row).
pub fn prompts(batch: &Batch, prompt_len: usize) -> Vec<Vec<u32>> {
    batch
        .input_ids
        .iter()
        .zip(&batch.mask.rows)
        .map(|(ids, real)| {
            let real_len = real.iter().take_while(|&&r| r).count();
            ids[..prompt_len.min(real_len)].to_vec()
        })
        .collect()
}

/// Prompts and their continuations as one right-padded batch whose scored positions are those
/// that predict a continuation token (the last prompt position up to the one before the last
/// generated token).
pub fn continuation_batch(prompts: &[Vec<u32>], continuations: &[Vec<u32>]) -> Batch {
    let width = prompts
        .iter()
        .zip(continuations)
        .map(|(p, c)| p.len() + c.len())
        .max()
        .unwrap_or(0);
    let mut input_ids = Vec::with_capacity(prompts.len());
    let mut mask = AttentionMask {
        rows: Vec::with_capacity(prompts.len()),
    };
    let mut scored = Vec::with_capacity(prompts.len());
    for (prompt, continuation) in prompts.iter().zip(continuations) {
        let len = prompt.len() + continuation.len();
        let mut ids = prompt.clone();
        ids.extend_from_slice(continuation);
        ids.resize(width, 0);
        input_ids.push(ids);
        mask.rows.push((0..width).map(|t| t < len).collect());
        scored.push(
            (0..width)
                .map(|t| t + 1 >= prompt.len() && t + 1 < len)
                .collect(),
        );
    }
    Batch {
        input_ids,
        mask,
        scored: Some(scored),
    }
}

/// A micro-batch of generated text, ready to score.
pub struct Rollout {
    pub batch: Batch,
    /// Tokens generated, over all rows.
    pub generated_tokens: usize,
    pub rows: usize,
    /// Wall time of the generation.
    pub seconds: f64,
}

/// Continues the prompts of `batch` with `model` (the student's inference copy, or the
/// teacher), sampling as `on_policy` says with the generator of (update `step`,
/// `micro_batch`).
pub fn roll_out<B: Backend>(
    model: &Model<B>,
    batch: &Batch,
    on_policy: &OnPolicy,
    eos_token_ids: &[u32],
    step: usize,
    micro_batch: usize,
) -> Rollout {
    let prompts = prompts(batch, on_policy.prompt_len);
    let seed = stream_seed(on_policy.seed, step, micro_batch, Stream::Tokens);
    let mut sampler = Sampler::new(&sampling(on_policy, seed));
    let generation = generate_batch(
        model,
        &prompts,
        on_policy.max_new_tokens,
        eos_token_ids,
        &mut sampler,
    );
    Rollout {
        batch: continuation_batch(&prompts, &generation.tokens),
        generated_tokens: generation.new_tokens(),
        rows: prompts.len(),
        seconds: generation.time.as_secs_f64(),
    }
}

/// Refuses what an on-policy recipe cannot run with: the offline teacher cache (it holds the
/// teacher's view of the data's blocks, not of text generated during training), and prompts
/// plus continuations longer than the training blocks (the memory plan is made for blocks).
pub fn check_run(recipe: &Recipe, block_len: usize, cache_teacher: bool) -> Result<(), TrainError> {
    let o = &recipe.on_policy;
    if !o.generates() {
        return Ok(());
    }
    if let Some(kind) = recipe.distillation.cross_tokenizer {
        return Err(TrainError::Invalid(format!(
            "distillation.cross_tokenizer = \"{}\" with on_policy.lmbda = {} / seq_kd = {}: \
             generated text is not aligned across tokenizers yet; set on_policy.lmbda = 0 and \
             seq_kd = false, or distill a student of the teacher's tokenizer",
            kind.name(),
            o.lmbda,
            o.seq_kd
        )));
    }
    if cache_teacher {
        return Err(TrainError::Invalid(format!(
            "--cache-teacher: on_policy.lmbda = {} and seq_kd = {} train on text generated during \
             training, which the offline teacher cache cannot hold; train without \
             --cache-teacher (the teacher runs live), or set on_policy.lmbda = 0 and \
             seq_kd = false",
            o.lmbda, o.seq_kd
        )));
    }
    if o.prompt_len + o.max_new_tokens > block_len {
        return Err(TrainError::Invalid(format!(
            "on_policy.prompt_len + on_policy.max_new_tokens = {} + {} exceeds the {} tokens of \
             the blocks in {}: prompts are prefixes of the blocks and the sequences may not \
             outgrow them; lower one of the two",
            o.prompt_len,
            o.max_new_tokens,
            block_len,
            recipe.dataset.shards.display()
        )));
    }
    Ok(())
}

/// What generation did since the last logging line (kept in the checkpoint with the rest of
/// the logging window, so the first line after a resume covers the same micro-batches).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutWindow {
    pub micro_batches: usize,
    /// Micro-batches continued by the student (on-policy) and by the teacher (seq_kd).
    pub by_student: usize,
    pub by_teacher: usize,
    pub generated_tokens: u64,
    pub generated_rows: u64,
    pub generation_seconds: f64,
}

impl RolloutWindow {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Counts one micro-batch of `source`, with its rollout when it generated.
    pub fn record(&mut self, source: TextSource, rollout: Option<&Rollout>) {
        self.micro_batches += 1;
        match source {
            TextSource::Data => {}
            TextSource::Student => self.by_student += 1,
            TextSource::Teacher => self.by_teacher += 1,
        }
        if let Some(rollout) = rollout {
            self.generated_tokens += rollout.generated_tokens as u64;
            self.generated_rows += rollout.rows as u64;
            self.generation_seconds += rollout.seconds;
        }
    }

    /// The logged metrics: the share of on-policy micro-batches (and of teacher-generated
    /// ones with seq_kd), generation speed and the mean generated length (when anything was
    /// generated).
    pub fn metrics(&self, seq_kd: bool) -> Vec<(&'static str, f64)> {
        let share = |count: usize| count as f64 / self.micro_batches.max(1) as f64;
        let mut values = vec![("on_policy_fraction", share(self.by_student))];
        if seq_kd {
            values.push(("seq_kd_fraction", share(self.by_teacher)));
        }
        if self.generated_rows > 0 {
            values.push((
                "generation_tokens_per_s",
                self.generated_tokens as f64 / self.generation_seconds.max(1e-9),
            ));
            values.push((
                "generated_length",
                self.generated_tokens as f64 / self.generated_rows as f64,
            ));
        }
        values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_continuation_batch_scores_the_positions_that_predict_generated_tokens() {
        let batch = continuation_batch(&[vec![5, 6, 7], vec![8]], &[vec![1, 2], vec![3, 4, 9]]);
        assert_eq!(
            batch.input_ids,
            vec![vec![5, 6, 7, 1, 2], vec![8, 3, 4, 9, 0]]
        );
        assert_eq!(batch.mask.rows[1], vec![true, true, true, true, false]);
        // Row 0: positions 2 (predicts 1) and 3 (predicts 2); row 1: positions 0, 1, 2.
        let scored = batch.scored.as_ref().unwrap();
        assert_eq!(scored[0], vec![false, false, true, true, false]);
        assert_eq!(scored[1], vec![true, true, true, false, false]);
        assert_eq!(crate::data::label_count(&batch), 5);
        assert_eq!(crate::data::soft_count(&batch, &[]), 5);
        assert_eq!(crate::data::soft_count(&batch, &[8]), 4);
    }

    #[test]
    fn prompts_are_block_prefixes_and_short_rows_keep_their_real_tokens() {
        let batch = Batch::new(
            vec![vec![1, 2, 3, 4], vec![5, 6, 0, 0]],
            AttentionMask {
                rows: vec![vec![true; 4], vec![true, true, false, false]],
            },
        );
        assert_eq!(prompts(&batch, 3), vec![vec![1, 2, 3], vec![5, 6]]);
    }

    #[test]
    fn draws_depend_on_the_micro_batch_only_and_follow_lmbda() {
        let on_policy = OnPolicy {
            lmbda: 0.3,
            ..OnPolicy::default()
        };
        let draws: Vec<TextSource> = (0..2000).map(|step| draw(&on_policy, step, 1)).collect();
        assert_eq!(draws[17], draw(&on_policy, 17, 1));
        let share = draws.iter().filter(|&&s| s == TextSource::Student).count() as f64 / 2000.0;
        assert!((share - 0.3).abs() < 0.04, "{share}");
        assert!(draws.iter().all(|&s| s != TextSource::Teacher));
        let seq_kd = OnPolicy {
            seq_kd: true,
            ..on_policy.clone()
        };
        assert!((0..50).all(|step| draw(&seq_kd, step, 0) != TextSource::Data));
        assert!((0..50).all(|step| draw(&OnPolicy::default(), step, 0) == TextSource::Data));
    }
}
