//! Autoregressive generation with a KV cache: greedy, or sampling with temperature, top-k,
//! top-p and a seed, in the order transformers applies them (temperature, then top-k, then
//! top-p). Stops at an eos id or after `max_new_tokens`.

use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};

use crate::config::GenerationConfig;
use crate::model::{AttentionMask, KvCache, Model};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    Greedy,
    Sample {
        temperature: f64,
        top_k: Option<usize>,
        top_p: Option<f64>,
        seed: u64,
    },
}

impl Sampling {
    /// What the model's generation_config.json asks for.
    pub fn from_generation_config(config: &GenerationConfig, seed: u64) -> Self {
        if config.do_sample {
            Sampling::Sample {
                temperature: config.temperature.unwrap_or(1.0),
                top_k: config.top_k.filter(|&k| k > 0),
                top_p: config.top_p.filter(|&p| p < 1.0),
                seed,
            }
        } else {
            Sampling::Greedy
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Generation stops after emitting one of these.
    pub eos_token_ids: Vec<u32>,
    /// Keep the logits each step chose from (tests compare them with transformers).
    pub keep_step_logits: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Generation {
    /// New tokens only (the eos that stopped generation included).
    pub tokens: Vec<u32>,
    /// `step_logits[k]`: logits after the prompt and k generated tokens (when kept).
    pub step_logits: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
    /// Time of the prompt's forward pass (prefill).
    pub prefill_time: Duration,
    /// Time of the incremental steps after the first token.
    pub decode_time: Duration,
    pub stopped_at_eos: bool,
}

impl Generation {
    pub fn prompt_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Tokens produced by incremental decoding per second (the first token comes from the
    /// prefill and is not counted).
    pub fn generated_tokens_per_second(&self) -> f64 {
        let decoded = self.tokens.len().saturating_sub(1);
        decoded as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Generates a continuation of `prompt`; `on_token` sees each new token as soon as it exists
/// (to stream text).
pub fn generate<B: Backend>(
    model: &Model<B>,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> Generation {
    assert!(
        !prompt.is_empty(),
        "generation needs at least one prompt token"
    );
    let device = model.device();
    let mut cache = KvCache::new(model.num_layers());
    let mut sampler = Sampler::new(&options.sampling);
    let mut generation = Generation {
        prompt_tokens: prompt.len(),
        ..Generation::default()
    };

    let ids = |tokens: &[u32]| {
        let values: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(values, [1, tokens.len()]), &device)
    };
    let started = Instant::now();
    let mut logits = last_position(model.forward_cached(
        ids(prompt),
        &AttentionMask::full(1, prompt.len()),
        &mut cache,
    ));
    generation.prefill_time = started.elapsed();

    let decode_started = Instant::now();
    for step in 0..options.max_new_tokens {
        let token = sampler.next(&logits);
        if options.keep_step_logits {
            generation.step_logits.push(std::mem::take(&mut logits));
        }
        generation.tokens.push(token);
        on_token(token);
        if options.eos_token_ids.contains(&token) {
            generation.stopped_at_eos = true;
            break;
        }
        if step + 1 == options.max_new_tokens {
            break;
        }
        logits = last_position(model.forward_cached(
            ids(&[token]),
            &AttentionMask::full(1, 1),
            &mut cache,
        ));
    }
    generation.decode_time = decode_started.elapsed();
    generation
}

/// Continuations of a batch of prompts, one row each.
#[derive(Debug, Clone, Default)]
pub struct BatchGeneration {
    /// New tokens of each row (the eos that stopped the row included).
    pub tokens: Vec<Vec<u32>>,
    pub stopped_at_eos: Vec<bool>,
    /// Prefill and decoding together.
    pub time: Duration,
}

impl BatchGeneration {
    /// New tokens of every row.
    pub fn new_tokens(&self) -> usize {
        self.tokens.iter().map(Vec::len).sum()
    }
}

/// Continues every prompt of a batch at once with one KV cache: the prompts are left-padded
/// to the longest (positions count real tokens only, so each row is computed as it would be
/// alone), each step decodes one token per row, and a row that emits an eos stops (it is fed
/// masked pads until the others end). Tokens are drawn row by row in order from `sampler`, so
/// a seeded sampler gives the same continuations every time. `B` should be an inference
/// backend: nothing here needs an autodiff graph.
pub fn generate_batch<B: Backend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    eos_token_ids: &[u32],
    sampler: &mut Sampler,
) -> BatchGeneration {
    assert!(
        prompts.iter().all(|p| !p.is_empty()),
        "generation needs at least one prompt token per row"
    );
    let started = Instant::now();
    let rows = prompts.len();
    let mut generation = BatchGeneration {
        tokens: vec![Vec::new(); rows],
        stopped_at_eos: vec![false; rows],
        time: Duration::ZERO,
    };
    if rows == 0 || max_new_tokens == 0 {
        return generation;
    }
    let device = model.device();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows * longest);
    let mut mask = AttentionMask {
        rows: Vec::with_capacity(rows),
    };
    for prompt in prompts {
        let pads = longest - prompt.len();
        ids.extend(std::iter::repeat_n(0i64, pads));
        ids.extend(prompt.iter().map(|&t| t as i64));
        mask.rows
            .push((0..longest).map(|position| position >= pads).collect());
    }
    let mut cache = KvCache::new(model.num_layers());
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, longest]), &device);
    let mut logits = model.forward_cached(input, &mask, &mut cache);
    let mut active = vec![true; rows];
    for step in 0..max_new_tokens {
        let vocab = logits.dims()[2];
        let host = logits
            .reshape([rows * vocab])
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("float logits");
        let mut next = vec![0i64; rows];
        for (row, row_logits) in host.chunks(vocab).enumerate() {
            if !active[row] {
                continue;
            }
            let token = sampler.next(row_logits);
            generation.tokens[row].push(token);
            next[row] = token as i64;
            if eos_token_ids.contains(&token) {
                generation.stopped_at_eos[row] = true;
                active[row] = false;
            }
        }
        if step + 1 == max_new_tokens || !active.contains(&true) {
            break;
        }
        let step_mask = AttentionMask {
            rows: active.iter().map(|&a| vec![a]).collect(),
        };
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(next, [rows, 1]), &device);
        logits = model.forward_cached(input, &step_mask, &mut cache);
    }
    generation.time = started.elapsed();
    generation
}

/// The logits of the last position of a `[1, T, V]` tensor, on the host.
fn last_position<B: Backend>(logits: Tensor<B, 3>) -> Vec<f32> {
    let [_, seq, vocab] = logits.dims();
    logits
        .narrow(1, seq - 1, 1)
        .reshape([vocab])
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("float logits")
}

/// Chooses tokens from logits.
pub struct Sampler {
    sampling: Sampling,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    pub fn new(sampling: &Sampling) -> Self {
        let seed = match sampling {
            Sampling::Sample { seed, .. } => *seed,
            Sampling::Greedy => 0,
        };
        Self {
            sampling: sampling.clone(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    pub fn next(&mut self, logits: &[f32]) -> u32 {
        match &self.sampling {
            Sampling::Greedy => argmax(logits),
            Sampling::Sample {
                temperature,
                top_k,
                top_p,
                ..
            } => {
                let probabilities = filtered_probabilities(logits, *temperature, *top_k, *top_p);
                let draw: f64 = self.rng.random();
                let mut cumulative = 0.0;
                for &(token, probability) in &probabilities {
                    cumulative += probability;
                    if draw < cumulative {
                        return token;
                    }
                }
                probabilities.last().map_or(0, |&(token, _)| token)
            }
        }
    }
}

/// Index of the largest logit (the first one on ties, as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (index, &value) in logits.iter().enumerate() {
        if value > logits[best] {
            best = index;
        }
    }
    best as u32
}

/// The candidate tokens and their renormalised probabilities, most likely first, after
/// temperature, top-k and top-p.
pub fn filtered_probabilities(
    logits: &[f32],
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
) -> Vec<(u32, f64)> {
    let temperature = temperature.max(1e-6);
    let mut candidates: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(token, &logit)| (token as u32, logit as f64 / temperature))
        .collect();
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if let Some(k) = top_k {
        candidates.truncate(k.max(1));
    }
    let max = candidates[0].1;
    let total: f64 = candidates.iter().map(|(_, l)| (l - max).exp()).sum();
    let mut probabilities: Vec<(u32, f64)> = candidates
        .into_iter()
        .map(|(token, logit)| (token, (logit - max).exp() / total))
        .collect();
    if let Some(p) = top_p {
        // Keep the smallest head whose mass reaches p (at least one token).
        let mut cumulative = 0.0;
        let mut keep = probabilities.len();
        for (index, (_, probability)) in probabilities.iter().enumerate() {
            cumulative += probability;
            if cumulative >= p {
                keep = index + 1;
                break;
            }
        }
        probabilities.truncate(keep);
        let kept: f64 = probabilities.iter().map(|(_, q)| q).sum();
        probabilities.iter_mut().for_each(|(_, q)| *q /= kept);
    }
    probabilities
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_and_top_p_keep_the_expected_heads() {
        let logits = [0.0f32, 3.0, 1.0, 2.0];
        let top2 = filtered_probabilities(&logits, 1.0, Some(2), None);
        assert_eq!(top2.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3]);
        let e = std::f64::consts::E;
        assert!((top2[0].1 - e / (e + 1.0)).abs() < 1e-12);
        // p(3)=0.644, p(2)=0.237: top-p 0.7 keeps both, top-p 0.5 keeps one.
        assert_eq!(
            filtered_probabilities(&logits, 1.0, None, Some(0.7)).len(),
            2
        );
        assert_eq!(
            filtered_probabilities(&logits, 1.0, None, Some(0.5)).len(),
            1
        );
    }

    #[test]
    fn sampling_is_reproducible_with_a_seed_and_follows_the_distribution() {
        let logits = [0.0f32, 1.0, 2.0];
        let sampling = Sampling::Sample {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 7,
        };
        let draws = |seed_sampling: &Sampling| {
            let mut sampler = Sampler::new(seed_sampling);
            (0..3000).map(|_| sampler.next(&logits)).collect::<Vec<_>>()
        };
        let first = draws(&sampling);
        assert_eq!(first, draws(&sampling));
        let share_of_2 = first.iter().filter(|&&t| t == 2).count() as f64 / 3000.0;
        let expected = 2f64.exp() / (1.0 + 1f64.exp() + 2f64.exp());
        assert!(
            (share_of_2 - expected).abs() < 0.03,
            "{share_of_2} vs {expected}"
        );
    }
}
