//! Chat templates where transformers keeps them: in tokenizer_config.json (transformers 4) or
//! in chat_template.jinja beside it (transformers 5, which then leaves the field out).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{model_dir, B};
use qwen2::safetensors::Dtype;
use qwen2::tokenizer::{chat_template, render_chat, CHAT_TEMPLATE_FILE};
use qwen2::{load_model, save_model, SaveOptions};
use serde_json::Value;

/// Qwen2.5's tokenizer_config.json as the hub ships it (template inside).
fn qwen_tokenizer_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/hub-files/qwen2.5-1.5b/tokenizer_config.json")
}

/// The same tokenizer files as transformers 5's `save_pretrained` writes them: the template in
/// chat_template.jinja and no `chat_template` field.
fn transformers5_layout(dir: &Path) -> String {
    let mut config: Value =
        serde_json::from_slice(&fs::read(qwen_tokenizer_config()).unwrap()).unwrap();
    let template = config
        .as_object_mut()
        .unwrap()
        .remove("chat_template")
        .unwrap();
    let template = template.as_str().unwrap().to_string();
    fs::create_dir_all(dir).unwrap();
    fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    fs::write(dir.join(CHAT_TEMPLATE_FILE), &template).unwrap();
    template
}

#[test]
fn a_transformers_5_model_renders_the_same_chat_as_a_transformers_4_one() {
    let temp = tempfile::tempdir().unwrap();
    let v4 = temp.path().join("v4");
    fs::create_dir_all(&v4).unwrap();
    fs::copy(qwen_tokenizer_config(), v4.join("tokenizer_config.json")).unwrap();
    let v5 = temp.path().join("v5");
    transformers5_layout(&v5);

    let expected = render_chat(&v4, "Hello").unwrap();
    assert!(
        expected.ends_with("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"),
        "{expected}"
    );
    assert_eq!(render_chat(&v5, "Hello").unwrap(), expected);
    assert_eq!(chat_template(&v5).unwrap().1, v5.join(CHAT_TEMPLATE_FILE));
}

#[test]
fn the_jinja_file_wins_over_the_config_field_as_in_transformers() {
    let temp = tempfile::tempdir().unwrap();
    fs::copy(
        qwen_tokenizer_config(),
        temp.path().join("tokenizer_config.json"),
    )
    .unwrap();
    fs::write(
        temp.path().join(CHAT_TEMPLATE_FILE),
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}",
    )
    .unwrap();
    assert_eq!(render_chat(temp.path(), "Hi").unwrap(), "[user] Hi");
}

#[test]
fn a_model_without_a_template_names_both_places_and_the_fix() {
    let temp = tempfile::tempdir().unwrap();
    fs::write(
        temp.path().join("tokenizer_config.json"),
        r#"{"eos_token": "<|endoftext|>"}"#,
    )
    .unwrap();
    let message = render_chat(temp.path(), "Hi").unwrap_err().to_string();
    for expected in [
        "tokenizer_config.json",
        "field `chat_template` is missing",
        CHAT_TEMPLATE_FILE,
        "run without --chat",
    ] {
        assert!(message.contains(expected), "{message}");
    }
}

#[test]
fn a_saved_student_keeps_the_template_file_of_its_source() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    transformers5_layout(&source);
    let (model, config) = load_model::<B>(&model_dir("student"), &Default::default()).unwrap();
    let saved = temp.path().join("saved");
    let options = SaveOptions {
        dtype: Dtype::F32,
        tokenizer_dir: Some(&source),
        generation: None,
    };
    save_model(&model, &config, &saved, &options).unwrap();
    assert_eq!(
        fs::read(saved.join(CHAT_TEMPLATE_FILE)).unwrap(),
        fs::read(source.join(CHAT_TEMPLATE_FILE)).unwrap()
    );
    assert_eq!(
        render_chat(&saved, "Hello").unwrap(),
        render_chat(&source, "Hello").unwrap()
    );
}
