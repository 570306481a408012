//! `cargo xtask download`: fetch a model or dataset repo (or everything a recipe names) from a
//! Hugging Face hub mirror. The work is in the `hub` crate; this only reads flags.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;
use hub::{DownloadRequest, Downloader, FileAction, HubOptions, RepoRef, RepoType};

#[derive(clap::Args)]
pub struct Args {
    /// Repository id, e.g. deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B.
    #[arg(long, required_unless_present = "recipe", conflicts_with = "recipe")]
    repo: Option<String>,

    /// Folder to download into; files keep their paths inside the repo.
    #[arg(long, required_unless_present = "recipe", conflicts_with = "recipe")]
    local_dir: Option<PathBuf>,

    /// Branch, tag or commit.
    #[arg(long, default_value = "main", conflicts_with = "recipe")]
    revision: String,

    /// Only files matching these globs (`*` also crosses `/`); repeatable. Default: all.
    #[arg(long, value_name = "GLOB", num_args = 1.., conflicts_with = "recipe")]
    include: Vec<String>,

    #[arg(long, value_enum, default_value_t = RepoKind::Model, conflicts_with = "recipe")]
    repo_type: RepoKind,

    /// Hub URL, used when HF_ENDPOINT is not set [default: https://hf-mirror.com].
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,

    /// Access token for gated or private repos; HF_TOKEN is used when this is not given.
    #[arg(long)]
    token: Option<String>,

    /// Download the teacher, student and dataset a distillation recipe names
    /// (its [teacher], [student] and [dataset] tables: repo, local_dir, include, revision).
    #[arg(long, value_name = "TOML")]
    recipe: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum RepoKind {
    Model,
    Dataset,
}

pub fn run(args: Args) -> Result<()> {
    let endpoint = hub::resolve_endpoint(std::env::var("HF_ENDPOINT").ok(), args.endpoint);
    let token = args.token.or_else(|| std::env::var("HF_TOKEN").ok());
    let downloader = Downloader::new(HubOptions {
        token,
        ..HubOptions::new(endpoint.clone())
    })?;

    let requests: Vec<(String, DownloadRequest)> = match &args.recipe {
        Some(recipe) => hub::load_recipe(recipe)?
            .into_iter()
            .map(|download| (download.role.to_string(), download.request))
            .collect(),
        None => vec![(
            "repo".to_string(),
            DownloadRequest {
                repo: RepoRef {
                    repo: args.repo.expect("clap requires --repo without --recipe"),
                    repo_type: match args.repo_type {
                        RepoKind::Model => RepoType::Model,
                        RepoKind::Dataset => RepoType::Dataset,
                    },
                    revision: args.revision,
                },
                local_dir: args
                    .local_dir
                    .expect("clap requires --local-dir without --recipe"),
                include: args.include,
            },
        )],
    };

    for (role, request) in &requests {
        let repo = &request.repo;
        eprintln!(
            "{role}: {} {} @ {} from {endpoint} into {}",
            repo.repo_type,
            repo.repo,
            repo.revision,
            request.local_dir.display()
        );
        let report = downloader
            .download(request)
            .with_context(|| format!("downloading {} ({role})", repo.repo))?;
        let fetched = report.downloaded().count();
        let bytes: u64 = report.files.iter().map(|f| f.size).sum();
        let present = report
            .files
            .iter()
            .filter(|f| f.action == FileAction::AlreadyPresent)
            .count();
        println!(
            "{}: {} files, {bytes} bytes ({fetched} downloaded, {present} already present and verified){}{}",
            repo.repo,
            report.files.len(),
            report
                .commit
                .as_deref()
                .map(|c| format!(" at commit {c}"))
                .unwrap_or_default(),
            if report.offline { " [offline: hub unreachable]" } else { "" },
        );
    }
    Ok(())
}
