//! One linear layer's adapter, the part of LoRA the model runs: `dropout(x) A B * scaling`
//! beside the frozen weight.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};

use crate::weight::Weight;

/// One layer's adapter, in Burn's `[in, out]` layout: `lora_a` is PEFT's `lora_A.weight`
/// transposed (`[in, r]`), `lora_b` its `lora_B.weight` transposed (`[r, out]`).
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    pub lora_a: Param<Tensor<B, 2>>,
    pub lora_b: Param<Tensor<B, 2>>,
    pub scaling: f64,
    pub dropout: f64,
    /// This adapter's place among the model's adapters: its dropout masks are drawn from
    /// `(dropout seed, place)`.
    pub place: usize,
}

thread_local! {
    /// The seed of the dropout masks while a training pass runs ([`with_dropout`]); `None`
    /// (evaluation, generation): no dropout.
    static DROPOUT_SEED: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Runs `pass` with LoRA dropout on, its masks drawn from `seed` and each adapter's place, so
/// running the same layer twice under one seed (activation checkpointing recomputes layers)
/// draws the same masks, and a resumed run the uninterrupted run's.
pub fn with_dropout<R>(seed: u64, pass: impl FnOnce() -> R) -> R {
    struct Off;
    impl Drop for Off {
        fn drop(&mut self) {
            DROPOUT_SEED.set(None);
        }
    }
    DROPOUT_SEED.set(Some(seed));
    let _off = Off;
    pass()
}

impl<B: Backend> Lora<B> {
    /// The adapter's term, `dropout(x) A B * scaling`: `[B, T, in] -> [B, T, out]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = match DROPOUT_SEED.get() {
            Some(seed) if self.dropout > 0.0 => self.drop_out(x, seed),
            _ => x,
        };
        x.matmul(self.lora_a.val().unsqueeze::<3>())
            .matmul(self.lora_b.val().unsqueeze::<3>())
            * self.scaling
    }

    /// Inverted dropout as torch's: each element kept with probability 1 - p and scaled by
    /// 1 / (1 - p); the mask is drawn on the host from `(seed, place)` alone.
    fn drop_out(&self, x: Tensor<B, 3>, seed: u64) -> Tensor<B, 3> {
        let dims = x.dims();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(
            seed ^ (self.place as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let keep = (1.0 - self.dropout) as f32;
        let mask: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|_| {
                if rng.random::<f32>() < keep {
                    1.0 / keep
                } else {
                    0.0
                }
            })
            .collect();
        x * Tensor::from_data(TensorData::new(mask, dims), &self.lora_a.device())
    }

    /// `weight + scaling * A B`, `[in, out]`: the base weight with this adapter merged in.
    pub fn merged_into(&self, weight: &Weight<B>) -> Tensor<B, 2> {
        weight.val() + self.lora_a.val().matmul(self.lora_b.val()) * self.scaling
    }
}
