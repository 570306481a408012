//! A TensorBoard event-file writer, written from the file format rather than bound to
//! TensorFlow or a protobuf library.
//!
//! An event file is a sequence of TFRecords, each holding one serialized `tensorflow.Event`
//! protobuf:
//!
//! ```text
//! u64 LE  length of data
//! u32 LE  masked crc32c of the 8 length bytes
//! [u8]    data (the Event message)
//! u32 LE  masked crc32c of data
//! ```
//!
//! where `masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping) and crc32c is the
//! Castagnoli CRC. The first record of a file carries only `file_version = "brain.Event:2"`.
//!
//! The messages used here, with their field numbers (from `tensorflow/core/util/event.proto`
//! and `tensorflow/core/framework/summary.proto`):
//!
//! ```text
//! Event      { double wall_time = 1; int64 step = 2; string file_version = 3;
//!              Summary summary = 5; SessionLog session_log = 7; }
//! Summary    { repeated Value value = 1; }
//! Value      { string tag = 1; float simple_value = 2; }
//! SessionLog { SessionStatus status = 1; }   // START = 1
//! ```
//!
//! Each [`SummaryWriter`] creates a new file `events.out.tfevents.{unix_seconds}.{hostname}` in
//! its log directory, so a resumed run adds a file next to the old ones and TensorBoard merges
//! them into one run. [`SummaryWriter::mark_restart`] writes a `SessionLog.START` event, which
//! makes TensorBoard drop the events of earlier files at or after that step (the orphans of a
//! crashed run), so curves do not double.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The `file_version` of the first record of every event file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Prefix of every event file name; TensorBoard loads the files whose name contains `tfevents`.
pub const FILE_PREFIX: &str = "events.out.tfevents.";

/// How many numbered alternatives are tried when the plain file name is taken (two writers
/// created in the same second in the same directory).
const MAX_NAME_ATTEMPTS: u32 = 1000;

/// `SessionLog.SessionStatus.START`.
const SESSION_START: u64 = 1;

/// A failure to create or write a TensorBoard event file.
#[derive(Debug, thiserror::Error)]
pub enum TensorBoardError {
    /// The log directory could not be created.
    #[error("cannot create TensorBoard log directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The event file could not be created.
    #[error("cannot create TensorBoard event file {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A record could not be written or flushed.
    #[error("cannot write TensorBoard event file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes scalar summaries to a new event file in a log directory.
///
/// Every `add_*` call writes complete records and flushes them to the operating system, so
/// TensorBoard sees them at once and a crash loses nothing already logged. The file is also
/// flushed on [`flush`](Self::flush) and on drop.
#[derive(Debug)]
pub struct SummaryWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl SummaryWriter {
    /// Creates `log_dir` (and its parents) if needed, then a new event file in it named
    /// `events.out.tfevents.{unix_seconds}.{hostname}` (with a `.NNNN` suffix if that name is
    /// taken), and writes the file-version record.
    pub fn create(log_dir: impl AsRef<Path>) -> Result<Self, TensorBoardError> {
        let log_dir = log_dir.as_ref();
        fs::create_dir_all(log_dir).map_err(|source| TensorBoardError::CreateDir {
            path: log_dir.to_path_buf(),
            source,
        })?;
        let base = format!("{FILE_PREFIX}{}.{}", unix_seconds(), hostname());
        let mut attempt = 0;
        let (path, file) = loop {
            let name = if attempt == 0 {
                base.clone()
            } else {
                format!("{base}.{attempt:04}")
            };
            let path = log_dir.join(name);
            // Append mode and a fresh file: an existing log is never overwritten, and a
            // resumed run adds its own file next to the old ones.
            match OpenOptions::new().append(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists && attempt < MAX_NAME_ATTEMPTS =>
                {
                    attempt += 1;
                }
                Err(source) => return Err(TensorBoardError::Create { path, source }),
            }
        };
        let mut writer = Self {
            path,
            out: BufWriter::new(file),
        };
        let event = encode_event(wall_time(), 0, Payload::FileVersion(FILE_VERSION));
        writer.write_record(&event)?;
        writer.flush()?;
        Ok(writer)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs one scalar `value` under `tag` at `step`.
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: i64) -> Result<(), TensorBoardError> {
        self.add_scalars(step, [(tag, value)])
    }

    /// Logs several scalars at the same `step`, as one event (a summary with one value per
    /// tag). Nothing is written when `scalars` is empty.
    pub fn add_scalars<I, T>(&mut self, step: i64, scalars: I) -> Result<(), TensorBoardError>
    where
        I: IntoIterator<Item = (T, f32)>,
        T: AsRef<str>,
    {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::with_capacity(tag.as_ref().len() + 8);
            put_bytes(&mut v, 1, tag.as_ref().as_bytes());
            put_key(&mut v, 2, WIRE_FIXED32);
            v.extend_from_slice(&value.to_le_bytes());
            put_bytes(&mut summary, 1, &v);
        }
        if summary.is_empty() {
            return Ok(());
        }
        let event = encode_event(wall_time(), step, Payload::Summary(&summary));
        self.write_record(&event)?;
        self.flush()
    }

    /// Writes a `SessionLog.START` event at `step`: TensorBoard then discards the events it
    /// read before this one (in this run's earlier files) whose step is `>= step`. A run resumed
    /// from a checkpoint at step `S` calls this with `S + 1`, dropping what a crashed run logged
    /// after its last checkpoint; a fresh run calls it with `0`, hiding an older run's events
    /// left in the same directory.
    pub fn mark_restart(&mut self, step: i64) -> Result<(), TensorBoardError> {
        let event = encode_event(wall_time(), step, Payload::SessionStart);
        self.write_record(&event)?;
        self.flush()
    }

    /// Flushes buffered records to the operating system.
    pub fn flush(&mut self) -> Result<(), TensorBoardError> {
        self.out.flush().map_err(|source| TensorBoardError::Write {
            path: self.path.clone(),
            source,
        })
    }

    fn write_record(&mut self, data: &[u8]) -> Result<(), TensorBoardError> {
        let record = encode_record(data);
        self.out
            .write_all(&record)
            .map_err(|source| TensorBoardError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

impl Drop for SummaryWriter {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; call `flush` first to see them.
        let _ = self.out.flush();
    }
}

/// Frames `data` as one TFRecord: length, masked crc32c of the length, data, masked crc32c of
/// the data.
pub fn encode_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut record = Vec::with_capacity(data.len() + 16);
    record.extend_from_slice(&len);
    record.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    record.extend_from_slice(data);
    record.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    record
}

/// The TFRecord mask of a crc32c: rotate right by 15 bits, then add `0xa282ead8` (wrapping).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli, reflected polynomial `0x82F63B78`), table-driven.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc = CRC32C_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC32C_TABLE: [u32; 256] = crc32c_table();

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

enum Payload<'a> {
    FileVersion(&'a str),
    /// An encoded `Summary` message.
    Summary(&'a [u8]),
    SessionStart,
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

fn encode_event(wall_time: f64, step: i64, payload: Payload<'_>) -> Vec<u8> {
    let mut buf = Vec::new();
    put_key(&mut buf, 1, WIRE_FIXED64);
    buf.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        // proto3 leaves default values out; int64 is a varint of the two's complement.
        put_key(&mut buf, 2, WIRE_VARINT);
        put_varint(&mut buf, step as u64);
    }
    match payload {
        Payload::FileVersion(version) => put_bytes(&mut buf, 3, version.as_bytes()),
        Payload::Summary(summary) => put_bytes(&mut buf, 5, summary),
        Payload::SessionStart => {
            let mut log = Vec::with_capacity(2);
            put_key(&mut log, 1, WIRE_VARINT);
            put_varint(&mut log, SESSION_START);
            put_bytes(&mut buf, 7, &log);
        }
    }
    buf
}

fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

fn put_key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(buf, field, WIRE_LEN);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The host name for the file name, from the kernel, else `$HOSTNAME`, else `localhost`;
/// characters other than ASCII letters, digits, `.`, `-` and `_` become `_`.
fn hostname() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vectors() {
        // RFC 3720 (iSCSI) B.4 and the usual check value.
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46dd_794e);
    }

    #[test]
    fn varint_and_negative_step() {
        let mut buf = Vec::new();
        put_varint(&mut buf, 300);
        assert_eq!(buf, [0xac, 0x02]);
        buf.clear();
        put_varint(&mut buf, -1i64 as u64);
        assert_eq!(buf.len(), 10);
    }

    #[test]
    fn file_version_event_layout() {
        let event = encode_event(1.5, 0, Payload::FileVersion(FILE_VERSION));
        let mut expected = vec![0x09];
        expected.extend_from_slice(&1.5f64.to_le_bytes());
        expected.push(0x1a);
        expected.push(FILE_VERSION.len() as u8);
        expected.extend_from_slice(FILE_VERSION.as_bytes());
        assert_eq!(event, expected);
    }
}
