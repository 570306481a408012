//! The HTTP side of the hub protocol: one request at a time, each answer turned into data or
//! into a [`HubError`] that says what is wrong.
//!
//! Why `ureq` rather than the `hf-hub` crate: `hf-hub` 1.0 brings tokio, reqwest and the xet
//! client, which take many minutes to build on a two-core machine, and hides the parts this
//! crate must control (resuming with `Range`, verifying before the rename, offline re-runs).
//! A download is one sequential stream per file, so a blocking client with rustls does all
//! that is needed with a fraction of the build.
//!
//! Redirects are followed by hand: the `Range` header must reach the CDN, the token must not
//! (it is dropped when the redirect leaves the endpoint's origin, as `huggingface_hub` does),
//! and a `HEAD` must stop at the hub's own answer, where the `X-Linked-*` headers are.

use std::io::Read;
use std::time::Duration;

use url::Url;

use crate::errors::HubError;
use crate::protocol::{normalize_etag, Endpoint, FileHead, RepoInfo};
use crate::repo::RepoRef;

/// More than the hub ever chains (renamed repo, then CDN), fewer than a loop would take.
const MAX_REDIRECTS: usize = 5;

/// How long to wait for a connection and for each read of a body.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(15),
            read: Duration::from_secs(60),
        }
    }
}

/// A request the server refused, before it is known what the refusal means: a 404 on a
/// file and a 404 on the repo listing tell the user different things.
#[derive(Debug)]
pub(crate) enum RequestError {
    Status {
        url: String,
        status: u16,
        /// The hub's `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`,
        /// `GatedRepo`), when it sends one.
        error_code: Option<String>,
        body: String,
    },
    Failed(HubError),
}

impl From<HubError> for RequestError {
    fn from(error: HubError) -> Self {
        RequestError::Failed(error)
    }
}

/// An open file body, positioned where the download resumes.
pub(crate) struct FileBody {
    /// The URL that answered (the CDN's, after redirects).
    pub url: String,
    /// `true` for 206: the body starts at the requested offset.
    pub partial: bool,
    /// The first byte of the body within the file (from `Content-Range`; 0 for a 200).
    pub start: u64,
    /// The whole file's size, from `Content-Range` or `Content-Length`.
    pub total_size: Option<u64>,
    pub reader: Box<dyn Read + Send + Sync + 'static>,
}

/// A hub endpoint plus the credentials to talk to it.
pub struct HubClient {
    agent: ureq::Agent,
    endpoint: Endpoint,
    token: Option<String>,
}

impl HubClient {
    pub fn new(endpoint: Endpoint, token: Option<String>, timeouts: Timeouts) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeouts.connect)
            .timeout_read(timeouts.read)
            .redirects(0)
            .user_agent(concat!("distill-hub/", env!("CARGO_PKG_VERSION")))
            .build();
        HubClient {
            agent,
            endpoint,
            token: token.filter(|t| !t.trim().is_empty()),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The listing of `repo` at its revision. A 404 is narrowed down to the repo or the
    /// revision by asking whether the repo exists at all.
    pub fn repo_info(&self, repo: &RepoRef) -> Result<RepoInfo, HubError> {
        let url = self.endpoint.repo_info_url(repo);
        match self.send("GET", url.clone(), None, false) {
            Ok((_, response)) => {
                let text = response.into_string().map_err(|e| HubError::Connection {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
                serde_json::from_str(&text).map_err(|e| HubError::Protocol {
                    url: url.to_string(),
                    reason: format!("repo info is not the expected JSON: {e}"),
                })
            }
            Err(RequestError::Status {
                status: 404,
                error_code,
                ..
            }) => Err(match error_code.as_deref() {
                Some("RepoNotFound") => self.repo_not_found(repo),
                Some("RevisionNotFound") => self.revision_not_found(repo),
                _ => self.narrow_down_404(repo),
            }),
            Err(error) => Err(self.describe(repo, error)),
        }
    }

    /// The hub's metadata for one file, from a `HEAD` that stops at the hub's answer.
    pub fn head_file(&self, repo: &RepoRef, path: &str) -> Result<FileHead, HubError> {
        let url = self.endpoint.resolve_url(repo, path);
        let (_, response) = self
            .send("HEAD", url, None, true)
            .map_err(|error| self.describe_file_error(repo, path, error))?;
        let header = |name: &str| response.header(name).map(str::to_string);
        let redirected = (300..400).contains(&response.status());
        let size = header("x-linked-size")
            .or_else(|| (!redirected).then(|| header("content-length")).flatten())
            .and_then(|s| s.trim().parse().ok());
        Ok(FileHead {
            commit: header("x-repo-commit"),
            etag: header("etag").map(|e| normalize_etag(&e)),
            linked_etag: header("x-linked-etag").map(|e| normalize_etag(&e)),
            size,
        })
    }

    /// Starts the body of `path` from byte `offset` (a `Range` request when `offset > 0`).
    /// The caller checks [`FileBody::start`]: a server may ignore the range and send it all.
    pub(crate) fn open_file(
        &self,
        repo: &RepoRef,
        path: &str,
        offset: u64,
    ) -> Result<FileBody, RequestError> {
        let url = self.endpoint.resolve_url(repo, path);
        let range = (offset > 0).then(|| format!("bytes={offset}-"));
        let (url, response) = self.send("GET", url, range.as_deref(), false)?;
        let url = url.to_string();
        let content_length: Option<u64> = response
            .header("content-length")
            .and_then(|s| s.trim().parse().ok());
        let (partial, start, total_size) = if response.status() == 206 {
            let content_range = response.header("content-range").unwrap_or_default();
            let (start, total) =
                parse_content_range(content_range).ok_or_else(|| HubError::Protocol {
                    url: url.clone(),
                    reason: format!("206 with unusable Content-Range {content_range:?}"),
                })?;
            (true, start, total)
        } else if response.status() == 200 {
            (false, 0, content_length)
        } else {
            return Err(HubError::Protocol {
                url,
                reason: format!("unexpected HTTP {} for a file body", response.status()),
            }
            .into());
        };
        Ok(FileBody {
            url,
            partial,
            start,
            total_size,
            reader: Box::new(response.into_reader()),
        })
    }

    /// Turns a refused file request into the error the user needs.
    pub(crate) fn describe_file_error(
        &self,
        repo: &RepoRef,
        path: &str,
        error: RequestError,
    ) -> HubError {
        match error {
            RequestError::Status {
                status: 404,
                error_code,
                ..
            } => match error_code.as_deref() {
                Some("RepoNotFound") => self.repo_not_found(repo),
                Some("RevisionNotFound") => self.revision_not_found(repo),
                _ => HubError::FileNotFound {
                    repo: repo.repo.clone(),
                    revision: repo.revision.clone(),
                    path: path.to_string(),
                },
            },
            other => self.describe(repo, other),
        }
    }

    /// The errors that mean the same whatever was asked: access, overload, transport.
    fn describe(&self, repo: &RepoRef, error: RequestError) -> HubError {
        match error {
            RequestError::Failed(error) => error,
            RequestError::Status {
                url,
                status: status @ (401 | 403),
                error_code,
                ..
            } => {
                let page = format!("{}/{}", self.endpoint.as_str(), repo.repo);
                let hint = if !self.has_token() {
                    format!(
                        "the repo is gated, private or missing; set HF_TOKEN (or pass --token) to \
                         a token of an account that has accepted its licence at {page}"
                    )
                } else if status == 403 || error_code.as_deref() == Some("GatedRepo") {
                    format!(
                        "the token was refused for this repo; accept its licence at {page} with \
                         the token's account, or use a token with read access"
                    )
                } else {
                    format!(
                        "the token was not accepted or cannot see this repo; check HF_TOKEN / \
                         --token and accept the licence at {page}"
                    )
                };
                HubError::AccessDenied {
                    repo: repo.repo.clone(),
                    status,
                    url,
                    hint,
                }
            }
            RequestError::Status {
                url, status, body, ..
            } => HubError::HttpStatus { url, status, body },
        }
    }

    /// After a 404 on `repo@revision`: the repo exists exactly when its plain API URL
    /// answers, so a missing revision is told from a missing repo.
    fn narrow_down_404(&self, repo: &RepoRef) -> HubError {
        match self.send("GET", self.endpoint.repo_url(repo), None, false) {
            Ok(_) => self.revision_not_found(repo),
            Err(RequestError::Status { status: 404, .. }) => self.repo_not_found(repo),
            Err(other) => self.describe(repo, other),
        }
    }

    fn repo_not_found(&self, repo: &RepoRef) -> HubError {
        HubError::RepoNotFound {
            repo: repo.repo.clone(),
            repo_type: repo.repo_type,
            endpoint: self.endpoint.as_str().to_string(),
        }
    }

    fn revision_not_found(&self, repo: &RepoRef) -> HubError {
        HubError::RevisionNotFound {
            repo: repo.repo.clone(),
            revision: repo.revision.clone(),
        }
    }

    /// Sends one request and follows redirects by hand (see the module comment). With
    /// `stop_at_linked_headers`, a redirect that carries `X-Linked-Size`/`X-Linked-Etag` is
    /// the answer rather than a hop: that is where the hub puts an LFS file's metadata.
    fn send(
        &self,
        method: &str,
        url: Url,
        range: Option<&str>,
        stop_at_linked_headers: bool,
    ) -> Result<(Url, ureq::Response), RequestError> {
        let origin = url.origin();
        let mut url = url;
        for _ in 0..=MAX_REDIRECTS {
            // Sizes and ranges refer to the stored bytes: no transparent compression.
            let mut request = self
                .agent
                .request_url(method, &url)
                .set("Accept-Encoding", "identity");
            if let (Some(token), true) = (&self.token, url.origin() == origin) {
                request = request.set("Authorization", &format!("Bearer {token}"));
            }
            if let Some(range) = range {
                request = request.set("Range", range);
            }
            let response = match request.call() {
                Ok(response) => response,
                Err(ureq::Error::Status(status, response)) => {
                    let error_code = response.header("x-error-code").map(str::to_string);
                    let mut body = String::new();
                    let _ = response.into_reader().take(300).read_to_string(&mut body);
                    return Err(RequestError::Status {
                        url: url.to_string(),
                        status,
                        error_code,
                        body: body.trim().to_string(),
                    });
                }
                Err(ureq::Error::Transport(transport)) => {
                    return Err(HubError::Connection {
                        url: url.to_string(),
                        reason: describe_transport(&transport),
                    }
                    .into())
                }
            };
            if !(300..400).contains(&response.status()) {
                return Ok((url, response));
            }
            let has_linked_headers = response.header("x-linked-size").is_some()
                || response.header("x-linked-etag").is_some();
            if stop_at_linked_headers && has_linked_headers {
                return Ok((url, response));
            }
            let location = response
                .header("location")
                .ok_or_else(|| HubError::Protocol {
                    url: url.to_string(),
                    reason: format!("HTTP {} without a Location header", response.status()),
                })?;
            url = url.join(location).map_err(|e| HubError::Protocol {
                url: url.to_string(),
                reason: format!("redirect to an invalid URL {location:?}: {e}"),
            })?;
        }
        Err(HubError::Protocol {
            url: url.to_string(),
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        }
        .into())
    }
}

/// The cause of a transport failure without the URL, which the error states already.
fn describe_transport(transport: &ureq::Transport) -> String {
    let mut reason = transport.kind().to_string();
    if let Some(message) = transport.message() {
        reason = format!("{reason}: {message}");
    }
    if let Some(cause) = std::error::Error::source(transport) {
        reason = format!("{reason}: {cause}");
    }
    reason
}

/// Parses `bytes START-END/TOTAL` (TOTAL may be `*`) into the start and the total size.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let spec = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = spec.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        n => Some(n.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::parse_content_range;

    #[test]
    fn parses_content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range("bytes x-2/3"), None);
    }
}
