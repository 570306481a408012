//! End-to-end downloads against a real HTTP server on 127.0.0.1 that speaks the hub's
//! protocol (`support/server.rs`), with faults injected where real downloads break.

#[path = "support/server.rs"]
mod server;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hub::{
    DownloadReport, DownloadRequest, Downloader, FileAction, HubError, HubOptions, RepoRef,
    RepoType, RetryPolicy, Timeouts,
};
use server::{Fault, RecordedRequest, TestHub};

const TEACHER: &str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B";
const COMMIT: &str = "ad9f0ae0864d7fbcd1cd905e3c6c5b069cc8b562";
const WEIGHTS: &str = "model.safetensors";
const WEIGHTS_LEN: usize = 300_000;

/// Deterministic bytes that are not all alike, so a flipped or shifted byte shows.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

fn config_json() -> Vec<u8> {
    br#"{"architectures":["Qwen2ForCausalLM"],"hidden_size":1536}"#.to_vec()
}

fn tokenizer_json() -> Vec<u8> {
    pseudo_random(40_000, 7)
}

/// The teacher's repo: two git files and one LFS file served through the CDN redirect.
fn serve_teacher(hub: &TestHub) {
    hub.add_repo(
        "models",
        TEACHER,
        &[("main", COMMIT)],
        vec![
            ("config.json", config_json(), false),
            (WEIGHTS, pseudo_random(WEIGHTS_LEN, 1), true),
            ("tokenizer.json", tokenizer_json(), false),
        ],
    );
}

fn options(hub: &TestHub) -> HubOptions {
    HubOptions {
        endpoint: hub.endpoint(),
        token: None,
        retry: RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
        },
        timeouts: Timeouts {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(10),
        },
        show_progress: false,
        offline: false,
    }
}

fn teacher_request(local_dir: &Path, include: &[&str]) -> DownloadRequest {
    DownloadRequest {
        repo: RepoRef {
            repo: TEACHER.into(),
            repo_type: RepoType::Model,
            revision: "main".into(),
        },
        local_dir: local_dir.to_path_buf(),
        include: include.iter().map(|s| s.to_string()).collect(),
    }
}

fn download(options: HubOptions, request: &DownloadRequest) -> Result<DownloadReport, HubError> {
    Downloader::new(options)?.download(request)
}

/// Every file under `dir`, relative, sorted, bookkeeping excluded.
fn files_in(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if relative.starts_with(".cache") {
                continue;
            }
            if path.is_dir() {
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

/// The GETs that asked for `path`'s bytes (at the hub's resolve URL or at the CDN).
fn body_gets(hub: &TestHub, path: &str) -> Vec<RecordedRequest> {
    hub.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.target.ends_with(&format!("/{path}")))
        .collect()
}

fn cdn_gets(hub: &TestHub, path: &str) -> Vec<RecordedRequest> {
    body_gets(hub, path)
        .into_iter()
        .filter(|r| r.target.starts_with("/cdn/"))
        .collect()
}

#[test]
fn downloads_git_and_lfs_files_through_the_cdn_redirect_and_records_them() {
    let hub = TestHub::start();
    serve_teacher(&hub);
    let dir = tempfile::tempdir().unwrap();

    let report = download(options(&hub), &teacher_request(dir.path(), &[])).unwrap();

    assert_eq!(report.commit.as_deref(), Some(COMMIT));
    assert!(!report.offline);
    assert_eq!(report.downloaded().count(), 3);
    assert_eq!(
        files_in(dir.path()),
        ["config.json", WEIGHTS, "tokenizer.json"]
    );
    assert_eq!(
        fs::read(dir.path().join("config.json")).unwrap(),
        config_json()
    );
    assert_eq!(
        fs::read(dir.path().join(WEIGHTS)).unwrap(),
        pseudo_random(WEIGHTS_LEN, 1)
    );
    assert_eq!(
        fs::read(dir.path().join("tokenizer.json")).unwrap(),
        tokenizer_json()
    );

    // The listing was asked with sizes, each file's metadata with a HEAD on its resolve
    // URL, and the LFS bytes came from the CDN the 302 pointed to.
    let requests = hub.requests();
    assert!(requests
        .iter()
        .any(|r| r.target == format!("/api/models/{TEACHER}/revision/main?blobs=true")));
    assert!(requests
        .iter()
        .any(|r| r.method == "HEAD" && r.target == format!("/{TEACHER}/resolve/main/{WEIGHTS}")));
    assert_eq!(cdn_gets(&hub, WEIGHTS).len(), 1);

    let record: serde_json::Value = serde_json::from_slice(
        &fs::read(dir.path().join(format!(".cache/hub/files/{WEIGHTS}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(record["commit"], COMMIT);
    assert_eq!(record["size"], WEIGHTS_LEN);
    assert_eq!(
        record["sha256"],
        server::ServedFile {
            content: pseudo_random(WEIGHTS_LEN, 1),
            lfs: true
        }
        .sha256()
    );
}

#[test]
fn dataset_include_fetches_only_the_wikitext_2_parquet_shards() {
    let hub = TestHub::start();
    fn shard(name: &str, seed: u64) -> (&str, Vec<u8>, bool) {
        (name, pseudo_random(20_000, seed), true)
    }
    hub.add_repo(
        "datasets",
        "Salesforce/wikitext",
        &[("main", COMMIT)],
        vec![
            ("README.md", b"# WikiText\n".to_vec(), false),
            shard("wikitext-2-raw-v1/test-00000-of-00001.parquet", 2),
            shard("wikitext-2-raw-v1/train-00000-of-00001.parquet", 3),
            shard("wikitext-2-raw-v1/validation-00000-of-00001.parquet", 4),
            shard("wikitext-103-raw-v1/test-00000-of-00001.parquet", 5),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let request = DownloadRequest {
        repo: RepoRef {
            repo: "Salesforce/wikitext".into(),
            repo_type: RepoType::Dataset,
            revision: "main".into(),
        },
        local_dir: dir.path().to_path_buf(),
        include: vec!["wikitext-2-raw-v1/*.parquet".into()],
    };

    let report = download(options(&hub), &request).unwrap();

    assert_eq!(report.files.len(), 3);
    assert_eq!(
        files_in(dir.path()),
        [
            "wikitext-2-raw-v1/test-00000-of-00001.parquet",
            "wikitext-2-raw-v1/train-00000-of-00001.parquet",
            "wikitext-2-raw-v1/validation-00000-of-00001.parquet",
        ]
    );
    assert_eq!(
        fs::read(
            dir.path()
                .join("wikitext-2-raw-v1/train-00000-of-00001.parquet")
        )
        .unwrap(),
        pseudo_random(20_000, 3)
    );
    // Dataset URLs carry the `datasets` prefix on both the API and resolve paths.
    for request in hub
        .requests()
        .iter()
        .filter(|r| !r.target.starts_with("/cdn/"))
    {
        assert!(
            request
                .target
                .starts_with("/api/datasets/Salesforce/wikitext/")
                || request
                    .target
                    .starts_with("/datasets/Salesforce/wikitext/resolve/main/"),
            "{}",
            request.target
        );
    }
}

#[test]
fn connection_cut_mid_file_resumes_with_a_range_from_the_partial_length() {
    let hub = TestHub::start();
    serve_teacher(&hub);
    hub.push_fault(WEIGHTS, Fault::CutAfter(100_000));
    let dir = tempfile::tempdir().unwrap();

    download(options(&hub), &teacher_request(dir.path(), &[WEIGHTS])).unwrap();

    assert_eq!(
        fs::read(dir.path().join(WEIGHTS)).unwrap(),
        pseudo_random(WEIGHTS_LEN, 1)
    );
    let gets = cdn_gets(&hub, WEIGHTS);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].header("range"), None);
    assert_eq!(gets[1].header("range"), Some("bytes=100000-"));
    assert_eq!(files_in(dir.path()), [WEIGHTS]);
}

#[test]
fn interrupted_run_leaves_only_a_partial_file_that_the_next_run_resumes() {
    let hub = TestHub::start();
    serve_teacher(&hub);
    hub.push_fault(WEIGHTS, Fault::CutAfter(50_000));
    let dir = tempfile::tempdir().unwrap();
    let one_try = HubOptions {
        retry: RetryPolicy {
            max_attempts: 1,
            ..options(&hub).retry
        },
        ..options(&hub)
    };

    let error = download(one_try, &teacher_request(dir.path(), &[WEIGHTS])).unwrap_err();
    assert!(matches!(error, HubError::Connection { .. }), "{error}");
    // Nothing under the final name, no record: a later run cannot take it for complete.
    let partial = dir.path().join(format!("{WEIGHTS}.incomplete"));
    assert!(!dir.path().join(WEIGHTS).exists());
    assert!(!dir
        .path()
        .join(format!(".cache/hub/files/{WEIGHTS}.json"))
        .exists());
    let partial_len = fs::metadata(&partial).unwrap().len();
    assert_eq!(partial_len, 50_000);

    hub.clear_requests();
    let report = download(options(&hub), &teacher_request(dir.path(), &[WEIGHTS])).unwrap();
    assert_eq!(report.downloaded().count(), 1);
    let gets = cdn_gets(&hub, WEIGHTS);
    assert_eq!(gets.len(), 1);
    assert_eq!(
        gets[0].header("range"),
        Some(format!("bytes={partial_len}-").as_str())
    );
    assert_eq!(
        fs::read(dir.path().join(WEIGHTS)).unwrap(),
        pseudo_random(WEIGHTS_LEN, 1)
    );
    assert!(!partial.exists());
}

#[test]
fn a_server_that_ignores_range_replaces_the_partial_file_instead_of_appending() {
    let hub = TestHub::start();
    serve_teacher(&hub);
    hub.push_fault(WEIGHTS, Fault::IgnoreRange);
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join(format!("{WEIGHTS}.incomplete"));
    fs::write(&partial, &pseudo_random(WEIGHTS_LEN, 1)[..1000]).unwrap();

    download(options(&hub), &teacher_request(dir.path(), &[WEIGHTS])).unwrap();

    let gets = cdn_gets(&hub, WEIGHTS);
    assert_eq!(gets.len(), 1);
    assert_eq!(gets[0].header("range"), Some("bytes=1000-"));
    assert_eq!(
        fs::read(dir.path().join(WEIGHTS)).unwrap(),
        pseudo_random(WEIGHTS_LEN, 1)
    );
    assert!(!partial.exists());
}

#[test]
fn server_error_is_retried_with_backoff() {
    let hub = TestHub::start();
    serve_teacher(&hub);
    hub.push_fault(WEIGHTS, Fault::Status(500));
    hub.push_fault("config.json", Fault::Status(503));
    let dir = tempfile::tempdir().unwrap();

    let report = download(options(&hub), &teacher_request(dir.path(), &[])).unwrap();

    assert_eq!(report.downloaded().count(), 3);
    assert_eq!(cdn_gets(&hub, WEIGHTS).len(), 2);
    assert_eq!(
        fs::read(dir.path().join(WEIGHTS)).unwrap(),
        pseudo_random(WEIGHTS_LEN, 1)
    );
    assert_eq!(
        fs::read(dir.path().join("config.json")).unwrap(),
        config_json()
    );
}

#[test]
fn corrupted_body_is_deleted_and_fetched_again_from_the_start() {
    let hub = TestHub::start();
    serve_teacher(&hub);
    hub.push_fault(WEIGHTS, Fault::Corrupt);
    hub.push_fault("config.json", Fault::Corrupt);
    let dir = tempfile::tempdir().unwrap();

    download(options(&hub), &teacher_request(dir.path(), &[])).unwrap();

    assert_eq!(
        fs::read(dir.path().join(WEIGHTS)).unwrap(),
        pseudo_random(WEIGHTS_LEN, 1)
    );
    // A git file is checked against its blob id just the same.
    assert_eq!(
        fs::read(dir.path().join("config.json")).unwrap(),
        config_json()
    );
    let gets = cdn_gets(&hub, WEIGHTS);
    assert_eq!(gets.len(), 2);
    // The retry asked for the whole file: nothing of the corrupted body was kept.
    assert_eq!(gets[1].header("range"), None);
}

#[test]
fn persistent_corruption_fails_and_keeps_none_of_the_bad_bytes() {
    let hub = TestHub::start();
    serve_teacher(&hub);
    for _ in 0..4 {
        hub.push_fault(WEIGHTS, Fault::Corrupt);
    }
    let dir = tempfile::tempdir().unwrap();

    let error = download(options(&hub), &teacher_request(dir.path(), &[WEIGHTS])).unwrap_err();

    assert!(
        matches!(error, HubError::ChecksumMismatch { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("deleted"), "{error}");
    assert_eq!(cdn_gets(&hub, WEIGHTS).len(), 4);
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
    assert!(!dir
        .path()
        .join(format!(".cache/hub/files/{WEIGHTS}.json"))
        .exists());
}

#[test]
fn missing_repo_revision_and_file_give_distinct_errors() {
    let hub = TestHub::start();
    serve_teacher(&hub);
    let dir = tempfile::tempdir().unwrap();

    let mut missing_repo = teacher_request(dir.path(), &[]);
    missing_repo.repo.repo = "deepseek-ai/no-such-model".into();
    let error = download(options(&hub), &missing_repo).unwrap_err();
    assert!(matches!(error, HubError::RepoNotFound { .. }), "{error}");
    assert!(error
        .to_string()
        .contains("repository deepseek-ai/no-such-model (model) not found"));

    let mut missing_revision = teacher_request(dir.path(), &[]);
    missing_revision.repo.revision = "v9".into();
    let error = download(options(&hub), &missing_revision).unwrap_err();
    assert!(
        matches!(error, HubError::RevisionNotFound { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("revision \"v9\" not found in"));

    let error = download(
        options(&hub),
        &teacher_request(dir.path(), &["missing.bin"]),
    )
    .unwrap_err();
    assert!(matches!(error, HubError::FileNotFound { .. }), "{error}");
    assert!(error
        .to_string()
        .contains("file \"missing.bin\" not found in"));

    // Listed, yet the resolve URL answers 404 (a listing gone stale).
    hub.push_fault("config.json", Fault::NotFound);
    let error = download(
        options(&hub),
        &teacher_request(dir.path(), &["config.json"]),
    )
    .unwrap_err();
    assert!(
        matches!(&error, HubError::FileNotFound { path, .. } if path == "config.json"),
        "{error}"
    );
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn unauthorized_without_token_says_to_set_hf_token_and_the_token_is_sent() {
    let hub = TestHub::start();
    serve_teacher(&hub);
    hub.require_token("hf_secret");
    let dir = tempfile::tempdir().unwrap();

    let error = download(options(&hub), &teacher_request(dir.path(), &[])).unwrap_err();
    assert!(
        matches!(error, HubError::AccessDenied { status: 401, .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("set HF_TOKEN") && message.contains("licence"),
        "{message}"
    );

    let wrong = HubOptions {
        token: Some("hf_wrong".into()),
        ..options(&hub)
    };
    let error = download(wrong, &teacher_request(dir.path(), &[])).unwrap_err();
    assert!(
        error.to_string().contains("token was not accepted"),
        "{error}"
    );

    hub.clear_requests();
    let authorized = HubOptions {
        token: Some("hf_secret".into()),
        ..options(&hub)
    };
    download(authorized, &teacher_request(dir.path(), &[])).unwrap();
    assert_eq!(files_in(dir.path()).len(), 3);
    for request in hub
        .requests()
        .iter()
        .filter(|r| !r.target.starts_with("/cdn/"))
    {
        assert_eq!(request.header("authorization"), Some("Bearer hf_secret"));
    }

    // A 403 with a valid token is a gated repo whose licence the account has not accepted.
    hub.push_fault(WEIGHTS, Fault::Status(403));
    fs::remove_file(dir.path().join(WEIGHTS)).unwrap();
    let authorized = HubOptions {
        token: Some("hf_secret".into()),
        ..options(&hub)
    };
    let error = download(authorized, &teacher_request(dir.path(), &[WEIGHTS])).unwrap_err();
    assert!(
        matches!(error, HubError::AccessDenied { status: 403, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("accept its licence"), "{error}");
    assert!(!dir.path().join(WEIGHTS).exists());
}

#[test]
fn the_token_is_not_sent_to_a_cdn_on_another_host() {
    let hub = TestHub::start();
    let cdn = TestHub::start();
    serve_teacher(&hub);
    serve_teacher(&cdn);
    hub.require_token("hf_secret");
    hub.redirect_lfs_to(&cdn.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let authorized = HubOptions {
        token: Some("hf_secret".into()),
        ..options(&hub)
    };

    download(authorized, &teacher_request(dir.path(), &[WEIGHTS])).unwrap();

    assert_eq!(
        fs::read(dir.path().join(WEIGHTS)).unwrap(),
        pseudo_random(WEIGHTS_LEN, 1)
    );
    let cdn_requests = cdn.requests();
    assert_eq!(cdn_requests.len(), 1);
    assert!(cdn_requests[0].target.starts_with("/cdn/"));
    assert_eq!(cdn_requests[0].header("authorization"), None);
    assert!(hub
        .requests()
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer hf_secret")));
}

#[test]
fn rerun_skips_verified_files_and_works_offline_once_the_server_is_gone() {
    let mut hub = TestHub::start();
    serve_teacher(&hub);
    let dir = tempfile::tempdir().unwrap();
    let request = teacher_request(dir.path(), &[]);
    download(options(&hub), &request).unwrap();

    // Online re-run: one listing request, no file fetched.
    hub.clear_requests();
    let report = download(options(&hub), &request).unwrap();
    assert!(report
        .files
        .iter()
        .all(|f| f.action == FileAction::AlreadyPresent));
    let targets: Vec<_> = hub.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [format!("/api/models/{TEACHER}/revision/main?blobs=true")]
    );

    // Offline re-run: the server is down, every requested file is present and verified.
    hub.stop();
    let report = download(options(&hub), &request).unwrap();
    assert!(report.offline);
    assert_eq!(report.commit.as_deref(), Some(COMMIT));
    assert_eq!(report.files.len(), 3);
    assert!(report
        .files
        .iter()
        .all(|f| f.action == FileAction::AlreadyPresent));
    let report = download(options(&hub), &teacher_request(dir.path(), &["*.json"])).unwrap();
    assert_eq!(report.files.len(), 2);

    // Offline with a file gone: the error names it and keeps the connection failure.
    fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let error = download(options(&hub), &request).unwrap_err();
    match &error {
        HubError::Offline {
            missing, source, ..
        } => {
            assert_eq!(missing, &["tokenizer.json".to_string()]);
            assert!(matches!(**source, HubError::Connection { .. }));
        }
        other => panic!("expected an offline error, got {other}"),
    }
    assert!(error.to_string().contains("cannot reach"), "{error}");
}

#[test]
fn a_file_changed_on_disk_is_no_longer_trusted_and_is_fetched_again() {
    let hub = TestHub::start();
    serve_teacher(&hub);
    let dir = tempfile::tempdir().unwrap();
    let request = teacher_request(dir.path(), &[WEIGHTS]);
    download(options(&hub), &request).unwrap();

    // Same size, other bytes, later mtime: the record no longer vouches for it.
    std::thread::sleep(Duration::from_millis(20));
    fs::write(dir.path().join(WEIGHTS), vec![0u8; WEIGHTS_LEN]).unwrap();
    hub.clear_requests();
    let report = download(options(&hub), &request).unwrap();

    assert_eq!(report.downloaded().count(), 1);
    assert_eq!(cdn_gets(&hub, WEIGHTS).len(), 1);
    assert_eq!(
        fs::read(dir.path().join(WEIGHTS)).unwrap(),
        pseudo_random(WEIGHTS_LEN, 1)
    );
}

/// `/dev/full` fails every write with ENOSPC: a partial file linked to it is a disk that
/// fills up mid-download.
#[cfg(target_os = "linux")]
#[test]
fn full_disk_error_names_the_path_and_the_bytes_needed() {
    let hub = TestHub::start();
    serve_teacher(&hub);
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join(format!("{WEIGHTS}.incomplete"));
    std::os::unix::fs::symlink("/dev/full", &partial).unwrap();

    let error = download(options(&hub), &teacher_request(dir.path(), &[WEIGHTS])).unwrap_err();

    match &error {
        HubError::DiskFull { path, needed, .. } => {
            assert_eq!(path, &partial);
            assert_eq!(*needed, WEIGHTS_LEN as u64);
        }
        other => panic!("expected a disk-full error, got {other}"),
    }
    let message = error.to_string();
    assert!(
        message.contains(&partial.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&format!("{WEIGHTS_LEN} more bytes")),
        "{message}"
    );
    assert!(!dir.path().join(WEIGHTS).exists());
}

#[test]
fn recipe_downloads_teacher_student_and_dataset() {
    let hub = TestHub::start();
    serve_teacher(&hub);
    hub.add_repo(
        "models",
        "Qwen/Qwen2.5-1.5B",
        &[("main", "1111111111111111111111111111111111111111")],
        vec![("config.json", b"{\"hidden_size\":1536}".to_vec(), false)],
    );
    hub.add_repo(
        "datasets",
        "Salesforce/wikitext",
        &[("main", COMMIT)],
        vec![
            ("README.md", b"# WikiText\n".to_vec(), false),
            (
                "wikitext-2-raw-v1/test-00000-of-00001.parquet",
                pseudo_random(5_000, 9),
                true,
            ),
        ],
    );
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/distill-recipe.toml");
    let downloads = hub::load_recipe(&recipe).unwrap();
    let roles: Vec<_> = downloads.iter().map(|d| d.role).collect();
    assert_eq!(roles, ["teacher", "student", "dataset"]);

    let root = tempfile::tempdir().unwrap();
    let downloader = Downloader::new(options(&hub)).unwrap();
    for download in &downloads {
        let mut request = download.request.clone();
        request.local_dir = root.path().join(&request.local_dir);
        downloader.download(&request).unwrap();
    }
    let local = |p: &str| -> PathBuf { root.path().join(p) };
    assert_eq!(
        files_in(&local("models/DeepSeek-R1-Distill-Qwen-1.5B")).len(),
        3
    );
    assert_eq!(files_in(&local("models/Qwen2.5-1.5B")), ["config.json"]);
    assert_eq!(
        files_in(&local("data/wikitext")),
        ["wikitext-2-raw-v1/test-00000-of-00001.parquet"]
    );
}
