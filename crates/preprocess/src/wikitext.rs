//! Finding WikiText inputs, streaming their lines, and cutting the stream into articles.
//!
//! Two on-disk layouts hold the same text:
//! - the raw release: `wiki.train.raw`, `wiki.valid.raw`, `wiki.test.raw`, one line of text a line;
//! - the hub's `Salesforce/wikitext` parquet files `train|validation|test-*.parquet`, one row of a
//!   `text` string column a line (rows keep their trailing `"\n"`; blank lines are `""` there
//!   and are read back as the raw file's `" \n"`, so both layouts give the same shards).
//!
//! Both are read line by line so that memory does not grow with the file: at most one article
//! (or one [`DocumentPiece`] of a very long one) is held at a time.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use crate::errors::{PreprocessError, Result};

/// The canonical split names, as the hub spells them.
pub const SPLITS: [&str; 3] = ["train", "validation", "test"];

/// How a source file stores its lines.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// Plain UTF-8 text, one WikiText line per line.
    Raw,
    /// Parquet with a `text` string column, one WikiText line per row.
    Parquet,
}

/// One input file and the split it feeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub split: String,
    pub format: SourceFormat,
}

/// Tells the split and format of a file from its name, or `None` when the name is not one of
/// WikiText's. Raw files are `<anything>.train.raw`, `.valid.raw` or `.test.raw` (the release
/// calls them `wiki.*.raw`); parquet files start with the hub's split name and a dash.
pub fn classify_file_name(path: &Path) -> Option<(&'static str, SourceFormat)> {
    let name = path.file_name()?.to_str()?;
    if let Some(stem) = name.strip_suffix(".raw") {
        let split = match stem.rsplit('.').next()? {
            "train" => "train",
            "valid" | "validation" => "validation",
            "test" => "test",
            _ => return None,
        };
        return Some((split, SourceFormat::Raw));
    }
    if name.ends_with(".parquet") {
        let split = SPLITS.into_iter().find(|split| {
            name.strip_prefix(split)
                .is_some_and(|rest| rest.starts_with('-') || rest == ".parquet")
        })?;
        return Some((split, SourceFormat::Parquet));
    }
    None
}

/// Expands the `--input` arguments (files or directories) into the list of source files,
/// sorted by split and path so that the output never depends on argument or directory order.
///
/// A directory contributes the WikiText files directly inside it and ignores anything else;
/// a file named on the command line must be a WikiText file.
pub fn discover_sources(inputs: &[PathBuf]) -> Result<Vec<SourceFile>> {
    let mut sources = Vec::new();
    for input in inputs {
        let metadata = std::fs::metadata(input).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => PreprocessError::InputNotFound {
                path: input.clone(),
            },
            _ => PreprocessError::io(input, err),
        })?;
        if metadata.is_dir() {
            let mut found = Vec::new();
            let entries =
                std::fs::read_dir(input).map_err(|err| PreprocessError::io(input, err))?;
            for entry in entries {
                let path = entry.map_err(|err| PreprocessError::io(input, err))?.path();
                if !path.is_file() {
                    continue;
                }
                if let Some((split, format)) = classify_file_name(&path) {
                    found.push(SourceFile {
                        path,
                        split: split.to_string(),
                        format,
                    });
                }
            }
            if found.is_empty() {
                return Err(PreprocessError::NoInputsInDirectory {
                    path: input.clone(),
                });
            }
            sources.extend(found);
        } else {
            let (split, format) =
                classify_file_name(input).ok_or_else(|| PreprocessError::UnknownSplit {
                    path: input.clone(),
                })?;
            sources.push(SourceFile {
                path: input.clone(),
                split: split.to_string(),
                format,
            });
        }
    }
    sources.sort_by(|a, b| (&a.split, &a.path).cmp(&(&b.split, &b.path)));

    for pair in sources.windows(2) {
        let same_file = match (pair[0].path.canonicalize(), pair[1].path.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => pair[0].path == pair[1].path,
        };
        if same_file {
            return Err(PreprocessError::DuplicateInput {
                path: pair[1].path.clone(),
            });
        }
    }
    // The raw file and the hub parquet of a split hold the same lines: taking both would train
    // on every article twice.
    for split in SPLITS {
        let of_split = || sources.iter().filter(move |s| s.split == split);
        let raw = of_split().find(|s| s.format == SourceFormat::Raw);
        let parquet = of_split().find(|s| s.format == SourceFormat::Parquet);
        if let (Some(raw), Some(parquet)) = (raw, parquet) {
            return Err(PreprocessError::RawAndParquetForSameSplit {
                split: split.to_string(),
                raw: raw.path.clone(),
                parquet: parquet.path.clone(),
            });
        }
    }
    Ok(sources)
}

/// A stream of the lines of one source file, each with its trailing `"\n"` when it has one.
pub struct LineReader {
    inner: LineReaderInner,
    /// Bytes of text handed out so far, for progress reporting.
    pub text_bytes_read: u64,
}

enum LineReaderInner {
    Raw {
        path: PathBuf,
        reader: BufReader<File>,
        buffer: Vec<u8>,
        line_number: u64,
        byte_offset: u64,
    },
    Parquet {
        path: PathBuf,
        batches: ParquetRecordBatchReader,
        /// Lines of the record batch being handed out, in reverse so `pop` yields them in order.
        pending: Vec<String>,
    },
}

impl LineReader {
    /// Opens a source file; fails with [`PreprocessError::EmptyInput`] when it holds nothing.
    pub fn open(source: &SourceFile) -> Result<Self> {
        let path = source.path.clone();
        let file = File::open(&path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => PreprocessError::InputNotFound { path: path.clone() },
            _ => PreprocessError::io(&path, err),
        })?;
        let len = file
            .metadata()
            .map_err(|err| PreprocessError::io(&path, err))?
            .len();
        if len == 0 {
            return Err(PreprocessError::EmptyInput {
                path,
                what: "0 bytes",
            });
        }
        let inner = match source.format {
            SourceFormat::Raw => LineReaderInner::Raw {
                path,
                reader: BufReader::with_capacity(1 << 20, file),
                buffer: Vec::new(),
                line_number: 0,
                byte_offset: 0,
            },
            SourceFormat::Parquet => {
                let parquet_err = |source| PreprocessError::ParquetRead {
                    path: path.clone(),
                    source,
                };
                let builder =
                    ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err)?;
                let fields = builder.schema().fields();
                let text_index = fields.iter().position(|field| {
                    field.name() == "text"
                        && matches!(
                            field.data_type(),
                            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                        )
                });
                let Some(text_index) = text_index else {
                    let names: Vec<_> = fields.iter().map(|f| f.name().as_str()).collect();
                    return Err(PreprocessError::ParquetNoTextColumn {
                        path,
                        found: format!(" (columns: {})", names.join(", ")),
                    });
                };
                if builder.metadata().file_metadata().num_rows() == 0 {
                    return Err(PreprocessError::EmptyInput {
                        path,
                        what: "0 rows",
                    });
                }
                let mask = ProjectionMask::roots(builder.parquet_schema(), [text_index]);
                let batches = builder
                    .with_projection(mask)
                    .with_batch_size(4096)
                    .build()
                    .map_err(parquet_err)?;
                LineReaderInner::Parquet {
                    path,
                    batches,
                    pending: Vec::new(),
                }
            }
        };
        Ok(Self {
            inner,
            text_bytes_read: 0,
        })
    }
}

impl Iterator for LineReader {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = match &mut self.inner {
            LineReaderInner::Raw {
                path,
                reader,
                buffer,
                line_number,
                byte_offset,
            } => {
                buffer.clear();
                match reader.read_until(b'\n', buffer) {
                    Err(err) => return Some(Err(PreprocessError::io(path.clone(), err))),
                    Ok(0) => return None,
                    Ok(n) => {
                        *line_number += 1;
                        let start = *byte_offset;
                        *byte_offset += n as u64;
                        match std::str::from_utf8(buffer) {
                            Ok(text) => text.to_string(),
                            Err(err) => {
                                return Some(Err(PreprocessError::InvalidUtf8 {
                                    path: path.clone(),
                                    line: *line_number,
                                    byte_offset: start + err.valid_up_to() as u64,
                                }))
                            }
                        }
                    }
                }
            }
            LineReaderInner::Parquet {
                path,
                batches,
                pending,
            } => loop {
                if let Some(line) = pending.pop() {
                    break line;
                }
                let batch = match batches.next()? {
                    Ok(batch) => batch,
                    Err(err) => {
                        return Some(Err(PreprocessError::ParquetRead {
                            path: path.clone(),
                            source: err.into(),
                        }))
                    }
                };
                let column = batch.column(0);
                // Null rows carry no text; the hub files have none, but skip them gracefully.
                let rows: Vec<&str> = match column.data_type() {
                    DataType::Utf8 => column.as_string::<i32>().iter().flatten().collect(),
                    DataType::LargeUtf8 => column.as_string::<i64>().iter().flatten().collect(),
                    _ => column.as_string_view().iter().flatten().collect(),
                };
                let rows: Vec<String> = rows.into_iter().map(hub_row_to_raw_line).collect();
                pending.extend(rows.into_iter().rev());
            },
        };
        self.text_bytes_read += line.len() as u64;
        Some(Ok(line))
    }
}

/// The raw-file line a row of the hub's parquet stands for.
///
/// The hub's `Salesforce/wikitext` stores the raw files' blank lines (`" \n"`) as empty strings
/// and keeps the `"\n"` of every other line. Restoring both makes a parquet input tokenize
/// exactly like the raw file it was made from (same documents, same ids, same shards).
fn hub_row_to_raw_line(row: &str) -> String {
    if row.is_empty() {
        " \n".to_string()
    } else if row.ends_with('\n') {
        row.to_string()
    } else {
        format!("{row}\n")
    }
}

/// Whether `line` is an article title: ` = Title = ` with a single `=` level.
/// Section headings (` = = Section = = `, deeper levels likewise) are not.
pub fn is_article_heading(line: &str) -> bool {
    let trimmed = line.trim();
    match trimmed
        .strip_prefix("= ")
        .and_then(|rest| rest.strip_suffix(" ="))
    {
        Some(title) => !title.is_empty() && !title.starts_with('=') && !title.ends_with('='),
        None => false,
    }
}

/// Whether cutting the text just before `line` (the previous line ending in `"\n"`) leaves the
/// tokenization unchanged.
///
/// Qwen2's pre-tokenizer regex lets a whitespace run span newlines (`\s*[\r\n]+` swallows
/// `" \n \n"` whole), so a cut before a blank or whitespace-led-by-newline line could change the
/// tokens. A line that starts with a non-space character, or with one space and then a
/// non-space character, cannot be merged with what precedes the newline by any alternative of
/// that regex, and NFC never composes across a newline.
fn is_safe_cut_before(line: &str) -> bool {
    let mut chars = line.chars();
    match chars.next() {
        Some(' ') => chars.next().is_some_and(|c| !c.is_whitespace()),
        Some(c) => !c.is_whitespace(),
        None => false,
    }
}

/// A run of text to tokenize in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentPiece {
    pub text: String,
    /// True on the last piece of a document: the packer puts the eos token after it.
    pub ends_document: bool,
}

/// Default size past which a long article is handed out in pieces (cut at tokenization-safe
/// line boundaries) so that one pathological "article" cannot pull a whole file into memory.
pub const DEFAULT_MAX_PIECE_BYTES: usize = 1 << 20;

/// Cuts a line stream into documents, one per WikiText article.
///
/// A document runs from its title line up to (not including) the next title line, so the
/// documents of a file concatenate back to the file byte for byte. Lines before the first title
/// (the release starts with a blank line) belong to the first document.
pub struct ArticleSplitter<I> {
    lines: I,
    pending: String,
    /// Whether the document being collected has seen its title line yet.
    document_has_title: bool,
    max_piece_bytes: usize,
    finished: bool,
}

impl<I: Iterator<Item = Result<String>>> ArticleSplitter<I> {
    pub fn new(lines: I, max_piece_bytes: usize) -> Self {
        Self {
            lines,
            pending: String::new(),
            document_has_title: false,
            max_piece_bytes: max_piece_bytes.max(1),
            finished: false,
        }
    }

    /// The line iterator, e.g. to read its progress counters.
    pub fn lines(&self) -> &I {
        &self.lines
    }

    fn take_pending(&mut self, ends_document: bool) -> DocumentPiece {
        DocumentPiece {
            text: std::mem::take(&mut self.pending),
            ends_document,
        }
    }
}

impl<I: Iterator<Item = Result<String>>> Iterator for ArticleSplitter<I> {
    type Item = Result<DocumentPiece>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        loop {
            let line = match self.lines.next() {
                Some(Ok(line)) => line,
                Some(Err(err)) => {
                    self.finished = true;
                    return Some(Err(err));
                }
                None => {
                    self.finished = true;
                    if self.pending.is_empty() {
                        return None;
                    }
                    return Some(Ok(self.take_pending(true)));
                }
            };
            let piece = if is_article_heading(&line) {
                let piece = (self.document_has_title && !self.pending.is_empty())
                    .then(|| self.take_pending(true));
                self.document_has_title = true;
                piece
            } else if self.pending.len() >= self.max_piece_bytes
                && self.pending.ends_with('\n')
                && is_safe_cut_before(&line)
            {
                Some(self.take_pending(false))
            } else {
                None
            };
            self.pending.push_str(&line);
            if let Some(piece) = piece {
                return Some(Ok(piece));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_are_told_from_sections() {
        assert!(is_article_heading(" = Valkyria Chronicles III = \n"));
        assert!(is_article_heading(
            " = 2013 – 14 Portsmouth F.C. season = \n"
        ));
        assert!(!is_article_heading(" = = Gameplay = = \n"));
        assert!(!is_article_heading(" = = = Release = = = \n"));
        assert!(!is_article_heading(" \n"));
        assert!(!is_article_heading(" The = sign is used . \n"));
    }

    #[test]
    fn file_names_map_to_splits() {
        let c = |name: &str| classify_file_name(Path::new(name));
        assert_eq!(c("wiki.train.raw"), Some(("train", SourceFormat::Raw)));
        assert_eq!(
            c("x/wiki.valid.raw"),
            Some(("validation", SourceFormat::Raw))
        );
        assert_eq!(c("wiki.test.raw"), Some(("test", SourceFormat::Raw)));
        assert_eq!(
            c("wikitext-2-raw-v1/validation-00000-of-00001.parquet"),
            Some(("validation", SourceFormat::Parquet))
        );
        assert_eq!(
            c("train-00000-of-00001.parquet"),
            Some(("train", SourceFormat::Parquet))
        );
        assert_eq!(c("notes.txt"), None);
        assert_eq!(c("wiki.raw"), None);
        assert_eq!(c("trainer-0.parquet"), None);
    }

    #[test]
    fn articles_are_cut_before_titles_and_keep_every_byte() {
        let text = " \n = A = \n \n a text \n \n = = S = = \n more \n \n = B = \n b \n";
        let lines = text.split_inclusive('\n').map(|l| Ok(l.to_string()));
        let pieces: Vec<_> = ArticleSplitter::new(lines, usize::MAX)
            .map(Result::unwrap)
            .collect();
        let texts: Vec<_> = pieces.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                " \n = A = \n \n a text \n \n = = S = = \n more \n \n",
                " = B = \n b \n"
            ]
        );
        assert!(pieces.iter().all(|p| p.ends_document));
    }

    #[test]
    fn long_articles_come_in_pieces_cut_only_before_safe_lines() {
        let text = " = A = \n one \n \n two \n \n three \n = B = \n b \n";
        let lines = text.split_inclusive('\n').map(|l| Ok(l.to_string()));
        let pieces: Vec<_> = ArticleSplitter::new(lines, 1).map(Result::unwrap).collect();
        let texts: Vec<_> = pieces.iter().map(|p| p.text.as_str()).collect();
        // Never cut before the blank " \n" lines.
        assert_eq!(
            texts,
            [
                " = A = \n",
                " one \n \n",
                " two \n \n",
                " three \n",
                " = B = \n",
                " b \n"
            ]
        );
        let ends: Vec<_> = pieces.iter().map(|p| p.ends_document).collect();
        assert_eq!(ends, [false, false, false, true, false, true]);
    }
}
