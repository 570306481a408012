//! Training curves from distill's metrics log (`metrics.jsonl`, see `distill::metrics`): one
//! JSON object per line with `step`, `epoch`, `split` ("train" or "eval") and the metrics.
//!
//! The plot has a "loss" panel (the `loss` metric of the train and eval lines of every run) and,
//! when any eval line has a metric whose name contains `kl`, a "KL to teacher" panel. It is a
//! PNG drawn by plotters' bitmap backend; text uses the DejaVu Sans font embedded by the
//! `dejavu` crate (through plotters' `ab_glyph` feature), so no system font library is needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use serde_json::Value;

use crate::error::EvalError;

/// The metrics log's name in a distill output directory (`distill::metrics::METRICS_FILE`).
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of a metrics log.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    pub step: u64,
    pub epoch: f64,
    pub split: String,
    /// Finite values only (the log writes non-finite values as `null`).
    pub values: BTreeMap<String, f64>,
}

/// Reads a metrics JSONL file; a directory means its `metrics.jsonl` (a distill output dir).
pub fn read_metrics(path: &Path) -> Result<Vec<MetricPoint>, EvalError> {
    let path = metrics_file(path);
    let text = std::fs::read_to_string(&path).map_err(EvalError::io("read", &path))?;
    let mut points = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let error = |message: String| EvalError::Metrics {
            path: path.clone(),
            line: index + 1,
            message,
        };
        let value: Value = serde_json::from_str(line)
            .map_err(|e| error(format!("not JSON ({e}); is this distill's metrics.jsonl?")))?;
        let object = value
            .as_object()
            .ok_or_else(|| error("expected a JSON object per line".into()))?;
        let step = object
            .get("step")
            .and_then(Value::as_u64)
            .ok_or_else(|| error("field `step`: missing or not a non-negative integer".into()))?;
        let split = object
            .get("split")
            .and_then(Value::as_str)
            .ok_or_else(|| error("field `split`: missing or not a string".into()))?
            .to_string();
        let epoch = object
            .get("epoch")
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN);
        let mut values = BTreeMap::new();
        for (name, value) in object {
            if matches!(name.as_str(), "step" | "epoch" | "split") {
                continue;
            }
            match value {
                Value::Null => {}
                Value::Number(number) => {
                    let number = number.as_f64().unwrap_or(f64::NAN);
                    if number.is_finite() {
                        values.insert(name.clone(), number);
                    }
                }
                _ => return Err(error(format!("field `{name}`: expected a number or null"))),
            }
        }
        points.push(MetricPoint {
            step,
            epoch,
            split,
            values,
        });
    }
    Ok(points)
}

fn metrics_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(METRICS_FILE)
    } else {
        path.to_path_buf()
    }
}

/// A named line of (step, value) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart of the figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

/// The panels drawn for `runs` (label, metrics path): see the module docs.
pub fn curve_panels(runs: &[(String, PathBuf)]) -> Result<Vec<Panel>, EvalError> {
    let mut loss = Panel {
        title: "loss (nats)".into(),
        series: Vec::new(),
    };
    let mut kl = Panel {
        title: "KL to teacher (eval)".into(),
        series: Vec::new(),
    };
    for (label, path) in runs {
        let points = read_metrics(path)?;
        for split in ["train", "eval"] {
            let line = series_of(&points, split, "loss");
            if !line.is_empty() {
                loss.series.push(Series {
                    label: format!("{label} {split}"),
                    points: line,
                });
            }
        }
        let mut kl_names: Vec<&String> = points
            .iter()
            .filter(|p| p.split == "eval")
            .flat_map(|p| p.values.keys())
            .filter(|name| name.to_ascii_lowercase().contains("kl"))
            .collect();
        kl_names.sort();
        kl_names.dedup();
        for name in kl_names {
            kl.series.push(Series {
                label: format!("{label} {name}"),
                points: series_of(&points, "eval", name),
            });
        }
    }
    if loss.series.is_empty() {
        let files: Vec<String> = runs
            .iter()
            .map(|(_, p)| metrics_file(p).display().to_string())
            .collect();
        return Err(EvalError::Invalid(format!(
            "no `loss` metric in {}: pass the metrics.jsonl of a distill run (--metrics LABEL=PATH)",
            files.join(", ")
        )));
    }
    Ok([loss, kl]
        .into_iter()
        .filter(|panel| !panel.series.is_empty())
        .collect())
}

fn series_of(points: &[MetricPoint], split: &str, name: &str) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter(|p| p.split == split)
        .filter_map(|p| p.values.get(name).map(|&v| (p.step as f64, v)))
        .collect()
}

/// Draws the training curves of `runs` (label, metrics JSONL path or distill output dir) into
/// `out_png` (written atomically). Returns the panels drawn.
pub fn plot_training_curves(
    runs: &[(String, PathBuf)],
    out_png: &Path,
) -> Result<Vec<Panel>, EvalError> {
    let panels = curve_panels(runs)?;
    register_font().map_err(|message| EvalError::Plot {
        path: out_png.to_path_buf(),
        message,
    })?;
    if let Some(parent) = out_png.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(EvalError::io("create directory", parent))?;
    }
    // plotters writes the PNG by path: draw it under fsio's temporary name, sync it, then
    // commit it as fsio::write_atomic would.
    let temporary = fsio::temporary_path(out_png);
    let drawn = draw(&panels, &temporary).map_err(|message| EvalError::Plot {
        path: out_png.to_path_buf(),
        message,
    });
    let synced = drawn.and_then(|()| {
        std::fs::File::open(&temporary)
            .and_then(|file| file.sync_all())
            .map_err(EvalError::io("sync", &temporary))
    });
    if let Err(error) = synced {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    fsio::commit(&temporary, out_png)?;
    Ok(panels)
}

const FONT: &str = "sans-serif";
/// Matplotlib's "tab10" colours: distinct on white, unlike plotters' palette (pale yellow).
const SERIES_COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const WIDTH: u32 = 1000;
const PANEL_HEIGHT: u32 = 420;

fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans font did not load".to_string())
        })
        .clone()
}

fn draw(panels: &[Panel], path: &Path) -> Result<(), String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let root =
        BitMapBackend::new(path, (WIDTH, PANEL_HEIGHT * panels.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| text(&e))?;
    let areas = root.split_evenly((panels.len(), 1));
    for (area, panel) in areas.iter().zip(panels) {
        let (x_range, y_range) = bounds(panel);
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, (FONT, 22))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x_range, y_range)
            .map_err(|e| text(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|step| format!("{step:.0}"))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .draw()
            .map_err(|e| text(&e))?;
        for (index, series) in panel.series.iter().enumerate() {
            let color = SERIES_COLORS[index % SERIES_COLORS.len()].to_rgba();
            chart
                .draw_series(LineSeries::new(
                    series.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| text(&e))?
                .label(series.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            // Sparse lines (eval every epoch) show their points too.
            if series.points.len() <= 60 {
                chart
                    .draw_series(
                        series
                            .points
                            .iter()
                            .map(|&point| Circle::new(point, 3, color.filled())),
                    )
                    .map_err(|e| text(&e))?;
            }
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| text(&e))?;
    }
    root.present().map_err(|e| text(&e))?;
    Ok(())
}

/// Axis ranges that hold every point, with a margin; never empty.
fn bounds(panel: &Panel) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let points = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (0.0..1.0, 0.0..1.0);
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    let pad = if y1 > y0 {
        (y1 - y0) * 0.05
    } else {
        y0.abs().max(1.0) * 0.1
    };
    (x0..x1, (y0 - pad)..(y1 + pad))
}
