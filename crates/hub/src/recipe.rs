//! The downloads a distillation recipe names.
//!
//! A recipe (`configs/*.toml`) belongs to the trainer and carries many knobs; this module
//! reads only the three tables that name repositories and ignores every other key, so the
//! trainer can add settings without breaking downloads:
//!
//! ```toml
//! [teacher]
//! repo = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
//! local_dir = "models/DeepSeek-R1-Distill-Qwen-1.5B"
//! # optional: revision = "main", include = ["*.json", "*.safetensors"]
//!
//! [student]
//! repo = "Qwen/Qwen2.5-1.5B"
//! local_dir = "models/Qwen2.5-1.5B"
//!
//! [dataset]
//! repo = "Salesforce/wikitext"
//! local_dir = "data/wikitext"
//! include = ["wikitext-2-raw-v1/*.parquet"]
//! ```
//!
//! `[teacher]` and `[student]` are model repos, `[dataset]` a dataset repo (either can be
//! overridden with `repo_type`). Relative `local_dir`s are relative to the working directory
//! of the command, as with `--local-dir`.

use std::path::{Path, PathBuf};

use toml::Value;

use crate::errors::HubError;
use crate::repo::{RepoRef, RepoType};
use crate::snapshot::DownloadRequest;

/// The tables read, in the order they are downloaded, with their default repo type.
const ROLES: [(&str, RepoType); 3] = [
    ("teacher", RepoType::Model),
    ("student", RepoType::Model),
    ("dataset", RepoType::Dataset),
];

/// One download a recipe asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeDownload {
    /// `teacher`, `student` or `dataset`.
    pub role: &'static str,
    pub request: DownloadRequest,
}

/// Reads the recipe at `path`.
pub fn load_recipe(path: &Path) -> Result<Vec<RecipeDownload>, HubError> {
    let text = std::fs::read_to_string(path).map_err(|e| HubError::io("read", path, e))?;
    parse_recipe(&text, path)
}

/// Parses recipe text; `path` only names the file in errors.
pub fn parse_recipe(text: &str, path: &Path) -> Result<Vec<RecipeDownload>, HubError> {
    let invalid = |reason: String| HubError::Recipe {
        path: path.to_path_buf(),
        reason,
    };
    let document: Value = text
        .parse::<toml::Table>()
        .map(Value::Table)
        .map_err(|e| invalid(format!("not valid TOML: {e}")))?;

    let mut downloads = Vec::new();
    for (role, default_type) in ROLES {
        let Some(table) = document.get(role) else {
            continue;
        };
        let table = table
            .as_table()
            .ok_or_else(|| invalid(format!("[{role}] must be a table")))?;
        let string = |key: &str| -> Result<Option<String>, HubError> {
            match table.get(key) {
                None => Ok(None),
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
                Some(_) => Err(invalid(format!("{role}.{key} must be a non-empty string"))),
            }
        };
        let required = |key: &str| {
            string(key)?.ok_or_else(|| invalid(format!("[{role}] needs `{key} = \"...\"`")))
        };
        let repo_type = match string("repo_type")? {
            Some(name) => name
                .parse()
                .map_err(|e| invalid(format!("{role}.repo_type: {e}")))?,
            None => default_type,
        };
        let include = match table.get("include") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| invalid(format!("{role}.include must list strings")))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid(format!("{role}.include must be an array of globs"))),
        };
        downloads.push(RecipeDownload {
            role,
            request: DownloadRequest {
                repo: RepoRef {
                    repo: required("repo")?,
                    repo_type,
                    revision: string("revision")?.unwrap_or_else(|| "main".to_string()),
                },
                local_dir: PathBuf::from(required("local_dir")?),
                include,
            },
        });
    }
    if downloads.is_empty() {
        return Err(invalid(
            "names nothing to download: expected a [teacher], [student] or [dataset] table".into(),
        ));
    }
    Ok(downloads)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<RecipeDownload>, HubError> {
        parse_recipe(text, Path::new("configs/test.toml"))
    }

    #[test]
    fn reads_the_three_tables_and_ignores_other_knobs() {
        let downloads = parse(
            r#"
            seed = 7
            [training]
            lr = 1e-4
            [teacher]
            repo = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
            local_dir = "models/teacher"
            temperature = 2.0
            [student]
            repo = "Qwen/Qwen2.5-1.5B"
            local_dir = "models/student"
            revision = "v1"
            [dataset]
            repo = "Salesforce/wikitext"
            local_dir = "data/wikitext"
            include = ["wikitext-2-raw-v1/*.parquet"]
            split = "train"
            "#,
        )
        .unwrap();
        let roles: Vec<_> = downloads.iter().map(|d| d.role).collect();
        assert_eq!(roles, ["teacher", "student", "dataset"]);
        assert_eq!(downloads[0].request.repo.repo_type, RepoType::Model);
        assert_eq!(downloads[0].request.repo.revision, "main");
        assert_eq!(downloads[1].request.repo.revision, "v1");
        let dataset = &downloads[2].request;
        assert_eq!(dataset.repo.repo_type, RepoType::Dataset);
        assert_eq!(dataset.local_dir, PathBuf::from("data/wikitext"));
        assert_eq!(dataset.include, ["wikitext-2-raw-v1/*.parquet"]);
    }

    #[test]
    fn missing_keys_and_wrong_types_are_named() {
        let error = parse("[teacher]\nrepo = \"a/b\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("[teacher] needs `local_dir"), "{error}");
        let error = parse("[dataset]\nrepo = \"a/b\"\nlocal_dir = \"d\"\ninclude = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("dataset.include must be an array"),
            "{error}"
        );
        let error = parse("[training]\nlr = 1\n").unwrap_err().to_string();
        assert!(error.contains("names nothing to download"), "{error}");
        assert!(parse("not toml [").is_err());
    }
}
