//! The Hugging Face hub's HTTP protocol, client side: URLs, the repo-info JSON and the
//! headers a `resolve` URL answers with. Nothing here does I/O.
//!
//! - repo info: `GET {endpoint}/api/{models|datasets}/{repo}/revision/{revision}?blobs=true`,
//!   JSON with the resolved commit (`sha`) and `siblings: [{rfilename, size, blobId, lfs}]`;
//! - a file: `GET {endpoint}/[datasets/]{repo}/resolve/{revision}/{path}`, which for LFS
//!   files answers `302` to a CDN; its `HEAD` carries `ETag`, `X-Linked-Etag` (the LFS
//!   sha256), `X-Linked-Size` and `X-Repo-Commit`.

use serde::Deserialize;
use url::Url;

use crate::errors::HubError;
use crate::repo::RepoRef;

/// The hub's default when neither `HF_ENDPOINT` nor `--endpoint` is given: a public mirror,
/// because huggingface.co itself is often unreachable where this toolkit runs.
pub const DEFAULT_ENDPOINT: &str = "https://hf-mirror.com";

/// Picks the endpoint the way the project's issue asks: the `HF_ENDPOINT` environment
/// variable wins over `--endpoint`, which wins over [`DEFAULT_ENDPOINT`].
pub fn resolve_endpoint(env_endpoint: Option<String>, flag_endpoint: Option<String>) -> String {
    env_endpoint
        .filter(|e| !e.trim().is_empty())
        .or(flag_endpoint.filter(|e| !e.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// Builds the hub's URLs under one endpoint, which may itself carry a path prefix.
#[derive(Debug, Clone)]
pub struct Endpoint {
    base: Url,
}

impl Endpoint {
    pub fn parse(endpoint: &str) -> Result<Self, HubError> {
        let invalid = |reason: String| HubError::InvalidEndpoint {
            endpoint: endpoint.to_string(),
            reason,
        };
        let base =
            Url::parse(endpoint.trim_end_matches('/')).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid("expected an http:// or https:// URL".into()));
        }
        Ok(Endpoint { base })
    }

    pub fn as_str(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `{endpoint}/api/{models|datasets}/{repo}/revision/{revision}?blobs=true`. `blobs=true`
    /// asks for sizes and hashes, which verification needs.
    pub fn repo_info_url(&self, repo: &RepoRef) -> Url {
        let mut url = self.join(
            ["api", repo.repo_type.api_segment()]
                .into_iter()
                .chain(repo.repo.split('/'))
                .chain(["revision", repo.revision.as_str()]),
        );
        url.set_query(Some("blobs=true"));
        url
    }

    /// `{endpoint}/api/{models|datasets}/{repo}`: exists exactly when the repo does, which
    /// tells a missing repo from a missing revision.
    pub fn repo_url(&self, repo: &RepoRef) -> Url {
        self.join(
            ["api", repo.repo_type.api_segment()]
                .into_iter()
                .chain(repo.repo.split('/')),
        )
    }

    /// `{endpoint}/[datasets/]{repo}/resolve/{revision}/{path}`.
    pub fn resolve_url(&self, repo: &RepoRef, path: &str) -> Url {
        self.join(
            repo.repo_type
                .resolve_prefix()
                .into_iter()
                .chain(repo.repo.split('/'))
                .chain(["resolve", repo.revision.as_str()])
                .chain(path.split('/')),
        )
    }

    /// Appends percent-encoded path segments, so a revision like `refs/pr/1` stays one segment.
    fn join<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("checked in Endpoint::parse");
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }
}

/// The repo-info JSON, reduced to what a download needs.
#[derive(Debug, Clone, Deserialize)]
pub struct RepoInfo {
    /// The commit the revision resolved to.
    pub sha: Option<String>,
    #[serde(default)]
    pub siblings: Vec<Sibling>,
}

/// One file of the repository listing.
#[derive(Debug, Clone, Deserialize)]
pub struct Sibling {
    pub rfilename: String,
    /// Present with `?blobs=true`.
    pub size: Option<u64>,
    /// The git blob id (sha1), present with `?blobs=true`.
    #[serde(rename = "blobId")]
    pub blob_id: Option<String>,
    /// Present for files stored with Git LFS.
    pub lfs: Option<LfsInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LfsInfo {
    /// The LFS object id: the sha256 of the file's content.
    #[serde(alias = "oid")]
    pub sha256: String,
    pub size: Option<u64>,
}

/// What a `HEAD` on a `resolve` URL says about a file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileHead {
    /// `X-Repo-Commit`.
    pub commit: Option<String>,
    /// `ETag` without quotes or weak marker: the git blob id, or the sha256 for LFS files.
    pub etag: Option<String>,
    /// `X-Linked-Etag`: the LFS sha256.
    pub linked_etag: Option<String>,
    /// `X-Linked-Size`, else `Content-Length` of a direct (non-redirect) answer.
    pub size: Option<u64>,
}

/// Strips the weak-validator marker and quotes from an `ETag` value.
pub fn normalize_etag(raw: &str) -> String {
    raw.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase()
}

/// Whether a string is a plain hex digest of `len` characters.
pub fn is_hex_digest(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::RepoType;

    fn model(repo: &str, revision: &str) -> RepoRef {
        RepoRef {
            repo: repo.into(),
            repo_type: RepoType::Model,
            revision: revision.into(),
        }
    }

    #[test]
    fn env_endpoint_wins_over_flag_which_wins_over_default() {
        let env = Some("http://env".to_string());
        let flag = Some("http://flag".to_string());
        assert_eq!(resolve_endpoint(env.clone(), flag.clone()), "http://env");
        assert_eq!(resolve_endpoint(None, flag), "http://flag");
        assert_eq!(
            resolve_endpoint(Some(String::new()), None),
            DEFAULT_ENDPOINT
        );
        assert_eq!(resolve_endpoint(None, None), DEFAULT_ENDPOINT);
    }

    #[test]
    fn builds_model_and_dataset_urls_with_encoded_revision() {
        let endpoint = Endpoint::parse("https://hf-mirror.com/").unwrap();
        let repo = model("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "main");
        assert_eq!(
            endpoint.repo_info_url(&repo).as_str(),
            "https://hf-mirror.com/api/models/deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B/revision/main?blobs=true"
        );
        assert_eq!(
            endpoint.resolve_url(&repo, "model.safetensors").as_str(),
            "https://hf-mirror.com/deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B/resolve/main/model.safetensors"
        );
        let dataset = RepoRef {
            repo: "Salesforce/wikitext".into(),
            repo_type: RepoType::Dataset,
            revision: "refs/convert/parquet".into(),
        };
        assert_eq!(
            endpoint
                .resolve_url(&dataset, "wikitext-2-raw-v1/test-00000-of-00001.parquet")
                .as_str(),
            "https://hf-mirror.com/datasets/Salesforce/wikitext/resolve/refs%2Fconvert%2Fparquet/wikitext-2-raw-v1/test-00000-of-00001.parquet"
        );
        assert_eq!(
            endpoint.repo_url(&dataset).as_str(),
            "https://hf-mirror.com/api/datasets/Salesforce/wikitext"
        );
    }

    #[test]
    fn endpoint_may_carry_a_path_prefix() {
        let endpoint = Endpoint::parse("http://127.0.0.1:8080/mirror").unwrap();
        assert_eq!(
            endpoint.resolve_url(&model("a/b", "v1"), "x.json").as_str(),
            "http://127.0.0.1:8080/mirror/a/b/resolve/v1/x.json"
        );
        assert!(Endpoint::parse("ftp://example.org").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }

    #[test]
    fn parses_repo_info_with_lfs_and_plain_files() {
        let json = r#"{"id":"a/b","sha":"abc123","siblings":[
            {"rfilename":"config.json","size":12,"blobId":"0123456789abcdef0123456789abcdef01234567"},
            {"rfilename":"model.safetensors","size":99,"blobId":"ff","lfs":{"sha256":"deadbeef","size":99,"pointerSize":130}}
        ]}"#;
        let info: RepoInfo = serde_json::from_str(json).unwrap();
        assert_eq!(info.sha.as_deref(), Some("abc123"));
        assert_eq!(info.siblings.len(), 2);
        assert!(info.siblings[0].lfs.is_none());
        assert_eq!(info.siblings[1].lfs.as_ref().unwrap().sha256, "deadbeef");
    }

    #[test]
    fn normalizes_weak_and_quoted_etags() {
        assert_eq!(normalize_etag("W/\"ABCdef\""), "abcdef");
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert!(is_hex_digest(&"a".repeat(64), 64));
        assert!(!is_hex_digest("xyz", 3));
    }
}
