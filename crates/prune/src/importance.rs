//! How much each part of the teacher matters, measured on calibration blocks.
//!
//! Depth (per layer), both printed, either one choosing:
//! - Block Influence (ShortGPT; Minitron's depth study): `1 - cos(x_in, x_out)` averaged over
//!   real tokens, where `x_in` and `x_out` are the layer's input and output hidden states. A
//!   layer that barely turns its input matters little.
//! - Loss without the layer: the next-token cross-entropy of the teacher with that layer
//!   alone skipped. Its increase over the full model is what removing it costs.
//!
//! Width (Minitron's activation importance), per layer:
//! - an FFN neuron: mean |silu(gate(x)) * up(x)| over real tokens, what `down_proj` reads;
//! - an attention head: mean L2 norm of the head's output over real tokens;
//! - an embedding channel: mean |value| of the channel after the layer's two RMSNorms (the
//!   inputs of attention and of the MLP), summed over the layers the student keeps.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use preprocess::Block;
use qwen2::loss::next_token_cross_entropy;
use qwen2::{AttentionMask, LayerProbe, Model};
use serde::Serialize;

/// The measured importance of every layer, head, FFN neuron and embedding channel.
#[derive(Debug, Clone, Serialize)]
pub struct Importance {
    pub blocks: usize,
    /// Real tokens the activations were averaged over.
    pub tokens: usize,
    /// Next-token cross-entropy of the whole teacher on the calibration blocks.
    pub loss: f64,
    /// Per layer: 1 - mean cosine of its input and output hidden states.
    pub block_influence: Vec<f64>,
    /// Per layer: the cross-entropy with that layer alone skipped.
    pub loss_without_layer: Vec<f64>,
    /// Per layer, per FFN neuron: mean |activation|.
    pub neurons: Vec<Vec<f64>>,
    /// Per layer, per query head: mean L2 norm of its output.
    pub heads: Vec<Vec<f64>>,
    /// Per layer, per embedding channel: mean |value| after input_layernorm plus the same
    /// after post_attention_layernorm.
    pub channels: Vec<Vec<f64>>,
}

impl Importance {
    /// The loss each layer's removal adds, `loss_without_layer - loss`.
    pub fn loss_increase(&self) -> Vec<f64> {
        self.loss_without_layer
            .iter()
            .map(|l| l - self.loss)
            .collect()
    }
}

/// Measures [`Importance`] of `model` (a non-autodiff backend) on `blocks`, calling
/// `progress(done, total)` after each block.
pub fn measure_importance<B: Backend>(
    model: &Model<B>,
    blocks: &[Block],
    mut progress: impl FnMut(usize, usize),
) -> Importance {
    let layers = model.num_layers();
    let first = &model.layers[0];
    let heads = first.self_attn.num_heads;
    let head_dim = first.self_attn.head_dim;
    let hidden = model.hidden_size();
    let intermediate = first.mlp.down_proj.weight.dims()[0];
    let mut sums = Importance {
        blocks: blocks.len(),
        tokens: 0,
        loss: 0.0,
        block_influence: vec![0.0; layers],
        loss_without_layer: vec![0.0; layers],
        neurons: vec![vec![0.0; intermediate]; layers],
        heads: vec![vec![0.0; heads]; layers],
        channels: vec![vec![0.0; hidden]; layers],
    };
    let mut labels = 0usize;
    let device = model.device();
    for (done, block) in blocks.iter().enumerate() {
        let seq = block.ids.len();
        let (input_ids, mask) = block_input::<B>(block, &device);
        let real: Vec<f32> = (0..seq)
            .map(|t| f32::from(u8::from(t < block.real_len)))
            .collect();
        let real = Tensor::<B, 3>::from_data(TensorData::new(real, [1, seq, 1]), &device);
        let context = model.layer_context(&mask);

        // Every layer's input, and the width measures on the way.
        let mut states = Vec::with_capacity(layers + 1);
        let mut x = model.embed(input_ids);
        for layer in 0..layers {
            let mut probe = LayerProbe::default();
            let output = model.layer_forward_probed(layer, x.clone(), &context, &mut probe);
            let cosine =
                (x.clone() * output.clone()).sum_dim(2) / (norm(x.clone()) * norm(output.clone()));
            sums.block_influence[layer] += f64::from(sum(cosine * real.clone()));
            let activation = probe.activation.expect("probed");
            add(&mut sums.neurons[layer], activation.abs() * real.clone());
            let head_norms = norm(
                probe
                    .heads
                    .expect("probed")
                    .reshape([1, seq, heads, head_dim]),
            )
            .reshape([1, seq, heads]);
            add(&mut sums.heads[layer], head_norms * real.clone());
            let normed = probe.attention_input.expect("probed").abs()
                + probe.mlp_input.expect("probed").abs();
            add(&mut sums.channels[layer], normed * real.clone());
            states.push(x);
            x = output;
        }
        states.push(x);

        let loss_of = |last: Tensor<B, 3>| cross_entropy_sum(model, last, block, &mask);
        let (loss, count) = loss_of(states[layers].clone());
        sums.loss += loss;
        labels += count;
        for (skipped, input) in states[..layers].iter().enumerate() {
            // The skipped layer's input goes straight on to the next layer.
            let mut x = input.clone();
            for layer in skipped + 1..layers {
                x = model.layer_forward(layer, x, &context);
            }
            sums.loss_without_layer[skipped] += loss_of(x).0;
        }
        sums.tokens += block.real_len;
        progress(done + 1, blocks.len());
    }

    let tokens = sums.tokens.max(1) as f64;
    let labels = labels.max(1) as f64;
    sums.loss /= labels;
    for value in &mut sums.loss_without_layer {
        *value /= labels;
    }
    for value in &mut sums.block_influence {
        *value = 1.0 - *value / tokens;
    }
    for per_layer in [&mut sums.neurons, &mut sums.heads, &mut sums.channels] {
        for values in per_layer.iter_mut() {
            values.iter_mut().for_each(|v| *v /= tokens);
        }
    }
    sums
}

/// The summed next-token cross-entropy of `block` and its label count, from the output of
/// the last decoder layer `last` (before the final norm).
fn cross_entropy_sum<B: Backend>(
    model: &Model<B>,
    last: Tensor<B, 3>,
    block: &Block,
    mask: &AttentionMask,
) -> (f64, usize) {
    let logits = model.lm_head(model.norm.forward(last));
    let ce = next_token_cross_entropy(logits, std::slice::from_ref(&block.ids), mask);
    (f64::from(sum(ce.per_token)), ce.count)
}

/// Next-token cross-entropy of `model` over `blocks` (mean over every real label), one block
/// at a time so that only one block's logits exist at once.
pub fn held_out_loss<B: Backend>(model: &Model<B>, blocks: &[Block]) -> f64 {
    let device = model.device();
    let (mut total, mut labels) = (0.0, 0usize);
    for block in blocks {
        let (input_ids, mask) = block_input::<B>(block, &device);
        let context = model.layer_context(&mask);
        let mut x = model.embed(input_ids);
        for layer in 0..model.num_layers() {
            x = model.layer_forward(layer, x, &context);
        }
        let (loss, count) = cross_entropy_sum(model, x, block, &mask);
        total += loss;
        labels += count;
    }
    total / labels.max(1) as f64
}

/// A block as a batch of one: `input_ids [1, T]` and its mask.
fn block_input<B: Backend>(
    block: &Block,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, AttentionMask) {
    let seq = block.ids.len();
    let mask = AttentionMask {
        rows: vec![(0..seq).map(|t| t < block.real_len).collect()],
    };
    let ids: Vec<i64> = block.ids.iter().map(|&id| id as i64).collect();
    let input_ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, seq]), device);
    (input_ids, mask)
}

/// L2 norm over the last axis, kept as size 1.
fn norm<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.square().sum_dim(D - 1).sqrt()
}

fn sum<B: Backend, const D: usize>(x: Tensor<B, D>) -> f32 {
    x.sum().into_scalar().elem()
}

/// Adds `x [1, T, N]` summed over tokens to `into [N]`.
fn add<B: Backend>(into: &mut [f64], x: Tensor<B, 3>) {
    let [_, _, width] = x.dims();
    let summed = x
        .sum_dim(1)
        .reshape([width])
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("float tensor data");
    for (total, value) in into.iter_mut().zip(summed) {
        *total += f64::from(value);
    }
}
