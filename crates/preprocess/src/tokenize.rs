//! Loading a model's tokenizer (with the special ids its config files name) and encoding text
//! on all cores.
//!
//! Text is always encoded **without** special tokens. The DeepSeek-R1-Distill tokenizer's
//! post-processor prepends BOS 151646 to every encoding and Qwen2.5's adds nothing; the BPE
//! below the added tokens is the same. Encoding without special tokens therefore gives ids that
//! mean the same text to teacher and student, so one set of shards serves both. Documents are
//! separated by the eos token instead (see `pack`), and the manifest records which BOS, if any,
//! the tokenizer would have added so a consumer can decide to prepend it.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::errors::{PreprocessError, Result};
use crate::model_files::ModelFiles;

/// A model directory's tokenizer and the special ids preprocessing needs.
pub struct ModelTokenizer {
    /// The model directory it was loaded from.
    pub dir: PathBuf,
    /// The tokenizer, set to encode special-token strings found in the text as plain text.
    pub tokenizer: Tokenizer,
    /// sha256 of tokenizer.json, hex.
    pub tokenizer_sha256: String,
    /// sha256 of config.json, hex, when the directory has one.
    pub config_sha256: Option<String>,
    /// Ids the tokenizer knows, added tokens included (151,665 for Qwen2).
    pub vocab_size: usize,
    /// `vocab_size` of config.json: the embedding rows, usually padded past `vocab_size`.
    pub config_vocab_size: Option<usize>,
    /// The end-of-sequence id, put between documents.
    pub eos_id: u32,
    pub eos_token: String,
    /// The id that fills the unused tail of the last block.
    pub pad_id: u32,
    /// The id the tokenizer's post-processor prepends when asked for special tokens, if any.
    pub bos_added: Option<u32>,
    /// The id it appends, if any (none of the Qwen2 family's do).
    pub eos_added: Option<u32>,
}

/// A token's text in tokenizer_config.json: either `"<s>"` or `{"content": "<s>", ...}`.
fn token_content(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        Value::Object(map) => map.get("content").and_then(Value::as_str),
        _ => None,
    }
}

/// The ids a tokenizer adds around a text when asked for special tokens: `(prefix, suffix)`.
pub(crate) fn added_special_ids(tokenizer: &Tokenizer) -> Result<(Option<u32>, Option<u32>)> {
    let probe = "Hello world";
    let encode = |special| {
        tokenizer
            .encode(probe, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|err| PreprocessError::Encode {
                path: PathBuf::from("<probe>"),
                message: err.to_string(),
            })
    };
    let plain = encode(false)?;
    let with_special = encode(true)?;
    if with_special == plain {
        return Ok((None, None));
    }
    // Locate the plain ids inside the special encoding; what lies before is the prefix.
    let start = with_special
        .windows(plain.len())
        .position(|w| w == plain.as_slice());
    Ok(match start {
        Some(start) => (
            with_special[..start].first().copied(),
            with_special[start + plain.len()..].last().copied(),
        ),
        None => (with_special.first().copied(), None),
    })
}

impl ModelTokenizer {
    /// Loads `dir/tokenizer.json` and takes eos from `config.json` (`eos_token_id`, a number or
    /// a list whose first entry counts), falling back to `tokenizer_config.json`'s `eos_token`.
    /// Padding uses `tokenizer_config.json`'s `pad_token` when it names a known token, else eos.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let ModelFiles {
            mut tokenizer,
            tokenizer_sha256,
            config,
            config_sha256,
            tokenizer_config,
            ..
        } = ModelFiles::read(dir)?;
        // WikiText could in principle contain a literal "<|endoftext|>"; it is text, not a
        // document boundary, so it must not turn into the special id.
        tokenizer.set_encode_special_tokens(true);
        let vocab_size = tokenizer.get_vocab_size(true);
        let known = |id: u32| tokenizer.id_to_token(id).is_some();

        let config_vocab_size = config
            .as_ref()
            .and_then(|c| c.get("vocab_size"))
            .and_then(Value::as_u64)
            .map(|v| v as usize);
        let config_eos = config
            .as_ref()
            .and_then(|c| c.get("eos_token_id"))
            .and_then(|v| match v {
                Value::Array(ids) => ids.first().and_then(Value::as_u64),
                other => other.as_u64(),
            });
        let named_token_id = |key: &str| {
            tokenizer_config
                .as_ref()
                .and_then(|c| c.get(key))
                .and_then(token_content)
                .and_then(|token| tokenizer.token_to_id(token))
        };
        let eos_id = config_eos
            .and_then(|id| u32::try_from(id).ok())
            .filter(|&id| known(id))
            .or_else(|| named_token_id("eos_token"))
            .ok_or_else(|| PreprocessError::NoEosToken {
                dir: dir.to_path_buf(),
            })?;
        let eos_token = tokenizer.id_to_token(eos_id).unwrap_or_default();
        let pad_id = named_token_id("pad_token").unwrap_or(eos_id);
        let (bos_added, eos_added) = added_special_ids(&tokenizer)?;

        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer,
            tokenizer_sha256,
            config_sha256,
            vocab_size,
            config_vocab_size,
            eos_id,
            eos_token,
            pad_id,
            bos_added,
            eos_added,
        })
    }

    /// Encodes one text without special tokens. `source` only labels errors.
    pub fn encode_text(&self, text: &str, source: &Path) -> Result<Vec<u32>> {
        let encoding =
            self.tokenizer
                .encode_fast(text, false)
                .map_err(|err| PreprocessError::Encode {
                    path: source.to_path_buf(),
                    message: err.to_string(),
                })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Encodes a batch of texts on the rayon pool, keeping their order.
    ///
    /// Each worker keeps only the ids of its text (the full `Encoding`, with offsets and token
    /// strings, is dropped at once), so memory stays near the size of the batch's text.
    pub fn encode_many<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        source: &Path,
    ) -> Result<Vec<Vec<u32>>> {
        texts
            .par_iter()
            .map(|text| self.encode_text(text.as_ref(), source))
            .collect()
    }
}
