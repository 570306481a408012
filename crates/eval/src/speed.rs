//! How fast a model runs: forward latency of one sample, and greedy generation speed.
//! These are measurements of this machine at this moment; tests never assert them.

use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use qwen2::generate::{generate, GenerateOptions, Sampling};
use qwen2::tokenizer::Tokenizer;
use qwen2::{AttentionMask, Model};
use serde::{Deserialize, Serialize};

use crate::error::EvalError;

/// Median wall time, in milliseconds, of `repeats` full forward passes (logits included) over
/// one sample `ids` (batch 1), after one untimed warm-up pass. Each pass ends by reading a
/// logit back to the host, which waits for asynchronous backends (CUDA) to finish.
pub fn forward_latency_ms<B: Backend>(model: &Model<B>, ids: &[u32], repeats: usize) -> f64 {
    let device = model.device();
    let values: Vec<i64> = ids.iter().map(|&v| i64::from(v)).collect();
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(values, [1, ids.len()]), &device);
    let mask = AttentionMask::full(1, ids.len());
    let run = || {
        let logits = model.forward(input.clone(), &mask, false).logits;
        let [_, seq, vocab] = logits.dims();
        // Reading one value back forces the whole pass to complete.
        let _ = logits
            .narrow(1, seq - 1, 1)
            .narrow(2, vocab - 1, 1)
            .into_data();
    };
    run();
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median(&mut times)
}

/// One prompt and what the model wrote after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationSample {
    pub prompt: String,
    /// The continuation only, decoded without special tokens.
    pub text: String,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// The generated ids (some may have no text, e.g. rows past the tokenizer's vocabulary).
    pub token_ids: Vec<u32>,
    pub stopped_at_eos: bool,
}

/// Greedy continuations of `prompts` and the overall decoding speed: tokens produced by
/// incremental decoding (each prompt's first token comes from the prefill and is not counted)
/// over the time spent decoding them, all prompts together. The speed is None when no token
/// was decoded incrementally (max_new_tokens <= 1, or eos came first).
pub fn greedy_generations<B: Backend>(
    model: &Model<B>,
    tokenizer: &Tokenizer,
    eos_token_ids: &[u32],
    prompts: &[String],
    max_new_tokens: usize,
) -> Result<(Vec<GenerationSample>, Option<f64>), EvalError> {
    let options = GenerateOptions {
        max_new_tokens,
        sampling: Sampling::Greedy,
        eos_token_ids: eos_token_ids.to_vec(),
        keep_step_logits: false,
    };
    let mut samples = Vec::with_capacity(prompts.len());
    let mut decoded_tokens = 0usize;
    let mut decode_seconds = 0f64;
    for prompt in prompts {
        // As `tokenizer(prompt)` in transformers: with the tokenizer's own special tokens.
        let ids = tokenizer.encode(prompt, true)?;
        if ids.is_empty() {
            return Err(EvalError::Invalid(format!(
                "generation prompt {prompt:?} encodes to no tokens: give a non-empty prompt"
            )));
        }
        let generation = generate(model, &ids, &options, |_| {});
        decoded_tokens += generation.tokens.len().saturating_sub(1);
        decode_seconds += generation.decode_time.as_secs_f64();
        samples.push(GenerationSample {
            prompt: prompt.clone(),
            text: tokenizer.decode(&generation.tokens, true)?,
            prompt_tokens: ids.len(),
            new_tokens: generation.tokens.len(),
            token_ids: generation.tokens.clone(),
            stopped_at_eos: generation.stopped_at_eos,
        });
    }
    let tokens_per_second = (decoded_tokens > 0 && decode_seconds > 0.0)
        .then(|| decoded_tokens as f64 / decode_seconds);
    Ok((samples, tokens_per_second))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
