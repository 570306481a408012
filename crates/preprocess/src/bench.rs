//! Throughput and memory of preprocessing on a large input.
//!
//! WikiText-2's train split is 10.9 MB and the repository ships only valid and test (2.4 MB),
//! so the benchmark concatenates the given files, repeated, into one `wiki.train.raw` of the
//! requested size in a temporary directory, preprocesses it, and reports text MB/s and the
//! process's peak resident memory (VmHWM). Repeated text is a mild flatterer of speed (the BPE
//! word cache hits more often than on fresh text); memory is what it is meant to show: flat in
//! the input size.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::errors::{PreprocessError, Result};
use crate::pipeline::{preprocess, PreprocessOptions};
use crate::wikitext::{discover_sources, LineReader};

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct PreprocessBenchOptions {
    pub tokenizer_dir: PathBuf,
    /// WikiText files or directories to repeat.
    pub inputs: Vec<PathBuf>,
    /// Size of the generated input, in MB (10^6 bytes).
    pub target_mb: f64,
    pub seq_len: usize,
    /// Where to build the input and the shards; a temporary directory when `None`.
    pub work_dir: Option<PathBuf>,
}

/// The result, printed as JSON by `cargo xtask bench preprocess`.
#[derive(Debug, Clone, Serialize)]
pub struct PreprocessBenchReport {
    pub tokenizer: String,
    pub inputs: Vec<String>,
    pub seq_len: usize,
    /// Bytes of text preprocessed.
    pub text_bytes: u64,
    pub seconds: f64,
    /// Text MB (10^6 bytes) per second, input hashing and shard writing included.
    pub mb_per_s: f64,
    pub tokens: u64,
    pub tokens_per_s: f64,
    pub blocks: u64,
    pub shard_bytes: u64,
    /// Worker threads of the rayon pool (all cores unless RAYON_NUM_THREADS says otherwise).
    pub threads: usize,
    /// VmHWM of the process after the run, MiB (Linux only).
    pub peak_rss_mib: Option<f64>,
    /// VmRSS just before the run, MiB: what the process held before preprocessing.
    pub rss_before_mib: Option<f64>,
}

impl PreprocessBenchReport {
    /// One line for humans.
    pub fn summary(&self) -> String {
        format!(
            "preprocess: {:.1} MB of text in {:.1} s = {:.2} MB/s ({:.0} tokens/s, {} threads), {} tokens in {} blocks of {}, peak RSS {}",
            self.text_bytes as f64 / 1e6,
            self.seconds,
            self.mb_per_s,
            self.tokens_per_s,
            self.threads,
            self.tokens,
            self.blocks,
            self.seq_len,
            self.peak_rss_mib.map_or("n/a".to_string(), |m| format!("{m:.0} MiB")),
        )
    }
}

/// Reads a `Vm*` line of /proc/self/status, in MiB.
pub fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|line| line.starts_with(field) && line[field.len()..].starts_with(':'))?;
    let kib: f64 = line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Builds the input, runs preprocessing once (forced) and measures it.
pub fn bench_preprocess(options: &PreprocessBenchOptions) -> Result<PreprocessBenchReport> {
    let temp;
    let work_dir = match &options.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|err| PreprocessError::io(dir, err))?;
            dir.clone()
        }
        None => {
            temp = TempDir::new()?;
            temp.0.clone()
        }
    };
    let input_dir = work_dir.join("input");
    std::fs::create_dir_all(&input_dir).map_err(|err| PreprocessError::io(&input_dir, err))?;
    let input = input_dir.join("wiki.train.raw");
    let target_bytes = (options.target_mb * 1e6) as u64;
    write_repeated(&options.inputs, &input, target_bytes)?;

    let mut run = PreprocessOptions::new(
        &options.tokenizer_dir,
        vec![input.clone()],
        work_dir.join("shards"),
        options.seq_len,
    );
    run.force = true;
    let rss_before_mib = proc_status_mib("VmRSS");
    let start = Instant::now();
    let manifest = preprocess(&run)?.manifest().clone();
    let seconds = start.elapsed().as_secs_f64();
    let peak_rss_mib = proc_status_mib("VmHWM");

    let text_bytes: u64 = manifest.sources.iter().map(|s| s.bytes).sum();
    let tokens = manifest.splits.values().map(|s| s.stats.tokens).sum();
    Ok(PreprocessBenchReport {
        tokenizer: options.tokenizer_dir.display().to_string(),
        inputs: options
            .inputs
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        seq_len: options.seq_len,
        text_bytes,
        seconds,
        mb_per_s: text_bytes as f64 / 1e6 / seconds,
        tokens,
        tokens_per_s: tokens as f64 / seconds,
        blocks: manifest.splits.values().map(|s| s.stats.blocks).sum(),
        shard_bytes: manifest
            .splits
            .values()
            .flat_map(|s| &s.shards)
            .map(|f| f.bytes)
            .sum(),
        threads: rayon::current_num_threads(),
        peak_rss_mib,
        rss_before_mib,
    })
}

/// Streams the lines of `inputs` into `out` again and again until it holds `target_bytes`
/// (whole passes only, so articles are never cut).
fn write_repeated(inputs: &[PathBuf], out: &PathBuf, target_bytes: u64) -> Result<()> {
    let sources = discover_sources(inputs)?;
    let file = std::fs::File::create(out).map_err(|err| PreprocessError::io(out, err))?;
    let mut writer = BufWriter::new(file);
    let mut written = 0u64;
    while written < target_bytes.max(1) {
        for source in &sources {
            for line in LineReader::open(source)? {
                let line = line?;
                writer
                    .write_all(line.as_bytes())
                    .map_err(|err| PreprocessError::io(out, err))?;
                written += line.len() as u64;
            }
        }
        if written == 0 {
            break;
        }
    }
    writer.flush().map_err(|err| PreprocessError::io(out, err))
}

/// A scratch directory removed on drop (the library does not depend on `tempfile`).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("preprocess-bench-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|err| PreprocessError::io(&path, err))?;
        }
        std::fs::create_dir_all(&path).map_err(|err| PreprocessError::io(&path, err))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
