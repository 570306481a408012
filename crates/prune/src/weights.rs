//! The student's weights, read as slices of the teacher's: a [`WeightSource`] that answers a
//! student tensor name with the teacher tensor it comes from, cut to the kept layers, heads,
//! neurons and channels. The student is then built and saved like any other model.

use qwen2::{ModelConfig, ModelError, WeightSource};

use crate::plan::PrunePlan;

pub struct PrunedWeights {
    teacher: Box<dyn WeightSource>,
    teacher_config: ModelConfig,
    plan: PrunePlan,
}

impl PrunedWeights {
    pub fn new(
        teacher: Box<dyn WeightSource>,
        teacher_config: ModelConfig,
        plan: PrunePlan,
    ) -> Self {
        Self {
            teacher,
            teacher_config,
            plan,
        }
    }

    /// The teacher rows of the kept heads: head h is rows `h * head_dim ..`.
    fn head_rows(&self, layer: usize) -> Vec<usize> {
        let d = self.teacher_config.head_dim;
        self.plan.heads[layer]
            .iter()
            .flat_map(|&h| h * d..(h + 1) * d)
            .collect()
    }
}

/// Which rows and columns of a teacher tensor (PyTorch layout) a student tensor keeps; `None`
/// keeps all.
struct Cut {
    teacher_name: String,
    rows: Option<Vec<usize>>,
    cols: Option<Vec<usize>>,
}

impl WeightSource for PrunedWeights {
    fn tensor(&mut self, name: &str, shape: &[usize], transpose: bool) -> qwen2::Result<Vec<f32>> {
        let channels = Some(self.plan.channels.clone());
        let same = |rows, cols| Cut {
            teacher_name: name.to_string(),
            rows,
            cols,
        };
        let cut = match name {
            "model.embed_tokens.weight" | "lm_head.weight" => same(None, channels),
            "model.norm.weight" => same(channels, None),
            _ => {
                let rest = name
                    .strip_prefix("model.layers.")
                    .ok_or_else(|| unknown(name))?;
                let (index, part) = rest.split_once('.').ok_or_else(|| unknown(name))?;
                let layer: usize = index.parse().map_err(|_| unknown(name))?;
                let teacher_layer = *self.plan.layers.get(layer).ok_or_else(|| unknown(name))?;
                let heads = Some(self.head_rows(layer));
                let neurons = Some(self.plan.neurons[layer].clone());
                let (rows, cols) = match part {
                    "self_attn.q_proj.weight" => (heads, channels),
                    "self_attn.q_proj.bias" => (heads, None),
                    "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => (None, channels),
                    "self_attn.k_proj.bias" | "self_attn.v_proj.bias" => (None, None),
                    "self_attn.o_proj.weight" => (channels, heads),
                    "mlp.gate_proj.weight" | "mlp.up_proj.weight" => (neurons, channels),
                    "mlp.down_proj.weight" => (channels, neurons),
                    "input_layernorm.weight" | "post_attention_layernorm.weight" => {
                        (channels, None)
                    }
                    _ => return Err(unknown(name)),
                };
                Cut {
                    teacher_name: format!("model.layers.{teacher_layer}.{part}"),
                    rows,
                    cols,
                }
            }
        };
        let teacher_shape = self
            .teacher_config
            .tensor_shapes()
            .into_iter()
            .find(|(n, _)| *n == cut.teacher_name)
            .map(|(_, s)| s)
            .ok_or_else(|| unknown(&cut.teacher_name))?;
        let values = self
            .teacher
            .tensor(&cut.teacher_name, &teacher_shape, false)?;
        let (rows, cols) = match teacher_shape[..] {
            [rows, cols] => (rows, cols),
            [len] => (len, 1),
            _ => return Err(unknown(name)),
        };
        let kept_rows = cut.rows.unwrap_or_else(|| (0..rows).collect());
        let kept_cols = cut.cols.unwrap_or_else(|| (0..cols).collect());
        let mut out = Vec::with_capacity(kept_rows.len() * kept_cols.len());
        for &row in &kept_rows {
            let source = &values[row * cols..(row + 1) * cols];
            out.extend(kept_cols.iter().map(|&col| source[col]));
        }
        let out_shape: Vec<usize> = if shape.len() == 2 {
            vec![kept_rows.len(), kept_cols.len()]
        } else {
            vec![kept_rows.len()]
        };
        if out_shape != shape {
            return Err(ModelError::Invalid(format!(
                "pruned tensor `{name}` came out {out_shape:?}, the student's config expects {shape:?}"
            )));
        }
        Ok(if transpose && shape.len() == 2 {
            qwen2::transpose_matrix(&out, shape[0], shape[1])
        } else {
            out
        })
    }
}

fn unknown(name: &str) -> ModelError {
    ModelError::Invalid(format!("pruning does not know the tensor `{name}`"))
}
