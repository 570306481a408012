//! The download's target folder and the bookkeeping kept inside it.
//!
//! Files land at `{local_dir}/{path}` exactly as in the repo, so other tools can read them
//! directly. While being written a file is `{path}.incomplete`: its final name appears only
//! by a rename after verification, so a name without the suffix always means a complete,
//! checked file. `{local_dir}/.cache/hub/` records what was verified, so that a re-run can
//! tell "present and verified" without the network:
//!
//! - `files/{path}.json`: a [`FileRecord`] per file;
//! - `snapshot.json`: the last listing seen online ([`Snapshot`]), which says what an offline
//!   re-run with the same `--include` should find.

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::errors::HubError;
use crate::verify::{hash_file, ExpectedDigest, ExpectedFile};

/// Suffix of a file still being downloaded (the name `huggingface_hub` uses too).
pub const INCOMPLETE_SUFFIX: &str = ".incomplete";

/// What was verified about one downloaded file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub repo: String,
    pub repo_type: String,
    pub revision: String,
    pub commit: Option<String>,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub git_blob_sha1: Option<String>,
    /// The file's modification time when it was verified: if it still matches, the content
    /// is trusted without hashing gigabytes again.
    pub mtime_ns: Option<u128>,
}

impl FileRecord {
    /// Whether this record proves the file is what `expected` describes.
    fn satisfies(&self, expected: &ExpectedFile) -> bool {
        let size_ok = expected.size.is_none_or(|size| size == self.size);
        let digest_ok = match &expected.digest {
            None => true,
            Some(ExpectedDigest::Sha256(hex)) => self.sha256.eq_ignore_ascii_case(hex),
            Some(ExpectedDigest::GitBlobSha1(hex)) => self
                .git_blob_sha1
                .as_deref()
                .is_some_and(|blob| blob.eq_ignore_ascii_case(hex)),
        };
        size_ok && digest_ok
    }
}

/// The listing of a repo at a revision as last seen online.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub repo: String,
    pub repo_type: String,
    pub revision: String,
    pub commit: Option<String>,
    pub files: Vec<SnapshotFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub path: String,
    pub expected: ExpectedFile,
}

/// A download's target folder.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the finished file goes. `path` must have passed [`check_repo_path`].
    pub fn final_path(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    pub fn partial_path(&self, path: &str) -> PathBuf {
        self.root.join(format!("{path}{INCOMPLETE_SUFFIX}"))
    }

    fn metadata_dir(&self) -> PathBuf {
        self.root.join(".cache").join("hub")
    }

    fn record_path(&self, path: &str) -> PathBuf {
        self.metadata_dir()
            .join("files")
            .join(format!("{path}.json"))
    }

    fn snapshot_path(&self) -> PathBuf {
        self.metadata_dir().join("snapshot.json")
    }

    /// Creates the parent folders of `path` (a repo path may have subfolders).
    pub fn prepare_parent(&self, path: &Path) -> Result<(), HubError> {
        match path.parent() {
            Some(parent) => {
                fs::create_dir_all(parent).map_err(|e| HubError::io("create folder", parent, e))
            }
            None => Ok(()),
        }
    }

    pub fn read_record(&self, path: &str) -> Option<FileRecord> {
        read_json(&self.record_path(path))
    }

    pub fn write_record(&self, record: &FileRecord) -> Result<(), HubError> {
        self.write_json(&self.record_path(&record.path), record)
    }

    pub fn read_snapshot(&self) -> Option<Snapshot> {
        read_json(&self.snapshot_path())
    }

    pub fn write_snapshot(&self, snapshot: &Snapshot) -> Result<(), HubError> {
        self.write_json(&self.snapshot_path(), snapshot)
    }

    /// Whether `{local_dir}/{path}` is complete and matches `expected`. Trusts the record
    /// when size and mtime are unchanged since it was verified; otherwise hashes the file
    /// and, if it matches, refreshes the record (`template` supplies its other fields).
    pub fn is_verified(
        &self,
        path: &str,
        expected: &ExpectedFile,
        template: &FileRecord,
    ) -> Result<bool, HubError> {
        let final_path = self.final_path(path);
        let Ok(metadata) = fs::metadata(&final_path) else {
            return Ok(false);
        };
        if !metadata.is_file() || expected.size.is_some_and(|size| size != metadata.len()) {
            return Ok(false);
        }
        let mtime = mtime_ns(&metadata);
        if let Some(record) = self.read_record(path) {
            if record.size == metadata.len()
                && record.mtime_ns.is_some()
                && record.mtime_ns == mtime
                && record.satisfies(expected)
            {
                return Ok(true);
            }
        }
        let digests = hash_file(&final_path, expected.wants_git_blob())
            .map_err(|e| HubError::io("read", &final_path, e))?;
        if expected.check(path, &digests).is_err() {
            return Ok(false);
        }
        self.write_record(&FileRecord {
            path: path.to_string(),
            size: digests.size,
            sha256: digests.sha256,
            git_blob_sha1: digests.git_blob_sha1,
            mtime_ns: mtime,
            ..template.clone()
        })?;
        Ok(true)
    }

    /// Written whole or not at all, so a crash never leaves half a record.
    fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), HubError> {
        self.prepare_parent(path)?;
        let text = serde_json::to_vec_pretty(value).expect("records serialize");
        fsio::write_atomic(path, &text).map_err(HubError::from)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let text = fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// A file's modification time in nanoseconds since the epoch, where the platform has one.
pub fn mtime_ns(metadata: &fs::Metadata) -> Option<u128> {
    metadata
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_nanos())
}

/// Rejects repo paths that would escape the target folder or clash with the bookkeeping:
/// the names come from a server, and a mirror is not trusted to write anywhere it likes.
pub fn check_repo_path(path: &str, url: &str) -> Result<(), HubError> {
    let unsafe_path = |reason: &str| HubError::Protocol {
        url: url.to_string(),
        reason: format!("refusing repo file name {path:?}: {reason}"),
    };
    let as_path = Path::new(path);
    if path.is_empty() || as_path.is_absolute() {
        return Err(unsafe_path("not a relative path"));
    }
    if !as_path
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(unsafe_path("it leaves the target folder"));
    }
    if as_path.starts_with(".cache/hub") || path.ends_with(INCOMPLETE_SUFFIX) {
        return Err(unsafe_path("it clashes with the download's bookkeeping"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> FileRecord {
        FileRecord {
            repo: "a/b".into(),
            repo_type: "model".into(),
            revision: "main".into(),
            commit: None,
            path: String::new(),
            size: 0,
            sha256: String::new(),
            git_blob_sha1: None,
            mtime_ns: None,
        }
    }

    #[test]
    fn refuses_paths_outside_the_target_folder() {
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../b",
            "",
            ".cache/hub/x",
            "w.incomplete",
        ] {
            assert!(check_repo_path(bad, "u").is_err(), "{bad}");
        }
        for good in [
            "config.json",
            "wikitext-2-raw-v1/test-00000-of-00001.parquet",
        ] {
            assert!(check_repo_path(good, "u").is_ok(), "{good}");
        }
    }

    #[test]
    fn verification_hashes_once_then_trusts_the_record_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalDir::new(dir.path());
        fs::write(local.final_path("f.bin"), b"abc").unwrap();
        let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let expected = ExpectedFile {
            size: Some(3),
            digest: Some(ExpectedDigest::Sha256(sha.into())),
        };
        assert!(local.is_verified("f.bin", &expected, &template()).unwrap());
        let record = local.read_record("f.bin").unwrap();
        assert_eq!(record.sha256, sha);
        assert_eq!(record.path, "f.bin");

        // Same size, different content, newer mtime: hashed again and rejected.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(local.final_path("f.bin"), b"abd").unwrap();
        assert!(!local.is_verified("f.bin", &expected, &template()).unwrap());
        assert!(!local
            .is_verified("missing", &expected, &template())
            .unwrap());
    }
}
