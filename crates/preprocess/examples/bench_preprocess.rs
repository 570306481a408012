//! `cargo run --release -p preprocess --example bench_preprocess -- [--mb 100] [--input ...]`:
//! the same flags and report as `cargo xtask bench preprocess`, without building Burn.
//! The module is xtask's own, included by path so the two cannot drift apart.

use clap::Parser;

#[path = "../../../xtask/src/bench_preprocess.rs"]
mod bench_preprocess;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: bench_preprocess::Args,
}

fn main() -> anyhow::Result<()> {
    bench_preprocess::run(Cli::parse().args)
}
