//! `init-student` as one function: check the request, measure importance, plan, cut the
//! teacher's weights, measure the held-out loss before any training, save.

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::Backend;
use preprocess::Block;
use qwen2::safetensors::Dtype;
use qwen2::{build_model, load_model, open_weights, save_model, GenerationConfig, ModelConfig};

use crate::error::{flag_error, Result};
use crate::importance::{held_out_loss, measure_importance};
use crate::plan::PrunePlan;
use crate::report::StudentReport;
use crate::spec::PruneSpec;
use crate::weights::PrunedWeights;

/// The file beside the student's weights that records why it is what it is.
pub const IMPORTANCE_FILE: &str = "importance.json";

pub struct InitStudent<'a> {
    /// A Hugging Face folder or a GGUF file.
    pub teacher: &'a Path,
    pub out: &'a Path,
    pub spec: PruneSpec,
    /// Blocks to measure importance on (none: no importance, only explicit layer choices).
    pub calibration: Vec<Block>,
    /// Blocks to measure the teacher's and the student's loss on (none: not measured).
    pub held_out: Vec<Block>,
    /// The student's model.safetensors dtype.
    pub dtype: Dtype,
}

/// Builds the student `request` describes, saves it with its importance.json, and returns what
/// was measured. `progress` hears one line per stage and per calibration block.
pub fn init_student<B: Backend>(
    request: InitStudent<'_>,
    device: &B::Device,
    mut progress: impl FnMut(&str),
) -> Result<StudentReport> {
    let teacher_config = ModelConfig::from_file(request.teacher)?;
    request.spec.validate(&teacher_config)?;
    if request.spec.needs_importance() && request.calibration.is_empty() {
        return Err(flag_error(
            "--calibration",
            "--num-layers and the width flags choose by importance, measured on calibration \
             blocks: give --calibration SHARDS (or --keep-layers to choose layers by hand)",
        ));
    }

    let mut importance = None;
    let mut teacher_loss = None;
    let mut seconds = 0.0;
    if !request.calibration.is_empty() || !request.held_out.is_empty() {
        progress(&format!(
            "loading the teacher {}",
            request.teacher.display()
        ));
        let (teacher, _) = load_model::<B>(request.teacher, device)?;
        if !request.calibration.is_empty() {
            let started = Instant::now();
            let total = request.calibration.len();
            importance = Some(measure_importance(
                &teacher,
                &request.calibration,
                |done, _| {
                    progress(&format!(
                        "importance: block {done}/{total} ({:.0} s)",
                        started.elapsed().as_secs_f64()
                    ))
                },
            ));
            seconds = started.elapsed().as_secs_f64();
        }
        if !request.held_out.is_empty() {
            progress("held-out loss of the teacher");
            teacher_loss = Some(held_out_loss(&teacher, &request.held_out));
        }
    }

    let plan = PrunePlan::new(&request.spec, &teacher_config, importance.as_ref())?;
    let student_config = plan.student_config(&teacher_config);
    progress("cutting the student from the teacher's weights");
    let (_, teacher_weights) = open_weights(request.teacher)?;
    let mut weights = PrunedWeights::new(teacher_weights, teacher_config.clone(), plan.clone());
    let student = build_model::<B>(&student_config, &mut weights, device)?;
    let student_loss = (!request.held_out.is_empty()).then(|| {
        progress("held-out loss of the student");
        held_out_loss(&student, &request.held_out)
    });

    let report = StudentReport {
        teacher: request.teacher.display().to_string(),
        teacher_config,
        student_config,
        spec_layer_ranking: request.spec.layer_ranking.name(),
        plan,
        importance,
        importance_seconds: seconds,
        calibration_blocks: request.calibration.len(),
        held_out_blocks: request.held_out.len(),
        teacher_held_out_loss: teacher_loss,
        student_held_out_loss: student_loss,
    };
    let generation = if request.teacher.is_dir() {
        GenerationConfig::from_dir(request.teacher, &report.teacher_config).ok()
    } else {
        None
    };
    progress(&format!("saving {}", request.out.display()));
    save_model(
        &student,
        &report.student_config,
        request.out,
        &qwen2::SaveOptions {
            dtype: request.dtype,
            tokenizer_dir: Some(request.teacher),
            generation: generation.as_ref(),
        },
    )?;
    let path = request.out.join(IMPORTANCE_FILE);
    let json = serde_json::to_vec_pretty(&report).expect("the report serialises");
    fsio::write_atomic(&path, &json)?;
    Ok(report)
}
