//! Writes the tiny teacher, student and shards that `configs/small.toml` trains on:
//!
//!     cargo run -p distill --example make_small_setup -- data/quickstart-test/small
//!
//! Text: the first 64 KiB of the bundled `data/wikitext-2-raw/wiki.valid.raw` as the train
//! split and the next 8 KiB as the validation split (cut at line ends), in blocks of 64 byte
//! tokens. Deterministic: the same command writes the same files.

use std::path::PathBuf;

use distill::toy::write_small_setup;
use qwen2::backend::Cpu;

const TRAIN_BYTES: usize = 64 << 10;
const VALID_BYTES: usize = 8 << 10;
const SEQ_LEN: usize = 64;

/// Whole lines of `text` from byte `start` until at least `len` bytes are taken.
fn lines(text: &str, start: usize, len: usize) -> (&str, usize) {
    let end = text[start..]
        .match_indices('\n')
        .map(|(i, _)| start + i + 1)
        .find(|&end| end - start >= len)
        .unwrap_or(text.len());
    (&text[start..end], end)
}

fn main() {
    let Some(out) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: make_small_setup OUT_DIR");
        std::process::exit(2);
    };
    let source =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/wikitext-2-raw/wiki.valid.raw");
    let text = std::fs::read_to_string(&source).unwrap_or_else(|e| {
        eprintln!("error: {}: {e}", source.display());
        std::process::exit(1);
    });
    let (train, end) = lines(&text, 0, TRAIN_BYTES);
    let (valid, _) = lines(&text, end, VALID_BYTES);
    match write_small_setup::<Cpu>(&out, train, valid, SEQ_LEN, &Default::default()) {
        Ok(setup) => println!(
            "teacher: {}\nstudent: {}\nshards: {}",
            setup.teacher.display(),
            setup.student.display(),
            setup.shards.display()
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
