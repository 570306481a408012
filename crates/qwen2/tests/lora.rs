//! LoRA and frozen bf16 weights: the adapters start at the base model, merge into the same
//! function, survive PEFT's layout both ways, and a bf16-frozen base gives the forward pass and
//! the adapters' gradients of an f32 model holding the same (bf16-rounded) values.
mod common;

use burn::backend::Autodiff;
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use common::*;
use qwen2::weight::Weight;
use qwen2::{attach_lora, build_model, freeze, load_adapter, merge_lora, save_adapter};
use qwen2::{AttentionMask, LoraSettings, Model, ModelConfig, RandomWeights};

fn tiny() -> ModelConfig {
    ModelConfig::preset("tiny").unwrap()
}

/// The tiny shape as each decoder: Qwen2; Llama with biases everywhere and 32-wide heads in a
/// 64-wide model; Qwen3 with its q/k norms.
fn tiny_families() -> Vec<ModelConfig> {
    use qwen2::config::{Architecture, DecoderVariant};
    let mut llama = tiny();
    llama.head_dim = 32;
    llama.variant = DecoderVariant {
        architecture: Architecture::Llama,
        qkv_bias: true,
        o_proj_bias: true,
        mlp_bias: true,
        ..DecoderVariant::default()
    };
    let mut qwen3 = tiny();
    qwen3.variant = DecoderVariant {
        architecture: Architecture::Qwen3,
        qkv_bias: false,
        qk_norm: true,
        ..DecoderVariant::default()
    };
    vec![tiny(), llama, qwen3]
}

fn settings(rank: usize, targets: &[&str]) -> LoraSettings {
    LoraSettings {
        rank,
        alpha: 2.0 * rank as f64,
        dropout: 0.0,
        target_modules: targets.iter().map(|t| t.to_string()).collect(),
        use_rslora: false,
    }
}

fn rows() -> Vec<Vec<u32>> {
    vec![(0..12).map(|i| (i * 37 + 5) % 500).collect(); 2]
}

fn logits<Bk: Backend>(model: &Model<Bk>) -> Vec<f32> {
    let rows = rows();
    let mask = AttentionMask::full(rows.len(), rows[0].len());
    to_vec(model.forward(ids_tensor(&rows), &mask, false).logits)
}

/// Every LoRA B matrix replaced by random values, so the adapters change the function.
fn perturb_adapters<Bk: Backend>(mut model: Model<Bk>) -> Model<Bk> {
    let device = model.device();
    for (_, _, linear) in model.linears_mut() {
        if let Some(lora) = linear.lora.as_mut() {
            let dims = lora.lora_b.dims();
            lora.lora_b = Param::from_tensor(Tensor::random(
                dims,
                Distribution::Normal(0.0, 0.05),
                &device,
            ));
        }
    }
    model
}

/// The bf16-frozen weights widened back into f32 parameters (frozen): the same values.
fn widened<Bk: Backend>(mut model: Model<Bk>) -> Model<Bk> {
    let widen = |weight: &Weight<Bk>| {
        Weight::from_param(Param::from_tensor(weight.val()).set_require_grad(false))
    };
    model.embed_tokens = widen(&model.embed_tokens);
    if let Some(lm_head) = model.lm_head.as_mut() {
        *lm_head = widen(lm_head);
    }
    for (_, _, linear) in model.linears_mut() {
        linear.weight = widen(&linear.weight);
    }
    model
}

fn adapters_start_at_the_base_and_merge_exactly<Bk: Backend>() {
    for config in tiny_families() {
        adapters_start_at_the_base_and_merge_exactly_for::<Bk>(config);
    }
}

fn adapters_start_at_the_base_and_merge_exactly_for<Bk: Backend>(config: ModelConfig) {
    let device = Default::default();
    let base = build_model::<Bk>(&config, &mut RandomWeights::new(1), &device).unwrap();
    let expected = logits(&base);
    let adapted = attach_lora(base, &settings(4, &["all-linear"]), false, 7);
    assert_eq!(
        max_abs_diff(&logits(&adapted), &expected),
        0.0,
        "B = 0 must leave the model unchanged"
    );
    let adapted = perturb_adapters(adapted);
    let with_adapters = logits(&adapted);
    assert!(max_abs_diff(&with_adapters, &expected) > 1e-3);
    let merged = merge_lora(adapted);
    assert!(!merged.has_lora());
    let error = max_abs_diff(&logits(&merged), &with_adapters);
    assert!(error < 2e-5, "merged logits differ by {error}");
}

fn adapters_round_trip_in_peft_layout<Bk: Backend>() {
    for config in tiny_families() {
        adapters_round_trip_in_peft_layout_for::<Bk>(config);
    }
}

fn adapters_round_trip_in_peft_layout_for<Bk: Backend>(config: ModelConfig) {
    let device = Default::default();
    let lora = settings(8, &["q_proj", "v_proj", "down_proj"]);
    let base = || build_model::<Bk>(&config, &mut RandomWeights::new(1), &device).unwrap();
    let trained = perturb_adapters(attach_lora(base(), &lora, false, 3));
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&trained, &lora, "tiny-base", dir.path()).unwrap();

    let file = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&file).unwrap();
    let a = tensors
        .tensor("base_model.model.model.layers.2.self_attn.v_proj.lora_A.weight")
        .unwrap();
    assert_eq!(a.shape(), [8, 64], "lora_A is [r, in] as PEFT writes it");
    let b = tensors
        .tensor("base_model.model.model.layers.3.mlp.down_proj.lora_B.weight")
        .unwrap();
    assert_eq!(b.shape(), [64, 8], "lora_B is [out, r]");
    assert_eq!(tensors.len(), 4 * 3 * 2);

    let (loaded, read) = load_adapter(freeze(base(), false), &config, dir.path()).unwrap();
    assert_eq!(read, lora);
    assert_eq!(max_abs_diff(&logits(&loaded), &logits(&trained)), 0.0);
}

fn bf16_base_gives_the_f32_forward_and_gradients<Bk: Backend>() {
    type Ad<Bk> = Autodiff<Bk>;
    let config = tiny();
    let device = Default::default();
    let lora = settings(4, &["all-linear"]);
    let base = build_model::<Ad<Bk>>(&config, &mut RandomWeights::new(1), &device).unwrap();
    let in_bf16 = perturb_adapters(attach_lora(base, &lora, true, 5));
    let in_f32 = widened(in_bf16.clone());

    let rows = rows();
    let mask = AttentionMask::full(rows.len(), rows[0].len());
    let weights = Tensor::<Ad<Bk>, 3>::random(
        [2, 12, config.vocab_size],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let gradients = |model: &Model<Ad<Bk>>| {
        let logits = model.forward(ids_tensor(&rows), &mask, false).logits;
        let out = to_vec(logits.clone());
        let grads = (logits * weights.clone()).sum().backward();
        let mut adapter_grads = Vec::new();
        for layer in &model.layers {
            for linear in [&layer.self_attn.q_proj, &layer.mlp.down_proj] {
                let lora = linear.lora.as_ref().unwrap();
                adapter_grads.push(to_vec(lora.lora_a.grad(&grads).unwrap()));
                adapter_grads.push(to_vec(lora.lora_b.grad(&grads).unwrap()));
            }
        }
        assert!(
            model.embed_tokens.param.is_none() || model.embed_tokens.val().grad(&grads).is_none(),
            "the frozen base must get no gradient"
        );
        (out, adapter_grads)
    };
    let (logits_bf16, grads_bf16) = gradients(&in_bf16);
    let (logits_f32, grads_f32) = gradients(&in_f32);
    let error = max_abs_diff(&logits_bf16, &logits_f32);
    assert!(error < 1e-5, "logits differ by {error}");
    for (index, (a, b)) in grads_bf16.iter().zip(&grads_f32).enumerate() {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let error = max_abs_diff(a, b) / scale;
        assert!(
            error < 1e-4,
            "adapter gradient {index}: relative error {error}"
        );
    }
}

fn only_the_adapters_train<Bk: Backend>() {
    let config = tiny();
    let device = Default::default();
    let lora = settings(4, &["q_proj", "k_proj"]);
    let base = build_model::<Autodiff<Bk>>(&config, &mut RandomWeights::new(1), &device).unwrap();
    let model = attach_lora(base, &lora, false, 5);
    struct Count(usize, usize);
    impl<Bk: Backend> burn::module::ModuleVisitor<Bk> for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
            if param.is_require_grad() {
                self.0 += param.shape().num_elements();
            } else {
                self.1 += param.shape().num_elements();
            }
        }
    }
    let mut count = Count(0, 0);
    model.visit(&mut count);
    assert_eq!(count.0, lora.parameters(&config));
    assert!(count.1 > 0);
}

mod trained {
    use super::*;
    qwen2::on_every_cpu_backend!(
        adapters_start_at_the_base_and_merge_exactly,
        adapters_round_trip_in_peft_layout,
        bf16_base_gives_the_f32_forward_and_gradients,
        only_the_adapters_train,
    );
}

#[test]
fn bad_settings_are_refused() {
    let config = tiny();
    let origin = "configs/x.toml [lora]";
    let error = settings(4, &["qkv_proj"])
        .validate(Some(&config), origin)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("target_modules") && error.contains("qkv_proj") && error.contains("q_proj"),
        "{error}"
    );
    let error = settings(0, &["q_proj"])
        .validate(Some(&config), origin)
        .unwrap_err();
    assert!(error.to_string().contains("`rank`"), "{error}");
    // tiny's k_proj is 64 -> 32 wide: rank 33 cannot fit it.
    let error = settings(33, &["k_proj"])
        .validate(Some(&config), origin)
        .unwrap_err();
    assert!(error.to_string().contains("between 1 and 32"), "{error}");
    assert!(settings(33, &["q_proj"])
        .validate(Some(&config), origin)
        .is_ok());
}

#[test]
fn an_adapter_of_another_base_is_refused() {
    let device = Default::default();
    let config = tiny();
    let lora = settings(4, &["q_proj"]);
    let model = build_model::<B>(&config, &mut RandomWeights::new(1), &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(
        &attach_lora(model, &lora, false, 1),
        &lora,
        "tiny",
        dir.path(),
    )
    .unwrap();

    let mut other = config.clone();
    other.hidden_size = 32;
    other.head_dim = 8;
    let base = build_model::<B>(&other, &mut RandomWeights::new(1), &device).unwrap();
    let error = load_adapter(freeze(base, false), &other, dir.path())
        .expect_err("a mismatched adapter must be refused")
        .to_string();
    assert!(
        error.contains("adapter_model.safetensors") && error.contains("lora_A"),
        "{error}"
    );

    let mut fewer_layers = config.clone();
    fewer_layers.num_hidden_layers = 2;
    let base = build_model::<B>(&fewer_layers, &mut RandomWeights::new(1), &device).unwrap();
    let error = load_adapter(freeze(base, false), &fewer_layers, dir.path())
        .expect_err("an adapter with extra layers must be refused")
        .to_string();
    assert!(error.contains("layers.2"), "{error}");
}

/// An adapter PEFT itself wrote (tests/fixtures/peft-adapter) gives PEFT's logits on its base,
/// merged or not.
fn a_peft_written_adapter_gives_peft_logits<Bk: Backend>() {
    let base_dir = model_dir("teacher");
    let adapter_dir = fixtures().join("../peft-adapter");
    let reference = Reference::open(adapter_dir.join("reference.safetensors"));
    let rows = reference.rows("input_ids");
    let mask = AttentionMask::full(rows.len(), rows[0].len());
    let expected = reference.f32("logits");
    let device = Default::default();

    let (base, config) = qwen2::load_model::<Bk>(&base_dir, &device).unwrap();
    let (adapted, settings) = load_adapter(freeze(base, false), &config, &adapter_dir).unwrap();
    assert_eq!((settings.rank, settings.alpha), (4, 8.0));
    let logits = to_vec(adapted.forward(ids_tensor(&rows), &mask, false).logits);
    let error = max_abs_diff(&logits, &expected);
    assert!(error < 1e-4, "adapter logits differ from PEFT's by {error}");

    let (merged, _, _) = qwen2::load_merged::<Bk>(&base_dir, &adapter_dir, &device).unwrap();
    assert!(!merged.has_lora());
    let logits = to_vec(merged.forward(ids_tensor(&rows), &mask, false).logits);
    let error = max_abs_diff(&logits, &expected);
    assert!(error < 1e-4, "merged logits differ from PEFT's by {error}");
}

qwen2::on_every_cpu_backend!(a_peft_written_adapter_gives_peft_logits);
