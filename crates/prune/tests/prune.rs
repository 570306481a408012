//! init-student against its definitions: keeping everything is the teacher bit for bit,
//! dropping layers is skipping them, a width-pruned student equals transformers on the same
//! cut (tests/fixtures/pruned, made by tests/python/prune_check.py), importance finds a layer
//! and neurons known to do nothing, and bad requests name their flag.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use preprocess::Block;
use prune::plan::importance_order;
use prune::{
    init_student, measure_importance, InitStudent, LayerChoice, PrunePlan, PruneSpec, PrunedWeights,
};
use qwen2::backend::{FlexCpu, NdArrayCpu};
use qwen2::safetensors::Dtype;
use qwen2::{
    build_model, load_model, open_weights, save_model, AttentionMask, Model, ModelConfig,
    SaveOptions, WeightSource,
};

type B = FlexCpu;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn parity_teacher() -> PathBuf {
    root().join("tests/fixtures/qwen2-parity/teacher")
}

/// The parity fixtures' batch `[2, 17]` (row 1 right-padded) and, where stored, logits.
struct Reference {
    ids: Vec<Vec<u32>>,
    mask: AttentionMask,
    logits: Option<Vec<f32>>,
}

fn reference(path: PathBuf) -> Reference {
    let bytes = std::fs::read(&path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ints = |name: &str| -> Vec<Vec<i64>> {
        let view = tensors.tensor(name).unwrap();
        let values: Vec<i64> = view
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        values
            .chunks(view.shape()[1])
            .map(<[i64]>::to_vec)
            .collect()
    };
    let logits = tensors.tensor("logits").ok().map(|view| {
        view.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    });
    Reference {
        ids: ints("input_ids")
            .into_iter()
            .map(|row| row.into_iter().map(|v| v as u32).collect())
            .collect(),
        mask: AttentionMask {
            rows: ints("attention_mask")
                .into_iter()
                .map(|row| row.into_iter().map(|v| v != 0).collect())
                .collect(),
        },
        logits,
    }
}

fn input_ids<Bk: Backend>(ids: &[Vec<u32>], device: &Bk::Device) -> Tensor<Bk, 2, Int> {
    let shape = [ids.len(), ids[0].len()];
    let flat: Vec<i64> = ids.iter().flatten().map(|&v| v as i64).collect();
    Tensor::from_data(TensorData::new(flat, shape), device)
}

fn values<Bk: Backend, const D: usize>(x: Tensor<Bk, D>) -> Vec<f32> {
    x.into_data().convert::<f32>().to_vec().unwrap()
}

/// Largest |a - b| over the real positions of `mask` (`[B, T, V]` row-major).
fn max_difference(a: &[f32], b: &[f32], mask: &AttentionMask) -> f32 {
    let vocab = a.len() / mask.rows.iter().map(Vec::len).sum::<usize>();
    let real = mask.rows.iter().flatten();
    a.chunks(vocab)
        .zip(b.chunks(vocab))
        .zip(real)
        .filter(|(_, &real)| real)
        .flat_map(|((a, b), _)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max)
}

fn init(spec: PruneSpec, calibration: Vec<Block>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("student");
    init_student::<B>(
        InitStudent {
            teacher: &parity_teacher(),
            out: &out,
            spec,
            calibration,
            held_out: Vec::new(),
            dtype: Dtype::F32,
        },
        &Default::default(),
        |_| {},
    )
    .unwrap();
    (dir, out)
}

#[test]
fn keeping_everything_reproduces_the_teacher_bit_for_bit() {
    let (_dir, out) = init(PruneSpec::default(), Vec::new());
    let (teacher_config, mut teacher) = open_weights(&parity_teacher()).unwrap();
    let (student_config, mut student) = open_weights(&out).unwrap();
    assert_eq!(
        student_config,
        ModelConfig {
            torch_dtype: "float32".into(),
            ..teacher_config.clone()
        }
    );
    for (name, shape) in teacher_config.tensor_shapes() {
        let expected = teacher.tensor(&name, &shape, false).unwrap();
        let found = student.tensor(&name, &shape, false).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&found), bits(&expected), "{name}");
    }
    assert!(out.join(prune::IMPORTANCE_FILE).exists());
}

#[test]
fn dropping_layers_equals_running_the_teacher_with_them_skipped() {
    let kept = [0, 2, 3];
    let spec = PruneSpec {
        layers: Some(LayerChoice::Keep(kept.to_vec())),
        ..PruneSpec::default()
    };
    let (_dir, out) = init(spec, Vec::new());
    let device = Default::default();
    let (teacher, _) = load_model::<B>(&parity_teacher(), &device).unwrap();
    let (student, config) = load_model::<B>(&out, &device).unwrap();
    assert_eq!(config.num_hidden_layers, 3);

    let batch = reference(parity_teacher().join("reference.safetensors"));
    let ids = input_ids::<B>(&batch.ids, &device);
    let context = teacher.layer_context(&batch.mask);
    let mut x = teacher.embed(ids.clone());
    for layer in kept {
        x = teacher.layer_forward(layer, x, &context);
    }
    let skipped = values(teacher.lm_head(teacher.norm.forward(x)));
    let pruned = values(student.forward(ids, &batch.mask, false).logits);
    let difference = max_difference(&pruned, &skipped, &batch.mask);
    assert!(difference <= 1e-5, "max logit difference {difference}");
}

/// The fixture's plan cut by [`PrunedWeights`], saved, loaded back as a user would, run.
fn width_pruned_logits<Bk: Backend>() -> (Vec<f32>, Reference) {
    let fixture = root().join("tests/fixtures/pruned");
    let plan: PrunePlan =
        serde_json::from_slice(&std::fs::read(fixture.join("plan.json")).unwrap()).unwrap();
    let device = Default::default();
    let (teacher_config, teacher) = open_weights(&parity_teacher()).unwrap();
    let config = plan.student_config(&teacher_config);
    assert_eq!(
        (
            config.hidden_size,
            config.num_attention_heads,
            config.head_dim
        ),
        (48, 2, 16),
        "head_dim stays while hidden / heads changes"
    );
    let mut weights = PrunedWeights::new(teacher, teacher_config, plan);
    let model: Model<Bk> = build_model(&config, &mut weights, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = SaveOptions {
        dtype: Dtype::F32,
        tokenizer_dir: None,
        generation: None,
    };
    save_model(&model, &config, dir.path(), &options).unwrap();
    let (loaded, _) = load_model::<Bk>(dir.path(), &device).unwrap();
    let batch = reference(fixture.join("reference.safetensors"));
    let logits = loaded
        .forward(input_ids::<Bk>(&batch.ids, &device), &batch.mask, false)
        .logits;
    (values(logits), batch)
}

#[test]
fn width_pruned_student_equals_transformers_on_both_cpu_backends() {
    for (backend, (logits, batch)) in [
        ("flex", width_pruned_logits::<FlexCpu>()),
        ("ndarray", width_pruned_logits::<NdArrayCpu>()),
    ] {
        let expected = batch.logits.as_ref().unwrap();
        let difference = max_difference(&logits, expected, &batch.mask);
        assert!(
            difference <= 1e-4,
            "{backend}: max logit difference {difference}"
        );
    }
}

/// The quickstart's trained teacher with layer 2 made an identity (its o_proj and down_proj
/// zero) and the first 16 FFN neurons of layer 1 dead (their gate rows zero: silu(0) = 0).
struct Sabotaged(Box<dyn WeightSource>);

const DEAD_NEURONS: usize = 16;

impl WeightSource for Sabotaged {
    fn tensor(&mut self, name: &str, shape: &[usize], transpose: bool) -> qwen2::Result<Vec<f32>> {
        let mut values = self.0.tensor(name, shape, false)?;
        match name {
            "model.layers.2.self_attn.o_proj.weight" | "model.layers.2.mlp.down_proj.weight" => {
                values.fill(0.0)
            }
            "model.layers.1.mlp.gate_proj.weight" => values[..DEAD_NEURONS * shape[1]].fill(0.0),
            _ => {}
        }
        Ok(if transpose && shape.len() == 2 {
            qwen2::transpose_matrix(&values, shape[0], shape[1])
        } else {
            values
        })
    }
}

#[test]
fn importance_ranks_an_idle_layer_last_and_prunes_dead_neurons_first() {
    let teacher = root().join("data/tiny-teacher");
    let (config, weights) = open_weights(&teacher).unwrap();
    let device = Default::default();
    let model: Model<B> = build_model(&config, &mut Sabotaged(weights), &device).unwrap();
    let tokenizer = qwen2::tokenizer::Tokenizer::from_dir(&teacher).unwrap();
    let text = std::fs::read_to_string(root().join("data/wikitext-2-raw/wiki.valid.raw")).unwrap();
    let ids = tokenizer.encode(&text[..20_000], false).unwrap();
    let blocks: Vec<Block> = ids
        .chunks_exact(128)
        .take(3)
        .map(|chunk| Block {
            ids: chunk.to_vec(),
            real_len: 128,
        })
        .collect();
    let importance = measure_importance(&model, &blocks, |_, _| {});

    assert_eq!(
        importance.loss_increase()[2],
        0.0,
        "skipping an identity changes nothing"
    );
    assert!(importance.block_influence[2].abs() < 1e-6);
    assert_eq!(
        importance_order(&importance.loss_increase()).last(),
        Some(&2)
    );
    assert_eq!(
        importance_order(&importance.block_influence).last(),
        Some(&2)
    );
    assert!(importance.neurons[1][..DEAD_NEURONS]
        .iter()
        .all(|&v| v == 0.0));

    let spec = PruneSpec {
        layers: Some(LayerChoice::Count(3)),
        intermediate_size: Some(config.intermediate_size - DEAD_NEURONS),
        ..PruneSpec::default()
    };
    let plan = PrunePlan::new(&spec, &config, Some(&importance)).unwrap();
    assert_eq!(plan.layers, vec![0, 1, 3]);
    assert_eq!(
        plan.neurons[1],
        (DEAD_NEURONS..config.intermediate_size).collect::<Vec<_>>()
    );
}

#[test]
fn bad_requests_name_the_flag_and_the_limit() {
    let config = ModelConfig::from_file(&parity_teacher()).unwrap();
    let refused = |spec: PruneSpec| spec.validate(&config).unwrap_err().to_string();
    let layers = |choice| PruneSpec {
        layers: Some(choice),
        ..PruneSpec::default()
    };
    let message = refused(layers(LayerChoice::Keep(vec![0, 7])));
    assert!(
        message.contains("--keep-layers") && message.contains("0 to 3"),
        "{message}"
    );
    let message = refused(layers(LayerChoice::Keep(vec![2, 1])));
    assert!(message.contains("increasing order"), "{message}");
    let message = refused(layers(LayerChoice::Count(5)));
    assert!(
        message.contains("--num-layers") && message.contains("1 to 4"),
        "{message}"
    );
    let message = refused(PruneSpec {
        num_attention_heads: Some(3),
        ..PruneSpec::default()
    });
    assert!(
        message.contains("--num-attention-heads") && message.contains("multiple of 2"),
        "{message}"
    );
    let message = refused(PruneSpec {
        intermediate_size: Some(200),
        ..PruneSpec::default()
    });
    assert!(
        message.contains("--intermediate-size") && message.contains("teacher's 160"),
        "{message}"
    );
    let message = refused(PruneSpec {
        hidden_size: Some(0),
        ..PruneSpec::default()
    });
    assert!(message.contains("--hidden-size") && message.contains("at least 1"));
    let message = LayerChoice::parse_keep("0,x").unwrap_err().to_string();
    assert!(
        message.contains("--keep-layers") && message.contains("`x`"),
        "{message}"
    );
    assert_eq!(
        LayerChoice::parse_keep("every-other").unwrap(),
        LayerChoice::EveryOther
    );

    // Choosing by importance without calibration data is refused before anything loads.
    let dir = tempfile::tempdir().unwrap();
    let error = init_student::<B>(
        InitStudent {
            teacher: &parity_teacher(),
            out: &dir.path().join("student"),
            spec: layers(LayerChoice::Count(2)),
            calibration: Vec::new(),
            held_out: Vec::new(),
            dtype: Dtype::F32,
        },
        &Default::default(),
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("--calibration"), "{error}");
    assert!(!dir.path().join("student").exists());
}
