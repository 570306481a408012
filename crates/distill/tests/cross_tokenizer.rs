//! Distillation across tokenizers against TRL's GOLD (tests/fixtures/cross-tokenizer, made by
//! its make_fixtures.py with trl 1.16.0): the alignment of two byte-level BPEs' tokens of one
//! text equals TRL's byte-offset groups, and ULD and the hybrid loss equal TRL's `ULDLoss`
//! ("bayesian" merge) in value (relative 1e-5) and in their gradient with respect to the
//! student's logits (relative L2 1e-4), on both CPU backends; ULD also equals a float64
//! computation from its definition.

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use distill::cross_tokenizer::{
    group_distributions, Aligner, CrossTokenizerLoss, CrossTokenizerLossKind, SharedColumns,
};
use preprocess::{SharedTokens, TokenText};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/cross-tokenizer")
}

struct Reference(Vec<u8>);

impl Reference {
    fn open() -> Self {
        Self(std::fs::read(fixtures().join("losses.safetensors")).unwrap())
    }
    fn view(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let tensors = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let view = tensors.tensor(name).unwrap_or_else(|_| panic!("no {name}"));
        (view.shape().to_vec(), view.data().to_vec())
    }
    fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, data) = self.view(name);
        let values = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (shape, values)
    }
    fn i64(&self, name: &str) -> Vec<i64> {
        self.view(name)
            .1
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    fn f64_scalar(&self, name: &str) -> f64 {
        let (_, data) = self.view(name);
        f64::from_le_bytes(data[..8].try_into().unwrap())
    }
    fn ids(&self, name: &str) -> Vec<u32> {
        self.i64(name).iter().map(|&v| v as u32).collect()
    }
}

fn aligner() -> Aligner {
    Aligner {
        student: TokenText::load(&fixtures().join("student")).unwrap(),
        teacher: TokenText::load(&fixtures().join("teacher")).unwrap(),
        teacher_end_of_text: None,
    }
}

#[test]
fn groups_equal_trls_byte_offset_alignment() {
    let reference = Reference::open();
    let student_ids = reference.ids("student_ids");
    let aligned = aligner()
        .align(
            std::slice::from_ref(&student_ids),
            &[vec![true; student_ids.len()]],
        )
        .unwrap();
    assert_eq!(
        aligned.teacher_ids[0],
        reference.ids("teacher_ids"),
        "the teacher's tokens of the text"
    );
    let expected_student = reference.i64("groups_student");
    let expected_teacher = reference.i64("groups_teacher");
    assert_eq!(aligned.alignment.groups.len(), expected_student.len() / 2);
    for (index, group) in aligned.alignment.groups.iter().enumerate() {
        // Positions predict the next token: tokens first..=last are predicted at first-1..last.
        let tokens = |span: &distill::cross_tokenizer::PredictedSpan| {
            [span.positions.start as i64 + 1, span.positions.end as i64]
        };
        assert_eq!(
            tokens(&group.student),
            expected_student[2 * index..2 * index + 2],
            "group {index}"
        );
        assert_eq!(
            tokens(&group.teacher),
            expected_teacher[2 * index..2 * index + 2],
            "group {index}"
        );
    }
}

fn losses_and_gradients_equal_trl<Cpu: Backend>() {
    type A<Cpu> = Autodiff<Cpu>;
    let reference = Reference::open();
    let aligner = aligner();
    let student_ids = reference.ids("student_ids");
    let aligned = aligner
        .align(
            std::slice::from_ref(&student_ids),
            &[vec![true; student_ids.len()]],
        )
        .unwrap();
    let (student_rows, teacher_rows, teacher_positions) =
        aligned.alignment.rows_in(0..student_ids.len());
    assert_eq!(
        teacher_positions,
        (0..teacher_positions.len()).collect::<Vec<_>>()
    );
    let (student_shape, student_logits) = reference.f32("student_logits");
    let (teacher_shape, teacher_logits) = reference.f32("teacher_logits");
    let shared = SharedTokens::of(&aligner.teacher, &aligner.student);
    let columns = SharedColumns::new(&shared, teacher_shape[1], student_shape[1]);
    println!(
        "{} shared tokens of {} teacher and {} student columns",
        columns.teacher.len(),
        teacher_shape[1],
        student_shape[1]
    );

    let device = Default::default();
    for (name, kind, weights, beta) in [
        ("uld", CrossTokenizerLossKind::Uld, None, 0.5),
        ("hybrid_adaptive", CrossTokenizerLossKind::Hybrid, None, 0.5),
        (
            "hybrid_fixed_kl",
            CrossTokenizerLossKind::Hybrid,
            Some((0.7, 0.3)),
            0.0,
        ),
    ] {
        let loss = CrossTokenizerLoss {
            kind,
            shared: columns.clone(),
            weights,
            beta,
        };
        let student = Tensor::<A<Cpu>, 2>::from_data(
            TensorData::new(student_logits.clone(), [student_shape[0], student_shape[1]]),
            &device,
        )
        .require_grad();
        let teacher = Tensor::<A<Cpu>, 2>::from_data(
            TensorData::new(teacher_logits.clone(), [teacher_shape[0], teacher_shape[1]]),
            &device,
        );
        let groups = student_rows.last.len() as f64;
        let q_s = group_distributions(student.clone(), 2.0, &student_rows);
        let q_t = group_distributions(teacher, 2.0, &teacher_rows);
        let value = loss.per_group(q_s, q_t).sum() / groups;
        let actual = value
            .clone()
            .into_scalar()
            .to_string()
            .parse::<f64>()
            .unwrap();
        let expected = reference.f32(&format!("{name}_loss")).1[0] as f64;
        let error = ((actual - expected) / expected).abs();
        println!("{name}: {actual} vs TRL {expected} (relative {error:e})");
        assert!(error < 1e-5, "{name}: {actual} vs TRL {expected}");
        if name == "uld" {
            let exact = reference.f64_scalar("uld_float64");
            assert!(
                ((actual - exact) / exact).abs() < 1e-5,
                "ULD {actual} vs float64 {exact}"
            );
        }

        let gradients = value.backward();
        let gradient: Vec<f32> = student
            .grad(&gradients)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        let expected = reference.f32(&format!("{name}_grad")).1;
        let (difference, norm) = gradient
            .iter()
            .zip(&expected)
            .fold((0f64, 0f64), |(d, n), (a, e)| {
                (d + ((a - e) as f64).powi(2), n + (*e as f64).powi(2))
            });
        let relative = (difference / norm).sqrt();
        println!("{name}: gradient relative L2 error {relative:e}");
        assert!(
            relative < 1e-4,
            "{name}: gradient relative L2 error {relative}"
        );
    }
}

#[test]
fn text_the_teacher_cannot_spell_is_refused_naming_the_row() {
    let aligner = aligner();
    // A student token spelled in bytes that are not UTF-8 in the middle of a row.
    let text = aligner.student.encode(" the river").unwrap();
    let invalid = (0..aligner.student.len() as u32)
        .find(|&id| aligner.student.bytes(id) == Some(&[0xFF][..]))
        .expect("a byte-level BPE spells every byte");
    let mut row = text.clone();
    row.insert(1, invalid);
    row.extend(text);
    let error = aligner
        .align(
            &[vec![1, 2], row.clone()],
            &[vec![true, true], vec![true; row.len()]],
        )
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("row 1") && error.contains("token 1"),
        "{error}"
    );
    assert!(error.contains("not UTF-8"), "{error}");
}

/// Through the trainer's objective (a Llama student, a Qwen2 teacher of another vocabulary,
/// two rows of different lengths): the loss is the groups' mean whatever the chunking (groups
/// are never cut), and the student's gradients do not depend on it either.
fn the_objective_across_tokenizers_does_not_depend_on_chunking<Cpu: Backend>() {
    use distill::losses::{DivergenceParams, KdLoss};
    use distill::objective::{loss_and_gradients, Batch, Objective, Student, TeacherOutputs};
    use qwen2::config::{Architecture, DecoderVariant};
    use qwen2::{build_model, AttentionMask, RandomWeights};

    let aligner = aligner();
    let reference = Reference::open();
    let text = reference.ids("student_ids");
    let short = text[..40].to_vec();
    let mut padded = short.clone();
    padded.resize(text.len(), 0);
    let rows = vec![text.clone(), padded];
    let mask = vec![
        vec![true; text.len()],
        (0..text.len()).map(|t| t < short.len()).collect(),
    ];
    let aligned = aligner.align(&rows, &mask).unwrap();

    let device = Default::default();
    let mut student_config = distill::toy::toy_config(32, 2, 4);
    student_config.vocab_size = 656;
    student_config.variant = DecoderVariant {
        architecture: Architecture::Llama,
        qkv_bias: false,
        ..DecoderVariant::default()
    };
    let mut teacher_config = distill::toy::toy_config(48, 2, 4);
    teacher_config.vocab_size = 520;
    let teacher = std::sync::Arc::new(
        build_model::<Cpu>(&teacher_config, &mut RandomWeights::new(3), &device).unwrap(),
    );
    let teacher_outputs = TeacherOutputs::from_model_aligned(&teacher, aligned);
    let shared = SharedTokens::of(&aligner.teacher, &aligner.student);
    let batch = Batch::new(rows, AttentionMask { rows: mask });
    let mut results = Vec::new();
    for chunk_positions in [1000, 37, 1] {
        let student = Student {
            model: build_model::<Autodiff<Cpu>>(
                &student_config,
                &mut RandomWeights::new(5),
                &device,
            )
            .unwrap(),
            projections: vec![],
        };
        let objective = Objective {
            temperature: 1.0,
            hard_label_weight: 0.5,
            kd_loss: KdLoss::Kl,
            divergence: DivergenceParams {
                jsd_beta: 0.0,
                skew_alpha: 0.1,
            },
            intermediate_matches: vec![],
            chunk_positions,
            vocab_rows: None,
            masked_token_ids: vec![],
            cross_tokenizer: Some(CrossTokenizerLoss {
                kind: CrossTokenizerLossKind::Hybrid,
                shared: SharedColumns::new(&shared, 520, 656),
                weights: Some((0.5, 0.5)),
                beta: 0.0,
            }),
        };
        let (grads, losses) = loss_and_gradients(&student, &teacher_outputs, &batch, &objective);
        let norm: Vec<f32> = grads
            .get::<Cpu, 1>(student.model.norm.weight.id)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        println!(
            "chunk {chunk_positions}: soft {} hard {}",
            losses.soft, losses.hard
        );
        assert!(losses.soft > 0.0);
        results.push((losses.soft, norm));
    }
    for (soft, norm) in &results[1..] {
        assert!(
            ((soft - results[0].0) / results[0].0).abs() < 1e-5,
            "{soft} vs {}",
            results[0].0
        );
        let error = norm
            .iter()
            .zip(&results[0].1)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(error < 1e-5, "norm gradient moved by {error}");
    }
}

qwen2::on_every_cpu_backend!(
    losses_and_gradients_equal_trl,
    the_objective_across_tokenizers_does_not_depend_on_chunking,
);
