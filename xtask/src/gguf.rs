//! `cargo xtask import-gguf` and `cargo xtask export-gguf`: a GGUF file (llama.cpp, Ollama, LM
//! Studio) to the Hugging Face layout and back. Every other command also takes a `.gguf` path
//! wherever it takes a model folder; importing is for tools that want the folder.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use qwen2::gguf::{export_gguf, export_type, import_gguf, GgufOptions, EXPORT_TYPES};

use crate::init_model::parse_dtype;

#[derive(ClapArgs, Debug)]
pub struct ImportArgs {
    /// The GGUF file (llama.cpp's qwen2 layout).
    file: PathBuf,
    /// Output model directory (replaced atomically if it exists).
    #[arg(long)]
    out: PathBuf,
    /// On-disk dtype of model.safetensors: bf16 (half the size; rounds the dequantized values)
    /// or f32 (keeps them exactly).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Keep a stored `output.weight` as a separate lm_head even when it equals the embedding
    /// within quantization noise (transformers' reading of the file).
    #[arg(long)]
    untie: bool,
}

pub fn run_import(args: ImportArgs) -> Result<()> {
    let dtype = parse_dtype(&args.dtype)?;
    let summary = import_gguf(
        &args.file,
        &args.out,
        dtype,
        GgufOptions { untie: args.untie },
    )
    .with_context(|| format!("importing {}", args.file.display()))?;
    eprintln!("read {}: {}", args.file.display(), summary.description);
    eprintln!(
        "wrote {} ({} tensors, {} parameters, {})",
        args.out.display(),
        summary.tensors,
        summary.config.num_parameters(),
        args.dtype
    );
    Ok(())
}

#[derive(ClapArgs, Debug)]
pub struct ExportArgs {
    /// The model directory (Hugging Face layout: config.json, model.safetensors, tokenizer.json),
    /// e.g. a distillation run's `final`.
    #[arg(long, value_parser = hub::resolve_model_dir)]
    model: PathBuf,
    /// Output GGUF file (written whole or not at all).
    #[arg(long)]
    out: PathBuf,
    /// Type of the weight matrices: f32, f16, bf16 or q8_0 (norms and biases stay f32).
    #[arg(long = "type", default_value = "f16")]
    kind: String,
    /// `general.name` in the file (default: the model directory's name).
    #[arg(long)]
    name: Option<String>,
}

pub fn run_export(args: ExportArgs) -> Result<()> {
    let kind = export_type(&args.kind)
        .with_context(|| format!("unknown --type `{}`: use {EXPORT_TYPES}", args.kind))?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let summary = export_gguf(&args.model, &args.out, kind, &name)
        .with_context(|| format!("exporting {}", args.model.display()))?;
    if !summary.fallbacks.is_empty() {
        eprintln!(
            "note: {} matrices have rows that are not whole {} blocks and are stored as F16: {}",
            summary.fallbacks.len(),
            kind.name(),
            summary.fallbacks.join(", ")
        );
    }
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({} tensors, {} parameters, {} matrices, {:.1} MiB)",
        args.out.display(),
        summary.tensors,
        summary.config.num_parameters(),
        kind.name(),
        bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}
