//! Reading a GGUF file: the header, metadata and tensor directory are parsed and checked when
//! the file is opened; tensor data is read one tensor at a time with positioned reads, so a
//! model is never held twice in memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{GgufError, Result};
use crate::metadata::{Cursor, Value, ValueType};
use crate::quants::dequantize;
use crate::types::{ggml_type_name, supported_type_names, GgmlType};

/// Where the tensor data starts is rounded up to this unless `general.alignment` says otherwise.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's dimensions: `dims[0]` varies fastest (the reverse of a numpy / PyTorch shape).
    pub dims: Vec<usize>,
    /// The raw type id; [`TensorInfo::kind`] resolves it.
    pub type_id: u32,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
}

impl TensorInfo {
    /// The PyTorch-order shape (`[rows, cols]` for a matrix).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// The ggml type, if this crate reads it.
    pub fn kind(&self) -> Option<GgmlType> {
        GgmlType::from_id(self.type_id)
    }

    /// ggml's name of the type (also for types this crate does not read).
    pub fn type_name(&self) -> String {
        ggml_type_name(self.type_id)
    }
}

/// An opened GGUF file.
pub struct GgufFile {
    path: PathBuf,
    file: File,
    pub version: u32,
    pub alignment: u64,
    metadata: BTreeMap<String, Value>,
    /// Keys in file order (the writer keeps this order on a copy).
    key_order: Vec<String>,
    tensors: Vec<TensorInfo>,
    by_name: BTreeMap<String, usize>,
}

impl GgufFile {
    /// Opens and checks `path`: the magic and version, every metadata value, and that each
    /// tensor's bytes lie inside the file at an aligned offset without overlapping the next.
    pub fn open(path: &Path) -> Result<Self> {
        let io_error = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        let file_len = file.metadata().map_err(io_error)?.len();
        let corrupt = |message: String| GgufError::Corrupt {
            path: path.to_path_buf(),
            message,
        };
        let not_gguf = |message: String| GgufError::NotGguf {
            path: path.to_path_buf(),
            message,
        };
        let mut cursor = Cursor::new(BufReader::with_capacity(1 << 20, &file), file_len);
        let magic = cursor
            .bytes::<4>()
            .map_err(|_| not_gguf(format!("it has only {file_len} bytes")))?;
        if &magic != b"GGUF" {
            return Err(not_gguf(format!(
                "it starts with {magic:02x?}, not the magic `GGUF` (a safetensors checkpoint is a \
                 folder with config.json; pass that folder instead)"
            )));
        }
        let version = cursor.u32().map_err(corrupt)?;
        if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            return Err(not_gguf(
                "it is a big-endian GGUF; only little-endian files are read".into(),
            ));
        }
        if version != 2 && version != 3 {
            return Err(not_gguf(format!(
                "GGUF version {version} is not supported (2 and 3 are; convert older files with \
                 llama.cpp's gguf tools)"
            )));
        }
        let tensor_count = cursor.count("the tensor count", 24).map_err(corrupt)?;
        let kv_count = cursor.count("the metadata count", 12).map_err(corrupt)?;

        let mut metadata = BTreeMap::new();
        let mut key_order = Vec::with_capacity(kv_count);
        for _ in 0..kv_count {
            let key = cursor.string().map_err(corrupt)?;
            let type_id = cursor.u32().map_err(corrupt)?;
            let kind = ValueType::from_id(type_id).ok_or_else(|| GgufError::Metadata {
                path: path.to_path_buf(),
                key: key.clone(),
                message: format!("unknown value type {type_id} (the file is corrupt)"),
            })?;
            let value = cursor.value(kind).map_err(|message| GgufError::Metadata {
                path: path.to_path_buf(),
                key: key.clone(),
                message,
            })?;
            key_order.push(key.clone());
            metadata.insert(key, value);
        }

        let mut tensors = Vec::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = cursor.string().map_err(corrupt)?;
            let n_dims = cursor.u32().map_err(corrupt)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(corrupt(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(cursor.u64().map_err(corrupt)? as usize);
            }
            let type_id = cursor.u32().map_err(corrupt)?;
            let offset = cursor.u64().map_err(corrupt)?;
            tensors.push(TensorInfo {
                name,
                dims,
                type_id,
                offset,
            });
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(value) => match value.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(GgufError::Metadata {
                        path: path.to_path_buf(),
                        key: "general.alignment".into(),
                        message: format!("{} is not a power of two", value.describe()),
                    })
                }
            },
        };
        let data_start = cursor.position.div_ceil(alignment) * alignment;
        let mut by_name = BTreeMap::new();
        for (index, tensor) in tensors.iter_mut().enumerate() {
            if tensor.offset % alignment != 0 {
                return Err(corrupt(format!(
                    "tensor `{}` starts at data offset {}, not a multiple of the alignment {alignment}",
                    tensor.name, tensor.offset
                )));
            }
            tensor.offset += data_start;
            if let Some(kind) = tensor.kind() {
                let elements = tensor.elements();
                let len = kind.byte_len(elements).ok_or_else(|| {
                    corrupt(format!(
                        "tensor `{}` has {elements} elements, not whole blocks of {} for {}",
                        tensor.name,
                        kind.block_size(),
                        kind.name()
                    ))
                })? as u64;
                if tensor.offset + len > file_len {
                    return Err(corrupt(format!(
                        "tensor `{}` ({} {:?}) ends at byte {} but the file has {file_len} bytes \
                         (truncated download?)",
                        tensor.name,
                        kind.name(),
                        tensor.shape(),
                        tensor.offset + len
                    )));
                }
            }
            if by_name.insert(tensor.name.clone(), index).is_some() {
                return Err(corrupt(format!("tensor `{}` appears twice", tensor.name)));
            }
        }
        // Overlap: sorted by offset, each known-size tensor must end before the next starts.
        let mut order: Vec<&TensorInfo> = tensors.iter().collect();
        order.sort_by_key(|t| t.offset);
        for pair in order.windows(2) {
            if let Some(len) = pair[0].kind().and_then(|k| k.byte_len(pair[0].elements())) {
                if pair[0].offset + len as u64 > pair[1].offset {
                    return Err(corrupt(format!(
                        "tensors `{}` and `{}` overlap",
                        pair[0].name, pair[1].name
                    )));
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            version,
            alignment,
            metadata,
            key_order,
            tensors,
            by_name,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of metadata key `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Every metadata key and value, in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.key_order
            .iter()
            .map(|key| (key.as_str(), &self.metadata[key]))
    }

    /// An error about metadata key `key`, naming this file.
    pub fn metadata_error(&self, key: &str, message: impl Into<String>) -> GgufError {
        GgufError::Metadata {
            path: self.path.clone(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A required unsigned integer key.
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        let value = self
            .get(key)
            .ok_or_else(|| self.metadata_error(key, "missing"))?;
        value.as_u64().ok_or_else(|| {
            self.metadata_error(
                key,
                format!("{} is not a non-negative integer", value.describe()),
            )
        })
    }

    /// A required string key.
    pub fn require_str(&self, key: &str) -> Result<&str> {
        let value = self
            .get(key)
            .ok_or_else(|| self.metadata_error(key, "missing"))?;
        value.as_str().ok_or_else(|| {
            self.metadata_error(key, format!("{} is not a string", value.describe()))
        })
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    fn existing_tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })
    }

    /// The tensor and its type, or an error naming it when it is missing or of a type this
    /// crate cannot dequantize.
    fn readable_tensor(&self, name: &str) -> Result<(&TensorInfo, GgmlType)> {
        let info = self.existing_tensor(name)?;
        let kind = info.kind().ok_or_else(|| GgufError::UnsupportedType {
            path: self.path.clone(),
            name: name.to_string(),
            type_name: info.type_name(),
            supported: supported_type_names(),
        })?;
        Ok((info, kind))
    }

    /// The tensor's stored bytes, undecoded.
    pub fn raw_bytes(&self, name: &str) -> Result<(GgmlType, Vec<u8>)> {
        let (info, kind) = self.readable_tensor(name)?;
        let len = kind.byte_len(info.elements()).expect("checked at open");
        let mut bytes = vec![0u8; len];
        self.file
            .read_exact_at(&mut bytes, info.offset)
            .map_err(|source| GgufError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok((kind, bytes))
    }

    /// The tensor dequantized to f32, in row-major PyTorch order, after checking its shape is
    /// `expected_shape` (PyTorch order).
    pub fn read_f32(&self, name: &str, expected_shape: &[usize]) -> Result<Vec<f32>> {
        let info = self.existing_tensor(name)?;
        if info.shape() != expected_shape {
            return Err(GgufError::WrongShape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: expected_shape.to_vec(),
                found: info.shape(),
            });
        }
        let elements = info.elements();
        let (kind, bytes) = self.raw_bytes(name)?;
        let mut out = vec![0f32; elements];
        dequantize(kind, &bytes, &mut out);
        Ok(out)
    }

    /// Rows `rows` of a matrix, dequantized (each row is whole blocks in every ggml type), for
    /// looking at a large tensor without reading all of it.
    pub fn read_rows_f32(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        let (info, kind) = self.readable_tensor(name)?;
        let shape = info.shape();
        let (row_count, row_len) = match shape.as_slice() {
            [rows, cols] => (*rows, *cols),
            _ => (1, info.elements()),
        };
        let row_bytes = kind.byte_len(row_len).ok_or_else(|| GgufError::Corrupt {
            path: self.path.clone(),
            message: format!("tensor `{name}` rows are not whole {} blocks", kind.name()),
        })?;
        let mut out = vec![0f32; rows.len() * row_len];
        let mut bytes = vec![0u8; row_bytes];
        for (&row, out) in rows.iter().zip(out.chunks_exact_mut(row_len)) {
            assert!(row < row_count, "row {row} of {name} out of range");
            self.file
                .read_exact_at(&mut bytes, info.offset + (row * row_bytes) as u64)
                .map_err(|source| GgufError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            dequantize(kind, &bytes, out);
        }
        Ok(out)
    }

    /// How many tensors of each type the file holds, most common first (`Q4_K x 169`).
    pub fn type_counts(&self) -> Vec<(String, usize)> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for tensor in &self.tensors {
            *counts.entry(tensor.type_name()).or_default() += 1;
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        counts
    }
}
