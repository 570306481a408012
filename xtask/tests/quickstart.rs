//! The README's first command, shortened: the quickstart runs offline on what the repository
//! ships and writes a report with every row and a verdict. (The full run is 150 updates per
//! student; two are enough to prove the pipeline is wired end to end.)

use std::path::Path;
use std::process::Command;

#[test]
fn quickstart_runs_offline_end_to_end() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("report");
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(&root)
        .args(["quickstart", "--steps", "2", "--eval-blocks", "2", "--work"])
        .arg(work.path())
        .arg("--out")
        .arg(&out)
        .output()
        .expect("xtask runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "quickstart failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("verdict: distillation"), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let labels: Vec<&str> = report["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "teacher",
            "student before",
            "distilled student",
            "hard-label student"
        ]
    );
    for model in report["models"].as_array().unwrap() {
        let loss = model["eval_loss"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{model}");
    }
    // Students are compared with the teacher; the teacher's own row has no KL.
    assert!(report["models"][2]["kl_to_teacher"].as_f64().unwrap() > 0.0);
    assert!(out.join("report.md").exists());
    assert!(out.join("curves.png").exists());
    // The runs trained the student twice from the same start, in the work dir only.
    assert!(work
        .path()
        .join("runs/distilled/final/model.safetensors")
        .exists());
    assert!(work
        .path()
        .join("runs/hard-labels/final/model.safetensors")
        .exists());

    // The memory plan of the same recipe on the quickstart's own shards and student: printed
    // alone with --dry-run, and a run that cannot fit is refused before anything is loaded.
    let distill = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .current_dir(&root)
            .args(["distill", "--config", "configs/quickstart.toml", "--set"])
            .arg(format!(
                "student.local_dir={}",
                work.path().join("student-init").display()
            ))
            .arg("--set")
            .arg(format!(
                "dataset.shards={}",
                work.path().join("shards").display()
            ))
            .arg("--set")
            .arg(format!(
                "training.output_dir={}",
                work.path().join("runs/planned").display()
            ))
            .args(extra)
            .output()
            .expect("xtask runs")
    };
    let dry = distill(&["--dry-run"]);
    let stdout = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    for part in [
        "student weights (f32)",
        "AdamW moments",
        "teacher weights",
        "total",
    ] {
        assert!(
            stdout.contains(part),
            "{part} missing from the plan:\n{stdout}"
        );
    }
    assert!(
        !work.path().join("runs/planned").exists(),
        "a dry run trains nothing"
    );
    // A LoRA student: the plan holds the frozen base and the adapters' states instead.
    let lora = distill(&["--dry-run", "--set", "lora.rank=4"]);
    let stdout = String::from_utf8_lossy(&lora.stdout);
    assert!(lora.status.success(), "{stdout}");
    for part in ["student base weights (f32, frozen)", "LoRA adapters"] {
        assert!(
            stdout.contains(part),
            "{part} missing from the plan:\n{stdout}"
        );
    }
    assert!(!stdout.contains("AdamW moments (2 x f32)"), "{stdout}");
    let too_big = distill(&[
        "--set",
        "training.per_device_train_batch_size=1000000",
        "--max-steps",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&too_big.stderr);
    assert!(!too_big.status.success(), "an impossible run was started");
    assert!(stderr.contains("Ways to fit"), "{stderr}");
    assert!(
        !work.path().join("runs/planned").exists(),
        "a refused run writes nothing"
    );

    on_policy_distillation_trains_and_its_continuations_are_scored(&root, work.path());
}

/// configs/quickstart-on-policy.toml on the quickstart's shards and student, a few updates with
/// every micro-batch continued by the student; then `cargo xtask eval --continuations` scores
/// the student's own continuations of held-out prompts with the teacher.
fn on_policy_distillation_trains_and_its_continuations_are_scored(root: &Path, work: &Path) {
    let run = work.join("runs/on-policy");
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(root)
        .args(["distill", "--config", "configs/quickstart-on-policy.toml"])
        .args(["--max-steps", "3", "--quiet"])
        .arg("--set")
        .arg(format!(
            "student.local_dir={}",
            work.join("student-init").display()
        ))
        .arg("--set")
        .arg(format!("dataset.shards={}", work.join("shards").display()))
        .arg("--set")
        .arg(format!("training.output_dir={}", run.display()))
        .args([
            "--set",
            "on_policy.lmbda=1.0",
            "--set",
            "on_policy.prompt_len=16",
        ])
        .args(["--set", "on_policy.max_new_tokens=16"])
        .args(["--set", "training.max_eval_batches=2"])
        .args(["--set", "training.logging_steps=1"])
        .output()
        .expect("xtask runs");
    assert!(
        output.status.success(),
        "on-policy distill failed\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let train_lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|v: &serde_json::Value| v["split"] == "train")
        .collect();
    let last = train_lines.last().expect("a train line");
    assert_eq!(last["on_policy_fraction"].as_f64(), Some(1.0), "{last}");
    assert!(last["generated_length"].as_f64().unwrap() > 0.0, "{last}");
    assert!(run.join("final/model.safetensors").exists());

    let report_dir = work.join("on-policy-report");
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(root)
        .args(["eval", "--teacher", "data/tiny-teacher", "--model"])
        .arg(run.join("final"))
        .arg("--data")
        .arg(work.join("shards"))
        .args([
            "--split",
            "test",
            "--max-blocks",
            "2",
            "--latency-repeats",
            "1",
        ])
        .args(["--no-generate", "--continuations", "4"])
        .args([
            "--continuation-prompt-len",
            "16",
            "--max-new-tokens",
            "8",
            "--out",
        ])
        .arg(&report_dir)
        .output()
        .expect("xtask runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "eval failed\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("teacher CE on own continuations"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap())
            .unwrap();
    for model in report["models"].as_array().unwrap() {
        let continuations = &model["continuations"];
        assert_eq!(continuations["prompts"], 4, "{model}");
        let ce = continuations["teacher_cross_entropy"].as_f64().unwrap();
        assert!(ce.is_finite() && ce > 0.0, "{model}");
        let length = continuations["mean_new_tokens"].as_f64().unwrap();
        assert!(length > 0.0 && length <= 8.0, "{model}");
    }
}
