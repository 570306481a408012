//! Progress on stderr that reaches whoever reads it. On a terminal it is an indicatif bar; when
//! stderr is a file or a pipe (`> log 2>&1`, CI, nohup) a bar draws nothing, so the same calls
//! print a plain line every [`LOG_INTERVAL`] instead (what, bytes done of total, rate, ETA) and
//! one when the work ends.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressStyle};

/// How often a log gets a progress line: often enough to show a run is alive, rarely enough
/// that a long download stays a few hundred lines.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Where progress goes.
pub enum Output {
    /// An indicatif bar drawn with this template (see `ProgressStyle::with_template`).
    Bar(&'static str),
    /// Plain lines, at most one per interval, to this writer.
    Lines {
        interval: Duration,
        writer: Box<dyn Write + Send>,
    },
    Hidden,
}

impl Output {
    /// A bar with `bar_template` when stderr is a terminal, else lines on stderr; nothing
    /// when `visible` is false.
    pub fn stderr(visible: bool, bar_template: &'static str) -> Self {
        match (visible, std::io::stderr().is_terminal()) {
            (false, _) => Output::Hidden,
            (true, true) => Output::Bar(bar_template),
            (true, false) => Output::Lines {
                interval: LOG_INTERVAL,
                writer: Box::new(std::io::stderr()),
            },
        }
    }
}

/// Progress of one piece of work measured in bytes.
pub struct ByteProgress {
    bar: ProgressBar,
    lines: Option<Mutex<Lines>>,
}

struct Lines {
    writer: Box<dyn Write + Send>,
    interval: Duration,
    message: String,
    total: Option<u64>,
    start_position: u64,
    position: u64,
    started: Instant,
    last_line: Instant,
    /// The last line is printed; nothing more is.
    ended: bool,
}

impl ByteProgress {
    /// Starts at `position` of `total` bytes (unknown when `None`), labelled `message`.
    pub fn new(output: Output, message: &str, total: Option<u64>, position: u64) -> Self {
        let bar = || match total {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::no_length(),
        };
        match output {
            Output::Hidden => ByteProgress {
                bar: ProgressBar::hidden(),
                lines: None,
            },
            Output::Bar(template) => {
                let bar = bar();
                bar.set_style(
                    ProgressStyle::with_template(template)
                        .expect("a valid progress template")
                        .progress_chars("=> "),
                );
                bar.set_message(message.to_string());
                bar.set_position(position);
                ByteProgress { bar, lines: None }
            }
            Output::Lines { interval, writer } => {
                let now = Instant::now();
                ByteProgress {
                    bar: ProgressBar::hidden(),
                    lines: Some(Mutex::new(Lines {
                        writer,
                        interval,
                        message: message.to_string(),
                        total,
                        start_position: position,
                        position,
                        started: now,
                        last_line: now,
                        ended: false,
                    })),
                }
            }
        }
    }

    /// Whether anything is shown (a bar or lines).
    pub fn is_visible(&self) -> bool {
        !self.bar.is_hidden() || self.lines.is_some()
    }

    /// Whether this draws a bar, which leaves the cursor at the end of its line.
    pub fn is_bar(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// Redraws the bar a few times a second even without progress (a spinner's clock).
    pub fn enable_steady_tick(&self, every: Duration) {
        self.bar.enable_steady_tick(every);
    }

    pub fn set_message(&self, message: &str) {
        self.bar.set_message(message.to_string());
        if let Some(lines) = &self.lines {
            lines.lock().expect("progress lock").message = message.to_string();
        }
    }

    pub fn set_position(&self, position: u64) {
        self.bar.set_position(position);
        if let Some(lines) = &self.lines {
            let mut lines = lines.lock().expect("progress lock");
            lines.position = position;
            if !lines.ended && lines.last_line.elapsed() >= lines.interval {
                lines.print(false);
            }
        }
    }

    /// The work is done: the bar stays at its end, a log gets a last line.
    pub fn finish(&self) {
        self.bar.finish();
        self.end(true);
    }

    /// The work stopped early: the bar stays where it was, a log says so.
    pub fn abandon(&self) {
        self.bar.abandon();
        self.end(false);
    }

    /// Done, and the bar removed from the terminal.
    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
        self.end(true);
    }

    fn end(&self, finished: bool) {
        if let Some(lines) = &self.lines {
            let mut lines = lines.lock().expect("progress lock");
            if lines.ended {
                return;
            }
            if finished {
                if let Some(total) = lines.total {
                    lines.position = lines.position.max(total);
                }
            }
            lines.print(true);
            lines.ended = true;
        }
    }
}

impl Lines {
    fn print(&mut self, last: bool) {
        let elapsed = self.started.elapsed();
        let moved = self.position.saturating_sub(self.start_position);
        let rate = moved as f64 / elapsed.as_secs_f64().max(1e-3);
        let done = match self.total {
            Some(total) if total > 0 => format!(
                "{} / {} ({:.0}%)",
                HumanBytes(self.position),
                HumanBytes(total),
                100.0 * self.position as f64 / total as f64
            ),
            _ => HumanBytes(self.position).to_string(),
        };
        let timing = if last {
            format!("in {}", HumanDuration(elapsed))
        } else {
            match self.total {
                Some(total) if rate > 0.0 => {
                    let left = total.saturating_sub(self.position) as f64 / rate;
                    format!("ETA {}", HumanDuration(Duration::from_secs_f64(left)))
                }
                _ => "ETA unknown".to_string(),
            }
        };
        let _ = writeln!(
            self.writer,
            "{}: {done}, {}/s, {timing}",
            self.message,
            HumanBytes(rate as u64)
        );
        let _ = self.writer.flush();
        self.last_line = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn lines(interval: Duration, captured: &Captured) -> Output {
        Output::Lines {
            interval,
            writer: Box::new(captured.clone()),
        }
    }

    #[test]
    fn a_log_gets_lines_with_bytes_rate_and_eta_then_a_last_line() {
        let captured = Captured::default();
        let progress = ByteProgress::new(
            lines(Duration::ZERO, &captured),
            "model.safetensors",
            Some(4 << 20),
            0,
        );
        progress.set_position(1 << 20);
        progress.finish();
        let text = captured.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("model.safetensors: 1.00 MiB / 4.00 MiB (25%), "),
            "{text}"
        );
        assert!(lines[0].contains("/s, ETA "), "{text}");
        assert!(
            lines[1].starts_with("model.safetensors: 4.00 MiB / 4.00 MiB (100%), "),
            "{text}"
        );
        assert!(lines[1].contains(", in "), "{text}");
    }

    #[test]
    fn lines_wait_for_the_interval_and_end_once() {
        let captured = Captured::default();
        let progress = ByteProgress::new(
            lines(Duration::from_secs(3600), &captured),
            "train.parquet",
            None,
            0,
        );
        for position in 1..1000 {
            progress.set_position(position);
        }
        assert_eq!(captured.text(), "");
        progress.abandon();
        progress.finish();
        let text = captured.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("train.parquet: 999 B, "), "{text}");
    }

    #[test]
    fn hidden_progress_prints_nothing() {
        let progress = ByteProgress::new(Output::Hidden, "x", Some(10), 0);
        assert!(!progress.is_visible());
        progress.set_position(5);
        progress.finish();
    }
}
