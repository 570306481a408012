//! `cargo xtask init-model`: a randomly initialised Qwen2 checkpoint in the Hugging Face layout,
//! of a published shape or of a given config.json. Benchmarks use it to measure loading from
//! disk at real sizes; the quickstart uses the same code to start its small models.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use qwen2::backend::Cpu;
use qwen2::safetensors::Dtype;
use qwen2::{build_model, save_model, ModelConfig, RandomWeights, SaveOptions};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// A published architecture: tiny, qwen2.5-0.5b, qwen2.5-1.5b, deepseek-r1-distill-qwen-1.5b, smollm2-135m, llama-3.2-1b, qwen3-0.6b.
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    shape: Option<String>,
    /// A config.json to take the architecture from.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output model directory (replaced atomically if it exists).
    #[arg(long)]
    out: PathBuf,
    /// On-disk dtype of model.safetensors: bf16 or f32.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Copy tokenizer files from this model directory (or cached repo id).
    #[arg(long, value_parser = hub::resolve_model_dir)]
    tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: Args) -> Result<()> {
    let config = match (&args.shape, &args.config) {
        (Some(shape), _) => ModelConfig::preset(shape)
            .with_context(|| format!("unknown --shape `{shape}`: use {}", ModelConfig::PRESETS))?,
        (None, Some(path)) => ModelConfig::from_file(path)?,
        (None, None) => bail!("give --shape NAME or --config FILE"),
    };
    let dtype = parse_dtype(&args.dtype)?;
    write_random_model(
        &config,
        &args.out,
        dtype,
        args.tokenizer.as_deref(),
        args.seed,
    )?;
    eprintln!(
        "wrote {} ({} parameters, {})",
        args.out.display(),
        config.num_parameters(),
        args.dtype
    );
    Ok(())
}

pub fn parse_dtype(name: &str) -> Result<Dtype> {
    match name {
        "bf16" | "bfloat16" => Ok(Dtype::BF16),
        "f32" | "float32" => Ok(Dtype::F32),
        other => bail!("unknown dtype `{other}`: use bf16 or f32"),
    }
}

/// Random weights of `config` saved in the Hugging Face layout at `out`.
pub fn write_random_model(
    config: &ModelConfig,
    out: &std::path::Path,
    dtype: Dtype,
    tokenizer_dir: Option<&std::path::Path>,
    seed: u64,
) -> Result<()> {
    let device = Default::default();
    let model = build_model::<Cpu>(config, &mut RandomWeights::new(seed), &device)?;
    let options = SaveOptions {
        dtype,
        tokenizer_dir,
        generation: None,
    };
    save_model(&model, config, out, &options)
        .with_context(|| format!("saving {}", out.display()))?;
    Ok(())
}
