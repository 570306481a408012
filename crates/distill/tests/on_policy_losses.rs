//! The on-policy divergences against an independent computation
//! (tests/fixtures/on-policy-losses: TRL 1.16's own `generalized_jsd_loss` and DistiLLM's skew
//! KLs written out in float64 by make_losses.py): per position, at T = 2, the generalized JSD
//! at beta = 0, 0.1, 0.5, 0.9, 1 and the skew KLs at alpha = 0, 0.1, 0.5; and the end cases:
//! JSD(0) is forward KL, JSD(1) reverse KL, skew KL(0) forward KL, skew reverse KL(0) reverse
//! KL.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use distill::losses::{divergence_per_position, DivergenceParams, KdLoss};
use serde_json::Value;

fn reference() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/on-policy-losses/losses.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn numbers(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn logits<B: Backend>(value: &Value) -> Tensor<B, 2> {
    let rows: Vec<Vec<f64>> = value.as_array().unwrap().iter().map(numbers).collect();
    let shape = [rows.len(), rows[0].len()];
    let flat: Vec<f32> = rows.into_iter().flatten().map(|v| v as f32).collect();
    Tensor::from_data(TensorData::new(flat, shape), &Default::default())
}

/// The divergence `kind` of the fixture's logits, per position.
fn divergence<B: Backend>(reference: &Value, kind: KdLoss, params: DivergenceParams) -> Vec<f64> {
    divergence_per_position(
        kind,
        logits::<B>(&reference["student_logits"]),
        logits::<B>(&reference["teacher_logits"]),
        reference["temperature"].as_f64().unwrap(),
        params,
    )
    .into_data()
    .convert::<f64>()
    .to_vec::<f64>()
    .unwrap()
}

/// float32 against the float64 reference: 1e-5 relative, 1e-6 absolute (the fixture's last
/// position has equal distributions, so a divergence of 0).
fn assert_matches(name: &str, actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{name}");
    for (position, (a, e)) in actual.iter().zip(expected).enumerate() {
        println!("{name} at {position}: {a} vs {e}");
        assert!(
            (a - e).abs() <= 1e-5 * e.abs() + 1e-6,
            "{name} at {position}: {a} vs reference {e}"
        );
    }
}

fn params(jsd_beta: f64, skew_alpha: f64) -> DivergenceParams {
    DivergenceParams {
        jsd_beta,
        skew_alpha,
    }
}

fn generalized_jsd_matches_trl_and_its_end_cases_are_the_two_kls<B: Backend>() {
    let reference = reference();
    let forward = numbers(&reference["forward_kl"]);
    let reverse = numbers(&reference["reverse_kl"]);
    assert_matches(
        "forward KL",
        &divergence::<B>(&reference, KdLoss::Kl, params(0.5, 0.1)),
        &forward,
    );
    assert_matches(
        "reverse KL",
        &divergence::<B>(&reference, KdLoss::ReverseKl, params(0.5, 0.1)),
        &reverse,
    );
    let jsd = |beta: f64| divergence::<B>(&reference, KdLoss::Jsd, params(beta, 0.1));
    assert_matches("JSD(beta = 0) = forward KL", &jsd(0.0), &forward);
    assert_matches("JSD(beta = 1) = reverse KL", &jsd(1.0), &reverse);
    let trl = reference["generalized_jsd"].as_object().unwrap();
    assert_eq!(trl.len(), 5);
    for (beta, expected) in trl {
        let beta: f64 = beta.parse().unwrap();
        assert_matches(
            &format!("JSD(beta = {beta}) vs TRL"),
            &jsd(beta),
            &numbers(expected),
        );
    }
}

fn skew_kls_match_distillm_and_are_the_kls_at_alpha_0<B: Backend>() {
    let reference = reference();
    for (kind, key, plain) in [
        (KdLoss::SkewKl, "skew_kl", "forward_kl"),
        (KdLoss::SkewReverseKl, "skew_reverse_kl", "reverse_kl"),
    ] {
        let skew = |alpha: f64| divergence::<B>(&reference, kind, params(0.5, alpha));
        assert_matches(
            &format!("{key}(alpha = 0) = {plain}"),
            &skew(0.0),
            &numbers(&reference[plain]),
        );
        let expected = reference[key].as_object().unwrap();
        assert_eq!(expected.len(), 3);
        for (alpha, values) in expected {
            let alpha: f64 = alpha.parse().unwrap();
            assert_matches(
                &format!("{key}(alpha = {alpha})"),
                &skew(alpha),
                &numbers(values),
            );
        }
    }
}

qwen2::on_every_cpu_backend!(
    generalized_jsd_matches_trl_and_its_end_cases_are_the_two_kls,
    skew_kls_match_distillm_and_are_the_kls_at_alpha_0,
);
