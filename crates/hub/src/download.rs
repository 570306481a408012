//! Fetching one file: resume, stream, verify, rename, with retries.
//!
//! The order of operations is what makes interruptions harmless:
//! 1. bytes go to `{path}.incomplete`, appended from where a previous try stopped (`Range`);
//! 2. once the body is complete its size and digest are checked; a mismatch deletes the
//!    partial file (a corrupted body is never resumed from nor kept);
//! 3. only then is it moved into place by its [`Destination`] (renamed to `{path}` with its
//!    record written, or to its blob in the cache with the snapshot's link).
//!
//! A connection cut or a 5xx keeps the partial file and retries after a backoff; the next
//! try, or the next run, resumes from its length.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::thread;

use progress::{ByteProgress, Output};

use crate::client::{HubClient, RequestError};
use crate::destination::Destination;
use crate::disk::{available_space, is_disk_full};
use crate::errors::HubError;
use crate::repo::RepoRef;
use crate::retry::RetryPolicy;
use crate::verify::{hash_file, hash_prefix, ContentDigests, ContentHasher, ExpectedFile};

/// Read buffer size: large enough that per-chunk overhead (hashing calls, progress
/// updates) is negligible.
const CHUNK: usize = 256 * 1024;

/// The shared settings of one download run.
pub(crate) struct FileFetcher<'a> {
    pub client: &'a HubClient,
    pub destination: &'a dyn Destination,
    pub repo: &'a RepoRef,
    pub retry: &'a RetryPolicy,
    pub show_progress: bool,
}

impl FileFetcher<'_> {
    /// Downloads `path` into the local folder and returns its verified size, retrying
    /// transient failures per the policy.
    pub fn fetch(&self, path: &str, listed: &ExpectedFile) -> Result<u64, HubError> {
        let head = self.with_retries(|| self.client.head_file(self.repo, path), |_| {})?;
        let expected = listed.merged_with_head(&head);
        if listed.digest.is_none() {
            // The listing gave no digest: HEAD's may name content already stored.
            if let Some(size) = self.destination.reuse(path, &expected)? {
                return Ok(size);
            }
        }
        let partial = self.destination.partial_path(path, &expected)?;
        if let Some(parent) = partial.parent() {
            fs::create_dir_all(parent).map_err(|e| HubError::io("create folder", parent, e))?;
        }
        self.with_retries(
            || self.try_once(path, &expected, &partial),
            |error| {
                // A body that arrived whole but wrong is not resumed from.
                if matches!(
                    error,
                    HubError::ChecksumMismatch { .. } | HubError::SizeMismatch { .. }
                ) {
                    let _ = fs::remove_file(&partial);
                }
            },
        )
    }

    /// Runs `operation` until it succeeds, fails for good, or runs out of attempts;
    /// `on_error` sees every failure first (to clean up what must not be kept).
    fn with_retries<T>(
        &self,
        mut operation: impl FnMut() -> Result<T, HubError>,
        mut on_error: impl FnMut(&HubError),
    ) -> Result<T, HubError> {
        let mut attempt = 1;
        loop {
            match operation() {
                Ok(value) => return Ok(value),
                Err(error) => {
                    on_error(&error);
                    if !error.is_transient() || !self.retry.may_retry(attempt) {
                        return Err(error);
                    }
                    let wait = self.retry.backoff_after(attempt);
                    if self.show_progress {
                        eprintln!("retrying in {wait:?} after: {error}");
                    }
                    thread::sleep(wait);
                    attempt += 1;
                }
            }
        }
    }

    /// One try: resume or start the body, stream it to the partial file, verify, rename.
    fn try_once(
        &self,
        path: &str,
        expected: &ExpectedFile,
        partial: &Path,
    ) -> Result<u64, HubError> {
        let mut have = fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        if expected.size.is_some_and(|size| have > size) {
            remove_partial(partial)?;
            have = 0;
        }

        let digests = if have > 0 && expected.size == Some(have) {
            // A previous try got every byte but stopped before the rename.
            hash_file(partial, expected.wants_git_blob())
                .map_err(|e| HubError::io("read", partial, e))?
        } else {
            match self.client.open_file(self.repo, path, have) {
                Ok(body) => self.stream_body(path, expected, partial, have, body)?,
                Err(RequestError::Status { status: 416, .. }) if have > 0 => {
                    // The server has nothing past our length: the partial file is all there
                    // is. Verification below decides whether it is right.
                    hash_file(partial, expected.wants_git_blob())
                        .map_err(|e| HubError::io("read", partial, e))?
                }
                Err(error) => return Err(self.client.describe_file_error(self.repo, path, error)),
            }
        };

        expected.check(path, &digests)?;
        self.destination.finish(path, partial, &digests)?;
        Ok(digests.size)
    }

    /// Appends the body to the partial file while hashing it.
    fn stream_body(
        &self,
        path: &str,
        expected: &ExpectedFile,
        partial: &Path,
        mut have: u64,
        body: crate::client::FileBody,
    ) -> Result<ContentDigests, HubError> {
        if !body.partial && have > 0 {
            // The server ignored the range and sends the whole file: start over.
            have = 0;
        } else if body.partial && body.start != have {
            return Err(HubError::Protocol {
                url: body.url,
                reason: format!(
                    "asked for bytes from {have}, got a range from {}",
                    body.start
                ),
            });
        }
        let size = body
            .total_size
            .map(|total| if body.partial { total } else { total.max(have) })
            .or(expected.size);
        if let (Some(listed), Some(served)) = (expected.size, size) {
            if listed != served {
                return Err(HubError::SizeMismatch {
                    path: path.to_string(),
                    expected: listed,
                    actual: served,
                });
            }
        }
        let remaining = size.map(|s| s.saturating_sub(have));
        if let (Some(needed), Some(available)) = (remaining, available_space(partial)) {
            if needed > available {
                return Err(HubError::DiskFull {
                    path: partial.to_path_buf(),
                    needed,
                    available: Some(available),
                });
            }
        }

        let git_blob_len = expected.wants_git_blob().then_some(size).flatten();
        let mut hasher = ContentHasher::new(git_blob_len);
        let file = if have > 0 {
            hash_prefix(partial, have, &mut hasher)
                .map_err(|e| HubError::io("read", partial, e))?;
            OpenOptions::new().append(true).open(partial)
        } else {
            File::create(partial)
        }
        .map_err(|e| HubError::io("open", partial, e))?;
        let mut writer = BufWriter::with_capacity(CHUNK * 4, file);

        let progress = self.progress_bar(path, size, have);
        let mut reader = body.reader;
        let mut buffer = vec![0u8; CHUNK];
        let mut written = have;
        let write_failed = |error: std::io::Error, written: u64| {
            if is_disk_full(&error) {
                HubError::DiskFull {
                    path: partial.to_path_buf(),
                    needed: size.unwrap_or(written).saturating_sub(have),
                    available: available_space(partial),
                }
            } else {
                HubError::io("write", partial, error)
            }
        };
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // Keep what arrived so the retry resumes from it.
                    writer.flush().map_err(|e| write_failed(e, written))?;
                    leave_bar(&progress, false);
                    return Err(HubError::Connection {
                        url: body.url,
                        reason: error.to_string(),
                    });
                }
            };
            if size.is_some_and(|size| written + n as u64 > size) {
                leave_bar(&progress, false);
                return Err(HubError::SizeMismatch {
                    path: path.to_string(),
                    expected: size.unwrap_or_default(),
                    actual: written + n as u64,
                });
            }
            writer
                .write_all(&buffer[..n])
                .map_err(|e| write_failed(e, written))?;
            hasher.update(&buffer[..n]);
            written += n as u64;
            progress.set_position(written);
        }
        let file = writer
            .into_inner()
            .map_err(|e| write_failed(e.into_error(), written))?;
        file.sync_all().map_err(|e| write_failed(e, written))?;
        leave_bar(&progress, true);

        if let Some(size) = size {
            if written < size {
                return Err(HubError::TruncatedBody {
                    url: body.url,
                    received: written,
                    expected: size,
                });
            }
        }
        Ok(hasher.finish())
    }

    /// A bar per file on a terminal; lines with bytes, rate and ETA in a log.
    fn progress_bar(&self, path: &str, size: Option<u64>, position: u64) -> ByteProgress {
        let output = Output::stderr(
            self.show_progress,
            "{msg:40!} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        );
        ByteProgress::new(output, path, size, position)
    }
}

/// Finishes (or abandons, keeping its position) a bar and moves below it, so whatever is
/// printed next starts on a fresh line instead of after the bar.
fn leave_bar(progress: &ByteProgress, finished: bool) {
    if finished {
        progress.finish();
    } else {
        progress.abandon();
    }
    if progress.is_bar() {
        eprintln!();
    }
}

fn remove_partial(partial: &Path) -> Result<(), HubError> {
    match fs::remove_file(partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(HubError::io("remove", partial, e))
        }
        _ => Ok(()),
    }
}
