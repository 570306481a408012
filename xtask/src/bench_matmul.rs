//! `cargo xtask bench matmul [--backend flex|ndarray|cuda]`: f32 matmul GFLOP/s at the shapes a
//! Qwen2.5-0.5B update multiplies (a 256-token batch through the MLP, attention and lm_head
//! projections, and the batch-1 matrix-vector products of decoding), for comparison with
//! numpy's BLAS on the same cores (tests/python/compare_with_torch.py runs both).

use std::time::Instant;

use anyhow::Result;
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
}

pub fn run(args: Args) -> Result<()> {
    with_backend(args.backend, Matmul(args))?
}

struct Matmul(Args);

impl BackendTask for Matmul {
    type Output = Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let mut results = Vec::new();
        println!(
            "bench matmul, {} backend (f32, median of {})",
            args.backend,
            args.repeats.max(1)
        );
        for (m, k, n) in SHAPES {
            let a = Tensor::<B, 2>::random([m, k], Distribution::Default, &device);
            let b = Tensor::<B, 2>::random([k, n], Distribution::Default, &device);
            let mut seconds = Vec::new();
            for repeat in 0..=args.repeats.max(1) {
                let started = Instant::now();
                let product = a.clone().matmul(b.clone());
                B::sync(&device)?;
                let elapsed = started.elapsed().as_secs_f64();
                drop(product);
                if repeat > 0 {
                    seconds.push(elapsed);
                }
            }
            seconds.sort_by(f64::total_cmp);
            let median = seconds[seconds.len() / 2];
            let gflops = 2.0 * (m * k * n) as f64 / median / 1e9;
            println!(
                "  {m:>4} x {k:>5} x {n:>6}  {:>9.3} ms  {gflops:>7.1} GFLOP/s",
                median * 1e3
            );
            results.push(json!({"m": m, "k": k, "n": n, "seconds": median, "gflops": gflops}));
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
