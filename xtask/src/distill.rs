//! `cargo xtask distill --config configs/X.toml [--set key=value ...] [--resume
//! [--allow-recipe-change]] [--cache-teacher] [--backend flex|ndarray|cuda] [--max-steps N]
//! [--dry-run] [--ignore-memory-plan]`: runs
//! the training loop of crates/distill and prints what it did. Ctrl-C stops at the next
//! update with a checkpoint; `--resume` continues from it (naming each recipe field changed
//! since the run started, and refusing those that change its result unless
//! `--allow-recipe-change`). `--cache-teacher` runs the teacher once over the train and eval
//! shards into a cache beside them (`teacher_cache.dir`, default `<shards>/teacher-cache`;
//! reused when complete), drops it, and trains from the cache. Before anything is loaded the
//! run's memory plan is compared with the machine's available memory: a CPU run that cannot
//! fit stops at once with the plan, part by part, and the options that would fit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use clap::Args as ClapArgs;
use distill::memory_plan::{machine_memory, MemoryPlan, RunShape};
use distill::recipe::Recipe;
use distill::{TrainOptions, TrainSummary};
use qwen2::backend::{with_backend, BackendKind, BackendTask};
use qwen2::memory::{current_rss_bytes, gib};
use qwen2::{FrozenDtype, Qwen2Config};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The recipe (TOML), e.g. configs/deepseek-r1-distill-qwen-1.5b-to-qwen2.5-1.5b.toml.
    #[arg(long)]
    config: PathBuf,
    /// Override a recipe field, e.g. `--set training.learning_rate=1e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue from the newest checkpoint in the recipe's output_dir.
    #[arg(long)]
    resume: bool,
    /// With --resume: continue even though the recipe changed since the run started in fields
    /// that change its result (e.g. training.max_steps, which re-times the schedule). Every
    /// change is printed either way.
    #[arg(long, requires = "resume")]
    allow_recipe_change: bool,
    /// Run the teacher once over the shards (or reuse that cache), then train from its cached
    /// top-k logits (`teacher_cache.top_k`, default 64) without the teacher in memory.
    #[arg(long)]
    cache_teacher: bool,
    /// Compute backend: flex (the default CPU backend), ndarray (CPU) or cuda (a `--features cuda` build).
    #[arg(long, default_value = "flex")]
    backend: BackendKind,
    /// Stop after this many optimizer updates (overrides training.max_steps).
    #[arg(long)]
    max_steps: Option<usize>,
    /// No progress on stderr (a bar on a terminal, one line per logging step otherwise).
    #[arg(long)]
    quiet: bool,
    /// Print the memory plan (the run's expected peak, part by part) beside the machine's
    /// memory, then exit without loading anything.
    #[arg(long)]
    dry_run: bool,
    /// Start a CPU run even when its memory plan exceeds the memory available now.
    #[arg(long)]
    ignore_memory_plan: bool,
}

pub fn run(args: Args) -> Result<()> {
    let mut recipe = Recipe::load(&args.config, &args.overrides)?;
    // A local_dir that is not a folder but a repo id cached by Python tools or `cargo xtask
    // download` (e.g. "Qwen/Qwen2.5-1.5B") is that snapshot. Anything else stays as written:
    // a teacher folder may be absent on purpose when the teacher cache covers it.
    for model in [&mut recipe.teacher, &mut recipe.student] {
        let written = model.local_dir.to_string_lossy().into_owned();
        if let Ok(snapshot) = hub::resolve_model_dir_at(&written, model.revision.as_deref()) {
            model.local_dir = snapshot;
        }
    }
    if args.backend == BackendKind::Cuda && recipe.memory.frozen_dtype != FrozenDtype::Float32 {
        // bf16 storage keeps frozen matrices in host memory and widens them per product: a
        // memory saving for CPU runs, a host-to-device copy per product on a GPU.
        eprintln!(
            "note: on the GPU the frozen weights stay float32 (memory.frozen_dtype = {:?} is a CPU setting)",
            recipe.memory.frozen_dtype
        );
        recipe.memory.frozen_dtype = FrozenDtype::Float32;
    }
    check_shards_exist(&recipe, &args.config)?;
    check_memory(&recipe, &args)?;
    if args.dry_run {
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let handler_flag = stop.clone();
    ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond Ctrl-C: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "\nCtrl-C: finishing this update, then writing a checkpoint (while the teacher is \
             being cached: finishing this batch, keeping the finished part files); Ctrl-C again \
             to quit now"
        );
    })
    .context("cannot install the Ctrl-C handler")?;
    let options = TrainOptions {
        resume: args.resume,
        allow_recipe_change: args.allow_recipe_change,
        progress: !args.quiet,
        stop,
        max_steps: args.max_steps,
        cache_teacher: args.cache_teacher,
    };
    eprintln!(
        "distill: {} -> {} on {} ({} backend), output in {}",
        recipe.teacher.local_dir.display(),
        recipe.student.local_dir.display(),
        recipe.dataset.shards.display(),
        args.backend,
        recipe.training.output_dir.display()
    );
    let summary = with_backend(args.backend, Train { recipe, options })??;
    print_summary(&summary);
    Ok(())
}

/// The run's memory plan against the memory the machine has now: printed with `--dry-run`,
/// and a CPU run that cannot fit is refused before anything is loaded. A plan that cannot be
/// made (a missing config or manifest) is left to the trainer's own, more precise errors,
/// except with `--dry-run`, which exists to show it.
fn check_memory(recipe: &Recipe, args: &Args) -> Result<()> {
    let plan = match memory_plan(recipe, args.cache_teacher) {
        Ok(plan) => plan,
        Err(error) if args.dry_run => return Err(error),
        Err(_) => return Ok(()),
    };
    let machine = machine_memory();
    if args.dry_run {
        println!(
            "memory plan ({}, {} backend):\n{}",
            args.config.display(),
            args.backend,
            plan.table()
        );
        if let Some((total, available)) = machine {
            println!(
                "machine: {} in all, {} available now: the plan {}",
                gib(total),
                gib(available),
                if plan.total() <= available {
                    "fits"
                } else {
                    "does not fit"
                }
            );
        }
        return Ok(());
    }
    // GPU runs hold their tensors in the GPU's memory, which this plan does not describe.
    if args.backend == BackendKind::Cuda || args.ignore_memory_plan {
        return Ok(());
    }
    if let Some(available) = plan.shortfall() {
        bail!(
            "this run needs about {} at its peak but the machine has {} available:\n{}\
             Ways to fit: a LoRA student ([lora] in the recipe: the base frozen, in bf16 with \
             memory.frozen_dtype), --cache-teacher (the teacher is not held while training), \
             memory.frozen_dtype = \"bfloat16\" (the teacher in half the memory), a smaller \
             training.per_device_train_batch_size (with gradient_accumulation_steps for the same \
             batch), shorter blocks (cargo xtask preprocess --seq-len), a smaller \
             distillation.chunk_positions, or a GPU (--backend cuda). --ignore-memory-plan starts \
             it anyway; --dry-run prints this plan alone.",
            gib(plan.total()),
            gib(available),
            plan.table()
        );
    }
    Ok(())
}

/// Shards that were never made get the command that makes them, before anything else fails on
/// their absence.
fn check_shards_exist(recipe: &Recipe, config: &Path) -> Result<()> {
    let shards = &recipe.dataset.shards;
    if shards.join("manifest.json").is_file() {
        return Ok(());
    }
    let make = if shards.starts_with("data/quickstart") {
        "`cargo xtask quickstart` makes them (and the quickstart's student) first".to_string()
    } else {
        format!(
            "make them with `cargo xtask preprocess --tokenizer {} --input <WikiText folder> --out {} --seq-len <N>`",
            recipe.student.local_dir.display(),
            shards.display()
        )
    };
    bail!(
        "{}: dataset.shards = {} holds no token shards (no manifest.json): {make}",
        config.display(),
        shards.display()
    )
}

fn memory_plan(recipe: &Recipe, cache_teacher: bool) -> Result<MemoryPlan> {
    let config = |path: &Path| {
        Qwen2Config::from_file(path).with_context(|| format!("memory plan: {}", path.display()))
    };
    let student = config(&recipe.student.local_dir)?;
    let teacher_dir = &recipe.teacher.local_dir;
    let teacher = if recipe.needs_teacher() && !cache_teacher {
        Some(config(teacher_dir)?)
    } else {
        None
    };
    let manifest = preprocess::Manifest::load(&recipe.dataset.shards).with_context(|| {
        format!(
            "memory plan: the shards in {}",
            recipe.dataset.shards.display()
        )
    })?;
    // Whether `memory.frozen_dtype` stores a model's matrices in bf16 ("auto" follows the
    // checkpoint's own dtype, read from the safetensors headers or the GGUF directory alone).
    // A folder whose weights are not downloaded yet is planned from config.json's dtype, so a
    // user learns whether a job fits before fetching gigabytes.
    let stores_bf16 = |path: &Path| -> Result<bool> {
        let weights_absent = path.is_dir()
            && !path.join("model.safetensors").exists()
            && !path.join("model.safetensors.index.json").exists();
        if weights_absent {
            let config = Qwen2Config::from_file(path)
                .with_context(|| format!("memory plan: {}", path.display()))?;
            eprintln!(
                "note: {} has no weight files yet; planning as if they are stored as its \
                 config.json says ({})",
                path.display(),
                config.torch_dtype
            );
            return Ok(recipe
                .memory
                .frozen_dtype
                .stores_bf16(config.torch_dtype == "bfloat16"));
        }
        qwen2::frozen_in_bf16(path, recipe.memory.frozen_dtype)
            .with_context(|| format!("memory plan: the weights in {}", path.display()))
    };
    let teacher_bf16 = match &teacher {
        Some(_) => stores_bf16(teacher_dir)?,
        None => false,
    };
    let student_base_bf16 = match &recipe.lora {
        Some(_) => stores_bf16(&recipe.student.local_dir)?,
        None => false,
    };
    Ok(MemoryPlan::estimate(&RunShape {
        student: &student,
        teacher: teacher.as_ref(),
        cache_top_k: recipe.teacher_cache.top_k,
        batch: recipe.training.per_device_train_batch_size,
        seq_len: manifest.seq_len,
        chunk_positions: recipe.distillation.chunk_positions,
        baseline_bytes: current_rss_bytes().unwrap_or(0),
        lora: recipe.lora.as_ref(),
        teacher_bf16,
        student_base_bf16,
        generated_len: match recipe.on_policy.generates() {
            true => recipe.on_policy.prompt_len + recipe.on_policy.max_new_tokens,
            false => 0,
        },
        recompute_layers: recipe.memory.activation_checkpointing,
    }))
}

struct Train {
    recipe: Recipe,
    options: TrainOptions,
}

impl BackendTask for Train {
    type Output = Result<TrainSummary>;

    fn run<B: Backend>(self, device: B::Device) -> Result<TrainSummary> {
        Ok(distill::train::<Autodiff<B>>(
            &self.recipe,
            &self.options,
            &device,
        )?)
    }
}

fn print_summary(summary: &TrainSummary) {
    let status = if summary.stopped_early {
        "stopped (Ctrl-C); continue with --resume"
    } else {
        "done"
    };
    println!("training {status}");
    println!(
        "  steps {} | epochs completed {} | tokens {} | {:.0} tokens/s | peak RSS {}",
        summary.steps,
        summary.epochs_completed,
        summary.train_tokens,
        summary.tokens_per_second,
        summary.peak_rss_bytes.map_or("unknown".into(), gib)
    );
    if let Some(rollouts) = &summary.rollouts {
        let share = |count: usize| 100.0 * count as f64 / rollouts.micro_batches.max(1) as f64;
        println!(
            "  on-policy: {:.0}% of {} micro-batches continued by the student, {:.0}% by the teacher | \
             {} tokens generated at {:.0} tokens/s, mean length {:.1}",
            share(rollouts.by_student),
            rollouts.micro_batches,
            share(rollouts.by_teacher),
            rollouts.generated_tokens,
            rollouts.generated_tokens as f64 / rollouts.generation_seconds.max(1e-9),
            rollouts.generated_tokens as f64 / rollouts.generated_rows.max(1) as f64,
        );
    }
    if let Some(cache) = &summary.teacher_cache {
        let built = if cache.blocks_computed == 0 {
            "reused".to_string()
        } else {
            format!(
                "built {} blocks in {:.1} s, peak RSS while building {}",
                cache.blocks_computed,
                cache.build_seconds,
                cache.build_peak_rss_bytes.map_or("unknown".into(), gib)
            )
        };
        let dirs: Vec<String> = cache.dirs.iter().map(|d| d.display().to_string()).collect();
        println!(
            "  teacher cache (top-{}): {} | {:.1} MiB | {built}{}",
            cache.top_k,
            dirs.join(", "),
            cache.bytes as f64 / (1u64 << 20) as f64,
            if cache.teacher_dir_missing {
                " | teacher dir absent: trained from the cache's teacher.json"
            } else {
                ""
            }
        );
    }
    if let Some(loss) = summary.last_train_loss {
        println!("  last train loss {loss:.4}");
    }
    // From a cache the KL is the top-k approximation (a lower bound of the full KL).
    let kl_label = match &summary.teacher_cache {
        Some(cache) => format!("KL to teacher (top-{} approx.)", cache.top_k),
        None => "KL to teacher".to_string(),
    };
    for (when, eval) in [
        ("  before training: ", &summary.initial_eval),
        ("  ", &summary.last_eval),
    ] {
        if let Some(eval) = eval {
            let kl = eval
                .kl_to_teacher
                .map_or("n/a (no teacher)".into(), |kl| format!("{kl:.4}"));
            println!(
                "{when}eval loss {:.4} | perplexity {:.2} | {kl_label} {kl}",
                eval.loss, eval.perplexity
            );
        }
    }
    for (what, path) in [
        ("final student", &summary.final_model),
        ("final adapter (PEFT)", &summary.final_adapter),
        ("best checkpoint", &summary.best_checkpoint),
        ("last checkpoint", &summary.last_checkpoint),
    ] {
        if let Some(path) = path {
            println!("  {what}: {}", path.display());
        }
    }
    println!(
        "  metrics: {} (TensorBoard: tensorboard --logdir {})",
        summary.output_dir.join("metrics.jsonl").display(),
        summary.output_dir.join("runs").display()
    );
}
