//! Training's evaluation (distill::evaluate, logged as eval `loss` and `kl_to_teacher`) and
//! `cargo xtask eval` (eval::evaluate_loaded) report the same cross-entropy and the same KL to
//! the teacher for the same model and data: both use distill::measure's definitions (the
//! vocabulary rows and positions the tokenizer check says the models share), whatever batch
//! size and chunking each uses.

use std::path::PathBuf;
use std::sync::Arc;

use distill::measure::{measurement_objective, Comparison};
use distill::objective::Student;
use distill::toy::write_small_setup;
use distill::TeacherSource;
use distill::{evaluate, BatchSource};
use eval::{evaluate_loaded, EvalOptions};
use qwen2::backend::Cpu;
use qwen2::load_model;

fn relative(a: f64, b: f64) -> f64 {
    ((a - b) / b).abs()
}

#[test]
fn training_evaluation_and_cargo_xtask_eval_agree_on_the_same_model_and_data() {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/wikitext-2-raw/wiki.valid.raw"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let setup = write_small_setup::<Cpu>(
        dir.path(),
        &text[..2048],
        &text[2048..2048 + 1536],
        32,
        &device,
    )
    .unwrap();
    let (teacher, teacher_config) = load_model::<Cpu>(&setup.teacher, &device).unwrap();
    let (student, student_config) = load_model::<Cpu>(&setup.student, &device).unwrap();

    // Training's evaluation: batches of 4 blocks, chunks of 48 flattened positions.
    let comparison = Comparison::of_tokenizers(
        &setup.teacher,
        &setup.student,
        teacher_config.vocab_size,
        student_config.vocab_size,
    )
    .unwrap();
    let objective = measurement_objective(&comparison, 1.0, 48);
    let mut data = BatchSource::open(&setup.shards, "validation", 4).unwrap();
    let trained_view = evaluate(
        &Student {
            model: student.clone(),
            projections: Vec::new(),
        },
        &TeacherSource::Live(Arc::new(teacher.clone())),
        &mut data,
        &objective,
        0,
    )
    .unwrap();

    // `cargo xtask eval`: batches of 3 blocks, chunks of 7 positions per block.
    let options = EvalOptions {
        split: "validation".into(),
        batch_size: 3,
        latency_repeats: 1,
        generation_prompts: Vec::new(),
        logit_chunk: 7,
        teacher_dir: Some(setup.teacher.clone()),
        ..EvalOptions::default()
    };
    let report = evaluate_loaded(
        &student,
        &setup.student,
        "student",
        Some(&teacher),
        &setup.shards,
        &options,
    )
    .unwrap();

    let (train_kl, eval_kl) = (
        trained_view.kl_to_teacher.unwrap(),
        report.kl_to_teacher.unwrap(),
    );
    println!(
        "cross-entropy: training {} vs eval {}; KL to the teacher: training {train_kl} vs eval \
         {eval_kl}; top-1 agreement (eval) {:?} over {} positions",
        trained_view.loss, report.eval_loss, report.top1_agreement, report.compared_positions
    );
    assert!(
        relative(trained_view.loss, report.eval_loss) < 1e-5,
        "{} vs {}",
        trained_view.loss,
        report.eval_loss
    );
    assert!(
        relative(train_kl, eval_kl) < 1e-5,
        "{train_kl} vs {eval_kl}"
    );
    assert!(train_kl > 0.0);
}
