//! Trains the small byte-level BPE tokenizer that the offline quickstart ships in
//! `data/tiny-tokenizer/` (the real Qwen2 vocabulary, 151,936 rows, would make the quickstart's
//! small models spend nearly all their time in the embedding and the softmax).
//!
//!     cargo run --release -p preprocess --example train_tokenizer -- \
//!         data/wikitext-2-raw/wiki.valid.raw data/tiny-tokenizer 4096
//!
//! Same family as Qwen2's tokenizer (byte-level BPE, `<|endoftext|>` as eos and pad), so the
//! preprocess, training and generation code paths are the ones the real models take.
//! The result is deterministic for a given input and vocabulary size.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

const EOS: &str = "<|endoftext|>";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, out_dir, vocab_size] = args.as_slice() else {
        bail!("usage: train_tokenizer INPUT_TEXT OUT_DIR VOCAB_SIZE");
    };
    let vocab_size: usize = vocab_size.parse().context("VOCAB_SIZE must be a number")?;
    let out_dir = PathBuf::from(out_dir);

    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from(EOS, true)])
        .build();
    let mut tokenizer = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, false)))
        .with_post_processor(Some(ByteLevel::new(false, true, false)))
        .with_decoder(Some(ByteLevelDecoder::new(false, true, false)))
        .build()
        .map_err(anyhow::Error::msg)?;
    tokenizer
        .train_from_files(&mut trainer, vec![input.clone()])
        .map_err(anyhow::Error::msg)?;
    let tokenizer: tokenizers::Tokenizer = tokenizer.into();

    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    tokenizer
        .save(out_dir.join("tokenizer.json"), true)
        .map_err(anyhow::Error::msg)?;
    let config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "pad_token": EOS,
        "bos_token": null,
        "add_bos_token": false,
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": false,
    });
    std::fs::write(
        out_dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&config)? + "\n",
    )?;
    println!(
        "{}: vocabulary of {} tokens",
        out_dir.display(),
        tokenizer.get_vocab_size(true)
    );
    Ok(())
}
