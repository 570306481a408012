//! `manifest.json`: what a shard directory holds and what it was built from.
//!
//! The manifest is written last, inside the temporary directory that is renamed into place, so
//! a directory with a manifest is complete. It doubles as the idempotence record: a later run
//! with the same inputs, tokenizer and layout finds its [`BuildFingerprint`] here and skips.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::errors::{PreprocessError, Result};
use crate::pack::PackStats;
use crate::wikitext::SourceFormat;

/// File name of the manifest inside a shard directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Identifies this shard layout; bumped when the schema or packing rules change.
pub const FORMAT: &str = "wikitext-token-shards/1";

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// `CARGO_PKG_VERSION` of the preprocess crate that wrote it.
    pub tool_version: String,
    pub seq_len: usize,
    /// Blocks per parquet row group (the unit the reader decodes).
    pub rows_per_group: usize,
    /// Most blocks one shard file holds.
    pub blocks_per_shard: usize,
    pub tokenizer: TokenizerInfo,
    /// What the columns of every shard mean.
    pub columns: BTreeMap<String, String>,
    pub sources: Vec<SourceInfo>,
    pub splits: BTreeMap<String, SplitInfo>,
    /// Padding over all splits: pad positions / all block positions.
    pub padding_fraction: f64,
}

/// The tokenizer the shards were made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// The model directory as given on the command line.
    pub dir: String,
    /// sha256 of tokenizer.json.
    pub sha256: String,
    /// sha256 of config.json, when there was one.
    pub config_sha256: Option<String>,
    /// Ids the tokenizer knows, added tokens included.
    pub vocab_size: usize,
    /// config.json `vocab_size` (embedding rows).
    pub config_vocab_size: Option<usize>,
    /// Put after every document.
    pub eos_id: u32,
    pub eos_token: String,
    /// Fills the tail of the last block of a split.
    pub pad_id: u32,
    /// The BOS the tokenizer's post-processor would prepend; the shards never contain it
    /// (text is encoded without special tokens, see `tokenize`).
    pub bos_added_by_tokenizer: Option<u32>,
    /// Always false: blocks start wherever the token stream is cut.
    pub bos_in_shards: bool,
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub path: String,
    pub split: String,
    pub format: SourceFormat,
    pub bytes: u64,
    pub sha256: String,
}

/// One split: its counts and its shard files, in block order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    #[serde(flatten)]
    pub stats: PackStats,
    pub padding_fraction: f64,
    pub shards: Vec<ShardFileInfo>,
}

/// One parquet shard file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardFileInfo {
    /// File name inside the shard directory.
    pub file: String,
    pub blocks: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// Everything that decides the bytes of the shards. Two runs with equal fingerprints produce
/// identical directories, so the second one can be skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFingerprint {
    pub format: String,
    pub tool_version: String,
    pub seq_len: usize,
    pub rows_per_group: usize,
    pub blocks_per_shard: usize,
    pub tokenizer_sha256: String,
    pub eos_id: u32,
    pub pad_id: u32,
    /// `(split, format, sha256)` of every source, in processing order. Paths are left out on
    /// purpose: moving the same files elsewhere does not call for a rebuild.
    pub sources: Vec<(String, SourceFormat, String)>,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => PreprocessError::ManifestInvalid {
                path: path.clone(),
                message: "the file is missing".into(),
            },
            _ => PreprocessError::io(&path, err),
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|err| PreprocessError::ManifestInvalid {
                path: path.clone(),
                message: err.to_string(),
            })?;
        if manifest.format != FORMAT {
            return Err(PreprocessError::ManifestInvalid {
                path,
                message: format!("format `{}`, this tool reads `{FORMAT}`", manifest.format),
            });
        }
        Ok(manifest)
    }

    /// The manifest as written to disk: pretty JSON with a final newline.
    pub fn to_json(&self) -> String {
        let mut json = serde_json::to_string_pretty(self).expect("manifest serializes");
        json.push('\n');
        json
    }

    /// The fingerprint of the build that wrote this manifest.
    pub fn fingerprint(&self) -> BuildFingerprint {
        BuildFingerprint {
            format: self.format.clone(),
            tool_version: self.tool_version.clone(),
            seq_len: self.seq_len,
            rows_per_group: self.rows_per_group,
            blocks_per_shard: self.blocks_per_shard,
            tokenizer_sha256: self.tokenizer.sha256.clone(),
            eos_id: self.tokenizer.eos_id,
            pad_id: self.tokenizer.pad_id,
            sources: self
                .sources
                .iter()
                .map(|s| (s.split.clone(), s.format, s.sha256.clone()))
                .collect(),
        }
    }

    /// Whether every shard file the manifest lists is present with its recorded size.
    /// (Sizes, not hashes: this runs on every invocation and must stay cheap.)
    pub fn shard_files_present(&self, dir: &Path) -> bool {
        self.splits
            .values()
            .flat_map(|split| &split.shards)
            .all(|shard| {
                std::fs::metadata(dir.join(&shard.file))
                    .is_ok_and(|m| m.is_file() && m.len() == shard.bytes)
            })
    }

    /// The split names, for messages.
    pub fn split_names(&self) -> Vec<&str> {
        self.splits.keys().map(String::as_str).collect()
    }

    /// Path of the manifest inside `dir`.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }
}

/// Describes the shard columns for the manifest, so the files explain themselves.
pub fn column_descriptions(seq_len: usize) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "input_ids".to_string(),
            format!(
                "FixedSizeList<Int32, {seq_len}>: token ids; documents end with eos_id; \
                 positions from n_tokens on hold pad_id"
            ),
        ),
        (
            "n_tokens".to_string(),
            "Int32: real tokens at the start of input_ids (= seq_len except in a split's last block); \
             the attention mask is 1 for positions < n_tokens"
                .to_string(),
        ),
    ])
}
