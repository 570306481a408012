//! `cargo xtask bench preprocess`: text MB/s and peak RSS of preprocessing a large input.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use preprocess::bench::{bench_preprocess, PreprocessBenchOptions};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// WikiText files or directories, repeated until the input reaches --mb.
    #[arg(long, value_name = "DIR_OR_FILE", num_args = 1.., default_value = "data/wikitext-2-raw")]
    input: Vec<PathBuf>,

    /// Size of the generated input in MB.
    #[arg(long, default_value_t = 100.0)]
    mb: f64,

    /// Model directory holding tokenizer.json, or a GGUF file.
    #[arg(
        long,
        value_name = "MODEL_DIR",
        default_value = "data/hub-files/deepseek-r1-distill-qwen-1.5b",
        value_parser = hub::resolve_model_dir
    )]
    tokenizer: PathBuf,

    /// Tokens per packed block.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,

    /// Keep the generated input and shards here instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let report = bench_preprocess(&PreprocessBenchOptions {
        tokenizer_dir: args.tokenizer,
        inputs: args.input,
        target_mb: args.mb,
        seq_len: args.seq_len,
        work_dir: args.work_dir,
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    println!("{}", report.summary());
    Ok(())
}
