//! `cargo xtask bench ...`: measured performance, printed as one line of text and as JSON.
//! Figures are measured here, never asserted in tests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use clap::{Args as ClapArgs, Subcommand};
use qwen2::backend::{with_backend, BackendKind, BackendTask};
use qwen2::generate::{generate, GenerateOptions, Sampling};
use qwen2::memory::{current_rss_bytes, gib, peak_rss_bytes};
use qwen2::{
    build_frozen_model, build_model, load_frozen_model, load_model, AttentionMask, FrozenDtype,
    FrozenProducts, ModelConfig, RandomWeights,
};
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum Bench {
    /// Forward latency, generation tokens/s and peak memory of a model.
    Infer(InferArgs),
    /// Text MB/s and peak RSS of preprocessing (VmHWM).
    Preprocess(crate::bench_preprocess::Args),
    /// Seconds per distillation update at published shapes with random weights.
    DistillStep(crate::bench_distill::Args),
    /// f32 matmul GFLOP/s at the shapes of a Qwen2.5-0.5B update and of decoding.
    Matmul(crate::bench_matmul::Args),
}

pub fn run(bench: Bench) -> Result<()> {
    match bench {
        Bench::Infer(args) => infer(args),
        Bench::Preprocess(args) => crate::bench_preprocess::run(args),
        Bench::DistillStep(args) => crate::bench_distill::run(args),
        Bench::Matmul(args) => crate::bench_matmul::run(args),
    }
}

#[derive(ClapArgs, Debug)]
pub struct InferArgs {
    /// A checkpoint directory (its load time and loading memory are measured too).
    #[arg(long, conflicts_with = "shape", value_parser = hub::resolve_model_dir)]
    model: Option<PathBuf>,
    /// Random weights of a published architecture: tiny, qwen2.5-0.5b, qwen2.5-1.5b, deepseek-r1-distill-qwen-1.5b, smollm2-135m, llama-3.2-1b, qwen3-0.6b.
    #[arg(long)]
    shape: Option<String>,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Timed forward passes (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Tokens generated to measure decoding speed.
    #[arg(long, default_value_t = 16)]
    new_tokens: usize,
    /// Compute backend: flex (the default CPU backend), ndarray (CPU) or cuda (a `--features cuda` build).
    #[arg(long, default_value = "flex")]
    backend: BackendKind,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Load the weights frozen, stored as bfloat16, float32 or auto (bf16 when the checkpoint
    /// is; `memory.frozen_dtype`), as a teacher is; without it the model loads as a trainable
    /// f32 student.
    #[arg(long, value_parser = ["auto", "bfloat16", "float32"])]
    frozen_dtype: Option<String>,
    /// Products with bf16-stored matrices: float32 (widened) or bfloat16
    /// (`memory.frozen_products`).
    #[arg(long, default_value = "float32", value_parser = ["bfloat16", "float32"])]
    frozen_products: String,
}

fn infer(args: InferArgs) -> Result<()> {
    if args.model.is_none() && args.shape.is_none() {
        bail!("give --model DIR or --shape ({})", ModelConfig::PRESETS);
    }
    if let Some(shape) = &args.shape {
        if ModelConfig::preset(shape).is_none() {
            bail!("unknown --shape `{shape}`: use {}", ModelConfig::PRESETS);
        }
    }
    if args.batch == 0 || args.seq_len == 0 {
        bail!("--batch and --seq-len must be positive");
    }
    with_backend(args.backend, Infer(args))?
}

struct Infer(InferArgs);

impl BackendTask for Infer {
    type Output = Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let products = match args.frozen_products.as_str() {
            "bfloat16" => FrozenProducts::Bfloat16,
            _ => FrozenProducts::Float32,
        };
        products.set();
        let frozen = args.frozen_dtype.as_deref().map(|dtype| match dtype {
            "bfloat16" => FrozenDtype::Bfloat16,
            "float32" => FrozenDtype::Float32,
            _ => FrozenDtype::Auto,
        });
        let rss_before_load = current_rss_bytes().unwrap_or(0);
        let started = Instant::now();
        let (model, config, source, bf16) = match (&args.model, &args.shape, frozen) {
            (Some(dir), _, None) => {
                let (model, config) = load_model::<B>(dir, &device)?;
                (model, config, dir.display().to_string(), false)
            }
            (Some(dir), _, Some(dtype)) => {
                let (model, config, bf16) = load_frozen_model::<B>(dir, &device, dtype)?;
                (model, config, dir.display().to_string(), bf16)
            }
            (None, Some(shape), frozen) => {
                let config = ModelConfig::preset(shape).expect("checked");
                let bf16 = frozen == Some(FrozenDtype::Bfloat16);
                let model = match frozen {
                    None => build_model::<B>(&config, &mut RandomWeights::new(0), &device)?,
                    Some(_) => {
                        build_frozen_model::<B>(&config, &mut RandomWeights::new(0), &device, bf16)?
                    }
                };
                (
                    model,
                    config,
                    format!("random weights, {shape} shapes"),
                    bf16,
                )
            }
            (None, None, _) => unreachable!("checked"),
        };
        B::sync(&device)?;
        let load_time = started.elapsed();
        let load_peak_rss = peak_rss_bytes().unwrap_or(0);
        let model_bytes = (config.num_parameters() * 4) as u64;

        let (batch, seq) = (args.batch, args.seq_len);
        let ids: Vec<i64> = (0..batch * seq)
            .map(|i| ((i * 7919) % 1000.min(config.vocab_size - 10) + 10) as i64)
            .collect();
        let input =
            || Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [batch, seq]), &device);
        let mask = AttentionMask::full(batch, seq);
        let mut latencies: Vec<Duration> = Vec::new();
        for repeat in 0..=args.repeats {
            let start = Instant::now();
            let logits = model.forward(input(), &mask, false).logits;
            let _ = logits.narrow(1, seq - 1, 1).into_data();
            if repeat > 0 {
                latencies.push(start.elapsed());
            }
        }
        latencies.sort();
        let forward = latencies[latencies.len() / 2];
        let forward_tokens_per_second = (batch * seq) as f64 / forward.as_secs_f64();

        let prompt: Vec<u32> = ids[..seq].iter().map(|&t| t as u32).collect();
        let options = GenerateOptions {
            max_new_tokens: args.new_tokens,
            sampling: Sampling::Greedy,
            eos_token_ids: Vec::new(),
            keep_step_logits: false,
        };
        let generation = generate(&model, &prompt, &options, |_| {});
        let peak_rss = peak_rss_bytes().unwrap_or(0);

        let decoded = generation.tokens.len().saturating_sub(1);
        let gflops = |flops: f64, seconds: f64| flops / seconds.max(1e-12) / 1e9;
        let forward_flops = config.forward_flops_per_token(seq) * (batch * seq) as f64;
        // The prefill computes the last position's logits only.
        let prefill_flops = config.forward_flops_per_token(seq) * seq as f64
            - config.lm_head_flops_per_token() * seq.saturating_sub(1) as f64;
        // Decoding step i attends to seq + i keys; the mean context stands for all steps.
        let decode_flops = config.forward_flops_per_token(seq + decoded / 2) * decoded as f64;
        let decode_seconds = generation.decode_time.as_secs_f64();
        // A decoding step reads every matrix once (the input embedding only its rows, unless
        // it is also the tied lm_head): its bytes per token against what this machine copies.
        let untied_embedding = match config.tie_word_embeddings {
            true => 0,
            false => config.vocab_size * config.hidden_size,
        };
        let weight_bytes_per_token =
            ((config.num_parameters() - untied_embedding) * if bf16 { 2 } else { 4 }) as f64;
        let decode_bytes_per_second =
            weight_bytes_per_token * decoded as f64 / decode_seconds.max(1e-9);
        let copy_bandwidth = copy_bandwidth_bytes_per_second();
        let report = json!({
            "bench": "infer",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "model": source,
            "backend": args.backend.to_string(),
            "threads": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "parameters": config.num_parameters(),
            "batch": batch,
            "seq_len": seq,
            "load_seconds": load_time.as_secs_f64(),
            "load_peak_rss_bytes": load_peak_rss,
            "model_f32_bytes": model_bytes,
            "load_peak_rss_over_model": (load_peak_rss.saturating_sub(rss_before_load)) as f64 / model_bytes as f64,
            "forward_latency_ms_median": forward.as_secs_f64() * 1e3,
            "forward_tokens_per_second": forward_tokens_per_second,
            "forward_gflops": gflops(forward_flops, forward.as_secs_f64()),
            "prefill_tokens": seq,
            "prefill_seconds": generation.prefill_time.as_secs_f64(),
            "prefill_tokens_per_second": generation.prompt_tokens_per_second(),
            "prefill_gflops": gflops(prefill_flops, generation.prefill_time.as_secs_f64()),
            "decode_tokens": decoded,
            "decode_ms_per_token": decode_seconds * 1e3 / decoded.max(1) as f64,
            "generation_tokens_per_second": generation.generated_tokens_per_second(),
            "decode_gflops": gflops(decode_flops, decode_seconds),
            "weights": if bf16 { "bfloat16" } else { "float32" },
            "frozen_products": products.describe(),
            "cpu_features": matmul::cpu_features(),
            "kernel_isa": matmul::Isa::describe(),
            "decode_weight_bytes_per_token": weight_bytes_per_token,
            "decode_weight_gb_per_second": decode_bytes_per_second / 1e9,
            "copy_bandwidth_gb_per_second": copy_bandwidth / 1e9,
            "decode_bandwidth_fraction": decode_bytes_per_second / copy_bandwidth,
            // New tokens over prefill + decoding: what PyTorch's `generate` timing measures.
            "generate_tokens_per_second_with_prefill": generation.tokens.len() as f64
                / (generation.prefill_time + generation.decode_time).as_secs_f64().max(1e-9),
            "generated_tokens": generation.tokens.len(),
            "peak_rss_bytes": peak_rss,
        });
        println!(
            "bench infer [{source}] {} params, {} backend, batch {batch} x {seq}, weights {}, \
             products {} (CPU: {})",
            config.num_parameters(),
            args.backend,
            report["weights"].as_str().unwrap_or(""),
            products.describe(),
            matmul::cpu_description(),
        );
        println!(
            "  forward     {:>9.1} ms  {:>8.2} tokens/s  {:>7.1} GFLOP/s  (median of {})",
            forward.as_secs_f64() * 1e3,
            forward_tokens_per_second,
            report["forward_gflops"].as_f64().unwrap_or(0.0),
            args.repeats.max(1)
        );
        println!(
            "  prefill     {:>9.1} ms  {:>8.2} tokens/s  {:>7.1} GFLOP/s  ({seq} prompt tokens, batch 1)",
            generation.prefill_time.as_secs_f64() * 1e3,
            generation.prompt_tokens_per_second(),
            report["prefill_gflops"].as_f64().unwrap_or(0.0),
        );
        println!(
            "  decode      {:>9.1} ms/token {:>5.2} tokens/s  {:>7.1} GFLOP/s  ({decoded} greedy steps with the KV cache)",
            decode_seconds * 1e3 / decoded.max(1) as f64,
            generation.generated_tokens_per_second(),
            report["decode_gflops"].as_f64().unwrap_or(0.0),
        );
        println!(
            "              reads {:.2} GiB of weights per token: {:.1} GB/s, {:.0}% of the {:.1} GB/s this machine copies (read + write, 2 threads)",
            weight_bytes_per_token / (1u64 << 30) as f64,
            decode_bytes_per_second / 1e9,
            100.0 * decode_bytes_per_second / copy_bandwidth,
            copy_bandwidth / 1e9,
        );
        println!(
            "  generate    {:>9.2} tokens/s with the prefill ({} new tokens after {seq}), as transformers' generate is timed",
            report["generate_tokens_per_second_with_prefill"].as_f64().unwrap_or(0.0),
            generation.tokens.len(),
        );
        println!(
            "  load {:.2} s (peak RSS while loading {:.2}x the f32 model), peak RSS {}",
            load_time.as_secs_f64(),
            report["load_peak_rss_over_model"].as_f64().unwrap_or(0.0),
            gib(peak_rss),
        );
        println!("{report}");
        if let Some(path) = args.json {
            std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
        }
        Ok(())
    }
}

/// Bytes per second a copy of 512 MiB moves on this machine's threads, read and written bytes
/// counted as STREAM's copy does (the best of 3).
fn copy_bandwidth_bytes_per_second() -> f64 {
    use rayon::prelude::*;
    let len = 64 << 20;
    let source = vec![1.0f64; len];
    let mut target = vec![0.0f64; len];
    let chunk = len / rayon::current_num_threads().max(1) / 8;
    (0..3)
        .map(|_| {
            let started = Instant::now();
            target
                .par_chunks_mut(chunk)
                .zip(source.par_chunks(chunk))
                .for_each(|(t, s)| t.copy_from_slice(s));
            std::hint::black_box(&target);
            (2 * len * 8) as f64 / started.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}
