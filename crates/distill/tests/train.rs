//! The training loop end to end on tiny models (crates/distill/src/toy.rs) and configs/small.toml:
//! the KL to the teacher falls; a resumed run (after Ctrl-C, or from a mid-run checkpoint)
//! has exactly the losses of an uninterrupted one; hard-label training needs no teacher;
//! a NaN loss stops the run naming the step.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use distill::cached_teacher::{self, TEACHER_RECORD_FILE};
use distill::objective::Student;
use distill::recipe::Recipe;
use distill::toy::{toy_config, write_random_model, write_small_setup, SmallSetup};
use distill::{
    evaluate, objective_for, train, BatchSource, TeacherSource, TrainError, TrainOptions,
};
use qwen2::backend::Cpu;
use qwen2::{load_model, ModelConfig};

type Train = Autodiff<Cpu>;

fn wikitext() -> String {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/wikitext-2-raw/wiki.valid.raw");
    std::fs::read_to_string(path).unwrap()
}

/// Tiny models and shards: `train_bytes` of text for training, 1 KiB for validation, blocks
/// of 32 byte tokens.
fn setup(root: &Path, train_bytes: usize) -> SmallSetup {
    let text = wikitext();
    let train = &text[..train_bytes];
    let valid = &text[train_bytes..train_bytes + 1024];
    write_small_setup::<Cpu>(root, train, valid, 32, &Default::default()).unwrap()
}

/// configs/small.toml pointed at `setup`, writing into `output`, with `extra` overrides.
fn recipe(setup: &SmallSetup, output: &Path, extra: &[&str]) -> Recipe {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/small.toml");
    let mut overrides = vec![
        format!("teacher.local_dir={}", setup.teacher.display()),
        format!("student.local_dir={}", setup.student.display()),
        format!("dataset.shards={}", setup.shards.display()),
        format!("training.output_dir={}", output.display()),
    ];
    overrides.extend(extra.iter().map(|s| s.to_string()));
    Recipe::load(&config, &overrides).unwrap()
}

fn options(resume: bool, stop: bool) -> TrainOptions {
    TrainOptions {
        resume,
        allow_recipe_change: false,
        progress: false,
        stop: Arc::new(AtomicBool::new(stop)),
        max_steps: None,
        cache_teacher: false,
    }
}

fn cached(options: TrainOptions) -> TrainOptions {
    TrainOptions {
        cache_teacher: true,
        ..options
    }
}

/// (step, loss) of every train line of `output/metrics.jsonl`.
fn logged_losses(output: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|v| v["split"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn kl_to_the_teacher_falls_and_checkpoints_load_as_hugging_face_models() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 6 << 10);
    let output = dir.path().join("run");
    let recipe = recipe(
        &setup,
        &output,
        &[
            "training.num_train_epochs=3",
            "distillation.hard_label_weight=0.0",
            "distillation.temperature=1.0",
            "training.learning_rate=1e-2",
        ],
    );
    let device = Default::default();

    // Before: the student as initialised, against the teacher, on the validation split.
    let (teacher, _) = load_model::<Cpu>(&setup.teacher, &device).unwrap();
    let (student, config) = load_model::<Cpu>(&setup.student, &device).unwrap();
    let objective = objective_for(&recipe, Some(teacher.vocab_size()), config.vocab_size).unwrap();
    let mut eval_data = BatchSource::open(&setup.shards, "validation", 8).unwrap();
    let student = Student {
        model: student,
        projections: Vec::new(),
    };
    let teacher = TeacherSource::Live(Arc::new(teacher));
    let before = evaluate(&student, &teacher, &mut eval_data, &objective, 0).unwrap();

    let summary = train::<Train>(&recipe, &options(false, false), &device).unwrap();
    let after = summary.last_eval.expect("evaluated at each epoch");
    // The trainer's own evaluation before the first update is the same measurement.
    assert_eq!(summary.initial_eval, Some(before));
    let (kl_before, kl_after) = (before.kl_to_teacher.unwrap(), after.kl_to_teacher.unwrap());
    println!(
        "KL to the teacher: {kl_before} before, {kl_after} after {} steps",
        summary.steps
    );
    assert!(kl_after < 0.8 * kl_before, "KL {kl_before} -> {kl_after}");
    assert!((after.perplexity - after.loss.exp()).abs() < 1e-9);
    assert!(!summary.stopped_early);
    assert_eq!(summary.epochs_completed, 3);

    // The best checkpoint and the final student load as Hugging Face checkpoints.
    let best = summary.best_checkpoint.expect("save_strategy = best");
    for dir in [best.clone(), summary.final_model.unwrap()] {
        let (model, _) = load_model::<Cpu>(&dir, &device).unwrap();
        assert_eq!(model.hidden_size(), 32);
        assert!(dir.join("tokenizer.json").exists());
    }
    for file in [
        "projections.safetensors",
        "optimizer-decay.bin",
        "trainer_state.json",
    ] {
        assert!(best.join(file).exists(), "{file} in {}", best.display());
    }
    // Every epoch evaluated; the metrics carry the KL.
    let evals = std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"eval\"") && l.contains("kl_to_teacher"))
        .count();
    assert_eq!(evals, 4, "step 0 and each epoch");
}

/// 6 updates over 2 epochs of 16 blocks (batch 2, 3 micro-batches per update, so the last
/// update of each epoch has 2), logged every step.
const RESUME_SETTINGS: [&str; 9] = [
    "training.per_device_train_batch_size=2",
    "training.gradient_accumulation_steps=3",
    "training.num_train_epochs=2",
    "training.logging_steps=1",
    "training.eval_strategy=\"steps\"",
    "training.eval_steps=3",
    "training.save_strategy=\"steps\"",
    "training.save_steps=3",
    "training.lr_scheduler_type=\"linear\"",
];

fn assert_same_losses(straight: &[(u64, f64)], resumed: &[(u64, f64)]) {
    assert_eq!(straight.len(), 6, "{straight:?}");
    assert_eq!(
        straight.iter().map(|s| s.0).collect::<Vec<_>>(),
        resumed.iter().map(|s| s.0).collect::<Vec<_>>(),
        "each step logged once"
    );
    for ((step, a), (_, b)) in straight.iter().zip(resumed) {
        assert!(
            (a - b).abs() <= 1e-6 * a.abs().max(1.0),
            "step {step}: {a} vs {b}"
        );
    }
}

fn stopping_and_resuming_gives_the_losses_of_an_uninterrupted_run<Cpu: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    // 16 blocks of 32 tokens.
    let setup = setup(dir.path(), 16 * 32);
    let device = Default::default();

    let straight_dir = dir.path().join("straight");
    let straight = recipe(&setup, &straight_dir, &RESUME_SETTINGS);
    let summary = train::<Autodiff<Cpu>>(&straight, &options(false, false), &device).unwrap();
    assert_eq!((summary.steps, summary.epochs_completed), (6, 2));
    let straight_losses = logged_losses(&straight_dir);

    // Ctrl-C before the first update ends: a checkpoint at step 1, a clean return.
    let stopped_dir = dir.path().join("stopped");
    let stopped = recipe(&setup, &stopped_dir, &RESUME_SETTINGS);
    let first = train::<Autodiff<Cpu>>(&stopped, &options(false, true), &device).unwrap();
    assert!(first.stopped_early);
    assert_eq!(first.steps, 1);
    assert!(first.final_model.is_none());
    assert_eq!(
        first.last_checkpoint.as_deref(),
        Some(stopped_dir.join("checkpoint-1").as_path())
    );
    // Starting again without --resume is refused (it would mix two runs).
    let refused = train::<Autodiff<Cpu>>(&stopped, &options(false, false), &device).unwrap_err();
    assert!(refused.to_string().contains("--resume"), "{refused}");
    let rest = train::<Autodiff<Cpu>>(&stopped, &options(true, false), &device).unwrap();
    assert_eq!((rest.steps, rest.stopped_early), (6, false));
    assert_same_losses(&straight_losses, &logged_losses(&stopped_dir));

    // A crash after the mid-run checkpoint: the straight run's files without its later
    // checkpoint and final student; the resumed run drops the logged steps 4..6 and redoes them.
    let crashed_dir = dir.path().join("crashed");
    copy_dir(&straight_dir, &crashed_dir);
    std::fs::remove_dir_all(crashed_dir.join("checkpoint-6")).unwrap();
    std::fs::remove_dir_all(crashed_dir.join("final")).unwrap();
    let crashed = recipe(&setup, &crashed_dir, &RESUME_SETTINGS);
    let resumed = train::<Autodiff<Cpu>>(&crashed, &options(true, false), &device).unwrap();
    assert_eq!(resumed.steps, 6);
    assert_same_losses(&straight_losses, &logged_losses(&crashed_dir));
    // The final students are the same.
    let weights = |dir: &Path| std::fs::read(dir.join("final/model.safetensors")).unwrap();
    assert_eq!(weights(&straight_dir), weights(&crashed_dir));
}

/// The eval lines of `output/metrics.jsonl`.
fn eval_lines(output: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|v| v["split"] == "eval")
        .collect()
}

/// `--cache-teacher`: the caches are built beside the shards, then training runs with the
/// teacher's directory gone (so it cannot have been loaded), and the top-k KL to the teacher
/// falls; it is logged apart from the full KL, and it is a lower bound of it.
#[test]
fn training_from_the_teacher_cache_never_loads_the_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 6 << 10);
    let output = dir.path().join("run");
    let recipe = recipe(
        &setup,
        &output,
        &[
            "training.num_train_epochs=3",
            "distillation.hard_label_weight=0.0",
            "training.learning_rate=1e-2",
            "teacher_cache.top_k=16",
        ],
    );
    let device = Default::default();

    // Not every loss has a cached form.
    let mut reverse = recipe.clone();
    reverse.distillation.kd_loss_type = distill::losses::KdLoss::ReverseKl;
    let refused = train::<Train>(&reverse, &cached(options(false, false)), &device).unwrap_err();
    assert!(refused.to_string().contains("kd_loss_type"), "{refused}");

    // Without the teacher and without a cache there is nothing to train from.
    let mut nowhere = recipe.clone();
    nowhere.teacher.local_dir = dir.path().join("no-such-teacher");
    let refused = train::<Train>(&nowhere, &cached(options(false, false)), &device).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("build the cache once with the teacher"),
        "{refused}"
    );

    // Build: the training split at the recipe's temperature with the matched hidden state, the
    // validation split at temperature 1 for evaluation's KL.
    let student_config = ModelConfig::from_file(&setup.student).unwrap();
    let (cache, _) = cached_teacher::plan(&recipe, &student_config).unwrap();
    let prepared =
        cached_teacher::prepare::<Cpu>(&recipe, &cache, &options(false, false), &device).unwrap();
    let train_cache = setup.shards.join("teacher-cache/train");
    let eval_cache = setup.shards.join("teacher-cache/validation");
    assert_eq!(prepared.summary.dirs, vec![train_cache.clone(), eval_cache]);
    assert!(prepared.summary.blocks_computed > 0);
    assert!(prepared.summary.bytes > 0);
    assert!(train_cache.join(TEACHER_RECORD_FILE).is_file());

    // The full KL (live teacher, T = 1) of the student as initialised.
    let (teacher, _) = load_model::<Cpu>(&setup.teacher, &device).unwrap();
    let (student, config) = load_model::<Cpu>(&setup.student, &device).unwrap();
    let objective = objective_for(&recipe, Some(teacher.vocab_size()), config.vocab_size).unwrap();
    let student = Student {
        model: student,
        projections: Vec::new(),
    };
    let mut eval_data = BatchSource::open(&setup.shards, "validation", 8).unwrap();
    let live = TeacherSource::Live(Arc::new(teacher));
    let full_kl = evaluate(&student, &live, &mut eval_data, &objective, 0)
        .unwrap()
        .kl_to_teacher
        .unwrap();
    let cached_kl = evaluate(&student, &prepared.source, &mut eval_data, &objective, 0)
        .unwrap()
        .kl_to_teacher
        .unwrap();
    println!("KL to the teacher before training: full {full_kl}, top-16 {cached_kl}");
    assert!(cached_kl <= full_kl * (1.0 + 1e-6) && cached_kl > 0.5 * full_kl);
    drop(prepared);

    let gone = dir.path().join("teacher-moved-away");
    std::fs::rename(&setup.teacher, &gone).unwrap();
    let summary = train::<Train>(&recipe, &cached(options(false, false)), &device).unwrap();
    let cache = summary
        .teacher_cache
        .clone()
        .expect("trained from the cache");
    assert_eq!(cache.blocks_computed, 0, "reused");
    assert!(cache.teacher_dir_missing);
    let (before, after) = (
        summary.initial_eval.unwrap().kl_to_teacher.unwrap(),
        summary.last_eval.unwrap().kl_to_teacher.unwrap(),
    );
    println!(
        "top-16 KL to the teacher: {before} before, {after} after {} steps",
        summary.steps
    );
    assert!(
        (before - cached_kl).abs() <= 1e-9 * cached_kl,
        "same measure"
    );
    assert!(after < 0.9 * before, "KL {before} -> {after}");
    let evals = eval_lines(&output);
    assert_eq!(evals.len(), 4, "step 0 and each epoch");
    assert!(evals
        .iter()
        .all(|v| v["kl_to_teacher_topk"].is_f64() && v["kl_to_teacher"].is_null()));
}

/// A run that trains from a cache resumes with the losses of an uninterrupted one.
fn resuming_from_the_teacher_cache_gives_the_losses_of_an_uninterrupted_run<Cpu: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 16 * 32);
    let device = Default::default();
    let straight_dir = dir.path().join("straight");
    let straight = recipe(&setup, &straight_dir, &RESUME_SETTINGS);
    let summary =
        train::<Autodiff<Cpu>>(&straight, &cached(options(false, false)), &device).unwrap();
    assert!(summary.teacher_cache.unwrap().blocks_computed > 0);
    assert_eq!((summary.steps, summary.epochs_completed), (6, 2));
    let straight_losses = logged_losses(&straight_dir);

    // Stopped after the checkpoint at step 3 of 6: resume from it, reading the same cache.
    let crashed_dir = dir.path().join("crashed");
    copy_dir(&straight_dir, &crashed_dir);
    std::fs::remove_dir_all(crashed_dir.join("checkpoint-6")).unwrap();
    std::fs::remove_dir_all(crashed_dir.join("final")).unwrap();
    let crashed = recipe(&setup, &crashed_dir, &RESUME_SETTINGS);
    let resumed = train::<Autodiff<Cpu>>(&crashed, &cached(options(true, false)), &device).unwrap();
    assert_eq!(resumed.teacher_cache.unwrap().blocks_computed, 0);
    assert_eq!(resumed.steps, 6);
    assert_same_losses(&straight_losses, &logged_losses(&crashed_dir));
    let weights = |dir: &Path| std::fs::read(dir.join("final/model.safetensors")).unwrap();
    assert_eq!(weights(&straight_dir), weights(&crashed_dir));
}

/// Evaluating on the training split: at temperature 1 the training cache serves evaluation
/// too; at another temperature evaluation gets a temperature-1 cache of its own. The caches go
/// where `teacher_cache.dir` says.
#[test]
fn evaluating_on_the_training_split_reads_a_temperature_1_cache() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 16 * 32);
    for (temperature, caches) in [
        ("1.0", vec!["train"]),
        ("2.0", vec!["train", "train-temperature-1"]),
    ] {
        let root = dir.path().join(format!("caches-{temperature}"));
        let output = dir.path().join(format!("run-{temperature}"));
        let recipe = recipe(
            &setup,
            &output,
            &[
                &format!("distillation.temperature={temperature}"),
                "dataset.eval_split=\"train\"",
                &format!("teacher_cache.dir=\"{}\"", root.display()),
            ],
        );
        let options = TrainOptions {
            max_steps: Some(2),
            ..cached(options(false, false))
        };
        let summary = train::<Train>(&recipe, &options, &Default::default()).unwrap();
        let expected: Vec<PathBuf> = caches.iter().map(|c| root.join(c)).collect();
        assert_eq!(summary.teacher_cache.unwrap().dirs, expected);
        let kl = summary.last_eval.unwrap().kl_to_teacher.unwrap();
        assert!(kl.is_finite() && kl > 0.0);
        assert!(!setup.shards.join("teacher-cache").exists());
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn hard_label_training_never_loads_a_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 16 * 32);
    let output = dir.path().join("run");
    let mut hard = recipe(
        &setup,
        &output,
        &[
            "distillation.hard_label_weight=1.0",
            "distillation.intermediate_matches=[]",
            "training.num_train_epochs=1",
        ],
    );
    hard.teacher.local_dir = dir.path().join("no-such-teacher");
    let summary = train::<Train>(&hard, &options(false, false), &Default::default()).unwrap();
    let eval = summary.last_eval.unwrap();
    assert_eq!(eval.kl_to_teacher, None);
    assert!(eval.loss.is_finite());
    assert!(summary.tokens_per_second > 0.0);
}

#[test]
fn a_nan_loss_stops_the_run_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 16 * 32);
    let broken = dir.path().join("nan-student");
    write_random_model::<Cpu>(
        &broken,
        &toy_config(32, 2, 4),
        3,
        f32::NAN,
        &Default::default(),
    )
    .unwrap();
    let mut nan = recipe(&setup, &dir.path().join("run"), &[]);
    nan.student.local_dir = broken;
    let error = train::<Train>(&nan, &options(false, false), &Default::default()).unwrap_err();
    assert!(
        matches!(error, TrainError::NonFinite { step: 1, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("at step 1"), "{error}");
}

#[test]
fn the_shipped_recipes_load() {
    let configs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let seed = Recipe::load(
        &configs.join("deepseek-r1-distill-qwen-1.5b-to-qwen2.5-1.5b.toml"),
        &[],
    )
    .unwrap();
    assert_eq!(seed.training.learning_rate, 5e-5);
    assert_eq!(seed.training.gradient_accumulation_steps, 4);
    assert_eq!(seed.distillation.temperature, 2.0);
    let small = Recipe::load(&configs.join("small.toml"), &[]).unwrap();
    assert_eq!(small.distillation.intermediate_matches.len(), 1);
    let seed_lora = Recipe::load(
        &configs.join("deepseek-r1-distill-qwen-1.5b-to-qwen2.5-1.5b-lora.toml"),
        &[],
    )
    .unwrap();
    assert_eq!(seed_lora.lora.as_ref().map(|l| l.rank), Some(16));
    let small_lora = Recipe::load(&configs.join("small-lora.toml"), &[]).unwrap();
    assert_eq!(small_lora.lora.map(|l| l.targets().len()), Some(7));
    let cross = configs.join("qwen2.5-coder-0.5b-to-tiny-llama.toml");
    let recipe = Recipe::load(&cross, &[]).unwrap();
    assert_eq!(
        recipe.distillation.cross_tokenizer,
        Some(distill::cross_tokenizer::CrossTokenizerLossKind::Hybrid)
    );
    // One hybrid weight without the other, and hidden matches across tokenizers, are named.
    let error = Recipe::load(&cross, &["distillation.hybrid_matched_weight=0.5".into()])
        .unwrap_err()
        .to_string();
    assert!(error.contains("hybrid_unmatched_weight"), "{error}");
    let error = Recipe::load(
        &cross,
        &["distillation.intermediate_matches=[{layer_T = 1, layer_S = 1}]".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("intermediate_matches") && error.contains("across tokenizers"),
        "{error}"
    );
    // Bad [lora] settings are refused naming the field.
    let error = Recipe::load(&configs.join("small-lora.toml"), &["lora.rank=0".into()])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("small-lora.toml") && error.contains("`rank`"),
        "{error}"
    );
    let error = Recipe::load(
        &configs.join("small-lora.toml"),
        &["lora.target_modules=[\"qkv\"]".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("target_modules") && error.contains("qkv"),
        "{error}"
    );
    let on_policy = Recipe::load(&configs.join("quickstart-on-policy.toml"), &[]).unwrap();
    assert_eq!(on_policy.on_policy.lmbda, 0.5);
    assert_eq!(
        on_policy.distillation.kd_loss_type,
        distill::losses::KdLoss::Jsd
    );
}

/// `--resume` with a recipe that changed since the run started: a change that leaves the
/// trained weights as they were (how often to log) is accepted; one that changes the result
/// (max_steps re-times the schedule) is refused naming the field, unless
/// `allow_recipe_change` (`--allow-recipe-change`) confirms it.
#[test]
fn resuming_with_a_changed_recipe_names_the_change_and_needs_a_confirmation() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 16 * 32);
    let device = Default::default();
    let output = dir.path().join("run");
    let started = recipe(&setup, &output, &RESUME_SETTINGS);
    let first = train::<Train>(&started, &options(false, true), &device).unwrap();
    assert!(first.stopped_early);

    let mut harmless_settings = RESUME_SETTINGS.to_vec();
    harmless_settings.push("training.logging_steps=2");
    let mut shorter_settings = harmless_settings.clone();
    shorter_settings.push("training.max_steps=4");
    let shorter = recipe(&setup, &output, &shorter_settings);
    let refused = train::<Train>(&shorter, &options(true, false), &device).unwrap_err();
    let message = refused.to_string();
    println!("{message}");
    assert!(message.contains("training.max_steps"), "{message}");
    assert!(!message.contains("training.logging_steps"), "{message}");
    assert!(message.contains("--allow-recipe-change"), "{message}");

    let allowed = TrainOptions {
        allow_recipe_change: true,
        ..options(true, false)
    };
    let summary = train::<Train>(&shorter, &allowed, &device).unwrap();
    assert_eq!((summary.steps, summary.stopped_early), (4, false));
}

/// Every train line of `output/metrics.jsonl` without its timing, which varies from run to run.
fn train_lines_without_timing(output: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|v| v["split"] == "train")
        .map(|mut v| {
            let line = v.as_object_mut().unwrap();
            line.remove("tokens_per_s");
            line.remove("generation_tokens_per_s");
            v
        })
        .collect()
}

/// `[on_policy]` with `lmbda = 0` and no `seq_kd` is word-level distillation: the very losses,
/// logs and final weights of the recipe without the section, whatever its sampling settings.
#[test]
fn on_policy_with_lmbda_0_is_the_word_level_run() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 16 * 32);
    let device = Default::default();
    let word_level_dir = dir.path().join("word-level");
    let word_level = recipe(&setup, &word_level_dir, &RESUME_SETTINGS);
    train::<Train>(&word_level, &options(false, false), &device).unwrap();
    let off_dir = dir.path().join("lmbda-0");
    let mut off_settings = RESUME_SETTINGS.to_vec();
    off_settings.extend([
        "on_policy.lmbda=0.0",
        "on_policy.seq_kd=false",
        "on_policy.prompt_len=8",
        "on_policy.max_new_tokens=8",
        "on_policy.temperature=0.7",
        "on_policy.seed=3",
    ]);
    let off = recipe(&setup, &off_dir, &off_settings);
    train::<Train>(&off, &options(false, false), &device).unwrap();
    let lines = train_lines_without_timing(&word_level_dir);
    assert_eq!(lines.len(), 6);
    assert_eq!(lines, train_lines_without_timing(&off_dir));
    assert!(lines[0].get("on_policy_fraction").is_none());
    let weights = |dir: &Path| std::fs::read(dir.join("final/model.safetensors")).unwrap();
    assert_eq!(weights(&word_level_dir), weights(&off_dir));
}

/// On-policy (half of the micro-batches continued by the student) with sequence-level KD (the
/// other half by the teacher): it trains, logs what it generated, and a run resumed from its
/// mid-run checkpoint generates and trains exactly as the uninterrupted one (the sampling
/// generators derive from the seed, the update and the micro-batch).
fn on_policy_resumes_exactly<Cpu: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 16 * 32);
    let device = Default::default();
    let mut settings = RESUME_SETTINGS.to_vec();
    settings.extend([
        "on_policy.lmbda=0.5",
        "on_policy.seq_kd=true",
        "on_policy.prompt_len=8",
        "on_policy.max_new_tokens=16",
        "on_policy.temperature=0.9",
        "on_policy.top_k=50",
    ]);
    let straight_dir = dir.path().join("straight");
    let straight = recipe(&setup, &straight_dir, &settings);
    let summary = train::<Autodiff<Cpu>>(&straight, &options(false, false), &device).unwrap();
    assert_eq!(summary.steps, 6);
    let lines = train_lines_without_timing(&straight_dir);
    let sum = |key: &str| lines.iter().map(|l| l[key].as_f64().unwrap()).sum::<f64>();
    // 18 micro-batches, each continued by one of the two models.
    let by_student = sum("on_policy_fraction") * 3.0;
    let by_teacher = sum("seq_kd_fraction") * 3.0;
    assert!((by_student + by_teacher - 18.0).abs() < 1e-9, "{lines:?}");
    assert!(by_student >= 1.0 && by_teacher >= 1.0, "{lines:?}");
    for line in &lines {
        let length = line["generated_length"].as_f64().unwrap();
        assert!(length > 0.0 && length <= 16.0, "{line}");
    }

    let crashed_dir = dir.path().join("crashed");
    copy_dir(&straight_dir, &crashed_dir);
    std::fs::remove_dir_all(crashed_dir.join("checkpoint-6")).unwrap();
    std::fs::remove_dir_all(crashed_dir.join("final")).unwrap();
    let crashed = recipe(&setup, &crashed_dir, &settings);
    let resumed = train::<Autodiff<Cpu>>(&crashed, &options(true, false), &device).unwrap();
    assert_eq!(resumed.steps, 6);
    assert_same_losses(&logged_losses(&straight_dir), &logged_losses(&crashed_dir));
    assert_eq!(lines, train_lines_without_timing(&crashed_dir));
    let weights = |dir: &Path| std::fs::read(dir.join("final/model.safetensors")).unwrap();
    assert_eq!(weights(&straight_dir), weights(&crashed_dir));
}

/// What an on-policy recipe cannot do is refused before anything is loaded, naming the field.
#[test]
fn on_policy_refuses_the_teacher_cache_hard_labels_only_and_prompts_longer_than_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 4 * 32);
    let device = Default::default();
    let on = [
        "on_policy.lmbda=0.5",
        "on_policy.prompt_len=8",
        "on_policy.max_new_tokens=8",
    ];

    let cached_run = recipe(&setup, &dir.path().join("cached"), &on);
    let error = train::<Train>(&cached_run, &cached(options(false, false)), &device).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("--cache-teacher") && message.contains("on_policy.lmbda"),
        "{message}"
    );
    assert!(!setup.shards.join("teacher-cache").exists());

    let mut long = on.to_vec();
    long.push("on_policy.max_new_tokens=30");
    let long_run = recipe(&setup, &dir.path().join("long"), &long);
    let message = train::<Train>(&long_run, &options(false, false), &device)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("on_policy.prompt_len + on_policy.max_new_tokens"),
        "{message}"
    );

    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/small.toml");
    let hard_only = [
        "distillation.hard_label_weight=1.0",
        "distillation.intermediate_matches=[]",
        "on_policy.lmbda=0.5",
    ]
    .map(String::from);
    let message = Recipe::load(&config, &hard_only).unwrap_err().to_string();
    assert!(
        message.contains("small.toml") && message.contains("`on_policy.lmbda`"),
        "{message}"
    );
}

// Resuming must give the uninterrupted run's losses on each CPU backend the toolkit ships.
qwen2::on_every_cpu_backend!(
    stopping_and_resuming_gives_the_losses_of_an_uninterrupted_run,
    resuming_from_the_teacher_cache_gives_the_losses_of_an_uninterrupted_run,
    on_policy_resumes_exactly,
);

/// A LoRA student with its base frozen in bf16 and dropout on: only the adapters change, a
/// checkpoint holds the adapter alone in PEFT's layout, the run resumes with the uninterrupted
/// run's losses, and the final student is written merged (Hugging Face layout) and as an
/// adapter that, put on the base, is the same model.
#[test]
fn a_lora_student_resumes_exactly_and_saves_merged_and_adapter_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 16 * 32);
    let device = Default::default();
    let mut settings = RESUME_SETTINGS.to_vec();
    settings.extend([
        "lora.rank=4",
        "lora.alpha=8",
        "lora.dropout=0.1",
        "lora.target_modules=[\"q_proj\", \"v_proj\", \"up_proj\"]",
        "memory.frozen_dtype=\"bfloat16\"",
        "training.learning_rate=1e-2",
    ]);

    let straight_dir = dir.path().join("straight");
    let straight = recipe(&setup, &straight_dir, &settings);
    let summary = train::<Train>(&straight, &options(false, false), &device).unwrap();
    assert_eq!(summary.steps, 6);
    let checkpoint = straight_dir.join("checkpoint-3");
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(checkpoint.join(file).exists(), "checkpoint holds {file}");
    }
    assert!(!checkpoint.join("model.safetensors").exists());
    let losses = logged_losses(&straight_dir);

    let crashed_dir = dir.path().join("crashed");
    copy_dir(&straight_dir, &crashed_dir);
    for gone in ["checkpoint-6", "final", "final-adapter"] {
        std::fs::remove_dir_all(crashed_dir.join(gone)).unwrap();
    }
    let crashed = recipe(&setup, &crashed_dir, &settings);
    let resumed = train::<Train>(&crashed, &options(true, false), &device).unwrap();
    assert_eq!(resumed.steps, 6);
    assert_same_losses(&losses, &logged_losses(&crashed_dir));
    let adapter = |dir: &Path| std::fs::read(dir.join("final-adapter/adapter_model.safetensors"));
    assert_eq!(
        adapter(&straight_dir).unwrap(),
        adapter(&crashed_dir).unwrap()
    );

    // The merged student is the base with the adapter on it, and the base is untouched.
    let (merged, config) = load_model::<Cpu>(&straight_dir.join("final"), &device).unwrap();
    let (base, _, bf16) =
        qwen2::load_frozen_model::<Cpu>(&setup.student, &device, qwen2::FrozenDtype::Bfloat16)
            .unwrap();
    assert!(bf16);
    let (adapted, read) =
        qwen2::load_adapter(base, &config, &straight_dir.join("final-adapter")).unwrap();
    assert_eq!(read.rank, 4);
    let rows = vec![(0..24u32).map(|i| (i * 7 + 3) % 250).collect::<Vec<_>>(); 2];
    let ids = distill::objective::Batch::new(rows, qwen2::AttentionMask::full(2, 24));
    let logits = |model: &qwen2::Model<Cpu>| {
        model
            .forward(ids.ids_tensor(&device), &ids.mask, false)
            .logits
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let (a, b) = (logits(&merged), logits(&adapted));
    let error = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(error < 1e-4, "merged vs base + adapter: {error}");
    let (base, _) = load_model::<Cpu>(&setup.student, &device).unwrap();
    let base_logits = logits(&base);
    let moved = a
        .iter()
        .zip(&base_logits)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-3, "training moved the student by only {moved}");
    // Activation checkpointing by layer recomputes what it dropped: the same run, the same
    // losses (small.toml has a hidden-state match, read at a layer's input).
    // Activation checkpointing recomputes each layer under the same dropout masks: the same
    // losses as the recorded run.
    let mut with_checkpointing = settings.clone();
    with_checkpointing.push("memory.activation_checkpointing=true");
    let checkpointed_dir = dir.path().join("checkpointed");
    let checkpointed = recipe(&setup, &checkpointed_dir, &with_checkpointing);
    train::<Train>(&checkpointed, &options(false, false), &device).unwrap();
    assert_same_losses(&losses, &logged_losses(&checkpointed_dir));

    let embeddings = |model: &qwen2::Model<Cpu>| {
        model
            .embed_tokens
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    assert_eq!(
        embeddings(&merged),
        embeddings(&adapted),
        "the base is frozen"
    );
}

/// Activation checkpointing by layer, full-parameter (the embeddings train too), with
/// hidden-state matches read at a layer's input and after the final norm: the losses and the
/// final weights of the recorded pass.
#[test]
fn activation_checkpointing_gives_the_recorded_run() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 16 * 32);
    let device = Default::default();
    let mut settings = RESUME_SETTINGS.to_vec();
    settings.push(
        "distillation.intermediate_matches=[{ layer_T = 1, layer_S = 1, feature = \"hidden\", \
         loss = \"mse\", weight = 0.1 }, { layer_T = 2, layer_S = 2, feature = \"hidden\", \
         loss = \"cosine\", weight = 0.1 }]",
    );
    let recorded_dir = dir.path().join("recorded");
    let recorded = recipe(&setup, &recorded_dir, &settings);
    train::<Train>(&recorded, &options(false, false), &device).unwrap();
    settings.push("memory.activation_checkpointing=true");
    let checkpointed_dir = dir.path().join("checkpointed");
    let checkpointed = recipe(&setup, &checkpointed_dir, &settings);
    train::<Train>(&checkpointed, &options(false, false), &device).unwrap();
    assert_same_losses(
        &logged_losses(&recorded_dir),
        &logged_losses(&checkpointed_dir),
    );
    let weights = |dir: &Path| load_model::<Cpu>(&dir.join("final"), &device).unwrap().0;
    let (a, b) = (weights(&recorded_dir), weights(&checkpointed_dir));
    let values = |m: &qwen2::Model<Cpu>| m.embed_tokens.val().into_data().to_vec::<f32>().unwrap();
    let error = values(&a)
        .iter()
        .zip(values(&b))
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(error < 1e-5, "embeddings differ by {error}");
}
