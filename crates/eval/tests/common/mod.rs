//! Shared by the evaluation tests: the transformers fixtures, and a tiny corpus turned into
//! token shards with a word-level tokenizer that fits the fixture models' 512-row vocabulary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use qwen2::AttentionMask;

pub type B = qwen2::backend::Cpu;

/// `tests/fixtures/qwen2-parity` at the workspace root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2-parity")
}

/// Reference tensors of a fixture safetensors file.
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(path: PathBuf) -> Self {
        Self {
            bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    fn view(&self, name: &str) -> safetensors::tensor::TensorView<'_> {
        safetensors::SafeTensors::deserialize(&self.bytes)
            .expect("fixture parses")
            .tensor(name)
            .unwrap_or_else(|_| panic!("fixture has no tensor {name}"))
    }

    pub fn scalar(&self, name: &str) -> f64 {
        let view = self.view(name);
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        f32::from_le_bytes(view.data()[..4].try_into().unwrap()) as f64
    }

    fn i64_rows(&self, name: &str) -> Vec<Vec<i64>> {
        let view = self.view(name);
        assert_eq!(view.dtype(), safetensors::Dtype::I64, "{name}");
        let width = view.shape()[1];
        let values: Vec<i64> = view
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        values.chunks(width).map(<[i64]>::to_vec).collect()
    }

    pub fn input_ids(&self) -> Vec<Vec<u32>> {
        self.i64_rows("input_ids")
            .into_iter()
            .map(|row| row.into_iter().map(|v| v as u32).collect())
            .collect()
    }

    pub fn mask(&self) -> AttentionMask {
        AttentionMask {
            rows: self
                .i64_rows("attention_mask")
                .into_iter()
                .map(|row| row.into_iter().map(|v| v != 0).collect())
                .collect(),
        }
    }
}

/// A few WikiText-shaped articles (spaces around punctuation, ` = Title = ` headings).
pub const CORPUS: &str = " = Valkyria Chronicles = \n\n The game began development in 2010 , carrying over a large portion of the work done on the first game . \n The story runs parallel to the first game and follows the Nameless , a penal military unit . \n\n = = Gameplay = = \n\n As with the previous games , the player controls a squad of soldiers across a map of the battlefield . \n The history of the city begins with a small fort on the river . \n\n = Tropical Storm Alpha = \n\n The storm formed in the Caribbean Sea and moved west across the islands . \n It brought heavy rain to the city and the river flooded the fort . \n The species is found in the forests of the islands and along the river . \n";

/// The eos id of the fixture models (their `<|endoftext|>` analogue).
pub const EOS_ID: u32 = 480;

/// A word-level tokenizer.json over the words of [`CORPUS`] (ids 1..), `<unk>` = 0 and
/// `<|endoftext|>` = 480, as the fixture README lays out its fake tokenizer.
pub fn word_tokenizer_json() -> String {
    let mut words: Vec<&str> = Vec::new();
    for word in CORPUS.split_whitespace() {
        if !words.contains(&word) {
            words.push(word);
        }
    }
    assert!(words.len() < 479, "the corpus must fit below the eos id");
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    for (index, word) in words.iter().enumerate() {
        vocab.insert(word.to_string(), (index + 1).into());
    }
    vocab.insert("<|endoftext|>".into(), EOS_ID.into());
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": EOS_ID, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

/// Copies fixture model `name` into `root/name` with the word tokenizer added.
pub fn model_with_tokenizer(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join(name).join(file), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("tokenizer.json"), word_tokenizer_json()).unwrap();
    dir
}

/// Token shards of [`CORPUS`] as the test split, blocks of `seq_len`, made by the preprocess
/// crate with the tokenizer of `model_dir`.
pub fn tiny_shards(root: &Path, model_dir: &Path, seq_len: usize) -> PathBuf {
    let raw = root.join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    std::fs::write(raw.join("wiki.test.raw"), CORPUS).unwrap();
    let out = root.join("shards");
    let options = preprocess::PreprocessOptions::new(model_dir, vec![raw], &out, seq_len);
    preprocess::preprocess(&options).expect("preprocess the tiny corpus");
    out
}
