//! `cargo xtask eval`: measures models on a split of token shards and writes the report
//! (report.json, report.md, and curves.png when training metrics are given). The work is in
//! the `eval` crate; this module parses flags and chooses the backend.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::Args as ClapArgs;
use eval::{
    evaluate_adapter, evaluate_loaded, evaluate_model, load_for_evaluation, plot_training_curves,
    ContinuationOptions, EvalOptions, Report,
};
use qwen2::backend::{with_backend, BackendKind, BackendTask};
use qwen2::{FrozenDtype, FrozenProducts};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// A model directory (Hugging Face layout) or GGUF file to evaluate, or a repo id in the Hugging Face
    /// cache (ORG/NAME[@REVISION]), or a LoRA adapter directory (PEFT's layout, e.g. a LoRA
    /// run's final-adapter), evaluated merged into its base; repeat for several rows.
    #[arg(long = "model", required = true, value_name = "DIR")]
    models: Vec<PathBuf>,
    /// Row name of each --model, in order (default: the directory's name).
    #[arg(long = "label", value_name = "NAME")]
    labels: Vec<String>,
    /// The base of every adapter given with --model (default: each adapter's
    /// base_model_name_or_path, a directory or a repo id in the Hugging Face cache).
    #[arg(long, value_name = "DIR")]
    adapter_base: Option<PathBuf>,
    /// The teacher: adds its own row first and the KL/top-1 agreement columns for the others.
    #[arg(long, value_name = "DIR")]
    teacher: Option<PathBuf>,
    /// Token shard directory made by `cargo xtask preprocess`.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    #[arg(long, default_value = "test")]
    split: String,
    /// Output directory for report.json, report.md and curves.png.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Evaluate only the first N blocks of the split.
    #[arg(long, value_name = "N")]
    max_blocks: Option<usize>,
    /// Blocks per forward pass.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Timed forward passes of one block for the latency (median).
    #[arg(long, default_value_t = 5)]
    latency_repeats: usize,
    /// A generation prompt; repeat for several (default: three fixed WikiText-style openings).
    #[arg(long = "prompt", value_name = "TEXT")]
    prompts: Vec<String>,
    /// Skip generation (then no tokenizer.json is needed in the model directories).
    #[arg(long, conflicts_with = "prompts")]
    no_generate: bool,
    /// New tokens per generation (greedy prompts and --continuations).
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Also continue N held-out prompts (the first --continuation-prompt-len tokens of the
    /// split's first N blocks) by sampling at temperature 1, and report the teacher's
    /// cross-entropy on each model's own continuations (with --teacher). Needs tokenizer.json.
    #[arg(long, value_name = "N")]
    continuations: Option<usize>,
    #[arg(long, default_value_t = 32, value_name = "TOKENS")]
    continuation_prompt_len: usize,
    /// Seed of the continuations' sampling (the same for every model).
    #[arg(long, default_value_t = 0)]
    continuation_seed: u64,
    /// Training metrics to plot: LABEL=PATH, PATH a metrics.jsonl or a distill output dir.
    #[arg(long = "metrics", value_name = "LABEL=PATH")]
    metrics: Vec<String>,
    /// Compute backend: flex (the default CPU backend), ndarray (CPU) or cuda (a `--features cuda` build).
    #[arg(long, default_value = "flex")]
    backend: BackendKind,
    /// Load every model (and the teacher) frozen, stored as auto, bfloat16 or float32
    /// (`memory.frozen_dtype`), as training loads a teacher; default: f32 parameters.
    #[arg(long, value_parser = ["auto", "bfloat16", "float32"])]
    frozen_dtype: Option<String>,
    /// Products with bf16-stored matrices: float32 (widened) or bfloat16
    /// (`memory.frozen_products`).
    #[arg(long, default_value = "float32", value_parser = ["bfloat16", "float32"])]
    frozen_products: String,
}

pub fn run(args: Args) -> Result<()> {
    if !args.labels.is_empty() && args.labels.len() != args.models.len() {
        bail!(
            "{} --label for {} --model: give one label per model, in the same order, or none",
            args.labels.len(),
            args.models.len()
        );
    }
    let metrics = args
        .metrics
        .iter()
        .map(|entry| match entry.split_once('=') {
            Some((label, path)) if !label.is_empty() && !path.is_empty() => {
                Ok((label.to_string(), PathBuf::from(path)))
            }
            _ => bail!("--metrics {entry:?}: expected LABEL=PATH, e.g. distilled=runs/distilled/metrics.jsonl"),
        })
        .collect::<Result<Vec<_>>>()?;
    let options = EvalOptions {
        split: args.split.clone(),
        max_blocks: args.max_blocks,
        batch_size: args.batch_size,
        latency_repeats: args.latency_repeats,
        generation_prompts: if args.no_generate {
            Vec::new()
        } else if args.prompts.is_empty() {
            eval::default_prompts()
        } else {
            args.prompts.clone()
        },
        max_new_tokens: args.max_new_tokens,
        continuations: args.continuations.map(|prompts| ContinuationOptions {
            prompts,
            prompt_len: args.continuation_prompt_len,
            max_new_tokens: args.max_new_tokens,
            seed: args.continuation_seed,
        }),
        frozen_dtype: args.frozen_dtype.as_deref().map(|dtype| match dtype {
            "bfloat16" => FrozenDtype::Bfloat16,
            "float32" => FrozenDtype::Float32,
            _ => FrozenDtype::Auto,
        }),
        frozen_products: match args.frozen_products.as_str() {
            "bfloat16" => FrozenProducts::Bfloat16,
            _ => FrozenProducts::Float32,
        },
        ..EvalOptions::default()
    };
    options.validate()?;
    options.frozen_products.set();

    let models = args
        .models
        .iter()
        .enumerate()
        .map(|(index, dir)| {
            let label = args.labels.get(index).cloned().unwrap_or_else(|| {
                dir.file_name()
                    .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into())
            });
            Ok((label, hub::resolve_model_dir(&dir.to_string_lossy())?))
        })
        .collect::<Result<_>>()?;
    let plan = Plan {
        teacher: (args.teacher.as_deref())
            .map(|teacher| hub::resolve_model_dir(&teacher.to_string_lossy()))
            .transpose()?,
        models,
        adapter_base: args.adapter_base.clone(),
        data: args.data.clone(),
        options,
        metrics,
        out: args.out.clone(),
    };
    let report = with_backend(
        args.backend,
        Evaluate {
            plan: &plan,
            backend: args.backend,
        },
    )??;
    let (json, markdown) = report.write(&args.out)?;
    print!("{}", report.render_table());
    print!("{}", report.continuations_markdown());
    eprintln!("wrote {} and {}", json.display(), markdown.display());
    Ok(())
}

/// What to evaluate: the rows of the report (the teacher first, when given) and the training
/// runs whose curves to plot.
pub struct Plan {
    pub teacher: Option<PathBuf>,
    /// (row label, model directory)
    pub models: Vec<(String, PathBuf)>,
    /// The base of the adapters among `models` (`None`: each adapter's own record of it).
    pub adapter_base: Option<PathBuf>,
    pub data: PathBuf,
    pub options: EvalOptions,
    /// (run label, metrics.jsonl or a distill output dir)
    pub metrics: Vec<(String, PathBuf)>,
    /// Where curves.png goes (the caller writes the report there).
    pub out: PathBuf,
}

struct Evaluate<'a> {
    plan: &'a Plan,
    backend: BackendKind,
}

impl BackendTask for Evaluate<'_> {
    type Output = Result<Report>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        evaluate_to_report::<B>(self.plan, &self.backend.to_string(), &device)
    }
}

/// The base model directory of the adapter in `adapter_dir`: `given`, or the adapter's
/// `base_model_name_or_path` (a directory, or a repo id in the Hugging Face cache).
pub fn adapter_base_dir(adapter_dir: &Path, given: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir.to_path_buf());
    }
    let named = qwen2::adapter_base(adapter_dir)?;
    hub::resolve_model_dir(&named).with_context(|| {
        format!(
            "{}: the adapter's base `{named}` (base_model_name_or_path) is neither a model \
             directory nor in the Hugging Face cache: pass the base with --adapter-base DIR",
            adapter_dir.join(qwen2::lora::ADAPTER_CONFIG).display()
        )
    })
}

/// Measures every model of `plan` on backend `B` and plots the curves; the report is not yet
/// written, so a caller can add notes first.
pub fn evaluate_to_report<B: Backend>(
    plan: &Plan,
    backend: &str,
    device: &B::Device,
) -> Result<Report> {
    let mut report = Report::new(&command_line(), backend, &plan.data, &plan.options);
    report.teacher = plan.teacher.as_ref().map(|t| t.display().to_string());
    // The tokenizer check between the teacher and each model decides what the KL compares.
    let options = EvalOptions {
        teacher_dir: plan.teacher.clone(),
        ..plan.options.clone()
    };
    let teacher = match &plan.teacher {
        Some(dir) => {
            eprintln!("loading the teacher {}", dir.display());
            let teacher = load_for_evaluation::<B>(dir, &options, device)?;
            if plan
                .models
                .first()
                .is_some_and(|(_, model)| reads_another_tokenizer(dir, model))
            {
                // The shards hold ids of the models' tokenizer, which mean other tokens to
                // the teacher: it scores the models' continuations but has no row of its own.
                let note = format!(
                    "the teacher {} reads another tokenizer than the shards': no loss of its \
                     own and no KL (undefined across tokenizers); with --continuations it scores \
                     each model's text on its own tokens (nats per model token)",
                    dir.display()
                );
                eprintln!("{note}");
                report.notes.push(note);
            } else {
                eprintln!("evaluating teacher");
                report.models.push(evaluate_loaded(
                    &teacher, dir, "teacher", None, &plan.data, &options,
                )?);
            }
            Some(teacher)
        }
        None => None,
    };
    for (label, dir) in &plan.models {
        eprintln!("evaluating {label} ({})", dir.display());
        let row = if dir.join(qwen2::lora::ADAPTER_CONFIG).exists() {
            let base = adapter_base_dir(dir, plan.adapter_base.as_deref())?;
            eprintln!("  a LoRA adapter: merged into its base {}", base.display());
            evaluate_adapter::<B>(
                &base,
                dir,
                label,
                teacher.as_ref(),
                &plan.data,
                &options,
                device,
            )?
        } else {
            evaluate_model::<B>(dir, label, teacher.as_ref(), &plan.data, &options, device)?
        };
        report.models.push(row);
    }
    if !plan.metrics.is_empty() {
        std::fs::create_dir_all(&plan.out)
            .with_context(|| format!("cannot create {}", plan.out.display()))?;
        let png = plan.out.join("curves.png");
        plot_training_curves(&plan.metrics, &png)?;
        report.curves_png = Some("curves.png".into());
        eprintln!("wrote {}", png.display());
    }
    Ok(report)
}

/// Whether the teacher at `teacher` splits text into other ids than the model at `model` (a
/// teacher distilled across tokenizers; added tokens that differ do not count).
fn reads_another_tokenizer(teacher: &std::path::Path, model: &std::path::Path) -> bool {
    preprocess::check_tokenizers(teacher, model).is_ok_and(|report| {
        matches!(
            report.verdict,
            preprocess::TokenizerCompat::DifferentBpe { .. }
        )
    })
}

/// The command as typed, for the report (arguments with spaces or quotes are quoted).
fn command_line() -> String {
    let quote = |arg: String| {
        if !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c))
        {
            arg
        } else {
            format!("'{}'", arg.replace('\'', r"'\''"))
        }
    };
    let args: Vec<String> = std::env::args().skip(1).map(quote).collect();
    format!("cargo xtask {}", args.join(" "))
}
