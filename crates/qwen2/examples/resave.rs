//! Loads a checkpoint and saves it again with `save_model`, for checking the saved layout with
//! other tools (tests/python/transformers_loads_saved_model.py):
//!
//!     cargo run -p qwen2 --example resave -- IN_DIR OUT_DIR [f32|bf16]

use std::path::PathBuf;

use qwen2::backend::Cpu;
use qwen2::safetensors::Dtype;
use qwen2::{load_model, save_model, GenerationConfig, SaveOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (input, output) = match args.as_slice() {
        [input, output, ..] => (PathBuf::from(input), PathBuf::from(output)),
        _ => return Err("usage: resave IN_DIR OUT_DIR [f32|bf16]".into()),
    };
    let dtype = match args.get(2).map(String::as_str) {
        None | Some("f32") => Dtype::F32,
        Some("bf16") => Dtype::BF16,
        Some(other) => return Err(format!("unknown dtype {other}: use f32 or bf16").into()),
    };
    let (model, config) = load_model::<Cpu>(&input, &Default::default())?;
    let generation = GenerationConfig::from_dir(&input, &config)?;
    let options = SaveOptions {
        dtype,
        tokenizer_dir: Some(&input),
        generation: Some(&generation),
    };
    save_model(&model, &config, &output, &options)?;
    println!("{} -> {}", input.display(), output.display());
    Ok(())
}
