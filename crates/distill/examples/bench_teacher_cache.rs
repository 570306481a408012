//! Measures the teacher cache on real token shards: build speed (tokens/s), bytes per cached
//! position, and peak RSS, for a teacher of a preset shape with random weights (the speed of a
//! forward pass does not depend on the weight values; the size of the top-k data does not
//! depend on them either, up to compression).
//!
//! ```text
//! cargo run -p distill --example bench_teacher_cache -- \
//!     data/shards/wikitext2-deepseek-r1-distill-qwen-1.5b-512 validation qwen2.5-0.5b 2 64
//! ```
//! Arguments: token shard dir, split, preset (qwen2.5-0.5b | qwen2.5-1.5b: presets with the real
//! vocabulary), blocks to cache (the first N of the split), top_k, and optionally teacher layers
//! to store (comma list).

use std::path::Path;
use std::time::Instant;

use distill::teacher_cache::{build_cache, BuildOptions, CacheSpec, TeacherFingerprint};
use preprocess::manifest::Manifest;
use preprocess::shards::{ShardLayout, ShardWriter};
use preprocess::ShardReader;
use qwen2::backend::Cpu;
use qwen2::memory::{gib, peak_rss_bytes};
use qwen2::{build_model, ModelConfig, RandomWeights};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench_teacher_cache SHARDS SPLIT PRESET BLOCKS TOP_K [LAYERS]";
    let [shards_dir, split, preset, blocks, top_k] =
        [0, 1, 2, 3, 4].map(|i| args.get(i).cloned().unwrap_or_else(|| panic!("{usage}")));
    let blocks: usize = blocks.parse().expect("BLOCKS is a number");
    let top_k: usize = top_k.parse().expect("TOP_K is a number");
    let layers: Vec<usize> = args
        .get(5)
        .map(|list| list.split(',').map(|l| l.parse().expect("layer")).collect())
        .unwrap_or_default();

    let work = std::env::temp_dir().join(format!("bench-teacher-cache-{}", std::process::id()));
    let tokens_dir = work.join("tokens");
    let mut shards = first_blocks(Path::new(&shards_dir), &split, blocks, &tokens_dir);

    let config = ModelConfig::preset(&preset).unwrap_or_else(|| panic!("unknown preset {preset}"));
    let device = Default::default();
    let teacher =
        build_model::<Cpu>(&config, &mut RandomWeights::new(0), &device).expect("random teacher");
    // A stand-in fingerprint: the random teacher has no directory of its own.
    let teacher_dir = work.join("teacher");
    std::fs::create_dir_all(&teacher_dir).unwrap();
    std::fs::write(
        teacher_dir.join("config.json"),
        config.to_hf_json().to_string(),
    )
    .unwrap();
    let spec = CacheSpec {
        teacher: TeacherFingerprint::of_dir(&teacher_dir).unwrap(),
        top_k,
        temperature: 2.0,
        hidden_layers: layers,
        vocab_rows: None,
        batch_size: 1,
    };
    let started = Instant::now();
    let built = build_cache(
        &teacher,
        &mut shards,
        &spec,
        &work.join("cache"),
        &BuildOptions {
            progress: true,
            ..BuildOptions::default()
        },
    )
    .expect("cache built");
    let seconds = started.elapsed().as_secs_f64();
    let positions = built.manifest.positions();
    println!(
        "{preset}: {blocks} blocks x {} = {positions} positions, top_k {top_k}, layers {:?}",
        shards.seq_len(),
        spec.hidden_layers
    );
    println!(
        "build: {seconds:.1} s, {:.1} positions/s; cache {} bytes = {:.1} bytes/position; peak RSS {}",
        positions as f64 / seconds,
        built.manifest.bytes,
        built.manifest.bytes_per_position(),
        peak_rss_bytes().map_or("unknown".into(), gib)
    );
    std::fs::remove_dir_all(&work).ok();
}

/// The first `blocks` blocks of `split` as a token shard directory of their own.
fn first_blocks(dir: &Path, split: &str, blocks: usize, out: &Path) -> ShardReader {
    let mut source = ShardReader::open(dir, split).expect("token shards");
    let blocks = blocks.min(source.len());
    let layout = ShardLayout {
        seq_len: source.seq_len(),
        rows_per_group: 8,
        blocks_per_shard: blocks.max(1),
    };
    std::fs::create_dir_all(out).unwrap();
    let mut writer = ShardWriter::new(out, split, layout);
    for index in 0..blocks {
        writer.write(source.block(index).unwrap()).unwrap();
    }
    let files = writer.finish().unwrap();
    let mut manifest: Manifest = source.manifest().clone();
    manifest.rows_per_group = layout.rows_per_group;
    manifest.blocks_per_shard = layout.blocks_per_shard;
    manifest.splits.retain(|name, _| name == split);
    let info = manifest.splits.get_mut(split).expect("split");
    info.shards = files;
    info.stats.blocks = blocks as u64;
    std::fs::write(Manifest::path_in(out), manifest.to_json()).unwrap();
    ShardReader::open(out, split).expect("sub-shards")
}
