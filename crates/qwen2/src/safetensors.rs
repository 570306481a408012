//! Streaming reader and writer of the safetensors format (single file or sharded with
//! `model.safetensors.index.json`).
//!
//! Headers are parsed and checked by the `safetensors` crate's own `Metadata` type. Neither side
//! maps or buffers a whole file: the reader reads one tensor's bytes with
//! positioned reads and converts them straight into the f32 buffer the model keeps, and the
//! writer writes the header, then one tensor at a time. That is what keeps loading a 3 GiB bf16
//! checkpoint into a 6 GiB f32 model under 1.3x the model's size in peak memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use safetensors::tensor::Metadata;
use serde_json::Value;

use crate::error::{read_json, ModelError, Result};

/// The element types this loader converts to f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    BF16,
    F16,
    F32,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::BF16 | Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::BF16 => "BF16",
            Dtype::F16 => "F16",
            Dtype::F32 => "F32",
        }
    }

    /// The `torch_dtype` string of config.json.
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::BF16 => "bfloat16",
            Dtype::F16 => "float16",
            Dtype::F32 => "float32",
        }
    }
}

#[derive(Debug, Clone)]
struct TensorEntry {
    file: usize,
    dtype_name: String,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// An opened checkpoint: the headers of its safetensors files, and the files kept open.
pub struct Checkpoint {
    files: Vec<(PathBuf, File)>,
    tensors: HashMap<String, TensorEntry>,
}

impl Checkpoint {
    /// Opens `DIR/model.safetensors`, or the shards listed in `DIR/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let shard_paths: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            let index = read_json(&index_path)?;
            let map = index
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| ModelError::Config {
                    path: index_path.clone(),
                    field: "weight_map".into(),
                    message: "missing or not an object".into(),
                })?;
            let mut names: Vec<&str> = map.values().filter_map(Value::as_str).collect();
            names.sort_unstable();
            names.dedup();
            names.into_iter().map(|name| dir.join(name)).collect()
        } else {
            return Err(ModelError::Io {
                path: single,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "neither model.safetensors nor model.safetensors.index.json exists",
                ),
            });
        };

        let mut checkpoint = Self {
            files: Vec::new(),
            tensors: HashMap::new(),
        };
        for path in shard_paths {
            checkpoint.add_file(path)?;
        }
        Ok(checkpoint)
    }

    /// Opens one safetensors file (a PEFT adapter's `adapter_model.safetensors`, for example).
    pub fn open_file(path: &Path) -> Result<Self> {
        let mut checkpoint = Self {
            files: Vec::new(),
            tensors: HashMap::new(),
        };
        checkpoint.add_file(path.to_path_buf())?;
        Ok(checkpoint)
    }

    /// The names of every tensor, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    fn add_file(&mut self, path: PathBuf) -> Result<()> {
        let corrupt = |message: String| ModelError::Safetensors {
            path: path.clone(),
            message,
        };
        let file = File::open(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let file_len = file
            .metadata()
            .map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        let mut length_bytes = [0u8; 8];
        file.read_exact_at(&mut length_bytes, 0)
            .map_err(|_| corrupt(format!("file is {file_len} bytes, too short for a header")))?;
        let header_len = u64::from_le_bytes(length_bytes);
        if header_len > 100_000_000 || 8 + header_len > file_len {
            return Err(corrupt(format!(
                "header length {header_len} does not fit in a file of {file_len} bytes"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8)
            .map_err(|e| corrupt(format!("cannot read header: {e}")))?;
        let metadata = parse_header(&header).map_err(corrupt)?;
        let data_start = 8 + header_len;
        let data_end = data_start + metadata.data_len() as u64;
        if data_end != file_len {
            return Err(corrupt(format!(
                "the header's tensors end at byte {data_end} but the file has {file_len} bytes{}",
                if data_end > file_len {
                    " (truncated download?)"
                } else {
                    " (trailing bytes no tensor covers)"
                }
            )));
        }
        let file_index = self.files.len();
        for (name, info) in metadata.tensors() {
            let (start, end) = info.data_offsets;
            self.tensors.insert(
                name,
                TensorEntry {
                    file: file_index,
                    dtype_name: info.dtype.to_string(),
                    shape: info.shape.clone(),
                    start: data_start + start as u64,
                    end: data_start + end as u64,
                },
            );
        }
        self.files.push((path, file));
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The dtype most tensors are stored in (what config.json's torch_dtype should say).
    pub fn dominant_dtype(&self) -> Option<Dtype> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for entry in self.tensors.values() {
            *counts.entry(entry.dtype_name.as_str()).or_default() += 1;
        }
        let (name, _) = counts
            .into_iter()
            .max_by_key(|(name, count)| (*count, *name))?;
        parse_dtype(name)
    }

    /// Path of the file that holds `name` (or of the first file), for error messages.
    fn path_of(&self, name: &str) -> PathBuf {
        let index = self.tensors.get(name).map_or(0, |e| e.file);
        self.files
            .get(index)
            .map(|(p, _)| p.clone())
            .unwrap_or_default()
    }

    /// Checks that tensor `name` exists with `expected_shape`.
    pub fn check_shape(&self, name: &str, expected_shape: &[usize]) -> Result<()> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path_of(name),
                name: name.to_string(),
            })?;
        if entry.shape != expected_shape {
            return Err(ModelError::WrongShape {
                path: self.files[entry.file].0.clone(),
                name: name.to_string(),
                expected: expected_shape.to_vec(),
                found: entry.shape.clone(),
            });
        }
        Ok(())
    }

    /// Reads tensor `name` as f32, checking it has `expected_shape`. With `transpose`, a 2-D
    /// `[rows, cols]` tensor is returned as `[cols, rows]` (Burn's linear layout), converted
    /// and transposed in one pass so no second full-size copy exists.
    pub fn read_f32(
        &self,
        name: &str,
        expected_shape: &[usize],
        transpose: bool,
    ) -> Result<Vec<f32>> {
        self.check_shape(name, expected_shape)?;
        let entry = &self.tensors[name];
        let (path, file) = &self.files[entry.file];
        let dtype = parse_dtype(&entry.dtype_name).ok_or_else(|| ModelError::UnsupportedDtype {
            path: path.clone(),
            name: name.to_string(),
            dtype: entry.dtype_name.clone(),
        })?;
        let count: usize = entry.shape.iter().product();
        let byte_len = (entry.end - entry.start) as usize;
        if byte_len != count * dtype.size() {
            return Err(ModelError::Safetensors {
                path: path.clone(),
                message: format!(
                    "tensor `{name}` holds {byte_len} bytes, but {:?} {} needs {}",
                    entry.shape,
                    dtype.name(),
                    count * dtype.size()
                ),
            });
        }
        let mut bytes = vec![0u8; byte_len];
        file.read_exact_at(&mut bytes, entry.start)
            .map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?;
        let convert: fn(&[u8]) -> f32 = match dtype {
            Dtype::BF16 => |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            Dtype::F16 => |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            Dtype::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        };
        let size = dtype.size();
        if transpose && entry.shape.len() == 2 {
            let (rows, cols) = (entry.shape[0], entry.shape[1]);
            let mut out = vec![0f32; count];
            // Blocked so both sides stay in cache.
            const BLOCK: usize = 64;
            for row_block in (0..rows).step_by(BLOCK) {
                for col_block in (0..cols).step_by(BLOCK) {
                    for row in row_block..(row_block + BLOCK).min(rows) {
                        for col in col_block..(col_block + BLOCK).min(cols) {
                            let at = (row * cols + col) * size;
                            out[col * rows + row] = convert(&bytes[at..at + size]);
                        }
                    }
                }
            }
            Ok(out)
        } else {
            Ok(bytes.chunks_exact(size).map(convert).collect())
        }
    }
}

/// Parses and checks a header with the `safetensors` crate's own [`Metadata`], whose
/// deserialisation refuses what the Python library refuses: data offsets that overlap, leave a
/// gap or are out of order, and byte ranges that do not match dtype x shape.
/// (`SafeTensors::read_metadata` does the same but wants the whole file as one slice; reading
/// only the header keeps loading a stream of one tensor at a time.)
fn parse_header(header: &[u8]) -> std::result::Result<Metadata, String> {
    serde_json::from_slice::<Metadata>(header).map_err(|error| {
        let message = error.to_string();
        if message.contains("invalid offset") {
            format!(
                "{message}: each tensor's data_offsets must start where the previous one's end, \
                 without overlap or gap"
            )
        } else if message.contains("invalid shape") || message.contains("Misaligned") {
            format!("{message}: a tensor's data_offsets do not span dtype x shape bytes")
        } else {
            format!("header is not a valid safetensors header: {message}")
        }
    })
}

fn parse_dtype(name: &str) -> Option<Dtype> {
    match name {
        "BF16" => Some(Dtype::BF16),
        "F16" => Some(Dtype::F16),
        "F32" => Some(Dtype::F32),
        _ => None,
    }
}

/// One tensor to write: its name, PyTorch-layout shape, and a producer of its f32 values
/// (called once, when its turn comes, so only one tensor is materialised at a time).
pub struct TensorToWrite<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Box<dyn FnOnce() -> Vec<f32> + 'a>,
}

/// Writes a safetensors file at `path` (whole or not at all, durably, through `fsio`), storing
/// every tensor as `dtype`. Tensors are written in name order, as the Python library does.
pub fn write_safetensors(
    path: &Path,
    mut tensors: Vec<TensorToWrite<'_>>,
    dtype: Dtype,
) -> Result<()> {
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for tensor in &tensors {
        let len = tensor.shape.iter().product::<usize>() * dtype.size();
        header.insert(
            tensor.name.clone(),
            serde_json::json!({
                "dtype": dtype.name(),
                "shape": tensor.shape,
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
    }
    let mut header_bytes = serde_json::to_vec(&Value::Object(header)).expect("json");
    // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
    while !(8 + header_bytes.len()).is_multiple_of(8) {
        header_bytes.push(b' ');
    }

    fsio::write_atomic_with(path, |file| {
        let mut writer = BufWriter::with_capacity(8 << 20, file);
        writer.write_all(&(header_bytes.len() as u64).to_le_bytes())?;
        writer.write_all(&header_bytes)?;
        for tensor in tensors {
            let expected = tensor.shape.iter().product::<usize>();
            let values = (tensor.values)();
            assert_eq!(
                values.len(),
                expected,
                "tensor {} has the wrong number of values",
                tensor.name
            );
            let mut buffer = Vec::with_capacity(values.len().min(1 << 20) * dtype.size());
            for chunk in values.chunks(1 << 20) {
                buffer.clear();
                match dtype {
                    Dtype::F32 => chunk
                        .iter()
                        .for_each(|v| buffer.extend_from_slice(&v.to_le_bytes())),
                    Dtype::BF16 => chunk.iter().for_each(|v| {
                        buffer.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())
                    }),
                    Dtype::F16 => chunk.iter().for_each(|v| {
                        buffer.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())
                    }),
                }
                writer.write_all(&buffer)?;
            }
        }
        writer.flush()
    })?;
    Ok(())
}
