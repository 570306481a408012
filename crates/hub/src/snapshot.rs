//! Downloading the files of one repo that match `--include`, like
//! `huggingface-cli download --local-dir`: list, select, skip what is already verified,
//! fetch the rest. When the hub cannot be reached, the local copy is checked against the last
//! listing seen online, and a complete copy is enough. Or, without `--local-dir`, the same into
//! the Hugging Face cache ([`Downloader::download_to_cache`]).

use std::path::PathBuf;
use std::thread;

use crate::cache::HfCache;
use crate::client::{HubClient, Timeouts};
use crate::destination::{CacheDestination, Destination, LocalDirDestination};
use crate::disk::available_space;
use crate::download::FileFetcher;
use crate::errors::HubError;
use crate::local_dir::{check_repo_path, SnapshotFile};
use crate::protocol::{Endpoint, RepoInfo};
use crate::repo::RepoRef;
use crate::retry::RetryPolicy;
use crate::selection::{FileAction, FileReport, Wanted};
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
    /// Never use the network (`HF_HUB_OFFLINE`): the local copy must already be complete.
    pub offline: bool,
}

impl HubOptions {
    pub fn new(endpoint: impl Into<String>) -> Self {
        HubOptions {
            endpoint: endpoint.into(),
            token: None,
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            show_progress: true,
            offline: false,
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

impl DownloadRequest {
    /// Whether the request means the Hugging Face cache rather than a folder: its `local_dir`
    /// is the repo id itself (what `cargo xtask download` without `--local-dir` sends, and a
    /// recipe's `local_dir = "Qwen/Qwen2.5-1.5B"`) and no such folder exists.
    pub fn names_the_cache(&self) -> bool {
        self.local_dir == std::path::Path::new(&self.repo.repo) && !self.local_dir.is_dir()
    }
}

/// What a download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadReport {
    /// The commit the revision resolved to, when known.
    pub commit: Option<String>,
    /// `true` when the hub was unreachable (or `offline` was asked) and the local copy was
    /// found complete.
    pub offline: bool,
    /// Where the files are: the local folder, or the snapshot folder in the cache.
    pub location: PathBuf,
    pub files: Vec<FileReport>,
}

impl DownloadReport {
    pub fn downloaded(&self) -> impl Iterator<Item = &FileReport> {
        self.files
            .iter()
            .filter(|f| f.action == FileAction::Downloaded)
    }
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
        let wanted = Wanted::new(&request.repo, &request.include)?;
        let mut destination = LocalDirDestination::new(&request.local_dir, &request.repo);
        self.download_into(&wanted, &mut destination)
    }

    /// Downloads into the Hugging Face cache as `huggingface-cli download` does (without
    /// `--local-dir`); the report's `location` is the snapshot folder.
    pub fn download_to_cache(
        &self,
        cache: &HfCache,
        repo: &RepoRef,
        include: &[String],
    ) -> Result<DownloadReport, HubError> {
        let wanted = Wanted::new(repo, include)?;
        let mut destination =
            CacheDestination::new(cache.repo(&repo.repo, repo.repo_type), &repo.revision);
        self.download_into(&wanted, &mut destination)
    }

    fn download_into(
        &self,
        wanted: &Wanted,
        destination: &mut dyn Destination,
    ) -> Result<DownloadReport, HubError> {
        let info = match self.repo_info_or_offline(wanted, destination)? {
            Online(info) => info,
            Offline(report) => return Ok(report),
        };
        let repo = wanted.repo;
        let endpoint = self.client.endpoint();
        let listing_url = endpoint.repo_info_url(repo).to_string();
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
        let selected = wanted.select(&listed)?;
        destination.start(endpoint, info.sha.as_deref(), &listed)?;

        let mut reports = Vec::new();
        let mut to_fetch = Vec::new();
        for file in selected {
            match destination.reuse(&file.path, &file.expected)? {
                Some(size) => reports.push(FileReport {
                    path: file.path.clone(),
                    size,
                    action: FileAction::AlreadyPresent,
                }),
                None => to_fetch.push(file),
            }
        }
        check_free_space(&*destination, &to_fetch)?;

        let fetcher = FileFetcher {
            client: &self.client,
            destination: &*destination,
            repo,
            retry: &self.options.retry,
            show_progress: self.options.show_progress,
        };
        for file in to_fetch {
            let size = fetcher.fetch(&file.path, &file.expected)?;
            reports.push(FileReport {
                path: file.path.clone(),
                size,
                action: FileAction::Downloaded,
            });
        }
        destination.complete()?;
        Ok(DownloadReport {
            commit: info.sha,
            offline: false,
            location: destination.location(),
            files: reports,
        })
    }

    /// Fetches the listing, retrying transient failures. While the hub is unreachable, a
    /// local copy that is already complete is accepted at once rather than after the
    /// backoff; an incomplete one turns the last failure into an [`HubError::Offline`]
    /// that lists what is missing. With `offline` set the hub is not asked at all.
    fn repo_info_or_offline(
        &self,
        wanted: &Wanted,
        destination: &dyn Destination,
    ) -> Result<ListingOrReport, HubError> {
        let offline_report = |(commit, files): (Option<String>, _)| {
            Offline(DownloadReport {
                location: destination.location_at(commit.as_deref()),
                commit,
                offline: true,
                files,
            })
        };
        if self.options.offline {
            return destination
                .offline_copy(wanted)
                .map(offline_report)
                .map_err(|missing| HubError::OfflineModeMissing {
                    repo: wanted.repo.repo.clone(),
                    location: destination.location(),
                    missing,
                });
        }
        let retry = &self.options.retry;
        let mut attempt = 1;
        loop {
            let error = match self.client.repo_info(wanted.repo) {
                Ok(info) => return Ok(Online(info)),
                Err(error) => error,
            };
            let offline = error
                .is_unreachable()
                .then(|| destination.offline_copy(wanted));
            match offline {
                Some(Ok(copy)) => {
                    let report = offline_report(copy);
                    if self.options.show_progress {
                        eprintln!(
                            "{} unreachable ({error}); using the verified local copy in {}",
                            self.client.endpoint().as_str(),
                            destination.location().display()
                        );
                    }
                    return Ok(report);
                }
                Some(Err(missing)) if !retry.may_retry(attempt) => {
                    return Err(HubError::Offline {
                        endpoint: self.client.endpoint().as_str().to_string(),
                        local_dir: destination.location(),
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

/// Fails before the first byte when the files cannot fit, naming the folder and the amount.
fn check_free_space(
    destination: &dyn Destination,
    to_fetch: &[&SnapshotFile],
) -> Result<(), HubError> {
    let needed: u64 = to_fetch
        .iter()
        .map(|file| {
            let partial = destination
                .partial_path(&file.path, &file.expected)
                .ok()
                .and_then(|partial| std::fs::metadata(partial).ok())
                .map_or(0, |m| m.len());
            file.expected.size.unwrap_or(0).saturating_sub(partial)
        })
        .sum();
    let location = destination.location();
    match available_space(&location) {
        Some(available) if needed > available => Err(HubError::DiskFull {
            path: location,
            needed,
            available: Some(available),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::RepoType;

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
        Ok(Wanted::new(&request.repo, &request.include)?
            .select(listed)?
            .into_iter()
            .map(|f| f.path.clone())
            .collect())
    }

    #[test]
    fn a_local_dir_that_is_the_repo_id_means_the_cache() {
        let mut request = request(&[]);
        request.local_dir = PathBuf::from("Salesforce/wikitext");
        assert!(request.names_the_cache());
        request.local_dir = PathBuf::from("data/wikitext");
        assert!(!request.names_the_cache());
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
