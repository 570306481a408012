//! The losses that burn-flex runs as fused operations (cross-entropy, forward KL, the top-k
//! KL's log-softmax) give the composed operations' values and gradients: burn-flex against
//! burn-ndarray (which composes them), with and without autodiff, at temperatures 1 and 2.

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use distill::losses::{
    cross_entropy_per_position, divergence_per_position, top_k_kl_per_position, DivergenceParams,
    KdLoss,
};
use qwen2::backend::{FlexCpu, NdArrayCpu};

const ROWS: usize = 6;
const VOCAB: usize = 1003;

/// Deterministic logits with a spread like a model's.
fn logits(seed: usize) -> Vec<f32> {
    (0..ROWS * VOCAB)
        .map(|i| (((i * 7919 + seed * 104_729) % 10_007) as f32 / 10_007.0 - 0.5) * 24.0)
        .collect()
}

fn tensor<B: Backend>(values: &[f32], dims: [usize; 2]) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims), &Default::default())
}

fn ids<B: Backend>(values: &[i64], dims: [usize; 2]) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims), &Default::default())
}

fn floats<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

/// Per-position values and the gradient of their weighted sum with respect to the student's
/// logits, for one of the three losses.
fn loss_and_gradient<B: Backend>(which: &str, temperature: f64) -> (Vec<f32>, Vec<f32>) {
    let student = tensor::<Autodiff<B>>(&logits(1), [ROWS, VOCAB]).require_grad();
    let teacher = tensor::<Autodiff<B>>(&logits(2), [ROWS, VOCAB]);
    let per_position = per_position(which, student.clone(), teacher, temperature);
    let weights =
        tensor::<Autodiff<B>>(&[0.5, -1.0, 2.0, 0.25, 1.0, 3.0], [1, ROWS]).reshape([ROWS]);
    let gradients = (per_position.clone() * weights).sum().backward();
    let gradient = student
        .grad(&gradients)
        .expect("the loss depends on the student");
    (floats(per_position), floats(gradient))
}

fn per_position<B: Backend>(
    which: &str,
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    temperature: f64,
) -> Tensor<B, 1> {
    let labels: Vec<i64> = (0..ROWS as i64).map(|n| n * 167 % VOCAB as i64).collect();
    match which {
        "cross-entropy" => {
            let labels = ids::<B>(&labels, [1, ROWS]).reshape([ROWS]);
            cross_entropy_per_position(student, labels)
        }
        "forward KL" => divergence_per_position(
            KdLoss::Kl,
            student,
            teacher,
            temperature,
            DivergenceParams {
                jsd_beta: 0.5,
                skew_alpha: 0.1,
            },
        ),
        "top-k KL" => {
            let k = 5;
            let top_ids: Vec<i64> = (0..(ROWS * k) as i64)
                .map(|i| i * 31 % VOCAB as i64)
                .collect();
            let top_logits: Vec<f32> = (0..ROWS * k).map(|i| 9.0 - i as f32 % 5.0).collect();
            let rest: Vec<f32> = (0..ROWS).map(|n| 4.0 + n as f32 * 0.5).collect();
            let rest = tensor::<B>(&rest, [1, ROWS]).reshape([ROWS]);
            top_k_kl_per_position(
                student,
                tensor::<B>(&top_logits, [ROWS, k]),
                ids::<B>(&top_ids, [ROWS, k]),
                rest,
                temperature,
            )
        }
        other => unreachable!("{other}"),
    }
}

/// Within `tolerance` of the largest magnitude.
fn assert_close(what: &str, fused: &[f32], composed: &[f32], tolerance: f32) {
    assert_eq!(fused.len(), composed.len(), "{what}: length");
    let scale = composed.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (f, c)) in fused.iter().zip(composed).enumerate() {
        assert!(
            (f - c).abs() <= tolerance * scale,
            "{what}[{i}]: fused {f}, composed {c} (largest {scale})"
        );
    }
}

#[test]
fn fused_losses_and_gradients_equal_the_composed_ones() {
    for which in ["cross-entropy", "forward KL", "top-k KL"] {
        for temperature in [1.0, 2.0] {
            let (values, gradient) = loss_and_gradient::<FlexCpu>(which, temperature);
            let (want_values, want_gradient) = loss_and_gradient::<NdArrayCpu>(which, temperature);
            let what = format!("{which} at T = {temperature}");
            assert_close(&format!("{what}, values"), &values, &want_values, 2e-5);
            assert_close(
                &format!("{what}, gradient"),
                &gradient,
                &want_gradient,
                2e-5,
            );
            assert!(gradient.iter().any(|&g| g != 0.0), "{what}: a gradient");

            // Without autodiff (evaluation) the fused values are the same.
            let inference = floats(per_position::<FlexCpu>(
                which,
                tensor(&logits(1), [ROWS, VOCAB]),
                tensor(&logits(2), [ROWS, VOCAB]),
                temperature,
            ));
            assert_close(
                &format!("{what}, inference"),
                &inference,
                &want_values,
                2e-5,
            );
        }
    }
}

/// A teacher that is itself part of the graph gets its gradient: forward KL composes then.
#[test]
fn a_teacher_in_the_graph_gets_its_gradient() {
    // Flatter distributions than `logits` gives, so the gradient is not all round-off.
    let flat = |seed| logits(seed).iter().map(|v| v * 0.1).collect::<Vec<_>>();
    let gradient_of_teacher = |_: ()| {
        let student = tensor::<Autodiff<FlexCpu>>(&flat(1), [ROWS, VOCAB]);
        let teacher = tensor::<Autodiff<FlexCpu>>(&flat(2), [ROWS, VOCAB]).require_grad();
        let kl = per_position("forward KL", student, teacher.clone(), 1.0);
        floats(
            teacher
                .grad(&kl.sum().backward())
                .expect("the teacher's gradient"),
        )
    };
    let flex = gradient_of_teacher(());
    let student = tensor::<Autodiff<NdArrayCpu>>(&flat(1), [ROWS, VOCAB]);
    let teacher = tensor::<Autodiff<NdArrayCpu>>(&flat(2), [ROWS, VOCAB]).require_grad();
    let kl = per_position("forward KL", student, teacher.clone(), 1.0);
    let ndarray = floats(teacher.grad(&kl.sum().backward()).unwrap());
    // Both compose, with sums in each backend's own order.
    assert_close("the teacher's gradient", &flex, &ndarray, 1e-4);
}
