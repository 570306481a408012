//! Which files of a repository a download wants (the `--include` globs), and what became of
//! each: the vocabulary the download's stages share.

use glob::{MatchOptions, Pattern};

use crate::errors::HubError;
use crate::local_dir::SnapshotFile;
use crate::repo::RepoRef;

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

/// Which files of which repo a download wants: the `--include` globs, compiled.
pub(crate) struct Wanted<'a> {
    pub repo: &'a RepoRef,
    include: &'a [String],
    patterns: Vec<Pattern>,
}

impl<'a> Wanted<'a> {
    pub(crate) fn new(repo: &'a RepoRef, include: &'a [String]) -> Result<Self, HubError> {
        Ok(Wanted {
            repo,
            include,
            patterns: compile_patterns(include)?,
        })
    }

    /// The listed files the patterns select. A pattern without wildcards names one file, so
    /// matching nothing means that file is missing; a wildcard matching nothing across all
    /// patterns means the selection is empty.
    pub fn select<'f>(
        &self,
        listed: &'f [SnapshotFile],
    ) -> Result<Vec<&'f SnapshotFile>, HubError> {
        if self.patterns.is_empty() {
            return Ok(listed.iter().collect());
        }
        for pattern in &self.patterns {
            let literal = !pattern.as_str().contains(['*', '?', '[']);
            if literal
                && !listed
                    .iter()
                    .any(|f| pattern.matches_with(&f.path, MATCH_OPTIONS))
            {
                return Err(HubError::FileNotFound {
                    repo: self.repo.repo.clone(),
                    revision: self.repo.revision.clone(),
                    path: pattern.as_str().to_string(),
                });
            }
        }
        let selected: Vec<_> = listed
            .iter()
            .filter(|f| {
                self.patterns
                    .iter()
                    .any(|p| p.matches_with(&f.path, MATCH_OPTIONS))
            })
            .collect();
        if selected.is_empty() {
            return Err(HubError::NothingMatched {
                repo: self.repo.repo.clone(),
                revision: self.repo.revision.clone(),
                patterns: self.include.to_vec(),
                listed: listed.len(),
            });
        }
        Ok(selected)
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
