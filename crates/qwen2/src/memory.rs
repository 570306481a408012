//! Memory figures of this process, read from /proc (Linux), for honest reports.

/// Peak resident set size so far (VmHWM), in bytes; None where /proc is unavailable.
pub fn peak_rss_bytes() -> Option<u64> {
    status_field("VmHWM:")
}

/// Current resident set size (VmRSS), in bytes.
pub fn current_rss_bytes() -> Option<u64> {
    status_field("VmRSS:")
}

/// Resets the peak (VmHWM) to the current RSS, so a phase can be measured on its own.
/// Linux supports this by writing "5" to /proc/self/clear_refs; it is best effort.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn status_field(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes as GiB with two decimals, for human output.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}
