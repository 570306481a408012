//! Giving a frozen model fresh adapters, and folding adapters back into plain weights.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};

use crate::lora::adapter::Lora;
use crate::lora::settings::LoraSettings;
use crate::model::{freeze, Model};
use crate::weight::{transpose_matrix, Weight};

/// Freezes `model` (see [`freeze`]) and gives each targeted layer a fresh adapter,
/// initialised as PEFT does from `seed`.
pub fn attach_lora<B: Backend>(
    model: Model<B>,
    settings: &LoraSettings,
    frozen_bf16: bool,
    seed: u64,
) -> Model<B> {
    let mut model = freeze(model, frozen_bf16);
    let device = model.device();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let targets = settings.targets();
    for (place, (_, short, linear)) in model.linears_mut().into_iter().enumerate() {
        if !targets.contains(&short) {
            continue;
        }
        let [inputs, outputs] = linear.weight.dims();
        let bound = 1.0 / (inputs as f32).sqrt();
        let a: Vec<f32> = (0..inputs * settings.rank)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        // Drawn as PyTorch's `[r, in]` and stored transposed, so a seed gives one adapter.
        let a = transpose_matrix(&a, settings.rank, inputs);
        linear.lora = Some(Lora {
            lora_a: Param::from_tensor(Tensor::from_data(
                TensorData::new(a, [inputs, settings.rank]),
                &device,
            )),
            lora_b: Param::from_tensor(Tensor::zeros([settings.rank, outputs], &device)),
            scaling: settings.scaling(),
            dropout: settings.dropout,
            place,
        });
    }
    model
}

/// Folds every adapter into its base weight (`W += scaling * A B`) and drops the adapters.
/// The merged weights are plain f32 parameters.
pub fn merge_lora<B: Backend>(mut model: Model<B>) -> Model<B> {
    for (_, _, linear) in model.linears_mut() {
        if let Some(lora) = linear.lora.take() {
            let merged = lora.merged_into(&linear.weight);
            linear.weight = Weight::from_param(Param::from_tensor(merged));
        }
    }
    model
}
