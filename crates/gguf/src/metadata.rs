//! GGUF metadata values (`general.*`, `<arch>.*`, `tokenizer.*` keys) and their encoding.

use std::io::{self, Read, Write};

/// The value types of GGUF metadata, by their id in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        [
            U8, I8, U16, I16, U32, I32, F32, Bool, String, Array, U64, I64, F64,
        ]
        .into_iter()
        .find(|t| *t as u32 == id)
    }
}

/// One metadata value, with the exact type it has in the file (so a copy keeps it).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// The element type (needed to write an empty array) and the elements.
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// The value as an unsigned integer, whatever integer type the writer chose (files differ:
    /// `u32` in llama.cpp's converter, `u64` or `i32` elsewhere); `None` for a negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, values) => Some(values),
            _ => None,
        }
    }

    /// A short description for error messages (`u32 151936`, `array of 151936 string`).
    pub fn describe(&self) -> String {
        match self {
            Value::String(s) if s.len() > 40 => format!("string of {} bytes", s.len()),
            Value::String(s) => format!("string {s:?}"),
            Value::Array(t, v) => format!("array of {} {t:?}", v.len()),
            other => format!("{other:?}"),
        }
    }

    pub(crate) fn write(&self, out: &mut impl Write) -> io::Result<()> {
        match self {
            Value::U8(v) => out.write_all(&v.to_le_bytes()),
            Value::I8(v) => out.write_all(&v.to_le_bytes()),
            Value::U16(v) => out.write_all(&v.to_le_bytes()),
            Value::I16(v) => out.write_all(&v.to_le_bytes()),
            Value::U32(v) => out.write_all(&v.to_le_bytes()),
            Value::I32(v) => out.write_all(&v.to_le_bytes()),
            Value::F32(v) => out.write_all(&v.to_le_bytes()),
            Value::Bool(v) => out.write_all(&[*v as u8]),
            Value::String(v) => write_string(out, v),
            Value::Array(element, values) => {
                out.write_all(&(*element as u32).to_le_bytes())?;
                out.write_all(&(values.len() as u64).to_le_bytes())?;
                values.iter().try_for_each(|v| v.write(out))
            }
            Value::U64(v) => out.write_all(&v.to_le_bytes()),
            Value::I64(v) => out.write_all(&v.to_le_bytes()),
            Value::F64(v) => out.write_all(&v.to_le_bytes()),
        }
    }
}

pub(crate) fn write_string(out: &mut impl Write, s: &str) -> io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

/// A little-endian reader that knows how many bytes remain, so a length field larger than the
/// file is reported as corruption instead of attempting a huge allocation.
pub(crate) struct Cursor<R> {
    inner: R,
    pub position: u64,
    pub file_len: u64,
}

impl<R: Read> Cursor<R> {
    pub fn new(inner: R, file_len: u64) -> Self {
        Self {
            inner,
            position: 0,
            file_len,
        }
    }

    pub fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut buffer = [0u8; N];
        self.inner
            .read_exact(&mut buffer)
            .map_err(|_| format!("the file ends at byte {} inside the header", self.file_len))?;
        self.position += N as u64;
        Ok(buffer)
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// A count of items of at least `min_item_bytes` each, checked against what remains.
    pub fn count(&mut self, what: &str, min_item_bytes: u64) -> Result<usize, String> {
        let count = self.u64()?;
        let remaining = self.file_len.saturating_sub(self.position);
        if count.saturating_mul(min_item_bytes.max(1)) > remaining {
            return Err(format!(
                "{what} claims {count} items at byte {}, more than the {remaining} bytes left",
                self.position - 8
            ));
        }
        Ok(count as usize)
    }

    pub fn string(&mut self) -> Result<String, String> {
        let len = self.count("a string", 1)?;
        let mut buffer = vec![0u8; len];
        self.inner
            .read_exact(&mut buffer)
            .map_err(|_| format!("the file ends at byte {} inside a string", self.file_len))?;
        self.position += len as u64;
        String::from_utf8(buffer)
            .map_err(|_| format!("a string ending at byte {} is not UTF-8", self.position))
    }

    pub fn value(&mut self, kind: ValueType) -> Result<Value, String> {
        Ok(match kind {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.bytes()?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.bytes()?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.bytes()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.bytes()?)),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.bytes()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.bytes()?)),
            ValueType::Bool => match self.bytes::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => return Err(format!("a bool holds {other}")),
            },
            ValueType::String => Value::String(self.string()?),
            ValueType::Array => {
                let element_id = self.u32()?;
                let element = ValueType::from_id(element_id)
                    .ok_or_else(|| format!("an array has unknown element type {element_id}"))?;
                let count = self.count("an array", 1)?;
                let mut values = Vec::with_capacity(count);
                for _ in 0..count {
                    values.push(self.value(element)?);
                }
                Value::Array(element, values)
            }
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.bytes()?)),
        })
    }
}
