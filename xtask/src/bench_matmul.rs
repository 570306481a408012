//! `cargo xtask bench matmul [--backend flex|ndarray|cuda] [--bf16]`: f32 matmul GFLOP/s at the
//! shapes a Qwen2.5-0.5B update multiplies (a 256-token batch through the MLP, attention and
//! lm_head projections, and the batch-1 matrix-vector products of decoding), for comparison
//! with numpy's BLAS on the same cores (tests/python/compare_with_torch.py runs both).
//! `--bf16`: the same shapes as products with a frozen bf16 matrix (crates/matmul: `x · W` and
//! the backward's `g · Wᵀ`), for every kernel this CPU has, beside the f32 product.
//! `--shape NAME [--rows N]`: instead, every distinct linear layer of that published model
//! (attention's projections, the MLP's, the lm_head) for `N` rows (tokens), to see which
//! products hold a forward pass back.

use std::time::Instant;

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use clap::Args as ClapArgs;
use qwen2::backend::{with_backend, BackendKind, BackendTask};
use serde_json::json;

/// `(m, k, n)`: `[m, k] x [k, n]`.
pub const SHAPES: [(usize, usize, usize); 5] = [
    (256, 896, 4864),
    (256, 4864, 896),
    (256, 896, 151936),
    (1, 896, 4864),
    (1, 896, 151936),
];

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Timed products per shape (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Compute backend: flex (the default CPU backend), ndarray (CPU) or cuda (a `--features cuda` build).
    #[arg(long, default_value = "flex")]
    backend: BackendKind,
    /// Products with a frozen bf16 matrix in bf16 (`memory.frozen_products = "bfloat16"`), by
    /// every kernel this CPU has, instead of the backend's f32 products.
    #[arg(long)]
    bf16: bool,
    /// The linear layers of this published model instead of the 0.5B update's fixed shapes:
    /// tiny, qwen2.5-0.5b, qwen2.5-1.5b, deepseek-r1-distill-qwen-1.5b, ...
    #[arg(long)]
    shape: Option<String>,
    /// Rows (tokens) of each product with `--shape`.
    #[arg(long, default_value_t = 512, requires = "shape")]
    rows: usize,
}

impl Args {
    /// `(m, k, n)` of every product to time.
    fn shapes(&self) -> Result<Vec<(usize, usize, usize)>> {
        let Some(name) = &self.shape else {
            return Ok(SHAPES.to_vec());
        };
        let Some(config) = qwen2::ModelConfig::preset(name) else {
            bail!(
                "unknown --shape `{name}`: use {}",
                qwen2::ModelConfig::PRESETS
            );
        };
        let (h, i, v) = (
            config.hidden_size,
            config.intermediate_size,
            config.vocab_size,
        );
        let q = config.num_attention_heads * config.head_dim;
        let kv = config.num_key_value_heads * config.head_dim;
        let mut shapes = Vec::new();
        for (k, n) in [(h, q), (h, kv), (q, h), (h, i), (i, h), (h, v)] {
            if !shapes.contains(&(self.rows, k, n)) {
                shapes.push((self.rows, k, n));
            }
        }
        Ok(shapes)
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.bf16 {
        return bf16_products(&args);
    }
    with_backend(args.backend, Matmul(args))?
}

/// Seconds of the median of `repeats` runs of `product`, after one warm-up.
fn median_seconds(repeats: usize, mut product: impl FnMut()) -> f64 {
    let mut seconds = Vec::new();
    for repeat in 0..=repeats.max(1) {
        let started = Instant::now();
        product();
        if repeat > 0 {
            seconds.push(started.elapsed().as_secs_f64());
        }
    }
    seconds.sort_by(f64::total_cmp);
    seconds[seconds.len() / 2]
}

fn bf16_products(args: &Args) -> Result<()> {
    use matmul::{Bf16Matrix, Kernel, Orientation};
    println!(
        "bench matmul --bf16 (f32 activations rounded to bf16, bf16 weights, f32 sums; median \
         of {}), CPU features: {}",
        args.repeats.max(1),
        matmul::cpu_description()
    );
    let mut results = Vec::new();
    for (m, k, n) in args.shapes()? {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let stored: Vec<half::bf16> = (0..k * n)
            .map(|i| half::bf16::from_f32(((i * 104_729) % 1000) as f32 / 5e4 - 0.01))
            .collect();
        // The portable kernel (plain loops, 1 GFLOP/s) only where it is all there is.
        let kernels = Kernel::all_available();
        let simd = kernels.len() > 1;
        for kernel in kernels
            .into_iter()
            .filter(|&k| !simd || k != Kernel::Portable)
        {
            // x [m, k] · W [k, n] (W stored [k, n]) and g [m, k] · Wᵀ (W stored [n, k]).
            for (orientation, dims) in [
                (Orientation::AsStored, [k, n]),
                (Orientation::Transposed, [n, k]),
            ] {
                let b = Bf16Matrix {
                    values: &stored,
                    dims,
                    orientation,
                };
                let seconds = median_seconds(args.repeats, || {
                    std::hint::black_box(matmul::matmul(kernel, &a, m, &b));
                });
                let gflops = 2.0 * (m * k * n) as f64 / seconds / 1e9;
                let direction = match orientation {
                    Orientation::AsStored => "x·W",
                    Orientation::Transposed => "g·Wᵀ",
                };
                println!(
                    "  {m:>4} x {k:>5} x {n:>6}  {direction:<4} {:<44} {:>9.3} ms  {gflops:>7.1} GFLOP/s",
                    kernel.name(),
                    seconds * 1e3
                );
                results.push(json!({"m": m, "k": k, "n": n, "kernel": kernel.name(),
                    "transposed": orientation == Orientation::Transposed,
                    "seconds": seconds, "gflops": gflops}));
            }
        }
    }
    let report = json!({
        "bench": "matmul-bf16",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "cpu_features": matmul::cpu_features(),
            "kernel_isa": matmul::Isa::describe(),
        "threads": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "shapes": results,
    });
    println!("{report}");
    Ok(())
}

struct Matmul(Args);

impl BackendTask for Matmul {
    type Output = Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let mut results = Vec::new();
        println!(
            "bench matmul, {} backend (f32, median of {}), CPU features: {}",
            args.backend,
            args.repeats.max(1),
            matmul::cpu_description()
        );
        for (m, k, n) in args.shapes()? {
            let a = Tensor::<B, 2>::random([m, k], Distribution::Default, &device);
            let b = Tensor::<B, 2>::random([k, n], Distribution::Default, &device);
            let median = median_seconds(args.repeats, || {
                let product = a.clone().matmul(b.clone());
                B::sync(&device).expect("sync");
                drop(product);
            });
            let gflops = 2.0 * (m * k * n) as f64 / median / 1e9;
            println!(
                "  {m:>4} x {k:>5} x {n:>6}  {:>9.3} ms  {gflops:>7.1} GFLOP/s",
                median * 1e3
            );
            let mut result = json!({"m": m, "k": k, "n": n, "seconds": median, "gflops": gflops});
            // What the model runs for these rows on flex (qwen2's linear layers route them
            // there): every thread streaming its columns.
            if args.backend == BackendKind::Flex && m <= matmul::rows_f32::MAX_ROWS {
                let values = |t: Tensor<B, 2>| t.into_data().to_vec::<f32>().expect("f32");
                let (x, w) = (values(a), values(b));
                let median = median_seconds(args.repeats, || {
                    drop(matmul::rows_f32::row_products(&x, m, &w, k, n));
                });
                let gflops = 2.0 * (m * k * n) as f64 / median / 1e9;
                println!(
                    "  {m:>4} x {k:>5} x {n:>6}  {:>9.3} ms  {gflops:>7.1} GFLOP/s  decoding's path (matmul::rows_f32)",
                    median * 1e3
                );
                result["rows_f32_gflops"] = json!(gflops);
            }
            results.push(result);
        }
        let report = json!({
            "bench": "matmul",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "backend": args.backend.to_string(),
            "threads": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "shapes": results,
        });
        println!("{report}");
        Ok(())
    }
}
