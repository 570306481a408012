//! Products in bf16 (`memory.frozen_products = "bfloat16"`) beside the default f32 products, on
//! the transformers parity fixtures stored in bf16: how far the logits and the loss move, and a
//! LoRA student's adapter gradients through a bf16 base. The setting is process-wide, so this
//! file is its own test binary and its one test runs both backends in turn.
//!
//! Tolerances: bf16 keeps 8 bits of mantissa, so each rounded activation is off by up to 2^-9
//! relative; over the fixtures' layers the logits move by up to 2% of their largest magnitude
//! and the mean cross-entropy by up to 0.5% (measured: see the printed figures).

mod common;

use burn::backend::Autodiff;
use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};
use common::*;
use matmul::Orientation;
use qwen2::backend::{FlexCpu, NdArrayCpu};
use qwen2::loss::next_token_cross_entropy;
use qwen2::weight::FrozenMatrix;
use qwen2::{
    attach_lora, build_model, load_frozen_model, AttentionMask, FrozenDtype, FrozenProducts,
    LoraSettings, Model, ModelConfig, RandomWeights,
};

const MODELS: [&str; 3] = ["teacher", "student", "student_h32"];

fn largest(values: &[f32]) -> f32 {
    values.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// Logits and mean loss of the fixture `name`, stored in bf16, with `products`.
fn run<B: Backend>(name: &str, products: FrozenProducts) -> (Vec<f32>, f32) {
    products.set();
    let (model, _, _) =
        load_frozen_model::<B>(&model_dir(name), &Default::default(), FrozenDtype::Bfloat16)
            .unwrap();
    let reference = Reference::open(model_dir(name).join("reference.safetensors"));
    let rows = reference.rows("input_ids");
    let mask = reference.mask();
    let logits = model.forward(ids_tensor(&rows), &mask, false).logits;
    let loss = to_vec(next_token_cross_entropy(logits.clone(), &rows, &mask).mean())[0];
    (to_vec(logits), loss)
}

fn fixtures_move_within_bf16_rounding<B: Backend>(backend: &str) {
    for name in MODELS {
        let (logits_f32, loss_f32) = run::<B>(name, FrozenProducts::Float32);
        let (logits_bf16, loss_bf16) = run::<B>(name, FrozenProducts::Bfloat16);
        let reference = Reference::open(model_dir(name).join("reference.safetensors"));
        let transformers_loss = reference.f32("loss")[0];
        let error = max_abs_diff(&logits_bf16, &logits_f32) / largest(&logits_f32);
        println!(
            "{backend} {name}: bf16 products vs f32 products (both bf16-stored): logits max \
             |error| {:.3e} of the largest logit; loss {loss_bf16:.6} vs {loss_f32:.6} \
             (transformers, float32 weights: {transformers_loss:.6})",
            error
        );
        assert!(error > 0.0, "{name}: the bf16 products ran");
        assert!(
            error < 2e-2,
            "{name}: logits moved by {error} of the largest"
        );
        let moved = (loss_bf16 - loss_f32).abs() / loss_f32;
        assert!(moved < 5e-3, "{name}: loss moved by {moved} (relative)");
    }
}

fn lora_gradients_through_a_bf16_base<B: Backend>(backend: &str) {
    type Ad<B> = Autodiff<B>;
    let config = ModelConfig::preset("tiny").unwrap();
    let device = Default::default();
    let lora = LoraSettings {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["all-linear".into()],
        use_rslora: false,
    };
    let base = build_model::<Ad<B>>(&config, &mut RandomWeights::new(1), &device).unwrap();
    let mut model = attach_lora(base, &lora, true, 5);
    for (_, _, linear) in model.linears_mut() {
        if let Some(adapter) = linear.lora.as_mut() {
            let dims = adapter.lora_b.dims();
            adapter.lora_b = Param::from_tensor(Tensor::random(
                dims,
                Distribution::Normal(0.0, 0.05),
                &device,
            ));
        }
    }
    let rows = vec![(0..12).map(|i| (i * 37 + 5) % 500).collect::<Vec<u32>>(); 2];
    let mask = AttentionMask::full(2, 12);
    let weights = Tensor::<Ad<B>, 3>::random(
        [2, 12, config.vocab_size],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let gradients = |model: &Model<Ad<B>>, products: FrozenProducts| {
        products.set();
        let logits = model.forward(ids_tensor(&rows), &mask, false).logits;
        let grads = (logits * weights.clone()).sum().backward();
        let mut all = Vec::new();
        for layer in &model.layers {
            for linear in [&layer.self_attn.q_proj, &layer.mlp.down_proj] {
                let adapter = linear.lora.as_ref().unwrap();
                all.push(to_vec(adapter.lora_a.grad(&grads).unwrap()));
                all.push(to_vec(adapter.lora_b.grad(&grads).unwrap()));
            }
        }
        all
    };
    let in_f32 = gradients(&model, FrozenProducts::Float32);
    let in_bf16 = gradients(&model, FrozenProducts::Bfloat16);
    let mut worst = 0f32;
    for (index, (a, b)) in in_bf16.iter().zip(&in_f32).enumerate() {
        let error = max_abs_diff(a, b) / largest(b).max(1e-6);
        assert!(
            error < 3e-2,
            "adapter gradient {index}: relative error {error}"
        );
        worst = worst.max(error);
    }
    println!(
        "{backend}: LoRA adapter gradients, bf16 vs f32 products: max relative error {worst:.3e}"
    );
    assert!(worst > 0.0, "the bf16 products ran");
}

/// On flex, bf16 products of more than decoding's rows are gemm's f32 products of the
/// activations rounded to bf16 with the widened matrix (where the CPU's bf16 kernel widens
/// too): bit for bit burn-flex's matmul of those two, both orientations, a matrix wider than
/// one widening block; and within f32 rounding of this crate's own bf16 kernel.
fn flex_bf16_products_by_gemm_round_the_activations() {
    let kernel = matmul::Kernel::for_rows(40);
    if !kernel.widens() {
        println!(
            "bf16 products by gemm: not this CPU's route ({})",
            kernel.name()
        );
        return;
    }
    let device = Default::default();
    let (rows, inputs, outputs) = (40, 48, qwen2::weight::BLOCK_COLUMNS + 70);
    let values = |count: usize, seed: usize| -> Vec<f32> {
        (0..count)
            .map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0) * 1.3)
            .collect()
    };
    let weights = values(inputs * outputs, 1);
    let matrix = FrozenMatrix::from_f32(&weights, [inputs, outputs]);
    let stored: Vec<half::bf16> = weights.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let widened: Tensor<FlexCpu, 2> = matrix.tensor(&device);
    let rounded = |x: &[f32]| -> Vec<f32> {
        x.iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect()
    };
    FrozenProducts::Bfloat16.set();
    for (orientation, width) in [
        (Orientation::AsStored, inputs),
        (Orientation::Transposed, outputs),
    ] {
        let x = values(rows * width, 2);
        let tensor = |v: Vec<f32>| {
            Tensor::<FlexCpu, 2>::from_data(TensorData::new(v, [rows, width]), &device)
        };
        let (product, expected) = match orientation {
            Orientation::AsStored => (
                matrix.right_product(tensor(x.clone())),
                tensor(rounded(&x)).matmul(widened.clone()),
            ),
            Orientation::Transposed => (
                matrix.transposed_product(tensor(x.clone())),
                tensor(rounded(&x)).matmul(widened.clone().transpose()),
            ),
        };
        let product = to_vec(product);
        let kernel = matmul::matmul(
            matmul::Kernel::Portable,
            &x,
            rows,
            &matmul::Bf16Matrix {
                values: &stored,
                dims: [inputs, outputs],
                orientation,
            },
        );
        let largest = largest(&kernel);
        let from_kernel = max_abs_diff(&product, &kernel) / largest;
        println!("bf16 products by gemm, {orientation:?}: {from_kernel:.2e} of the largest from the portable kernel");
        assert!(
            from_kernel < 1e-5,
            "{orientation:?}: {from_kernel} from the bf16 kernel"
        );
        if orientation == Orientation::AsStored || outputs <= qwen2::weight::BLOCK_COLUMNS {
            assert_eq!(
                product,
                to_vec(expected),
                "{orientation:?}: not burn-flex's matmul bits"
            );
        }
    }
    FrozenProducts::Float32.set();
}

#[test]
fn bf16_products_beside_f32_products() {
    println!("bf16 kernel: {}", matmul::Kernel::detect().name());
    flex_bf16_products_by_gemm_round_the_activations();
    fixtures_move_within_bf16_rounding::<FlexCpu>("flex");
    fixtures_move_within_bf16_rounding::<NdArrayCpu>("ndarray");
    lora_gradients_through_a_bf16_base::<FlexCpu>("flex");
    lora_gradients_through_a_bf16_base::<NdArrayCpu>("ndarray");
    FrozenProducts::Float32.set();
}
