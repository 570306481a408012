//! Loading and saving checkpoints: both config styles, save-then-load identity, bf16 saving,
//! and every kind of bad input giving an error that names the file and the fix.

mod common;

use std::path::Path;

use common::*;
use qwen2::safetensors::{write_safetensors, Dtype, TensorToWrite};
use qwen2::save::SaveOptions;
use qwen2::{load_model, save_model, ModelConfig, ModelError};
use serde_json::{json, Value};

fn copy_model(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for file in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
}

fn logits_of(dir: &Path) -> Vec<f32> {
    let (model, _) = load_model::<B>(dir, &Default::default()).unwrap();
    let reference = Reference::open(model_dir("teacher").join("reference.safetensors"));
    let rows = reference.rows("input_ids");
    let mask = reference.mask();
    let vocab = model.vocab_size();
    let logits = to_vec(model.forward(ids_tensor(&rows), &mask, false).logits);
    // Real positions only: what a pad query sees is not part of the contract.
    let real: Vec<bool> = mask.rows.iter().flatten().copied().collect();
    logits
        .chunks(vocab)
        .zip(real)
        .filter(|(_, r)| *r)
        .flat_map(|(row, _)| row.to_vec())
        .collect()
}

/// Same weights give the same logits; the bound only allows for the summation order of
/// multi-threaded matmuls, which depends on how many tests run at once.
fn assert_same_logits(actual: &[f32], expected: &[f32]) {
    let error = max_abs_diff(actual, expected);
    assert!(error < 1e-6, "logits differ by {error}");
}

fn read_config(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

fn write_config(dir: &Path, config: &Value) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(config).unwrap(),
    )
    .unwrap();
}

fn load_error(dir: &Path) -> String {
    match load_model::<B>(dir, &Default::default()) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(error) => error.to_string(),
    }
}

#[test]
fn both_config_styles_load_to_the_same_model() {
    let v4 = ModelConfig::from_file(&model_dir("teacher")).unwrap();
    assert_eq!(v4.rope_theta, 10000.0, "integer rope_theta is read");
    assert_eq!(v4.torch_dtype, "bfloat16");

    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("teacher-v5");
    copy_model(&model_dir("teacher"), &dir);
    let mut config = read_config(&dir);
    let object = config.as_object_mut().unwrap();
    let theta = object.remove("rope_theta").unwrap();
    let dtype = object.remove("torch_dtype").unwrap();
    object.insert(
        "rope_parameters".into(),
        json!({"rope_theta": theta, "rope_type": "default"}),
    );
    object.insert("dtype".into(), dtype);
    object.insert("sliding_window".into(), Value::Null);
    object.insert("layer_types".into(), json!(vec!["full_attention"; 4]));
    write_config(&dir, &config);

    assert_eq!(ModelConfig::from_file(&dir).unwrap(), v4);
    assert_same_logits(&logits_of(&dir), &logits_of(&model_dir("teacher")));
}

#[test]
fn save_then_load_is_bit_identical_and_bf16_keeps_a_bf16_source_exact() {
    let temp = tempfile::tempdir().unwrap();
    for (name, dtype) in [
        ("student", Dtype::F32),
        ("teacher", Dtype::BF16),
        ("teacher", Dtype::F32),
    ] {
        let (model, config) = load_model::<B>(&model_dir(name), &Default::default()).unwrap();
        let out = temp.path().join(format!("{name}-{}", dtype.name()));
        let options = SaveOptions {
            dtype,
            tokenizer_dir: None,
            generation: None,
        };
        save_model(&model, &config, &out, &options).unwrap();
        for file in ["config.json", "generation_config.json", "model.safetensors"] {
            assert!(out.join(file).exists(), "{file} written");
        }
        let (reloaded, reloaded_config) = load_model::<B>(&out, &Default::default()).unwrap();
        assert_eq!(reloaded_config.torch_dtype, dtype.torch_name());
        let original: Vec<_> = model
            .named_tensors()
            .iter()
            .map(|t| (t.name().to_string(), t.hf_values()))
            .collect();
        let again: Vec<_> = reloaded
            .named_tensors()
            .iter()
            .map(|t| (t.name().to_string(), t.hf_values()))
            .collect();
        assert_eq!(
            original,
            again,
            "{name} saved as {} reloads bit-identically",
            dtype.name()
        );
    }
    // The teacher is bf16 on disk, so saving it in bf16 loses nothing: same logits exactly.
    assert_same_logits(
        &logits_of(&temp.path().join("teacher-BF16")),
        &logits_of(&model_dir("teacher")),
    );
}

#[test]
fn saved_tensor_names_are_exactly_the_checkpoints() {
    let temp = tempfile::tempdir().unwrap();
    for name in ["teacher", "student"] {
        let (model, config) = load_model::<B>(&model_dir(name), &Default::default()).unwrap();
        let out = temp.path().join(name);
        save_model(
            &model,
            &config,
            &out,
            &SaveOptions {
                dtype: Dtype::F32,
                tokenizer_dir: None,
                generation: None,
            },
        )
        .unwrap();
        let names = |dir: &Path| {
            let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
            let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut names: Vec<(String, Vec<usize>)> = tensors
                .tensors()
                .into_iter()
                .map(|(n, v)| (n, v.shape().to_vec()))
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            names(&out),
            names(&model_dir(name)),
            "{name}: names and shapes"
        );
    }
}

/// Llama and Qwen3 models save to the files they were loaded from (names, shapes, values and
/// the config's switches), so transformers reloads them as the same architecture.
#[test]
fn llama_and_qwen3_save_then_load_bit_identically() {
    let temp = tempfile::tempdir().unwrap();
    for name in ["llama", "llama_bias", "qwen3"] {
        let source = fixtures().join("../families").join(name);
        let (model, config) = load_model::<B>(&source, &Default::default()).unwrap();
        let out = temp.path().join(name);
        let options = SaveOptions {
            dtype: Dtype::F32,
            tokenizer_dir: None,
            generation: None,
        };
        save_model(&model, &config, &out, &options).unwrap();
        let reloaded_config = ModelConfig::from_file(&out).unwrap();
        assert_eq!(reloaded_config.variant, config.variant, "{name}: switches");
        assert_eq!(
            reloaded_config.head_dim, config.head_dim,
            "{name}: head_dim"
        );
        let written = read_config(&out);
        let original = read_config(&source);
        for key in [
            "model_type",
            "architectures",
            "tie_word_embeddings",
            "head_dim",
        ] {
            assert_eq!(written[key], original[key], "{name}: {key}");
        }
        let tensors = |dir: &Path| {
            let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
            let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut all: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
                .tensors()
                .into_iter()
                .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
                .collect();
            all.sort();
            all
        };
        assert_eq!(tensors(&out), tensors(&source), "{name}: tensors");
    }
}

#[test]
fn contradicting_or_unsupported_rope_and_head_fields_are_named() {
    let temp = tempfile::tempdir().unwrap();
    let source = fixtures().join("../families/llama");
    let cases: [(&str, Value, &str); 4] = [
        (
            "rope_parameters",
            json!({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}),
            "rope_parameters.low_freq_factor",
        ),
        (
            "rope_parameters",
            json!({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}),
            "rope_parameters.rope_type",
        ),
        ("head_dim", json!(31), "head_dim"),
        ("head_dim", Value::Null, "num_attention_heads"),
    ];
    for (index, (field, value, named)) in cases.into_iter().enumerate() {
        let dir = temp.path().join(format!("case-{index}"));
        copy_model(&source, &dir);
        let mut config = read_config(&dir);
        config[field] = value;
        if named == "num_attention_heads" {
            config["num_attention_heads"] = json!(3);
            config["num_key_value_heads"] = json!(1);
        }
        write_config(&dir, &config);
        let error = load_error(&dir);
        assert!(
            error.contains(&format!("`{named}`")) || error.contains(named),
            "{field}: {error}"
        );
        assert!(error.contains("config.json"), "{error}");
    }
}

/// A real Llama 3.2 config.json (transformers 4.x style: `rope_scaling` beside `rope_theta`)
/// and a Qwen3 one read to the switches they describe.
#[test]
fn published_llama_and_qwen3_configs_read_to_their_switches() {
    use qwen2::config::{Architecture, RopeScaling};
    let llama = json!({
        "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 128000,
        "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
        "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
        "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
        "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
        "vocab_size": 128256
    });
    let config = ModelConfig::from_json(&llama, Path::new("Llama-3.2-1B/config.json")).unwrap();
    assert_eq!(config.variant.architecture, Architecture::Llama);
    assert!(!config.variant.qkv_bias && !config.variant.qk_norm);
    assert_eq!(
        config.variant.rope_scaling,
        RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192
        }
    );
    assert_eq!(
        config.num_parameters(),
        1_235_814_400,
        "Llama-3.2-1B's published count"
    );

    let qwen3 = json!({
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "bos_token_id": 151643,
        "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
        "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28,
        "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": null,
        "rope_theta": 1000000, "sliding_window": null, "tie_word_embeddings": true,
        "torch_dtype": "bfloat16", "use_sliding_window": false, "vocab_size": 151936
    });
    let config = ModelConfig::from_json(&qwen3, Path::new("Qwen3-0.6B/config.json")).unwrap();
    assert_eq!(config.variant.architecture, Architecture::Qwen3);
    assert!(config.variant.qk_norm && !config.variant.qkv_bias);
    assert_eq!(config.head_dim, 128);
    assert_eq!(
        config.num_parameters(),
        596_049_920,
        "Qwen3-0.6B's published count"
    );
}

#[test]
fn missing_config_and_malformed_json_are_named() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("empty");
    std::fs::create_dir_all(&dir).unwrap();
    let error = load_error(&dir);
    assert!(
        error.contains("config.json") && error.contains("cargo xtask download"),
        "{error}"
    );

    copy_model(&model_dir("student"), &dir);
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"qwen2\",").unwrap();
    let error = load_error(&dir);
    assert!(
        error.contains("config.json") && error.contains("malformed JSON"),
        "{error}"
    );
}

#[test]
fn unsupported_configs_are_refused_naming_the_field() {
    let temp = tempfile::tempdir().unwrap();
    let cases: [(&str, Value, &str); 4] = [
        ("model_type", json!("mistral"), "model_type"),
        ("use_sliding_window", json!(true), "use_sliding_window"),
        (
            "rope_scaling",
            json!({"rope_type": "yarn", "factor": 4.0}),
            "rope_scaling.rope_type",
        ),
        ("num_key_value_heads", json!(3), "num_key_value_heads"),
    ];
    for (field, value, named) in cases {
        let dir = temp.path().join(field);
        copy_model(&model_dir("student"), &dir);
        let mut config = read_config(&dir);
        config[field] = value;
        write_config(&dir, &config);
        let error = load_error(&dir);
        assert!(
            error.contains("config.json") && error.contains(named),
            "{field}: {error}"
        );
    }
}

/// Writes the student's tensors to `dir/model.safetensors` after `edit` changed the list.
fn write_student_with(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) {
    copy_model(&model_dir("student"), dir);
    let (model, _) = load_model::<B>(&model_dir("student"), &Default::default()).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = model
        .named_tensors()
        .iter()
        .map(|t| (t.name().to_string(), t.hf_shape(), t.hf_values()))
        .collect();
    edit(&mut tensors);
    let to_write = tensors
        .into_iter()
        .map(|(name, shape, values)| TensorToWrite {
            name,
            shape,
            values: Box::new(move || values),
        })
        .collect();
    write_safetensors(&dir.join("model.safetensors"), to_write, Dtype::F32).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("missing");
    write_student_with(&dir, |tensors| {
        tensors.retain(|t| t.0 != "model.layers.1.mlp.up_proj.weight")
    });
    let error = load_error(&dir);
    assert!(
        error.contains("model.safetensors") && error.contains("model.layers.1.mlp.up_proj.weight"),
        "{error}"
    );
}

#[test]
fn wrong_shape_names_tensor_expected_and_found() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("shape");
    write_student_with(&dir, |tensors| {
        let bias = tensors
            .iter_mut()
            .find(|t| t.0 == "model.layers.0.self_attn.k_proj.bias")
            .unwrap();
        bias.1 = vec![16];
        bias.2.truncate(16);
    });
    let error = load_error(&dir);
    assert!(
        error.contains("model.layers.0.self_attn.k_proj.bias")
            && error.contains("[16]")
            && error.contains("[32]"),
        "{error}"
    );
}

#[test]
fn truncated_safetensors_is_reported_not_read() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("truncated");
    copy_model(&model_dir("student"), &dir);
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for keep in [4, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let error = load_error(&dir);
        assert!(
            error.contains("model.safetensors") && error.contains("re-download"),
            "{keep}: {error}"
        );
    }
}

/// Rewrites a safetensors file's JSON header in place, keeping its data bytes.
fn rewrite_header(path: &Path, edit: impl FnOnce(&mut Value)) {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    edit(&mut header);
    let mut new_header = serde_json::to_vec(&header).unwrap();
    while !(8 + new_header.len()).is_multiple_of(8) {
        new_header.push(b' ');
    }
    let mut rewritten = (new_header.len() as u64).to_le_bytes().to_vec();
    rewritten.extend_from_slice(&new_header);
    rewritten.extend_from_slice(&bytes[8 + header_len..]);
    std::fs::write(path, rewritten).unwrap();
}

/// The tensor whose data starts last (so shifting it breaks nothing but its own range).
fn last_tensor(header: &Value) -> (String, u64, u64) {
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .map(|(name, info)| {
            let offsets = &info["data_offsets"];
            (
                name.clone(),
                offsets[0].as_u64().unwrap(),
                offsets[1].as_u64().unwrap(),
            )
        })
        .max_by_key(|(_, start, _)| *start)
        .unwrap()
}

#[test]
fn overlapping_gapped_or_missized_offsets_are_refused_naming_the_file_and_tensor() {
    let temp = tempfile::tempdir().unwrap();
    let overlap = |start: u64, end: u64| json!([start - 4, end - 4]);
    let gap = |start: u64, end: u64| json!([start + 4, end + 4]);
    for (case, offsets) in [("overlap", overlap as fn(u64, u64) -> Value), ("gap", gap)] {
        let dir = temp.path().join(case);
        copy_model(&model_dir("student"), &dir);
        let mut shifted = String::new();
        rewrite_header(&dir.join("model.safetensors"), |header| {
            let (name, start, end) = last_tensor(header);
            header[&name]["data_offsets"] = offsets(start, end);
            shifted = name;
        });
        let error = load_error(&dir);
        for expected in [
            "model.safetensors",
            shifted.as_str(),
            "without overlap or gap",
            "re-download",
        ] {
            assert!(error.contains(expected), "{case}: {error}");
        }
    }

    // A range that is not dtype x shape bytes long.
    let dir = temp.path().join("size");
    copy_model(&model_dir("student"), &dir);
    rewrite_header(&dir.join("model.safetensors"), |header| {
        let (name, _, _) = last_tensor(header);
        let shape = header[&name]["shape"].as_array_mut().unwrap();
        let first = shape[0].as_u64().unwrap();
        shape[0] = json!(first + 1);
    });
    let error = load_error(&dir);
    assert!(
        error.contains("model.safetensors") && error.contains("dtype x shape"),
        "{error}"
    );

    // Bytes after the last tensor: the header does not describe the file.
    let dir = temp.path().join("trailing");
    copy_model(&model_dir("student"), &dir);
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0; 16]);
    std::fs::write(&path, bytes).unwrap();
    let error = load_error(&dir);
    assert!(error.contains("trailing bytes"), "{error}");
}

#[test]
fn unreadable_dtype_is_an_error_not_an_abort() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("dtype");
    copy_model(&model_dir("student"), &dir);
    // Re-label one tensor as I32 (same byte size as F32): the loader must refuse it by name.
    rewrite_header(&dir.join("model.safetensors"), |header| {
        header["model.norm.weight"]["dtype"] = json!("I32");
    });
    let error = load_error(&dir);
    assert!(
        error.contains("model.norm.weight") && error.contains("I32"),
        "{error}"
    );
}

#[test]
fn sharded_checkpoints_load() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("sharded");
    copy_model(&model_dir("teacher"), &dir);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let (model, _) = load_model::<B>(&model_dir("teacher"), &Default::default()).unwrap();
    let tensors = model.named_tensors();
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let to_write = part
            .iter()
            .map(|t| {
                weight_map.insert(t.name().to_string(), json!(shard));
                let values = t.hf_values();
                TensorToWrite {
                    name: t.name().to_string(),
                    shape: t.hf_shape(),
                    values: Box::new(move || values),
                }
            })
            .collect();
        write_safetensors(&dir.join(shard), to_write, Dtype::BF16).unwrap();
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec(&json!({"metadata": {}, "weight_map": weight_map})).unwrap(),
    )
    .unwrap();
    assert_same_logits(&logits_of(&dir), &logits_of(&model_dir("teacher")));
}

#[test]
fn error_type_is_typed() {
    let error = ModelConfig::from_json(&json!({"model_type": "qwen2"}), Path::new("x/config.json"))
        .unwrap_err();
    assert!(matches!(error, ModelError::Config { .. }));
}
