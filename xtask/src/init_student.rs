//! `cargo xtask init-student`: a student cut from its teacher, by hand (`--keep-layers`) or by
//! importance measured on calibration shards (`--num-layers`, the width flags). The work is in
//! the `prune` crate; this module parses flags, reads the blocks and prints the table.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use clap::Args as ClapArgs;
use preprocess::{Block, ShardReader};
use prune::{init_student, InitStudent, LayerChoice, LayerRanking, PruneSpec, StudentReport};
use qwen2::backend::{with_backend, BackendKind, BackendTask};

use crate::init_model::parse_dtype;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The teacher: a model directory (Hugging Face layout), a GGUF file, or a repo id in the
    /// Hugging Face cache (ORG/NAME[@REVISION]).
    #[arg(long, value_parser = hub::resolve_model_dir)]
    teacher: PathBuf,
    /// The student's directory (Hugging Face layout plus importance.json), replaced atomically.
    #[arg(long)]
    out: PathBuf,
    /// Teacher layers to keep: `every-other` (0, 2, 4, ...) or indices like 0,1,5,23.
    #[arg(long, value_name = "LAYERS", conflicts_with = "num_layers")]
    keep_layers: Option<String>,
    /// Keep the N layers whose removal costs most (see --rank-layers-by); needs --calibration.
    #[arg(long, value_name = "N")]
    num_layers: Option<usize>,
    /// The depth measure --num-layers keeps by: loss (the calibration loss with the layer
    /// skipped, Minitron) or block-influence (1 - cos of its input and output, ShortGPT).
    #[arg(long, default_value = "loss")]
    rank_layers_by: String,
    /// FFN neurons per layer to keep, by mean |activation|; needs --calibration.
    #[arg(long, value_name = "N")]
    intermediate_size: Option<usize>,
    /// Query heads per layer to keep (a multiple of the key/value heads; every key/value head
    /// stays and keeps its most active query heads); needs --calibration.
    #[arg(long, value_name = "N")]
    num_attention_heads: Option<usize>,
    /// Embedding channels to keep, by mean |value| after the norms; needs --calibration.
    #[arg(long, value_name = "N")]
    hidden_size: Option<usize>,
    /// Token shards (made by `cargo xtask preprocess` with the teacher's tokenizer) to measure
    /// importance on.
    #[arg(long, value_name = "SHARDS")]
    calibration: Option<PathBuf>,
    #[arg(long, default_value = "train")]
    calibration_split: String,
    /// Calibration blocks, spread evenly over the split. Each costs about (layers / 2 + 1)
    /// forward passes of one block (the loss without each layer).
    #[arg(long, default_value_t = 8, value_name = "K")]
    calibration_blocks: usize,
    /// Shards for the held-out loss of teacher and student before training (default: the
    /// --calibration shards, --held-out-split of them).
    #[arg(long, value_name = "SHARDS")]
    held_out: Option<PathBuf>,
    #[arg(long, default_value = "test")]
    held_out_split: String,
    /// Held-out blocks (the first N of the split); 0 skips the measurement.
    #[arg(long, default_value_t = 16, value_name = "N")]
    held_out_blocks: usize,
    /// On-disk dtype of the student's model.safetensors: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Compute backend: flex (the default CPU backend), ndarray (CPU) or cuda (a `--features cuda` build).
    #[arg(long, default_value = "flex")]
    backend: BackendKind,
}

pub fn run(args: Args) -> Result<()> {
    let spec = PruneSpec {
        layers: match (&args.keep_layers, args.num_layers) {
            (Some(text), _) => Some(LayerChoice::parse_keep(text)?),
            (None, Some(n)) => Some(LayerChoice::Count(n)),
            (None, None) => None,
        },
        intermediate_size: args.intermediate_size,
        num_attention_heads: args.num_attention_heads,
        hidden_size: args.hidden_size,
        layer_ranking: LayerRanking::parse(&args.rank_layers_by)?,
    };
    let calibration = match &args.calibration {
        Some(dir) => read_spread(dir, &args.calibration_split, args.calibration_blocks)?,
        None => Vec::new(),
    };
    let held_out = match args.held_out.as_ref().or(args.calibration.as_ref()) {
        Some(dir) if args.held_out_blocks > 0 => {
            read_first(dir, &args.held_out_split, args.held_out_blocks)?
        }
        _ => Vec::new(),
    };
    let request = InitStudent {
        teacher: &args.teacher,
        out: &args.out,
        spec,
        calibration,
        held_out,
        dtype: parse_dtype(&args.dtype)?,
    };
    let report = with_backend(args.backend, Task(request))??;
    println!("{}", report.table());
    eprintln!(
        "wrote {} and its {}",
        args.out.display(),
        prune::IMPORTANCE_FILE
    );
    Ok(())
}

struct Task<'a>(InitStudent<'a>);

impl BackendTask for Task<'_> {
    type Output = Result<StudentReport>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        Ok(init_student::<B>(self.0, &device, |line| {
            eprintln!("{line}")
        })?)
    }
}

fn open(dir: &Path, split: &str) -> Result<ShardReader> {
    ShardReader::open(dir, split).with_context(|| {
        format!(
            "reading the `{split}` split of {} (make shards with `cargo xtask preprocess` and the teacher's tokenizer)",
            dir.display()
        )
    })
}

/// `count` blocks spread evenly over the split, so calibration sees more than its opening.
fn read_spread(dir: &Path, split: &str, count: usize) -> Result<Vec<Block>> {
    let mut reader = open(dir, split)?;
    let len = reader.len();
    let count = count.min(len);
    (0..count)
        .map(|i| Ok(reader.block(i * len / count)?))
        .collect()
}

fn read_first(dir: &Path, split: &str, count: usize) -> Result<Vec<Block>> {
    let mut reader = open(dir, split)?;
    (0..count.min(reader.len()))
        .map(|i| Ok(reader.block(i)?))
        .collect()
}
