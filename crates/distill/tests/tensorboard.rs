//! The TensorBoard writer and the metrics log, checked against readers that share no code with
//! them: a TFRecord + protobuf reader written here from the format spec, and TensorBoard's own
//! `EventAccumulator`. The two tests that need the Python `tensorboard` package are
//! `#[ignore]`d, so `cargo test` lists them as ignored rather than passing them unchecked; CI
//! (.ci/run) installs the package and runs them with `-- --ignored`, where a missing package
//! fails them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use distill::metrics::{MetricsError, MetricsLog, Split, METRICS_FILE, TENSORBOARD_DIR};
use distill::tensorboard::{SummaryWriter, TensorBoardError, FILE_PREFIX};

// ---------------------------------------------------------------------------------------------
// A reader written from the spec.
// ---------------------------------------------------------------------------------------------

/// CRC-32C, bit by bit (deliberately not table-driven like the writer's).
fn crc32c_bitwise(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82f6_3b78 & mask);
        }
    }
    !crc
}

/// The mask exactly as the spec words it (the writer uses `rotate_right`).
#[allow(clippy::manual_rotate)]
fn masked(data: &[u8]) -> u32 {
    let crc = crc32c_bitwise(data);
    ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8)
}

/// Splits a TFRecord file into its records, checking both CRCs of each.
fn read_records(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let header = bytes
            .get(pos..pos + 12)
            .ok_or_else(|| format!("truncated header at {pos}"))?;
        let len_bytes = &header[..8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let len_crc = u32::from_le_bytes(header[8..12].try_into().unwrap());
        if len_crc != masked(len_bytes) {
            return Err(format!("bad length crc at {pos}"));
        }
        let data = bytes
            .get(pos + 12..pos + 12 + len)
            .ok_or_else(|| format!("truncated data at {pos}"))?;
        let data_crc = bytes
            .get(pos + 12 + len..pos + 16 + len)
            .ok_or_else(|| format!("truncated data crc at {pos}"))?;
        if u32::from_le_bytes(data_crc.try_into().unwrap()) != masked(data) {
            return Err(format!("bad data crc at {pos}"));
        }
        records.push(data.to_vec());
        pos += 16 + len;
    }
    Ok(records)
}

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(Vec<u8>),
    Fixed32([u8; 4]),
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> u64 {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let b = bytes[*pos];
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return value;
        }
        shift += 7;
        assert!(shift < 64, "varint too long");
    }
}

/// Decodes one protobuf message into (field number, value) pairs, in order.
fn decode_message(bytes: &[u8]) -> Vec<(u32, Field)> {
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let key = read_varint(bytes, &mut pos);
        let number = (key >> 3) as u32;
        let field = match key & 7 {
            0 => Field::Varint(read_varint(bytes, &mut pos)),
            1 => {
                let v = bytes[pos..pos + 8].try_into().unwrap();
                pos += 8;
                Field::Fixed64(v)
            }
            2 => {
                let len = read_varint(bytes, &mut pos) as usize;
                let v = bytes[pos..pos + len].to_vec();
                pos += len;
                Field::Bytes(v)
            }
            5 => {
                let v = bytes[pos..pos + 4].try_into().unwrap();
                pos += 4;
                Field::Fixed32(v)
            }
            wire => panic!("unexpected wire type {wire}"),
        };
        fields.push((number, field));
    }
    fields
}

/// The parts of `tensorflow.Event` this writer uses.
#[derive(Debug, Default, PartialEq)]
struct Event {
    wall_time: f64,
    step: i64,
    file_version: Option<String>,
    /// (tag, simple_value) of each `Summary.Value`.
    scalars: Vec<(String, f32)>,
    session_log_status: Option<u64>,
}

fn decode_event(bytes: &[u8]) -> Event {
    let mut event = Event::default();
    for (number, field) in decode_message(bytes) {
        match (number, field) {
            (1, Field::Fixed64(b)) => event.wall_time = f64::from_le_bytes(b),
            (2, Field::Varint(v)) => event.step = v as i64,
            (3, Field::Bytes(b)) => event.file_version = Some(String::from_utf8(b).unwrap()),
            (5, Field::Bytes(summary)) => {
                for (n, value) in decode_message(&summary) {
                    let Field::Bytes(value) = value else {
                        panic!("Summary field {n} is not a message")
                    };
                    assert_eq!(n, 1, "Summary has only `repeated Value value = 1`");
                    let mut tag = None;
                    let mut simple = None;
                    for (vn, vf) in decode_message(&value) {
                        match (vn, vf) {
                            (1, Field::Bytes(t)) => tag = Some(String::from_utf8(t).unwrap()),
                            (2, Field::Fixed32(f)) => simple = Some(f32::from_le_bytes(f)),
                            other => panic!("unexpected Value field {other:?}"),
                        }
                    }
                    event
                        .scalars
                        .push((tag.expect("Value.tag"), simple.expect("Value.simple_value")));
                }
            }
            (7, Field::Bytes(log)) => {
                for (n, f) in decode_message(&log) {
                    match (n, f) {
                        (1, Field::Varint(status)) => event.session_log_status = Some(status),
                        other => panic!("unexpected SessionLog field {other:?}"),
                    }
                }
            }
            other => panic!("unexpected Event field {other:?}"),
        }
    }
    event
}

fn read_events(path: &Path) -> Vec<Event> {
    let bytes = fs::read(path).unwrap();
    read_records(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .iter()
        .map(|r| decode_event(r))
        .collect()
}

/// The event files of a log directory, in the (lexicographic) order TensorBoard reads them.
fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(FILE_PREFIX)
        })
        .collect();
    files.sort();
    files
}

// ---------------------------------------------------------------------------------------------
// (1) Round trip through the spec reader.
// ---------------------------------------------------------------------------------------------

/// (tag, value, step) written by the round-trip tests, edge cases included.
fn sample_scalars() -> Vec<(&'static str, f32, i64)> {
    vec![
        ("train/loss", 2.5, 0),
        ("train/loss", 2.25, 1),
        ("train/lr", 1e-4, 1),
        ("eval/loss", -0.0, 2),
        ("train/loss", f32::MAX, 127),
        ("train/loss", f32::MIN_POSITIVE, 128),
        ("ünïcödé/tag with spaces", 3.0, 300),
        ("train/loss", f32::INFINITY, 1 << 40),
        ("train/loss", f32::NAN, i64::MAX),
        ("negative/step", 7.0, -5),
    ]
}

#[test]
fn spec_reader_reads_back_exactly_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("runs").join("exp");
    let scalars = sample_scalars();
    let path = {
        let mut writer = SummaryWriter::create(&log_dir).unwrap();
        for &(tag, value, step) in &scalars {
            writer.add_scalar(tag, value, step).unwrap();
        }
        writer
            .add_scalars(9, [("multi/a", 1.0f32), ("multi/b", 2.0)])
            .unwrap();
        writer.path().to_path_buf()
    };

    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with(FILE_PREFIX), "{name}");
    let rest = &name[FILE_PREFIX.len()..];
    let (seconds, host) = rest.split_once('.').unwrap();
    assert_eq!(seconds.len(), 10, "unix seconds in {name}");
    assert!(seconds.bytes().all(|b| b.is_ascii_digit()), "{name}");
    assert!(!host.is_empty(), "{name}");
    assert_eq!(event_files(&log_dir), vec![path.clone()]);

    let events = read_events(&path);
    assert_eq!(events.len(), scalars.len() + 2);
    let first = &events[0];
    assert_eq!(first.file_version.as_deref(), Some("brain.Event:2"));
    assert_eq!(first.step, 0);
    assert!(first.scalars.is_empty());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for event in &events {
        assert!(
            event.wall_time > now - 600.0 && event.wall_time <= now + 1.0,
            "{event:?}"
        );
    }
    for (event, &(tag, value, step)) in events[1..].iter().zip(&scalars) {
        assert_eq!(event.file_version, None);
        assert_eq!(event.session_log_status, None);
        assert_eq!(event.step, step);
        assert_eq!(event.scalars.len(), 1);
        assert_eq!(event.scalars[0].0, tag);
        // Bit-exact, so NaN and -0.0 count too.
        assert_eq!(event.scalars[0].1.to_bits(), value.to_bits(), "{tag}");
    }
    let multi = events.last().unwrap();
    assert_eq!(multi.step, 9);
    assert_eq!(
        multi.scalars,
        vec![("multi/a".to_string(), 1.0), ("multi/b".to_string(), 2.0)]
    );
}

#[test]
fn spec_reader_rejects_a_flipped_bit() {
    // Makes sure the round trip above really checks the CRCs.
    let dir = tempfile::tempdir().unwrap();
    let path = {
        let mut writer = SummaryWriter::create(dir.path()).unwrap();
        writer.add_scalar("loss", 1.0, 1).unwrap();
        writer.path().to_path_buf()
    };
    let good = fs::read(&path).unwrap();
    assert!(read_records(&good).is_ok());
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        assert!(read_records(&bad).is_err(), "flipped byte {i} not detected");
    }
}

#[test]
fn each_writer_gets_its_own_file_and_records_are_flushed_without_drop() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = SummaryWriter::create(dir.path()).unwrap();
    let mut b = SummaryWriter::create(dir.path()).unwrap();
    assert_ne!(a.path(), b.path());
    a.add_scalar("x", 1.0, 1).unwrap();
    b.add_scalar("x", 2.0, 2).unwrap();
    // Still open: what was added is already on disk.
    let a_events = read_events(a.path());
    let b_events = read_events(b.path());
    assert_eq!(a_events[1].scalars, vec![("x".to_string(), 1.0)]);
    assert_eq!(b_events[1].scalars, vec![("x".to_string(), 2.0)]);
    assert_eq!(event_files(dir.path()).len(), 2);
    // The second file sorts after the first, as TensorBoard needs to read them in order.
    assert_eq!(
        event_files(dir.path()),
        vec![a.path().to_path_buf(), b.path().to_path_buf()]
    );
}

#[test]
fn errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not_a_dir");
    fs::write(&blocker, b"x").unwrap();
    let log_dir = blocker.join("runs");
    let err = SummaryWriter::create(&log_dir).unwrap_err();
    assert!(matches!(err, TensorBoardError::CreateDir { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&log_dir.display().to_string()),
        "{err}"
    );

    let err = MetricsLog::open(&blocker, false).unwrap_err();
    assert!(matches!(err, MetricsError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&blocker.display().to_string()),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// (2) TensorBoard's own reader, when installed.
// ---------------------------------------------------------------------------------------------

const ACCUMULATOR_SCRIPT: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
out = {}
for tag in acc.Tags()["scalars"]:
    out[tag] = [[e.step, repr(e.value)] for e in acc.Scalars(tag)]
print(json.dumps(out))
"#;

/// The Python that can import tensorboard. Only the `#[ignore]`d reader tests call this, when
/// asked to run: a missing package then fails them rather than letting them pass unchecked.
fn tensorboard_python() -> &'static str {
    let ok = Command::new("python3")
        .args(["-c", "import tensorboard"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`python3 -c \"import tensorboard\"` failed: pip install tensorboard to run the \
         TensorBoard reader tests"
    );
    "python3"
}

/// Scalars per tag as TensorBoard's `EventAccumulator` loads them: (step, value) in order.
fn accumulate(python: &str, log_dir: &Path) -> BTreeMap<String, Vec<(i64, f32)>> {
    let out = Command::new(python)
        .args(["-c", ACCUMULATOR_SCRIPT])
        .arg(log_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "EventAccumulator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: BTreeMap<String, Vec<(i64, String)>> = serde_json::from_slice(&out.stdout).unwrap();
    parsed
        .into_iter()
        .map(|(tag, points)| {
            let points = points
                .into_iter()
                .map(|(step, value)| {
                    // Python's repr of a float: nan, inf, -inf or a decimal.
                    let v: f64 = value.parse().unwrap_or_else(|_| panic!("{value}"));
                    (step, v as f32)
                })
                .collect();
            (tag, points)
        })
        .collect()
}

fn same_bits(a: &[(i64, f32)], b: &[(i64, f32)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.0 == y.0 && (x.1.to_bits() == y.1.to_bits() || (x.1.is_nan() && y.1.is_nan()))
        })
}

#[test]
#[ignore = "needs Python's tensorboard package; run with `cargo test -p distill --test tensorboard -- --ignored` (.ci/run does)"]
fn tensorboard_event_accumulator_reads_the_scalars() {
    let python = tensorboard_python();
    let dir = tempfile::tempdir().unwrap();
    let scalars: Vec<_> = sample_scalars()
        .into_iter()
        .filter(|&(_, _, step)| step >= 0)
        .collect();
    {
        let mut writer = SummaryWriter::create(dir.path()).unwrap();
        for &(tag, value, step) in &scalars {
            writer.add_scalar(tag, value, step).unwrap();
        }
        writer
            .add_scalars(9, [("multi/a", 1.0f32), ("multi/b", 2.0)])
            .unwrap();
    }
    let mut expected: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for &(tag, value, step) in &scalars {
        expected
            .entry(tag.to_string())
            .or_default()
            .push((step, value));
    }
    expected.insert("multi/a".into(), vec![(9, 1.0)]);
    expected.insert("multi/b".into(), vec![(9, 2.0)]);

    let got = accumulate(python, dir.path());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (tag, points) in &expected {
        assert!(
            same_bits(&got[tag], points),
            "{tag}: got {:?}, expected {points:?}",
            got[tag]
        );
    }
}

#[test]
#[ignore = "needs Python's tensorboard package; run with `cargo test -p distill --test tensorboard -- --ignored` (.ci/run does)"]
fn tensorboard_event_accumulator_sees_a_resumed_run_once() {
    let python = tensorboard_python();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();

    // An older run in the same output directory, which a fresh start must hide.
    {
        let mut old = MetricsLog::open(out, false).unwrap();
        for step in 1..=20 {
            old.log(step, 0.0, Split::Train, &[("loss", -1.0)]).unwrap();
        }
    }
    // The run: crashes after logging step 10, its last checkpoint being step 6.
    {
        let mut log = MetricsLog::open(out, false).unwrap();
        for step in 1..=10 {
            log.log(
                step,
                step as f64 / 10.0,
                Split::Train,
                &[("loss", step as f64)],
            )
            .unwrap();
            if step % 5 == 0 {
                log.log(
                    step,
                    step as f64 / 10.0,
                    Split::Eval,
                    &[("loss", 100.0 + step as f64)],
                )
                .unwrap();
            }
        }
    }
    // Resumed from step 6: logs 7..=12 again, with other values.
    {
        let mut log = MetricsLog::open_resumed(out, 6).unwrap();
        for step in 7..=12 {
            log.log(
                step,
                step as f64 / 10.0,
                Split::Train,
                &[("loss", 1000.0 + step as f64)],
            )
            .unwrap();
        }
        log.log(10, 1.0, Split::Eval, &[("loss", 2000.0)]).unwrap();
    }

    let log_dir = out.join(TENSORBOARD_DIR);
    assert_eq!(event_files(&log_dir).len(), 3);
    let got = accumulate(python, &log_dir);
    let train: Vec<(i64, f32)> = (1..=12)
        .map(|s| (s, if s <= 6 { s as f32 } else { 1000.0 + s as f32 }))
        .collect();
    assert_eq!(got["train/loss"], train);
    assert_eq!(got["eval/loss"], vec![(5, 105.0), (10, 2000.0)]);
    assert_eq!(got.len(), 2, "{got:?}");
}

// ---------------------------------------------------------------------------------------------
// (3) metrics.jsonl
// ---------------------------------------------------------------------------------------------

fn jsonl(out: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(out.join(METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn steps_of(lines: &[serde_json::Value], split: &str) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l["split"] == split)
        .map(|l| l["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn metrics_jsonl_lines_are_json_objects_and_go_to_tensorboard_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("output");
    let event_file = {
        let mut log = MetricsLog::open(&out, false).unwrap();
        log.log(1, 0.125, Split::Train, &[("loss", 2.5), ("lr", 1e-4)])
            .unwrap();
        log.log(
            2,
            0.25,
            Split::Eval,
            &[("loss", 2.0), ("kl \"div\"", f64::NAN)],
        )
        .unwrap();
        log.flush().unwrap();
        assert_eq!(log.jsonl_path(), out.join(METRICS_FILE));
        log.event_file().to_path_buf()
    };

    let text = fs::read_to_string(out.join(METRICS_FILE)).unwrap();
    assert!(text.ends_with('\n'));
    assert!(
        text.starts_with(r#"{"step":1,"epoch":0.125,"split":"train","loss":2.5,"lr":0.0001}"#),
        "{text}"
    );
    let lines = jsonl(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["step"], 1);
    assert_eq!(lines[0]["epoch"], 0.125);
    assert_eq!(lines[0]["split"], "train");
    assert_eq!(lines[0]["loss"], 2.5);
    assert_eq!(lines[0]["lr"], 1e-4);
    assert_eq!(lines[1]["split"], "eval");
    assert_eq!(lines[1]["loss"], 2.0);
    assert!(lines[1]["kl \"div\""].is_null(), "NaN is null in JSON");

    assert_eq!(event_file.parent().unwrap(), out.join(TENSORBOARD_DIR));
    let events = read_events(&event_file);
    let summaries: Vec<(i64, Vec<(String, f32)>)> = events
        .iter()
        .filter(|e| !e.scalars.is_empty())
        .map(|e| (e.step, e.scalars.clone()))
        .collect();
    assert_eq!(summaries.len(), 2);
    assert_eq!(
        summaries[0],
        (
            1,
            vec![("train/loss".into(), 2.5), ("train/lr".into(), 1e-4f32)]
        )
    );
    assert_eq!(summaries[1].0, 2);
    assert_eq!(summaries[1].1[0], ("eval/loss".into(), 2.0));
    assert_eq!(summaries[1].1[1].0, "eval/kl \"div\"");
    assert!(summaries[1].1[1].1.is_nan());
    // A fresh run marks a restart at step 0 (hides older runs' events in the same directory).
    assert!(events
        .iter()
        .any(|e| e.session_log_status == Some(1) && e.step == 0));
}

#[test]
fn metrics_resume_drops_lines_after_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    {
        let mut log = MetricsLog::open(out, false).unwrap();
        for step in 1..=10 {
            log.log(step, 0.0, Split::Train, &[("loss", step as f64)])
                .unwrap();
            if step % 5 == 0 {
                log.log(step, 0.0, Split::Eval, &[("loss", step as f64)])
                    .unwrap();
            }
        }
    }
    assert_eq!(jsonl(out).len(), 12);

    let resumed_event_file = {
        let mut log = MetricsLog::open_resumed(out, 6).unwrap();
        // Nothing past step 6 remains: train 7..=10 and eval 10 are gone.
        let lines = jsonl(out);
        assert_eq!(steps_of(&lines, "train"), (1..=6).collect::<Vec<_>>());
        assert_eq!(steps_of(&lines, "eval"), vec![5]);
        for step in 7..=8 {
            log.log(step, 0.0, Split::Train, &[("loss", 100.0 + step as f64)])
                .unwrap();
        }
        log.event_file().to_path_buf()
    };
    let lines = jsonl(out);
    assert_eq!(steps_of(&lines, "train"), (1..=8).collect::<Vec<_>>());
    assert_eq!(lines.last().unwrap()["loss"], 108.0);
    // No temporary file left behind.
    let names: Vec<String> = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| n == METRICS_FILE || n == "runs"),
        "{names:?}"
    );
    // The resumed event file marks the restart at step 7, so TensorBoard drops steps >= 7 of
    // the crashed run.
    let events = read_events(&resumed_event_file);
    assert!(
        events
            .iter()
            .any(|e| e.session_log_status == Some(1) && e.step == 7),
        "{events:?}"
    );

    // resume_at itself reports what it dropped, and resuming at the end drops nothing.
    let mut log = MetricsLog::open(out, true).unwrap();
    assert_eq!(log.resume_at(8).unwrap(), 0);
    assert_eq!(log.resume_at(2).unwrap(), 7); // train 3..=8 and eval 5
    drop(log);
    let lines = jsonl(out);
    assert_eq!(steps_of(&lines, "train"), vec![1, 2]);
    assert!(steps_of(&lines, "eval").is_empty());
}

#[test]
fn metrics_resume_cuts_a_torn_last_line_and_fresh_open_empties_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    {
        let mut log = MetricsLog::open(out, false).unwrap();
        log.log(1, 0.0, Split::Train, &[("loss", 1.0)]).unwrap();
    }
    // A crash in the middle of a write.
    let path = out.join(METRICS_FILE);
    let mut text = fs::read_to_string(&path).unwrap();
    text.push_str(r#"{"step":2,"epoch":0.0,"spl"#);
    fs::write(&path, &text).unwrap();
    {
        let mut log = MetricsLog::open(out, true).unwrap();
        log.log(2, 0.0, Split::Train, &[("loss", 2.0)]).unwrap();
    }
    assert_eq!(steps_of(&jsonl(out), "train"), vec![1, 2]);

    drop(MetricsLog::open(out, false).unwrap());
    assert_eq!(fs::read_to_string(&path).unwrap(), "");
}

#[test]
fn metrics_reject_reserved_or_repeated_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = MetricsLog::open(dir.path(), false).unwrap();
    for metrics in [
        &[("step", 1.0)][..],
        &[("split", 1.0)][..],
        &[("", 1.0)][..],
        &[("loss", 1.0), ("loss", 2.0)][..],
    ] {
        let err = log.log(1, 0.0, Split::Train, metrics).unwrap_err();
        assert!(matches!(err, MetricsError::InvalidName { .. }), "{err:?}");
    }
    drop(log);
    assert!(jsonl(dir.path()).is_empty(), "nothing written on error");
}
