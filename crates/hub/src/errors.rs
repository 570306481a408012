//! Every way a download can fail, worded so that the person at the terminal knows what to do.
//!
//! The variants are split by what the user has to change (a name, a token, disk space) rather
//! than by which HTTP call failed, because that is what the message must tell them.

use std::path::PathBuf;

use crate::repo::RepoType;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    #[error(
        "repository {repo} ({repo_type}) not found at {endpoint}: check the name, the \
         --repo-type, and whether it is private (then set HF_TOKEN)"
    )]
    RepoNotFound {
        repo: String,
        repo_type: RepoType,
        endpoint: String,
    },

    #[error("revision {revision:?} not found in {repo}: check the branch, tag or commit name")]
    RevisionNotFound { repo: String, revision: String },

    #[error("file {path:?} not found in {repo} at revision {revision}")]
    FileNotFound {
        repo: String,
        revision: String,
        path: String,
    },

    #[error(
        "no file in {repo} at revision {revision} matches --include {patterns:?} \
         ({listed} files are listed)"
    )]
    NothingMatched {
        repo: String,
        revision: String,
        patterns: Vec<String>,
        listed: usize,
    },

    #[error("access to {repo} denied (HTTP {status} from {url}): {hint}")]
    AccessDenied {
        repo: String,
        status: u16,
        url: String,
        hint: String,
    },

    #[error("HTTP {status} from {url}: {body}")]
    HttpStatus {
        url: String,
        status: u16,
        body: String,
    },

    /// The cause is kept as text, so that the HTTP client's types stay out of the API.
    #[error("connection to {url} failed: {reason}")]
    Connection { url: String, reason: String },

    #[error("download of {url} ended early: received {received} of {expected} bytes")]
    TruncatedBody {
        url: String,
        received: u64,
        expected: u64,
    },

    #[error(
        "checksum mismatch for {path}: expected {expected}, got {actual}; the corrupted \
         download was deleted"
    )]
    ChecksumMismatch {
        path: String,
        expected: String,
        actual: String,
    },

    #[error("size mismatch for {path}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        path: String,
        expected: u64,
        actual: u64,
    },

    #[error(
        "disk full while writing {}: {needed} more bytes are needed{}",
        .path.display(),
        .available.map(|free| format!(" but only {free} are free")).unwrap_or_default()
    )]
    DiskFull {
        path: PathBuf,
        needed: u64,
        available: Option<u64>,
    },

    #[error("cannot {action} {}: {error}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },

    #[error(
        "cannot reach {endpoint} and these requested files are not present and verified in \
         {}: {}",
        .local_dir.display(),
        .missing.join(", ")
    )]
    Offline {
        endpoint: String,
        local_dir: PathBuf,
        missing: Vec<String>,
        #[source]
        source: Box<HubError>,
    },

    #[error("unexpected response from {url}: {reason}")]
    Protocol { url: String, reason: String },

    #[error("invalid --include pattern {pattern:?}: {reason}")]
    InvalidPattern { pattern: String, reason: String },

    #[error("invalid endpoint URL {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },

    #[error("recipe {}: {reason}", .path.display())]
    Recipe { path: PathBuf, reason: String },

    #[error(
        "{arg:?} is not a directory, and the Hugging Face cache has no snapshot of {repo} at \
         revision {revision} in {} ({reason}): fetch it with `cargo xtask download --repo \
         {repo} --revision {revision}` (or `huggingface-cli download`), or give a model \
         directory",
        .repo_dir.display()
    )]
    NotInCache {
        arg: String,
        repo: String,
        revision: String,
        repo_dir: PathBuf,
        reason: String,
    },

    #[error(
        "HF_HUB_OFFLINE is set, and these requested files of {repo} are not in {}: {}; unset \
         HF_HUB_OFFLINE to download them",
        .location.display(),
        .missing.join(", ")
    )]
    OfflineModeMissing {
        repo: String,
        location: PathBuf,
        missing: Vec<String>,
    },

    #[error("cannot locate the Hugging Face cache: {reason}; set HF_HUB_CACHE or HF_HOME")]
    NoCacheLocation { reason: String },
}

impl From<fsio::FileError> for HubError {
    fn from(error: fsio::FileError) -> Self {
        HubError::Io {
            action: error.action,
            path: error.path,
            error: error.source,
        }
    }
}

impl HubError {
    /// Whether trying the same request again may succeed: server overload, a dropped
    /// connection, a body cut short or corrupted in transit. Everything else needs the user.
    pub fn is_transient(&self) -> bool {
        match self {
            HubError::HttpStatus { status, .. } => *status == 429 || *status >= 500,
            HubError::Connection { .. }
            | HubError::TruncatedBody { .. }
            | HubError::ChecksumMismatch { .. }
            | HubError::SizeMismatch { .. } => true,
            _ => false,
        }
    }

    /// Whether the server could not be reached at all, so the local copy is all there is.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, HubError::Connection { .. })
            || matches!(self, HubError::HttpStatus { status, .. } if *status >= 500)
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        error: std::io::Error,
    ) -> Self {
        HubError::Io {
            action,
            path: path.into(),
            error,
        }
    }
}
