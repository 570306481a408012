//! A GGUF file is a model: the fixtures of tests/fixtures/gguf (made by its make_fixtures.py
//! with the `gguf` package and transformers 5.25) load to transformers' logits, import to the
//! Hugging Face layout and export back to llama.cpp's layout tensor for tensor, and the real
//! Qwen2.5-Coder tokenizer (metadata of the published GGUF) encodes WikiText-2 test exactly as
//! transformers' GGUF tokenizer does.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use common::*;
use gguf::{GgufFile, Value};
use qwen2::gguf::{export_gguf, import_gguf, GgufOptions};
use qwen2::safetensors::Dtype;
use qwen2::tokenizer::Tokenizer;
use qwen2::{load_model, AttentionMask, ModelConfig};

const LOGIT_TOLERANCE: f32 = 1e-4;

fn gguf_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/gguf")
        .join(name)
}

fn logits_of<Bk: Backend>(model_path: &Path, rows: &[Vec<u32>]) -> Vec<f32> {
    let (model, _) = load_model::<Bk>(model_path, &Default::default()).unwrap();
    let mask = AttentionMask {
        rows: rows.iter().map(|r| vec![true; r.len()]).collect(),
    };
    to_vec(model.forward(ids_tensor(rows), &mask, false).logits)
}

fn gguf_models_give_transformers_logits<Bk: Backend>() {
    for name in [
        "tiny-teacher-f32",
        "tiny-teacher-f16",
        "tiny-teacher-q8_0",
        "tiny-student-f32",
        "tiny-student-tied-output",
    ] {
        let reference = Reference::open(gguf_fixture(&format!("{name}.expected.safetensors")));
        let rows = reference.rows("input_ids");
        let logits = logits_of::<Bk>(&gguf_fixture(&format!("{name}.gguf")), &rows);
        let error = max_abs_diff(&logits, &reference.f32("logits"));
        assert!(error < LOGIT_TOLERANCE, "{name}: logits differ by {error}");
    }
}

qwen2::on_every_cpu_backend!(gguf_models_give_transformers_logits);

#[test]
fn config_comes_from_the_metadata_and_a_duplicated_output_is_tied() {
    let teacher = ModelConfig::from_file(&gguf_fixture("tiny-teacher-q8_0.gguf")).unwrap();
    let parity = ModelConfig::from_file(&model_dir("teacher")).unwrap();
    assert_eq!(teacher.hidden_size, parity.hidden_size);
    assert_eq!(teacher.num_key_value_heads, parity.num_key_value_heads);
    assert_eq!(teacher.rope_theta, parity.rope_theta);
    assert_eq!(teacher.vocab_size, parity.vocab_size);
    assert!(
        !teacher.tie_word_embeddings,
        "its output differs from its embedding"
    );
    let tied = ModelConfig::from_file(&gguf_fixture("tiny-student-tied-output.gguf")).unwrap();
    assert!(
        tied.tie_word_embeddings,
        "output.weight equals token_embd.weight"
    );
    let file = GgufFile::open(&gguf_fixture("tiny-student-tied-output.gguf")).unwrap();
    assert!(
        !ModelConfig::from_gguf(&file, true)
            .unwrap()
            .tie_word_embeddings
    );
}

#[test]
fn import_writes_the_hugging_face_layout_with_the_same_values() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("imported");
    let source = gguf_fixture("tiny-teacher-q8_0.gguf");
    let summary = import_gguf(&source, &dir, Dtype::F32, GgufOptions::default()).unwrap();
    assert!(
        summary.description.contains("Q8_0"),
        "{}",
        summary.description
    );
    for file in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let reference = Reference::open(gguf_fixture("tiny-teacher-q8_0.expected.safetensors"));
    let rows = reference.rows("input_ids");
    // f32 keeps every dequantized value: the folder computes what the GGUF computes.
    assert_eq!(logits_of::<B>(&dir, &rows), logits_of::<B>(&source, &rows));
    // The tokenizer files encode as the GGUF's own tokenizer does.
    let text = "Hello world <|im_start|>user\n 12345";
    assert_eq!(
        Tokenizer::from_dir(&dir)
            .unwrap()
            .encode(text, true)
            .unwrap(),
        Tokenizer::from_dir(&source)
            .unwrap()
            .encode(text, true)
            .unwrap()
    );
}

#[test]
fn export_writes_llama_cpp_layout_tensor_for_tensor() {
    let out = tempfile::tempdir().unwrap();
    // A folder with a tokenizer: the tiny teacher imported from its f32 GGUF.
    let dir = out.path().join("teacher");
    let source = gguf_fixture("tiny-teacher-f32.gguf");
    import_gguf(&source, &dir, Dtype::F32, GgufOptions::default()).unwrap();
    for (kind, reference) in [
        (gguf::GgmlType::F32, "tiny-teacher-f32.gguf"),
        (gguf::GgmlType::F16, "tiny-teacher-f16.gguf"),
        (gguf::GgmlType::Q8_0, "tiny-teacher-q8_0.gguf"),
    ] {
        let path = out.path().join(format!("teacher-{}.gguf", kind.name()));
        export_gguf(&dir, &path, kind, "teacher").unwrap();
        let ours = GgufFile::open(&path).unwrap();
        let theirs = GgufFile::open(&gguf_fixture(reference)).unwrap();
        // Every tensor of llama.cpp's converter, same type, same bytes (gguf-py quantized them).
        let mut names: Vec<&str> = theirs.tensors().iter().map(|t| t.name.as_str()).collect();
        let mut our_names: Vec<&str> = ours.tensors().iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        our_names.sort_unstable();
        assert_eq!(our_names, names, "{reference}");
        for name in names {
            assert_eq!(
                ours.raw_bytes(name).unwrap(),
                theirs.raw_bytes(name).unwrap(),
                "{reference}: {name}"
            );
        }
        for key in [
            "general.architecture",
            "general.file_type",
            "qwen2.block_count",
            "qwen2.embedding_length",
            "qwen2.feed_forward_length",
            "qwen2.attention.head_count",
            "qwen2.attention.head_count_kv",
            "qwen2.rope.freq_base",
            "qwen2.attention.layer_norm_rms_epsilon",
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.chat_template",
        ] {
            assert_eq!(ours.get(key), theirs.get(key), "{reference}: {key}");
        }
    }
}

#[test]
fn the_qwen2_tokenizer_encodes_wikitext_as_transformers_gguf_tokenizer() {
    let expected: serde_json::Value = serde_json::from_slice(
        &std::fs::read(gguf_fixture("qwen2-tokenizer.expected.json")).unwrap(),
    )
    .unwrap();
    let tokenizer = Tokenizer::from_dir(&gguf_fixture("qwen2-tokenizer.gguf")).unwrap();
    let wikitext = &expected["wikitext_test"];
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/wikitext-2-raw/wiki.test.raw"),
    )
    .unwrap();
    assert_eq!(
        fsio::sha256_hex(text.as_bytes()),
        wikitext["file_sha256"].as_str().unwrap()
    );
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let counts = wikitext["per_line_counts"].as_array().unwrap();
    assert_eq!(lines.len(), counts.len());
    let mut all = Vec::new();
    for (index, (line, count)) in lines.iter().zip(counts).enumerate() {
        let ids = tokenizer.encode(line, true).unwrap();
        assert_eq!(
            ids.len() as u64,
            count.as_u64().unwrap(),
            "line {index}: {line:?}"
        );
        all.extend(ids);
    }
    assert_eq!(all.len() as u64, wikitext["total_tokens"].as_u64().unwrap());
    let bytes: Vec<u8> = all.iter().flat_map(|id| id.to_le_bytes()).collect();
    assert_eq!(
        fsio::sha256_hex(&bytes),
        wikitext["ids_sha256_le_u32"].as_str().unwrap()
    );

    for sample in expected["samples"].as_array().unwrap() {
        let text = sample["text"].as_str().unwrap();
        let ids: Vec<u32> = sample["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tokenizer.encode(text, true).unwrap(), ids, "{text:?}");
        assert_eq!(
            tokenizer.decode(&ids, false).unwrap(),
            sample["decode"].as_str().unwrap(),
            "{text:?}"
        );
        assert_eq!(
            tokenizer.decode(&ids, true).unwrap(),
            sample["decode_skip_special"].as_str().unwrap(),
            "{text:?} (special tokens skipped)"
        );
    }
    let chat = &expected["chat_example"];
    let ids: Vec<u32> = chat["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        tokenizer
            .encode(chat["text"].as_str().unwrap(), true)
            .unwrap(),
        ids
    );
    let (template, _) =
        qwen2::tokenizer::chat_template(&gguf_fixture("qwen2-tokenizer.gguf")).unwrap();
    assert_eq!(template, expected["chat_template"].as_str().unwrap());
}

/// A copy of a fixture with one metadata value replaced (written with the crate's writer).
fn with_metadata(source: &str, key: &str, value: Value, dir: &Path) -> PathBuf {
    let file = GgufFile::open(&gguf_fixture(source)).unwrap();
    let metadata: Vec<(String, Value)> = file
        .metadata()
        .map(|(k, v)| {
            (
                k.to_string(),
                if k == key { value.clone() } else { v.clone() },
            )
        })
        .collect();
    let tensors = file
        .tensors()
        .iter()
        .map(|t| {
            let name = t.name.clone();
            let shape = t.shape();
            let file = &file;
            gguf::TensorToWrite {
                name: name.clone(),
                shape: shape.clone(),
                kind: gguf::GgmlType::F32,
                values: Box::new(move || file.read_f32(&name, &shape).unwrap()),
            }
        })
        .collect();
    let path = dir.join(format!("{}.gguf", key.replace('.', "-")));
    gguf::write_gguf(&path, &metadata, tensors).unwrap();
    path
}

#[test]
fn bad_gguf_models_are_refused_naming_the_key_and_what_works() {
    let dir = tempfile::tempdir().unwrap();
    let llama = with_metadata(
        "tiny-student-f32.gguf",
        "general.architecture",
        Value::String("llama".into()),
        dir.path(),
    );
    let message = ModelConfig::from_file(&llama).unwrap_err().to_string();
    assert!(
        message.contains("general.architecture") && message.contains("qwen2"),
        "{message}"
    );

    let wrong_width = with_metadata(
        "tiny-student-f32.gguf",
        "qwen2.feed_forward_length",
        Value::U32(100),
        dir.path(),
    );
    let message = ModelConfig::from_file(&wrong_width)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("ffn_gate.weight") && message.contains("100"),
        "{message}"
    );

    let not_bpe = with_metadata(
        "tiny-student-f32.gguf",
        "tokenizer.ggml.model",
        Value::String("llama".into()),
        dir.path(),
    );
    let message = Tokenizer::from_dir(&not_bpe).err().unwrap().to_string();
    assert!(
        message.contains("tokenizer.ggml.model") && message.contains("BPE"),
        "{message}"
    );
}
