//! Reading a built cache: checked once against what the run wants when opened, then one
//! row group decoded per block of a batch.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::AsArray;
use arrow::datatypes::{Float32Type, Int32Type};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use preprocess::{open_parquet_with_schema, ShardReader};

use super::format::{CacheManifest, CacheSpec, Wanted};
use super::{hidden_column, CacheError, MANIFEST_FILE, REST_LSE, TOP_IDS, TOP_LOGITS};
use crate::objective::{TeacherOutputs, TeacherSignal};

/// A built cache, opened for reading.
pub struct TeacherCache {
    dir: PathBuf,
    manifest: CacheManifest,
    files: Vec<PartFile>,
    /// The stored layer behind each state [`TeacherCache::outputs`] returns.
    state_layers: Vec<usize>,
}

struct PartFile {
    path: PathBuf,
    file: File,
    metadata: ArrowReaderMetadata,
    first_block: usize,
    blocks: usize,
    /// Root columns to decode: top ids, top logits, rest, then the needed hidden states.
    projection: ProjectionMask,
}

/// The cached values of one block (host memory).
#[derive(Debug, Clone, PartialEq)]
pub struct CachedBlock {
    /// `[seq_len * k]`
    pub top_ids: Vec<i32>,
    /// `[seq_len * k]`, raw logits.
    pub top_logits: Vec<f32>,
    /// `[seq_len]`, at the cache's temperature.
    pub rest_lse: Vec<f32>,
    /// `(layer, [seq_len * hidden])` for each distinct layer the opening spec asked for.
    pub states: Vec<(usize, Vec<f32>)>,
}

impl TeacherCache {
    /// Opens the cache in `dir` for a run that needs `expected`; any difference that changes
    /// the values (teacher, top_k, temperature, vocabulary rows, a missing hidden layer) is an
    /// error naming the field and the fix. The cache may hold more layers than needed.
    pub fn open(dir: &Path, expected: &CacheSpec) -> Result<Self, CacheError> {
        let manifest = CacheManifest::load(dir)?;
        let path = dir.join(MANIFEST_FILE);
        let contents = &manifest.contents;
        contents.check(&Wanted::values_of(expected), dir)?;

        let needed = expected.stored_layers();
        let schema = contents.schema();
        let mut files = Vec::with_capacity(manifest.files.len());
        let mut next_block = 0;
        for info in &manifest.files {
            let path = dir.join(&info.file);
            let corrupt = |message: String| CacheError::Corrupt {
                path: path.clone(),
                message,
            };
            let (file, metadata) = open_parquet_with_schema(&path, &schema).map_err(corrupt)?;
            let groups = metadata.metadata().row_groups();
            if info.first_block != next_block
                || groups.len() != info.blocks
                || groups.iter().any(|g| g.num_rows() != 1)
            {
                return Err(corrupt(format!(
                    "{} row groups, the manifest says {} blocks from block {}",
                    groups.len(),
                    info.blocks,
                    info.first_block
                )));
            }
            next_block += info.blocks;
            let mut roots = vec![
                schema.index_of(TOP_IDS).expect("column"),
                schema.index_of(TOP_LOGITS).expect("column"),
                schema.index_of(REST_LSE).expect("column"),
            ];
            roots.extend(
                needed
                    .iter()
                    .map(|&l| schema.index_of(&hidden_column(l)).expect("column")),
            );
            let projection = ProjectionMask::roots(metadata.parquet_schema(), roots);
            files.push(PartFile {
                path,
                file,
                metadata,
                first_block: info.first_block,
                blocks: info.blocks,
                projection,
            });
        }
        if next_block != contents.blocks {
            return Err(CacheError::Corrupt {
                path,
                message: format!(
                    "the files hold {next_block} blocks, the manifest says {}",
                    contents.blocks
                ),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            state_layers: expected.hidden_layers.clone(),
            manifest,
            files,
        })
    }

    pub fn manifest(&self) -> &CacheManifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Blocks cached.
    pub fn len(&self) -> usize {
        self.manifest.contents.blocks
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn seq_len(&self) -> usize {
        self.manifest.contents.seq_len
    }

    /// Checks that the cache was built from the blocks `shards` reads (same split, block
    /// length, count and token files).
    pub fn verify_tokens(&self, shards: &ShardReader) -> Result<(), CacheError> {
        self.manifest
            .contents
            .check(&Wanted::tokens_of(shards), &self.dir)
    }

    /// Reads block `index` from its part file (one row group decode).
    pub fn block(&self, index: usize) -> Result<CachedBlock, CacheError> {
        if index >= self.len() {
            return Err(CacheError::BlockOutOfRange {
                path: self.dir.clone(),
                index,
                len: self.len(),
            });
        }
        let part = &self.files[self.files.partition_point(|f| f.first_block <= index) - 1];
        debug_assert!(index < part.first_block + part.blocks);
        let corrupt = |message: String| CacheError::Corrupt {
            path: part.path.clone(),
            message,
        };
        let file = part
            .file
            .try_clone()
            .map_err(|err| CacheError::io(&part.path, err))?;
        let mut reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(file, part.metadata.clone())
                .with_row_groups(vec![index - part.first_block])
                .with_projection(part.projection.clone())
                .with_batch_size(1)
                .build()
                .map_err(|err| corrupt(err.to_string()))?;
        let batch = reader
            .next()
            .ok_or_else(|| corrupt(format!("block {index} decoded to nothing")))?
            .map_err(|err| corrupt(err.to_string()))?;
        let floats = |name: &str| -> Result<Vec<f32>, CacheError> {
            let column = batch
                .column_by_name(name)
                .ok_or_else(|| corrupt(format!("no column {name}")))?
                .as_fixed_size_list();
            Ok(column
                .values()
                .as_primitive::<Float32Type>()
                .values()
                .to_vec())
        };
        let top_ids = batch
            .column_by_name(TOP_IDS)
            .ok_or_else(|| corrupt(format!("no column {TOP_IDS}")))?
            .as_fixed_size_list()
            .values()
            .as_primitive::<Int32Type>()
            .values()
            .to_vec();
        let mut layers = self.state_layers.clone();
        layers.sort_unstable();
        layers.dedup();
        let states = layers
            .into_iter()
            .map(|layer| Ok((layer, floats(&hidden_column(layer))?)))
            .collect::<Result<Vec<_>, CacheError>>()?;
        Ok(CachedBlock {
            top_ids,
            top_logits: floats(TOP_LOGITS)?,
            rest_lse: floats(REST_LSE)?,
            states,
        })
    }

    /// The teacher outputs of a batch made of `block_indices` in that order, flattened to
    /// `[N = blocks * seq_len, ...]` positions as the live teacher's are (block-major, every
    /// position of a block including its padding; the objective's weights drop the padding).
    /// The batch must use full-length rows (`seq_len` tokens, mask = `real_len`).
    pub fn outputs<B: Backend>(
        &self,
        block_indices: &[usize],
        device: &B::Device,
    ) -> Result<TeacherOutputs<B>, CacheError> {
        let seq = self.seq_len();
        let k = self.manifest.contents.top_k;
        let width = self.manifest.contents.hidden_size;
        let positions = block_indices.len() * seq;
        let mut ids = Vec::with_capacity(positions * k);
        let mut logits = Vec::with_capacity(positions * k);
        let mut rest = Vec::with_capacity(positions);
        let mut states: Vec<Vec<f32>> =
            vec![Vec::with_capacity(positions * width); self.state_layers.len()];
        for &index in block_indices {
            let block = self.block(index)?;
            ids.extend(block.top_ids.iter().map(|&id| id as i64));
            logits.extend_from_slice(&block.top_logits);
            rest.extend_from_slice(&block.rest_lse);
            for (state, layer) in states.iter_mut().zip(&self.state_layers) {
                let (_, values) = block
                    .states
                    .iter()
                    .find(|(l, _)| l == layer)
                    .expect("every requested layer is read");
                state.extend_from_slice(values);
            }
        }
        Ok(TeacherOutputs {
            signal: TeacherSignal::TopK {
                ids: Tensor::from_data(TensorData::new(ids, [positions, k]), device),
                logits: Tensor::from_data(TensorData::new(logits, [positions, k]), device),
                rest_lse: Tensor::from_data(TensorData::new(rest, [positions]), device),
            },
            states: states
                .into_iter()
                .map(|values| {
                    Tensor::from_data(TensorData::new(values, [positions, width]), device)
                })
                .collect(),
        })
    }
}
