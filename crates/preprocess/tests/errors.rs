//! Bad inputs fail with an error that names the file and says what to do.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use preprocess::{preprocess, PreprocessError, PreprocessOptions};

fn run(tokenizer: PathBuf, inputs: Vec<PathBuf>, out: &Path) -> PreprocessError {
    preprocess(&PreprocessOptions::new(tokenizer, inputs, out, 128)).expect_err("the run must fail")
}

/// The error's message, checked to mention `path` and every fragment.
fn message_of(err: &PreprocessError, path: &Path, fragments: &[&str]) -> String {
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "`{message}` does not name {}",
        path.display()
    );
    for fragment in fragments {
        assert!(
            message.contains(fragment),
            "`{message}` does not say `{fragment}`"
        );
    }
    message
}

#[test]
fn a_missing_input_is_named_with_what_to_pass_instead() {
    let temp = tempfile::tempdir().unwrap();
    let missing = temp.path().join("wiki.train.raw");
    let err = run(
        teacher_dir(),
        vec![missing.clone()],
        &temp.path().join("out"),
    );
    assert!(
        matches!(err, PreprocessError::InputNotFound { .. }),
        "{err:?}"
    );
    message_of(&err, &missing, &["does not exist", "wiki.train.raw"]);
    assert!(
        !temp.path().join("out").exists(),
        "nothing is written for a failed run"
    );
}

#[test]
fn an_empty_input_file_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let empty = temp.path().join("wiki.valid.raw");
    std::fs::write(&empty, b"").unwrap();
    let err = run(teacher_dir(), vec![empty.clone()], &temp.path().join("out"));
    assert!(matches!(err, PreprocessError::EmptyInput { .. }), "{err:?}");
    message_of(&err, &empty, &["empty", "fetch the file again"]);
}

#[test]
fn invalid_utf8_names_the_file_and_line() {
    let temp = tempfile::tempdir().unwrap();
    let bad = temp.path().join("wiki.valid.raw");
    std::fs::write(&bad, b" \n = Title = \n \n caf\xe9 au lait \n").unwrap();
    let err = run(teacher_dir(), vec![bad.clone()], &temp.path().join("out"));
    match &err {
        PreprocessError::InvalidUtf8 {
            line, byte_offset, ..
        } => assert_eq!((*line, *byte_offset), (4, 20)),
        other => panic!("{other:?}"),
    }
    message_of(&err, &bad, &["line 4", "not valid UTF-8", "iconv"]);
}

#[test]
fn a_model_dir_without_tokenizer_json_says_where_to_get_one() {
    let temp = tempfile::tempdir().unwrap();
    let model = temp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(teacher_dir().join("config.json"), model.join("config.json")).unwrap();
    let err = run(model.clone(), vec![valid_raw()], &temp.path().join("out"));
    assert!(
        matches!(err, PreprocessError::TokenizerMissing { .. }),
        "{err:?}"
    );
    message_of(&err, &model, &["no tokenizer.json", "cargo xtask download"]);
}

#[test]
fn a_broken_tokenizer_json_is_named() {
    let temp = tempfile::tempdir().unwrap();
    let model = temp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let full = std::fs::read(teacher_dir().join("tokenizer.json")).unwrap();
    std::fs::write(model.join("tokenizer.json"), &full[..full.len() / 2]).unwrap();
    let err = run(model.clone(), vec![valid_raw()], &temp.path().join("out"));
    assert!(
        matches!(err, PreprocessError::TokenizerInvalid { .. }),
        "{err:?}"
    );
    message_of(
        &err,
        &model.join("tokenizer.json"),
        &["not a usable tokenizer", "re-download"],
    );
}

#[test]
fn a_broken_config_json_is_named() {
    let temp = tempfile::tempdir().unwrap();
    let model = temp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(
        teacher_dir().join("tokenizer.json"),
        model.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(model.join("config.json"), b"{\"eos_token_id\": ").unwrap();
    let err = run(model.clone(), vec![valid_raw()], &temp.path().join("out"));
    assert!(
        matches!(err, PreprocessError::ConfigInvalid { .. }),
        "{err:?}"
    );
    message_of(
        &err,
        &model.join("config.json"),
        &["not a usable model config"],
    );
}

#[test]
fn files_that_are_not_wikitext_are_refused_by_name() {
    let temp = tempfile::tempdir().unwrap();
    let notes = temp.path().join("notes.txt");
    std::fs::write(&notes, b"hello\n").unwrap();
    let err = run(teacher_dir(), vec![notes.clone()], &temp.path().join("out"));
    assert!(
        matches!(err, PreprocessError::UnknownSplit { .. }),
        "{err:?}"
    );
    message_of(&err, &notes, &["wiki.train.raw", "train-*.parquet"]);

    // A directory with nothing recognisable in it.
    let err = run(
        teacher_dir(),
        vec![temp.path().to_path_buf()],
        &temp.path().join("out"),
    );
    assert!(
        matches!(err, PreprocessError::NoInputsInDirectory { .. }),
        "{err:?}"
    );
    message_of(&err, temp.path(), &["holds no WikiText files"]);
}

#[test]
fn parquet_without_a_text_column_is_refused() {
    use arrow::array::{Int32Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("validation-00000-of-00001.parquet");
    let schema = Arc::new(Schema::new(vec![Field::new(
        "line",
        DataType::Int32,
        false,
    )]));
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        schema.clone(),
        None,
    )
    .unwrap();
    writer
        .write(&RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(vec![1, 2]))]).unwrap())
        .unwrap();
    writer.close().unwrap();
    let err = run(teacher_dir(), vec![path.clone()], &temp.path().join("out"));
    assert!(
        matches!(err, PreprocessError::ParquetNoTextColumn { .. }),
        "{err:?}"
    );
    message_of(&err, &path, &["no string column `text`", "columns: line"]);
}

#[test]
fn the_same_split_from_raw_and_parquet_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let parquet = temp.path().join("validation-00000-of-00001.parquet");
    std::fs::write(&parquet, b"not read").unwrap();
    let err = run(
        teacher_dir(),
        vec![valid_raw(), parquet.clone()],
        &temp.path().join("out"),
    );
    assert!(
        matches!(err, PreprocessError::RawAndParquetForSameSplit { .. }),
        "{err:?}"
    );
    message_of(&err, &parquet, &["pass only one"]);
}

#[test]
fn a_seq_len_below_two_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let err = preprocess(&PreprocessOptions::new(
        teacher_dir(),
        vec![valid_raw()],
        temp.path().join("out"),
        1,
    ))
    .unwrap_err();
    assert!(
        matches!(err, PreprocessError::InvalidSeqLen { seq_len: 1 }),
        "{err:?}"
    );
}
