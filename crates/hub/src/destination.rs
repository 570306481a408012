//! Where a download puts its files: a plain folder (`--local-dir`, files at their repo paths
//! with bookkeeping in `.cache/hub/`) or the Hugging Face cache (blobs named by digest,
//! snapshot symlinks, refs). The download itself (list, select, fetch, verify) is the same for
//! both; only these steps differ.

use std::fs;
use std::path::{Path, PathBuf};

use crate::cache::CachedRepo;
use crate::errors::HubError;
use crate::local_dir::{mtime_ns, FileRecord, LocalDir, Snapshot, SnapshotFile};
use crate::protocol::Endpoint;
use crate::repo::RepoRef;
use crate::selection::{FileAction, FileReport, Wanted};
use crate::verify::{ContentDigests, ExpectedFile};

pub(crate) trait Destination {
    /// Where the requested files can be read once the download is done.
    fn location(&self) -> PathBuf;

    /// Where the files of an earlier download at `commit` are (the snapshot, for the cache).
    fn location_at(&self, _commit: Option<&str>) -> PathBuf {
        self.location()
    }

    /// Takes note of the listing before any file is fetched.
    fn start(
        &mut self,
        endpoint: &Endpoint,
        commit: Option<&str>,
        listed: &[SnapshotFile],
    ) -> Result<(), HubError>;

    /// The size of `path` when it is already in place and verified (or could be put in place
    /// without downloading), so it need not be fetched.
    fn reuse(&self, path: &str, expected: &ExpectedFile) -> Result<Option<u64>, HubError>;

    /// Where the bytes of `path` are written while they arrive.
    fn partial_path(&self, path: &str, expected: &ExpectedFile) -> Result<PathBuf, HubError>;

    /// Moves the verified partial file into place.
    fn finish(&self, path: &str, partial: &Path, digests: &ContentDigests) -> Result<(), HubError>;

    /// Every requested file is in place.
    fn complete(&self) -> Result<(), HubError>;

    /// Without the hub: the files of an earlier download that `wanted` selects, or what is
    /// missing.
    fn offline_copy(
        &self,
        wanted: &Wanted,
    ) -> Result<(Option<String>, Vec<FileReport>), Vec<String>>;
}

/// `--local-dir`: files at their repo paths.
pub(crate) struct LocalDirDestination {
    local: LocalDir,
    /// Fields shared by every file's record (repo, revision, commit).
    template: FileRecord,
}

impl LocalDirDestination {
    pub fn new(root: &Path, repo: &RepoRef) -> Self {
        LocalDirDestination {
            local: LocalDir::new(root),
            template: FileRecord {
                repo: repo.repo.clone(),
                repo_type: repo.repo_type.to_string(),
                revision: repo.revision.clone(),
                commit: None,
                path: String::new(),
                size: 0,
                sha256: String::new(),
                git_blob_sha1: None,
                mtime_ns: None,
            },
        }
    }

    fn size_of(&self, path: &str) -> u64 {
        fs::metadata(self.local.final_path(path))
            .map(|m| m.len())
            .unwrap_or_default()
    }
}

impl Destination for LocalDirDestination {
    fn location(&self) -> PathBuf {
        self.local.root().to_path_buf()
    }

    fn start(
        &mut self,
        _endpoint: &Endpoint,
        commit: Option<&str>,
        listed: &[SnapshotFile],
    ) -> Result<(), HubError> {
        self.template.commit = commit.map(str::to_string);
        self.local.write_snapshot(&Snapshot {
            repo: self.template.repo.clone(),
            repo_type: self.template.repo_type.clone(),
            revision: self.template.revision.clone(),
            commit: self.template.commit.clone(),
            files: listed.to_vec(),
        })
    }

    fn reuse(&self, path: &str, expected: &ExpectedFile) -> Result<Option<u64>, HubError> {
        Ok(self
            .local
            .is_verified(path, expected, &self.template)?
            .then(|| self.size_of(path)))
    }

    fn partial_path(&self, path: &str, _expected: &ExpectedFile) -> Result<PathBuf, HubError> {
        Ok(self.local.partial_path(path))
    }

    fn finish(&self, path: &str, partial: &Path, digests: &ContentDigests) -> Result<(), HubError> {
        let final_path = self.local.final_path(path);
        fsio::commit(partial, &final_path)?;
        let mtime = fs::metadata(&final_path).ok().and_then(|m| mtime_ns(&m));
        self.local.write_record(&FileRecord {
            path: path.to_string(),
            size: digests.size,
            sha256: digests.sha256.clone(),
            git_blob_sha1: digests.git_blob_sha1.clone(),
            mtime_ns: mtime,
            ..self.template.clone()
        })
    }

    fn complete(&self) -> Result<(), HubError> {
        Ok(())
    }

    /// Checks the local copy against the last listing seen online.
    fn offline_copy(
        &self,
        wanted: &Wanted,
    ) -> Result<(Option<String>, Vec<FileReport>), Vec<String>> {
        let repo = wanted.repo;
        let snapshot = self.local.read_snapshot().filter(|s| {
            s.repo == repo.repo
                && s.repo_type == repo.repo_type.to_string()
                && s.revision == repo.revision
        });
        let Some(snapshot) = snapshot else {
            return Err(vec![format!(
                "all of {}@{} (no earlier download of it is recorded there)",
                repo.repo, repo.revision
            )]);
        };
        let selected = wanted
            .select(&snapshot.files)
            .map_err(|e| vec![e.to_string()])?;
        let template = FileRecord {
            commit: snapshot.commit.clone(),
            ..self.template.clone()
        };
        let mut files = Vec::new();
        let mut missing = Vec::new();
        for file in selected {
            match self
                .local
                .is_verified(&file.path, &file.expected, &template)
            {
                Ok(true) => files.push(FileReport {
                    path: file.path.clone(),
                    size: self.size_of(&file.path),
                    action: FileAction::AlreadyPresent,
                }),
                Ok(false) => missing.push(file.path.clone()),
                Err(error) => missing.push(format!("{} ({error})", file.path)),
            }
        }
        if missing.is_empty() {
            Ok((snapshot.commit, files))
        } else {
            Err(missing)
        }
    }
}

/// The Hugging Face cache (see [`crate::cache`]).
pub(crate) struct CacheDestination {
    repo: CachedRepo,
    revision: String,
    commit: String,
}

impl CacheDestination {
    pub fn new(repo: CachedRepo, revision: &str) -> Self {
        CacheDestination {
            repo,
            revision: revision.to_string(),
            commit: String::new(),
        }
    }
}

impl Destination for CacheDestination {
    fn location(&self) -> PathBuf {
        if self.commit.is_empty() {
            self.repo.dir().to_path_buf()
        } else {
            self.repo.snapshot_dir(&self.commit)
        }
    }

    fn location_at(&self, commit: Option<&str>) -> PathBuf {
        match commit {
            Some(commit) => self.repo.snapshot_dir(commit),
            None => self.location(),
        }
    }

    fn start(
        &mut self,
        endpoint: &Endpoint,
        commit: Option<&str>,
        _listed: &[SnapshotFile],
    ) -> Result<(), HubError> {
        // The cache is organised by commit: a listing without one cannot be placed.
        self.commit = commit
            .filter(|c| !c.is_empty() && !c.contains(['/', '\\', '.']))
            .ok_or_else(|| HubError::Protocol {
                url: endpoint.as_str().to_string(),
                reason: "the repo listing names no commit (`sha`), which the Hugging Face cache \
                         needs; download with --local-dir instead"
                    .into(),
            })?
            .to_string();
        fs::create_dir_all(self.location())
            .map_err(|e| HubError::io("create folder", self.location(), e))
    }

    fn reuse(&self, path: &str, expected: &ExpectedFile) -> Result<Option<u64>, HubError> {
        if let Some(size) = self.repo.is_present(&self.commit, path, expected) {
            return Ok(Some(size));
        }
        // Another revision may have stored the same content already: link it, as Python does.
        match self.repo.existing_blob(expected) {
            Some(blob) => {
                self.repo.link(&self.commit, path, &blob)?;
                Ok(self.repo.is_present(&self.commit, path, expected))
            }
            None => Ok(None),
        }
    }

    fn partial_path(&self, path: &str, expected: &ExpectedFile) -> Result<PathBuf, HubError> {
        let digest = expected.digest.as_ref().ok_or_else(|| HubError::Protocol {
            url: path.to_string(),
            reason: "the hub gave neither a sha256 nor a git blob id for this file, and the \
                     Hugging Face cache names files by it; download with --local-dir instead"
                .into(),
        })?;
        let partial = self.repo.incomplete_blob_path(digest);
        if let Some(parent) = partial.parent() {
            fs::create_dir_all(parent).map_err(|e| HubError::io("create folder", parent, e))?;
        }
        Ok(partial)
    }

    fn finish(
        &self,
        path: &str,
        partial: &Path,
        _digests: &ContentDigests,
    ) -> Result<(), HubError> {
        // `blobs/{digest}.incomplete`, named after the digest the content was checked against.
        let blob = partial.with_extension("");
        fsio::commit(partial, &blob)?;
        self.repo.link(&self.commit, path, &blob)?;
        Ok(())
    }

    fn complete(&self) -> Result<(), HubError> {
        self.repo.write_ref(&self.revision, &self.commit)
    }

    /// What `huggingface_hub` falls back to without the hub: the snapshot the revision's ref
    /// (or the commit itself) names, with whatever files it holds.
    fn offline_copy(
        &self,
        wanted: &Wanted,
    ) -> Result<(Option<String>, Vec<FileReport>), Vec<String>> {
        let repo = wanted.repo;
        let commit = self.repo.commit_for(&repo.revision);
        let snapshot = commit.as_deref().map(|c| self.repo.snapshot_dir(c));
        let Some((commit, snapshot)) = commit.zip(snapshot.filter(|s| s.is_dir())) else {
            return Err(vec![format!(
                "all of {}@{} (no snapshot of it in {})",
                repo.repo,
                repo.revision,
                self.repo.dir().display()
            )]);
        };
        let mut present = Vec::new();
        list_files(&snapshot, &snapshot, &mut present);
        present.sort();
        let listed: Vec<SnapshotFile> = present
            .iter()
            .map(|(path, _)| SnapshotFile {
                path: path.clone(),
                expected: ExpectedFile::default(),
            })
            .collect();
        let selected = wanted.select(&listed).map_err(|e| vec![e.to_string()])?;
        let files = selected
            .into_iter()
            .map(|file| FileReport {
                path: file.path.clone(),
                size: present
                    .iter()
                    .find(|(path, _)| *path == file.path)
                    .map_or(0, |(_, size)| *size),
                action: FileAction::AlreadyPresent,
            })
            .collect();
        Ok((Some(commit), files))
    }
}

/// The readable files under `dir` (symlinks followed; a dangling link is left out), with
/// their sizes and `/`-separated paths relative to `root`.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(metadata) = fs::metadata(&path) else {
            continue;
        };
        if metadata.is_dir() {
            list_files(root, &path, out);
        } else if let Ok(relative) = path.strip_prefix(root) {
            let relative: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push((relative.join("/"), metadata.len()));
        }
    }
}
