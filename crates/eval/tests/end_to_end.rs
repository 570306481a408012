//! `evaluate_model` and `Report` on token shards made by the preprocess crate from a tiny
//! corpus, with the fixture models (a word-level tokenizer fits their 512-row vocabulary).

mod common;

use burn::tensor::{Int, Tensor, TensorData};
use common::{model_with_tokenizer, tiny_shards, B};
use eval::{evaluate_loaded, evaluate_model, EvalOptions, Report};
use preprocess::ShardReader;
use qwen2::loss::next_token_cross_entropy;
use qwen2::{load_model, AttentionMask, Model};

const SEQ_LEN: usize = 16;

fn options() -> EvalOptions {
    EvalOptions {
        split: "test".into(),
        max_blocks: None,
        batch_size: 2,
        latency_repeats: 2,
        generation_prompts: vec!["The history of the".into(), "The storm".into()],
        max_new_tokens: 5,
        logit_chunk: 5,
        teacher_dir: None,
        continuations: None,
        ..EvalOptions::default()
    }
}

/// Every block of the split in one batch, scored by a plain forward pass and qwen2's CE.
fn whole_split_loss(model: &Model<B>, shards: &std::path::Path) -> (f64, usize, usize) {
    let mut reader = ShardReader::open(shards, "test").unwrap();
    let (mut ids, mut rows, mut real) = (Vec::new(), Vec::new(), 0);
    for index in 0..reader.len() {
        let block = reader.block(index).unwrap();
        real += block.real_len;
        rows.push((0..SEQ_LEN).map(|i| i < block.real_len).collect());
        ids.push(block.ids);
    }
    let mask = AttentionMask { rows };
    let values: Vec<i64> = ids.iter().flatten().map(|&v| v as i64).collect();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(values, [ids.len(), SEQ_LEN]),
        &Default::default(),
    );
    let logits = model.forward(input, &mask, false).logits;
    let ce = next_token_cross_entropy(logits, &ids, &mask);
    let mean = ce
        .mean()
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .unwrap()[0];
    (mean, ce.count, real)
}

#[test]
fn evaluation_on_tiny_shards_writes_a_complete_report() {
    let root = tempfile::tempdir().unwrap();
    let teacher_dir = model_with_tokenizer(root.path(), "teacher");
    let student_dir = model_with_tokenizer(root.path(), "student");
    let shards = tiny_shards(root.path(), &teacher_dir, SEQ_LEN);
    let blocks = ShardReader::open(&shards, "test").unwrap().len();
    assert!(blocks >= 5, "the corpus gives several blocks ({blocks})");

    let device = Default::default();
    let options = options();
    let (teacher, _) = load_model::<B>(&teacher_dir, &device).unwrap();
    let (student, _) = load_model::<B>(&student_dir, &device).unwrap();
    let mut report = Report::new("cargo xtask eval (test)", "ndarray", &shards, &options);
    report.teacher = Some(teacher_dir.display().to_string());
    report
        .models
        .push(evaluate_loaded(&teacher, &teacher_dir, "teacher", None, &shards, &options).unwrap());
    report.models.push(
        evaluate_model::<B>(
            &student_dir,
            "student",
            Some(&teacher),
            &shards,
            &options,
            &device,
        )
        .unwrap(),
    );
    report.notes.push("a note for the reader".into());

    // Batched, chunked evaluation equals one plain pass over the whole split.
    for (model, row) in [(&teacher, &report.models[0]), (&student, &report.models[1])] {
        let (expected, labels, real_tokens) = whole_split_loss(model, &shards);
        assert!(
            ((row.eval_loss - expected) / expected).abs() < 1e-5,
            "{}: {} vs {expected}",
            row.label,
            row.eval_loss
        );
        assert_eq!(row.label_tokens, labels as u64);
        assert_eq!(labels, real_tokens - blocks, "one label fewer per block");
        assert_eq!(row.perplexity, row.eval_loss.exp());
        assert_eq!(row.blocks, blocks);
        assert_eq!(row.seq_len, SEQ_LEN);
        assert_eq!(row.latency_seq_len, SEQ_LEN, "the first block is full");
        assert!(row.latency_ms_per_sample > 0.0);
        assert_eq!(row.generations.len(), 2);
        for sample in &row.generations {
            assert!((1..=5).contains(&sample.new_tokens), "{sample:?}");
            assert!(sample.prompt_tokens >= 2);
            assert_eq!(sample.token_ids.len(), sample.new_tokens);
        }
        if row.label == "student" {
            assert_eq!(row.compared_positions, real_tokens as u64);
        }
    }
    let teacher_row = &report.models[0];
    assert_eq!(teacher_row.kl_to_teacher, None);
    assert_eq!(
        teacher_row.load_seconds, None,
        "the teacher was passed loaded"
    );
    let student_row = &report.models[1];
    assert!(student_row.kl_to_teacher.unwrap() > 0.0);
    assert!((0.0..=1.0).contains(&student_row.top1_agreement.unwrap()));
    assert!(student_row.load_seconds.is_some());
    if cfg!(target_os = "linux") {
        assert!(student_row.peak_rss_bytes.unwrap() > 0);
    }

    let out = root.path().join("reports/tiny");
    let (json_path, markdown_path) = report.write(&out).unwrap();
    let read_back: Report =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(read_back.models.len(), 2);
    assert_eq!(read_back.models[1].label, "student");
    assert_eq!(read_back.models[1].blocks, blocks);
    assert_eq!(read_back.command, "cargo xtask eval (test)");
    assert_eq!(read_back.split, "test");
    assert!(read_back.date.ends_with('Z') && read_back.date.len() == 20);
    assert!(read_back.machine.cores >= 1);
    assert_eq!(read_back.options, options);
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let markdown = std::fs::read_to_string(&markdown_path).unwrap();
    assert!(markdown.contains(
        "| model | params | eval loss | perplexity | KL to teacher | top-1 agree | latency ms/sample | gen tokens/s | peak RSS |"
    ));
    let student_line = markdown
        .lines()
        .find(|line| line.starts_with("| student |"))
        .expect("a student row");
    assert!(student_line.contains(&format!("{:.4}", student_row.eval_loss)));
    assert!(student_line.contains(&format!("{:.4}", student_row.kl_to_teacher.unwrap())));
    let teacher_line = markdown
        .lines()
        .find(|line| line.starts_with("| teacher |"))
        .expect("a teacher row");
    assert!(
        teacher_line.contains("| - |"),
        "no KL for the teacher: {teacher_line}"
    );
    assert!(markdown.contains("**The history of the**"));
    assert!(markdown.contains("**The storm**"));
    assert!(markdown.contains("> a note for the reader"));
    assert!(markdown.contains("- command: `cargo xtask eval (test)`"));

    let table = report.render_table();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "header, rule, two rows:\n{table}");
    assert!(lines[0].starts_with("model"));
    assert!(lines[3].starts_with("student"));
    assert!(lines[3].contains(&format!("{:.3}", student_row.perplexity)));
}

#[test]
fn unusable_inputs_are_refused_with_what_to_do() {
    let root = tempfile::tempdir().unwrap();
    let teacher_dir = model_with_tokenizer(root.path(), "teacher");
    let shards = tiny_shards(root.path(), &teacher_dir, SEQ_LEN);
    let device = Default::default();
    let error = |options: &EvalOptions, model_dir: &std::path::Path| {
        evaluate_model::<B>(model_dir, "m", None, &shards, options, &device)
            .unwrap_err()
            .to_string()
    };

    let missing_split = EvalOptions {
        split: "validation".into(),
        ..options()
    };
    let message = error(&missing_split, &teacher_dir);
    assert!(message.contains("validation"), "{message}");

    let no_batch = EvalOptions {
        batch_size: 0,
        ..options()
    };
    assert!(error(&no_batch, &teacher_dir).contains("--batch-size"));

    // The committed fixture has no tokenizer.json: generation cannot decode.
    let fixture_student = common::fixtures().join("student");
    let message = error(
        &EvalOptions {
            max_blocks: Some(1),
            ..options()
        },
        &fixture_student,
    );
    assert!(message.contains("tokenizer.json"), "{message}");

    // Without prompts no tokenizer is needed.
    let quiet = EvalOptions {
        max_blocks: Some(1),
        generation_prompts: Vec::new(),
        ..options()
    };
    let row = evaluate_model::<B>(&fixture_student, "m", None, &shards, &quiet, &device).unwrap();
    assert_eq!(row.blocks, 1);
    assert!(row.generations.is_empty() && row.generation_tokens_per_second.is_none());
}
