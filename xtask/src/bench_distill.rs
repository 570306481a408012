//! `cargo xtask bench distill-step --shape qwen2.5-0.5b [--teacher-shape S] [--batch B]
//! [--seq-len T] [--steps N]`: seconds per distillation update (teacher forward, student
//! forward and backward with the chunked objective, global-norm clipping, AdamW) at published
//! shapes with random weights, tokens/s and peak RSS.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Result};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use clap::Args as ClapArgs;
use distill::gradients::{global_norm, scale};
use distill::objective::{gradient_pass, Batch, Student, TeacherOutputs};
use distill::objective_for;
use distill::optimizer::GroupedAdamW;
use distill::recipe::Recipe;
use qwen2::backend::{with_backend, BackendKind, BackendTask};
use qwen2::memory::{gib, peak_rss_bytes};
use qwen2::{build_model, AttentionMask, Qwen2Config, RandomWeights};
use serde_json::json;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Student shape: tiny, qwen2.5-0.5b, qwen2.5-1.5b.
    #[arg(long, default_value = "qwen2.5-0.5b")]
    shape: String,
    /// Teacher shape (default: the student's).
    #[arg(long)]
    teacher_shape: Option<String>,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Updates timed (the first also creates the optimizer state).
    #[arg(long, default_value_t = 2)]
    steps: usize,
    #[arg(long, default_value = "ndarray")]
    backend: BackendKind,
}

pub fn run(args: Args) -> Result<()> {
    with_backend(args.backend, Step(args))?
}

struct Step(Args);

fn preset(name: &str) -> Result<Qwen2Config> {
    Qwen2Config::preset(name)
        .ok_or_else(|| anyhow!("unknown shape `{name}`: use tiny, qwen2.5-0.5b or qwen2.5-1.5b"))
}

impl BackendTask for Step {
    type Output = Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let student_config = preset(&args.shape)?;
        let teacher_config = preset(args.teacher_shape.as_deref().unwrap_or(&args.shape))?;
        let teacher = Arc::new(build_model::<B>(
            &teacher_config,
            &mut RandomWeights::new(1),
            &device,
        )?);
        let model =
            build_model::<Autodiff<B>>(&student_config, &mut RandomWeights::new(2), &device)?;
        let mut student = Student {
            model,
            projections: Vec::new(),
        };
        // The seed recipe's training and distillation settings (no tokenizer check: random ids).
        let recipe = Recipe::parse(
            "[teacher]\nlocal_dir = \"-\"\n[student]\nlocal_dir = \"-\"\n[dataset]\nshards = \"-\"\n\
             [training]\noutput_dir = \"-\"\n",
            Path::new("bench"),
            &[],
        )?;
        let objective = objective_for(&recipe, None, student_config.vocab_size)?;
        let mut optimizer = GroupedAdamW::<Autodiff<B>>::new(&recipe.training);
        let vocab = student_config.vocab_size.min(teacher_config.vocab_size) as u64;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let ids: Vec<Vec<u32>> = (0..args.batch)
            .map(|_| {
                (0..args.seq_len)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        ((state >> 33) % vocab) as u32
                    })
                    .collect()
            })
            .collect();
        let batch = Batch::new(ids, AttentionMask::full(args.batch, args.seq_len));
        let tokens = args.batch * args.seq_len;
        let mut seconds = Vec::new();
        for _ in 0..args.steps.max(1) {
            let started = Instant::now();
            let outputs = TeacherOutputs::from_model(&teacher, &batch, &objective);
            let pass = gradient_pass(&student, &outputs, &batch, &objective);
            let (mut grads, losses) = (pass.gradients, pass.losses);
            let norm = global_norm(&student, &grads);
            if norm > 1.0 {
                scale(&student, &mut grads, 1.0 / (norm + 1e-6));
            }
            student = optimizer.step(5e-5, student, grads);
            seconds.push(started.elapsed().as_secs_f64());
            eprintln!(
                "update {}: {:.2} s (loss {:.4})",
                seconds.len(),
                seconds.last().unwrap(),
                losses.total
            );
        }
        let last = *seconds.last().unwrap();
        let report = json!({
            "student_shape": args.shape,
            "teacher_shape": args.teacher_shape.unwrap_or(args.shape.clone()),
            "backend": args.backend.to_string(),
            "batch": args.batch,
            "seq_len": args.seq_len,
            "seconds_per_update": seconds,
            "tokens_per_second": tokens as f64 / last,
            "peak_rss_bytes": peak_rss_bytes(),
        });
        println!(
            "distill step ({} -> {}, batch {} x {} tokens, {}): {:.2} s/update, {:.1} tokens/s, peak RSS {}",
            report["teacher_shape"].as_str().unwrap_or(""),
            report["student_shape"].as_str().unwrap_or(""),
            args.batch,
            args.seq_len,
            args.backend,
            last,
            tokens as f64 / last,
            peak_rss_bytes().map_or("unknown".into(), gib)
        );
        println!("{report}");
        Ok(())
    }
}
