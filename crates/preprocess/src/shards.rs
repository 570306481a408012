//! Parquet token shards: the writer used by preprocessing and the reader the trainer uses.
//!
//! Schema of every shard (one row per block):
//! - `input_ids: FixedSizeList<Int32 not null, seq_len> not null`
//! - `n_tokens: Int32 not null` — real tokens at the start of `input_ids`; the rest is `pad_id`.
//!
//! A split is one or more files `<split>-00000.parquet`, `<split>-00001.parquet`, ... in block
//! order, each cut into row groups of `rows_per_group` blocks. Row groups are the unit of
//! reading: the reader decodes one at a time and keeps the last one, so sequential reading
//! decodes each group once and random access costs at most one group decode per block.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, Int32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::errors::{PreprocessError, Result};
use crate::manifest::{Manifest, ShardFileInfo};
use crate::pack::Block;

/// Name of the token column.
pub const INPUT_IDS: &str = "input_ids";
/// Name of the real-length column.
pub const N_TOKENS: &str = "n_tokens";

/// The arrow schema of a shard with blocks of `seq_len` tokens.
pub fn shard_schema(seq_len: usize) -> SchemaRef {
    let item = Arc::new(Field::new("item", DataType::Int32, false));
    Arc::new(Schema::new(vec![
        Field::new(
            INPUT_IDS,
            DataType::FixedSizeList(item, seq_len as i32),
            false,
        ),
        Field::new(N_TOKENS, DataType::Int32, false),
    ]))
}

/// File name of shard `index` of `split`.
pub fn shard_file_name(split: &str, index: usize) -> String {
    format!("{split}-{index:05}.parquet")
}

/// How blocks are laid out in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLayout {
    pub seq_len: usize,
    pub rows_per_group: usize,
    pub blocks_per_shard: usize,
}

impl ShardLayout {
    /// Row groups of about 128 Ki tokens (512 KiB of ids): small enough that random access
    /// decodes little, large enough that compression and the footer stay efficient.
    pub fn default_rows_per_group(seq_len: usize) -> usize {
        ((128 * 1024) / seq_len.max(1)).max(1)
    }

    /// 32 Mi tokens per file (128 MiB of ids before compression).
    pub fn default_blocks_per_shard(seq_len: usize) -> usize {
        ((32 * 1024 * 1024) / seq_len.max(1)).max(1)
    }
}

/// Writes the blocks of one split into shard files inside `dir`.
///
/// Memory: one row group of blocks plus the parquet encoder's buffers.
pub struct ShardWriter {
    dir: PathBuf,
    split: String,
    layout: ShardLayout,
    schema: SchemaRef,
    open: Option<OpenShard>,
    pending: Vec<Block>,
    finished: Vec<ShardFileInfo>,
}

struct OpenShard {
    file_name: String,
    writer: ArrowWriter<BufWriter<File>>,
    blocks: u64,
}

impl ShardWriter {
    pub fn new(dir: impl Into<PathBuf>, split: &str, layout: ShardLayout) -> Self {
        Self {
            dir: dir.into(),
            split: split.to_string(),
            layout,
            schema: shard_schema(layout.seq_len),
            open: None,
            pending: Vec::with_capacity(layout.rows_per_group),
            finished: Vec::new(),
        }
    }

    /// Queues a block; a full row group is encoded and written at once.
    pub fn write(&mut self, block: Block) -> Result<()> {
        debug_assert_eq!(block.ids.len(), self.layout.seq_len);
        self.pending.push(block);
        let shard_blocks = self.open.as_ref().map_or(0, |open| open.blocks) as usize;
        let room_in_shard = self.layout.blocks_per_shard - shard_blocks;
        if self.pending.len() >= self.layout.rows_per_group.min(room_in_shard) {
            self.flush_group()?;
        }
        Ok(())
    }

    fn flush_group(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.open.is_none() {
            self.open = Some(self.create_shard()?);
        }
        let batch = blocks_to_batch(&self.schema, self.layout.seq_len, &self.pending)?;
        let open = self.open.as_mut().expect("opened above");
        let path = self.dir.join(&open.file_name);
        let write_err = |source| PreprocessError::ParquetWrite {
            path: path.clone(),
            source,
        };
        open.writer.write(&batch).map_err(write_err)?;
        // One write per row group: flush closes the group even if it is short (end of shard).
        open.writer.flush().map_err(write_err)?;
        open.blocks += self.pending.len() as u64;
        self.pending.clear();
        if open.blocks as usize >= self.layout.blocks_per_shard {
            self.close_shard()?;
        }
        Ok(())
    }

    fn create_shard(&self) -> Result<OpenShard> {
        let file_name = shard_file_name(&self.split, self.finished.len());
        let path = self.dir.join(&file_name);
        let file = File::create(&path).map_err(|err| PreprocessError::io(&path, err))?;
        let metadata = vec![
            KeyValue::new("wikitext.split".to_string(), self.split.clone()),
            KeyValue::new(
                "wikitext.seq_len".to_string(),
                self.layout.seq_len.to_string(),
            ),
        ];
        // Fixed settings only (no timestamps, no host names): the same blocks give the same bytes.
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_max_row_group_row_count(Some(self.layout.rows_per_group))
            .set_key_value_metadata(Some(metadata))
            .build();
        let writer =
            ArrowWriter::try_new(BufWriter::new(file), self.schema.clone(), Some(properties))
                .map_err(|source| PreprocessError::ParquetWrite { path, source })?;
        Ok(OpenShard {
            file_name,
            writer,
            blocks: 0,
        })
    }

    fn close_shard(&mut self) -> Result<()> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let path = self.dir.join(&open.file_name);
        let buffered =
            open.writer
                .into_inner()
                .map_err(|source| PreprocessError::ParquetWrite {
                    path: path.clone(),
                    source,
                })?;
        let file = buffered
            .into_inner()
            .map_err(|err| PreprocessError::io(&path, err.into_error()))?;
        // Durable before the directory is renamed into place.
        file.sync_all()
            .map_err(|err| PreprocessError::io(&path, err))?;
        let bytes = file
            .metadata()
            .map_err(|err| PreprocessError::io(&path, err))?
            .len();
        self.finished.push(ShardFileInfo {
            file: open.file_name,
            blocks: open.blocks,
            bytes,
            sha256: fsio::sha256_file(&path)?,
        });
        Ok(())
    }

    /// Writes what is queued, closes the last file, and lists the files in block order.
    pub fn finish(mut self) -> Result<Vec<ShardFileInfo>> {
        self.flush_group()?;
        self.close_shard()?;
        Ok(self.finished)
    }
}

fn blocks_to_batch(schema: &SchemaRef, seq_len: usize, blocks: &[Block]) -> Result<RecordBatch> {
    let mut ids = Vec::with_capacity(blocks.len() * seq_len);
    let mut n_tokens = Vec::with_capacity(blocks.len());
    for block in blocks {
        for &id in &block.ids {
            ids.push(i32::try_from(id).map_err(|_| PreprocessError::TokenIdTooLarge { id })?);
        }
        n_tokens.push(block.real_len as i32);
    }
    let item = Arc::new(Field::new("item", DataType::Int32, false));
    let values: ArrayRef = Arc::new(Int32Array::from(ids));
    let input_ids = FixedSizeListArray::new(item, seq_len as i32, values, None);
    let columns: Vec<ArrayRef> = vec![Arc::new(input_ids), Arc::new(Int32Array::from(n_tokens))];
    Ok(RecordBatch::try_new(schema.clone(), columns).expect("columns match the shard schema"))
}

/// Reads the blocks of one split of a shard directory.
///
/// ```no_run
/// use preprocess::ShardReader;
/// let mut train = ShardReader::open("data/shards/wikitext2-teacher", "train")?;
/// println!("{} blocks of {} tokens", train.len(), train.seq_len());
/// // Epoch 3 of a run seeded 42, resumed at its 1000th block:
/// let order = preprocess::shuffled_order(train.len(), 42, 3);
/// for &index in &order[1000..] {
///     let block = train.block(index)?;
///     let (ids, real_len) = (&block.ids, block.real_len);
///     # let _ = (ids, real_len);
/// }
/// # Ok::<(), preprocess::PreprocessError>(())
/// ```
///
/// The reader trusts only what the manifest lists, so a directory left half-written by a crash
/// (which has no manifest) is refused rather than read short.
pub struct ShardReader {
    dir: PathBuf,
    split: String,
    manifest: Manifest,
    files: Vec<ShardFile>,
    len: usize,
    cached: Option<CachedGroup>,
}

struct ShardFile {
    path: PathBuf,
    file: File,
    metadata: ArrowReaderMetadata,
    /// Index of this file's first block within the split.
    first_block: usize,
    /// Index (within the file) of each row group's first block, plus the total at the end.
    group_starts: Vec<usize>,
}

struct CachedGroup {
    /// Split-wide index of the group's first block.
    first_block: usize,
    n_blocks: usize,
    ids: Vec<i32>,
    n_tokens: Vec<i32>,
}

impl ShardReader {
    /// Opens `split` ("train", "validation", "test") of the shard directory `dir`, checking
    /// every file against the manifest (presence, row count and schema).
    pub fn open(dir: impl AsRef<Path>, split: &str) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::load(&dir)?;
        let split_info =
            manifest
                .splits
                .get(split)
                .ok_or_else(|| PreprocessError::SplitNotFound {
                    dir: dir.clone(),
                    split: split.to_string(),
                    available: manifest.split_names().join(", "),
                })?;
        let expected_schema = shard_schema(manifest.seq_len);
        let mut files = Vec::with_capacity(split_info.shards.len());
        let mut first_block = 0;
        for shard in &split_info.shards {
            let path = dir.join(&shard.file);
            let corrupt = |message: String| PreprocessError::ShardCorrupt {
                path: path.clone(),
                message,
            };
            let (file, metadata) =
                open_parquet_with_schema(&path, &expected_schema).map_err(corrupt)?;
            let mut group_starts = vec![0];
            for group in metadata.metadata().row_groups() {
                group_starts.push(group_starts.last().unwrap() + group.num_rows() as usize);
            }
            let rows = *group_starts.last().unwrap();
            if rows as u64 != shard.blocks {
                return Err(corrupt(format!(
                    "{rows} blocks, the manifest says {}",
                    shard.blocks
                )));
            }
            files.push(ShardFile {
                path,
                file,
                metadata,
                first_block,
                group_starts,
            });
            first_block += rows;
        }
        Ok(Self {
            dir,
            split: split.to_string(),
            manifest,
            files,
            len: first_block,
            cached: None,
        })
    }

    /// Number of blocks in the split.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens per block.
    pub fn seq_len(&self) -> usize {
        self.manifest.seq_len
    }

    /// The id that ends every document in the blocks.
    pub fn eos_id(&self) -> u32 {
        self.manifest.tokenizer.eos_id
    }

    /// The id that fills positions at and after a block's `real_len`.
    pub fn pad_id(&self) -> u32 {
        self.manifest.tokenizer.pad_id
    }

    /// The split this reader reads.
    pub fn split(&self) -> &str {
        &self.split
    }

    /// The shard directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory's manifest (eos/pad ids, counts, sources).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Block `index` (0-based, in the order preprocessing wrote them).
    pub fn block(&mut self, index: usize) -> Result<Block> {
        if index >= self.len {
            return Err(PreprocessError::BlockOutOfRange {
                index,
                len: self.len,
            });
        }
        let cached = match &self.cached {
            Some(group)
                if (group.first_block..group.first_block + group.n_blocks).contains(&index) =>
            {
                group
            }
            _ => {
                let group = self.load_group_of(index)?;
                self.cached.insert(group)
            }
        };
        let seq_len = self.manifest.seq_len;
        let row = index - cached.first_block;
        let ids = cached.ids[row * seq_len..(row + 1) * seq_len]
            .iter()
            .map(|&id| id as u32)
            .collect();
        Ok(Block {
            ids,
            real_len: cached.n_tokens[row] as usize,
        })
    }

    fn load_group_of(&self, index: usize) -> Result<CachedGroup> {
        let file_index = self.files.partition_point(|f| f.first_block <= index) - 1;
        let shard = &self.files[file_index];
        let local = index - shard.first_block;
        let group = shard.group_starts.partition_point(|&start| start <= local) - 1;
        let n_blocks = shard.group_starts[group + 1] - shard.group_starts[group];
        let corrupt = |message: String| PreprocessError::ShardCorrupt {
            path: shard.path.clone(),
            message,
        };

        let file = shard
            .file
            .try_clone()
            .map_err(|err| PreprocessError::io(&shard.path, err))?;
        let batches =
            ParquetRecordBatchReaderBuilder::new_with_metadata(file, shard.metadata.clone())
                .with_row_groups(vec![group])
                .with_batch_size(n_blocks)
                .build()
                .map_err(|err| corrupt(err.to_string()))?;
        let seq_len = self.manifest.seq_len;
        let mut ids = Vec::with_capacity(n_blocks * seq_len);
        let mut n_tokens = Vec::with_capacity(n_blocks);
        for batch in batches {
            let batch = batch.map_err(|err| corrupt(err.to_string()))?;
            let lists = batch.column(0).as_fixed_size_list();
            ids.extend_from_slice(lists.values().as_primitive::<Int32Type>().values());
            let lengths = batch.column(1).as_primitive::<Int32Type>();
            n_tokens.extend_from_slice(lengths.values());
            if lists.null_count() > 0 || lengths.null_count() > 0 {
                return Err(corrupt("null rows".into()));
            }
        }
        if n_tokens.len() != n_blocks || ids.len() != n_blocks * seq_len {
            return Err(corrupt(format!(
                "row group {group} decoded to {} blocks, expected {n_blocks}",
                n_tokens.len()
            )));
        }
        if let Some(bad) = n_tokens.iter().find(|&&n| n < 1 || n as usize > seq_len) {
            return Err(corrupt(format!("n_tokens {bad} outside 1..={seq_len}")));
        }
        Ok(CachedGroup {
            first_block: shard.first_block + shard.group_starts[group],
            n_blocks,
            ids,
            n_tokens,
        })
    }

    /// All blocks in stored order, from `start` on (resume = pass the data position).
    pub fn iter_from(&mut self, start: usize) -> Blocks<'_> {
        let end = self.len;
        Blocks {
            reader: self,
            order: BlockOrder::Range(start.min(end)..end),
        }
    }

    /// All blocks in stored order.
    pub fn iter(&mut self) -> Blocks<'_> {
        self.iter_from(0)
    }

    /// The blocks in the order of [`shuffled_order`]`(len, seed, epoch)`, skipping the first
    /// `start` of them (resume = pass the data position within the epoch).
    pub fn shuffled(&mut self, seed: u64, epoch: u64, start: usize) -> Blocks<'_> {
        let order = shuffled_order(self.len, seed, epoch);
        let start = start.min(order.len());
        Blocks {
            reader: self,
            order: BlockOrder::List(order.into_iter().skip(start)),
        }
    }
}

/// Iterator over blocks of a [`ShardReader`]; see [`ShardReader::iter`] and [`ShardReader::shuffled`].
pub struct Blocks<'a> {
    reader: &'a mut ShardReader,
    order: BlockOrder,
}

enum BlockOrder {
    Range(std::ops::Range<usize>),
    List(std::iter::Skip<std::vec::IntoIter<usize>>),
}

impl Iterator for Blocks<'_> {
    type Item = Result<Block>;

    fn next(&mut self) -> Option<Self::Item> {
        let index = match &mut self.order {
            BlockOrder::Range(range) => range.next()?,
            BlockOrder::List(list) => list.next()?,
        };
        Some(self.reader.block(index))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.order {
            BlockOrder::Range(range) => range.size_hint(),
            BlockOrder::List(list) => list.size_hint(),
        }
    }
}

impl ExactSizeIterator for Blocks<'_> {}

/// A permutation of `0..len` that depends only on `(len, seed, epoch)`.
///
/// Fisher–Yates driven by SplitMix64, implemented here rather than taken from `rand` so that the
/// order — and with it every resumed run — can never change under a dependency upgrade.
pub fn shuffled_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut state = seed ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F);
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        // Multiply-shift maps 64 random bits onto 0..=i with negligible bias for any real len.
        let j = ((next() as u128 * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}

/// Opens a Parquet file and reads its footer, checking that its columns are `expected`.
/// The error is a sentence about the file, for the caller's "corrupt file" error.
pub fn open_parquet_with_schema(
    path: &Path,
    expected: &Schema,
) -> std::result::Result<(File, ArrowReaderMetadata), String> {
    let file = File::open(path).map_err(|err| format!("cannot open it: {err}"))?;
    let metadata = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
        .map_err(|err| format!("unreadable parquet footer: {err}"))?;
    if metadata.schema().fields() != expected.fields() {
        return Err(format!(
            "its columns {:?} are not the expected {:?}",
            metadata.schema().fields(),
            expected.fields()
        ));
    }
    Ok((file, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffled_order_is_a_seeded_permutation() {
        let a = shuffled_order(1000, 7, 0);
        assert_eq!(a, shuffled_order(1000, 7, 0));
        assert_ne!(a, shuffled_order(1000, 7, 1));
        assert_ne!(a, shuffled_order(1000, 8, 0));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        // Pinned: a change here silently changes every resumed training run.
        assert_eq!(shuffled_order(10, 42, 0), PINNED_ORDER_10_42_0);
    }

    /// A data loader may move the reader into its own thread.
    #[test]
    fn shard_reader_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<ShardReader>();
    }

    const PINNED_ORDER_10_42_0: [usize; 10] = [8, 3, 6, 5, 4, 0, 9, 2, 1, 7];
}
