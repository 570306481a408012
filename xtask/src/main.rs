//! `cargo xtask <command>`: the runner that chains the pipeline stages.
//!
//! Each subcommand lives in its own module and only parses flags and calls into the stage
//! crates; the work itself is in `crates/`.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod bench_distill;
mod bench_matmul;
mod bench_preprocess;
mod distill;
mod download;
mod eval;
mod generate;
mod gguf;
mod init_model;
mod init_student;
mod preprocess;
mod quickstart;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Distill a large causal LM into a smaller one with Burn"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a Hugging Face Qwen2 checkpoint.
    Generate(generate::Args),
    /// Benchmarks (inference, preprocessing, distillation).
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Download a model or dataset from a Hugging Face hub mirror.
    Download(download::Args),
    /// Tokenize WikiText into packed Parquet token shards.
    Preprocess(preprocess::Args),
    /// Distill a teacher into a student as a recipe (configs/*.toml) says.
    Distill(distill::Args),
    /// Evaluate models on token shards: loss, perplexity, KL to a teacher, speed, memory; writes a report.
    Eval(eval::Args),
    /// Convert a GGUF model file to the Hugging Face layout (config.json, safetensors, tokenizer).
    ImportGguf(gguf::ImportArgs),
    /// Write a Hugging Face model folder as a GGUF file for llama.cpp, Ollama and LM Studio.
    ExportGguf(gguf::ExportArgs),
    /// Write a randomly initialised Qwen2 checkpoint (Hugging Face layout).
    InitModel(init_model::Args),
    /// Cut a student from its teacher: keep layers, heads, FFN neurons and channels by importance.
    InitStudent(init_student::Args),
    /// The whole pipeline offline on bundled data: preprocess, distill vs hard labels, evaluate, report.
    Quickstart(quickstart::Args),
}

fn main() {
    qwen2::memory::reuse_freed_memory();
    let cli = Cli::parse();
    // A bad instruction-set cap stops here, with its message, before any kernel reads it.
    if let Err(err) = matmul::Isa::from_env() {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
    let result: Result<()> = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Bench(bench) => bench::run(bench),
        Command::Download(args) => download::run(args),
        Command::Preprocess(args) => preprocess::run(args),
        Command::Distill(args) => distill::run(args),
        Command::Eval(args) => eval::run(args),
        Command::ImportGguf(args) => gguf::run_import(args),
        Command::ExportGguf(args) => gguf::run_export(args),
        Command::InitModel(args) => init_model::run(args),
        Command::InitStudent(args) => init_student::run(args),
        Command::Quickstart(args) => quickstart::run(args),
    };
    if let Err(err) = result {
        eprintln!("error: {}", error_text(&err));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, each cause once: the library errors already name
/// their source in their own message (a file's I/O error, say), so a cause whose text is
/// already there is not repeated.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
