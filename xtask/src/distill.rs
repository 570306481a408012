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

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use clap::Args as ClapArgs;
use distill::recipe::Recipe;
use distill::run::{Device, PreparedRun};
use distill::{machine_memory, MemoryPlan};
use distill::{RunPlan, TrainOptions, TrainSummary};
use qwen2::backend::{with_backend, BackendKind, BackendTask};
use qwen2::memory::gib;

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
    let device = match args.backend {
        BackendKind::Cuda => Device::Gpu,
        _ => Device::Cpu,
    };
    let PreparedRun { recipe, mut notes } =
        distill::run::prepare(&args.config, &args.overrides, device)?;
    // The plan and its memory before anything is loaded; the trainer reads the same plan.
    let plan = RunPlan::read(&recipe, args.cache_teacher)?;
    let memory = plan.memory_plan(&recipe, &mut notes)?;
    for note in &notes {
        eprintln!("note: {note}");
    }
    if args.dry_run {
        print_plan(&memory, &args);
        return Ok(());
    }
    if !args.ignore_memory_plan {
        distill::run::check_fits(&memory, device)?;
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
        "distill: {} -> {} on {} ({} backend, frozen products {}, CPU kernels {}), output in {}",
        recipe.teacher.local_dir.display(),
        recipe.student.local_dir.display(),
        recipe.dataset.shards.display(),
        args.backend,
        recipe.memory.frozen_products.describe(),
        matmul::Isa::describe(),
        recipe.training.output_dir.display()
    );
    let summary = with_backend(
        args.backend,
        Train {
            recipe,
            plan,
            options,
        },
    )??;
    print!("{summary}");
    Ok(())
}

/// `--dry-run`: the plan part by part beside the machine's memory.
fn print_plan(plan: &MemoryPlan, args: &Args) {
    println!(
        "memory plan ({}, {} backend):\n{}",
        args.config.display(),
        args.backend,
        plan.table()
    );
    if let Some((total, available)) = machine_memory() {
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
}

struct Train {
    recipe: Recipe,
    plan: RunPlan,
    options: TrainOptions,
}

impl BackendTask for Train {
    type Output = Result<TrainSummary>;

    fn run<B: Backend>(self, device: B::Device) -> Result<TrainSummary> {
        Ok(distill::train_planned::<Autodiff<B>>(
            &self.recipe,
            self.plan,
            &self.options,
            &device,
        )?)
    }
}
