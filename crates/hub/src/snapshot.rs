//! Downloading the files of one repo that match `--include`, like
//! `huggingface-cli download --local-dir`: list, select, skip what is already verified,
//! fetch the rest. When the hub cannot be reached, the local copy is checked against the last
//! listing seen online, and a complete copy is enough.

use std::path::PathBuf;
use std::thread;

use glob::{MatchOptions, Pattern};

use crate::client::{HubClient, Timeouts};
use crate::disk::available_space;
use crate::download::FileFetcher;
use crate::errors::HubError;
use crate::local_dir::{check_repo_path, FileRecord, LocalDir, Snapshot, SnapshotFile};
use crate::protocol::{Endpoint, RepoInfo, RepoRef};
use crate::retry::RetryPolicy;
use crate::verify::ExpectedFile;

/// Where and how to reach the hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Base URL, e.g. `https://hf-mirror.com` (see [`crate::resolve_endpoint`]).
    pub endpoint: String,
    /// Sent as `Authorization: Bearer` to the endpoint (never to a CDN it redirects to).
    pub token: Option<String>,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    /// Draw a progress bar per file and print retries on stderr.
    pub show_progress: bool,
}

impl HubOptions {
    pub fn new(endpoint: impl Into<String>) -> Self {
        HubOptions {
            endpoint: endpoint.into(),
            token: None,
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            show_progress: true,
        }
    }
}

/// One repo to mirror into one folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadRequest {
    pub repo: RepoRef,
    pub local_dir: PathBuf,
    /// Glob patterns over repo paths (`*` also crosses `/`, as in `huggingface-cli`); empty
    /// means every file.
    pub include: Vec<String>,
}

/// What a download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadReport {
    /// The commit the revision resolved to, when known.
    pub commit: Option<String>,
    /// `true` when the hub was unreachable and the local copy was found complete.
    pub offline: bool,
    pub files: Vec<FileReport>,
}

impl DownloadReport {
    pub fn downloaded(&self) -> impl Iterator<Item = &FileReport> {
        self.files
            .iter()
            .filter(|f| f.action == FileAction::Downloaded)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    pub path: String,
    pub size: u64,
    pub action: FileAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    Downloaded,
    /// Present and verified from an earlier run; not fetched again.
    AlreadyPresent,
}

/// Downloads repos from one hub endpoint.
pub struct Downloader {
    client: HubClient,
    options: HubOptions,
}

impl Downloader {
    pub fn new(options: HubOptions) -> Result<Self, HubError> {
        let endpoint = Endpoint::parse(&options.endpoint)?;
        let client = HubClient::new(endpoint, options.token.clone(), options.timeouts);
        Ok(Downloader { client, options })
    }

    /// Makes `request.local_dir` hold every requested file, complete and verified.
    pub fn download(&self, request: &DownloadRequest) -> Result<DownloadReport, HubError> {
        let patterns = compile_patterns(&request.include)?;
        let local = LocalDir::new(&request.local_dir);
        let info = match self.repo_info_or_offline(request, &local, &patterns)? {
            Online(info) => info,
            Offline(report) => return Ok(report),
        };

        let listing_url = self
            .client
            .endpoint()
            .repo_info_url(&request.repo)
            .to_string();
        let listed: Vec<SnapshotFile> = info
            .siblings
            .iter()
            .map(|sibling| {
                check_repo_path(&sibling.rfilename, &listing_url)?;
                Ok(SnapshotFile {
                    path: sibling.rfilename.clone(),
                    expected: ExpectedFile::from_sibling(sibling),
                })
            })
            .collect::<Result<_, HubError>>()?;
        let selected = select(request, &listed, &patterns)?;

        let repo = &request.repo;
        local.write_snapshot(&Snapshot {
            repo: repo.repo.clone(),
            repo_type: repo.repo_type.to_string(),
            revision: repo.revision.clone(),
            commit: info.sha.clone(),
            files: listed.clone(),
        })?;

        let template = record_template(repo, info.sha.clone());
        let mut reports = Vec::new();
        let mut to_fetch = Vec::new();
        for file in selected {
            if local.is_verified(&file.path, &file.expected, &template)? {
                reports.push(FileReport {
                    path: file.path.clone(),
                    size: std::fs::metadata(local.final_path(&file.path))
                        .map(|m| m.len())
                        .unwrap_or_default(),
                    action: FileAction::AlreadyPresent,
                });
            } else {
                to_fetch.push(file);
            }
        }
        check_free_space(&local, &to_fetch)?;

        let fetcher = FileFetcher {
            client: &self.client,
            local: &local,
            repo,
            retry: &self.options.retry,
            show_progress: self.options.show_progress,
            record_template: template,
        };
        for file in to_fetch {
            let size = fetcher.fetch(&file.path, &file.expected)?;
            reports.push(FileReport {
                path: file.path.clone(),
                size,
                action: FileAction::Downloaded,
            });
        }
        Ok(DownloadReport {
            commit: info.sha,
            offline: false,
            files: reports,
        })
    }

    /// Fetches the listing, retrying transient failures. While the hub is unreachable, a
    /// local copy that is already complete is accepted at once rather than after the
    /// backoff; an incomplete one turns the last failure into an [`HubError::Offline`]
    /// that lists what is missing.
    fn repo_info_or_offline(
        &self,
        request: &DownloadRequest,
        local: &LocalDir,
        patterns: &[Pattern],
    ) -> Result<ListingOrReport, HubError> {
        let retry = &self.options.retry;
        let mut attempt = 1;
        loop {
            let error = match self.client.repo_info(&request.repo) {
                Ok(info) => return Ok(Online(info)),
                Err(error) => error,
            };
            let offline = error
                .is_unreachable()
                .then(|| verify_offline(request, local, patterns));
            match offline {
                Some(Ok(report)) => {
                    if self.options.show_progress {
                        eprintln!(
                            "{} unreachable ({error}); using the verified local copy in {}",
                            self.client.endpoint().as_str(),
                            local.root().display()
                        );
                    }
                    return Ok(Offline(report));
                }
                Some(Err(missing)) if !retry.may_retry(attempt) => {
                    return Err(HubError::Offline {
                        endpoint: self.client.endpoint().as_str().to_string(),
                        local_dir: local.root().to_path_buf(),
                        missing,
                        source: Box::new(error),
                    })
                }
                _ if !error.is_transient() || !retry.may_retry(attempt) => return Err(error),
                _ => {}
            }
            let wait = retry.backoff_after(attempt);
            if self.options.show_progress {
                eprintln!("retrying in {wait:?} after: {error}");
            }
            thread::sleep(wait);
            attempt += 1;
        }
    }
}

enum ListingOrReport {
    Online(RepoInfo),
    Offline(DownloadReport),
}
use ListingOrReport::{Offline, Online};

/// Checks the local copy against the last listing seen online. `Err` lists what is
/// missing or no longer verifies.
fn verify_offline(
    request: &DownloadRequest,
    local: &LocalDir,
    patterns: &[Pattern],
) -> Result<DownloadReport, Vec<String>> {
    let repo = &request.repo;
    let snapshot = local.read_snapshot().filter(|s| {
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
    let selected = select(request, &snapshot.files, patterns).map_err(|e| vec![e.to_string()])?;
    let template = record_template(repo, snapshot.commit.clone());
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for file in selected {
        match local.is_verified(&file.path, &file.expected, &template) {
            Ok(true) => files.push(FileReport {
                path: file.path.clone(),
                size: std::fs::metadata(local.final_path(&file.path))
                    .map(|m| m.len())
                    .unwrap_or_default(),
                action: FileAction::AlreadyPresent,
            }),
            Ok(false) => missing.push(file.path.clone()),
            Err(error) => missing.push(format!("{} ({error})", file.path)),
        }
    }
    if missing.is_empty() {
        Ok(DownloadReport {
            commit: snapshot.commit,
            offline: true,
            files,
        })
    } else {
        Err(missing)
    }
}

fn record_template(repo: &RepoRef, commit: Option<String>) -> FileRecord {
    FileRecord {
        repo: repo.repo.clone(),
        repo_type: repo.repo_type.to_string(),
        revision: repo.revision.clone(),
        commit,
        path: String::new(),
        size: 0,
        sha256: String::new(),
        git_blob_sha1: None,
        mtime_ns: None,
    }
}

/// `*` matches across `/` so that `*.json` behaves as in `huggingface-cli` (fnmatch).
const MATCH_OPTIONS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: false,
    require_literal_leading_dot: false,
};

fn compile_patterns(include: &[String]) -> Result<Vec<Pattern>, HubError> {
    include
        .iter()
        .map(|pattern| {
            Pattern::new(pattern).map_err(|e| HubError::InvalidPattern {
                pattern: pattern.clone(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// The listed files the patterns select. A pattern without wildcards names one file, so
/// matching nothing means that file is missing; a wildcard matching nothing across all
/// patterns means the selection is empty.
fn select<'a>(
    request: &DownloadRequest,
    listed: &'a [SnapshotFile],
    patterns: &[Pattern],
) -> Result<Vec<&'a SnapshotFile>, HubError> {
    if patterns.is_empty() {
        return Ok(listed.iter().collect());
    }
    for pattern in patterns {
        let literal = !pattern.as_str().contains(['*', '?', '[']);
        if literal
            && !listed
                .iter()
                .any(|f| pattern.matches_with(&f.path, MATCH_OPTIONS))
        {
            return Err(HubError::FileNotFound {
                repo: request.repo.repo.clone(),
                revision: request.repo.revision.clone(),
                path: pattern.as_str().to_string(),
            });
        }
    }
    let selected: Vec<_> = listed
        .iter()
        .filter(|f| {
            patterns
                .iter()
                .any(|p| p.matches_with(&f.path, MATCH_OPTIONS))
        })
        .collect();
    if selected.is_empty() {
        return Err(HubError::NothingMatched {
            repo: request.repo.repo.clone(),
            revision: request.repo.revision.clone(),
            patterns: request.include.clone(),
            listed: listed.len(),
        });
    }
    Ok(selected)
}

/// Fails before the first byte when the files cannot fit, naming the folder and the amount.
fn check_free_space(local: &LocalDir, to_fetch: &[&SnapshotFile]) -> Result<(), HubError> {
    let needed: u64 = to_fetch
        .iter()
        .map(|file| {
            let partial = std::fs::metadata(local.partial_path(&file.path))
                .map(|m| m.len())
                .unwrap_or(0);
            file.expected.size.unwrap_or(0).saturating_sub(partial)
        })
        .sum();
    match available_space(local.root()) {
        Some(available) if needed > available => Err(HubError::DiskFull {
            path: local.root().to_path_buf(),
            needed,
            available: Some(available),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RepoType;

    fn request(include: &[&str]) -> DownloadRequest {
        DownloadRequest {
            repo: RepoRef {
                repo: "Salesforce/wikitext".into(),
                repo_type: RepoType::Dataset,
                revision: "main".into(),
            },
            local_dir: PathBuf::from("unused"),
            include: include.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn listing(paths: &[&str]) -> Vec<SnapshotFile> {
        paths
            .iter()
            .map(|p| SnapshotFile {
                path: p.to_string(),
                expected: ExpectedFile::default(),
            })
            .collect()
    }

    fn selected(include: &[&str], listed: &[SnapshotFile]) -> Result<Vec<String>, HubError> {
        let request = request(include);
        let patterns = compile_patterns(&request.include)?;
        Ok(select(&request, listed, &patterns)?
            .into_iter()
            .map(|f| f.path.clone())
            .collect())
    }

    #[test]
    fn include_globs_select_like_huggingface_cli() {
        let listed = listing(&[
            "README.md",
            "wikitext-2-raw-v1/test-00000-of-00001.parquet",
            "wikitext-2-raw-v1/train-00000-of-00001.parquet",
            "wikitext-103-raw-v1/test-00000-of-00001.parquet",
        ]);
        assert_eq!(
            selected(&["wikitext-2-raw-v1/*.parquet"], &listed).unwrap(),
            [
                "wikitext-2-raw-v1/test-00000-of-00001.parquet",
                "wikitext-2-raw-v1/train-00000-of-00001.parquet"
            ]
        );
        // `*` crosses folders, as fnmatch does.
        assert_eq!(selected(&["*test*"], &listed).unwrap().len(), 2);
        assert_eq!(selected(&[], &listed).unwrap().len(), 4);
        assert!(matches!(
            selected(&["README.md", "missing.txt"], &listed),
            Err(HubError::FileNotFound { path, .. }) if path == "missing.txt"
        ));
        assert!(matches!(
            selected(&["*.bin"], &listed),
            Err(HubError::NothingMatched { listed: 4, .. })
        ));
        assert!(matches!(
            selected(&["[unclosed"], &listed),
            Err(HubError::InvalidPattern { .. })
        ));
    }
}
