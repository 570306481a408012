//! The Hugging Face cache: repo ids resolved against a cache laid out exactly as
//! `huggingface_hub` lays it out (tests/python/hf_cache_layout.py makes the same one with the
//! library itself), and downloads into the cache from the local hub look-alike.

#[path = "support/server.rs"]
mod server;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hub::{
    resolve_in_cache, Downloader, FileAction, HfCache, HubError, HubOptions, RepoRef, RepoType,
    RetryPolicy, Timeouts,
};
use server::{ServedFile, TestHub};

const REPO: &str = "Qwen/Qwen2.5-0.5B-Instruct";
const MAIN: &str = "7ae557604adf67be50417f59c2c2f167def9a775";
const V1: &str = "1111111111111111111111111111111111111111";
const UNREFERENCED: &str = "2222222222222222222222222222222222222222";

fn config() -> ServedFile {
    ServedFile {
        content: br#"{"architectures":["Qwen2ForCausalLM"]}"#.to_vec(),
        lfs: false,
    }
}

fn weights() -> ServedFile {
    ServedFile {
        content: (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect(),
        lfs: true,
    }
}

fn chat_template() -> ServedFile {
    ServedFile {
        content: b"{% for m in messages %}{{ m.content }}{% endfor %}".to_vec(),
        lfs: false,
    }
}

/// A blob's name: the LFS sha256, or the git blob id of a file kept in git.
fn blob_name(file: &ServedFile) -> String {
    if file.lfs {
        file.sha256()
    } else {
        file.git_blob_id()
    }
}

/// Lays out a cache as `huggingface_hub` does after `snapshot_download` of `main` and `v1`
/// and an `hf_hub_download(revision=<commit>)` (which writes no ref): blobs named by digest,
/// snapshot files as relative symlinks, refs holding the commit without a newline.
fn python_layout(cache: &Path) -> PathBuf {
    let repo = cache.join("models--Qwen--Qwen2.5-0.5B-Instruct");
    fs::create_dir_all(repo.join("blobs")).unwrap();
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), MAIN).unwrap();
    fs::write(repo.join("refs/v1"), V1).unwrap();
    let files = [
        ("config.json", config()),
        ("model.safetensors", weights()),
        ("templates/chat_template.jinja", chat_template()),
    ];
    for commit in [MAIN, V1, UNREFERENCED] {
        for (path, file) in &files {
            let blob = repo.join("blobs").join(blob_name(file));
            fs::write(&blob, &file.content).unwrap();
            let pointer = repo.join("snapshots").join(commit).join(path);
            fs::create_dir_all(pointer.parent().unwrap()).unwrap();
            let depth = path.matches('/').count();
            let target = format!("{}../../blobs/{}", "../".repeat(depth), blob_name(file));
            std::os::unix::fs::symlink(target, &pointer).unwrap();
        }
    }
    repo
}

#[test]
fn a_repo_id_resolves_to_the_snapshot_its_ref_names() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = python_layout(dir.path());
    let cache = HfCache::new(dir.path());

    let main = resolve_in_cache(REPO, None, &cache).unwrap();
    assert_eq!(main, repo_dir.join("snapshots").join(MAIN));
    assert_eq!(
        fs::read(main.join("config.json")).unwrap(),
        config().content
    );
    assert_eq!(
        fs::read(main.join("templates/chat_template.jinja")).unwrap(),
        chat_template().content
    );
    // `@revision` in the argument, or apart (a recipe's `revision`); the argument's wins.
    let v1 = repo_dir.join("snapshots").join(V1);
    assert_eq!(
        resolve_in_cache(&format!("{REPO}@v1"), None, &cache).unwrap(),
        v1
    );
    assert_eq!(resolve_in_cache(REPO, Some("v1"), &cache).unwrap(), v1);
    assert_eq!(
        resolve_in_cache(&format!("{REPO}@v1"), Some("main"), &cache).unwrap(),
        v1
    );
    // A commit that was downloaded by hash has a snapshot but no ref.
    assert_eq!(
        resolve_in_cache(&format!("{REPO}@{UNREFERENCED}"), None, &cache).unwrap(),
        repo_dir.join("snapshots").join(UNREFERENCED)
    );
}

#[test]
fn an_uncached_repo_or_revision_names_the_cache_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    python_layout(dir.path());
    let cache = HfCache::new(dir.path());

    let error = resolve_in_cache("Qwen/Qwen2.5-1.5B", None, &cache).unwrap_err();
    assert!(matches!(error, HubError::NotInCache { .. }), "{error:?}");
    let message = error.to_string();
    for expected in [
        "\"Qwen/Qwen2.5-1.5B\" is not a directory",
        "models--Qwen--Qwen2.5-1.5B",
        "nothing of it is cached",
        "cargo xtask download --repo Qwen/Qwen2.5-1.5B",
    ] {
        assert!(message.contains(expected), "{message}");
    }
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );

    let message = resolve_in_cache(&format!("{REPO}@v2"), None, &cache)
        .unwrap_err()
        .to_string();
    assert!(message.contains("no refs/v2 there"), "{message}");

    // A ref whose snapshot was deleted (e.g. by `huggingface-cli delete-cache`).
    fs::write(
        dir.path()
            .join("models--Qwen--Qwen2.5-0.5B-Instruct/refs/gone"),
        "3333333333333333333333333333333333333333",
    )
    .unwrap();
    let message = resolve_in_cache(&format!("{REPO}@gone"), None, &cache)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("names a snapshot that is not there"),
        "{message}"
    );
}

#[test]
fn a_folder_wins_over_the_cache_and_other_paths_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    python_layout(dir.path());
    let cache = HfCache::new(dir.path());
    // A folder that happens to be named like a repo id is used as it is.
    let folder = dir.path().join("Qwen/Qwen2.5-0.5B-Instruct");
    fs::create_dir_all(&folder).unwrap();
    let folder_arg = folder.to_str().unwrap();
    assert_eq!(resolve_in_cache(folder_arg, None, &cache).unwrap(), folder);
    // Not a repo id: left for the model loader to report.
    for path in ["./runs/student", "/no/such/model", "a/b/c"] {
        assert_eq!(
            resolve_in_cache(path, None, &cache).unwrap(),
            PathBuf::from(path)
        );
    }
}

fn serve(hub: &TestHub) {
    hub.add_repo(
        "models",
        REPO,
        &[("main", MAIN)],
        vec![
            ("config.json", config().content, false),
            ("model.safetensors", weights().content, true),
            (
                "templates/chat_template.jinja",
                chat_template().content,
                false,
            ),
        ],
    );
}

fn options(hub: &TestHub) -> HubOptions {
    HubOptions {
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        },
        timeouts: Timeouts {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(10),
        },
        show_progress: false,
        ..HubOptions::new(hub.endpoint())
    }
}

fn main_ref() -> RepoRef {
    RepoRef {
        repo: REPO.into(),
        repo_type: RepoType::Model,
        revision: "main".into(),
    }
}

/// Every entry under `dir`, relative, with where a symlink points.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            let kind = entry.file_type().unwrap();
            if kind.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.push(format!("{relative} -> {}", target.display()));
            } else if kind.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(relative);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn download_without_local_dir_fills_the_cache_as_huggingface_hub_does() {
    let hub = TestHub::start();
    serve(&hub);
    let dir = tempfile::tempdir().unwrap();
    // HUB_TEST_KEEP_CACHE=DIR keeps the cache for tests/python/hf_cache_layout.py to check.
    let kept = std::env::var_os("HUB_TEST_KEEP_CACHE").map(PathBuf::from);
    let dir_path = kept.as_deref().unwrap_or(dir.path());
    let cache = HfCache::new(dir_path);
    let downloader = Downloader::new(options(&hub)).unwrap();

    let report = downloader
        .download_to_cache(&cache, &main_ref(), &[])
        .unwrap();

    let repo_dir = dir_path.join("models--Qwen--Qwen2.5-0.5B-Instruct");
    let snapshot = repo_dir.join("snapshots").join(MAIN);
    assert_eq!(report.location, snapshot);
    assert_eq!(report.commit.as_deref(), Some(MAIN));
    assert_eq!(report.downloaded().count(), 3);
    let (config_blob, weights_blob, template_blob) = (
        blob_name(&config()),
        blob_name(&weights()),
        blob_name(&chat_template()),
    );
    let mut expected = vec![
        format!("blobs/{config_blob}"),
        format!("blobs/{weights_blob}"),
        format!("blobs/{template_blob}"),
        "refs/main".to_string(),
        format!("snapshots/{MAIN}/config.json -> ../../blobs/{config_blob}"),
        format!("snapshots/{MAIN}/model.safetensors -> ../../blobs/{weights_blob}"),
        format!("snapshots/{MAIN}/templates/chat_template.jinja -> ../../../blobs/{template_blob}"),
    ];
    expected.sort();
    assert_eq!(tree(&repo_dir), expected);
    // No newline, as `huggingface_hub` writes it.
    assert_eq!(
        fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        MAIN
    );
    assert_eq!(
        fs::read(snapshot.join("model.safetensors")).unwrap(),
        weights().content
    );
    // What `--model Qwen/Qwen2.5-0.5B-Instruct` then uses.
    assert_eq!(resolve_in_cache(REPO, None, &cache).unwrap(), snapshot);

    // A re-run fetches no bytes.
    hub.clear_requests();
    let again = downloader
        .download_to_cache(&cache, &main_ref(), &[])
        .unwrap();
    assert!(again
        .files
        .iter()
        .all(|f| f.action == FileAction::AlreadyPresent));
    assert!(hub.requests().iter().all(|r| r.target.starts_with("/api/")));
}

#[test]
fn offline_mode_uses_the_cached_snapshot_and_never_the_network() {
    let mut hub = TestHub::start();
    serve(&hub);
    let dir = tempfile::tempdir().unwrap();
    let cache = HfCache::new(dir.path());
    let offline = HubOptions {
        offline: true,
        ..options(&hub)
    };

    // Nothing cached yet: the error names the cache folder and the switch.
    let error = Downloader::new(offline.clone())
        .unwrap()
        .download_to_cache(&cache, &main_ref(), &[])
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("HF_HUB_OFFLINE is set"), "{message}");
    assert!(
        message.contains("models--Qwen--Qwen2.5-0.5B-Instruct"),
        "{message}"
    );
    assert!(hub.requests().is_empty());

    Downloader::new(options(&hub))
        .unwrap()
        .download_to_cache(&cache, &main_ref(), &["*.json".into()])
        .unwrap();
    hub.stop();

    let report = Downloader::new(offline.clone())
        .unwrap()
        .download_to_cache(&cache, &main_ref(), &["config.json".into()])
        .unwrap();
    assert!(report.offline);
    assert_eq!(report.files.len(), 1);
    assert_eq!(
        report.location,
        dir.path()
            .join("models--Qwen--Qwen2.5-0.5B-Instruct/snapshots")
            .join(MAIN)
    );
    // The weights were never fetched: asking for them offline names what is missing.
    let message = Downloader::new(offline)
        .unwrap()
        .download_to_cache(&cache, &main_ref(), &["model.safetensors".into()])
        .unwrap_err()
        .to_string();
    assert!(message.contains("model.safetensors"), "{message}");

    // Without the switch, an unreachable hub falls back to the snapshot too.
    let report = Downloader::new(options(&hub))
        .unwrap()
        .download_to_cache(&cache, &main_ref(), &["*.json".into()])
        .unwrap();
    assert!(report.offline);
}

#[test]
fn content_shared_with_another_revision_is_linked_not_fetched() {
    let hub = TestHub::start();
    serve(&hub);
    let dir = tempfile::tempdir().unwrap();
    let cache = HfCache::new(dir.path());
    let downloader = Downloader::new(options(&hub)).unwrap();
    downloader
        .download_to_cache(&cache, &main_ref(), &[])
        .unwrap();

    // A new commit on main with the same files: only the listing and a new snapshot.
    let next = "4444444444444444444444444444444444444444";
    hub.add_repo(
        "models",
        REPO,
        &[("main", next)],
        vec![
            ("config.json", config().content, false),
            ("model.safetensors", weights().content, true),
        ],
    );
    hub.clear_requests();
    let report = downloader
        .download_to_cache(&cache, &main_ref(), &[])
        .unwrap();
    assert_eq!(report.downloaded().count(), 0);
    assert!(hub.requests().iter().all(|r| r.target.starts_with("/api/")));
    let repo_dir = dir.path().join("models--Qwen--Qwen2.5-0.5B-Instruct");
    assert_eq!(
        fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        next
    );
    assert_eq!(
        fs::read(repo_dir.join("snapshots").join(next).join("config.json")).unwrap(),
        config().content
    );
}
