//! End-to-end checks of `preprocess` on the committed WikiText-2 valid/test files with the real
//! teacher and student tokenizers.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Int32Type};
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use preprocess::{preprocess, Manifest, PreprocessOptions, PreprocessOutcome, ShardReader};
use tokenizers::Tokenizer;

const SEQ_LEN: usize = 512;
const EOS: u32 = 151643;
const TEACHER_BOS: u32 = 151646;

/// The full valid + test splits preprocessed once with the teacher tokenizer, shared by tests.
fn full_build() -> &'static (PathBuf, Manifest) {
    static BUILD: OnceLock<(PathBuf, Manifest)> = OnceLock::new();
    BUILD.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("preprocess-full-teacher");
        let mut options =
            PreprocessOptions::new(teacher_dir(), vec![wikitext_dir()], &out, SEQ_LEN);
        options.force = true;
        let manifest = preprocess(&options).unwrap().manifest().clone();
        (out, manifest)
    })
}

fn options(tokenizer: PathBuf, inputs: Vec<PathBuf>, out: &Path) -> PreprocessOptions {
    PreprocessOptions::new(tokenizer, inputs, out, SEQ_LEN)
}

/// All real ids of a split, blocks concatenated in order.
fn split_stream(dir: &Path, split: &str) -> Vec<u32> {
    let mut reader = ShardReader::open(dir, split).unwrap();
    let mut stream = Vec::new();
    for block in reader.iter() {
        stream.extend_from_slice(block.unwrap().real_ids());
    }
    stream
}

#[test]
fn token_counts_equal_an_independent_article_by_article_encoding() {
    let (_, manifest) = full_build();
    let tokenizer = Tokenizer::from_file(teacher_dir().join("tokenizer.json")).unwrap();
    for (split, file) in [("validation", valid_raw()), ("test", test_raw())] {
        let text = std::fs::read_to_string(file).unwrap();
        let articles = reference_articles(&text);
        let text_tokens: u64 = articles
            .iter()
            .map(|a| tokenizer.encode(a.as_str(), false).unwrap().get_ids().len() as u64)
            .sum();
        let stats = manifest.splits[split].stats;
        assert_eq!(stats.documents, articles.len() as u64, "{split} documents");
        assert_eq!(stats.text_tokens, text_tokens, "{split} text tokens");
        assert_eq!(
            stats.tokens,
            text_tokens + articles.len() as u64,
            "{split}: one eos per document"
        );
        assert_eq!(
            stats.blocks,
            stats.tokens.div_ceil(SEQ_LEN as u64),
            "{split} blocks"
        );
        assert_eq!(
            stats.padding_tokens,
            stats.blocks * SEQ_LEN as u64 - stats.tokens,
            "{split} padding"
        );
    }
    // Title lines in the files (`grep -cP '^ = [^=].* = $'`): 60 in valid, 62 in test.
    assert_eq!(manifest.splits["validation"].stats.documents, 60);
    assert_eq!(manifest.splits["test"].stats.documents, 62);
}

#[test]
fn blocks_decode_back_to_the_source_articles_with_eos_after_each() {
    let (dir, _) = full_build();
    let tokenizer = Tokenizer::from_file(teacher_dir().join("tokenizer.json")).unwrap();
    for (split, file) in [("validation", valid_raw()), ("test", test_raw())] {
        let text = std::fs::read_to_string(file).unwrap();
        let articles = reference_articles(&text);
        let stream = split_stream(dir, split);
        assert!(
            !stream.contains(&TEACHER_BOS),
            "{split}: the shards must not contain the teacher's BOS"
        );
        assert_eq!(
            stream.last(),
            Some(&EOS),
            "{split}: the last document ends with eos"
        );
        let documents: Vec<&[u32]> = stream[..stream.len() - 1].split(|&id| id == EOS).collect();
        assert_eq!(
            documents.len(),
            articles.len(),
            "{split}: eos separates exactly the articles"
        );
        for (i, (ids, article)) in documents.iter().zip(&articles).enumerate() {
            let decoded = tokenizer.decode(ids, false).unwrap();
            assert_eq!(
                &decoded, article,
                "{split} article {i} does not decode back"
            );
        }
    }
}

#[test]
fn shards_have_the_documented_schema_and_bounded_row_groups() {
    let (dir, manifest) = full_build();
    let split = &manifest.splits["validation"];
    assert_eq!(split.shards.len(), 1);
    let file = std::fs::File::open(dir.join(&split.shards[0].file)).unwrap();
    assert_eq!(split.shards[0].file, "validation-00000.parquet");
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let schema = builder.schema().clone();
    assert_eq!(schema.fields().len(), 2);
    let ids_field = schema.field_with_name("input_ids").unwrap();
    match ids_field.data_type() {
        DataType::FixedSizeList(item, len) => {
            assert_eq!(*len as usize, SEQ_LEN);
            assert_eq!(item.data_type(), &DataType::Int32);
        }
        other => panic!("input_ids is {other:?}"),
    }
    assert_eq!(
        schema.field_with_name("n_tokens").unwrap().data_type(),
        &DataType::Int32
    );
    let row_groups = builder.metadata().row_groups();
    assert!(row_groups
        .iter()
        .all(|g| g.num_rows() as usize <= manifest.rows_per_group));
    assert_eq!(manifest.rows_per_group, 256);

    let mut lengths = Vec::new();
    for batch in builder.build().unwrap() {
        let batch = batch.unwrap();
        lengths.extend_from_slice(batch.column(1).as_primitive::<Int32Type>().values());
    }
    assert_eq!(lengths.len() as u64, split.stats.blocks);
    let (last, full) = lengths.split_last().unwrap();
    assert!(
        full.iter().all(|&n| n as usize == SEQ_LEN),
        "only the last block may be short"
    );
    assert_eq!(SEQ_LEN as u64 - *last as u64, split.stats.padding_tokens);
    assert!(
        manifest.padding_fraction < 0.002,
        "packing leaves almost no padding"
    );
}

#[test]
fn manifest_records_tokenizer_sources_and_counts() {
    let (dir, manifest) = full_build();
    assert_eq!(&Manifest::load(dir).unwrap(), manifest);
    assert_eq!(manifest.tool_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(manifest.seq_len, SEQ_LEN);
    let tok = &manifest.tokenizer;
    assert_eq!((tok.eos_id, tok.pad_id, tok.vocab_size), (EOS, EOS, 151665));
    assert_eq!(tok.config_vocab_size, Some(151936));
    assert_eq!(tok.bos_added_by_tokenizer, Some(TEACHER_BOS));
    assert!(!tok.bos_in_shards);
    let tokenizer_bytes = std::fs::read(teacher_dir().join("tokenizer.json")).unwrap();
    assert_eq!(tok.sha256, fsio::sha256_hex(&tokenizer_bytes));
    let splits: Vec<_> = manifest.sources.iter().map(|s| s.split.as_str()).collect();
    assert_eq!(splits, ["test", "validation"]);
    for source in &manifest.sources {
        let bytes = std::fs::read(&source.path).unwrap();
        assert_eq!(source.sha256, fsio::sha256_hex(&bytes));
        assert_eq!(source.bytes, bytes.len() as u64);
    }
}

#[test]
fn same_input_gives_byte_identical_shards_and_teacher_student_shards_agree() {
    let temp = tempfile::tempdir().unwrap();
    let input = valid_slice(temp.path(), 600);
    let run = |tokenizer: PathBuf, name: &str| {
        let out = temp.path().join(name);
        preprocess(&options(tokenizer, vec![input.clone()], &out)).unwrap();
        dir_contents(&out)
    };
    let first = run(teacher_dir(), "a");
    let second = run(teacher_dir(), "b");
    assert_eq!(
        first, second,
        "two runs must write identical bytes (manifest included)"
    );
    // Same BPE, same eos/pad ids: the student tokenizer writes the very same shard files.
    let student = run(student_dir(), "c");
    let shards = |files: &[(String, Vec<u8>)]| {
        files
            .iter()
            .filter(|(n, _)| n.ends_with(".parquet"))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(shards(&first), shards(&student));
}

#[test]
fn second_run_is_skipped_until_inputs_tokenizer_or_seq_len_change() {
    let temp = tempfile::tempdir().unwrap();
    let input = valid_slice(temp.path(), 300);
    let out = temp.path().join("shards");
    let mut opts = options(teacher_dir(), vec![input.clone()], &out);
    assert!(matches!(
        preprocess(&opts).unwrap(),
        PreprocessOutcome::Built(_)
    ));
    let shard = out.join("validation-00000.parquet");
    let written_at = std::fs::metadata(&shard).unwrap().modified().unwrap();
    assert!(matches!(
        preprocess(&opts).unwrap(),
        PreprocessOutcome::UpToDate(_)
    ));
    assert_eq!(
        std::fs::metadata(&shard).unwrap().modified().unwrap(),
        written_at,
        "a skipped run writes nothing"
    );

    opts.force = true;
    assert!(matches!(
        preprocess(&opts).unwrap(),
        PreprocessOutcome::Built(_)
    ));
    opts.force = false;
    opts.seq_len = 256;
    assert!(
        matches!(preprocess(&opts).unwrap(), PreprocessOutcome::Built(_)),
        "seq_len changed"
    );
    assert!(matches!(
        preprocess(&opts).unwrap(),
        PreprocessOutcome::UpToDate(_)
    ));
    opts.tokenizer_dir = student_dir();
    assert!(
        matches!(preprocess(&opts).unwrap(), PreprocessOutcome::Built(_)),
        "tokenizer changed"
    );
    valid_slice(temp.path(), 301);
    assert!(
        matches!(preprocess(&opts).unwrap(), PreprocessOutcome::Built(_)),
        "input changed"
    );
    // A deleted shard is noticed too.
    std::fs::remove_file(&shard).unwrap();
    assert!(
        matches!(preprocess(&opts).unwrap(), PreprocessOutcome::Built(_)),
        "shard missing"
    );
    assert!(shard.is_file());
}

#[test]
fn hub_parquet_input_gives_the_same_shards_as_the_raw_file() {
    use arrow::array::{RecordBatch, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    let temp = tempfile::tempdir().unwrap();
    let raw = valid_slice(temp.path(), 800);
    let text = std::fs::read_to_string(&raw).unwrap();
    // The hub layout: a `text` string column, one row per line, blank lines (" \n" in the raw
    // file) stored as "", written in several batches.
    let parquet_dir = temp.path().join("wikitext-2-raw-v1");
    std::fs::create_dir(&parquet_dir).unwrap();
    let parquet = parquet_dir.join("validation-00000-of-00001.parquet");
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, true)]));
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&parquet).unwrap(),
        schema.clone(),
        None,
    )
    .unwrap();
    let lines: Vec<&str> = text
        .split_inclusive('\n')
        .map(|line| if line == " \n" { "" } else { line })
        .collect();
    assert!(lines.contains(&""));
    for chunk in lines.chunks(333) {
        let column = Arc::new(StringArray::from(chunk.to_vec()));
        writer
            .write(&RecordBatch::try_new(schema.clone(), vec![column]).unwrap())
            .unwrap();
    }
    writer.close().unwrap();

    let from_raw = temp.path().join("from-raw");
    let from_parquet = temp.path().join("from-parquet");
    preprocess(&options(teacher_dir(), vec![raw], &from_raw)).unwrap();
    let manifest = preprocess(&options(teacher_dir(), vec![parquet_dir], &from_parquet))
        .unwrap()
        .manifest()
        .clone();
    assert_eq!(manifest.sources[0].split, "validation");
    let shards = |dir: &Path| {
        dir_contents(dir)
            .into_iter()
            .filter(|(n, _)| n.ends_with(".parquet"))
            .collect::<Vec<_>>()
    };
    assert_eq!(shards(&from_raw), shards(&from_parquet));
}

#[test]
fn long_articles_tokenized_in_pieces_give_the_same_shards() {
    // Pieces of ~200 bytes cut only at tokenization-safe line starts must not change a token.
    let temp = tempfile::tempdir().unwrap();
    let input = valid_slice(temp.path(), 1500);
    let whole = temp.path().join("whole");
    let pieces = temp.path().join("pieces");
    preprocess(&options(teacher_dir(), vec![input.clone()], &whole)).unwrap();
    let mut opts = options(teacher_dir(), vec![input], &pieces);
    opts.max_piece_bytes = 200;
    opts.batch_bytes = 10_000;
    preprocess(&opts).unwrap();
    assert_eq!(
        split_stream(&whole, "validation"),
        split_stream(&pieces, "validation")
    );
}

#[test]
fn reader_gives_random_access_shuffles_and_resumes_across_shards_and_row_groups() {
    let temp = tempfile::tempdir().unwrap();
    let input = valid_slice(temp.path(), 600);
    let out = temp.path().join("small-groups");
    let mut opts = options(teacher_dir(), vec![input], &out);
    opts.seq_len = 64;
    opts.rows_per_group = Some(7);
    opts.blocks_per_shard = Some(50);
    let manifest = preprocess(&opts).unwrap().manifest().clone();
    let split = &manifest.splits["validation"];
    assert!(
        split.shards.len() >= 3,
        "several shard files: {}",
        split.shards.len()
    );
    assert!(split.shards[..split.shards.len() - 1]
        .iter()
        .all(|s| s.blocks == 50));

    let mut reader = ShardReader::open(&out, "validation").unwrap();
    assert_eq!(reader.len() as u64, split.stats.blocks);
    assert_eq!(reader.seq_len(), 64);
    assert_eq!((reader.eos_id(), reader.pad_id()), (EOS, EOS));
    let sequential: Vec<_> = reader.iter().map(Result::unwrap).collect();
    assert_eq!(sequential.len(), reader.len());
    assert!(sequential.iter().all(|b| b.ids.len() == 64));
    assert_eq!(
        sequential
            .last()
            .unwrap()
            .attention_mask()
            .iter()
            .sum::<u32>() as usize,
        sequential.last().unwrap().real_len
    );

    // Random access in a shuffled order returns the same blocks as reading in order.
    let order = preprocess::shuffled_order(reader.len(), 1234, 2);
    let shuffled: Vec<_> = reader.shuffled(1234, 2, 0).map(Result::unwrap).collect();
    for (block, &index) in shuffled.iter().zip(&order) {
        assert_eq!(block, &sequential[index]);
    }
    // Resuming at data position 40 continues exactly where an uninterrupted run would be.
    let resumed: Vec<_> = reader.shuffled(1234, 2, 40).map(Result::unwrap).collect();
    assert_eq!(resumed, shuffled[40..]);
    let tail: Vec<_> = reader
        .iter_from(reader.len() - 3)
        .map(Result::unwrap)
        .collect();
    assert_eq!(tail, sequential[sequential.len() - 3..]);

    let len = reader.len();
    assert!(matches!(
        reader.block(len),
        Err(preprocess::PreprocessError::BlockOutOfRange { .. })
    ));
    assert!(matches!(
        ShardReader::open(&out, "train"),
        Err(preprocess::PreprocessError::SplitNotFound { .. })
    ));
}

#[test]
fn a_crashed_or_failed_run_never_leaves_a_half_output_that_counts_as_complete() {
    let temp = tempfile::tempdir().unwrap();
    let input_dir = temp.path().join("in");
    std::fs::create_dir(&input_dir).unwrap();
    let input = valid_slice(&input_dir, 300);
    let out = temp.path().join("shards");
    preprocess(&options(teacher_dir(), vec![input.clone()], &out)).unwrap();
    let good = dir_contents(&out);

    // A run that fails halfway (second input is bad) leaves the previous output as it was and
    // no staging directory behind.
    let bad = input_dir.join("wiki.test.raw");
    std::fs::write(&bad, b" = T = \n ok \n \xff\xfe broken \n").unwrap();
    let mut opts = options(teacher_dir(), vec![input_dir.clone()], &out);
    opts.force = true;
    assert!(preprocess(&opts).is_err());
    assert_eq!(dir_contents(&out), good);
    let leftovers: Vec<_> = std::fs::read_dir(temp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");

    // What a killed run leaves (a staging dir of a dead process, shards without manifest) is
    // never read as complete, and the next run cleans it up.
    let killed = temp.path().join(".shards.tmp-999999999");
    std::fs::create_dir(&killed).unwrap();
    std::fs::write(killed.join("validation-00000.parquet"), b"PAR1 half").unwrap();
    assert!(matches!(
        ShardReader::open(&killed, "validation"),
        Err(preprocess::PreprocessError::ManifestInvalid { .. })
    ));
    std::fs::remove_file(&bad).unwrap();
    let outcome = preprocess(&options(teacher_dir(), vec![input.clone()], &out)).unwrap();
    assert!(matches!(outcome, PreprocessOutcome::UpToDate(_)));
    assert!(!killed.exists(), "abandoned staging dir was not removed");
    assert_eq!(dir_contents(&out), good);
}
