//! `cargo xtask generate`: stream a continuation of a prompt from a Qwen2 checkpoint.
//! Generated text goes to stdout; load time and speeds go to stderr.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::Args as ClapArgs;
use qwen2::backend::{with_backend, BackendKind, BackendTask};
use qwen2::generate::{generate, GenerateOptions, Sampling};
use qwen2::tokenizer::{render_chat, TextStream, Tokenizer};
use qwen2::{load_merged, load_model, GenerationConfig};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model directory in the Hugging Face layout (config.json, model.safetensors, tokenizer.json)
    /// or a GGUF file,
    /// or a repo id in the Hugging Face cache (ORG/NAME[@REVISION]).
    #[arg(long, value_parser = hub::resolve_model_dir)]
    model: PathBuf,
    /// A LoRA adapter (PEFT's layout, e.g. a LoRA run's final-adapter) to merge into --model,
    /// its base, before generating.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Greedy decoding, whatever generation_config.json says.
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p"])]
    greedy: bool,
    /// Sample with this temperature (any sampling flag overrides generation_config.json).
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f64>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap the prompt in the model's chat template (chat_template.jinja, else tokenizer_config.json;
    /// a GGUF's tokenizer.chat_template).
    #[arg(long)]
    chat: bool,
    /// Compute backend: flex (the default CPU backend), ndarray (CPU) or cuda (a `--features cuda` build).
    #[arg(long, default_value = "flex")]
    backend: BackendKind,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(t) = args.temperature {
        if t <= 0.0 {
            bail!("--temperature must be > 0 (use --greedy for deterministic decoding)");
        }
    }
    if let Some(p) = args.top_p {
        if !(0.0..=1.0).contains(&p) || p == 0.0 {
            bail!("--top-p must be in (0, 1]");
        }
    }
    with_backend(args.backend, Generate(args))?
}

struct Generate(Args);

impl BackendTask for Generate {
    type Output = Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let started = Instant::now();
        let (model, config) = match &args.adapter {
            Some(adapter) => {
                let (model, config, lora) = load_merged::<B>(&args.model, adapter, &device)?;
                eprintln!(
                    "merged the LoRA adapter {} (rank {}, {:?}) into {}",
                    adapter.display(),
                    lora.rank,
                    lora.targets(),
                    args.model.display()
                );
                (model, config)
            }
            None => load_model::<B>(&args.model, &device)?,
        };
        let tokenizer = Tokenizer::from_dir(&args.model)?;
        let load_time = started.elapsed();
        let generation_config = GenerationConfig::from_dir(&args.model, &config)?;

        let prompt_ids = if args.chat {
            let text = render_chat(&args.model, &args.prompt)?;
            tokenizer.encode(&text, false)?
        } else {
            tokenizer.encode(&args.prompt, true)?
        };
        if prompt_ids.is_empty() {
            bail!("the prompt encodes to no tokens");
        }
        let sampling = if args.greedy {
            Sampling::Greedy
        } else if args.temperature.is_some() || args.top_k.is_some() || args.top_p.is_some() {
            Sampling::Sample {
                temperature: args.temperature.unwrap_or(1.0),
                top_k: args.top_k,
                top_p: args.top_p,
                seed: args.seed,
            }
        } else {
            Sampling::from_generation_config(&generation_config, args.seed)
        };
        let options = GenerateOptions {
            max_new_tokens: args.max_new_tokens,
            sampling,
            eos_token_ids: generation_config.eos_token_ids.clone(),
            keep_step_logits: false,
        };

        let mut stream = TextStream::new(&tokenizer);
        let mut stdout = std::io::stdout().lock();
        let mut stream_error = None;
        let generation = generate(&model, &prompt_ids, &options, |token| {
            match stream.push(token) {
                Ok(text) => {
                    let _ = stdout.write_all(text.as_bytes());
                    let _ = stdout.flush();
                }
                Err(error) => stream_error = Some(error),
            }
        });
        writeln!(stdout).ok();
        if let Some(error) = stream_error {
            return Err(error).context("decoding generated tokens");
        }
        eprintln!(
            "load {:.2} s | prompt {} tokens at {:.1} tokens/s | generated {} tokens at {:.2} tokens/s{}",
            load_time.as_secs_f64(),
            generation.prompt_tokens,
            generation.prompt_tokens_per_second(),
            generation.tokens.len(),
            generation.generated_tokens_per_second(),
            if generation.stopped_at_eos { " (stopped at eos)" } else { "" },
        );
        Ok(())
    }
}
