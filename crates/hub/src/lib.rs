//! Resumable, verified downloads of model and dataset repositories from a Hugging Face hub
//! or one of its mirrors (`hf-mirror.com` by default).
//!
//! It behaves like `huggingface-cli download --local-dir`: files are written as
//! `{path}.incomplete`, resumed with HTTP `Range` after an interruption, checked against the
//! hub's size and sha256 (or git blob id) and only then renamed into place. Transient
//! failures are retried with exponential backoff; a corrupted body is deleted, never kept.
//! A re-run skips verified files and works without the network when nothing is missing.
//!
//! Without `--local-dir` it downloads into the Hugging Face cache exactly as `huggingface_hub`
//! does ([`HfCache`], [`Downloader::download_to_cache`]), and [`resolve_model_dir`] turns a
//! repo id given where a model folder is expected into that cache's snapshot, offline.
//!
//! ```no_run
//! use hub::{DownloadRequest, Downloader, HubOptions, RepoRef, RepoType};
//!
//! let downloader = Downloader::new(HubOptions::new("https://hf-mirror.com"))?;
//! let report = downloader.download(&DownloadRequest {
//!     repo: RepoRef {
//!         repo: "Salesforce/wikitext".into(),
//!         repo_type: RepoType::Dataset,
//!         revision: "main".into(),
//!     },
//!     local_dir: "data/wikitext".into(),
//!     include: vec!["wikitext-2-raw-v1/*.parquet".into()],
//! })?;
//! println!("{} files", report.files.len());
//! # Ok::<(), hub::HubError>(())
//! ```

mod cache;
mod client;
mod destination;
mod disk;
mod download;
mod environment;
mod errors;
mod local_dir;
mod model_dir;
mod protocol;
mod recipe;
mod repo;
mod retry;
mod selection;
mod snapshot;
mod verify;

pub use cache::{is_repo_id, repo_folder_name, CachedRepo, HfCache};
pub use client::Timeouts;
pub use environment::HfEnvironment;
pub use errors::HubError;
pub use local_dir::{FileRecord, INCOMPLETE_SUFFIX};
pub use model_dir::{resolve_in_cache, resolve_model_dir, resolve_model_dir_at};
pub use protocol::{resolve_endpoint, DEFAULT_ENDPOINT};
pub use recipe::{load_recipe, parse_recipe, RecipeDownload};
pub use repo::{RepoRef, RepoType};
pub use retry::RetryPolicy;
pub use selection::{FileAction, FileReport};
pub use snapshot::{DownloadReport, DownloadRequest, Downloader, HubOptions};
