//! Writing a GGUF (version 3) file: whole or not at all (a temporary file renamed into place
//! once synced, through `fsio`), one tensor materialised at a time.

use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::Result;
use crate::metadata::{write_string, Value};
use crate::quants::quantize;
use crate::read::DEFAULT_ALIGNMENT;
use crate::types::GgmlType;

/// One tensor to write: its GGUF name, PyTorch-order shape, the type to store it as, and a
/// producer of its f32 values, called once when its turn comes.
pub struct TensorToWrite<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: GgmlType,
    pub values: Box<dyn FnOnce() -> Vec<f32> + 'a>,
}

/// Writes `path` with `metadata` (in the given order) and `tensors` (in the given order, each
/// aligned to 32 bytes). Panics if a tensor's element count does not fill whole blocks of its
/// type or its producer returns the wrong number of values: callers choose the types.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: Vec<TensorToWrite<'_>>,
) -> Result<()> {
    let alignment = DEFAULT_ALIGNMENT as usize;
    let mut header = Vec::new();
    header.extend_from_slice(b"GGUF");
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        write_string(&mut header, key).expect("vec");
        header.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
        value.write(&mut header).expect("vec");
    }
    let mut offset = 0usize;
    for tensor in &tensors {
        let elements: usize = tensor.shape.iter().product();
        let len = tensor.kind.byte_len(elements).unwrap_or_else(|| {
            panic!(
                "tensor {} ({elements} values) does not fill whole {} blocks",
                tensor.name,
                tensor.kind.name()
            )
        });
        write_string(&mut header, &tensor.name).expect("vec");
        header.extend_from_slice(&(tensor.shape.len() as u32).to_le_bytes());
        for dim in tensor.shape.iter().rev() {
            header.extend_from_slice(&(*dim as u64).to_le_bytes());
        }
        header.extend_from_slice(&tensor.kind.id().to_le_bytes());
        header.extend_from_slice(&(offset as u64).to_le_bytes());
        offset = (offset + len).div_ceil(alignment) * alignment;
    }
    header.resize(header.len().div_ceil(alignment) * alignment, 0);

    fsio::write_atomic_with(path, |file| {
        let mut writer = BufWriter::with_capacity(8 << 20, file);
        writer.write_all(&header)?;
        let mut buffer = Vec::new();
        for tensor in tensors {
            let values = (tensor.values)();
            let elements: usize = tensor.shape.iter().product();
            assert_eq!(values.len(), elements, "tensor {} value count", tensor.name);
            buffer.clear();
            quantize(tensor.kind, &values, &mut buffer);
            drop(values);
            let padded = buffer.len().div_ceil(alignment) * alignment;
            buffer.resize(padded, 0);
            writer.write_all(&buffer)?;
        }
        writer.flush()
    })?;
    Ok(())
}
