//! One model's row of the report: quality on a split of token shards, closeness to a teacher,
//! speed and memory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use preprocess::ShardReader;
use qwen2::memory::{peak_rss_bytes, reset_peak_rss};
use qwen2::tokenizer::Tokenizer;
use qwen2::{
    load_frozen_model, load_model, AttentionMask, FrozenDtype, FrozenProducts, GenerationConfig,
    Model, ModelConfig,
};
use serde::{Deserialize, Serialize};

use crate::continuations::{continuation_report, ContinuationOptions, ContinuationReport, Scorer};
use crate::error::EvalError;
use crate::quality::{score_batch_compared, Comparison, QualitySums};
use crate::speed::{forward_latency_ms, greedy_generations, GenerationSample};
use distill::cross_tokenizer::Aligner;

/// What to measure and how much of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalOptions {
    /// Split of the shard directory: "test", "validation" or "train".
    pub split: String,
    /// Evaluate only the first N blocks of the split (None: all of it).
    pub max_blocks: Option<usize>,
    /// Blocks per forward pass.
    pub batch_size: usize,
    /// Timed forward passes of one block; the median is reported.
    pub latency_repeats: usize,
    /// Fixed prompts continued greedily (empty: no generation, and no tokenizer needed).
    pub generation_prompts: Vec<String>,
    pub max_new_tokens: usize,
    /// Positions whose vocabulary-sized logits exist at once (per block of the batch).
    pub logit_chunk: usize,
    /// The teacher's directory, for the tokenizer check that decides which vocabulary rows
    /// and input ids the KL and top-1 agreement compare (as training does). None: the models
    /// are taken to share one tokenizer (the leading shared rows, every real position).
    #[serde(skip)]
    pub teacher_dir: Option<PathBuf>,
    /// Sampled continuations of held-out prompts, scored by the teacher (None: not measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuations: Option<ContinuationOptions>,
    /// Load every model frozen, its matrices stored as this says (`memory.frozen_dtype`), as a
    /// teacher is loaded for training; None: as f32 parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_dtype: Option<FrozenDtype>,
    /// How products with bf16-stored matrices are computed (`memory.frozen_products`; the
    /// caller sets it process-wide with [`FrozenProducts::set`]).
    #[serde(default)]
    pub frozen_products: FrozenProducts,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            split: "test".into(),
            max_blocks: None,
            batch_size: 1,
            latency_repeats: 5,
            generation_prompts: default_prompts(),
            max_new_tokens: 32,
            logit_chunk: 128,
            teacher_dir: None,
            continuations: None,
            frozen_dtype: None,
            frozen_products: FrozenProducts::Float32,
        }
    }
}

/// WikiText-style openings (the corpus puts spaces around punctuation).
pub fn default_prompts() -> Vec<String> {
    [
        "The history of the city",
        "In 1998 , the band",
        "The species is found in",
    ]
    .map(String::from)
    .to_vec()
}

impl EvalOptions {
    /// Refuses options that cannot give a figure, naming the option.
    pub fn validate(&self) -> Result<(), EvalError> {
        let invalid = |message: &str| Err(EvalError::Invalid(message.into()));
        if self.batch_size == 0 {
            return invalid("batch_size (--batch-size) must be at least 1");
        }
        if self.latency_repeats == 0 {
            return invalid("latency_repeats (--latency-repeats) must be at least 1");
        }
        if self.logit_chunk == 0 {
            return invalid("logit_chunk must be at least 1");
        }
        if self.max_blocks == Some(0) {
            return invalid(
                "max_blocks (--max-blocks) must be at least 1, or left out for the whole split",
            );
        }
        if let Some(c) = &self.continuations {
            if c.prompts == 0 || c.prompt_len == 0 || c.max_new_tokens == 0 {
                return invalid(
                    "continuations (--continuations), their prompt length \
                     (--continuation-prompt-len) and --max-new-tokens must be at least 1",
                );
            }
        }
        if !self.generation_prompts.is_empty() && self.max_new_tokens == 0 {
            return invalid(
                "max_new_tokens (--max-new-tokens) must be at least 1 when there are prompts",
            );
        }
        Ok(())
    }
}

/// Every figure measured for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    pub label: String,
    pub model_dir: String,
    pub parameters: usize,
    /// Mean next-token cross-entropy over the split's valid labels (nats), as transformers.
    pub eval_loss: f64,
    /// exp(eval_loss).
    pub perplexity: f64,
    /// Token-mean KL(teacher || student), temperature 1, over the vocabulary rows and real
    /// positions the two models share (distill::measure).
    pub kl_to_teacher: Option<f64>,
    /// Share of the compared positions where the model's top-1 token is the teacher's.
    pub top1_agreement: Option<f64>,
    /// Median forward time of one sample of `latency_seq_len` tokens (batch 1), in ms.
    pub latency_ms_per_sample: f64,
    pub latency_seq_len: usize,
    pub latency_repeats: usize,
    /// Greedy decoding speed over all prompts; None without prompts.
    pub generation_tokens_per_second: Option<f64>,
    /// Peak resident memory of the process while this model was loaded and evaluated (the
    /// teacher, when one is held, is included). Host memory only: GPU memory is not counted.
    pub peak_rss_bytes: Option<u64>,
    pub blocks: usize,
    pub seq_len: usize,
    /// Valid next-token labels scored.
    pub label_tokens: u64,
    /// Real positions compared with the teacher.
    pub compared_positions: u64,
    /// Time to load the checkpoint (None when the caller passed a loaded model).
    pub load_seconds: Option<f64>,
    /// Time of the loss/KL pass over the split.
    pub scoring_seconds: f64,
    pub generations: Vec<GenerationSample>,
    /// Sampled continuations of held-out prompts and the teacher's cross-entropy on them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuations: Option<ContinuationReport>,
}

/// Loads `model_dir` and evaluates it (see [`evaluate_loaded`]). The peak RSS is reset first
/// (best effort), so it covers this model's load and evaluation plus what the process already
/// holds (e.g. the teacher).
pub fn evaluate_model<B: Backend>(
    model_dir: &Path,
    label: &str,
    teacher: Option<&Model<B>>,
    shards: &Path,
    options: &EvalOptions,
    device: &B::Device,
) -> Result<ModelReport, EvalError> {
    let load = || load_for_evaluation::<B>(model_dir, options, device);
    load_and_evaluate(load, model_dir, label, teacher, shards, options)
}

/// `model_dir` loaded as `options.frozen_dtype` says: f32 parameters, or frozen.
pub fn load_for_evaluation<B: Backend>(
    model_dir: &Path,
    options: &EvalOptions,
    device: &B::Device,
) -> Result<Model<B>, EvalError> {
    Ok(match options.frozen_dtype {
        None => load_model::<B>(model_dir, device)?.0,
        Some(dtype) => load_frozen_model::<B>(model_dir, device, dtype)?.0,
    })
}

/// [`evaluate_model`] for a LoRA adapter (PEFT's layout) on its base: the adapter is merged
/// into the base as it loads, so the row measures the model the adapter makes. The base
/// provides config.json, generation_config.json and the tokenizer.
pub fn evaluate_adapter<B: Backend>(
    base_dir: &Path,
    adapter_dir: &Path,
    label: &str,
    teacher: Option<&Model<B>>,
    shards: &Path,
    options: &EvalOptions,
    device: &B::Device,
) -> Result<ModelReport, EvalError> {
    let load = || Ok(qwen2::load_merged::<B>(base_dir, adapter_dir, device)?.0);
    load_and_evaluate(load, base_dir, label, teacher, shards, options)
}

/// Checks the options and the data, then loads (timed) and evaluates.
fn load_and_evaluate<B: Backend>(
    load: impl FnOnce() -> Result<Model<B>, EvalError>,
    model_dir: &Path,
    label: &str,
    teacher: Option<&Model<B>>,
    shards: &Path,
    options: &EvalOptions,
) -> Result<ModelReport, EvalError> {
    options.validate()?;
    // Fail on the data before spending time on a load.
    ShardReader::open(shards, &options.split)?;
    reset_peak_rss();
    let started = Instant::now();
    let model = load()?;
    let load_seconds = started.elapsed().as_secs_f64();
    let mut report = evaluate_loaded(&model, model_dir, label, teacher, shards, options)?;
    report.load_seconds = Some(load_seconds);
    Ok(report)
}

/// Evaluates a model already in memory (e.g. the teacher itself, without loading it twice).
/// `model_dir` provides config.json, generation_config.json and tokenizer.json.
pub fn evaluate_loaded<B: Backend>(
    model: &Model<B>,
    model_dir: &Path,
    label: &str,
    teacher: Option<&Model<B>>,
    shards: &Path,
    options: &EvalOptions,
) -> Result<ModelReport, EvalError> {
    options.validate()?;
    let mut reader = ShardReader::open(shards, &options.split)?;
    let blocks = options
        .max_blocks
        .map_or(reader.len(), |max| max.min(reader.len()));
    if blocks == 0 {
        return Err(EvalError::Invalid(format!(
            "{}: split `{}` has no blocks to evaluate",
            shards.display(),
            options.split
        )));
    }
    let seq_len = reader.seq_len();
    // Across tokenizers no KL is defined: the shards are scored by the model alone, and the
    // teacher scores the model's continuations on its own tokens of their text.
    let aligner = match (teacher, &options.teacher_dir) {
        (Some(_), Some(teacher_dir)) if teacher_dir.as_path() != model_dir => {
            let report = preprocess::check_tokenizers(teacher_dir, model_dir)?;
            match report.verdict {
                preprocess::TokenizerCompat::DifferentBpe { .. } => Some(
                    Aligner::load(teacher_dir, model_dir)
                        .map_err(|e| EvalError::Invalid(e.to_string()))?,
                ),
                _ => None,
            }
        }
        _ => None,
    };
    let continuation_teacher = teacher;
    let teacher = if aligner.is_some() { None } else { teacher };
    let comparison = match (teacher, &options.teacher_dir) {
        (Some(teacher), Some(teacher_dir)) => Comparison::of_tokenizers(
            teacher_dir,
            model_dir,
            teacher.vocab_size(),
            model.vocab_size(),
        )?,
        (teacher, _) => Comparison::same_tokenizer(
            teacher.map_or(model.vocab_size(), Model::vocab_size),
            model.vocab_size(),
        ),
    };

    let scoring_started = Instant::now();
    let mut sums = QualitySums::default();
    let mut first_block_ids = Vec::new();
    let mut start = 0;
    while start < blocks {
        let end = (start + options.batch_size).min(blocks);
        let mut input_ids = Vec::with_capacity(end - start);
        let mut mask = AttentionMask { rows: Vec::new() };
        for index in start..end {
            let block = reader.block(index)?;
            check_ids_fit(&block.ids, index, model, model_dir, shards, &options.split)?;
            if let Some(teacher) = teacher {
                check_ids_fit(
                    &block.ids,
                    index,
                    teacher,
                    Path::new("the teacher"),
                    shards,
                    &options.split,
                )?;
            }
            if index == 0 {
                first_block_ids = block.real_ids().to_vec();
            }
            mask.rows
                .push((0..block.ids.len()).map(|i| i < block.real_len).collect());
            input_ids.push(block.ids);
        }
        sums.add(&score_batch_compared(
            model,
            teacher,
            &input_ids,
            &mask,
            options.logit_chunk,
            1.0,
            &comparison,
        ));
        start = end;
    }
    let scoring_seconds = scoring_started.elapsed().as_secs_f64();
    if sums.labels == 0 {
        return Err(EvalError::Invalid(format!(
            "{}: the first {blocks} blocks of split `{}` hold no next-token label (blocks of one real token?): evaluate more blocks",
            shards.display(),
            options.split
        )));
    }

    let latency_ms_per_sample =
        forward_latency_ms(model, &first_block_ids, options.latency_repeats);

    let generates = !options.generation_prompts.is_empty() || options.continuations.is_some();
    let generation_setup = if generates {
        let config = ModelConfig::from_file(model_dir)?;
        let generation_config = GenerationConfig::from_dir(model_dir, &config)?;
        Some((
            Tokenizer::from_dir(model_dir)?,
            generation_config.eos_token_ids,
        ))
    } else {
        None
    };
    let (generations, generation_tokens_per_second) = match &generation_setup {
        Some((tokenizer, eos)) if !options.generation_prompts.is_empty() => greedy_generations(
            model,
            tokenizer,
            eos,
            &options.generation_prompts,
            options.max_new_tokens,
        )?,
        _ => (Vec::new(), None),
    };
    let continuations = match (&options.continuations, &generation_setup) {
        (Some(continuation), Some((tokenizer, eos))) => {
            let prompts = held_out_prompts(&mut reader, continuation)?;
            // The teacher's own row (its directory is the teacher's) is scored by itself.
            let is_teacher = options.teacher_dir.as_deref() == Some(model_dir);
            let scorer = match (&aligner, continuation_teacher) {
                (Some(aligner), Some(teacher)) => Some(Scorer::AcrossTokenizers(teacher, aligner)),
                _ => teacher
                    .or(is_teacher.then_some(model))
                    .map(Scorer::SameTokenizer),
            };
            Some(continuation_report(
                model,
                scorer,
                tokenizer,
                eos,
                &prompts,
                continuation,
            )?)
        }
        _ => None,
    };

    Ok(ModelReport {
        label: label.to_string(),
        model_dir: model_dir.display().to_string(),
        parameters: model.num_weights(),
        eval_loss: sums.mean_cross_entropy(),
        perplexity: sums.perplexity(),
        kl_to_teacher: sums.mean_kl(),
        top1_agreement: sums.top1_agreement(),
        latency_ms_per_sample,
        latency_seq_len: first_block_ids.len(),
        latency_repeats: options.latency_repeats,
        generation_tokens_per_second,
        peak_rss_bytes: peak_rss_bytes(),
        blocks,
        seq_len,
        label_tokens: sums.labels,
        compared_positions: sums.compared_positions,
        load_seconds: None,
        scoring_seconds,
        generations,
        continuations,
    })
}

/// The first `prompt_len` real tokens of the split's first `prompts` blocks (fewer when the
/// split is shorter).
fn held_out_prompts(
    reader: &mut ShardReader,
    options: &ContinuationOptions,
) -> Result<Vec<Vec<u32>>, EvalError> {
    (0..options.prompts.min(reader.len()))
        .map(|index| {
            let block = reader.block(index)?;
            let real = block.real_ids();
            Ok(real[..options.prompt_len.min(real.len())].to_vec())
        })
        .collect()
}

/// A token id past the model's embedding rows would index out of bounds: refuse it with the
/// likely cause (shards made with another tokenizer).
fn check_ids_fit<B: Backend>(
    ids: &[u32],
    block: usize,
    model: &Model<B>,
    model_name: &Path,
    shards: &Path,
    split: &str,
) -> Result<(), EvalError> {
    let vocab = model.vocab_size();
    match ids.iter().find(|&&id| id as usize >= vocab) {
        None => Ok(()),
        Some(id) => Err(EvalError::Invalid(format!(
            "{}: block {block} of split `{split}` holds token id {id}, but {} has only {vocab} embedding rows: \
             the shards were made with another tokenizer; preprocess with this model's tokenizer",
            shards.display(),
            model_name.display()
        ))),
    }
}
