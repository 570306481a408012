//! The environment variables `huggingface_hub` reads, read the same way, so that this toolkit
//! and the Python tools share one cache, one token and one offline switch:
//!
//! - cache: `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`;
//! - `HF_HOME`: else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`;
//! - token: `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`), else the file `huggingface-cli
//!   login` writes, `HF_TOKEN_PATH` or `$HF_HOME/token`;
//! - `HF_HUB_OFFLINE`: `1`, `ON`, `YES` or `TRUE` (any case) means no network at all.

use std::path::{Path, PathBuf};

use crate::cache::HfCache;
use crate::errors::HubError;

/// Where the Hugging Face files of this user live, and whether the network may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfEnvironment {
    /// The hub cache (`models--org--name/...` folders).
    pub hub_cache: PathBuf,
    /// The token file written by `huggingface-cli login`.
    pub token_path: PathBuf,
    /// A token given in the environment, which wins over the file.
    pub token_variable: Option<String>,
    /// `HF_HUB_OFFLINE` is set: nothing may be fetched.
    pub offline: bool,
}

impl HfEnvironment {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, HubError> {
        Self::from_variables(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `variable` (a test passes its own map).
    pub fn from_variables(variable: impl Fn(&str) -> Option<String>) -> Result<Self, HubError> {
        let set = |name: &str| variable(name).filter(|value| !value.trim().is_empty());
        let home = set("HOME").map(PathBuf::from);
        let expand = |value: String| expand_home(&value, home.as_deref());
        let hf_home = match set("HF_HOME") {
            Some(hf_home) => expand(hf_home)?,
            None => {
                let cache_home = match set("XDG_CACHE_HOME") {
                    Some(xdg) => expand(xdg)?,
                    None => expand("~/.cache".to_string())?,
                };
                cache_home.join("huggingface")
            }
        };
        let hub_cache = match set("HF_HUB_CACHE").or_else(|| set("HUGGINGFACE_HUB_CACHE")) {
            Some(cache) => expand(cache)?,
            None => hf_home.join("hub"),
        };
        let token_path = match set("HF_TOKEN_PATH") {
            Some(path) => expand(path)?,
            None => hf_home.join("token"),
        };
        let token_variable = set("HF_TOKEN")
            .or_else(|| set("HUGGING_FACE_HUB_TOKEN"))
            .map(|token| token.trim().to_string());
        let offline = set("HF_HUB_OFFLINE").is_some_and(|value| is_true(&value));
        Ok(HfEnvironment {
            hub_cache,
            token_path,
            token_variable,
            offline,
        })
    }

    pub fn cache(&self) -> HfCache {
        HfCache::new(&self.hub_cache)
    }

    /// The token to send: the environment's, else the login file's (`None` when neither is
    /// there or the file is empty).
    pub fn token(&self) -> Option<String> {
        self.token_variable.clone().or_else(|| {
            std::fs::read_to_string(&self.token_path)
                .ok()
                .map(|text| text.trim().to_string())
                .filter(|token| !token.is_empty())
        })
    }
}

/// `~` and `~/...` become the home folder, as Python's `os.path.expanduser` does.
fn expand_home(value: &str, home: Option<&Path>) -> Result<PathBuf, HubError> {
    let rest = match value.strip_prefix('~') {
        None => return Ok(PathBuf::from(value)),
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.trim_start_matches('/'),
        // `~user/...`: another user's home, which only the password database knows.
        Some(_) => return Ok(PathBuf::from(value)),
    };
    let home = home.ok_or_else(|| HubError::NoCacheLocation {
        reason: format!("{value:?} needs HOME, which is not set"),
    })?;
    Ok(if rest.is_empty() {
        home.to_path_buf()
    } else {
        home.join(rest)
    })
}

/// `huggingface_hub`'s `_is_true`.
fn is_true(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn environment(pairs: &[(&str, &str)]) -> Result<HfEnvironment, HubError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HfEnvironment::from_variables(|name| map.get(name).cloned())
    }

    #[test]
    fn cache_and_token_paths_follow_huggingface_hub() {
        let plain = environment(&[("HOME", "/home/ada")]).unwrap();
        assert_eq!(
            plain.hub_cache,
            Path::new("/home/ada/.cache/huggingface/hub")
        );
        assert_eq!(
            plain.token_path,
            Path::new("/home/ada/.cache/huggingface/token")
        );
        assert!(!plain.offline);

        let xdg = environment(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/xdg")]).unwrap();
        assert_eq!(xdg.hub_cache, Path::new("/xdg/huggingface/hub"));

        let hf_home = environment(&[("HOME", "/h"), ("HF_HOME", "~/hf")]).unwrap();
        assert_eq!(hf_home.hub_cache, Path::new("/h/hf/hub"));
        assert_eq!(hf_home.token_path, Path::new("/h/hf/token"));

        // HF_HUB_CACHE moves the cache but not the token, which stays under HF_HOME.
        let both = environment(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/big/disk")]).unwrap();
        assert_eq!(both.hub_cache, Path::new("/big/disk"));
        assert_eq!(both.token_path, Path::new("/hf/token"));

        let legacy = environment(&[("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/old")]).unwrap();
        assert_eq!(legacy.hub_cache, Path::new("/old"));

        let error = environment(&[]).unwrap_err().to_string();
        assert!(error.contains("HF_HUB_CACHE"), "{error}");
    }

    #[test]
    fn offline_accepts_the_values_python_accepts() {
        for value in ["1", "on", "YES", "True"] {
            assert!(
                environment(&[("HF_HOME", "/hf"), ("HF_HUB_OFFLINE", value)])
                    .unwrap()
                    .offline
            );
        }
        for value in ["0", "false", "", "no"] {
            assert!(
                !environment(&[("HF_HOME", "/hf"), ("HF_HUB_OFFLINE", value)])
                    .unwrap()
                    .offline
            );
        }
    }

    #[test]
    fn the_token_variable_wins_over_the_login_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap();
        std::fs::write(dir.path().join("token"), "hf_from_file\n").unwrap();
        let from_file = environment(&[("HF_HOME", home)]).unwrap();
        assert_eq!(from_file.token().as_deref(), Some("hf_from_file"));
        let from_variable = environment(&[("HF_HOME", home), ("HF_TOKEN", "hf_var")]).unwrap();
        assert_eq!(from_variable.token().as_deref(), Some("hf_var"));
        std::fs::write(dir.path().join("token"), "  \n").unwrap();
        assert_eq!(from_file.token(), None);
    }
}
