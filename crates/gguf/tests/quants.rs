//! The reader against the `gguf` Python package (tests/fixtures/gguf, made by its
//! make_fixtures.py): every ggml type dequantized bit-equal to `gguf.quants.dequantize`, every
//! metadata value type, a non-default alignment; the writer read back; bad files refused with
//! the file, the tensor or key, and what would work.

use std::path::{Path, PathBuf};

use gguf::{write_gguf, GgmlType, GgufError, GgufFile, TensorToWrite, Value, ValueType};
use serde_json::Value as Json;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf")
}

fn expected() -> (Vec<u8>, Json) {
    let bytes = std::fs::read(fixtures().join("quants.expected.safetensors")).unwrap();
    let json =
        serde_json::from_slice(&std::fs::read(fixtures().join("quants.expected.json")).unwrap())
            .unwrap();
    (bytes, json)
}

#[test]
fn every_type_dequantizes_bit_equal_to_the_gguf_package() {
    let file = GgufFile::open(&fixtures().join("quants.gguf")).unwrap();
    let (bytes, json) = expected();
    let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = json["tensors"].as_array().unwrap();
    let mut types_seen = std::collections::BTreeSet::new();
    for entry in tensors {
        let name = entry["name"].as_str().unwrap();
        let info = file.tensor(name).unwrap();
        assert_eq!(
            info.type_id as u64,
            entry["ggml_type_id"].as_u64().unwrap(),
            "{name}"
        );
        let shape: Vec<usize> = entry["numpy_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(info.shape(), shape, "{name}");
        let (_, raw) = file.raw_bytes(name).unwrap();
        assert_eq!(
            fsio::sha256_hex(&raw),
            entry["sha256_raw"].as_str().unwrap(),
            "{name} bytes"
        );

        let ours = file.read_f32(name, &shape).unwrap();
        let view = reference.tensor(name).unwrap();
        let theirs: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(ours.len(), theirs.len(), "{name}");
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{name}[{i}]: ours {a}, gguf {b}");
        }
        types_seen.insert(info.type_name());
    }
    // Every type of the list (Q8_K is not here: gguf cannot dequantize it).
    for name in [
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
        "Q5_K", "Q6_K",
    ] {
        assert!(
            types_seen.contains(name),
            "no fixture tensor of type {name}"
        );
    }
}

#[test]
fn every_metadata_value_type_reads_as_written_and_alignment_is_honoured() {
    let file = GgufFile::open(&fixtures().join("quants.gguf")).unwrap();
    let (_, json) = expected();
    assert_eq!(file.alignment, 64);
    let keys: Vec<&str> = file.metadata().map(|(k, _)| k).collect();
    let expected_keys: Vec<&str> = json["kv_keys_in_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(keys, expected_keys);
    assert_eq!(file.get("test.u8"), Some(&Value::U8(200)));
    assert_eq!(file.get("test.i8"), Some(&Value::I8(-100)));
    assert_eq!(file.get("test.u32"), Some(&Value::U32(4_000_000_000)));
    assert_eq!(file.get("test.u64"), Some(&Value::U64(9223372036854775813)));
    assert_eq!(
        file.get("test.i64"),
        Some(&Value::I64(-4611686018427387911))
    );
    assert_eq!(
        file.get("test.f32"),
        Some(&Value::F32(f32::from_bits(0x3dcccccd)))
    );
    assert_eq!(file.get("test.bool_true"), Some(&Value::Bool(true)));
    assert_eq!(
        file.get("test.empty_string"),
        Some(&Value::String(String::new()))
    );
    for entry in json["test_kvs"].as_array().unwrap() {
        let key = entry["key"].as_str().unwrap();
        let value = file.get(key).unwrap_or_else(|| panic!("{key} missing"));
        if let Some(array) = entry["value"].as_array() {
            assert_eq!(value.as_array().unwrap().len(), array.len(), "{key}");
        } else if let Some(s) = entry["value"].as_str() {
            assert_eq!(value.as_str(), Some(s), "{key}");
        }
    }
}

#[test]
fn written_files_read_back_and_q8_0_requantizes_to_the_same_bytes() {
    let source = GgufFile::open(&fixtures().join("quants.gguf")).unwrap();
    let q8 = source.read_f32("q8_0", &[3, 512]).unwrap();
    let (_, q8_bytes) = source.raw_bytes("q8_0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    let metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String("test".into()),
        ),
        (
            "test.strings".to_string(),
            Value::Array(ValueType::String, vec![Value::String("a b".into())]),
        ),
        (
            "test.empty".to_string(),
            Value::Array(ValueType::I32, vec![]),
        ),
    ];
    let values: Vec<f32> = (0..96).map(|i| (i as f32 - 40.0) * 0.37).collect();
    let tensors = vec![
        TensorToWrite {
            name: "q8".into(),
            shape: vec![3, 512],
            kind: GgmlType::Q8_0,
            values: Box::new(|| q8.clone()),
        },
        TensorToWrite {
            name: "f16".into(),
            shape: vec![3, 32],
            kind: GgmlType::F16,
            values: Box::new(|| values.clone()),
        },
        TensorToWrite {
            name: "f32".into(),
            shape: vec![96],
            kind: GgmlType::F32,
            values: Box::new(|| values.clone()),
        },
    ];
    write_gguf(&path, &metadata, tensors).unwrap();
    let back = GgufFile::open(&path).unwrap();
    assert_eq!(back.metadata().count(), 3);
    assert_eq!(
        back.get("test.empty"),
        Some(&Value::Array(ValueType::I32, vec![]))
    );
    assert_eq!(back.raw_bytes("q8").unwrap().1, q8_bytes);
    assert_eq!(back.read_f32("f32", &[96]).unwrap(), values);
    let halves = back.read_f32("f16", &[3, 32]).unwrap();
    for (a, b) in halves.iter().zip(&values) {
        assert_eq!(*a, half::f16::from_f32(*b).to_f32());
    }
    // Only the finished file exists: no temporary left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

fn open_error(bytes: &[u8]) -> (GgufError, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    let error = GgufFile::open(&path)
        .err()
        .expect("the file must be refused");
    let message = error.to_string();
    assert!(message.contains("bad.gguf"), "names the file: {message}");
    (error, message)
}

#[test]
fn truncated_and_corrupt_files_are_refused_naming_what_is_wrong() {
    let good = std::fs::read(fixtures().join("quants.gguf")).unwrap();
    // Cut inside the tensor data: the last tensor's end is past the file's end.
    let (error, message) = open_error(&good[..good.len() - 100]);
    assert!(matches!(error, GgufError::Corrupt { .. }), "{message}");
    assert!(message.contains("truncated"), "{message}");
    // Cut inside the header.
    let (_, message) = open_error(&good[..1000]);
    assert!(message.contains("corrupt or truncated"), "{message}");
    // Not a GGUF at all.
    let (error, message) = open_error(b"{\"__metadata__\": {}}");
    assert!(matches!(error, GgufError::NotGguf { .. }), "{message}");
    // A version this reader does not know.
    let mut future = good.clone();
    future[4..8].copy_from_slice(&9u32.to_le_bytes());
    let (_, message) = open_error(&future);
    assert!(message.contains("version 9"), "{message}");
    // A string length larger than the file.
    let mut huge = good.clone();
    huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    let (_, message) = open_error(&huge);
    assert!(message.contains("corrupt"), "{message}");
}

#[test]
fn an_unknown_tensor_type_is_refused_naming_the_tensor_and_the_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iq.gguf");
    write_gguf(
        &path,
        &[],
        vec![TensorToWrite {
            name: "blk.0.ffn_up.weight".into(),
            shape: vec![2, 32],
            kind: GgmlType::F16,
            values: Box::new(|| vec![0.5; 64]),
        }],
    )
    .unwrap();
    // Rewrite the type id to IQ2_XXS (16), which this reader cannot dequantize.
    let mut bytes = std::fs::read(&path).unwrap();
    let name = b"blk.0.ffn_up.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let type_at = at + 4 + 2 * 8;
    assert_eq!(&bytes[type_at..type_at + 4], &1u32.to_le_bytes());
    bytes[type_at..type_at + 4].copy_from_slice(&16u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let message = file
        .read_f32("blk.0.ffn_up.weight", &[2, 32])
        .unwrap_err()
        .to_string();
    assert!(message.contains("blk.0.ffn_up.weight"), "{message}");
    assert!(message.contains("IQ2_XXS"), "{message}");
    assert!(
        message.contains("Q4_K"),
        "lists what is supported: {message}"
    );
}
