//! Paths of the committed data and an independent reference implementation of "articles".
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn teacher_dir() -> PathBuf {
    repo_root().join("data/hub-files/deepseek-r1-distill-qwen-1.5b")
}

pub fn student_dir() -> PathBuf {
    repo_root().join("data/hub-files/qwen2.5-1.5b")
}

pub fn wikitext_dir() -> PathBuf {
    repo_root().join("data/wikitext-2-raw")
}

pub fn valid_raw() -> PathBuf {
    wikitext_dir().join("wiki.valid.raw")
}

pub fn test_raw() -> PathBuf {
    wikitext_dir().join("wiki.test.raw")
}

/// The first `lines` lines of wiki.valid.raw, written as `dir/wiki.valid.raw`.
pub fn valid_slice(dir: &Path, lines: usize) -> PathBuf {
    let text = std::fs::read_to_string(valid_raw()).unwrap();
    let slice: String = text.split_inclusive('\n').take(lines).collect();
    let path = dir.join("wiki.valid.raw");
    std::fs::write(&path, slice).unwrap();
    path
}

/// Articles of a WikiText text, written independently of the crate: a new article starts at a
/// line " = Title = " (exactly one '=' on each side); leading lines join the first article.
pub fn reference_articles(text: &str) -> Vec<String> {
    let mut articles: Vec<String> = Vec::new();
    let mut seen_title = false;
    for line in text.split_inclusive('\n') {
        let is_title =
            line.starts_with(" = ") && !line.starts_with(" = = ") && line.ends_with(" = \n");
        if is_title && seen_title {
            articles.push(String::new());
        }
        seen_title |= is_title;
        if articles.is_empty() {
            articles.push(String::new());
        }
        articles.last_mut().unwrap().push_str(line);
    }
    articles
}

/// Every file of a directory (name -> bytes), sorted.
pub fn dir_contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}
