//! LoRA (Hu et al. 2021) as PEFT implements it: a frozen base and, beside each targeted linear
//! layer `W`, two trainable matrices `A` (`r x in`) and `B` (`out x r`) with
//! `y = x Wᵀ + b + (dropout(x) Aᵀ Bᵀ) * alpha / r`. `A` starts as PEFT's
//! `kaiming_uniform_(a = sqrt(5))`, i.e. uniform in ±1/sqrt(in), and `B` at zero, so training
//! starts from the base model exactly.
//!
//! Adapters are read and written in PEFT's layout (`adapter_config.json` and
//! `adapter_model.safetensors`, keys `base_model.model.<module>.lora_A.weight`), so
//! `PeftModel.from_pretrained(base, dir)` loads what this writes and the other way round.
//! [`merge_lora`] folds the adapters into the base weights: the merged model is a plain
//! Qwen2 checkpoint.

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Qwen2Config;
use crate::error::{read_json, ModelError, Result};
use crate::model::{Linear, Model};
use crate::safetensors::{write_safetensors, Checkpoint, Dtype, TensorToWrite};
use crate::weight::Weight;

/// The linear layers LoRA can target, named as PEFT and torchtune name them.
pub const TARGET_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// The prefix PEFT puts before a module's name in `adapter_model.safetensors`.
const PEFT_PREFIX: &str = "base_model.model.";

/// What an adapter is: PEFT's `LoraConfig` fields this crate implements. The defaults: every
/// linear layer (as QLoRA), rank 16, alpha 32, no dropout (as PEFT and torchtune).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSettings {
    /// `r`: the adapters' inner width.
    pub rank: usize,
    /// `lora_alpha`: the update is scaled by alpha / rank (alpha / sqrt(rank) with rsLoRA).
    pub alpha: f64,
    /// `lora_dropout`: dropout on the adapter's input, in training only.
    pub dropout: f64,
    /// `target_modules`: names from [`TARGET_MODULES`], or `["all-linear"]` for all of them.
    pub target_modules: Vec<String>,
    /// `use_rslora`: scale by alpha / sqrt(rank) (Kalajdzievski 2023).
    pub use_rslora: bool,
}

impl Default for LoraSettings {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            dropout: 0.0,
            target_modules: vec!["all-linear".into()],
            use_rslora: false,
        }
    }
}

impl LoraSettings {
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// The targeted module names, `all-linear` expanded.
    pub fn targets(&self) -> Vec<&'static str> {
        if self.target_modules.iter().any(|m| m == "all-linear") {
            return TARGET_MODULES.to_vec();
        }
        TARGET_MODULES
            .into_iter()
            .filter(|name| self.target_modules.iter().any(|m| m == name))
            .collect()
    }

    /// Refuses settings no model can take and, given the model's `config`, settings that model
    /// cannot take; `origin` names the file and section they came from, for the message.
    pub fn validate(&self, config: Option<&Qwen2Config>, origin: &str) -> Result<()> {
        let invalid = |field: &str, message: String| {
            Err(ModelError::Invalid(format!(
                "{origin}: `{field}`: {message}"
            )))
        };
        if self.target_modules.is_empty() {
            return invalid(
                "target_modules",
                format!("is empty; name some of {TARGET_MODULES:?} or \"all-linear\""),
            );
        }
        for name in &self.target_modules {
            if name != "all-linear" && !TARGET_MODULES.contains(&name.as_str()) {
                return invalid(
                    "target_modules",
                    format!(
                        "\"{name}\" names no linear layer of a Qwen2 model; the layers are {TARGET_MODULES:?} (or \"all-linear\")"
                    ),
                );
            }
        }
        let narrowest = config.map_or(usize::MAX, |config| {
            self.targets()
                .iter()
                .map(|name| {
                    let [inputs, outputs] = module_shape(config, name);
                    inputs.min(outputs)
                })
                .min()
                .unwrap_or(0)
        });
        if self.rank == 0 {
            return invalid("rank", "is 0; it must be at least 1".into());
        }
        if self.rank > narrowest {
            return invalid(
                "rank",
                format!(
                    "is {}; it must be between 1 and {narrowest}, the narrowest width of the targeted layers",
                    self.rank
                ),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return invalid(
                "dropout",
                format!("is {}; it must be in [0, 1)", self.dropout),
            );
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return invalid("alpha", format!("is {}; it must be positive", self.alpha));
        }
        Ok(())
    }

    /// Trainable parameters the adapters add to a model of `config`'s shape.
    pub fn parameters(&self, config: &Qwen2Config) -> usize {
        self.targets()
            .iter()
            .map(|name| {
                let [inputs, outputs] = module_shape(config, name);
                self.rank * (inputs + outputs)
            })
            .sum::<usize>()
            * config.num_hidden_layers
    }
}

/// `[in, out]` of a targeted module in a model of `config`'s shape.
fn module_shape(config: &Qwen2Config, name: &str) -> [usize; 2] {
    let h = config.hidden_size;
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    let i = config.intermediate_size;
    match name {
        "q_proj" => [h, q],
        "k_proj" | "v_proj" => [h, kv],
        "o_proj" => [q, h],
        "gate_proj" | "up_proj" => [h, i],
        "down_proj" => [i, h],
        _ => unreachable!("validated target {name}"),
    }
}

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
        let a = transpose(&a, settings.rank, inputs);
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

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

fn values_of<B: Backend>(tensor: Tensor<B, 2>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("float tensor")
}

/// Writes the adapters of `model` to `dir` in PEFT's layout, in f32. `base_model` is the
/// base's name or path, recorded as PEFT records it.
pub fn save_adapter<B: Backend>(
    model: &Model<B>,
    settings: &LoraSettings,
    base_model: &str,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut model = model.clone();
    let mut tensors = Vec::new();
    for (name, _, linear) in model.linears_mut() {
        let Some(lora) = &linear.lora else { continue };
        let a = lora.lora_a.val();
        let b = lora.lora_b.val();
        let [inputs, rank] = a.dims();
        let [_, outputs] = b.dims();
        // PyTorch layout: lora_A.weight [r, in], lora_B.weight [out, r].
        tensors.push(TensorToWrite {
            name: format!("{PEFT_PREFIX}{name}.lora_A.weight"),
            shape: vec![rank, inputs],
            values: Box::new(move || values_of(a.transpose())),
        });
        tensors.push(TensorToWrite {
            name: format!("{PEFT_PREFIX}{name}.lora_B.weight"),
            shape: vec![outputs, rank],
            values: Box::new(move || values_of(b.transpose())),
        });
    }
    write_safetensors(&dir.join(ADAPTER_WEIGHTS), tensors, Dtype::F32)?;
    let config = json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": settings.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": settings.targets(),
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": settings.use_rslora,
    });
    crate::save::write_json(&dir.join(ADAPTER_CONFIG), &config)
}

/// Reads `dir/adapter_config.json`: the settings, refusing PEFT options this crate does not
/// implement rather than loading something else than what was trained.
pub fn read_adapter_settings(dir: &Path) -> Result<LoraSettings> {
    let path = dir.join(ADAPTER_CONFIG);
    let config = read_json(&path)?;
    let field = |name: &str, message: &str| ModelError::Config {
        path: path.clone(),
        field: name.into(),
        message: message.into(),
    };
    if config.get("peft_type").and_then(Value::as_str) != Some("LORA") {
        return Err(field(
            "peft_type",
            "is not \"LORA\": only LoRA adapters load here",
        ));
    }
    let unsupported = |name: &str, ok: &dyn Fn(&Value) -> bool| {
        match config.get(name) {
        Some(value) if !ok(value) => Err(field(
            name,
            &format!("is {value}; this loader implements plain LoRA only (merge the adapter with PEFT first)"),
        )),
        _ => Ok(()),
    }
    };
    let empty = |v: &Value| v.is_null() || v.as_object().is_some_and(|o| o.is_empty());
    unsupported("use_dora", &|v| v == &json!(false))?;
    unsupported("bias", &|v| v == &json!("none"))?;
    unsupported("fan_in_fan_out", &|v| v == &json!(false))?;
    unsupported("rank_pattern", &empty)?;
    unsupported("alpha_pattern", &empty)?;
    unsupported("layers_to_transform", &Value::is_null)?;
    unsupported("modules_to_save", &Value::is_null)?;
    // Options of newer PEFT versions that change the adapted model's function.
    unsupported("lora_bias", &|v| v == &json!(false))?;
    unsupported("use_qalora", &|v| v == &json!(false))?;
    for name in [
        "exclude_modules",
        "layer_replication",
        "trainable_token_indices",
        "target_parameters",
        "alora_invocation_tokens",
    ] {
        unsupported(name, &Value::is_null)?;
    }
    let rank = config
        .get("r")
        .and_then(Value::as_u64)
        .ok_or_else(|| field("r", "missing or not a positive integer"))? as usize;
    let alpha = config
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| field("lora_alpha", "missing or not a number"))?;
    let dropout = config
        .get("lora_dropout")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let target_modules = match config.get("target_modules") {
        Some(Value::String(name)) => vec![name.clone()],
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| n.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| field("target_modules", "must be a list of module names"))?,
        _ => return Err(field("target_modules", "missing")),
    };
    let use_rslora = config
        .get("use_rslora")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(LoraSettings {
        rank,
        alpha,
        dropout,
        target_modules,
        use_rslora,
    })
}

/// Gives `model` (already frozen) the adapters stored in `dir`. Every targeted module of the
/// model must have its two tensors, in the shapes the model's layers imply, and the file must
/// hold nothing else: an adapter trained on another base is refused, naming the tensor.
pub fn load_adapter<B: Backend>(
    mut model: Model<B>,
    config: &Qwen2Config,
    dir: &Path,
) -> Result<(Model<B>, LoraSettings)> {
    let settings = read_adapter_settings(dir)?;
    settings
        .validate(
            Some(config),
            &dir.join(ADAPTER_CONFIG).display().to_string(),
        )
        .map_err(|e| {
            ModelError::Invalid(format!(
                "{e} (was this adapter trained on a model of another shape?)"
            ))
        })?;
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    let weights = Checkpoint::open_file(&weights_path)?;
    let device = model.device();
    let targets = settings.targets();
    let mut expected = Vec::new();
    for (place, (name, short, linear)) in model.linears_mut().into_iter().enumerate() {
        if !targets.contains(&short) {
            continue;
        }
        let [inputs, outputs] = linear.weight.dims();
        let a_name = format!("{PEFT_PREFIX}{name}.lora_A.weight");
        let b_name = format!("{PEFT_PREFIX}{name}.lora_B.weight");
        let read = |tensor: &str, shape: [usize; 2]| -> Result<Param<Tensor<B, 2>>> {
            let values = weights.read_f32(tensor, &shape, true)?;
            Ok(Param::from_tensor(Tensor::from_data(
                TensorData::new(values, [shape[1], shape[0]]),
                &device,
            )))
        };
        linear.lora = Some(Lora {
            lora_a: read(&a_name, [settings.rank, inputs])?,
            lora_b: read(&b_name, [outputs, settings.rank])?,
            scaling: settings.scaling(),
            dropout: settings.dropout,
            place,
        });
        expected.push(a_name);
        expected.push(b_name);
    }
    if let Some(extra) = weights
        .names()
        .into_iter()
        .find(|name| !expected.iter().any(|e| e == name))
    {
        return Err(ModelError::Invalid(format!(
            "{}: tensor `{extra}` belongs to no targeted layer of this base model (the adapter was trained on another base, or with other target_modules)",
            weights_path.display()
        )));
    }
    Ok((model, settings))
}

/// The base an adapter names (`base_model_name_or_path`): a directory or a hub repository id.
pub fn adapter_base(dir: &Path) -> Result<String> {
    let path = dir.join(ADAPTER_CONFIG);
    read_json(&path)?
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ModelError::Config {
            path,
            field: "base_model_name_or_path".into(),
            message: "missing: name the base model explicitly".into(),
        })
}

/// The base model in `base_dir` with the adapter in `adapter_dir` merged into it: a plain model
/// to evaluate or generate with, at the speed of one without adapters.
pub fn load_merged<B: Backend>(
    base_dir: &Path,
    adapter_dir: &Path,
    device: &B::Device,
) -> Result<(Model<B>, Qwen2Config, LoraSettings)> {
    let (base, config) = crate::load::load_model::<B>(base_dir, device)?;
    let (adapted, settings) = load_adapter(freeze(base, false), &config, adapter_dir)?;
    Ok((merge_lora(adapted), config, settings))
}
