//! Running the teacher once over a split's token shards into a cache: resumable (finished
//! part files are kept when they hold what this build would write) and atomic (the manifest,
//! written last, marks a complete cache).

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, FixedSizeListArray, Float32Array, Int32Array, Int64Array, RecordBatch,
};
use arrow::datatypes::{DataType, Field, SchemaRef};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use preprocess::{Block, ShardReader};
use qwen2::{AttentionMask, Model};
use rayon::prelude::*;

use super::format::{
    column_descriptions, token_shard_hashes, CacheContents, CacheFileInfo, CacheManifest,
    CacheSpec, Wanted,
};
use super::{
    part_file_name, CacheError, EMPTY_REST_LSE, FORMAT, MANIFEST_FILE, META_CONTENTS,
    META_FIRST_BLOCK,
};
use crate::objective::flatten;

/// Build options that do not change what is stored.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Positions whose `[positions, V]` logits exist at once (memory vs speed).
    pub chunk_positions: usize,
    /// Blocks per part file (the unit of resumption); `None` = about 256 MiB per file.
    pub blocks_per_file: Option<usize>,
    /// When set (e.g. by a Ctrl-C handler), the build stops before its next batch of blocks
    /// with [`CacheError::Stopped`]; finished part files are kept for the next build.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            progress: false,
            chunk_positions: 256,
            blocks_per_file: None,
            stop: None,
        }
    }
}

/// What [`build_cache`] did.
#[derive(Debug, Clone)]
pub struct CacheBuild {
    pub manifest: CacheManifest,
    /// Blocks the teacher ran over in this call (0 when a complete cache was reused).
    pub blocks_computed: usize,
}

/// Runs `teacher` once over every block of the split `shards` reads and writes the cache into
/// `out_dir` (see the module docs). A complete cache with the same contents is reused; a
/// partial one is completed.
///
/// Memory: one batch of `spec.batch_size` blocks through the teacher, one chunk of
/// `options.chunk_positions` vocabulary-sized logits, and the host copy of one batch's rows.
pub fn build_cache<B: Backend>(
    teacher: &Model<B>,
    shards: &mut ShardReader,
    spec: &CacheSpec,
    out_dir: &Path,
    options: &BuildOptions,
) -> Result<CacheBuild, CacheError> {
    spec.validate(teacher.vocab_size(), teacher.num_layers())?;
    let token_shards = token_shard_hashes(shards);
    let seq_len = shards.seq_len();
    let hidden_layers = spec.stored_layers();
    let mut contents = CacheContents {
        format: FORMAT.to_string(),
        teacher: spec.teacher.clone(),
        split: shards.split().to_string(),
        token_shards,
        seq_len,
        blocks: shards.len(),
        top_k: spec.top_k,
        temperature: spec.temperature,
        hidden_layers,
        hidden_size: teacher.hidden_size(),
        vocab_size: teacher.vocab_size(),
        vocab_rows: spec.vocab_rows_info(),
        blocks_per_file: 0,
    };
    contents.blocks_per_file = options.blocks_per_file.unwrap_or_else(|| {
        let per_block = seq_len
            * (8 * spec.top_k + 4 + 4 * contents.hidden_size * contents.hidden_layers.len());
        ((256usize << 20) / per_block.max(1)).max(1)
    });
    contents.blocks_per_file = contents.blocks_per_file.max(1);

    std::fs::create_dir_all(out_dir).map_err(|err| CacheError::io(out_dir, err))?;
    if let Ok(existing) = CacheManifest::load(out_dir) {
        if existing
            .contents
            .difference(&Wanted::exactly(&contents))
            .is_none()
            && existing.files_present(out_dir)
        {
            return Ok(CacheBuild {
                manifest: existing,
                blocks_computed: 0,
            });
        }
    }
    // From here on the directory is not a complete cache until the new manifest lands.
    remove_if_present(&out_dir.join(MANIFEST_FILE))?;

    let plan = contents.plan();
    let kept = keep_finished_parts(out_dir, &contents, &plan)?;
    let mut files: Vec<CacheFileInfo> = kept;
    let remaining: usize = plan[files.len()..].iter().map(|(_, n)| n).sum();
    let bar = progress_bar(options.progress, remaining as u64);
    let mut writer = PartWriter {
        teacher,
        spec,
        contents: &contents,
        schema: contents.schema(),
        rows: spec.vocab_rows.as_ref().map(|rows| {
            let ids: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [rows.len()]), &teacher.device())
        }),
        chunk_positions: options.chunk_positions.max(1),
        bar: &bar,
        stop: options.stop.as_deref(),
    };
    for (index, &(first_block, blocks)) in plan.iter().enumerate().skip(files.len()) {
        match writer.write_part(shards, out_dir, index, first_block, blocks)? {
            Some(file) => files.push(file),
            None => {
                bar.abandon();
                return Err(CacheError::Stopped {
                    dir: out_dir.to_path_buf(),
                    done: files.len(),
                    parts: plan.len(),
                });
            }
        }
    }
    bar.finish_and_clear();

    let manifest = CacheManifest {
        columns: column_descriptions(&contents),
        bytes: files.iter().map(|f| f.bytes).sum(),
        files,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        contents,
    };
    let mut json = serde_json::to_string_pretty(&manifest).expect("the manifest serializes");
    json.push('\n');
    fsio::write_atomic(&out_dir.join(MANIFEST_FILE), json.as_bytes())?;
    Ok(CacheBuild {
        manifest,
        blocks_computed: remaining,
    })
}

fn progress_bar(show: bool, blocks: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(blocks);
    bar.set_style(
        ProgressStyle::with_template(
            "caching teacher {bar:30} {pos}/{len} blocks  {per_sec}  ETA {eta}",
        )
        .expect("valid template"),
    );
    bar
}

fn remove_if_present(path: &Path) -> Result<(), CacheError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(CacheError::io(path, err)),
    }
}

/// Keeps the leading part files that a previous build finished with the same contents for the
/// blocks `plan` gives them; deletes everything else a build could have left.
fn keep_finished_parts(
    dir: &Path,
    contents: &CacheContents,
    plan: &[(usize, usize)],
) -> Result<Vec<CacheFileInfo>, CacheError> {
    let mut kept = Vec::new();
    for (index, &(first_block, blocks)) in plan.iter().enumerate() {
        let path = dir.join(part_file_name(index));
        let Ok(file) = File::open(&path) else { break };
        let Ok(metadata) = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()) else {
            break;
        };
        let value = |key: &str| {
            metadata
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .and_then(|kv| kv.iter().find(|e| e.key == key))
                .and_then(|e| e.value.clone())
        };
        let same_contents = value(META_CONTENTS)
            .and_then(|json| serde_json::from_str::<CacheContents>(&json).ok())
            .is_some_and(|found| found.difference(&Wanted::exactly(contents)).is_none());
        let rows = metadata.metadata().file_metadata().num_rows() as usize;
        if !same_contents
            || value(META_FIRST_BLOCK) != Some(first_block.to_string())
            || rows != blocks
        {
            break;
        }
        let bytes = file
            .metadata()
            .map_err(|err| CacheError::io(&path, err))?
            .len();
        kept.push(CacheFileInfo {
            file: part_file_name(index),
            first_block,
            blocks,
            bytes,
        });
    }
    // Anything else that looks like a part (later parts, stale or foreign ones, temporaries).
    for entry in std::fs::read_dir(dir).map_err(|err| CacheError::io(dir, err))? {
        let entry = entry.map_err(|err| CacheError::io(dir, err))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_part = name.starts_with("part-") && name.contains(".parquet");
        if is_part && !kept.iter().any(|k| k.file == name) {
            remove_if_present(&entry.path())?;
        }
    }
    Ok(kept)
}

/// Host copy of the cached values of a run of consecutive positions.
#[derive(Debug, Clone, Default)]
struct Rows {
    top_ids: Vec<i32>,
    top_logits: Vec<f32>,
    rest_lse: Vec<f32>,
    /// One `[positions * hidden]` vector per stored layer.
    states: Vec<Vec<f32>>,
}

struct PartWriter<'a, B: Backend> {
    teacher: &'a Model<B>,
    spec: &'a CacheSpec,
    contents: &'a CacheContents,
    schema: SchemaRef,
    rows: Option<Tensor<B, 1, Int>>,
    chunk_positions: usize,
    bar: &'a ProgressBar,
    stop: Option<&'a AtomicBool>,
}

impl<B: Backend> PartWriter<'_, B> {
    /// Writes part `index`; `None` when `stop` was set before it was complete (its temporary
    /// file is removed).
    fn write_part(
        &mut self,
        shards: &mut ShardReader,
        dir: &Path,
        index: usize,
        first_block: usize,
        blocks: usize,
    ) -> Result<Option<CacheFileInfo>, CacheError> {
        let name = part_file_name(index);
        let path = dir.join(&name);
        let temporary = dir.join(format!("{name}.tmp"));
        let parquet_error = |err: parquet::errors::ParquetError| CacheError::Corrupt {
            path: temporary.clone(),
            message: format!("cannot write parquet: {err}"),
        };
        let file = File::create(&temporary).map_err(|err| CacheError::io(&temporary, err))?;
        let metadata = vec![
            KeyValue::new(
                META_CONTENTS.to_string(),
                serde_json::to_string(self.contents).expect("contents serialize"),
            ),
            KeyValue::new(META_FIRST_BLOCK.to_string(), first_block.to_string()),
        ];
        // One row group per block: random access decodes one block. Logits are close to
        // incompressible; snappy still shrinks the ids and costs little.
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::None)
            .set_max_row_group_row_count(Some(1))
            .set_key_value_metadata(Some(metadata))
            .build();
        let mut writer =
            ArrowWriter::try_new(BufWriter::new(file), self.schema.clone(), Some(properties))
                .map_err(parquet_error)?;
        let end = first_block + blocks;
        for start in (first_block..end).step_by(self.spec.batch_size) {
            if self.stop.is_some_and(|stop| stop.load(Ordering::SeqCst)) {
                drop(writer);
                remove_if_present(&temporary)?;
                return Ok(None);
            }
            let indices: Vec<usize> = (start..end.min(start + self.spec.batch_size)).collect();
            let batch_blocks = indices
                .iter()
                .map(|&i| shards.block(i))
                .collect::<Result<Vec<Block>, _>>()?;
            // An id beyond the embeddings would panic inside the backend's gather.
            let vocab = self.contents.vocab_size;
            for (&index, block) in indices.iter().zip(&batch_blocks) {
                if let Some(&id) = block.ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(CacheError::TokenOutOfVocabulary {
                        dir: shards.dir().to_path_buf(),
                        block: index,
                        id,
                        vocab,
                    });
                }
            }
            let rows = self.run_teacher(&batch_blocks, start)?;
            let batch = self.record_batch(&indices, rows);
            writer.write(&batch).map_err(parquet_error)?;
            self.bar.inc(indices.len() as u64);
        }
        let file = writer
            .into_inner()
            .map_err(parquet_error)?
            .into_inner()
            .map_err(|err| CacheError::io(&temporary, err.into_error()))?;
        file.sync_all()
            .map_err(|err| CacheError::io(&temporary, err))?;
        let bytes = file
            .metadata()
            .map_err(|err| CacheError::io(&temporary, err))?
            .len();
        drop(file);
        fsio::commit(&temporary, &path)?;
        Ok(Some(CacheFileInfo {
            file: name,
            first_block,
            blocks,
            bytes,
        }))
    }

    /// The teacher over one batch of blocks: top k, rest and states of every position.
    fn run_teacher(&self, blocks: &[Block], first_block: usize) -> Result<Rows, CacheError> {
        let seq = self.contents.seq_len;
        let device = self.teacher.device();
        let ids: Vec<i64> = blocks
            .iter()
            .flat_map(|b| b.ids.iter().map(|&t| t as i64))
            .collect();
        let ids =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [blocks.len(), seq]), &device);
        let mask = AttentionMask {
            rows: blocks
                .iter()
                .map(|b| (0..seq).map(|t| t < b.real_len).collect())
                .collect(),
        };
        let layers = &self.contents.hidden_layers;
        let (final_hidden, states) = self.teacher.forward_hidden(ids, &mask, !layers.is_empty());
        let final_hidden = flatten(final_hidden);
        let positions = final_hidden.dims()[0];
        let k = self.spec.top_k;

        let mut rows = Rows {
            top_ids: vec![0; positions * k],
            top_logits: vec![0.0; positions * k],
            rest_lse: vec![0.0; positions],
            states: Vec::new(),
        };
        for start in (0..positions).step_by(self.chunk_positions) {
            let len = self.chunk_positions.min(positions - start);
            let [_, width] = final_hidden.dims();
            let hidden = final_hidden.clone().narrow(0, start, len);
            let logits = self.teacher.lm_head(hidden.reshape([1, len, width]));
            let vocab = logits.dims()[2];
            let mut logits = logits.reshape([len, vocab]);
            if let Some(rows) = &self.rows {
                logits = logits.select(1, rows.clone());
            }
            let logits = logits
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("float logits");
            let range = start * k..(start + len) * k;
            let bad = top_k_rows(
                &logits,
                k,
                self.spec.temperature,
                self.spec.vocab_rows.as_deref(),
                &mut rows.top_ids[range.clone()],
                &mut rows.top_logits[range],
                &mut rows.rest_lse[start..start + len],
            );
            if let Some(position) = bad {
                let position = start + position;
                return Err(CacheError::NonFiniteLogit {
                    block: first_block + position / seq,
                    position: position % seq,
                });
            }
        }
        if let Some(states) = states {
            rows.states = layers
                .iter()
                .map(|&layer| {
                    flatten(states[layer].clone())
                        .into_data()
                        .convert::<f32>()
                        .to_vec::<f32>()
                        .expect("float states")
                })
                .collect();
        }
        Ok(rows)
    }

    fn record_batch(&self, indices: &[usize], rows: Rows) -> RecordBatch {
        let list = |values: ArrayRef, len: usize, item: DataType| -> ArrayRef {
            let field = Arc::new(Field::new("item", item, false));
            Arc::new(FixedSizeListArray::new(field, len as i32, values, None))
        };
        let seq = self.contents.seq_len;
        let k = self.contents.top_k;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(
                indices.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            )),
            list(
                Arc::new(Int32Array::from(rows.top_ids)),
                seq * k,
                DataType::Int32,
            ),
            list(
                Arc::new(Float32Array::from(rows.top_logits)),
                seq * k,
                DataType::Float32,
            ),
            list(
                Arc::new(Float32Array::from(rows.rest_lse)),
                seq,
                DataType::Float32,
            ),
        ];
        for state in rows.states {
            columns.push(list(
                Arc::new(Float32Array::from(state)),
                seq * self.contents.hidden_size,
                DataType::Float32,
            ));
        }
        RecordBatch::try_new(self.schema.clone(), columns).expect("columns match the cache schema")
    }
}

/// For each row of `logits` (`[positions, V]`, row-major): its `k` largest values, largest
/// first (ties: lower index first), their ids (`vocab_rows[index]` when given), and the
/// log-sum-exp at `temperature` of the others, in f64. Returns the first position holding a
/// non-finite logit, if any.
fn top_k_rows(
    logits: &[f32],
    k: usize,
    temperature: f64,
    vocab_rows: Option<&[u32]>,
    top_ids: &mut [i32],
    top_logits: &mut [f32],
    rest_lse: &mut [f32],
) -> Option<usize> {
    let vocab = logits.len() / rest_lse.len().max(1);
    let finite: Vec<bool> = logits
        .par_chunks(vocab)
        .zip(top_ids.par_chunks_mut(k))
        .zip(top_logits.par_chunks_mut(k))
        .zip(rest_lse.par_iter_mut())
        .map_init(
            || Vec::with_capacity(vocab),
            |order: &mut Vec<u32>, (((row, ids), values), rest)| {
                if row.iter().any(|v| !v.is_finite()) {
                    return false;
                }
                order.clear();
                order.extend(0..vocab as u32);
                let by_rank =
                    |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
                if k < vocab {
                    order.select_nth_unstable_by(k, by_rank);
                }
                let (top, others) = order.split_at_mut(k);
                top.sort_unstable_by(by_rank);
                for ((id, value), &index) in ids.iter_mut().zip(values.iter_mut()).zip(top.iter()) {
                    *value = row[index as usize];
                    *id = vocab_rows.map_or(index, |rows| rows[index as usize]) as i32;
                }
                *rest = if others.is_empty() {
                    EMPTY_REST_LSE
                } else {
                    let max = others
                        .iter()
                        .map(|&i| row[i as usize])
                        .fold(f32::NEG_INFINITY, f32::max) as f64
                        / temperature;
                    let sum: f64 = others
                        .iter()
                        .map(|&i| (row[i as usize] as f64 / temperature - max).exp())
                        .sum();
                    (max + sum.ln()) as f32
                };
                true
            },
        )
        .collect();
    finite.iter().position(|ok| !ok)
}
