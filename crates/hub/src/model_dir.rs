//! What a command's model-directory argument (`--model`, `--teacher`, `--tokenizer`, a recipe's
//! `local_dir`) names: an existing folder as it is, or else a repo id (`Qwen/Qwen2.5-1.5B`,
//! optionally `@revision`) found in the Hugging Face cache; a `.gguf` file is taken as it is, so a model that Python tools
//! already fetched is used offline and never fetched again. Resolution never uses the network.

use std::path::{Path, PathBuf};

use crate::cache::{is_repo_id, HfCache};
use crate::environment::HfEnvironment;
use crate::errors::HubError;
use crate::repo::RepoType;

/// `arg` as a model folder: itself when it is a folder (or does not look like a repo id, so
/// the loader reports it as before), else the cache snapshot of the repo id at `@revision`
/// (default `main`). A repo id that is not cached is an error naming the cache and the fix.
pub fn resolve_model_dir(arg: &str) -> Result<PathBuf, HubError> {
    resolve_model_dir_at(arg, None)
}

/// [`resolve_model_dir`] with a revision given apart (a recipe's `revision`); an `@revision`
/// in `arg` wins.
pub fn resolve_model_dir_at(arg: &str, revision: Option<&str>) -> Result<PathBuf, HubError> {
    if Path::new(arg).is_dir() || is_gguf_file(arg) || parse_repo_arg(arg).is_none() {
        return Ok(PathBuf::from(arg));
    }
    let environment = HfEnvironment::from_env()?;
    resolve_in_cache(arg, revision, &environment.cache())
}

/// Like [`resolve_model_dir_at`] against a given cache (`arg` need not be a repo id).
pub fn resolve_in_cache(
    arg: &str,
    revision: Option<&str>,
    cache: &HfCache,
) -> Result<PathBuf, HubError> {
    if Path::new(arg).is_dir() {
        return Ok(PathBuf::from(arg));
    }
    let Some((repo_id, arg_revision)) = parse_repo_arg(arg) else {
        return Ok(PathBuf::from(arg));
    };
    let revision = arg_revision.or(revision).unwrap_or("main");
    let repo = cache.repo(repo_id, RepoType::Model);
    repo.snapshot_for(revision)
        .ok_or_else(|| HubError::NotInCache {
            arg: arg.to_string(),
            repo: repo_id.to_string(),
            revision: revision.to_string(),
            repo_dir: repo.dir().to_path_buf(),
            reason: if !repo.dir().is_dir() {
                "nothing of it is cached".to_string()
            } else if repo.commit_for(revision).is_none() {
                format!("no refs/{revision} there (and it is not a cached commit)")
            } else {
                format!("refs/{revision} names a snapshot that is not there")
            },
        })
}

/// `org/name` or `org/name@revision`, when the part before `@` is a valid repo id.
/// A `.gguf` path is a model file, never a repo id (`models/x.gguf` would parse as one); a
/// missing one is reported by the loader, naming the path.
fn is_gguf_file(arg: &str) -> bool {
    Path::new(arg)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn parse_repo_arg(arg: &str) -> Option<(&str, Option<&str>)> {
    let (repo, revision) = match arg.split_once('@') {
        Some((repo, revision)) if !revision.is_empty() => (repo, Some(revision)),
        Some(_) => return None,
        None => (arg, None),
    };
    is_repo_id(repo).then_some((repo, revision))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_arguments_split_at_the_revision() {
        assert_eq!(
            parse_repo_arg("Qwen/Qwen2.5-1.5B"),
            Some(("Qwen/Qwen2.5-1.5B", None))
        );
        assert_eq!(
            parse_repo_arg("Qwen/Q@v1.0"),
            Some(("Qwen/Q", Some("v1.0")))
        );
        assert_eq!(
            parse_repo_arg("Qwen/Q@refs/pr/1"),
            Some(("Qwen/Q", Some("refs/pr/1")))
        );
        assert_eq!(parse_repo_arg("Qwen/Q@"), None);
        assert_eq!(parse_repo_arg("./runs/student"), None);
        assert_eq!(parse_repo_arg("/models/x"), None);
    }
}
