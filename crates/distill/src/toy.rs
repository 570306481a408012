//! A tiny, self-contained distillation setup for tests and smoke runs: a byte-level tokenizer
//! (256 byte tokens + `<|endoftext|>`), a small random teacher and a smaller random student in
//! the Hugging Face layout, and token shards of a text written by the preprocess pipeline.
//! Nothing here is meant for real training; it exercises the real code paths in seconds.
//!
//! The teacher's weights are drawn with a larger spread than transformers' initialisation, so
//! that its next-token distributions are far from uniform and the student has something to
//! learn (with std 0.02 both models would predict almost uniformly and their KL would start
//! near 0).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use preprocess::{preprocess, PreprocessOptions};
use qwen2::{build_model, save_model, ModelConfig, RandomWeights, SaveOptions, WeightSource};
use serde_json::{json, Value};

use crate::error::TrainError;

/// The id of `<|endoftext|>` in the byte tokenizer (eos and padding).
pub const EOS_ID: u32 = 256;
/// Embedding rows of the toy models (the 257 ids rounded up to a multiple of 8).
pub const VOCAB_ROWS: usize = 264;

/// Where [`write_small_setup`] put things.
#[derive(Debug, Clone)]
pub struct SmallSetup {
    pub teacher: PathBuf,
    pub student: PathBuf,
    pub shards: PathBuf,
}

/// GPT-2's byte-to-character table, which byte-level BPE vocabularies are written in.
fn byte_characters() -> Vec<(u8, char)> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = printable.clone();
    let mut extra = 0;
    for byte in 0..256u32 {
        if !printable.contains(&byte) {
            printable.push(byte);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    printable
        .into_iter()
        .zip(chars)
        .map(|(byte, c)| (byte as u8, char::from_u32(c).expect("valid code point")))
        .collect()
}

/// `tokenizer.json` of a byte-level BPE without merges: token id = byte value, 256 = eos.
pub fn byte_tokenizer_json() -> Value {
    let vocab: serde_json::Map<String, Value> = byte_characters()
        .into_iter()
        .map(|(byte, c)| (c.to_string(), json!(byte)))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": EOS_ID, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": []
        }
    })
}

/// A Qwen2 shape over the byte vocabulary.
pub fn toy_config(hidden: usize, layers: usize, heads: usize) -> ModelConfig {
    ModelConfig {
        vocab_size: VOCAB_ROWS,
        hidden_size: hidden,
        intermediate_size: hidden * 2,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: (heads / 2).max(1),
        head_dim: hidden / heads,
        max_position_embeddings: 1024,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_ids: vec![EOS_ID],
        torch_dtype: "float32".into(),
        variant: qwen2::config::DecoderVariant::default(),
    }
}

/// transformers' initialisation with every non-norm weight multiplied by `factor`.
struct ScaledRandom {
    inner: RandomWeights,
    factor: f32,
}

impl WeightSource for ScaledRandom {
    fn tensor(&mut self, name: &str, shape: &[usize], transpose: bool) -> qwen2::Result<Vec<f32>> {
        let mut values = self.inner.tensor(name, shape, transpose)?;
        if !name.ends_with("norm.weight") {
            values.iter_mut().for_each(|v| *v *= self.factor);
        }
        Ok(values)
    }
}

/// Writes a random model of `config` with the byte tokenizer to `dir` (HF layout, float32).
pub fn write_random_model<B: Backend>(
    dir: &Path,
    config: &ModelConfig,
    seed: u64,
    weight_factor: f32,
    device: &B::Device,
) -> Result<(), TrainError> {
    let mut source = ScaledRandom {
        inner: RandomWeights::new(seed),
        factor: weight_factor,
    };
    let model = build_model::<B>(config, &mut source, device)?;
    let tokenizer_dir = dir.with_extension("tokenizer");
    write_file(
        &tokenizer_dir.join("tokenizer.json"),
        &serde_json::to_string(&byte_tokenizer_json()).expect("json"),
    )?;
    write_file(
        &tokenizer_dir.join("tokenizer_config.json"),
        r#"{"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "model_max_length": 1024}"#,
    )?;
    save_model(
        &model,
        config,
        dir,
        &SaveOptions {
            dtype: qwen2::safetensors::Dtype::F32,
            tokenizer_dir: Some(&tokenizer_dir),
            generation: None,
        },
    )?;
    std::fs::remove_dir_all(&tokenizer_dir).map_err(|source| TrainError::Io {
        path: tokenizer_dir,
        source,
    })
}

fn write_file(path: &Path, text: &str) -> Result<(), TrainError> {
    let io = |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, text).map_err(io)
}

/// Under `root`: `teacher/` (hidden 64, 2 layers, spread-out random weights), `student/`
/// (hidden 32, 2 layers, transformers' initialisation) and `shards/` (train and validation
/// splits of `train_text` / `valid_text`, blocks of `seq_len` byte tokens).
pub fn write_small_setup<B: Backend>(
    root: &Path,
    train_text: &str,
    valid_text: &str,
    seq_len: usize,
    device: &B::Device,
) -> Result<SmallSetup, TrainError> {
    let setup = SmallSetup {
        teacher: root.join("teacher"),
        student: root.join("student"),
        shards: root.join("shards"),
    };
    write_random_model::<B>(&setup.teacher, &toy_config(64, 2, 4), 1, 15.0, device)?;
    write_random_model::<B>(&setup.student, &toy_config(32, 2, 4), 2, 1.0, device)?;
    let text_dir = root.join("text");
    write_file(&text_dir.join("wiki.train.raw"), train_text)?;
    write_file(&text_dir.join("wiki.valid.raw"), valid_text)?;
    let mut options = PreprocessOptions::new(
        &setup.student,
        vec![text_dir.clone()],
        &setup.shards,
        seq_len,
    );
    options.force = true;
    preprocess(&options)?;
    Ok(setup)
}
