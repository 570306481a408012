//! Adapters on disk in PEFT's layout (`adapter_config.json`, `adapter_model.safetensors`, keys
//! `base_model.model.<module>.lora_A.weight`), so `PeftModel.from_pretrained(base, dir)` loads
//! what this writes and the other way round. Above `load` and `save`: it reads a base model and
//! writes JSON the way a model folder does.

use std::path::Path;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde_json::{json, Value};

use crate::config::ModelConfig;
use crate::error::{read_json, ModelError, Result};
use crate::lora::adapter::Lora;
use crate::lora::attach::merge_lora;
use crate::lora::settings::LoraSettings;
use crate::model::{freeze, Model};
use crate::safetensors::{write_safetensors, Checkpoint, Dtype, TensorToWrite};

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// The prefix PEFT puts before a module's name in `adapter_model.safetensors`.
const PEFT_PREFIX: &str = "base_model.model.";

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
    config: &ModelConfig,
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
) -> Result<(Model<B>, ModelConfig, LoraSettings)> {
    let (base, config) = crate::load::load_model::<B>(base_dir, device)?;
    let (adapted, settings) = load_adapter(freeze(base, false), &config, adapter_dir)?;
    Ok((merge_lora(adapted), config, settings))
}
