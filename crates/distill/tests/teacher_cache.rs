//! The offline teacher cache: it holds what the live teacher computes, its top-k soft loss
//! approaches the full-vocabulary loss as k grows, it refuses a run it was not built for, and an
//! interrupted build is completed.
//!
//! Teacher: the 4-layer, 512-token fixture model of tests/fixtures/qwen2-parity (and, for the
//! loss-vs-k test, a copy with a sharpened lm_head so that its distributions are peaked like a
//! trained model's). Tokens: five blocks of 16 written as real token shards, the last one padded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::backend::Autodiff;
use burn::module::Param;
use burn::tensor::{Int, Tensor};
use distill::losses::{DivergenceParams, KdLoss};
use distill::objective::{
    loss_and_gradients, loss_only, Batch, IntermediateMatch, Objective, Student, TeacherOutputs,
    TeacherSignal,
};
use distill::teacher_cache::{
    build_cache, BuildOptions, CacheError, CacheSpec, TeacherCache, TeacherFingerprint,
};
use preprocess::manifest::{column_descriptions, Manifest, SplitInfo, TokenizerInfo, FORMAT};
use preprocess::pack::PackStats;
use preprocess::shards::{ShardLayout, ShardWriter};
use preprocess::{Block, ShardReader};
use qwen2::backend::Cpu;
use qwen2::safetensors::Dtype;
use qwen2::{load_model, save_model, AttentionMask, Model, SaveOptions};

type Train = Autodiff<Cpu>;

const SEQ_LEN: usize = 16;
const BLOCKS: usize = 5;
const LAST_REAL_LEN: usize = 9;
const VOCAB: usize = 512;
const PAD_ID: u32 = 0;

fn fixture_teacher_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2-parity/teacher")
}

fn fixture_student_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2-parity/student")
}

fn load(dir: &Path) -> Model<Cpu> {
    load_model::<Cpu>(dir, &Default::default()).unwrap().0
}

/// The fixture teacher with its lm_head scaled by `factor`, saved to `dir`: random weights give
/// nearly uniform distributions, in which top-k has nothing to find.
fn sharpened_teacher(dir: &Path, factor: f32) -> PathBuf {
    let (mut model, config) =
        load_model::<Cpu>(&fixture_teacher_dir(), &Default::default()).unwrap();
    let head = model
        .lm_head
        .take()
        .expect("the fixture teacher has its own lm_head");
    model.lm_head = Some(qwen2::weight::Weight::from_param(Param::from_tensor(
        head.val() * factor,
    )));
    save_model(
        &model,
        &config,
        dir,
        &SaveOptions {
            dtype: Dtype::F32,
            tokenizer_dir: None,
            generation: None,
        },
    )
    .unwrap();
    dir.to_path_buf()
}

/// `BLOCKS` blocks of pseudo-random ids (fixed seed), the last one padded.
fn blocks() -> Vec<Block> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..BLOCKS)
        .map(|b| {
            let real_len = if b + 1 == BLOCKS {
                LAST_REAL_LEN
            } else {
                SEQ_LEN
            };
            let ids = (0..SEQ_LEN)
                .map(|t| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    if t < real_len {
                        (state % VOCAB as u64) as u32
                    } else {
                        PAD_ID
                    }
                })
                .collect();
            Block { ids, real_len }
        })
        .collect()
}

/// Writes `blocks` as the `validation` split of a token shard directory, as preprocess does.
fn token_shards(dir: &Path, blocks: &[Block]) -> ShardReader {
    std::fs::create_dir_all(dir).unwrap();
    let layout = ShardLayout {
        seq_len: SEQ_LEN,
        rows_per_group: 2,
        blocks_per_shard: 3,
    };
    let mut writer = ShardWriter::new(dir, "validation", layout);
    for block in blocks {
        writer.write(block.clone()).unwrap();
    }
    let shards = writer.finish().unwrap();
    let tokens: u64 = blocks.iter().map(|b| b.real_len as u64).sum();
    let padding = (blocks.len() * SEQ_LEN) as u64 - tokens;
    let stats = PackStats {
        documents: 1,
        text_tokens: tokens - 1,
        tokens,
        blocks: blocks.len() as u64,
        padding_tokens: padding,
    };
    let padding_fraction = stats.padding_fraction();
    let manifest = Manifest {
        format: FORMAT.to_string(),
        tool_version: "test".into(),
        seq_len: SEQ_LEN,
        rows_per_group: layout.rows_per_group,
        blocks_per_shard: layout.blocks_per_shard,
        tokenizer: TokenizerInfo {
            dir: "none".into(),
            sha256: "0".repeat(64),
            config_sha256: None,
            vocab_size: VOCAB,
            config_vocab_size: Some(VOCAB),
            eos_id: 480,
            eos_token: "<eos>".into(),
            pad_id: PAD_ID,
            bos_added_by_tokenizer: None,
            bos_in_shards: false,
        },
        columns: column_descriptions(SEQ_LEN),
        sources: Vec::new(),
        splits: BTreeMap::from([(
            "validation".to_string(),
            SplitInfo {
                stats,
                padding_fraction,
                shards,
            },
        )]),
        padding_fraction,
    };
    std::fs::write(Manifest::path_in(dir), manifest.to_json()).unwrap();
    ShardReader::open(dir, "validation").unwrap()
}

/// The batch a trainer makes of `indices`: full-length rows, mask = real tokens.
fn batch_of(blocks: &[Block], indices: &[usize]) -> Batch {
    Batch::new(
        indices.iter().map(|&i| blocks[i].ids.clone()).collect(),
        AttentionMask {
            rows: indices
                .iter()
                .map(|&i| (0..SEQ_LEN).map(|t| t < blocks[i].real_len).collect())
                .collect(),
        },
    )
}

fn objective(temperature: f64, layers_t: &[usize]) -> Objective {
    Objective {
        temperature,
        hard_label_weight: 0.0,
        kd_loss: KdLoss::Kl,
        divergence: DivergenceParams {
            jsd_beta: 0.5,
            skew_alpha: 0.1,
        },
        intermediate_matches: layers_t
            .iter()
            .map(|&layer_t| IntermediateMatch {
                layer_t,
                layer_s: 1,
                feature: "hidden".into(),
                loss: distill::losses::HiddenLoss::Mse,
                weight: 1.0,
            })
            .collect(),
        chunk_positions: 24,
        vocab_rows: None,
        masked_token_ids: Vec::new(),
        cross_tokenizer: None,
    }
}

fn spec(teacher_dir: &Path, top_k: usize, temperature: f64, layers: &[usize]) -> CacheSpec {
    CacheSpec {
        teacher: TeacherFingerprint::of_dir(teacher_dir).unwrap(),
        top_k,
        temperature,
        hidden_layers: layers.to_vec(),
        vocab_rows: None,
        batch_size: 2,
    }
}

fn small_parts() -> BuildOptions {
    BuildOptions {
        progress: false,
        chunk_positions: 20,
        blocks_per_file: Some(2),
        stop: None,
    }
}

fn floats<const D: usize>(tensor: Tensor<Cpu, D>) -> Vec<f32> {
    tensor.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn ints<const D: usize>(tensor: Tensor<Cpu, D, Int>) -> Vec<i64> {
    tensor.into_data().convert::<i64>().to_vec::<i64>().unwrap()
}

fn max_abs_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn top_k_parts(outputs: &TeacherOutputs<Cpu>) -> (Vec<i64>, Vec<f32>, Vec<f32>) {
    match &outputs.signal {
        TeacherSignal::TopK {
            ids,
            logits,
            rest_lse,
        } => (
            ints(ids.clone()),
            floats(logits.clone()),
            floats(rest_lse.clone()),
        ),
        _ => panic!("a cache gives a top-k signal"),
    }
}

#[test]
fn cached_outputs_equal_the_live_teacher() {
    let temp = tempfile::tempdir().unwrap();
    let blocks = blocks();
    let mut shards = token_shards(&temp.path().join("shards"), &blocks);
    let teacher = Arc::new(load(&fixture_teacher_dir()));
    let (k, temperature) = (8, 2.0);
    // Match order with a repeat: the cache stores layers 0 and 2 once and returns three states.
    let layers = [2, 0, 2];
    let spec = spec(&fixture_teacher_dir(), k, temperature, &layers);
    let dir = temp.path().join("cache");
    let built = build_cache(&teacher, &mut shards, &spec, &dir, &small_parts()).unwrap();
    assert_eq!(built.blocks_computed, BLOCKS);
    assert_eq!(built.manifest.contents.hidden_layers, vec![0, 2]);
    assert_eq!(built.manifest.files.len(), 3);

    let cache = TeacherCache::open(&dir, &spec).unwrap();
    cache.verify_tokens(&shards).unwrap();
    let indices = [3, 0, 4];
    let cached = cache.outputs::<Cpu>(&indices, &Default::default()).unwrap();
    let (ids, logits, rest) = top_k_parts(&cached);

    let batch = batch_of(&blocks, &indices);
    let live = TeacherOutputs::from_model(&teacher, &batch, &objective(temperature, &layers));
    let TeacherSignal::Model { final_hidden, .. } = &live.signal else {
        panic!("a live teacher gives its final hidden state")
    };
    let positions = indices.len() * SEQ_LEN;
    let full_logits = teacher
        .lm_head(
            final_hidden
                .clone()
                .reshape([1, positions, teacher.hidden_size()]),
        )
        .reshape([positions, VOCAB]);
    let (sorted, order) = full_logits.clone().sort_descending_with_indices(1);
    let live_ids = ints(order.narrow(1, 0, k));
    let live_top = floats(sorted.narrow(1, 0, k));
    assert_eq!(ids, live_ids, "top-k ids");
    let logit_error = max_abs_difference(&logits, &live_top);
    println!("top-k logits: max |cached - live| = {logit_error:e}");
    assert!(logit_error <= 1e-6);

    // rest_lse = log-sum-exp of logit / T over the tokens outside the top k (f64 reference).
    let all = floats(full_logits);
    let expected_rest: Vec<f32> = all
        .chunks(VOCAB)
        .zip(live_ids.chunks(k))
        .map(|(row, top)| {
            let others: Vec<f64> = (0..VOCAB)
                .filter(|v| !top.contains(&(*v as i64)))
                .map(|v| row[v] as f64 / temperature)
                .collect();
            let max = others.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            (max + others.iter().map(|x| (x - max).exp()).sum::<f64>().ln()) as f32
        })
        .collect();
    let rest_error = max_abs_difference(&rest, &expected_rest);
    println!("rest_lse: max |cached - reference| = {rest_error:e}");
    assert!(rest_error <= 1e-5);

    assert_eq!(cached.states.len(), layers.len());
    for ((cached, live), layer) in cached.states.iter().zip(&live.states).zip(layers) {
        assert_eq!(cached.dims(), [positions, teacher.hidden_size()]);
        let error = max_abs_difference(&floats(cached.clone()), &floats(live.clone()));
        println!("hidden_states[{layer}]: max |cached - live| = {error:e}");
        assert!(error <= 1e-6, "hidden_states[{layer}]");
    }
}

/// The embedding gradient (the tied/untied lm_head path and the body both reach it) of one
/// training step on `batch`.
fn embedding_gradient(
    student: &Student<Train>,
    teacher: &TeacherOutputs<Cpu>,
    batch: &Batch,
    objective: &Objective,
) -> Vec<f32> {
    let (grads, _) = loss_and_gradients(student, teacher, batch, objective);
    floats(
        grads
            .get::<Cpu, 2>(student.model.embed_tokens.as_param().id)
            .expect("the embeddings have a gradient"),
    )
}

fn relative_l2(actual: &[f32], expected: &[f32]) -> f64 {
    let diff: f64 = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| ((a - e) as f64).powi(2))
        .sum();
    let norm: f64 = expected.iter().map(|e| (*e as f64).powi(2)).sum();
    (diff / norm).sqrt()
}

/// What the two KL-vs-cache tests share: token shards, a sharpened teacher (at x3 the top-k
/// error falls step by step over k = 1..256; at x30 the teacher is so peaked that k = 16 is
/// already at rounding level), and the fixture student for inference and for training.
struct KlSetup {
    blocks: Vec<Block>,
    shards: ShardReader,
    teacher_dir: PathBuf,
    teacher: Arc<Model<Cpu>>,
    student: Student<Cpu>,
    trained: Student<Train>,
}

fn kl_setup(dir: &Path) -> KlSetup {
    let blocks = blocks();
    let shards = token_shards(&dir.join("shards"), &blocks);
    let teacher_dir = sharpened_teacher(&dir.join("teacher"), 3.0);
    let teacher = Arc::new(load(&teacher_dir));
    let student = Student {
        model: load(&fixture_student_dir()),
        projections: Vec::new(),
    };
    let trained = Student::<Train> {
        model: load_model::<Train>(&fixture_student_dir(), &Default::default())
            .unwrap()
            .0,
        projections: Vec::new(),
    };
    KlSetup {
        blocks,
        shards,
        teacher_dir,
        teacher,
        student,
        trained,
    }
}

/// The soft loss through the trainer's objective code with the cached top-k signal, against the
/// same code with the live teacher's full logits; and the training gradient at k = V.
#[test]
fn top_k_soft_loss_approaches_the_full_loss_as_k_grows() {
    let temp = tempfile::tempdir().unwrap();
    let KlSetup {
        blocks,
        mut shards,
        teacher_dir,
        teacher,
        student,
        trained,
    } = kl_setup(temp.path());
    let temperature = 2.0;
    let objective = objective(temperature, &[]);
    let all: Vec<usize> = (0..BLOCKS).collect();
    let batch = batch_of(&blocks, &all);
    let live = TeacherOutputs::from_model(&teacher, &batch, &objective);
    let full = loss_only(&student, &live, &batch, &objective).soft;
    let full_gradient = embedding_gradient(&trained, &live, &batch, &objective);
    println!("full-vocabulary soft loss (T^2 x KL, T = {temperature}, V = {VOCAB}): {full:.6}");

    let mut errors = Vec::new();
    for k in [1, 4, 16, 64, 256, VOCAB] {
        let spec = spec(&teacher_dir, k, temperature, &[]);
        let dir = temp.path().join(format!("cache-{k}"));
        build_cache(&teacher, &mut shards, &spec, &dir, &BuildOptions::default()).unwrap();
        let cache = TeacherCache::open(&dir, &spec).unwrap();
        let outputs = cache.outputs::<Cpu>(&all, &Default::default()).unwrap();
        let cached = loss_only(&student, &outputs, &batch, &objective).soft;
        let error = full - cached;
        let gradient_error = relative_l2(
            &embedding_gradient(&trained, &outputs, &batch, &objective),
            &full_gradient,
        );
        println!(
            "k = {k:>3}: cached soft loss {cached:.6}, full - cached = {error:.3e} \
             (relative {:.3e}); embedding gradient relative L2 error {gradient_error:.3e}",
            error / full
        );
        errors.push((k, error, gradient_error));
    }
    // A lower bound (merging outcomes never increases a KL), tighter as k grows, exact at V.
    let slack = 1e-6 * full;
    for window in errors.windows(2) {
        let ((k_a, a, _), (k_b, b, _)) = (window[0], window[1]);
        assert!(
            b <= a + slack,
            "error at k = {k_b} ({b}) above k = {k_a} ({a})"
        );
    }
    assert!(errors.iter().all(|&(_, e, _)| e >= -slack));
    let (_, at_vocab, gradient_at_vocab) = *errors.last().unwrap();
    assert!(
        at_vocab.abs() <= slack,
        "k = V must give the full loss: {at_vocab}"
    );
    assert!(
        gradient_at_vocab <= 1e-4,
        "k = V must give the full gradient: {gradient_at_vocab}"
    );
    assert!(
        errors[0].1 > 0.1 * full,
        "k = 1 must be visibly approximate"
    );
}

/// With `vocab_rows` (vocabularies of different sizes, ids whose meaning differs) the live
/// loss compares only those rows; the cached loss must too. At k = the number of compared rows
/// the two give the same loss and gradient.
#[test]
fn with_vocab_rows_the_cached_loss_at_full_k_equals_the_live_loss() {
    let temp = tempfile::tempdir().unwrap();
    let KlSetup {
        blocks,
        mut shards,
        teacher_dir,
        teacher,
        student,
        trained,
    } = kl_setup(temp.path());
    // What the tokenizer check gives when the shared vocabulary is the first 480 rows and a
    // few ids mean different things to the two tokenizers.
    let masked: Vec<u32> = (100..110).chain([7]).collect();
    let rows: Vec<u32> = (0..480).filter(|id| !masked.contains(id)).collect();
    let temperature = 2.0;
    let mut objective = objective(temperature, &[]);
    objective.vocab_rows = Some(rows.clone());
    objective.masked_token_ids = masked;
    let all: Vec<usize> = (0..BLOCKS).collect();
    let batch = batch_of(&blocks, &all);
    let live = TeacherOutputs::from_model(&teacher, &batch, &objective);
    let full = loss_only(&student, &live, &batch, &objective).soft;

    let spec = CacheSpec {
        vocab_rows: Some(rows.clone()),
        ..spec(&teacher_dir, rows.len(), temperature, &[])
    };
    let dir = temp.path().join("cache");
    build_cache(&teacher, &mut shards, &spec, &dir, &small_parts()).unwrap();
    let cache = TeacherCache::open(&dir, &spec).unwrap();
    let outputs = cache.outputs::<Cpu>(&all, &Default::default()).unwrap();
    let cached = loss_only(&student, &outputs, &batch, &objective).soft;
    let gradient_error = relative_l2(
        &embedding_gradient(&trained, &outputs, &batch, &objective),
        &embedding_gradient(&trained, &live, &batch, &objective),
    );
    println!(
        "{} compared rows, k = all of them: live soft loss {full:.7}, cached {cached:.7}; \
         embedding gradient relative L2 {gradient_error:.3e}",
        rows.len()
    );
    assert!(
        (cached - full).abs() <= 1e-5 * full.abs(),
        "cached {cached} vs live {full}"
    );
    assert!(gradient_error <= 1e-4, "gradient {gradient_error}");
}

fn mismatch_field(result: Result<TeacherCache, CacheError>) -> (String, String) {
    match result {
        Err(error @ CacheError::Mismatch { .. }) => {
            let message = error.to_string();
            let CacheError::Mismatch { field, .. } = error else {
                unreachable!()
            };
            (field, message)
        }
        Err(other) => panic!("expected a mismatch, got {other}"),
        Ok(_) => panic!("expected a mismatch, the cache opened"),
    }
}

#[test]
fn opening_for_another_run_names_the_field_and_the_fix() {
    let temp = tempfile::tempdir().unwrap();
    let blocks = blocks();
    let mut shards = token_shards(&temp.path().join("shards"), &blocks);
    let teacher = load(&fixture_teacher_dir());
    let built = spec(&fixture_teacher_dir(), 4, 2.0, &[1, 3]);
    let dir = temp.path().join("cache");
    build_cache(
        &teacher,
        &mut shards,
        &built,
        &dir,
        &BuildOptions::default(),
    )
    .unwrap();

    // Fewer layers than cached is fine: the run reads what it needs.
    TeacherCache::open(
        &dir,
        &CacheSpec {
            hidden_layers: vec![3],
            ..built.clone()
        },
    )
    .unwrap();

    let cases = [
        (
            CacheSpec {
                top_k: 8,
                ..built.clone()
            },
            "teacher_cache.top_k",
        ),
        (
            CacheSpec {
                temperature: 1.0,
                ..built.clone()
            },
            "distillation.temperature",
        ),
        (
            CacheSpec {
                hidden_layers: vec![1, 2],
                ..built.clone()
            },
            "distillation.intermediate_matches.layer_T",
        ),
        (
            CacheSpec {
                vocab_rows: Some((0..500).collect()),
                ..built.clone()
            },
            "vocab_rows",
        ),
        (
            CacheSpec {
                teacher: TeacherFingerprint::of_dir(&fixture_student_dir()).unwrap(),
                ..built.clone()
            },
            "teacher.local_dir",
        ),
    ];
    for (expected, field) in cases {
        let (found, message) = mismatch_field(TeacherCache::open(&dir, &expected));
        println!("{message}");
        assert_eq!(found, field);
        assert!(message.contains(&format!("`{field}`")), "{message}");
        assert!(message.contains("--cache-teacher"), "{message}");
        assert!(message.contains(&dir.display().to_string()), "{message}");
    }

    // Other token shards (one block fewer) than the cache was built from.
    let other = token_shards(&temp.path().join("other-shards"), &blocks[..BLOCKS - 1]);
    let cache = TeacherCache::open(&dir, &built).unwrap();
    let message = cache.verify_tokens(&other).unwrap_err().to_string();
    println!("{message}");
    assert!(message.contains("`dataset.shards`") && message.contains("--cache-teacher"));

    // No manifest: not built (or interrupted).
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    let error = TeacherCache::open(&dir, &built).err().expect("no manifest");
    println!("{error}");
    assert!(matches!(error, CacheError::NotBuilt { .. }));
    assert!(error.to_string().contains("--cache-teacher"));

    // A spec the teacher cannot serve is refused before anything runs.
    let error = build_cache(
        &teacher,
        &mut shards,
        &CacheSpec {
            top_k: VOCAB + 1,
            ..built.clone()
        },
        &temp.path().join("never"),
        &BuildOptions::default(),
    )
    .unwrap_err();
    println!("{error}");
    assert!(error.to_string().contains("teacher_cache.top_k"));

    // Token shards of another tokenizer (an id beyond the teacher's embeddings).
    let mut foreign = blocks.clone();
    foreign[1].ids[3] = VOCAB as u32 + 88;
    let mut foreign = token_shards(&temp.path().join("foreign-shards"), &foreign);
    let error = build_cache(
        &teacher,
        &mut foreign,
        &built,
        &temp.path().join("foreign"),
        &BuildOptions::default(),
    )
    .unwrap_err();
    println!("{error}");
    assert!(matches!(
        error,
        CacheError::TokenOutOfVocabulary {
            block: 1,
            id: 600,
            vocab: VOCAB,
            ..
        }
    ));
}

fn every_block(cache: &TeacherCache) -> Vec<distill::teacher_cache::CachedBlock> {
    (0..cache.len()).map(|i| cache.block(i).unwrap()).collect()
}

fn part_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-"))
        .collect();
    names.sort();
    names
}

/// A stop request (Ctrl-C) ends a build before its next batch with an error that says what is
/// kept; the next build completes the cache.
#[test]
fn a_stopped_build_says_so_and_the_next_one_completes_it() {
    let temp = tempfile::tempdir().unwrap();
    let blocks = blocks();
    let mut shards = token_shards(&temp.path().join("shards"), &blocks);
    let teacher = load(&fixture_teacher_dir());
    let spec = spec(&fixture_teacher_dir(), 4, 2.0, &[]);
    let dir = temp.path().join("cache");
    let stopping = BuildOptions {
        stop: Some(Arc::new(std::sync::atomic::AtomicBool::new(true))),
        ..small_parts()
    };
    let error = build_cache(&teacher, &mut shards, &spec, &dir, &stopping).unwrap_err();
    println!("{error}");
    assert!(
        matches!(
            error,
            CacheError::Stopped {
                done: 0,
                parts: 3,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("run the same command again"));
    assert!(part_names(&dir).is_empty(), "no half-written part is left");
    assert!(!dir.join("manifest.json").exists());
    let built = build_cache(&teacher, &mut shards, &spec, &dir, &small_parts()).unwrap();
    assert_eq!(built.blocks_computed, BLOCKS);
    TeacherCache::open(&dir, &spec).unwrap();
}

#[test]
fn an_interrupted_build_is_completed_and_a_complete_one_reused() {
    let temp = tempfile::tempdir().unwrap();
    let blocks = blocks();
    let mut shards = token_shards(&temp.path().join("shards"), &blocks);
    let teacher = load(&fixture_teacher_dir());
    let spec = spec(&fixture_teacher_dir(), 4, 2.0, &[1]);
    let dir = temp.path().join("cache");
    let first = build_cache(&teacher, &mut shards, &spec, &dir, &small_parts()).unwrap();
    assert_eq!(first.blocks_computed, BLOCKS);
    let reference = every_block(&TeacherCache::open(&dir, &spec).unwrap());
    let parts = vec![
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ];
    assert_eq!(part_names(&dir), parts);

    // Complete: reused without running the teacher.
    let again = build_cache(&teacher, &mut shards, &spec, &dir, &small_parts()).unwrap();
    assert_eq!(again.blocks_computed, 0);
    assert_eq!(again.manifest, first.manifest);

    // Killed after the last part was renamed, before the manifest: nothing to recompute.
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    let resumed = build_cache(&teacher, &mut shards, &spec, &dir, &small_parts()).unwrap();
    assert_eq!(resumed.blocks_computed, 0);
    assert_eq!(resumed.manifest, first.manifest);

    // Killed while writing part 2 (its temporary is half written), with part 1 damaged too:
    // part 0 is kept, parts 1 and 2 are computed again.
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    std::fs::rename(
        dir.join("part-00002.parquet"),
        dir.join("part-00002.parquet.tmp"),
    )
    .unwrap();
    let tmp = std::fs::read(dir.join("part-00002.parquet.tmp")).unwrap();
    std::fs::write(dir.join("part-00002.parquet.tmp"), &tmp[..tmp.len() / 2]).unwrap();
    let damaged = std::fs::read(dir.join("part-00001.parquet")).unwrap();
    std::fs::write(
        dir.join("part-00001.parquet"),
        &damaged[..damaged.len() - 10],
    )
    .unwrap();
    assert!(TeacherCache::open(&dir, &spec).is_err());
    let completed = build_cache(&teacher, &mut shards, &spec, &dir, &small_parts()).unwrap();
    assert_eq!(completed.blocks_computed, BLOCKS - 2);
    assert_eq!(part_names(&dir), parts);
    let cache = TeacherCache::open(&dir, &spec).unwrap();
    assert_eq!(every_block(&cache), reference);

    // Parts of a build with other settings are not mixed in: everything is computed again.
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    let other = CacheSpec {
        top_k: 6,
        ..spec.clone()
    };
    let rebuilt = build_cache(&teacher, &mut shards, &other, &dir, &small_parts()).unwrap();
    assert_eq!(rebuilt.blocks_computed, BLOCKS);
    assert_eq!(part_names(&dir), parts);
    let cache = TeacherCache::open(&dir, &other).unwrap();
    assert_eq!(cache.block(0).unwrap().top_ids.len(), SEQ_LEN * 6);

    // A complete cache for other settings is replaced by a build with new ones.
    let back = build_cache(&teacher, &mut shards, &spec, &dir, &small_parts()).unwrap();
    assert_eq!(back.blocks_computed, BLOCKS);
    assert_eq!(
        every_block(&TeacherCache::open(&dir, &spec).unwrap()),
        reference
    );
}

/// Report-only figures: bytes per position for k = 64 with and without one hidden state.
#[test]
fn cache_size_per_position() {
    let temp = tempfile::tempdir().unwrap();
    let blocks = blocks();
    let mut shards = token_shards(&temp.path().join("shards"), &blocks);
    let teacher = load(&fixture_teacher_dir());
    for layers in [vec![], vec![2]] {
        let spec = spec(&fixture_teacher_dir(), 64, 2.0, &layers);
        let dir = temp.path().join(format!("cache-{}", layers.len()));
        let built =
            build_cache(&teacher, &mut shards, &spec, &dir, &BuildOptions::default()).unwrap();
        let per_position = built.manifest.bytes_per_position();
        println!(
            "k = 64, hidden layers {layers:?} (width {}): {per_position:.1} bytes per position",
            teacher.hidden_size()
        );
        // ids + logits (4 + 4 bytes each) + rest_lse + states dominate; parquet overhead is small.
        let raw = (8 * 64 + 4 + 4 * teacher.hidden_size() * layers.len()) as f64;
        assert!(per_position > 0.5 * raw && per_position < 1.5 * raw + 200.0);
    }
}
