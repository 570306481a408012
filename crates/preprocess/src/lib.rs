//! WikiText -> packed Parquet token shards, and the reader the trainer uses on them.
//!
//! # What preprocessing does
//! 1. Finds the inputs ([`wikitext::discover_sources`]): raw `wiki.{train,valid,test}.raw` or the
//!    hub's `{train,validation,test}-*.parquet`, mapped to the splits train/validation/test.
//! 2. Streams each file line by line and cuts it into articles: a line ` = Title = ` starts one,
//!    ` = = Section = = ` does not ([`wikitext::ArticleSplitter`]). Nothing is dropped: the
//!    documents of a file concatenate back to the file.
//! 3. Tokenizes batches of articles on all cores with the model's tokenizer.json, **without
//!    special tokens** ([`tokenize`] explains why: the ids then mean the same to the DeepSeek
//!    teacher, whose tokenizer would prepend BOS 151646, and to the Qwen2.5 student).
//! 4. Packs the documents end to end, each followed by the eos id, into blocks of `seq_len`
//!    tokens; only a split's last block is padded ([`pack`]).
//! 5. Writes `<split>-NNNNN.parquet` shards with bounded row groups ([`shards`]) and a
//!    `manifest.json` ([`manifest`]) into a temporary directory renamed into place at the end.
//!
//! Runs are deterministic (same inputs, tokenizer and layout -> byte-identical files) and
//! idempotent (an up-to-date output is detected from its manifest and left alone).
//!
//! # Reading
//! [`ShardReader::open`]`(dir, split)` gives `len()`, random access [`ShardReader::block`],
//! sequential iteration, and [`shuffled_order`] / [`ShardReader::shuffled`] for a seeded,
//! resumable order.
//!
//! # Tokenizer compatibility
//! [`compat::check_distillation_tokenizers`] is what the distillation trainer calls first.

pub mod bench;
pub mod compat;
pub mod errors;
pub mod manifest;
mod model_files;
pub mod pack;
pub mod pipeline;
pub mod shards;
pub mod token_text;
pub mod tokenize;
pub mod wikitext;

pub use compat::{check_distillation_tokenizers, check_tokenizers, CompatReport, TokenizerCompat};
pub use errors::{PreprocessError, Result};
pub use manifest::Manifest;
pub use model_files::tokenizer_sha256;
pub use pack::Block;
pub use pipeline::{preprocess, PreprocessOptions, PreprocessOutcome};
pub use shards::{open_parquet_with_schema, shuffled_order, ShardReader};
pub use token_text::{SharedTokens, TokenText};
pub use tokenize::ModelTokenizer;
