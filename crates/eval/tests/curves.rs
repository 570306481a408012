//! Training curves from distill's metrics log, drawn as a PNG that decodes.

use std::path::{Path, PathBuf};

use eval::curves::{curve_panels, plot_training_curves};

/// Lines in the format of `distill::metrics::MetricsLog::log`.
fn write_run(dir: &Path, with_kl: bool, slope: f64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = String::new();
    for step in 1..=20u64 {
        let loss = 6.0 - slope * step as f64;
        text.push_str(&format!(
            "{{\"step\":{step},\"epoch\":{},\"split\":\"train\",\"loss\":{loss},\"lr\":0.0001}}\n",
            step as f64 / 10.0
        ));
        if step % 10 == 0 {
            let kl = if with_kl {
                format!(",\"kl_to_teacher\":{}", 2.0 / step as f64)
            } else {
                String::new()
            };
            text.push_str(&format!(
                "{{\"step\":{step},\"epoch\":{},\"split\":\"eval\",\"loss\":{},\"perplexity\":null{kl}}}\n",
                step as f64 / 10.0,
                loss + 0.2
            ));
        }
    }
    let path = dir.join("metrics.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn curves_of_two_runs_are_drawn_into_a_png_that_decodes() {
    let root = tempfile::tempdir().unwrap();
    let distilled = write_run(&root.path().join("distilled"), true, 0.1);
    write_run(&root.path().join("hard"), false, 0.05);
    // A distill output directory stands for its metrics.jsonl.
    let runs = vec![
        ("distilled".to_string(), distilled),
        ("hard-label".to_string(), root.path().join("hard")),
    ];
    let out = root.path().join("report/curves.png");
    let panels = plot_training_curves(&runs, &out).unwrap();

    let labels: Vec<Vec<&str>> = panels
        .iter()
        .map(|p| p.series.iter().map(|s| s.label.as_str()).collect())
        .collect();
    assert_eq!(
        labels,
        vec![
            vec![
                "distilled train",
                "distilled eval",
                "hard-label train",
                "hard-label eval"
            ],
            vec!["distilled kl_to_teacher"],
        ]
    );
    assert_eq!(panels[0].series[1].points, vec![(10.0, 5.2), (20.0, 4.2)]);

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((frame.width, frame.height), (1000, 2 * 420));
    let pixels = &pixels[..frame.buffer_size()];
    let channels = frame.color_type.samples();
    let drawn = pixels
        .chunks(channels)
        .filter(|p| p.iter().take(3).any(|&c| c < 200))
        .count();
    assert!(
        drawn > 5_000,
        "only {drawn} non-white pixels: nothing was drawn"
    );
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "only curves.png remains: {leftovers:?}");
}

#[test]
fn logs_without_a_loss_or_with_a_bad_line_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("metrics.jsonl");
    std::fs::write(
        &path,
        "{\"step\":1,\"epoch\":0.1,\"split\":\"train\",\"lr\":0.1}\n",
    )
    .unwrap();
    let message = curve_panels(&[("run".into(), path.clone())])
        .unwrap_err()
        .to_string();
    assert!(message.contains("no `loss` metric"), "{message}");

    std::fs::write(
        &path,
        "{\"step\":1,\"epoch\":0.1,\"split\":\"train\",\"loss\":2.0}\n{\"epoch\":0.2,\"split\":\"train\",\"loss\":1.0}\n",
    )
    .unwrap();
    let message = curve_panels(&[("run".into(), path.clone())])
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("line 2") && message.contains("`step`"),
        "{message}"
    );

    let message = curve_panels(&[("run".into(), root.path().join("missing.jsonl"))])
        .unwrap_err()
        .to_string();
    assert!(message.contains("missing.jsonl"), "{message}");
}
