//! The text each token id stands for, as bytes, and the tokens two vocabularies spell the
//! same: what distillation across tokenizers reads (crates/distill/src/cross_tokenizer).
//!
//! Bytes are exact for the two tokenizer kinds that small causal LMs use:
//! - byte-level BPE (GPT-2, Qwen2/3, Llama 3, SmolLM2): every character of a token's string is
//!   one byte through GPT-2's `bytes_to_unicode` table;
//! - SentencePiece-style BPE (Llama 2, TinyLlama, Mistral): `▁` is a space and `<0xHH>` (byte
//!   fallback) the byte HH; other characters are their UTF-8.
//!
//! Special tokens (added tokens marked special: end-of-text, chat roles) stand for no text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::errors::{PreprocessError, Result};
use crate::model_files::ModelFiles;

/// How a tokenizer's token strings spell bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spelling {
    ByteLevel,
    SentencePiece,
}

/// A tokenizer with the bytes of every id.
pub struct TokenText {
    dir: PathBuf,
    tokenizer: Tokenizer,
    /// `bytes[id]`: the text of `id`; `None` for special tokens.
    bytes: Vec<Option<Vec<u8>>>,
    /// Every token string (added tokens included) with its id.
    vocabulary: HashMap<String, u32>,
    unknown: Option<u32>,
}

impl TokenText {
    /// The tokenizer of the model at `dir` (a folder or a GGUF file).
    pub fn load(dir: &Path) -> Result<Self> {
        let files = ModelFiles::read(dir)?;
        let unsupported = |what: String| PreprocessError::TokenizerInvalid {
            path: dir.join("tokenizer.json"),
            message: format!(
                "{what}: distillation across tokenizers reads byte-level BPE and \
                 SentencePiece-style (`▁`, byte fallback) tokenizers only"
            ),
        };
        let spelling = spelling(&files.tokenizer_json)
            .ok_or_else(|| unsupported(format!("decoder {}", files.tokenizer_json["decoder"])))?;
        let tokenizer = files.tokenizer;
        let vocabulary = tokenizer.get_vocab(true);
        let size = vocabulary.values().max().map_or(0, |&id| id as usize + 1);
        let special: std::collections::HashSet<u32> = tokenizer
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, token)| token.special)
            .map(|(&id, _)| id)
            .collect();
        let mut bytes = vec![None; size];
        for (token, &id) in &vocabulary {
            if !special.contains(&id) {
                bytes[id as usize] = Some(token_bytes(token, spelling).ok_or_else(|| {
                    unsupported(format!("token {id} {token:?} is not byte-level text"))
                })?);
            }
        }
        let unknown = files
            .tokenizer_json
            .pointer("/model/unk_token")
            .and_then(Value::as_str)
            .and_then(|token| vocabulary.get(token).copied());
        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer,
            bytes,
            vocabulary,
            unknown,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Ids of the tokenizer (added tokens included).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The text of `id`; `None` for a special token or an id the tokenizer does not have.
    pub fn bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize)?.as_deref()
    }

    /// The unknown token, which stands for text it lost.
    pub fn unknown(&self) -> Option<u32> {
        self.unknown
    }

    /// `text` as ids, without special tokens (no BOS), as the shards are encoded.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.tokenizer.encode(text, false).map_err(|err| {
            PreprocessError::TokenizerInvalid {
                path: self.dir.join("tokenizer.json"),
                message: format!("cannot encode text: {err}"),
            }
        })?;
        Ok(encoding.get_ids().to_vec())
    }
}

/// Tokens both vocabularies spell the same (TRL GOLD's rule: equal strings in `get_vocab()`,
/// added tokens included), as pairs sorted by teacher id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SharedTokens {
    pub teacher_ids: Vec<u32>,
    pub student_ids: Vec<u32>,
}

impl SharedTokens {
    pub fn of(teacher: &TokenText, student: &TokenText) -> Self {
        let mut pairs: Vec<(u32, u32)> = teacher
            .vocabulary
            .iter()
            .filter_map(|(token, &t)| student.vocabulary.get(token).map(|&s| (t, s)))
            .collect();
        pairs.sort_unstable();
        Self {
            teacher_ids: pairs.iter().map(|&(t, _)| t).collect(),
            student_ids: pairs.iter().map(|&(_, s)| s).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.teacher_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.teacher_ids.is_empty()
    }
}

fn spelling(tokenizer_json: &Value) -> Option<Spelling> {
    let decoder = &tokenizer_json["decoder"];
    let types: Vec<&str> = match decoder["type"].as_str() {
        Some("Sequence") => decoder["decoders"]
            .as_array()?
            .iter()
            .filter_map(|d| d["type"].as_str())
            .collect(),
        Some(kind) => vec![kind],
        None => Vec::new(),
    };
    if types.contains(&"ByteLevel") {
        Some(Spelling::ByteLevel)
    } else if types
        .iter()
        .any(|t| matches!(*t, "ByteFallback" | "Metaspace" | "Replace"))
    {
        Some(Spelling::SentencePiece)
    } else {
        None
    }
}

fn token_bytes(token: &str, spelling: Spelling) -> Option<Vec<u8>> {
    match spelling {
        Spelling::ByteLevel => token.chars().map(byte_of_char).collect(),
        Spelling::SentencePiece => {
            if let Some(hex) = token
                .strip_prefix("<0x")
                .and_then(|rest| rest.strip_suffix('>'))
                .filter(|hex| hex.len() == 2)
            {
                return u8::from_str_radix(hex, 16).ok().map(|byte| vec![byte]);
            }
            Some(token.replace('▁', " ").into_bytes())
        }
    }
}

/// The inverse of GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the other
/// 68 (controls, space, 127..=160, 173) for the characters 256.. in byte order.
fn byte_of_char(c: char) -> Option<u8> {
    let code = c as u32;
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    if code < 256 {
        return printable(code).then_some(code as u8);
    }
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth((code - 256) as usize)
        .map(|b| b as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_characters_invert_gpt2_table() {
        assert_eq!(byte_of_char('Ġ'), Some(b' '));
        assert_eq!(byte_of_char('Ċ'), Some(b'\n'));
        assert_eq!(byte_of_char('a'), Some(b'a'));
        assert_eq!(byte_of_char('ġ'), Some(127));
        assert_eq!(byte_of_char('ł'), Some(160));
        assert_eq!(byte_of_char('Ń'), Some(173));
        // Every byte is spelled by exactly one character.
        let mut seen = [false; 256];
        for code in 0..400u32 {
            if let Some(byte) = char::from_u32(code).and_then(byte_of_char) {
                assert!(!seen[byte as usize], "byte {byte} twice");
                seen[byte as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn sentencepiece_pieces_spell_spaces_and_fallback_bytes() {
        assert_eq!(
            token_bytes("▁the", Spelling::SentencePiece).unwrap(),
            b" the"
        );
        assert_eq!(
            token_bytes("<0x0A>", Spelling::SentencePiece).unwrap(),
            b"\n"
        );
        assert_eq!(
            token_bytes("<unk>", Spelling::SentencePiece).unwrap(),
            b"<unk>"
        );
    }
}
