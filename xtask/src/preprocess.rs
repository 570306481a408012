//! `cargo xtask preprocess`: WikiText -> packed Parquet token shards, or (with
//! `--check-tokenizers`) a teacher/student tokenizer comparison. The work is in `crates/preprocess`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use preprocess::{PreprocessOptions, PreprocessOutcome, TokenizerCompat};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model directory holding tokenizer.json (and config.json, tokenizer_config.json), or a
    /// GGUF file.
    #[arg(
        long,
        value_name = "MODEL_DIR",
        required_unless_present = "check_tokenizers",
        value_parser = hub::resolve_model_dir
    )]
    tokenizer: Option<PathBuf>,

    /// WikiText directory or files: wiki.{train,valid,test}.raw or the hub's
    /// {train,validation,test}-*.parquet. Repeatable.
    #[arg(long, value_name = "DIR_OR_FILE", num_args = 1.., required_unless_present = "check_tokenizers")]
    input: Vec<PathBuf>,

    /// Output shard directory, e.g. data/shards/wikitext2-512.
    #[arg(long, value_name = "DIR", required_unless_present = "check_tokenizers")]
    out: Option<PathBuf>,

    /// Tokens per packed block.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,

    /// Rebuild even if the manifest shows the output is up to date.
    #[arg(long)]
    force: bool,

    /// Blocks per parquet row group (default: about 128K tokens).
    #[arg(long)]
    rows_per_group: Option<usize>,

    /// Blocks per shard file (default: about 32M tokens).
    #[arg(long)]
    blocks_per_shard: Option<usize>,

    /// Compare two models' tokenizers and configs (folders or GGUF files) instead of preprocessing.
    #[arg(
        long,
        num_args = 2,
        value_names = ["TEACHER_DIR", "STUDENT_DIR"],
        conflicts_with_all = ["tokenizer", "input", "out"],
        value_parser = hub::resolve_model_dir
    )]
    check_tokenizers: Option<Vec<PathBuf>>,

    /// Print the result as JSON (the manifest, or the compatibility report).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(dirs) = &args.check_tokenizers {
        return check_tokenizers(&dirs[0], &dirs[1], args.json);
    }
    let (Some(tokenizer), Some(out)) = (args.tokenizer, args.out) else {
        bail!("--tokenizer, --input and --out are required");
    };
    let mut options = PreprocessOptions::new(tokenizer, args.input, out, args.seq_len);
    options.force = args.force;
    options.rows_per_group = args.rows_per_group;
    options.blocks_per_shard = args.blocks_per_shard;
    options.progress = true;

    let started = std::time::Instant::now();
    let outcome = preprocess::preprocess(&options)?;
    let manifest = outcome.manifest();
    if args.json {
        print!("{}", manifest.to_json());
        return Ok(());
    }
    match &outcome {
        PreprocessOutcome::UpToDate(_) => println!(
            "{} is up to date (same inputs, tokenizer and seq_len); --force rebuilds it",
            options.out_dir.display()
        ),
        PreprocessOutcome::Built(_) => println!(
            "wrote {} in {:.1} s",
            options.out_dir.display(),
            started.elapsed().as_secs_f64()
        ),
    }
    print_splits(manifest);
    let tokenizer = &manifest.tokenizer;
    println!(
        "  eos {} {:?}, pad {}, vocab {}; BOS {} (shards never contain it)",
        tokenizer.eos_id,
        tokenizer.eos_token,
        tokenizer.pad_id,
        tokenizer.vocab_size,
        tokenizer
            .bos_added_by_tokenizer
            .map_or("not added by this tokenizer".to_string(), |id| format!(
                "{id} would be added by this tokenizer"
            )),
    );
    Ok(())
}

fn check_tokenizers(teacher: &PathBuf, student: &PathBuf, json: bool) -> Result<()> {
    let report = preprocess::check_tokenizers(teacher, student)
        .with_context(|| format!("comparing {} with {}", teacher.display(), student.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    if matches!(report.verdict, TokenizerCompat::DifferentBpe { .. }) {
        report.require_distillable()?;
    }
    Ok(())
}

/// One line per split: articles, tokens, blocks, padding, shard files.
pub fn print_splits(manifest: &preprocess::Manifest) {
    for (split, info) in &manifest.splits {
        println!(
            "  {split:<10} {:>4} articles  {:>9} tokens (eos incl.)  {:>6} blocks of {}  padding {:.4}%  {} shard file(s)",
            info.stats.documents,
            info.stats.tokens,
            info.stats.blocks,
            manifest.seq_len,
            info.padding_fraction * 100.0,
            info.shards.len()
        );
    }
}
