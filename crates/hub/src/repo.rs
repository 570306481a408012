//! What a repository is: its namespace (model or dataset) and the revision a user named.

use std::fmt;
use std::str::FromStr;

/// Models and datasets live in separate namespaces with different URL prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RepoType {
    #[default]
    Model,
    Dataset,
}

impl RepoType {
    /// The path segment of the repo-info API (`/api/models/...`).
    pub(crate) fn api_segment(self) -> &'static str {
        match self {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
        }
    }

    /// The prefix of `resolve` URLs: models have none, datasets `datasets/`.
    pub(crate) fn resolve_prefix(self) -> Option<&'static str> {
        match self {
            RepoType::Model => None,
            RepoType::Dataset => Some("datasets"),
        }
    }
}

impl fmt::Display for RepoType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RepoType::Model => "model",
            RepoType::Dataset => "dataset",
        })
    }
}

impl FromStr for RepoType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "model" => Ok(RepoType::Model),
            "dataset" => Ok(RepoType::Dataset),
            other => Err(format!(
                "unknown repo type {other:?} (expected model or dataset)"
            )),
        }
    }
}

/// One repository at one revision, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    /// `owner/name`.
    pub repo: String,
    pub repo_type: RepoType,
    /// A branch, tag or commit; `main` unless the user says otherwise.
    pub revision: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repo_types() {
        assert_eq!("dataset".parse::<RepoType>().unwrap(), RepoType::Dataset);
        assert!("space".parse::<RepoType>().is_err());
    }
}
