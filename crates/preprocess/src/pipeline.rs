//! The preprocessing run: inputs -> articles -> token ids -> blocks -> shards + manifest.
//!
//! Streaming: each source is read line by line and tokenized in batches of a few MiB of text,
//! and blocks go to the parquet writer a row group at a time, so memory does not grow with the
//! input. Atomic: everything is written into a temporary sibling directory that is renamed onto
//! the output only once the manifest is in it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use progress::{ByteProgress, Output};

use crate::errors::{PreprocessError, Result};
use crate::manifest::{
    column_descriptions, BuildFingerprint, Manifest, SourceInfo, SplitInfo, TokenizerInfo, FORMAT,
};
use crate::pack::{BlockPacker, PackStats};
use crate::shards::{ShardLayout, ShardWriter};
use crate::tokenize::ModelTokenizer;
use crate::wikitext::{
    discover_sources, ArticleSplitter, DocumentPiece, LineReader, SourceFile,
    DEFAULT_MAX_PIECE_BYTES,
};

/// What to preprocess and how.
#[derive(Debug, Clone)]
pub struct PreprocessOptions {
    /// Model directory with tokenizer.json (and config.json / tokenizer_config.json).
    pub tokenizer_dir: PathBuf,
    /// Files or directories of WikiText (raw or hub parquet).
    pub inputs: Vec<PathBuf>,
    /// Output shard directory (created; replaced when rebuilt).
    pub out_dir: PathBuf,
    /// Tokens per block.
    pub seq_len: usize,
    /// Rebuild even when the manifest says the output is up to date.
    pub force: bool,
    /// Blocks per parquet row group; `None` = [`ShardLayout::default_rows_per_group`].
    pub rows_per_group: Option<usize>,
    /// Blocks per shard file; `None` = [`ShardLayout::default_blocks_per_shard`].
    pub blocks_per_shard: Option<usize>,
    /// Text bytes tokenized per parallel batch.
    pub batch_bytes: usize,
    /// Articles longer than this are tokenized in pieces (see `wikitext`).
    pub max_piece_bytes: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl PreprocessOptions {
    /// Options with the defaults for everything but the four required settings.
    pub fn new(
        tokenizer_dir: impl Into<PathBuf>,
        inputs: Vec<PathBuf>,
        out_dir: impl Into<PathBuf>,
        seq_len: usize,
    ) -> Self {
        Self {
            tokenizer_dir: tokenizer_dir.into(),
            inputs,
            out_dir: out_dir.into(),
            seq_len,
            force: false,
            rows_per_group: None,
            blocks_per_shard: None,
            batch_bytes: 4 << 20,
            max_piece_bytes: DEFAULT_MAX_PIECE_BYTES,
            progress: false,
        }
    }

    fn layout(&self) -> ShardLayout {
        ShardLayout {
            seq_len: self.seq_len,
            rows_per_group: self
                .rows_per_group
                .unwrap_or(ShardLayout::default_rows_per_group(self.seq_len))
                .max(1),
            blocks_per_shard: self
                .blocks_per_shard
                .unwrap_or(ShardLayout::default_blocks_per_shard(self.seq_len))
                .max(1),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub enum PreprocessOutcome {
    /// Shards were (re)built.
    Built(Manifest),
    /// The output already matched the inputs, tokenizer and layout; nothing was written.
    UpToDate(Manifest),
}

impl PreprocessOutcome {
    pub fn manifest(&self) -> &Manifest {
        match self {
            Self::Built(manifest) | Self::UpToDate(manifest) => manifest,
        }
    }
}

/// Tokenizes the inputs into packed shards under `options.out_dir` (see the crate docs).
pub fn preprocess(options: &PreprocessOptions) -> Result<PreprocessOutcome> {
    if options.seq_len < 2 || options.seq_len > i32::MAX as usize {
        return Err(PreprocessError::InvalidSeqLen {
            seq_len: options.seq_len,
        });
    }
    let layout = options.layout();
    let tokenizer = ModelTokenizer::load(&options.tokenizer_dir)?;
    let sources = discover_sources(&options.inputs)?;
    let mut source_infos = Vec::with_capacity(sources.len());
    for source in &sources {
        let bytes = std::fs::metadata(&source.path)
            .map_err(|err| PreprocessError::io(&source.path, err))?
            .len();
        source_infos.push(SourceInfo {
            path: source.path.display().to_string(),
            split: source.split.clone(),
            format: source.format,
            bytes,
            sha256: fsio::sha256_file(&source.path)?,
        });
    }
    let fingerprint = BuildFingerprint {
        format: FORMAT.to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        seq_len: layout.seq_len,
        rows_per_group: layout.rows_per_group,
        blocks_per_shard: layout.blocks_per_shard,
        tokenizer_sha256: tokenizer.tokenizer_sha256.clone(),
        eos_id: tokenizer.eos_id,
        pad_id: tokenizer.pad_id,
        sources: source_infos
            .iter()
            .map(|s| (s.split.clone(), s.format, s.sha256.clone()))
            .collect(),
    };

    let out_dir = &options.out_dir;
    // Leftovers of killed runs are cleaned even when this run turns out to have nothing to do.
    StagingDir::remove_abandoned(out_dir);
    if !options.force {
        if let Ok(existing) = Manifest::load(out_dir) {
            if existing.fingerprint() == fingerprint && existing.shard_files_present(out_dir) {
                return Ok(PreprocessOutcome::UpToDate(existing));
            }
        }
    }

    let staging = StagingDir::create(out_dir)?;
    let total_bytes = source_infos.iter().map(|s| s.bytes).sum();
    let bar = progress_bar(options.progress, total_bytes);

    let mut by_split: BTreeMap<&str, Vec<&SourceFile>> = BTreeMap::new();
    for source in &sources {
        by_split
            .entry(source.split.as_str())
            .or_default()
            .push(source);
    }
    let mut splits = BTreeMap::new();
    let mut done_bytes = 0;
    for (split, split_sources) in by_split {
        let mut writer = ShardWriter::new(staging.path(), split, layout);
        let mut packer = BlockPacker::new(layout.seq_len, tokenizer.eos_id, tokenizer.pad_id);
        for source in split_sources {
            bar.set_message(&format!("tokenizing {}", source.path.display()));
            tokenize_source(
                source,
                &tokenizer,
                options,
                &mut packer,
                &mut writer,
                &bar,
                done_bytes,
            )?;
            done_bytes += std::fs::metadata(&source.path)
                .map(|m| m.len())
                .unwrap_or(0);
            bar.set_position(done_bytes);
        }
        let mut last = Vec::new();
        let stats: PackStats = packer.finish(&mut last);
        for block in last {
            writer.write(block)?;
        }
        let shards = writer.finish()?;
        splits.insert(
            split.to_string(),
            SplitInfo {
                padding_fraction: stats.padding_fraction(),
                stats,
                shards,
            },
        );
    }
    bar.finish_and_clear();

    let padding: u64 = splits.values().map(|s| s.stats.padding_tokens).sum();
    let positions: u64 = splits
        .values()
        .map(|s| s.stats.tokens + s.stats.padding_tokens)
        .sum();
    let manifest = Manifest {
        format: FORMAT.to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        seq_len: layout.seq_len,
        rows_per_group: layout.rows_per_group,
        blocks_per_shard: layout.blocks_per_shard,
        tokenizer: TokenizerInfo {
            dir: options.tokenizer_dir.display().to_string(),
            sha256: tokenizer.tokenizer_sha256.clone(),
            config_sha256: tokenizer.config_sha256.clone(),
            vocab_size: tokenizer.vocab_size,
            config_vocab_size: tokenizer.config_vocab_size,
            eos_id: tokenizer.eos_id,
            eos_token: tokenizer.eos_token.clone(),
            pad_id: tokenizer.pad_id,
            bos_added_by_tokenizer: tokenizer.bos_added,
            bos_in_shards: false,
        },
        columns: column_descriptions(layout.seq_len),
        sources: source_infos,
        splits,
        padding_fraction: if positions == 0 {
            0.0
        } else {
            padding as f64 / positions as f64
        },
    };
    debug_assert_eq!(manifest.fingerprint(), fingerprint);
    staging.commit(&manifest)?;
    Ok(PreprocessOutcome::Built(manifest))
}

/// Streams one source through splitting, batched parallel tokenization and packing.
fn tokenize_source(
    source: &SourceFile,
    tokenizer: &ModelTokenizer,
    options: &PreprocessOptions,
    packer: &mut BlockPacker,
    writer: &mut ShardWriter,
    bar: &ByteProgress,
    bytes_before: u64,
) -> Result<()> {
    let lines = LineReader::open(source)?;
    let mut articles = ArticleSplitter::new(lines, options.max_piece_bytes);
    let mut batch: Vec<DocumentPiece> = Vec::new();
    let mut batch_bytes = 0;
    let mut full_blocks = Vec::new();
    loop {
        let piece = articles.next().transpose()?;
        let at_end = piece.is_none();
        if let Some(piece) = piece {
            batch_bytes += piece.text.len();
            batch.push(piece);
        }
        if batch_bytes >= options.batch_bytes || (at_end && !batch.is_empty()) {
            let texts: Vec<&str> = batch.iter().map(|piece| piece.text.as_str()).collect();
            let ids = tokenizer.encode_many(&texts, &source.path)?;
            for (piece, ids) in batch.iter().zip(&ids) {
                packer.push_piece(ids, piece.ends_document, &mut full_blocks);
            }
            for block in full_blocks.drain(..) {
                writer.write(block)?;
            }
            batch.clear();
            batch_bytes = 0;
            bar.set_position(bytes_before + articles.lines().text_bytes_read);
        }
        if at_end {
            return Ok(());
        }
    }
}

/// A bar on a terminal; lines with bytes, rate and ETA when stderr is a log.
fn progress_bar(show: bool, total_bytes: u64) -> ByteProgress {
    let output = Output::stderr(
        show,
        "{spinner} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} \
         {binary_bytes_per_sec} {msg}",
    );
    let bar = ByteProgress::new(output, "tokenizing", Some(total_bytes), 0);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A temporary directory next to the output that becomes the output in one rename.
///
/// Named `.<out>.tmp-<pid>`; a crash or Ctrl-C leaves it behind without touching the output,
/// and the next run removes such leftovers whose process is gone.
struct StagingDir {
    path: PathBuf,
    out_dir: PathBuf,
    committed: bool,
}

impl StagingDir {
    fn create(out_dir: &Path) -> Result<Self> {
        let name = out_dir
            .file_name()
            .ok_or_else(|| {
                PreprocessError::io(
                    out_dir,
                    std::io::Error::other("--out must name a directory"),
                )
            })?
            .to_string_lossy()
            .into_owned();
        let parent = match out_dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|err| PreprocessError::io(&parent, err))?;
        let path = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|err| PreprocessError::io(&path, err))?;
        }
        std::fs::create_dir(&path).map_err(|err| PreprocessError::io(&path, err))?;
        Ok(Self {
            path,
            out_dir: out_dir.to_path_buf(),
            committed: false,
        })
    }

    /// Removes `.<out>.tmp-<pid>` / `.<out>.old-<pid>` directories whose process has exited
    /// (checked through /proc; elsewhere nothing is removed).
    fn remove_abandoned(out_dir: &Path) {
        let (Some(name), Some(parent)) = (out_dir.file_name(), out_dir.parent()) else {
            return;
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let name = name.to_string_lossy();
        if !Path::new("/proc/self").exists() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(parent) else {
            return;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let pid = [".tmp-", ".old-"]
                .iter()
                .find_map(|tag| file_name.strip_prefix(&format!(".{name}{tag}")));
            if let Some(pid) = pid.and_then(|pid| pid.parse::<u32>().ok()) {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the manifest (last, so its presence means "complete") and swaps the directory in.
    fn commit(mut self, manifest: &Manifest) -> Result<()> {
        let manifest_path = Manifest::path_in(&self.path);
        fsio::write_atomic(&manifest_path, manifest.to_json().as_bytes())?;
        let out = &self.out_dir;
        // rename() cannot replace a non-empty directory: move the old one aside first. Between
        // the two renames the output is absent, never half-written.
        let old = self.path.with_file_name(format!(
            ".{}.old-{}",
            out.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let had_old = out.exists();
        if had_old {
            fsio::commit(out, &old)?;
        }
        fsio::commit(&self.path, out)?;
        self.committed = true;
        if had_old {
            std::fs::remove_dir_all(&old).map_err(|err| PreprocessError::io(&old, err))?;
        }
        Ok(())
    }
}

impl Drop for StagingDir {
    /// On an error return the half-written directory is removed at once.
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
