//! Building a `Model` from weights: a Hugging Face checkpoint, or random weights of a given
//! shape (benchmarks). Modules are built directly from the loaded tensors, never initialised
//! first and overwritten, so no second copy of the model ever exists.

use std::path::Path;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};

use crate::config::ModelConfig;
use crate::error::Result;
use crate::gguf::{is_gguf, GgufModel};
use crate::model::{inverse_frequencies, Attention, DecoderLayer, Linear, Mlp, Model, RmsNorm};
use crate::safetensors::{Checkpoint, Dtype};
use crate::weight::{FrozenDtype, FrozenMatrix, Weight};

/// Where parameter values come from, by Hugging Face name and PyTorch-layout shape.
pub trait WeightSource {
    /// The f32 values of `name`; with `transpose`, a 2-D tensor comes back as `[cols, rows]`.
    fn tensor(&mut self, name: &str, shape: &[usize], transpose: bool) -> Result<Vec<f32>>;
}

impl WeightSource for Checkpoint {
    fn tensor(&mut self, name: &str, shape: &[usize], transpose: bool) -> Result<Vec<f32>> {
        self.read_f32(name, shape, transpose)
    }
}

impl WeightSource for GgufModel {
    fn tensor(&mut self, name: &str, shape: &[usize], transpose: bool) -> Result<Vec<f32>> {
        let gguf_name = self.gguf_name(name).ok_or_else(|| {
            crate::error::ModelError::Invalid(format!("no GGUF tensor holds `{name}`"))
        })?;
        let values = self.file.read_f32(&gguf_name, shape)?;
        Ok(if transpose && shape.len() == 2 {
            crate::weight::transpose_matrix(&values, shape[0], shape[1])
        } else {
            values
        })
    }
}

/// Random weights as transformers initialises them (uniform with std 0.02 here; norms at 1),
/// for benchmarks and tests that need a model of a given shape, not a trained one.
pub struct RandomWeights {
    rng: rand::rngs::StdRng,
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }
}

impl WeightSource for RandomWeights {
    fn tensor(&mut self, name: &str, shape: &[usize], _transpose: bool) -> Result<Vec<f32>> {
        let count: usize = shape.iter().product();
        if name.ends_with("norm.weight") {
            return Ok(vec![1.0; count]);
        }
        // Uniform(-a, a) has std a/sqrt(3); 0.02 is transformers' initializer_range.
        let bound = 0.02 * 3f32.sqrt();
        Ok((0..count)
            .map(|_| self.rng.random_range(-bound..bound))
            .collect())
    }
}

/// A model's weights as they are stored: a Hugging Face folder or a GGUF file.
struct StoredModel {
    config: ModelConfig,
    source: Box<dyn WeightSource>,
    /// What `frozen_dtype = auto` chooses: bf16 for a bf16 checkpoint (nothing is rounded) and
    /// for a quantized GGUF (its dequantized values are exact in no type narrower than f32).
    auto_bf16: bool,
}

fn open_stored(path: &Path) -> Result<StoredModel> {
    if is_gguf(path) {
        let model = GgufModel::open(path)?;
        return Ok(StoredModel {
            config: model.config.clone(),
            auto_bf16: model.is_quantized(),
            source: Box::new(model),
        });
    }
    let config = ModelConfig::from_file(path)?;
    let checkpoint = Checkpoint::open(path)?;
    Ok(StoredModel {
        config,
        auto_bf16: checkpoint.dominant_dtype() == Some(Dtype::BF16),
        source: Box::new(checkpoint),
    })
}

/// The config and the weights of the model at `path` (a Hugging Face folder or a GGUF file),
/// to read tensor by tensor.
pub fn open_weights(path: &Path) -> Result<(ModelConfig, Box<dyn WeightSource>)> {
    let stored = open_stored(path)?;
    Ok((stored.config, stored.source))
}

/// Whether a frozen copy of the model at `path` keeps its matrices in bf16 under `dtype`.
pub fn frozen_in_bf16(path: &Path, dtype: FrozenDtype) -> Result<bool> {
    let auto_bf16 = if is_gguf(path) {
        crate::gguf::mostly_quantized(&gguf::GgufFile::open(path)?)
    } else {
        Checkpoint::open(path)?.dominant_dtype() == Some(Dtype::BF16)
    };
    Ok(dtype.stores_bf16(auto_bf16))
}

/// Loads a Qwen2 model (a checkpoint directory with config.json and safetensors, or a GGUF
/// file) onto `device`.
pub fn load_model<B: Backend>(path: &Path, device: &B::Device) -> Result<(Model<B>, ModelConfig)> {
    let mut stored = open_stored(path)?;
    let model = build_model(&stored.config, stored.source.as_mut(), device)?;
    Ok((model, stored.config))
}

/// Loads a model as a frozen model (a teacher, a LoRA base): no parameter takes a gradient,
/// and with bf16 storage each matrix is rounded as it is read, so the f32 model never exists.
/// Returns the bf16 decision with the model.
pub fn load_frozen_model<B: Backend>(
    path: &Path,
    device: &B::Device,
    dtype: FrozenDtype,
) -> Result<(Model<B>, ModelConfig, bool)> {
    let mut stored = open_stored(path)?;
    let bf16 = dtype.stores_bf16(stored.auto_bf16);
    let model = build_frozen_model(&stored.config, stored.source.as_mut(), device, bf16)?;
    Ok((model, stored.config, bf16))
}

/// Builds the model tensor by tensor from `source`.
pub fn build_model<B: Backend>(
    config: &ModelConfig,
    source: &mut dyn WeightSource,
    device: &B::Device,
) -> Result<Model<B>> {
    build(config, source, device, false)
}

/// Builds a frozen model (see [`load_frozen_model`]) tensor by tensor from `source`.
pub fn build_frozen_model<B: Backend>(
    config: &ModelConfig,
    source: &mut dyn WeightSource,
    device: &B::Device,
    bf16: bool,
) -> Result<Model<B>> {
    Ok(crate::model::freeze(
        build(config, source, device, bf16)?,
        bf16,
    ))
}

/// Builds the model tensor by tensor from `source`, matrices frozen in bf16 with `frozen_bf16`.
fn build<B: Backend>(
    config: &ModelConfig,
    source: &mut dyn WeightSource,
    device: &B::Device,
    frozen_bf16: bool,
) -> Result<Model<B>> {
    let h = config.hidden_size;
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    let i = config.intermediate_size;
    let v = config.vocab_size;

    fn vector<B: Backend>(
        source: &mut dyn WeightSource,
        name: &str,
        len: usize,
        device: &B::Device,
    ) -> Result<Param<Tensor<B, 1>>> {
        let values = source.tensor(name, &[len], false)?;
        Ok(Param::from_tensor(Tensor::from_data(
            TensorData::new(values, [len]),
            device,
        )))
    }
    // A PyTorch `[out, in]` matrix, kept as `[in, out]`.
    let matrix = |source: &mut dyn WeightSource,
                  name: &str,
                  out_features: usize,
                  in_features: usize,
                  device: &B::Device|
     -> Result<Weight<B>> {
        let values = source.tensor(name, &[out_features, in_features], true)?;
        let dims = [in_features, out_features];
        Ok(if frozen_bf16 {
            Weight::frozen(FrozenMatrix::from_f32(&values, dims))
        } else {
            Weight::from_param(Param::from_tensor(Tensor::from_data(
                TensorData::new(values, dims),
                device,
            )))
        })
    };

    let embed_tokens = matrix(source, "model.embed_tokens.weight", v, h, device)?;
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for layer in 0..config.num_hidden_layers {
        let p = format!("model.layers.{layer}");
        let linear = |source: &mut dyn WeightSource,
                      name: &str,
                      out_f: usize,
                      in_f: usize,
                      bias: bool|
         -> Result<Linear<B>> {
            let weight = matrix(source, &format!("{p}.{name}.weight"), out_f, in_f, device)?;
            let bias = if bias {
                Some(vector::<B>(
                    source,
                    &format!("{p}.{name}.bias"),
                    out_f,
                    device,
                )?)
            } else {
                None
            };
            Ok(Linear {
                weight,
                bias,
                lora: None,
            })
        };
        let variant = &config.variant;
        let (qkv_bias, o_bias, mlp_bias) =
            (variant.qkv_bias, variant.o_proj_bias, variant.mlp_bias);
        let norm = |source: &mut dyn WeightSource, name: &str, len: usize| -> Result<RmsNorm<B>> {
            Ok(RmsNorm {
                weight: vector::<B>(source, &format!("{p}.{name}.weight"), len, device)?,
                eps: config.rms_norm_eps,
            })
        };
        let (q_norm, k_norm) = if variant.qk_norm {
            (
                Some(norm(source, "self_attn.q_norm", config.head_dim)?),
                Some(norm(source, "self_attn.k_norm", config.head_dim)?),
            )
        } else {
            (None, None)
        };
        let self_attn = Attention {
            q_proj: linear(source, "self_attn.q_proj", q, h, qkv_bias)?,
            k_proj: linear(source, "self_attn.k_proj", kv, h, qkv_bias)?,
            v_proj: linear(source, "self_attn.v_proj", kv, h, qkv_bias)?,
            o_proj: linear(source, "self_attn.o_proj", h, q, o_bias)?,
            q_norm,
            k_norm,
            num_heads: config.num_attention_heads,
            num_kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
        };
        let mlp = Mlp {
            gate_proj: linear(source, "mlp.gate_proj", i, h, mlp_bias)?,
            up_proj: linear(source, "mlp.up_proj", i, h, mlp_bias)?,
            down_proj: linear(source, "mlp.down_proj", h, i, mlp_bias)?,
        };
        layers.push(DecoderLayer {
            self_attn,
            mlp,
            input_layernorm: norm(source, "input_layernorm", h)?,
            post_attention_layernorm: norm(source, "post_attention_layernorm", h)?,
        });
    }
    let norm = RmsNorm {
        weight: vector::<B>(source, "model.norm.weight", h, device)?,
        eps: config.rms_norm_eps,
    };
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(matrix(source, "lm_head.weight", v, h, device)?)
    };
    Ok(Model {
        embed_tokens,
        layers,
        norm,
        lm_head,
        inv_freq: inverse_frequencies(
            config.head_dim,
            config.rope_theta,
            &config.variant.rope_scaling,
        ),
    })
}
