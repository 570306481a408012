//! What keeping a frozen model's matrices in bf16 costs in accuracy, against the same model in
//! f32: a quantized GGUF's dequantized values are not bf16-exact, so `frozen_dtype = auto`
//! (bf16 for such a file) rounds them. Runs both on the first blocks of WikiText-2 test and
//! prints the largest logit difference, the mean KL(f32 || bf16) per position, top-1
//! agreement, and each copy's cross-entropy on the text:
//!
//!     cargo run -p qwen2 --example frozen_precision -- MODEL [TOKENS]

use std::path::PathBuf;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use qwen2::backend::Cpu;
use qwen2::tokenizer::Tokenizer;
use qwen2::{load_frozen_model, AttentionMask, FrozenDtype, Model};

type B = Cpu;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model_path = PathBuf::from(
        args.first()
            .ok_or("usage: frozen_precision MODEL [TOKENS]")?,
    );
    let tokens: usize = args.get(1).map_or(Ok(512), |t| t.parse())?;
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/wikitext-2-raw/wiki.test.raw"),
    )?;
    let tokenizer = Tokenizer::from_dir(&model_path)?;
    let mut ids = tokenizer.encode(&text[..text.len().min(tokens * 8)], false)?;
    ids.truncate(tokens);
    let device = Default::default();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.iter().map(|&i| i as i64).collect(), [1, ids.len()]),
        &device,
    );
    let mask = AttentionMask {
        rows: vec![vec![true; ids.len()]],
    };
    let log_probs = |dtype: FrozenDtype| -> Result<Vec<f32>, Box<dyn std::error::Error>> {
        let (model, _, _): (Model<B>, _, _) = load_frozen_model(&model_path, &device, dtype)?;
        let logits = model.forward(input.clone(), &mask, false).logits;
        Ok(log_softmax(logits, 2)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()?)
    };
    let exact = log_probs(FrozenDtype::Float32)?;
    let rounded = log_probs(FrozenDtype::Bfloat16)?;
    let vocab = exact.len() / ids.len();
    let (mut kl, mut agree, mut worst) = (0f64, 0usize, 0f32);
    let (mut ce_exact, mut ce_rounded) = (0f64, 0f64);
    for position in 0..ids.len() {
        let row = position * vocab..(position + 1) * vocab;
        let (p, q) = (&exact[row.clone()], &rounded[row]);
        kl += p
            .iter()
            .zip(q)
            .map(|(a, b)| (a.exp() as f64) * (*a as f64 - *b as f64))
            .sum::<f64>();
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
        };
        agree += usize::from(argmax(p) == argmax(q));
        // Log-probabilities differ from logits by a per-position constant; the difference of
        // logits is what widening changes, so compare the centred values.
        let shift = p[0] - q[0];
        worst = p
            .iter()
            .zip(q)
            .fold(worst, |w, (a, b)| w.max((a - b - shift).abs()));
        if let Some(&next) = ids.get(position + 1) {
            ce_exact -= p[next as usize] as f64;
            ce_rounded -= q[next as usize] as f64;
        }
    }
    let n = ids.len() as f64;
    println!(
        "{}: {} positions of WikiText-2 test; bf16 frozen vs f32: max |logit difference| {:.4}, \
         mean KL(f32 || bf16) {:.2e} nats, top-1 agreement {:.2}%, cross-entropy f32 {:.4} / bf16 {:.4}",
        model_path.display(),
        ids.len(),
        worst,
        kl / n,
        100.0 * agree as f64 / n,
        ce_exact / (n - 1.0),
        ce_rounded / (n - 1.0)
    );
    Ok(())
}
