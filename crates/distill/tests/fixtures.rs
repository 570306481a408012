//! The distillation objective equals the transformers/PyTorch reference of
//! tests/fixtures/qwen2-parity (distill_*.safetensors): every loss value (rtol 1e-5), the
//! gradients of norm, q_proj weight and bias, the (tied) embeddings and the projection
//! (relative L2 1e-4), and a 3-step AdamW trajectory (rtol 1e-4). The same for Llama and Qwen3
//! students (tests/fixtures/families/distill_teacher__*.safetensors: losses and gradients,
//! including those of the biases and q/k norms only they have).

use std::path::PathBuf;
use std::sync::Arc;

use burn::backend::Autodiff;
use burn::module::Param;
use burn::nn::Linear;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use distill::losses::{divergence_per_position, DivergenceParams, HiddenLoss, KdLoss};
use distill::objective::{
    loss_and_gradients, loss_only, Batch, IntermediateMatch, Objective, Projection, Student,
    TeacherOutputs,
};
use qwen2::{load_model, AttentionMask};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2-parity")
}

struct Reference(Vec<u8>);

impl Reference {
    fn open(name: &str) -> Self {
        Self(std::fs::read(fixtures().join(name)).unwrap())
    }
    fn has(&self, name: &str) -> bool {
        safetensors::SafeTensors::deserialize(&self.0)
            .unwrap()
            .tensor(name)
            .is_ok()
    }
    fn view(&self, name: &str) -> (Vec<usize>, Vec<u8>, safetensors::Dtype) {
        let tensors = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let view = tensors
            .tensor(name)
            .unwrap_or_else(|_| panic!("no tensor {name}"));
        (view.shape().to_vec(), view.data().to_vec(), view.dtype())
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        let (_, data, dtype) = self.view(name);
        assert_eq!(dtype, safetensors::Dtype::F32);
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    fn scalar(&self, name: &str) -> f64 {
        self.f32(name)[0] as f64
    }
    fn batch(&self) -> Batch {
        let (shape, data, _) = self.view("input_ids");
        let ids: Vec<i64> = data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let (_, mask, _) = self.view("attention_mask");
        let mask: Vec<i64> = mask
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        Batch::new(
            ids.chunks(shape[1])
                .map(|r| r.iter().map(|&v| v as u32).collect())
                .collect(),
            AttentionMask {
                rows: mask
                    .chunks(shape[1])
                    .map(|r| r.iter().map(|&v| v != 0).collect())
                    .collect(),
            },
        )
    }
}

fn assert_close(name: &str, actual: f64, expected: f64, rtol: f64) {
    let error = ((actual - expected) / expected).abs();
    println!("{name}: {actual} vs reference {expected} (relative error {error:e})");
    assert!(error < rtol, "{name}: {actual} vs {expected}");
}

fn relative_l2(actual: &[f32], expected: &[f32]) -> f64 {
    assert_eq!(actual.len(), expected.len());
    let diff: f64 = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| ((a - e) as f64).powi(2))
        .sum();
    let norm: f64 = expected.iter().map(|e| (*e as f64).powi(2)).sum();
    (diff / norm).sqrt()
}

fn values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn objective(chunk_positions: usize) -> Objective {
    Objective {
        temperature: 2.0,
        hard_label_weight: 0.5,
        kd_loss: KdLoss::Kl,
        divergence: DivergenceParams {
            jsd_beta: 0.5,
            skew_alpha: 0.1,
        },
        intermediate_matches: vec![IntermediateMatch {
            layer_t: 2,
            layer_s: 1,
            feature: "hidden".into(),
            loss: HiddenLoss::Mse,
            weight: 1.0,
        }],
        chunk_positions,
        vocab_rows: None,
        masked_token_ids: Vec::new(),
        cross_tokenizer: None,
    }
}

/// The student of a fixture pair, with the fixture's projection when widths differ.
fn student<Cpu: Backend>(name: &str, reference: &Reference) -> Student<Autodiff<Cpu>> {
    let device = Default::default();
    let (model, _) = load_model::<Autodiff<Cpu>>(&fixtures().join(name), &device).unwrap();
    let linear = (name == "student_h32").then(|| {
        // PyTorch [H_t, H_s] -> Burn's [H_s, H_t].
        let weight = Tensor::<Autodiff<Cpu>, 2>::from_data(
            TensorData::new(reference.f32("proj.weight"), [64, 32]),
            &device,
        );
        Linear {
            weight: Param::from_tensor(weight.transpose()),
            bias: None,
        }
    });
    Student {
        model,
        projections: vec![Projection { linear }],
    }
}

fn teacher<Cpu: Backend>() -> Arc<qwen2::Model<Cpu>> {
    Arc::new(
        load_model::<Cpu>(&fixtures().join("teacher"), &Default::default())
            .unwrap()
            .0,
    )
}

fn gradient<Cpu: Backend, const D: usize>(
    grads: &GradientsParams,
    param: &Param<Tensor<Autodiff<Cpu>, D>>,
) -> Vec<f32> {
    values(
        grads
            .get::<Cpu, D>(param.id)
            .expect("parameter has a gradient"),
    )
}

fn losses_and_gradients_equal_the_reference_for_every_chunking<Cpu: Backend>() {
    let teacher = teacher::<Cpu>();
    for pair in ["student", "student_h32"] {
        let reference = Reference::open(&format!("distill_teacher__{pair}.safetensors"));
        let batch = reference.batch();
        // 34 positions: one chunk, uneven chunks, one position per chunk.
        for chunk_positions in [64, 5, 1] {
            let objective = objective(chunk_positions);
            let student = student::<Cpu>(pair, &reference);
            let teacher_outputs = TeacherOutputs::from_model(&teacher, &batch, &objective);
            let (grads, losses) =
                loss_and_gradients(&student, &teacher_outputs, &batch, &objective);
            let label = format!("{pair} chunk {chunk_positions}");
            assert_close(
                &format!("{label} hard"),
                losses.hard,
                reference.scalar("hard_loss"),
                1e-5,
            );
            assert_close(
                &format!("{label} soft"),
                losses.soft,
                reference.scalar("soft_loss"),
                1e-5,
            );
            assert_close(
                &format!("{label} hidden"),
                losses.intermediate[0],
                reference.scalar("hidden_mse"),
                1e-5,
            );
            assert_close(
                &format!("{label} total"),
                losses.total,
                reference.scalar("total_loss_with_hidden"),
                1e-5,
            );

            let model = &student.model;
            let layer = &model.layers[0].self_attn.q_proj;
            let checks: Vec<(&str, Vec<f32>)> = vec![
                (
                    "grad.model.norm.weight",
                    gradient(&grads, &model.norm.weight),
                ),
                (
                    "grad.model.layers.0.self_attn.q_proj.bias",
                    gradient(&grads, layer.bias.as_ref().unwrap()),
                ),
                // Burn keeps [in, out]; the reference is PyTorch's [out, in].
                (
                    "grad.model.layers.0.self_attn.q_proj.weight",
                    transpose(
                        gradient(&grads, layer.weight.as_param()),
                        model.hidden_size(),
                    ),
                ),
                (
                    "grad.model.embed_tokens.weight",
                    transpose(
                        gradient(&grads, model.embed_tokens.as_param()),
                        model.hidden_size(),
                    ),
                ),
            ];
            for (name, actual) in checks {
                let error = relative_l2(&actual, &reference.f32(name));
                println!("{label} {name}: relative L2 error {error:e}");
                assert!(error < 1e-4, "{label} {name}: relative L2 error {error}");
            }
            if let Some(linear) = &student.projections[0].linear {
                let error = relative_l2(
                    &transpose(gradient(&grads, &linear.weight), 32),
                    &reference.f32("grad.proj.weight"),
                );
                println!("{label} grad.proj.weight: relative L2 error {error:e}");
                assert!(error < 1e-4, "{label} projection gradient: {error}");
            }
        }
    }
}

/// `[rows, cols]` row-major -> `[cols, rows]`.
fn transpose(values: Vec<f32>, rows: usize) -> Vec<f32> {
    let cols = values.len() / rows;
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

fn every_divergence_matches_its_formula_per_token<Cpu: Backend>() {
    let teacher = teacher::<Cpu>();
    let reference = Reference::open("distill_teacher__student.safetensors");
    let batch = reference.batch();
    let (student, _) = load_model::<Cpu>(&fixtures().join("student"), &Default::default()).unwrap();
    let ids = batch.ids_tensor::<Cpu>(&Default::default());
    let flat = |logits: Tensor<Cpu, 3>| {
        let [b, t, v] = logits.dims();
        logits.reshape([b * t, v])
    };
    let student_logits = flat(student.forward(ids.clone(), &batch.mask, false).logits);
    let teacher_logits = flat(teacher.forward(ids, &batch.mask, false).logits);
    for (kind, name) in [
        (KdLoss::Kl, "kl_forward_per_token"),
        (KdLoss::ReverseKl, "kl_reverse_per_token"),
        (KdLoss::Jsd, "jsd_per_token"),
    ] {
        let actual = values(divergence_per_position(
            kind,
            student_logits.clone(),
            teacher_logits.clone(),
            2.0,
            DivergenceParams {
                jsd_beta: 0.5,
                skew_alpha: 0.1,
            },
        ));
        let expected = reference.f32(name);
        for (position, (a, e)) in actual.iter().zip(&expected).enumerate() {
            assert!(
                (a - e).abs() <= 1e-5 * e.abs().max(1e-3),
                "{name} at {position}: {a} vs {e}"
            );
        }
    }
    // The token means (over real positions) times T^2 give the reported losses.
    let mut objective = objective(8);
    objective.intermediate_matches.clear();
    let student = Student {
        model: student,
        projections: vec![],
    };
    let teacher_outputs = TeacherOutputs::from_model(&teacher, &batch, &objective);
    for (kind, name, scale) in [
        (KdLoss::Kl, "soft_loss", 1.0),
        (KdLoss::ReverseKl, "reverse_kl_loss", 1.0),
        (KdLoss::Jsd, "jsd_tokenmean", 4.0),
    ] {
        objective.kd_loss = kind;
        let losses = loss_only(&student, &teacher_outputs, &batch, &objective);
        assert_close(name, losses.soft, reference.scalar(name) * scale, 1e-5);
    }
    assert_close(
        "total_loss",
        {
            objective.kd_loss = KdLoss::Kl;
            loss_only(&student, &teacher_outputs, &batch, &objective).total
        },
        reference.scalar("total_loss"),
        1e-5,
    );
}

fn three_adamw_steps_follow_the_reference_trajectory<Cpu: Backend>() {
    let teacher = teacher::<Cpu>();
    for pair in ["student", "student_h32"] {
        let reference = Reference::open(&format!("distill_teacher__{pair}.safetensors"));
        let batch = reference.batch();
        let objective = objective(7);
        let teacher_outputs = TeacherOutputs::from_model(&teacher, &batch, &objective);
        let mut student = student::<Cpu>(pair, &reference);
        let mut optimizer = AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.999)
            .with_epsilon(1e-8)
            .with_weight_decay(0.01)
            .init::<Autodiff<Cpu>, Student<Autodiff<Cpu>>>();
        let expected = reference.f32("adamw_losses");
        for (step, expected_loss) in expected.iter().enumerate() {
            let (grads, losses) =
                loss_and_gradients(&student, &teacher_outputs, &batch, &objective);
            assert_close(
                &format!("{pair} AdamW loss before step {step}"),
                losses.total,
                *expected_loss as f64,
                1e-4,
            );
            student = optimizer.step(1e-3, student, grads);
        }
        let after = loss_and_gradients(&student, &teacher_outputs, &batch, &objective)
            .1
            .total;
        assert_close(
            &format!("{pair} loss after 3 steps"),
            after,
            reference.scalar("adamw_loss_after"),
            1e-4,
        );
        let norm = values(student.model.norm.weight.val());
        let error = relative_l2(&norm, &reference.f32("adamw_final.model.norm.weight"));
        assert!(error < 1e-4, "{pair} final norm weight: {error}");
        let bias = values(
            student.model.layers[0]
                .self_attn
                .q_proj
                .bias
                .as_ref()
                .unwrap()
                .val(),
        );
        let error = relative_l2(
            &bias,
            &reference.f32("adamw_final.model.layers.0.self_attn.q_proj.bias"),
        );
        assert!(error < 1e-4, "{pair} final q_proj bias: {error}");
    }
}

/// A Llama or Qwen3 student distilled from the Qwen2 teacher: losses and gradients as
/// PyTorch computes them, chunked or not.
fn family_students_losses_and_gradients_equal_the_reference<Cpu: Backend>() {
    let teacher = teacher::<Cpu>();
    for family in ["llama", "llama_bias", "qwen3"] {
        let reference = Reference::open(&format!(
            "../families/distill_teacher__{family}.safetensors"
        ));
        let batch = reference.batch();
        for chunk_positions in [64, 5] {
            let mut objective = objective(chunk_positions);
            objective.intermediate_matches.clear();
            let (model, _) = load_model::<Autodiff<Cpu>>(
                &fixtures().join("../families").join(family),
                &Default::default(),
            )
            .unwrap();
            let student = Student {
                model,
                projections: vec![],
            };
            let teacher_outputs = TeacherOutputs::from_model(&teacher, &batch, &objective);
            let (grads, losses) =
                loss_and_gradients(&student, &teacher_outputs, &batch, &objective);
            let label = format!("{family} chunk {chunk_positions}");
            for (name, actual) in [
                ("hard_loss", losses.hard),
                ("soft_loss", losses.soft),
                ("total_loss", losses.total),
            ] {
                assert_close(
                    &format!("{label} {name}"),
                    actual,
                    reference.scalar(name),
                    1e-5,
                );
            }
            let model = &student.model;
            let layer = &model.layers[0];
            let hidden = model.hidden_size();
            let matrix = |weight: &qwen2::weight::Weight<Autodiff<Cpu>>| {
                // Burn keeps [in, out]; the reference is PyTorch's [out, in].
                let rows = weight.dims()[0];
                transpose(gradient(&grads, weight.as_param()), rows)
            };
            let mut checks: Vec<(&str, Vec<f32>)> = vec![
                (
                    "grad.model.norm.weight",
                    gradient(&grads, &model.norm.weight),
                ),
                (
                    "grad.model.layers.0.self_attn.q_proj.weight",
                    matrix(&layer.self_attn.q_proj.weight),
                ),
                (
                    "grad.model.layers.0.self_attn.k_proj.weight",
                    matrix(&layer.self_attn.k_proj.weight),
                ),
                (
                    "grad.model.embed_tokens.weight",
                    transpose(gradient(&grads, model.embed_tokens.as_param()), hidden),
                ),
            ];
            if let Some(bias) = &layer.self_attn.o_proj.bias {
                checks.push((
                    "grad.model.layers.0.self_attn.o_proj.bias",
                    gradient(&grads, bias),
                ));
            }
            if let Some(bias) = &layer.mlp.down_proj.bias {
                checks.push((
                    "grad.model.layers.0.mlp.down_proj.bias",
                    gradient(&grads, bias),
                ));
            }
            if let (Some(q_norm), Some(k_norm)) = (&layer.self_attn.q_norm, &layer.self_attn.k_norm)
            {
                checks.push((
                    "grad.model.layers.0.self_attn.q_norm.weight",
                    gradient(&grads, &q_norm.weight),
                ));
                checks.push((
                    "grad.model.layers.0.self_attn.k_norm.weight",
                    gradient(&grads, &k_norm.weight),
                ));
            }
            let mut compared = 0;
            for (name, actual) in checks {
                if !reference.has(name) {
                    continue;
                }
                let error = relative_l2(&actual, &reference.f32(name));
                println!("{label} {name}: relative L2 error {error:e}");
                assert!(error < 1e-4, "{label} {name}: relative L2 error {error}");
                compared += 1;
            }
            assert!(compared >= 4, "{label}: only {compared} gradients compared");
        }
    }
}

qwen2::on_every_cpu_backend!(
    family_students_losses_and_gradients_equal_the_reference,
    losses_and_gradients_equal_the_reference_for_every_chunking,
    every_divergence_matches_its_formula_per_token,
    three_adamw_steps_follow_the_reference_trajectory,
);
