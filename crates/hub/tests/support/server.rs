//! A small Hugging Face hub look-alike on 127.0.0.1, for tests and manual runs.
//!
//! It speaks the parts of the protocol the downloader uses, the way huggingface.co answers:
//! - `GET /api/{models|datasets}/{repo}/revision/{rev}[?blobs=true]`: the listing;
//! - `GET /api/{models|datasets}/{repo}`: 200 exactly when the repo exists;
//! - `HEAD|GET /[datasets/]{repo}/resolve/{rev}/{path}`: LFS files answer `302` to
//!   `/cdn/...` with `X-Linked-Etag`/`X-Linked-Size`; git files answer `200` with their
//!   blob id as `ETag`;
//! - `GET /cdn/...`: the bytes, honouring `Range` (`206` + `Content-Range`, `416`).
//!
//! Faults can be queued per file and are consumed by the requests that serve its bytes:
//! a connection cut after N bytes, an HTTP status, a corrupted body, a 404.
//! Every request is recorded so tests can check what the client sent.

#![allow(dead_code)] // each test binary uses a different part of it

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Something to do instead of serving a file's bytes normally, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Send the headers for the whole body, then only this many bytes, then close.
    CutAfter(usize),
    /// Answer with this status instead.
    Status(u16),
    /// Serve the right length with one byte flipped.
    Corrupt,
    /// Answer 404 as for a missing file.
    NotFound,
    /// Ignore any `Range` header and send the whole file with 200, as some proxies do.
    IgnoreRange,
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The path with its query, still percent-encoded.
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct ServedFile {
    pub content: Vec<u8>,
    /// Stored with Git LFS: served through the CDN redirect with `X-Linked-*` headers.
    pub lfs: bool,
}

impl ServedFile {
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.content))
    }

    pub fn git_blob_id(&self) -> String {
        let mut sha1 = Sha1::new();
        sha1.update(format!("blob {}\0", self.content.len()).as_bytes());
        sha1.update(&self.content);
        hex::encode(sha1.finalize())
    }
}

#[derive(Debug, Clone, Default)]
struct ServedRepo {
    /// Branch or tag name to commit sha.
    revisions: HashMap<String, String>,
    files: BTreeMap<String, ServedFile>,
}

#[derive(Default)]
struct State {
    /// Keyed by (`models` | `datasets`, `owner/name`).
    repos: HashMap<(String, String), ServedRepo>,
    token: Option<String>,
    /// Where LFS redirects point: this server (a relative URL) unless set.
    cdn_base: Option<String>,
    faults: HashMap<String, VecDeque<Fault>>,
    requests: Vec<RecordedRequest>,
}

/// A running server; stops when dropped.
pub struct TestHub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl TestHub {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0")
    }

    pub fn start_on(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).expect("bind the test hub");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept_thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let state = Arc::clone(&state);
                            thread::spawn(move || handle_connection(stream, &state));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
                // Dropping the listener here makes later connections fail: "server down".
            })
        };
        TestHub {
            addr,
            state,
            stop,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds (or replaces) a repo. `kind` is `models` or `datasets`; `revisions` maps names
    /// such as `main` to commit shas.
    pub fn add_repo(
        &self,
        kind: &str,
        repo: &str,
        revisions: &[(&str, &str)],
        files: Vec<(&str, Vec<u8>, bool)>,
    ) {
        let served = ServedRepo {
            revisions: revisions
                .iter()
                .map(|(name, sha)| (name.to_string(), sha.to_string()))
                .collect(),
            files: files
                .into_iter()
                .map(|(path, content, lfs)| (path.to_string(), ServedFile { content, lfs }))
                .collect(),
        };
        self.lock()
            .repos
            .insert((kind.to_string(), repo.to_string()), served);
    }

    /// Requires `Authorization: Bearer {token}` on the hub's own URLs (not the CDN's).
    pub fn require_token(&self, token: &str) {
        self.lock().token = Some(token.to_string());
    }

    /// Sends LFS redirects to another server (which must serve the same repo), as the hub
    /// sends them to a CDN host.
    pub fn redirect_lfs_to(&self, cdn_endpoint: &str) {
        self.lock().cdn_base = Some(cdn_endpoint.to_string());
    }

    /// Queues a fault for the next request that serves `path`'s bytes.
    pub fn push_fault(&self, path: &str, fault: Fault) {
        self.lock()
            .faults
            .entry(path.to_string())
            .or_default()
            .push_back(fault);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Stops accepting connections; afterwards the port refuses them.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn handle_connection(stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Some(request) = read_request(&stream) else {
        return;
    };
    state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .requests
        .push(RecordedRequest {
            method: request.method.clone(),
            target: if request.query.is_empty() {
                request.path.clone()
            } else {
                format!("{}?{}", request.path, request.query)
            },
            headers: request.headers.clone(),
        });
    let mut stream = stream;
    route(&mut stream, &request, state);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            break;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    Some(Request {
        method,
        path,
        query,
        headers,
    })
}

fn route(stream: &mut TcpStream, request: &Request, state: &Mutex<State>) {
    let head_only = request.method == "HEAD";
    let segments: Vec<String> = request
        .path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();

    if let ["cdn", kind, owner, name, commit, path @ ..] = segments.as_slice() {
        return serve_cdn(
            stream,
            request,
            state,
            kind,
            &format!("{owner}/{name}"),
            commit,
            &path.join("/"),
        );
    }
    if !authorized(request, state) {
        return respond(
            stream,
            401,
            &[],
            b"{\"error\":\"Invalid credentials\"}",
            head_only,
        );
    }
    match segments.as_slice() {
        ["api", kind, owner, name, "revision", revision] => {
            let blobs = request.query.split('&').any(|kv| kv == "blobs=true");
            serve_listing(
                stream,
                state,
                kind,
                &format!("{owner}/{name}"),
                revision,
                blobs,
            )
        }
        ["api", kind, owner, name] => {
            let exists = lock(state)
                .repos
                .contains_key(&(kind.to_string(), format!("{owner}/{name}")));
            if exists {
                let body = format!("{{\"id\":\"{owner}/{name}\"}}");
                respond(stream, 200, &[], body.as_bytes(), head_only)
            } else {
                respond(
                    stream,
                    404,
                    &[],
                    b"{\"error\":\"Repository not found\"}",
                    head_only,
                )
            }
        }
        ["datasets", owner, name, "resolve", revision, path @ ..] => serve_resolve(
            stream,
            request,
            state,
            "datasets",
            &format!("{owner}/{name}"),
            revision,
            &path.join("/"),
        ),
        [owner, name, "resolve", revision, path @ ..] => serve_resolve(
            stream,
            request,
            state,
            "models",
            &format!("{owner}/{name}"),
            revision,
            &path.join("/"),
        ),
        _ => respond(stream, 404, &[], b"no such route", head_only),
    }
}

fn authorized(request: &Request, state: &Mutex<State>) -> bool {
    match &lock(state).token {
        None => true,
        Some(token) => request.header("authorization") == Some(&format!("Bearer {token}")),
    }
}

/// The repo and the commit a revision names, or the 404 the hub would send.
fn find_repo(
    state: &Mutex<State>,
    kind: &str,
    repo: &str,
    revision: &str,
) -> Result<(ServedRepo, String), (&'static str, &'static str)> {
    let state = lock(state);
    let served = state
        .repos
        .get(&(kind.to_string(), repo.to_string()))
        .ok_or(("RepoNotFound", "Repository not found"))?;
    let commit = served
        .revisions
        .get(revision)
        .cloned()
        .or_else(|| served.revisions.values().find(|c| *c == revision).cloned())
        .ok_or(("RevisionNotFound", "Revision Not Found"))?;
    Ok((served.clone(), commit))
}

fn serve_listing(
    stream: &mut TcpStream,
    state: &Mutex<State>,
    kind: &str,
    repo: &str,
    revision: &str,
    blobs: bool,
) {
    let (served, commit) = match find_repo(state, kind, repo, revision) {
        Ok(found) => found,
        // Like the hub's API, no X-Error-Code here: the client has to find out which.
        Err((_, message)) => {
            let body = format!("{{\"error\":\"{message}\"}}");
            return respond(stream, 404, &[], body.as_bytes(), false);
        }
    };
    let siblings: Vec<serde_json::Value> = served
        .files
        .iter()
        .map(|(path, file)| {
            if !blobs {
                return serde_json::json!({ "rfilename": path });
            }
            let mut sibling = serde_json::json!({
                "rfilename": path,
                "size": file.content.len(),
                "blobId": file.git_blob_id(),
            });
            if file.lfs {
                sibling["lfs"] = serde_json::json!({
                    "sha256": file.sha256(),
                    "size": file.content.len(),
                    "pointerSize": 134,
                });
            }
            sibling
        })
        .collect();
    let body = serde_json::json!({ "id": repo, "sha": commit, "siblings": siblings });
    respond(stream, 200, &[], body.to_string().as_bytes(), false)
}

#[allow(clippy::too_many_arguments)]
fn serve_resolve(
    stream: &mut TcpStream,
    request: &Request,
    state: &Mutex<State>,
    kind: &str,
    repo: &str,
    revision: &str,
    path: &str,
) {
    let head_only = request.method == "HEAD";
    let (served, commit) = match find_repo(state, kind, repo, revision) {
        Ok(found) => found,
        Err((code, message)) => {
            return respond(
                stream,
                404,
                &[("X-Error-Code", code.into())],
                message.as_bytes(),
                head_only,
            )
        }
    };
    let Some(file) = served.files.get(path) else {
        return respond(
            stream,
            404,
            &[("X-Error-Code", "EntryNotFound".into())],
            b"Entry not found",
            head_only,
        );
    };
    let mut headers = vec![("X-Repo-Commit", commit.clone())];
    let cdn_base = lock(state).cdn_base.clone().unwrap_or_default();
    if file.lfs {
        let sha256 = file.sha256();
        headers.extend([
            ("ETag", format!("\"{sha256}\"")),
            ("X-Linked-Etag", format!("\"{sha256}\"")),
            ("X-Linked-Size", file.content.len().to_string()),
            (
                "Location",
                format!("{cdn_base}/cdn/{kind}/{repo}/{commit}/{path}"),
            ),
        ]);
        return respond(stream, 302, &headers, b"", head_only);
    }
    headers.push(("ETag", format!("\"{}\"", file.git_blob_id())));
    serve_bytes(stream, request, state, path, &file.content, headers);
}

#[allow(clippy::too_many_arguments)]
fn serve_cdn(
    stream: &mut TcpStream,
    request: &Request,
    state: &Mutex<State>,
    kind: &str,
    repo: &str,
    commit: &str,
    path: &str,
) {
    let file = {
        let state = lock(state);
        state
            .repos
            .get(&(kind.to_string(), repo.to_string()))
            .filter(|r| r.revisions.values().any(|c| c == commit))
            .and_then(|r| r.files.get(path).cloned())
    };
    match file {
        Some(file) => serve_bytes(stream, request, state, path, &file.content, Vec::new()),
        None => respond(
            stream,
            404,
            &[],
            b"no such object",
            request.method == "HEAD",
        ),
    }
}

/// Serves content (or the requested range of it), applying a queued fault if any.
fn serve_bytes(
    stream: &mut TcpStream,
    request: &Request,
    state: &Mutex<State>,
    path: &str,
    content: &[u8],
    mut headers: Vec<(&'static str, String)>,
) {
    let head_only = request.method == "HEAD";
    let fault = if head_only {
        None
    } else {
        lock(state)
            .faults
            .get_mut(path)
            .and_then(VecDeque::pop_front)
    };
    let total = content.len();
    let start = (fault != Some(Fault::IgnoreRange))
        .then(|| request.header("range"))
        .flatten()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.trim().parse::<usize>().ok());
    let (status, body) = match start {
        Some(start) if start >= total => {
            headers.push(("Content-Range", format!("bytes */{total}")));
            return respond(stream, 416, &headers, b"", head_only);
        }
        Some(start) => {
            headers.push((
                "Content-Range",
                format!("bytes {start}-{}/{total}", total - 1),
            ));
            (206, content[start..].to_vec())
        }
        None => (200, content.to_vec()),
    };
    match fault {
        None | Some(Fault::IgnoreRange) => respond(stream, status, &headers, &body, head_only),
        Some(Fault::Status(code)) => respond(stream, code, &[], b"injected failure", false),
        Some(Fault::NotFound) => respond(
            stream,
            404,
            &[("X-Error-Code", "EntryNotFound".into())],
            b"Entry not found",
            false,
        ),
        Some(Fault::Corrupt) => {
            let mut body = body;
            if let Some(first) = body.first_mut() {
                *first ^= 0xff;
            }
            respond(stream, status, &headers, &body, false)
        }
        Some(Fault::CutAfter(n)) => {
            write_head(stream, status, &headers, body.len());
            let _ = stream.write_all(&body[..n.min(body.len())]);
            let _ = stream.flush();
            // Returning closes the socket mid-body.
        }
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    head_only: bool,
) {
    write_head(stream, status, headers, body.len());
    if !head_only {
        let _ = stream.write_all(body);
    }
}

fn write_head(stream: &mut TcpStream, status: u16, headers: &[(&str, String)], length: usize) {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let mut head =
        format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {length}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&segment[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
