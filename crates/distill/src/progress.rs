//! Progress on stderr while training: a bar on a terminal; without one (CI, nohup,
//! `> log 2>&1`), where a bar draws nothing, one plain line per logging step with the step,
//! loss, throughput and ETA.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub enum Progress {
    Hidden,
    Bar(ProgressBar),
    Lines {
        total_steps: usize,
        /// The step this process started at, and when, for the ETA.
        first_step: usize,
        started: Instant,
    },
}

impl Progress {
    /// Progress of a run of `total_steps` updates that starts at `position`.
    pub fn new(visible: bool, total_steps: usize, position: usize) -> Self {
        if !visible {
            return Progress::Hidden;
        }
        if !std::io::stderr().is_terminal() {
            return Progress::Lines {
                total_steps,
                first_step: position,
                started: Instant::now(),
            };
        }
        let bar =
            ProgressBar::with_draw_target(Some(total_steps as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} step {pos}/{len} | {msg} | {elapsed_precise} elapsed, ETA {eta_precise}",
            )
            .expect("valid template"),
        );
        bar.set_position(position as u64);
        bar.reset_eta();
        Progress::Bar(bar)
    }

    /// After every update: moves the bar (`loss` of this update, throughput of the run).
    pub fn update(&self, step: usize, epoch: f64, loss: f64, tokens_per_second: f64) {
        if let Progress::Bar(bar) = self {
            bar.set_position(step as u64);
            bar.set_message(format!(
                "epoch {epoch:.2} | loss {loss:.4} | {tokens_per_second:.0} tok/s"
            ));
        }
    }

    /// At a logging step: a plain line without a terminal (`loss` and throughput of the
    /// logging window, as the metrics log has them).
    pub fn logging_step(&self, step: usize, epoch: f64, loss: f64, tokens_per_second: f64) {
        if let Progress::Lines {
            total_steps,
            first_step,
            started,
        } = self
        {
            let done = step.saturating_sub(*first_step).max(1);
            let per_step = started.elapsed().as_secs_f64() / done as f64;
            let eta = Duration::from_secs_f64(per_step * total_steps.saturating_sub(step) as f64);
            eprintln!(
                "step {step}/{total_steps} | epoch {epoch:.2} | loss {loss:.4} | \
                 {tokens_per_second:.0} tok/s | ETA {}",
                clock(eta)
            );
        }
    }

    /// The run failed: leave the bar where it stopped.
    pub fn abandon(&self) {
        if let Progress::Bar(bar) = self {
            bar.abandon();
        }
    }

    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish();
        }
    }
}

/// `h:mm:ss`.
fn clock(duration: Duration) -> String {
    let seconds = duration.as_secs();
    format!(
        "{}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_reads_hours_minutes_seconds() {
        assert_eq!(clock(Duration::from_secs(3 * 3600 + 7 * 60 + 5)), "3:07:05");
        assert_eq!(clock(Duration::from_secs(59)), "0:00:59");
    }
}
