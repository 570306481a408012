//! Files that every stage writes are written whole or not at all, and survive a power cut once
//! the call returns: the bytes go to a temporary file in the same directory, which is synced,
//! renamed over the target, and the directory is synced so the rename itself is durable.
//! File hashes (sha256, hex) are computed here too, streamed, so no stage reads a multi-GB
//! checkpoint into memory to hash it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// An I/O failure with the action and the file it concerned.
#[derive(Debug, thiserror::Error)]
#[error("could not {action} {}: {source}", path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FileError {
    pub fn new(action: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// A closure for `map_err` that records `action` on `path`.
    pub fn on<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::new(action, path, source)
    }
}

pub type Result<T> = std::result::Result<T, FileError>;

/// The temporary name used while `path` is being written: same directory (so the rename is
/// atomic), hidden, unique to this process, and keeping the extension, which some writers use
/// to choose a format.
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

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// Writes `path` atomically and durably with `write`, which receives the temporary file. On
/// any error the temporary file is removed and `path` is left as it was.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<()> {
    let temporary = temporary_path(path);
    let result = (|| {
        let mut file = File::create(&temporary).map_err(FileError::on("create", &temporary))?;
        write(&mut file).map_err(FileError::on("write", &temporary))?;
        file.sync_all().map_err(FileError::on("sync", &temporary))?;
        drop(file);
        commit(&temporary, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Renames a finished, synced temporary file (or directory) over `path` and makes the rename
/// durable.
pub fn commit(temporary: &Path, path: &Path) -> Result<()> {
    fs::rename(temporary, path).map_err(FileError::on("replace", path))?;
    sync_parent(path);
    Ok(())
}

/// Makes renames inside `dir` durable. Best effort: not every filesystem lets a directory be
/// opened and synced, and the rename has already happened either way.
pub fn sync_dir(dir: &Path) {
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
}

/// [`sync_dir`] on the directory that holds `path`.
pub fn sync_parent(path: &Path) {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// Hex sha256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(FileError::on("open", path))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(FileError::on("read", path))?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old").unwrap();
        let error = write_atomic_with(&path, |file| {
            file.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(error.action, "write");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn hashes_match_the_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").unwrap();
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex(b"abc"), expected);
        assert_eq!(sha256_file(&path).unwrap(), expected);
        let missing = sha256_file(&dir.path().join("missing")).unwrap_err();
        assert!(missing.to_string().contains("could not open"), "{missing}");
    }
}
