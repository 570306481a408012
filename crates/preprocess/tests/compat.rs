//! `check_tokenizers` on the real teacher and student files, on identical and on different BPEs.

mod common;

use std::path::Path;

use common::*;
use preprocess::compat::{check_distillation_tokenizers, check_tokenizers, TokenizerCompat};
use preprocess::PreprocessError;

fn copy_model_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn real_teacher_and_student_differ_only_in_special_ids_and_bos() {
    let report = check_tokenizers(teacher_dir(), student_dir()).unwrap();
    assert!(report.same_bpe);
    // 151643..151649 carry different strings; 151650..151664 are spelled alike in both files, but
    // every added id (151643..151664) is masked.
    let differing: Vec<u32> = (151643..=151649).collect();
    let masked: Vec<u32> = (151643..=151664).collect();
    assert_eq!(
        report.verdict,
        TokenizerCompat::SpecialIdsDiffer {
            ids: differing,
            ids_to_mask: masked.clone(),
            shared_vocab_rows: 151936,
            bos_differs: true
        }
    );
    assert_eq!(report.ids_to_mask(), masked.as_slice());
    assert_eq!(report.shared_vocab_rows(), 151936);

    let first = &report.differing_ids[0];
    assert_eq!(first.id, 151643);
    assert_eq!(first.teacher.as_deref(), Some("<｜end▁of▁sentence｜>"));
    assert_eq!(first.student.as_deref(), Some("<|endoftext|>"));
    let think = report
        .differing_ids
        .iter()
        .find(|d| d.id == 151648)
        .unwrap();
    assert_eq!(
        (think.teacher.as_deref(), think.student.as_deref()),
        (Some("<think>"), Some("<|box_start|>"))
    );

    assert_eq!(
        report.teacher.bos_added,
        Some((151646, "<｜begin▁of▁sentence｜>".to_string()))
    );
    assert_eq!(report.student.bos_added, None);
    for side in [&report.teacher, &report.student] {
        assert_eq!(
            (side.tokenizer_size, side.bpe_size, side.config_vocab_size),
            (151665, 151643, Some(151936))
        );
        assert_eq!(side.eos.as_ref().map(|e| e.0), Some(151643));
    }

    let text = report.render();
    for fragment in [
        "same BPE vocabulary: yes",
        "ids whose token differs: 7 (151643..151649)",
        "22 ids (151643..151664: the differing ones and every added/control token of either tokenizer) will be masked",
        "BOS differs: teacher 151646",
        "config vocab_size 151936 vs 151665 tokenizer ids (271 padding rows",
        "verdict: SpecialIdsDiffer",
        "masked from the distillation loss",
        "eos 151643 is masked from the teacher-student logit comparison",
    ] {
        assert!(text.contains(fragment), "report lacks `{fragment}`:\n{text}");
    }
    // The trainer's entry point lets this pair through.
    check_distillation_tokenizers(teacher_dir(), student_dir()).unwrap();
}

#[test]
fn identical_tokenizers_are_identical() {
    let temp = tempfile::tempdir().unwrap();
    let copy = temp.path().join("student-copy");
    copy_model_dir(&student_dir(), &copy);
    let report = check_tokenizers(student_dir(), &copy).unwrap();
    assert_eq!(report.verdict, TokenizerCompat::Identical);
    assert!(report.differing_ids.is_empty());
    assert!(report.ids_to_mask().is_empty());
    assert!(report.render().contains("verdict: Identical"));
}

#[test]
fn a_different_bpe_is_refused_with_a_clear_message() {
    let temp = tempfile::tempdir().unwrap();
    let other = temp.path().join("other-bpe");
    copy_model_dir(&student_dir(), &other);
    // Swap the ids of two ordinary tokens: still a valid tokenizer, but "a" is no longer "a".
    let path = other.join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = (vocab["a"].clone(), vocab["b"].clone());
    vocab.insert("a".into(), b);
    vocab.insert("b".into(), a);
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();

    let report = check_tokenizers(teacher_dir(), &other).unwrap();
    assert!(!report.same_bpe);
    match &report.verdict {
        TokenizerCompat::DifferentBpe { reason } => {
            assert!(reason.contains("BPE vocabularies differ"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let err = check_distillation_tokenizers(teacher_dir(), &other).unwrap_err();
    assert!(matches!(err, PreprocessError::IncompatibleTokenizers(_)));
    let message = err.to_string();
    assert!(
        message.contains("cannot distill") && message.contains("different BPEs"),
        "{message}"
    );
    assert!(message.contains(&other.display().to_string()), "{message}");
}
