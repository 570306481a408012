//! Files are written whole or not at all: a temporary file in the same directory, synced, then
//! renamed over the target, so a crash never leaves a half-written report.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::EvalError;

/// The temporary name used while `path` is being written (same directory, hidden, and keeping
/// the extension, which some writers use to choose the format).
pub fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let extension = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp{extension}", std::process::id()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EvalError> {
    let temporary = temporary_path(path);
    let result = (|| {
        let mut file = File::create(&temporary).map_err(EvalError::io("create", &temporary))?;
        file.write_all(bytes)
            .map_err(EvalError::io("write", &temporary))?;
        file.sync_all().map_err(EvalError::io("sync", &temporary))?;
        fs::rename(&temporary, path).map_err(EvalError::io("replace", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Renames a finished temporary file over `path`.
pub fn commit(temporary: &Path, path: &Path) -> Result<(), EvalError> {
    fs::rename(temporary, path).map_err(EvalError::io("replace", path))
}
