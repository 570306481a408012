//! What the user asks of the student: which layers it keeps, and how wide it is. Checked
//! against the teacher's config.json before anything is loaded, so a bad request costs nothing.

use qwen2::ModelConfig;

use crate::error::{flag_error, Result};

/// The flag names, as errors and the table quote them.
pub const KEEP_LAYERS: &str = "--keep-layers";
pub const NUM_LAYERS: &str = "--num-layers";
pub const INTERMEDIATE_SIZE: &str = "--intermediate-size";
pub const NUM_ATTENTION_HEADS: &str = "--num-attention-heads";
pub const HIDDEN_SIZE: &str = "--hidden-size";

/// Which of the teacher's decoder layers the student keeps.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerChoice {
    /// These teacher layers, in this (increasing) order.
    Keep(Vec<usize>),
    /// Layers 0, 2, 4, ... (DistilBERT's initialisation: one layer out of two).
    EveryOther,
    /// The `n` layers whose removal costs the most by [`LayerRanking`].
    Count(usize),
}

impl LayerChoice {
    /// Parses `--keep-layers`: `every-other` or a comma-separated list of layer indices.
    pub fn parse_keep(text: &str) -> Result<Self> {
        if text.trim() == "every-other" {
            return Ok(Self::EveryOther);
        }
        let layers = text
            .split(',')
            .map(|item| {
                item.trim().parse::<usize>().map_err(|_| {
                    flag_error(
                        KEEP_LAYERS,
                        format!(
                            "`{item}` is not a layer index: give `every-other` or indices like 0,2,4"
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::Keep(layers))
    }
}

/// Which measure decides the layers `--num-layers` drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerRanking {
    /// The calibration loss with the layer skipped (Minitron's depth ranking): exact about
    /// what the model loses, costing about half a forward pass per layer.
    #[default]
    Loss,
    /// Block Influence, 1 - cos(input, output) of the layer (ShortGPT): one forward pass.
    BlockInfluence,
}

impl LayerRanking {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "loss" => Ok(Self::Loss),
            "block-influence" | "bi" => Ok(Self::BlockInfluence),
            other => Err(flag_error(
                "--rank-layers-by",
                format!("`{other}` is not a ranking: use loss or block-influence"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Loss => "loss",
            Self::BlockInfluence => "block-influence",
        }
    }
}

/// The student's shape, relative to the teacher. `None` keeps the teacher's value.
#[derive(Debug, Clone, Default)]
pub struct PruneSpec {
    pub layers: Option<LayerChoice>,
    pub intermediate_size: Option<usize>,
    /// Query heads; every key/value head is kept and serves `num_attention_heads /
    /// num_key_value_heads` of them.
    pub num_attention_heads: Option<usize>,
    pub hidden_size: Option<usize>,
    pub layer_ranking: LayerRanking,
}

impl PruneSpec {
    /// Whether the choice needs importance measured on calibration data: a layer count, or any
    /// width (kept by activation importance).
    pub fn needs_importance(&self) -> bool {
        matches!(self.layers, Some(LayerChoice::Count(_)))
            || self.intermediate_size.is_some()
            || self.num_attention_heads.is_some()
            || self.hidden_size.is_some()
    }

    /// Refuses what the teacher cannot give, naming the flag and the limit.
    pub fn validate(&self, teacher: &ModelConfig) -> Result<()> {
        let layers = teacher.num_hidden_layers;
        match &self.layers {
            Some(LayerChoice::Keep(kept)) => {
                if kept.is_empty() {
                    return Err(flag_error(KEEP_LAYERS, "keeps no layer"));
                }
                if let Some(&bad) = kept.iter().find(|&&l| l >= layers) {
                    return Err(flag_error(
                        KEEP_LAYERS,
                        format!(
                            "layer {bad} is out of range: the teacher has {layers} layers, 0 to {}",
                            layers - 1
                        ),
                    ));
                }
                if kept.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(flag_error(
                        KEEP_LAYERS,
                        "layers must be listed once each, in increasing order (a student keeps the teacher's order)",
                    ));
                }
            }
            Some(LayerChoice::Count(n)) if *n == 0 || *n > layers => {
                return Err(flag_error(
                    NUM_LAYERS,
                    format!("{n} is out of range: give 1 to {layers} (the teacher's layers)"),
                ));
            }
            _ => {}
        }
        let width = |flag: &'static str, asked: Option<usize>, teacher: usize| -> Result<()> {
            match asked {
                Some(0) => Err(flag_error(flag, "must be at least 1")),
                Some(n) if n > teacher => Err(flag_error(
                    flag,
                    format!("{n} is larger than the teacher's {teacher}: pruning only removes"),
                )),
                _ => Ok(()),
            }
        };
        width(
            INTERMEDIATE_SIZE,
            self.intermediate_size,
            teacher.intermediate_size,
        )?;
        width(HIDDEN_SIZE, self.hidden_size, teacher.hidden_size)?;
        width(
            NUM_ATTENTION_HEADS,
            self.num_attention_heads,
            teacher.num_attention_heads,
        )?;
        if let Some(heads) = self.num_attention_heads {
            let kv = teacher.num_key_value_heads;
            if heads % kv != 0 {
                return Err(flag_error(
                    NUM_ATTENTION_HEADS,
                    format!(
                        "{heads} breaks the GQA grouping: the teacher's {kv} key/value heads each serve {} query heads, \
                         so give a multiple of {kv} (each group then keeps the same number)",
                        teacher.num_attention_heads / kv
                    ),
                ));
            }
        }
        Ok(())
    }
}
