//! Serves the project's repos from a hub look-alike on 127.0.0.1, to try
//! `cargo xtask download` without the network:
//!
//! ```text
//! cargo run -p hub --example test_hub -- [--addr 127.0.0.1:8765] [--token T] [--cut-after BYTES]
//! HF_ENDPOINT=http://127.0.0.1:8765 cargo xtask download \
//!     --repo deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --local-dir /tmp/teacher
//! ```
//!
//! The teacher and student carry the real config and tokenizer files shipped in
//! `data/hub-files/` and a synthetic `model.safetensors` (LFS, 32 MiB); the dataset
//! `Salesforce/wikitext` has synthetic `wikitext-2-raw-v1/*.parquet` shards. These are stand-ins
//! for the transfer, not usable weights.

#[path = "../tests/support/server.rs"]
mod server;

use std::path::Path;

use server::{Fault, TestHub};

const COMMIT: &str = "ad9f0ae0864d7fbcd1cd905e3c6c5b069cc8b562";

fn main() {
    let mut addr = "127.0.0.1:8765".to_string();
    let mut token = None;
    let mut cut_after = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--addr" => addr = value(),
            "--token" => token = Some(value()),
            "--cut-after" => cut_after = Some(value().parse::<usize>().expect("a byte count")),
            other => panic!("unknown argument {other}"),
        }
    }

    let hub = TestHub::start_on(&addr);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/hub-files");
    for (repo, folder, seed) in [
        (
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
            "deepseek-r1-distill-qwen-1.5b",
            1,
        ),
        ("Qwen/Qwen2.5-1.5B", "qwen2.5-1.5b", 2),
    ] {
        let mut files: Vec<(String, Vec<u8>, bool)> = Vec::new();
        for name in [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            let content = std::fs::read(data.join(folder).join(name)).expect("data/hub-files");
            // The hub stores large files (the tokenizer) in LFS, small ones in git.
            let lfs = content.len() > 1 << 20;
            files.push((name.to_string(), content, lfs));
        }
        files.push(("model.safetensors".into(), synthetic(32 << 20, seed), true));
        hub.add_repo(
            "models",
            repo,
            &[("main", COMMIT)],
            files
                .iter()
                .map(|(n, c, l)| (n.as_str(), c.clone(), *l))
                .collect(),
        );
    }
    hub.add_repo(
        "datasets",
        "Salesforce/wikitext",
        &[("main", COMMIT)],
        vec![
            ("README.md", b"# WikiText (stand-in)\n".to_vec(), false),
            (
                "wikitext-2-raw-v1/test-00000-of-00001.parquet",
                synthetic(700_000, 3),
                true,
            ),
            (
                "wikitext-2-raw-v1/train-00000-of-00001.parquet",
                synthetic(6 << 20, 4),
                true,
            ),
            (
                "wikitext-2-raw-v1/validation-00000-of-00001.parquet",
                synthetic(600_000, 5),
                true,
            ),
            (
                "wikitext-103-raw-v1/train-00000-of-00002.parquet",
                synthetic(1 << 20, 6),
                true,
            ),
        ],
    );
    if let Some(token) = token {
        hub.require_token(&token);
    }
    if let Some(bytes) = cut_after {
        hub.push_fault("model.safetensors", Fault::CutAfter(bytes));
    }
    println!("test hub listening on {}", hub.endpoint());
    loop {
        std::thread::park();
    }
}

fn synthetic(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
