//! The evaluation's figures against transformers' on the parity fixtures (tolerances of the
//! fixture README: losses rtol 1e-5).

mod common;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use common::{fixtures, Reference};
use eval::quality::score_batch;
use qwen2::{load_model, AttentionMask, Model};

fn load<B: Backend>(name: &str) -> Model<B> {
    load_model::<B>(&fixtures().join(name), &Default::default())
        .unwrap()
        .0
}

fn relative(actual: f64, expected: f64) -> f64 {
    ((actual - expected) / expected).abs()
}

/// The fixture batch: row 0 has 17 real tokens, row 1 has 12 then right padding.
fn batch() -> (Vec<Vec<u32>>, AttentionMask) {
    let reference = Reference::open(fixtures().join("teacher/reference.safetensors"));
    (reference.input_ids(), reference.mask())
}

fn loss_and_perplexity_equal_transformers_for_every_fixture_model_and_chunking<B: Backend>() {
    let (ids, mask) = batch();
    for name in ["teacher", "student", "student_h32"] {
        let reference = Reference::open(fixtures().join(name).join("reference.safetensors"));
        let expected = reference.scalar("loss");
        let model = load::<B>(name);
        // 3: many windows; 16: a window ends on the last label (T - 1); 64: one window.
        for chunk in [3, 16, 64] {
            let sums = score_batch(&model, None, &ids, &mask, chunk, 1.0);
            assert_eq!(sums.labels, 16 + 11, "{name}, chunk {chunk}: valid labels");
            let loss = sums.mean_cross_entropy();
            println!("{name} chunk {chunk}: loss {loss} vs transformers {expected}");
            assert!(
                relative(loss, expected) < 1e-5,
                "{name}, chunk {chunk}: loss {loss} vs transformers {expected}"
            );
            assert_eq!(sums.perplexity(), loss.exp());
            assert_eq!(sums.mean_kl(), None, "no teacher, no KL");
        }
    }
}

fn kl_at_the_distillation_temperature_equals_the_fixture_soft_loss<B: Backend>() {
    let (ids, mask) = batch();
    let teacher = load::<B>("teacher");
    for student_name in ["student", "student_h32"] {
        let reference = Reference::open(
            fixtures().join(format!("distill_teacher__{student_name}.safetensors")),
        );
        let student = load::<B>(student_name);
        // The fixture's soft loss is T^2 x the token-mean KL at T = 2 over all real positions.
        let sums = score_batch(&student, Some(&teacher), &ids, &mask, 5, 2.0);
        assert_eq!(sums.compared_positions, 17 + 12);
        let kl = sums.mean_kl().unwrap();
        let expected = reference.scalar("kl_forward_tokenmean");
        println!("{student_name}: KL(T=2) {kl} vs transformers {expected}");
        assert!(relative(kl, expected) < 1e-5, "{kl} vs {expected}");
        assert!(relative(4.0 * kl, reference.scalar("soft_loss")) < 1e-5);
    }
}

/// Full logits on the host, `[B][T][V]`.
fn host_logits<B: Backend>(
    model: &Model<B>,
    ids: &[Vec<u32>],
    mask: &AttentionMask,
) -> Vec<Vec<Vec<f64>>> {
    let values: Vec<i64> = ids.iter().flatten().map(|&v| v as i64).collect();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(values, [ids.len(), ids[0].len()]),
        &Default::default(),
    );
    let logits = model.forward(input, mask, false).logits;
    let [batch, seq, vocab] = logits.dims();
    let flat = logits.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    (0..batch)
        .map(|b| {
            (0..seq)
                .map(|t| {
                    let start = (b * seq + t) * vocab;
                    flat[start..start + vocab]
                        .iter()
                        .map(|&v| v as f64)
                        .collect()
                })
                .collect()
        })
        .collect()
}

fn log_softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let log_sum = logits.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|v| v - log_sum).collect()
}

fn argmax(values: &[f64]) -> usize {
    (0..values.len()).fold(0, |best, i| if values[i] > values[best] { i } else { best })
}

fn kl_and_top1_agreement_at_temperature_one_equal_a_direct_computation<B: Backend>() {
    let (ids, mask) = batch();
    let teacher = load::<B>("teacher");
    let student = load::<B>("student");
    let sums = score_batch(&student, Some(&teacher), &ids, &mask, 4, 1.0);

    let student_logits = host_logits(&student, &ids, &mask);
    let teacher_logits = host_logits(&teacher, &ids, &mask);
    let (mut kl_sum, mut agreements, mut positions) = (0.0, 0u64, 0u64);
    for (b, row) in mask.rows.iter().enumerate() {
        for (t, &real) in row.iter().enumerate() {
            if !real {
                continue;
            }
            let log_p = log_softmax(&teacher_logits[b][t]);
            let log_q = log_softmax(&student_logits[b][t]);
            kl_sum += log_p
                .iter()
                .zip(&log_q)
                .map(|(lp, lq)| lp.exp() * (lp - lq))
                .sum::<f64>();
            agreements += u64::from(argmax(&teacher_logits[b][t]) == argmax(&student_logits[b][t]));
            positions += 1;
        }
    }
    let expected_kl = kl_sum / positions as f64;
    let kl = sums.mean_kl().unwrap();
    println!(
        "KL(T=1) {kl} vs direct f64 {expected_kl}; agreements {} of {positions}",
        sums.top1_agreements
    );
    assert!(relative(kl, expected_kl) < 1e-5, "{kl} vs {expected_kl}");
    assert_eq!(sums.compared_positions, positions);
    assert_eq!(sums.top1_agreements, agreements);
    assert_eq!(
        sums.top1_agreement().unwrap(),
        agreements as f64 / positions as f64
    );

    // A model compared with itself: no divergence, full agreement.
    let itself = score_batch(&teacher, Some(&teacher), &ids, &mask, 7, 1.0);
    assert!(itself.mean_kl().unwrap().abs() < 1e-6);
    assert_eq!(itself.top1_agreement(), Some(1.0));
}

qwen2::on_every_cpu_backend!(
    loss_and_perplexity_equal_transformers_for_every_fixture_model_and_chunking,
    kl_at_the_distillation_temperature_equals_the_fixture_soft_loss,
    kl_and_top1_agreement_at_temperature_one_equal_a_direct_computation,
);
