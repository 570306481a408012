//! `cargo xtask quickstart`: the whole pipeline, offline, on what the repository ships, in a
//! few minutes on a small CPU. It answers one question on held-out text: did distilling the
//! teacher beat training the same student on hard labels for the same number of steps?
//!
//! 1. preprocess the bundled WikiText-2 (validation split for training, test split held out)
//!    with the bundled 4096-token tokenizer (`data/tiny-tokenizer`);
//! 2. take the bundled teacher (`data/tiny-teacher`, made by `--rebuild-teacher` with
//!    `configs/quickstart-teacher.toml`);
//! 3. start a student from random weights (`configs/models/tiny-student.json`);
//! 4. train it twice from that same start: distillation (`configs/quickstart.toml`) and hard
//!    labels only (the same recipe with `distillation.hard_label_weight = 1`);
//! 5. evaluate teacher, student before, both students on the test split; write
//!    `reports/quickstart/{report.json,report.md,curves.png}` and print the table and verdict.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use clap::Args as ClapArgs;
use distill::recipe::Recipe;
use distill::{train, TrainOptions, TrainSummary};
use eval::{EvalOptions, ModelReport, Report};
use preprocess::PreprocessOptions;
use qwen2::backend::{with_backend, BackendKind, BackendTask};
use qwen2::safetensors::Dtype;
use qwen2::ModelConfig;

const TOKENIZER: &str = "data/tiny-tokenizer";
const WIKITEXT: &str = "data/wikitext-2-raw";
const TEACHER: &str = "data/tiny-teacher";
const TEACHER_ARCHITECTURE: &str = "configs/models/tiny-teacher.json";
const TEACHER_RECIPE: &str = "configs/quickstart-teacher.toml";
const STUDENT_ARCHITECTURE: &str = "configs/models/tiny-student.json";
const RECIPE: &str = "configs/quickstart.toml";
const SEQ_LEN: usize = 128;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Working directory for shards, the initial student and the two training runs.
    #[arg(long, default_value = "data/quickstart")]
    work: PathBuf,
    /// Where report.json, report.md and curves.png go.
    #[arg(long, default_value = "reports/quickstart")]
    out: PathBuf,
    /// Optimizer steps of each student run (default: the recipe's max_steps).
    #[arg(long)]
    steps: Option<usize>,
    /// Test-split blocks of 128 tokens the report scores each model on.
    #[arg(long, default_value_t = 256)]
    eval_blocks: usize,
    /// Train the bundled teacher again (configs/quickstart-teacher.toml) and replace data/tiny-teacher.
    #[arg(long)]
    rebuild_teacher: bool,
    /// Compute backend: flex (the default CPU backend), ndarray (CPU) or cuda (a `--features cuda` build).
    #[arg(long, default_value = "flex")]
    backend: BackendKind,
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let shards = args.work.join("shards");
    step(&format!(
        "1/5 preprocess {WIKITEXT} with {TOKENIZER} into {}",
        shards.display()
    ));
    let outcome = preprocess::preprocess(&PreprocessOptions::new(
        PathBuf::from(TOKENIZER),
        vec![PathBuf::from(WIKITEXT)],
        shards.clone(),
        SEQ_LEN,
    ))?;
    crate::preprocess::print_splits(outcome.manifest());

    let report = with_backend(
        args.backend,
        Pipeline {
            args: &args,
            shards: &shards,
        },
    )??;
    print!("{}", report.render_table());
    println!();
    println!("{}", verdict(&report.models));
    println!(
        "\nquickstart finished in {:.1} min; report: {}",
        started.elapsed().as_secs_f64() / 60.0,
        args.out.join("report.md").display()
    );
    Ok(())
}

fn step(message: &str) {
    eprintln!("\n== {message}");
}

struct Pipeline<'a> {
    args: &'a Args,
    shards: &'a Path,
}

impl BackendTask for Pipeline<'_> {
    type Output = Result<Report>;

    fn run<B: Backend>(self, device: B::Device) -> Result<Report> {
        let Pipeline { args, shards } = self;
        let work = &args.work;
        let teacher = PathBuf::from(TEACHER);
        if args.rebuild_teacher || !teacher.join("model.safetensors").exists() {
            step(&format!("2/5 train the teacher ({TEACHER_RECIPE})"));
            rebuild_teacher::<B>(work, &teacher, &device)?;
        } else {
            step(&format!(
                "2/5 teacher: {TEACHER} (bundled; --rebuild-teacher trains it again)"
            ));
        }

        let student_init = work.join("student-init");
        step(&format!(
            "3/5 random student {} from {STUDENT_ARCHITECTURE}",
            student_init.display()
        ));
        let student_config = ModelConfig::from_file(Path::new(STUDENT_ARCHITECTURE))?;
        crate::init_model::write_random_model(
            &student_config,
            &student_init,
            Dtype::F32,
            Some(Path::new(TOKENIZER)),
            1,
        )?;

        step(&format!("4/5 train the student twice ({RECIPE})"));
        let steps: Vec<String> = args
            .steps
            .map(|n| vec![format!("training.max_steps={n}")])
            .unwrap_or_default();
        let distilled = train_run::<B>(
            RECIPE,
            "distillation",
            &[
                &steps[..],
                &work_overrides(work, &student_init, "distilled"),
            ]
            .concat(),
            &device,
        )?;
        let hard = train_run::<B>(
            RECIPE,
            "hard labels only",
            &[
                &steps[..],
                &work_overrides(work, &student_init, "hard-labels"),
                &["distillation.hard_label_weight=1.0".to_string()],
            ]
            .concat(),
            &device,
        )?;

        step(&format!(
            "5/5 evaluate on the test split ({} blocks of {SEQ_LEN})",
            args.eval_blocks
        ));
        let final_dir = |summary: &TrainSummary| {
            summary
                .final_model
                .clone()
                .context("the training run ended without a final model")
        };
        let rows = vec![
            ("student before".to_string(), student_init.clone()),
            ("distilled student".to_string(), final_dir(&distilled)?),
            ("hard-label student".to_string(), final_dir(&hard)?),
        ];
        let metrics = vec![
            ("distilled".to_string(), distilled.output_dir.clone()),
            ("hard labels".to_string(), hard.output_dir.clone()),
        ];
        let plan = crate::eval::Plan {
            teacher: Some(teacher),
            models: rows,
            adapter_base: None,
            data: shards.to_path_buf(),
            options: EvalOptions {
                split: "test".into(),
                max_blocks: Some(args.eval_blocks),
                batch_size: 8,
                max_new_tokens: 24,
                ..EvalOptions::default()
            },
            metrics,
            out: args.out.clone(),
        };
        let mut report =
            crate::eval::evaluate_to_report::<B>(&plan, &args.backend.to_string(), &device)?;
        report.notes.push(format!(
            "distillation: {} steps, {:.0} tokens/s, peak RSS {:.2} GiB; hard labels: {} steps, {:.0} tokens/s",
            distilled.steps,
            distilled.tokens_per_second,
            distilled.peak_rss_bytes.unwrap_or(0) as f64 / (1u64 << 30) as f64,
            hard.steps,
            hard.tokens_per_second
        ));
        report.notes.push(verdict(&report.models));
        report.write(&args.out)?;
        Ok(report)
    }
}

/// Points a recipe's data, starting student and output at `work` (the recipes in configs/
/// name the default `data/quickstart`).
fn work_overrides(work: &Path, student: &Path, run: &str) -> Vec<String> {
    let set = |key: &str, path: &Path| format!("{key}={:?}", path.display().to_string());
    vec![
        set("dataset.shards", &work.join("shards")),
        set("student.local_dir", student),
        set("training.output_dir", &work.join("runs").join(run)),
    ]
}

/// One training run of `recipe` with `overrides`, from a clean output dir.
fn train_run<B: Backend>(
    recipe: &str,
    label: &str,
    overrides: &[String],
    device: &B::Device,
) -> Result<TrainSummary> {
    let recipe = Recipe::load(Path::new(recipe), overrides)?;
    fresh_dir(&recipe.training.output_dir)?;
    eprintln!("-- {label}: {}", recipe.training.output_dir.display());
    let summary = train::<Autodiff<B>>(&recipe, &progress_options(), device)
        .with_context(|| format!("training ({label})"))?;
    eprintln!(
        "-- {label}: {} steps, {:.0} tokens/s, last train loss {:.4}",
        summary.steps,
        summary.tokens_per_second,
        summary.last_train_loss.unwrap_or(f64::NAN)
    );
    Ok(summary)
}

fn progress_options() -> TrainOptions {
    TrainOptions {
        progress: true,
        ..TrainOptions::default()
    }
}

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// Trains the teacher from random weights on hard labels and installs it at `teacher`.
fn rebuild_teacher<B: Backend>(work: &Path, teacher: &Path, device: &B::Device) -> Result<()> {
    let teacher_init = work.join("teacher-init");
    let config = ModelConfig::from_file(Path::new(TEACHER_ARCHITECTURE))?;
    crate::init_model::write_random_model(
        &config,
        &teacher_init,
        Dtype::F32,
        Some(Path::new(TOKENIZER)),
        0,
    )?;
    // Hard labels only: the recipe's [teacher] is never loaded; it names the same start.
    let mut overrides = work_overrides(work, &teacher_init, "teacher");
    overrides.push(format!(
        "teacher.local_dir={:?}",
        teacher_init.display().to_string()
    ));
    let summary = train_run::<B>(TEACHER_RECIPE, "teacher", &overrides, device)?;
    let trained = summary
        .final_model
        .context("teacher training ended without a final model")?;
    fresh_dir(teacher)?;
    copy_dir(&trained, teacher)?;
    eprintln!("teacher installed at {}", teacher.display());
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))
            .with_context(|| format!("copying {}", entry.path().display()))?;
    }
    Ok(())
}

/// Did distillation beat hard labels on held-out text? Said plainly, either way.
fn verdict(models: &[ModelReport]) -> String {
    let find = |label: &str| models.iter().find(|m| m.label == label);
    let (Some(distilled), Some(hard)) = (find("distilled student"), find("hard-label student"))
    else {
        return "verdict: missing rows".into();
    };
    let loss_gain = hard.eval_loss - distilled.eval_loss;
    let kl = (distilled.kl_to_teacher, hard.kl_to_teacher);
    let kl_text = match kl {
        (Some(d), Some(h)) => format!("KL to the teacher {d:.4} vs {h:.4}"),
        _ => "KL to the teacher not measured".into(),
    };
    if loss_gain > 0.0 {
        format!(
            "verdict: distillation beat hard-label training on held-out text: test loss {:.4} vs {:.4} \
             (perplexity {:.1} vs {:.1}), {kl_text}.",
            distilled.eval_loss, hard.eval_loss, distilled.perplexity, hard.perplexity
        )
    } else {
        format!(
            "verdict: distillation did NOT beat hard-label training on held-out text: test loss {:.4} vs {:.4} \
             (perplexity {:.1} vs {:.1}), {kl_text}. Try more steps (--steps) or a stronger teacher \
             (--rebuild-teacher after raising its max_steps).",
            distilled.eval_loss, hard.eval_loss, distilled.perplexity, hard.perplexity
        )
    }
}
