//! The decoder of Qwen2ForCausalLM, LlamaForCausalLM and Qwen3ForCausalLM, written to equal
//! Hugging Face transformers to float32 precision. The three differ only in switches of
//! [`crate::config::DecoderVariant`]: which linear layers have biases, Qwen3's per-head RMSNorm
//! of q and k, and Llama 3's RoPE frequency scaling. Structs are named after the parts of the
//! paper: `Attention`, `Mlp`, `DecoderLayer`, `Model`.
//!
//! Conventions that matter for parity (see tests/fixtures/qwen2-parity/README.md):
//! - attention mask = causal AND key padding; masked scores are set to f32::MIN (as HF's
//!   `finfo.min`), so a row that sees no key gives a uniform softmax, never NaN;
//! - RoPE is rotate-half over the whole head dim, applied to q and k after their biases (and
//!   after Qwen3's q/k norms);
//! - GQA: kv head h serves query heads h*g .. h*g+g-1 (`repeat_interleave` order);
//! - RMSNorm: x * rsqrt(mean(x^2) + eps) * weight, in f32;
//! - hidden states: layers + 1 entries, the last one after the final norm.
//!
//! Linear weights are kept as Burn stores them, `[in, out]` (the transpose of PyTorch's
//! `[out, in]`), so that every matmul reads a contiguous operand; loading and saving transpose.
//! The token embedding is kept as `[hidden, vocab]` for the same reason: it is the lm_head
//! operand of tied models, and an embedding lookup is a column `select`.

use burn::module::{Module, Param};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::config::RopeScaling;
use crate::lora::adapter::Lora;
use crate::weight::Weight;

/// A linear layer `y = x W + b`, with `W` as [`Weight`] (trainable, or frozen and possibly in
/// bf16) and, when a LoRA student trains, an adapter beside it (crate::lora).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[in, out]`
    pub weight: Weight<B>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub lora: Option<Lora<B>>,
}

impl<B: Backend> Linear<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let mut y = self.weight.right_matmul(x.clone());
        if let Some(bias) = &self.bias {
            y = y + bias.val().unsqueeze::<3>();
        }
        match &self.lora {
            Some(lora) => y + lora.forward(x),
            None => y,
        }
    }
}

#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Normalizes the last axis.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if let Some(normed) = crate::flex_kernels::rms_norm(&x, &self.weight.val(), self.eps) {
            return normed;
        }
        let rms = (x.clone().square().mean_dim(D - 1) + self.eps).sqrt();
        // 1/rms by a true division, as torch's rsqrt does on CPU: burn-ndarray's `recip` takes
        // an approximate SIMD reciprocal (about 12 bits) on aligned data and an exact one
        // otherwise, so it is both inexact and different from run to run.
        let inverse_rms = Tensor::ones_like(&rms) / rms;
        x * inverse_rms * self.weight.val().unsqueeze::<D>()
    }
}

/// RoPE's inverse frequencies `theta^(-2i/d)`, rescaled as `scaling` says, in the float32
/// arithmetic of transformers' rope initialisers (`_compute_default_rope_parameters`,
/// `_compute_linear_scaling_rope_parameters`, `_compute_llama3_parameters`).
pub fn inverse_frequencies(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f32> {
    let base: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect();
    match *scaling {
        RopeScaling::Default => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let (factor, low, high) = (
                factor as f32,
                low_freq_factor as f32,
                high_freq_factor as f32,
            );
            let context = original_max_position_embeddings as f32;
            let (low_freq_wavelength, high_freq_wavelength) = (context / low, context / high);
            base.iter()
                .map(|&frequency| {
                    let wavelength = 2.0 * std::f32::consts::PI / frequency;
                    if wavelength < high_freq_wavelength {
                        frequency
                    } else if wavelength > low_freq_wavelength {
                        frequency / factor
                    } else {
                        // Between the two: blend the scaled and the unscaled frequency.
                        let smooth = (context / wavelength - low) / (high - low);
                        (1.0 - smooth) * frequency / factor + smooth * frequency
                    }
                })
                .collect()
        }
    }
}

/// Rotary position embedding tables for the positions of one forward pass.
pub struct Rope<B: Backend> {
    /// `[B, T, 1, head_dim]`: cos(cat(freqs, freqs)).
    cos: Tensor<B, 4>,
    /// `[B, T, 1, head_dim]`: sin(cat(freqs, freqs)) with the first half negated, the sign
    /// rotate_half puts on the second half of x (multiplying by -s equals negating x first).
    signed_sin: Tensor<B, 4>,
}

impl<B: Backend> Rope<B> {
    /// `positions[b][t]` is the absolute position of token t of row b; `inv_freq` has
    /// head_dim / 2 entries ([`inverse_frequencies`]).
    pub fn new(positions: &[Vec<usize>], inv_freq: &[f32], device: &B::Device) -> Self {
        let head_dim = 2 * inv_freq.len();
        let batch = positions.len();
        let seq = positions.first().map_or(0, Vec::len);
        let mut cos = Vec::with_capacity(batch * seq * head_dim);
        let mut signed_sin = Vec::with_capacity(batch * seq * head_dim);
        for row in positions {
            for &position in row {
                for sign in [-1.0f32, 1.0] {
                    for &f in inv_freq {
                        let angle = position as f32 * f;
                        cos.push(angle.cos());
                        signed_sin.push(sign * angle.sin());
                    }
                }
            }
        }
        let shape = [batch, seq, 1, head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            signed_sin: Tensor::from_data(TensorData::new(signed_sin, shape), device),
        }
    }

    /// `x [B, T, heads, head_dim]` (heads before they move to axis 1, so x is contiguous and the
    /// tables broadcast over heads): x * cos + rotate_half(x) * sin, with rotate_half(x) =
    /// cat(-x[d/2:], x[:d/2]), computed as cat(x[d/2:], x[:d/2]) * signed_sin.
    fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, _, head_dim] = x.dims();
        let half = head_dim / 2;
        if let Some(rotated) = crate::flex_kernels::rope(&x, &self.cos, &self.signed_sin) {
            return rotated;
        }
        let first = x.clone().narrow(3, 0, half);
        let second = x.clone().narrow(3, half, half);
        let swapped = Tensor::cat(vec![second, first], 3);
        x * self.cos.clone() + swapped * self.signed_sin.clone()
    }
}

/// Keys and values of the tokens seen so far, for one layer. The buffers are allocated with
/// room to spare (doubling when full), and each step writes its new positions in place, so a
/// decoding step copies only its own keys and values, not the whole cache.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    /// `[B, kv_heads, capacity, head_dim]`; positions `len..` are unused.
    keys: Tensor<B, 4>,
    values: Tensor<B, 4>,
    len: usize,
}

impl<B: Backend> LayerCache<B> {
    /// Room for this many positions at first: a typical prompt plus a short generation.
    const INITIAL_CAPACITY: usize = 256;

    /// Appends `keys`/`values` `[B, kv_heads, T, head_dim]` and returns views of every cached
    /// position, `[B, kv_heads, len, head_dim]`.
    fn append(
        cache: &mut Option<Self>,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, kv_heads, new, head_dim] = keys.dims();
        let device = keys.device();
        let (len, capacity) = cache.as_ref().map_or((0, 0), |c| (c.len, c.keys.dims()[2]));
        let end = len + new;
        if end > capacity {
            let capacity = end.max(2 * capacity).max(Self::INITIAL_CAPACITY);
            let grow = |old: Option<Tensor<B, 4>>| {
                let buffer = Tensor::zeros([batch, kv_heads, capacity, head_dim], &device);
                match old {
                    Some(old) if len > 0 => buffer.slice_assign(
                        [0..batch, 0..kv_heads, 0..len, 0..head_dim],
                        old.narrow(2, 0, len),
                    ),
                    _ => buffer,
                }
            };
            let old = cache.take();
            let (old_keys, old_values) =
                old.map_or((None, None), |c| (Some(c.keys), Some(c.values)));
            *cache = Some(Self {
                keys: grow(old_keys),
                values: grow(old_values),
                len,
            });
        }
        let layer = cache.as_mut().expect("allocated above");
        let range = [0..batch, 0..kv_heads, len..end, 0..head_dim];
        // Taking the buffers out leaves them uniquely owned, so the backends write in place.
        let placeholder = || Tensor::empty([0, 0, 0, 0], &device);
        let buffer = std::mem::replace(&mut layer.keys, placeholder());
        layer.keys = buffer.slice_assign(range.clone(), keys);
        let buffer = std::mem::replace(&mut layer.values, placeholder());
        layer.values = buffer.slice_assign(range, values);
        layer.len = end;
        (
            layer.keys.clone().narrow(2, 0, end),
            layer.values.clone().narrow(2, 0, end),
        )
    }
}

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    /// Qwen3's per-head RMSNorm of queries and keys (over head_dim, before RoPE).
    pub q_norm: Option<RmsNorm<B>>,
    pub k_norm: Option<RmsNorm<B>>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl<B: Backend> Attention<B> {
    /// `x: [B, T, hidden]`; `blocked: [B, 1, T, S]`, true where a query may not see a key.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        blocked: &Tensor<B, 4, Bool>,
        cache: Option<&mut Option<LayerCache<B>>>,
    ) -> Tensor<B, 3> {
        self.o_proj.forward(self.heads(x, rope, blocked, cache))
    }

    /// Every head's output before `o_proj` mixes them: `[B, T, heads * head_dim]`, head h in
    /// columns `h * head_dim ..`.
    pub fn heads(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        blocked: &Tensor<B, 4, Bool>,
        cache: Option<&mut Option<LayerCache<B>>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        // [B, T, n * head_dim] -> [B, n, T, head_dim], normed (Qwen3) and rotated on the way.
        let heads = |t: Tensor<B, 3>, n: usize, norm: Option<&RmsNorm<B>>, rotate: bool| {
            let t = t.reshape([batch, seq, n, self.head_dim]);
            let t = match norm {
                Some(norm) => norm.forward(t),
                None => t,
            };
            let t = match rotate {
                true => rope.apply(t),
                false => t,
            };
            t.swap_dims(1, 2)
        };
        let queries = heads(
            self.q_proj.forward(x.clone()),
            self.num_heads,
            self.q_norm.as_ref(),
            true,
        );
        let mut keys = heads(
            self.k_proj.forward(x.clone()),
            self.num_kv_heads,
            self.k_norm.as_ref(),
            true,
        );
        let mut values = heads(self.v_proj.forward(x), self.num_kv_heads, None, false);
        if let Some(cache) = cache {
            (keys, values) = LayerCache::append(cache, keys, values);
        }
        let keys_len = keys.dims()[2];

        // GQA without copying keys and values: the g query heads that share a kv head are laid
        // out contiguously (repeat_interleave order), so they fold into the query-length axis.
        let group = self.num_heads / self.num_kv_heads;
        let queries = crate::flex_kernels::contiguous(queries).reshape([
            batch,
            self.num_kv_heads,
            group * seq,
            self.head_dim,
        ]);
        let scale = (self.head_dim as f64).powf(-0.5);
        let scores = queries.matmul(keys.swap_dims(2, 3));
        let probabilities =
            match crate::flex_kernels::masked_softmax(&scores, scale as f32, blocked) {
                Some(probabilities) => probabilities,
                None => self.probabilities(scores * scale, blocked, group, seq, keys_len),
            };
        let heads = probabilities
            .matmul(values)
            .reshape([batch, self.num_heads, seq, self.head_dim])
            .swap_dims(1, 2);
        crate::flex_kernels::contiguous(heads).reshape([batch, seq, self.num_heads * self.head_dim])
    }

    /// `softmax(mask_fill(scores, blocked, f32::MIN))` for scores `[B, kv_heads, group * T, S]`
    /// and `blocked [B, 1, T, S]`, expanded over the folded query heads.
    fn probabilities(
        &self,
        scores: Tensor<B, 4>,
        blocked: &Tensor<B, 4, Bool>,
        group: usize,
        seq: usize,
        keys_len: usize,
    ) -> Tensor<B, 4> {
        let batch = scores.dims()[0];
        let blocked = blocked
            .clone()
            .unsqueeze_dim::<5>(2)
            .expand([batch, 1, group, seq, keys_len])
            .reshape([batch, 1, group * seq, keys_len])
            .expand([batch, self.num_kv_heads, group * seq, keys_len]);
        softmax(scores.mask_fill(blocked, f32::MIN), 3)
    }
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.down_proj.forward(self.activation(x))
    }

    /// The intermediate activation `silu(gate(x)) * up(x)`, `[B, T, intermediate]`: what
    /// `down_proj` reads, one column per FFN neuron.
    pub fn activation(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let (gate, up) = (self.gate_proj.forward(x.clone()), self.up_proj.forward(x));
        match crate::flex_kernels::silu_times(&gate, &up) {
            Some(activation) => activation,
            None => silu(gate) * up,
        }
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub self_attn: Attention<B>,
    pub mlp: Mlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// The seven linear layers with their names under the layer (`self_attn.q_proj`) and their
    /// short names (`q_proj`, as PEFT targets them), in checkpoint order.
    pub fn linears(&self) -> [(&'static str, &'static str, &Linear<B>); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            ("self_attn.q_proj", "q_proj", &a.q_proj),
            ("self_attn.k_proj", "k_proj", &a.k_proj),
            ("self_attn.v_proj", "v_proj", &a.v_proj),
            ("self_attn.o_proj", "o_proj", &a.o_proj),
            ("mlp.gate_proj", "gate_proj", &m.gate_proj),
            ("mlp.up_proj", "up_proj", &m.up_proj),
            ("mlp.down_proj", "down_proj", &m.down_proj),
        ]
    }

    /// [`DecoderLayer::linears`], to change them.
    pub fn linears_mut(&mut self) -> [(&'static str, &'static str, &mut Linear<B>); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            ("self_attn.q_proj", "q_proj", &mut a.q_proj),
            ("self_attn.k_proj", "k_proj", &mut a.k_proj),
            ("self_attn.v_proj", "v_proj", &mut a.v_proj),
            ("self_attn.o_proj", "o_proj", &mut a.o_proj),
            ("mlp.gate_proj", "gate_proj", &mut m.gate_proj),
            ("mlp.up_proj", "up_proj", &mut m.up_proj),
            ("mlp.down_proj", "down_proj", &mut m.down_proj),
        ]
    }

    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        blocked: &Tensor<B, 4, Bool>,
        cache: Option<&mut Option<LayerCache<B>>>,
    ) -> Tensor<B, 3> {
        self.forward_probed(x, rope, blocked, cache, None)
    }

    /// The forward pass, handing its inner activations to `probe` when one is given (what
    /// importance measures for pruning read).
    fn forward_probed(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        blocked: &Tensor<B, 4, Bool>,
        cache: Option<&mut Option<LayerCache<B>>>,
        probe: Option<&mut LayerProbe<B>>,
    ) -> Tensor<B, 3> {
        let attention_input = self.input_layernorm.forward(x.clone());
        let heads = self
            .self_attn
            .heads(attention_input.clone(), rope, blocked, cache);
        let x = x + self.self_attn.o_proj.forward(heads.clone());
        let mlp_input = self.post_attention_layernorm.forward(x.clone());
        let activation = self.mlp.activation(mlp_input.clone());
        let x = x + self.mlp.down_proj.forward(activation.clone());
        if let Some(probe) = probe {
            *probe = LayerProbe {
                attention_input: Some(attention_input),
                heads: Some(heads),
                mlp_input: Some(mlp_input),
                activation: Some(activation),
            };
        }
        x
    }
}

/// The inner activations of one decoder layer's forward pass, all `[B, T, _]`: the inputs of
/// attention and of the MLP after their norms, every head's output, and the FFN activation.
pub struct LayerProbe<B: Backend> {
    pub attention_input: Option<Tensor<B, 3>>,
    pub heads: Option<Tensor<B, 3>>,
    pub mlp_input: Option<Tensor<B, 3>>,
    pub activation: Option<Tensor<B, 3>>,
}

impl<B: Backend> Default for LayerProbe<B> {
    fn default() -> Self {
        Self {
            attention_input: None,
            heads: None,
            mlp_input: None,
            activation: None,
        }
    }
}

/// The causal LM: embeddings, decoder layers, final norm, lm_head.
#[derive(Module, Debug)]
pub struct Model<B: Backend> {
    /// `[hidden, vocab]`: the transpose of HF's `model.embed_tokens.weight` (see module docs).
    pub embed_tokens: Weight<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    /// `[hidden, vocab]`; `None` when the lm_head is tied to the embeddings.
    pub lm_head: Option<Weight<B>>,
    /// RoPE's inverse frequencies, head_dim / 2 of them ([`inverse_frequencies`]).
    #[module(skip)]
    pub inv_freq: Vec<f32>,
}

/// What a forward pass returns.
pub struct ModelOutput<B: Backend> {
    /// `[B, T, vocab]`
    pub logits: Tensor<B, 3>,
    /// On request: layers + 1 tensors `[B, T, hidden]`, in the transformers convention.
    pub hidden_states: Option<Vec<Tensor<B, 3>>>,
}

/// The attention mask of a batch, kept on the host: it only decides which scores are blocked.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMask {
    /// `rows[b][s]` is true when key s of row b is a real token.
    pub rows: Vec<Vec<bool>>,
}

impl AttentionMask {
    /// Every token real.
    pub fn full(batch: usize, seq: usize) -> Self {
        Self {
            rows: vec![vec![true; seq]; batch],
        }
    }

    /// From a `[B, T]` tensor of 0/1.
    pub fn from_tensor<B: Backend>(mask: Tensor<B, 2, Int>) -> Self {
        let [batch, seq] = mask.dims();
        let values = mask
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .expect("int tensor data");
        Self {
            rows: values
                .chunks(seq.max(1))
                .take(batch)
                .map(|r| r.iter().map(|&v| v != 0).collect())
                .collect(),
        }
    }

    fn batch(&self) -> usize {
        self.rows.len()
    }

    fn len(&self) -> usize {
        self.rows.first().map_or(0, Vec::len)
    }
}

/// What every decoder layer of one full (uncached) forward pass reads: the rotary tables of
/// its positions and which attention scores are blocked. Built once per pass by
/// [`Model::layer_context`], for running the layers one at a time ([`Model::layer_forward`]).
pub struct LayerContext<B: Backend> {
    rope: Rope<B>,
    blocked: Tensor<B, 4, Bool>,
}

/// State of incremental decoding: the cached keys/values and the mask of the keys they hold.
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerCache<B>>>,
    mask: AttentionMask,
}

impl<B: Backend> KvCache<B> {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            mask: AttentionMask { rows: Vec::new() },
        }
    }

    /// Number of tokens already seen.
    pub fn len(&self) -> usize {
        self.mask.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<B: Backend> Model<B> {
    pub fn vocab_size(&self) -> usize {
        self.embed_tokens.dims()[1]
    }

    pub fn hidden_size(&self) -> usize {
        self.embed_tokens.dims()[0]
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Every weight the model holds: its parameters (Burn's `num_params`) and the matrices
    /// frozen in bf16, which are not parameters.
    pub fn num_weights(&self) -> usize {
        let frozen = |weight: &Weight<B>| {
            weight
                .frozen
                .as_ref()
                .map_or(0, |matrix| matrix.dims()[0] * matrix.dims()[1])
        };
        let layers: usize = self
            .layers
            .iter()
            .flat_map(|layer| layer.linears())
            .map(|(_, _, linear)| frozen(&linear.weight))
            .sum();
        burn::module::Module::num_params(self)
            + frozen(&self.embed_tokens)
            + self.lm_head.as_ref().map_or(0, frozen)
            + layers
    }

    pub fn device(&self) -> B::Device {
        self.norm.weight.device()
    }

    /// Full forward pass over a batch (no cache). Logits at every position.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: &AttentionMask,
        output_hidden_states: bool,
    ) -> ModelOutput<B> {
        let (hidden, hidden_states) =
            self.forward_hidden(input_ids, attention_mask, output_hidden_states);
        ModelOutput {
            logits: self.lm_head(hidden),
            hidden_states,
        }
    }

    /// The final normed hidden state `[B, T, hidden]` (and, on request, every hidden state),
    /// without the lm_head: losses over a large vocabulary apply `lm_head` in chunks.
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: &AttentionMask,
        output_hidden_states: bool,
    ) -> (Tensor<B, 3>, Option<Vec<Tensor<B, 3>>>) {
        let [batch, seq] = input_ids.dims();
        assert_eq!(
            (attention_mask.batch(), attention_mask.len()),
            (batch, seq),
            "attention mask shape must equal input_ids shape"
        );
        // Right padding keeps positions 0..T-1 (HF's default without position_ids).
        let positions = vec![(0..seq).collect::<Vec<_>>(); batch];
        let blocked = self.blocked_scores(attention_mask, 0, seq);
        self.run_layers(input_ids, &positions, &blocked, None, output_hidden_states)
    }

    /// The context of a full forward pass over `attention_mask`'s rows (right padding: positions
    /// 0..T-1, as [`Model::forward_hidden`] has them).
    pub fn layer_context(&self, attention_mask: &AttentionMask) -> LayerContext<B> {
        let (batch, seq) = (attention_mask.batch(), attention_mask.len());
        let positions = vec![(0..seq).collect::<Vec<_>>(); batch];
        LayerContext {
            rope: Rope::new(&positions, &self.inv_freq, &self.device()),
            blocked: self.blocked_scores(attention_mask, 0, seq),
        }
    }

    /// Decoder layer `index` alone, `[B, T, hidden] -> [B, T, hidden]` (its input is the
    /// hidden state `index` of [`Model::forward_hidden`], its output the state `index + 1`
    /// before the final norm).
    pub fn layer_forward(
        &self,
        index: usize,
        x: Tensor<B, 3>,
        context: &LayerContext<B>,
    ) -> Tensor<B, 3> {
        self.layers[index].forward(x, &context.rope, &context.blocked, None)
    }

    /// [`Model::layer_forward`], also filling `probe` with the layer's inner activations.
    pub fn layer_forward_probed(
        &self,
        index: usize,
        x: Tensor<B, 3>,
        context: &LayerContext<B>,
        probe: &mut LayerProbe<B>,
    ) -> Tensor<B, 3> {
        self.layers[index].forward_probed(x, &context.rope, &context.blocked, None, Some(probe))
    }

    /// One step of incremental decoding: `input_ids: [B, T_new]` continue the sequences held
    /// in `cache`; `new_mask` says which of the new tokens are real (all of them when decoding;
    /// a left-padded prompt has pads). Returns the logits of the last new position only,
    /// `[B, 1, vocab]`: generation reads no other, and the lm_head over a whole prompt would
    /// cost a quarter of a small model's prefill.
    pub fn forward_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        new_mask: &AttentionMask,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let past = cache.len();
        if cache.mask.rows.is_empty() {
            cache.mask.rows = vec![Vec::new(); batch];
        }
        for (row, new) in cache.mask.rows.iter_mut().zip(&new_mask.rows) {
            row.extend_from_slice(new);
        }
        // Positions count real tokens only, as HF generate derives them from the mask, so a
        // left-padded row starts at position 0 at its first real token.
        let positions: Vec<Vec<usize>> = cache
            .mask
            .rows
            .iter()
            .map(|row| {
                let mut real_before = 0usize;
                let all: Vec<usize> = row
                    .iter()
                    .map(|&real| {
                        // HF fills the position of a pad with 1; it is never attended anyway.
                        let position = if real { real_before } else { 1 };
                        real_before += usize::from(real);
                        position
                    })
                    .collect();
                all[past..].to_vec()
            })
            .collect();
        let blocked = self.blocked_scores(&cache.mask, past, seq);
        let (hidden, _) = self.run_layers(
            input_ids,
            &positions,
            &blocked,
            Some(&mut cache.layers),
            false,
        );
        self.lm_head(hidden.narrow(1, seq - 1, 1))
    }

    fn run_layers(
        &self,
        input_ids: Tensor<B, 2, Int>,
        positions: &[Vec<usize>],
        blocked: &Tensor<B, 4, Bool>,
        mut cache: Option<&mut Vec<Option<LayerCache<B>>>>,
        output_hidden_states: bool,
    ) -> (Tensor<B, 3>, Option<Vec<Tensor<B, 3>>>) {
        let device = self.device();
        let rope = Rope::new(positions, &self.inv_freq, &device);
        let mut x = self.embed(input_ids);
        let mut hidden_states = output_hidden_states.then(Vec::new);
        for (index, layer) in self.layers.iter().enumerate() {
            if let Some(states) = hidden_states.as_mut() {
                states.push(x.clone());
            }
            let layer_cache = cache.as_deref_mut().map(|layers| &mut layers[index]);
            x = layer.forward(x, &rope, blocked, layer_cache);
        }
        let x = self.norm.forward(x);
        if let Some(states) = hidden_states.as_mut() {
            states.push(x.clone());
        }
        (x, hidden_states)
    }

    /// `[B, T] -> [B, T, hidden]`
    pub fn embed(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let hidden = self.hidden_size();
        self.embed_tokens
            .select_columns(input_ids.reshape([batch * seq]))
            .reshape([batch, seq, hidden])
    }

    /// `[B, T, hidden] -> [B, T, vocab]`
    pub fn lm_head(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.lm_head
            .as_ref()
            .unwrap_or(&self.embed_tokens)
            .right_matmul(hidden)
    }

    /// `[B, 1, T, S]`, true where query t (at absolute index past + t) may not see key s:
    /// keys in the future, or padding.
    fn blocked_scores(&self, mask: &AttentionMask, past: usize, seq: usize) -> Tensor<B, 4, Bool> {
        let keys = mask.len();
        let mut blocked = Vec::with_capacity(mask.batch() * seq * keys);
        for row in &mask.rows {
            for query in 0..seq {
                let query_index = past + query;
                blocked.extend(
                    row.iter()
                        .enumerate()
                        .map(|(key, &real)| key > query_index || !real),
                );
            }
        }
        Tensor::from_data(
            TensorData::new(blocked, [mask.batch(), 1, seq, keys]),
            &self.device(),
        )
    }
}

impl<B: Backend> Model<B> {
    /// Every linear layer with its module name (`model.layers.3.mlp.up_proj`) and short name
    /// (`up_proj`), in layer order.
    pub fn linears_mut(&mut self) -> Vec<(String, &'static str, &mut Linear<B>)> {
        self.layers
            .iter_mut()
            .enumerate()
            .flat_map(|(index, layer)| {
                layer.linears_mut().map(|(part, short, linear)| {
                    (format!("model.layers.{index}.{part}"), short, linear)
                })
            })
            .collect()
    }

    /// Whether any layer carries an adapter.
    pub fn has_lora(&self) -> bool {
        self.layers
            .iter()
            .flat_map(|layer| layer.linears())
            .any(|(_, _, linear)| linear.lora.is_some())
    }
}

/// Stops gradients to every parameter of `model`; with `bf16`, its weight matrices move to
/// bf16 host storage ([`crate::weight::FrozenMatrix`]). Norms and biases (0.1% of the
/// parameters) stay f32.
pub fn freeze<B: Backend>(mut model: Model<B>, bf16: bool) -> Model<B> {
    let take = |weight: &mut Weight<B>| {
        std::mem::replace(
            weight,
            Weight {
                param: None,
                frozen: None,
            },
        )
    };
    model.embed_tokens = take(&mut model.embed_tokens).freeze(bf16);
    if let Some(lm_head) = model.lm_head.as_mut() {
        *lm_head = take(lm_head).freeze(bf16);
    }
    for (_, _, linear) in model.linears_mut() {
        linear.weight = take(&mut linear.weight).freeze(bf16);
    }
    // Norms and biases: no_grad on the whole module reaches the parameters left.
    model.no_grad()
}
