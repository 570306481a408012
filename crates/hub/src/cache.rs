//! The Hugging Face cache, laid out exactly as `huggingface_hub` lays it out, so that a model
//! fetched by Python tools is used here as it is, and one fetched here is found by them:
//!
//! ```text
//! {cache}/models--Qwen--Qwen2.5-1.5B/          (datasets--org--name for datasets)
//!     blobs/{sha256 or git blob sha1}          file contents, named by their hub digest
//!     refs/main                                the commit `main` resolved to (no newline)
//!     snapshots/{commit}/config.json  ->  ../../blobs/{digest}    (relative symlinks)
//! ```
//!
//! A blob is written as `{digest}.incomplete` and renamed once verified, as Python does; a
//! revision that is itself a commit gets no ref. `refs/{revision}` is written once every
//! requested file of the snapshot is in place, so an interrupted download never makes a ref
//! point at a snapshot with missing files.
//!
//! Why not the `hf-hub` crate's cache types: hf-hub 1.0 needs tokio, reqwest and hf-xet even
//! without features. hf-hub 0.4.3 with default features off builds offline (it adds only
//! `dirs` and `log`, already in our lock), but of this layout it covers only the folder name
//! and a ref look-up: `Cache::from_env` ignores `HF_HUB_CACHE` and `XDG_CACHE_HOME` and puts
//! the token beside the cache folder (wrong once `HF_HUB_CACHE` moves the cache);
//! `CacheRepo::get` reads `refs/{revision}` only, so a commit revision (which Python stores
//! without a ref) is never found; the snapshot folder, the blob paths and the symlinks are
//! private or behind its HTTP features; `create_ref` writes in place, not atomically. Using it
//! for `folder_name` alone would add a second `RepoType` for one `format!`.

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::errors::HubError;
use crate::protocol::is_hex_digest;
use crate::repo::RepoType;
use crate::verify::{ExpectedDigest, ExpectedFile};

/// Suffix of a blob still being downloaded (`huggingface_hub`'s too).
const INCOMPLETE_SUFFIX: &str = ".incomplete";

/// One Hugging Face hub cache folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfCache {
    root: PathBuf,
}

impl HfCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HfCache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn repo(&self, repo_id: &str, repo_type: RepoType) -> CachedRepo {
        CachedRepo {
            dir: self.root.join(repo_folder_name(repo_id, repo_type)),
        }
    }
}

/// `huggingface_hub.file_download.repo_folder_name`: `models--org--name`.
pub fn repo_folder_name(repo_id: &str, repo_type: RepoType) -> String {
    let mut parts = vec![format!("{repo_type}s")];
    parts.extend(repo_id.split('/').map(str::to_string));
    parts.join("--")
}

/// Whether `text` is a repo id `huggingface_hub` accepts (`validate_repo_id`): `name` or
/// `org/name` of letters, digits, `-`, `_` and `.`, at most 96 characters, without `--` or
/// `..`, neither part starting or ending with `-` or `.`.
pub fn is_repo_id(text: &str) -> bool {
    let part_ok = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !part.starts_with(['-', '.'])
            && !part.ends_with(['-', '.'])
    };
    let parts: Vec<&str> = text.split('/').collect();
    text.len() <= 96
        && !text.contains("--")
        && !text.contains("..")
        && (1..=2).contains(&parts.len())
        && parts.iter().all(|part| part_ok(part))
}

/// One repo's folder in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedRepo {
    dir: PathBuf,
}

impl CachedRepo {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    pub fn ref_path(&self, revision: &str) -> PathBuf {
        self.dir.join("refs").join(revision)
    }

    /// The blob a file with this digest is stored as.
    pub fn blob_path(&self, digest: &ExpectedDigest) -> PathBuf {
        let (ExpectedDigest::Sha256(hex) | ExpectedDigest::GitBlobSha1(hex)) = digest;
        self.dir.join("blobs").join(hex)
    }

    pub fn incomplete_blob_path(&self, digest: &ExpectedDigest) -> PathBuf {
        let mut path = self.blob_path(digest).into_os_string();
        path.push(INCOMPLETE_SUFFIX);
        PathBuf::from(path)
    }

    /// The commit `revision` stands for here: what `refs/{revision}` holds, else the revision
    /// itself when it is a commit hash with a snapshot (Python writes no ref for those).
    pub fn commit_for(&self, revision: &str) -> Option<String> {
        if let Ok(text) = fs::read_to_string(self.ref_path(revision)) {
            let commit = text.trim();
            if !commit.is_empty() {
                return Some(commit.to_string());
            }
        }
        (is_hex_digest(revision, 40) && self.snapshot_dir(revision).is_dir())
            .then(|| revision.to_string())
    }

    /// The snapshot folder of `revision`, when it is in the cache.
    pub fn snapshot_for(&self, revision: &str) -> Option<PathBuf> {
        let snapshot = self.snapshot_dir(&self.commit_for(revision)?);
        snapshot.is_dir().then_some(snapshot)
    }

    /// Records that `revision` is `commit`, durably; nothing for a revision that is the commit.
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<(), HubError> {
        if revision == commit {
            return Ok(());
        }
        let path = self.ref_path(revision);
        if fs::read_to_string(&path).is_ok_and(|text| text == commit) {
            return Ok(());
        }
        create_parent(&path)?;
        fsio::write_atomic(&path, commit.as_bytes()).map_err(HubError::from)
    }

    /// Whether `snapshots/{commit}/{path}` is there and its blob has the expected size; the
    /// blob's name is its digest and it was checked before it got that name, as in Python.
    pub fn is_present(&self, commit: &str, path: &str, expected: &ExpectedFile) -> Option<u64> {
        let metadata = fs::metadata(self.snapshot_dir(commit).join(path)).ok()?;
        let size_ok = expected.size.is_none_or(|size| size == metadata.len());
        (metadata.is_file() && size_ok).then_some(metadata.len())
    }

    /// The blob for `expected`, when it is already stored (another revision may share it).
    pub fn existing_blob(&self, expected: &ExpectedFile) -> Option<PathBuf> {
        let blob = self.blob_path(expected.digest.as_ref()?);
        let metadata = fs::metadata(&blob).ok()?;
        (metadata.is_file() && expected.size.is_none_or(|size| size == metadata.len()))
            .then_some(blob)
    }

    /// Points `snapshots/{commit}/{path}` at `blob` with a relative symlink, as
    /// `huggingface_hub` does (a copy where the platform has no symlinks). The link is made
    /// under a temporary name and renamed over any old one, so it is never missing or partial.
    pub fn link(&self, commit: &str, path: &str, blob: &Path) -> Result<PathBuf, HubError> {
        let pointer = self.snapshot_dir(commit).join(path);
        create_parent(&pointer)?;
        let temporary = fsio::temporary_path(&pointer);
        let _ = fs::remove_file(&temporary);
        #[cfg(unix)]
        {
            let folder = pointer.parent().expect("a snapshot file has a folder");
            let target = relative_path(folder, blob);
            std::os::unix::fs::symlink(&target, &temporary)
                .map_err(|e| HubError::io("create the symlink", &temporary, e))?;
        }
        #[cfg(not(unix))]
        fs::copy(blob, &temporary).map_err(|e| HubError::io("copy", blob, e))?;
        fsio::commit(&temporary, &pointer)?;
        Ok(pointer)
    }
}

/// `os.path.relpath(target, from)` for two paths under the same cache root.
fn relative_path(from: &Path, target: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let target: Vec<Component> = target.components().collect();
    let shared = from.iter().zip(&target).take_while(|(a, b)| a == b).count();
    let mut relative = PathBuf::new();
    for _ in shared..from.len() {
        relative.push("..");
    }
    for component in &target[shared..] {
        relative.push(component.as_os_str());
    }
    relative
}

fn create_parent(path: &Path) -> Result<(), HubError> {
    match path.parent() {
        Some(parent) => {
            fs::create_dir_all(parent).map_err(|e| HubError::io("create folder", parent, e))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_and_repo_ids_follow_huggingface_hub() {
        assert_eq!(
            repo_folder_name("Qwen/Qwen2.5-1.5B", RepoType::Model),
            "models--Qwen--Qwen2.5-1.5B"
        );
        assert_eq!(
            repo_folder_name("Salesforce/wikitext", RepoType::Dataset),
            "datasets--Salesforce--wikitext"
        );
        assert_eq!(repo_folder_name("gpt2", RepoType::Model), "models--gpt2");
        for good in ["Qwen/Qwen2.5-1.5B", "gpt2", "a_b/c.d"] {
            assert!(is_repo_id(good), "{good}");
        }
        for bad in [
            "",
            "/abs/path",
            "./models/x",
            "../x",
            "a/b/c",
            "a--b/c",
            "a/b.",
            "models/x/",
            "C:\\x",
        ] {
            assert!(!is_repo_id(bad), "{bad}");
        }
    }

    #[test]
    fn relative_links_climb_out_of_the_snapshot_folder() {
        let repo = Path::new("/c/models--a--b");
        let blob = repo.join("blobs/abc");
        assert_eq!(
            relative_path(&repo.join("snapshots/c0"), &blob),
            Path::new("../../blobs/abc")
        );
        assert_eq!(
            relative_path(&repo.join("snapshots/c0/sub/dir"), &blob),
            Path::new("../../../../blobs/abc")
        );
    }
}
