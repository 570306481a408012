//! Training metrics, logged twice: as JSON Lines in `{output_dir}/metrics.jsonl` (one object per
//! line, easy to read back with anything) and as TensorBoard scalars in
//! `{output_dir}/runs/distill/`.
//!
//! A JSONL line looks like
//! `{"step":100,"epoch":0.25,"split":"train","loss":2.31,"lr":0.0001}`: the step, the (fractional)
//! epoch, the split, then the metrics in the order given. In TensorBoard the same metrics are
//! tagged `{split}/{name}`, e.g. `train/loss`.
//!
//! Resuming: a run that crashed after its last checkpoint at step `S` may have logged steps
//! past `S`. [`MetricsLog::open_resumed`] (or [`MetricsLog::resume_at`]) drops those lines from
//! the JSONL file, rewriting it atomically, and marks the restart in the new TensorBoard event
//! file so that TensorBoard drops them too; the resumed run then logs steps `S + 1..` again
//! without doubling the curves.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::tensorboard::{SummaryWriter, TensorBoardError};

/// The JSON Lines file, in the output directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// The TensorBoard log directory, relative to the output directory. Point TensorBoard at
/// `{output_dir}/runs` (or at a folder holding several output directories) to see the run.
pub const TENSORBOARD_DIR: &str = "runs/distill";

/// Keys every JSONL line has; a metric may not use them as its name.
const RESERVED_KEYS: [&str; 3] = ["step", "epoch", "split"];

/// Which part of training a line of metrics comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Eval,
}

impl Split {
    /// `"train"` or `"eval"`, as written in the JSONL file and in TensorBoard tags.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Eval => "eval",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure to write or rewrite the metrics logs.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Rewriting the metrics file atomically failed.
    #[error(transparent)]
    File(#[from] fsio::FileError),
    /// A file-system operation on the metrics file (or its directory) failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing the TensorBoard event file failed.
    #[error(transparent)]
    TensorBoard(#[from] TensorBoardError),
    /// A metric name is empty, reserved (`step`, `epoch`, `split`) or repeated in one call.
    #[error("invalid metric name {name:?} for {}: {reason}", path.display())]
    InvalidName {
        name: String,
        reason: &'static str,
        path: PathBuf,
    },
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> MetricsError + 'a {
    move |source| MetricsError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes each logged set of metrics to `metrics.jsonl` and to TensorBoard together.
#[derive(Debug)]
pub struct MetricsLog {
    jsonl_path: PathBuf,
    /// Opened in append mode, unbuffered: each line goes out in one `write_all`.
    jsonl: File,
    tensorboard: SummaryWriter,
}

impl MetricsLog {
    /// Opens the logs of a run writing into `output_dir` (created if missing).
    ///
    /// * `resume == false`: a fresh run. `metrics.jsonl` is emptied, and the new TensorBoard
    ///   event file starts with a restart mark at step 0, so events of an older run left in
    ///   `runs/distill` are hidden (their files are not deleted).
    /// * `resume == true`: `metrics.jsonl` is kept and appended to (a line torn by a crash, with
    ///   no final newline, is cut off); a new event file is added next to the old ones. Call
    ///   [`resume_at`](Self::resume_at) with the checkpoint's step, or use
    ///   [`open_resumed`](Self::open_resumed), to drop what was logged after the checkpoint.
    pub fn open(output_dir: impl AsRef<Path>, resume: bool) -> Result<Self, MetricsError> {
        let output_dir = output_dir.as_ref();
        fs::create_dir_all(output_dir).map_err(io_error("create directory", output_dir))?;
        let jsonl_path = output_dir.join(METRICS_FILE);
        let jsonl = if resume {
            cut_torn_tail(&jsonl_path)?;
            open_append(&jsonl_path)?
        } else {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&jsonl_path)
                .map_err(io_error("create", &jsonl_path))?;
            open_append(&jsonl_path)?
        };
        let mut tensorboard = SummaryWriter::create(output_dir.join(TENSORBOARD_DIR))?;
        if !resume {
            tensorboard.mark_restart(0)?;
        }
        Ok(Self {
            jsonl_path,
            jsonl,
            tensorboard,
        })
    }

    /// Opens the logs of a run resumed from a checkpoint at `step`: [`open`](Self::open) with
    /// `resume == true`, then [`resume_at(step)`](Self::resume_at).
    pub fn open_resumed(output_dir: impl AsRef<Path>, step: u64) -> Result<Self, MetricsError> {
        let mut log = Self::open(output_dir, true)?;
        log.resume_at(step)?;
        Ok(log)
    }

    /// Forgets what was logged after `step`: rewrites `metrics.jsonl` keeping only the lines
    /// with `"step" <= step` (through a temporary file renamed over it, so a crash leaves either
    /// the old or the new file), and marks a restart at `step + 1` in TensorBoard, which hides
    /// the older events at steps `> step`. Lines that do not parse as a JSON object with an
    /// unsigned `"step"` are dropped too. Returns how many lines were dropped.
    pub fn resume_at(&mut self, step: u64) -> Result<usize, MetricsError> {
        let text =
            fs::read_to_string(&self.jsonl_path).map_err(io_error("read", &self.jsonl_path))?;
        let mut kept = String::with_capacity(text.len());
        let mut dropped = 0;
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            let line_step = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64));
            match line_step {
                Some(s) if s <= step => {
                    kept.push_str(line);
                    kept.push('\n');
                }
                _ => dropped += 1,
            }
        }
        if dropped > 0 {
            fsio::write_atomic(&self.jsonl_path, kept.as_bytes())?;
            // The old handle points at the replaced file.
            self.jsonl = open_append(&self.jsonl_path)?;
        }
        self.tensorboard
            .mark_restart(i64::try_from(step.saturating_add(1)).unwrap_or(i64::MAX))?;
        Ok(dropped)
    }

    /// Logs `metrics` (name, value pairs) at `step` and `epoch` for `split`: one line in
    /// `metrics.jsonl` and one TensorBoard event with the tags `{split}/{name}`. Non-finite
    /// values are written as `null` in JSON (JSON has no NaN) and as they are in TensorBoard.
    pub fn log(
        &mut self,
        step: u64,
        epoch: f64,
        split: Split,
        metrics: &[(&str, f64)],
    ) -> Result<(), MetricsError> {
        let mut seen = HashSet::with_capacity(metrics.len());
        for (name, _) in metrics {
            let reason = if name.is_empty() {
                Some("empty")
            } else if RESERVED_KEYS.contains(name) {
                Some("reserved")
            } else if !seen.insert(*name) {
                Some("repeated")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(MetricsError::InvalidName {
                    name: name.to_string(),
                    reason,
                    path: self.jsonl_path.clone(),
                });
            }
        }

        let mut line = format!(
            "{{\"step\":{step},\"epoch\":{},\"split\":\"{}\"",
            json_number(epoch),
            split.as_str()
        );
        for (name, value) in metrics {
            line.push(',');
            line.push_str(&serde_json::Value::from(*name).to_string());
            line.push(':');
            line.push_str(&json_number(*value));
        }
        line.push_str("}\n");
        self.jsonl
            .write_all(line.as_bytes())
            .map_err(io_error("write", &self.jsonl_path))?;

        let tb_step = i64::try_from(step).unwrap_or(i64::MAX);
        self.tensorboard.add_scalars(
            tb_step,
            metrics
                .iter()
                .map(|(name, value)| (format!("{split}/{name}"), *value as f32)),
        )?;
        Ok(())
    }

    /// Flushes both logs to the operating system (each `log` call already does).
    pub fn flush(&mut self) -> Result<(), MetricsError> {
        self.jsonl
            .flush()
            .map_err(io_error("write", &self.jsonl_path))?;
        self.tensorboard.flush()?;
        Ok(())
    }

    /// The JSON Lines file.
    pub fn jsonl_path(&self) -> &Path {
        &self.jsonl_path
    }

    /// The TensorBoard event file this log writes.
    pub fn event_file(&self) -> &Path {
        self.tensorboard.path()
    }
}

/// `value` as a JSON number, or `null` when it is not finite.
fn json_number(value: f64) -> String {
    serde_json::Value::from(value).to_string()
}

fn open_append(path: &Path) -> Result<File, MetricsError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_error("open", path))
}

/// Cuts a last line without its newline (a write torn by a crash) off `path`, if it exists.
fn cut_torn_tail(path: &Path) -> Result<(), MetricsError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(MetricsError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error("open", path))?;
    file.set_len(keep as u64)
        .map_err(io_error("truncate", path))?;
    Ok(())
}
