//! `cargo xtask bench distill-step --shape qwen2.5-0.5b [--teacher-shape S] [--batch B]
//! [--seq-len T] [--steps N] [--lora-rank R] [--frozen-dtype bfloat16|float32]
//! [--cache-teacher] [--backend flex|ndarray|cuda]`: one distillation update at published
//! shapes with random weights, phase by phase (teacher forward, student forward + loss,
//! backward, global-norm clipping + AdamW), with tokens/s, achieved GFLOP/s and peak RSS beside
//! the memory plan; a text table and one JSON line.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use clap::Args as ClapArgs;
use distill::objective::{Batch, Objective, Projection, Student, TeacherOutputs, TeacherSignal};
use distill::recipe::Recipe;
use distill::{
    objective_for, GradientAccumulation, GroupedAdamW, MemoryPlan, RunPlan, TeacherPlan,
};
use qwen2::backend::{with_backend, BackendKind, BackendTask};
use qwen2::memory::{gib, peak_rss_bytes};
use qwen2::{
    attach_lora, build_frozen_model, build_model, AttentionMask, FrozenProducts, LoraSettings,
    Model, ModelConfig, RandomWeights,
};
use serde_json::json;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Student shape: tiny, qwen2.5-0.5b, qwen2.5-1.5b, deepseek-r1-distill-qwen-1.5b, smollm2-135m, llama-3.2-1b, qwen3-0.6b.
    #[arg(long, default_value = "qwen2.5-0.5b")]
    shape: String,
    /// Teacher shape (default: the student's).
    #[arg(long)]
    teacher_shape: Option<String>,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Updates timed after the warm-up; the median update is reported.
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Untimed updates first: the first creates AdamW's moments and the second is the first to
    /// update them, so both still grow the heap; from the third on an update reuses its memory.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Run even when the memory plan exceeds the memory available now.
    #[arg(long)]
    ignore_memory_plan: bool,
    /// A LoRA student of this rank on every linear layer (alpha = 2 x rank), its base frozen;
    /// 0 trains every parameter.
    #[arg(long, default_value_t = 0)]
    lora_rank: usize,
    /// Storage of frozen matrices (the teacher, a LoRA base): bfloat16 as hub checkpoints ship,
    /// or float32 (the default, as PyTorch's reference update holds its teacher).
    #[arg(long, default_value = "float32", value_parser = ["bfloat16", "float32"])]
    frozen_dtype: String,
    /// Products with the bf16 frozen matrices: float32 (widened, the default) or bfloat16
    /// (`memory.frozen_products`: bf16 products with f32 sums, the kernel printed).
    #[arg(long, default_value = "float32", value_parser = ["bfloat16", "float32"])]
    frozen_products: String,
    /// Activation checkpointing by layer: the body runs forward without a graph and each layer
    /// again in the backward pass (`memory.activation_checkpointing` in a recipe).
    #[arg(long)]
    activation_checkpointing: bool,
    /// The student alone, reading the teacher's top-64 rows as `--cache-teacher` training
    /// does (random rows; no teacher is built, and no hidden-state match is possible).
    #[arg(long)]
    cache_teacher: bool,
    /// Compute backend: flex (the default CPU backend), ndarray (CPU) or cuda (a `--features cuda` build).
    #[arg(long, default_value = "flex")]
    backend: BackendKind,
}

pub fn run(args: Args) -> Result<()> {
    with_backend(args.backend, Step(args))?
}

struct Step(Args);

fn preset(name: &str) -> Result<ModelConfig> {
    ModelConfig::preset(name)
        .ok_or_else(|| anyhow!("unknown shape `{name}`: use {}", ModelConfig::PRESETS))
}

/// Seconds of one update, by phase.
#[derive(Debug, Clone, Copy, Default)]
struct Phases {
    teacher_forward: f64,
    /// The student's forward pass and every loss (the chunked objective's logits included).
    student_forward_and_loss: f64,
    /// Every chunk's backward and the body's.
    backward: f64,
    /// Global-norm clipping and the AdamW step.
    optimizer: f64,
}

impl Phases {
    fn total(&self) -> f64 {
        self.teacher_forward + self.student_forward_and_loss + self.backward + self.optimizer
    }
}

impl BackendTask for Step {
    type Output = Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let student_config = preset(&args.shape)?;
        let teacher_shape = args.teacher_shape.clone().unwrap_or(args.shape.clone());
        let teacher_config = preset(&teacher_shape)?;
        // The seed recipe's training and distillation settings (no tokenizer check: random ids),
        // plus one middle-layer hidden-state MSE where the widths match, as PyTorch's reference
        // update has (tests/python/bench_torch.py), so the two do the same work.
        let hidden_mse =
            student_config.hidden_size == teacher_config.hidden_size && !args.cache_teacher;
        let frozen_bf16 = args.frozen_dtype == "bfloat16";
        let products = match args.frozen_products.as_str() {
            "bfloat16" => FrozenProducts::Bfloat16,
            _ => FrozenProducts::Float32,
        };
        products.set();
        let lora = (args.lora_rank > 0).then(|| LoraSettings {
            rank: args.lora_rank,
            alpha: 2.0 * args.lora_rank as f64,
            dropout: 0.0,
            target_modules: vec!["all-linear".into()],
            use_rslora: false,
        });
        if let Some(lora) = &lora {
            lora.validate(Some(&student_config), "--lora-rank")?;
        }
        let matches = if hidden_mse {
            format!(
                "intermediate_matches = [{{ layer_T = {}, layer_S = {}, feature = \"hidden\", \
                 loss = \"mse\", weight = 1.0 }}]\n",
                teacher_config.num_hidden_layers / 2,
                student_config.num_hidden_layers / 2
            )
        } else {
            String::new()
        };
        let mut recipe = Recipe::parse(
            &format!(
                "[teacher]\nlocal_dir = \"-\"\n[student]\nlocal_dir = \"-\"\n[dataset]\nshards = \"-\"\n\
                 [training]\noutput_dir = \"-\"\nper_device_train_batch_size = {}\n\
                 [memory]\nactivation_checkpointing = {}\n[distillation]\n{matches}",
                args.batch, args.activation_checkpointing
            ),
            Path::new("bench"),
            &[],
        )?;
        recipe.lora = lora.clone();
        // The run's plan as the trainer reads it, from the presets instead of files (random
        // ids: no tokenizer check).
        let run_plan = RunPlan {
            objective: objective_for(&recipe, None, student_config.vocab_size)?,
            student: student_config.clone(),
            teacher: match args.cache_teacher {
                true => TeacherPlan::Absent,
                false => TeacherPlan::Live(teacher_config.clone()),
            },
            block_len: args.seq_len,
        };
        let objective = &run_plan.objective;
        let plan = MemoryPlan::estimate(&run_plan.run_shape(&recipe, frozen_bf16, frozen_bf16));
        eprintln!("memory plan:\n{}", plan.table());
        // A GPU holds the tensors in its own memory, which this plan does not describe.
        if args.backend != BackendKind::Cuda && !args.ignore_memory_plan {
            if let Some(available) = plan.shortfall() {
                bail!(
                    "this update needs about {} at its peak but the machine has {} available \
                     (--ignore-memory-plan runs it anyway)",
                    gib(plan.total()),
                    gib(available)
                );
            }
        }
        let teacher = match args.cache_teacher {
            true => None,
            false => Some(Arc::new(build_frozen_model::<B>(
                &teacher_config,
                &mut RandomWeights::new(1),
                &device,
                frozen_bf16,
            )?)),
        };
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

        let updates = timed_updates::<Autodiff<B>>(
            &args,
            &student_config,
            lora.as_ref(),
            frozen_bf16,
            &recipe,
            objective,
            teacher.as_ref(),
            &batch,
            &device,
        )?;
        let mut updates = updates;
        updates.sort_by(|a, b| a.total().total_cmp(&b.total()));
        let median = updates[updates.len() / 2];

        let context = args.seq_len;
        let teacher_flops = match args.cache_teacher {
            true => 0.0,
            false => teacher_config.forward_flops_per_token(context) * tokens as f64,
        };
        let student_forward_flops = student_config.forward_flops_per_token(context) * tokens as f64;
        // The backward pass costs twice the forward (input and weight gradients); a frozen
        // base needs no weight gradients, so its matrices cost once, attention's twice.
        let attention_flops = (4
            * student_config.num_hidden_layers
            * context
            * student_config.num_attention_heads
            * student_config.head_dim
            * tokens) as f64;
        let backward_flops = match &lora {
            None => 2.0 * student_forward_flops,
            Some(_) => student_forward_flops + attention_flops,
        };
        // Activation checkpointing runs the body (every layer, not the lm_head) forward once
        // more, in the backward phase.
        let lm_head_flops =
            (2 * student_config.vocab_size * student_config.hidden_size * tokens) as f64;
        let backward_flops = match args.activation_checkpointing {
            true => backward_flops + student_forward_flops - lm_head_flops,
            false => backward_flops,
        };
        let student_flops = student_forward_flops + backward_flops;
        let gflops = |flops: f64, seconds: f64| flops / seconds / 1e9;
        let peak_rss = peak_rss_bytes();
        let report = json!({
            "bench": "distill-step",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "student_shape": args.shape,
            "teacher_shape": teacher_shape,
            "backend": args.backend.to_string(),
            "threads": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "batch": args.batch,
            "seq_len": args.seq_len,
            "hidden_mse": hidden_mse,
            "lora_rank": args.lora_rank,
            "frozen_dtype": args.frozen_dtype,
            "frozen_products": products.describe(),
            "cpu_features": matmul::cpu_features(),
            "kernel_isa": matmul::Isa::describe(),
            "cache_teacher": args.cache_teacher,
            "activation_checkpointing": args.activation_checkpointing,
            "updates_timed": updates.len(),
            "seconds_per_update": median.total(),
            "seconds_teacher_forward": median.teacher_forward,
            "seconds_student_forward_and_loss": median.student_forward_and_loss,
            "seconds_backward": median.backward,
            "seconds_clip_and_optimizer": median.optimizer,
            "tokens_per_second": tokens as f64 / median.total(),
            "gflop_per_update": (teacher_flops + student_flops) / 1e9,
            "gflops_achieved": gflops(teacher_flops + student_flops, median.total()),
            "gflops_teacher_forward": gflops(teacher_flops, median.teacher_forward),
            "gflops_student_forward": gflops(student_forward_flops, median.student_forward_and_loss),
            "gflops_backward": gflops(backward_flops, median.backward),
            "peak_rss_bytes": peak_rss,
            "memory_plan_bytes": plan.total(),
            "memory_plan": plan.parts,
        });
        println!(
            "distill step: {} -> {}{}, batch {} x {} tokens, {} backend, frozen products {} \
             (CPU: {}; median of {} updates)",
            if args.cache_teacher {
                "teacher cache (top-64)".to_string()
            } else {
                format!("{teacher_shape} ({})", args.frozen_dtype)
            },
            args.shape,
            match &lora {
                Some(lora) => format!(" LoRA rank {} (base {})", lora.rank, args.frozen_dtype),
                None => " (full-parameter)".to_string(),
            },
            args.batch,
            args.seq_len,
            args.backend,
            products.describe(),
            matmul::cpu_description(),
            updates.len()
        );
        let row = |name: &str, seconds: f64, flops: Option<f64>| {
            let rate = flops.map_or(String::new(), |f| format!("{:>8.1}", gflops(f, seconds)));
            println!("  {name:<38} {seconds:>8.2} s {rate}");
        };
        println!("  {:<38} {:>10} {:>8}", "phase", "time", "GFLOP/s");
        row(
            "teacher forward",
            median.teacher_forward,
            Some(teacher_flops),
        );
        row(
            "student forward + loss",
            median.student_forward_and_loss,
            Some(student_forward_flops),
        );
        row("backward", median.backward, Some(backward_flops));
        row("global-norm clip + AdamW", median.optimizer, None);
        row(
            "update",
            median.total(),
            Some(teacher_flops + student_flops),
        );
        println!(
            "  {:.2} tokens/s, peak RSS {} (memory plan {}, {:+.1}%)",
            tokens as f64 / median.total(),
            peak_rss.map_or("unknown".into(), gib),
            gib(plan.total()),
            peak_rss.map_or(0.0, |peak| (plan.total() as f64 / peak as f64 - 1.0)
                * 100.0),
        );
        println!("{report}");
        Ok(())
    }
}

/// Builds the student on the autodiff backend `A` and runs `warmup + steps` updates, returning the timed ones' phases.
#[allow(clippy::too_many_arguments)]
fn timed_updates<A: AutodiffBackend>(
    args: &Args,
    student_config: &ModelConfig,
    lora: Option<&LoraSettings>,
    frozen_bf16: bool,
    recipe: &Recipe,
    objective: &Objective,
    teacher: Option<&Arc<Model<A::InnerBackend>>>,
    batch: &Batch,
    device: &A::Device,
) -> Result<Vec<Phases>> {
    let tokens = batch.batch_size() * batch.seq_len();
    let vocab = student_config.vocab_size;
    let top_k = recipe.teacher_cache.top_k;
    let cached_rows = || cached_top_k::<A::InnerBackend>(tokens, top_k, vocab, device);
    let model = match lora {
        None => build_model::<A>(student_config, &mut RandomWeights::new(2), device)?,
        Some(lora) => {
            let base = build_frozen_model::<A>(
                student_config,
                &mut RandomWeights::new(2),
                device,
                frozen_bf16,
            )?;
            attach_lora(base, lora, frozen_bf16, 3)
        }
    };
    // Equal widths: the hidden-state match needs no learned projection.
    let projections = objective
        .intermediate_matches
        .iter()
        .map(|_| Projection { linear: None })
        .collect();
    let mut student = Student { model, projections };
    let mut optimizer = GroupedAdamW::<A>::new(&recipe.training);
    let mut updates: Vec<Phases> = Vec::new();
    for update in 0..args.warmup + args.steps.max(1) {
        let mut phases = Phases::default();
        let started = Instant::now();
        let outputs = match teacher {
            Some(teacher) => TeacherOutputs::from_model(teacher, batch, objective),
            None => cached_rows(),
        };
        A::sync(device)?;
        phases.teacher_forward = started.elapsed().as_secs_f64();

        // The trainer's own update: one micro-batch, the recipe's clipping, a fixed rate.
        let mut accumulation = GradientAccumulation::default();
        let (losses, times) =
            accumulation.add(&student, &outputs, batch, objective, recipe, update, 0);
        A::sync(device)?;
        phases.student_forward_and_loss = times.student_forward_and_loss;
        phases.backward = times.backward;

        let started = Instant::now();
        student = accumulation.apply(student, &mut optimizer, recipe, 5e-5).0;
        A::sync(device)?;
        phases.optimizer = started.elapsed().as_secs_f64();
        eprintln!(
            "update {update}{}: {:.2} s (teacher forward {:.2}, student forward + loss {:.2}, \
                 backward {:.2}, clip + AdamW {:.2}; loss {:.4})",
            if update < args.warmup {
                " (warm-up)"
            } else {
                ""
            },
            phases.total(),
            phases.teacher_forward,
            phases.student_forward_and_loss,
            phases.backward,
            phases.optimizer,
            losses.total
        );
        if update >= args.warmup {
            updates.push(phases);
        }
    }
    Ok(updates)
}

/// Teacher rows as the offline cache serves them: `top_k` distinct ids per position with
/// descending logits, and the log-sum-exp of the rest.
fn cached_top_k<B: Backend>(
    positions: usize,
    top_k: usize,
    vocab: usize,
    device: &B::Device,
) -> TeacherOutputs<B> {
    let stride = vocab / top_k;
    let ids: Vec<i64> = (0..positions)
        .flat_map(|p| (0..top_k).map(move |k| ((k * stride + p) % vocab) as i64))
        .collect();
    let logits: Vec<f32> = (0..positions)
        .flat_map(|_| (0..top_k).map(|k| 8.0 - 0.1 * k as f32))
        .collect();
    TeacherOutputs {
        signal: TeacherSignal::TopK {
            ids: Tensor::from_data(TensorData::new(ids, [positions, top_k]), device),
            logits: Tensor::from_data(TensorData::new(logits, [positions, top_k]), device),
            rest_lse: Tensor::full([positions], 4.0, device),
        },
        states: Vec::new(),
    }
}
