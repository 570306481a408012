//! `cargo xtask download`: fetch a model or dataset repo (or everything a recipe names) from a
//! Hugging Face hub mirror, into `--local-dir` or, without it, into the Hugging Face cache as
//! `huggingface-cli download` does. The work is in the `hub` crate; this only reads flags.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;
use hub::{
    DownloadRequest, Downloader, FileAction, HfCache, HfEnvironment, HubOptions, RepoRef, RepoType,
};

#[derive(clap::Args)]
pub struct Args {
    /// Repository id, e.g. deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B.
    #[arg(long, required_unless_present = "recipe", conflicts_with = "recipe")]
    repo: Option<String>,

    /// Folder to download into; files keep their paths inside the repo. Without it the files go
    /// to the Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub, else
    /// ~/.cache/huggingface/hub), where `--model ORG/NAME` and Python tools find them.
    #[arg(long, conflicts_with = "recipe")]
    local_dir: Option<PathBuf>,

    /// The Hugging Face cache folder to use instead of the environment's.
    #[arg(long, value_name = "DIR", conflicts_with = "local_dir")]
    cache_dir: Option<PathBuf>,

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

    /// Access token for gated or private repos; HF_TOKEN, else the `huggingface-cli login`
    /// token file (HF_HOME/token), is used when this is not given.
    #[arg(long)]
    token: Option<String>,

    /// Download the teacher, student and dataset a distillation recipe names
    /// (its [teacher], [student] and [dataset] tables: repo, local_dir, include, revision).
    /// A local_dir that is the repo id itself (local_dir = "Qwen/Qwen2.5-1.5B") means the
    /// Hugging Face cache.
    #[arg(long, value_name = "TOML")]
    recipe: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum RepoKind {
    Model,
    Dataset,
}

pub fn run(args: Args) -> Result<()> {
    let environment = HfEnvironment::from_env()?;
    let endpoint = hub::resolve_endpoint(std::env::var("HF_ENDPOINT").ok(), args.endpoint);
    let token = args.token.or_else(|| environment.token());
    let downloader = Downloader::new(HubOptions {
        token,
        offline: environment.offline,
        ..HubOptions::new(endpoint.clone())
    })?;
    let cache = args
        .cache_dir
        .map_or_else(|| environment.cache(), HfCache::new);

    let requests: Vec<(String, DownloadRequest)> = match &args.recipe {
        Some(recipe) => hub::load_recipe(recipe)?
            .into_iter()
            .map(|download| (download.role.to_string(), download.request))
            .collect(),
        None => {
            let repo = args.repo.expect("clap requires --repo without --recipe");
            vec![(
                "repo".to_string(),
                DownloadRequest {
                    // No --local-dir: the repo id as the folder, which means the cache below.
                    local_dir: args.local_dir.unwrap_or_else(|| PathBuf::from(&repo)),
                    repo: RepoRef {
                        repo,
                        repo_type: match args.repo_type {
                            RepoKind::Model => RepoType::Model,
                            RepoKind::Dataset => RepoType::Dataset,
                        },
                        revision: args.revision,
                    },
                    include: args.include,
                },
            )]
        }
    };

    for (role, request) in &requests {
        let repo = &request.repo;
        let into_cache = request.names_the_cache();
        let destination = if into_cache {
            format!("the Hugging Face cache {}", cache.root().display())
        } else {
            request.local_dir.display().to_string()
        };
        eprintln!(
            "{role}: {} {} @ {} from {endpoint} into {destination}",
            repo.repo_type, repo.repo, repo.revision,
        );
        let report = if into_cache {
            downloader.download_to_cache(&cache, repo, &request.include)
        } else {
            downloader.download(request)
        }
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
            match (report.offline, environment.offline) {
                (false, _) => "",
                (true, true) => " [offline: HF_HUB_OFFLINE is set]",
                (true, false) => " [offline: hub unreachable]",
            },
        );
        if into_cache {
            // What `huggingface-cli download` prints: the snapshot folder, usable as --model.
            println!("{}", report.location.display());
        }
    }
    Ok(())
}
