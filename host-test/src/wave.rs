//! One wave of concurrent calls, as the fleet benchmarks (`fleet.rs`,
//! `shared.rs`) time it: the wave's wall time and each call's time, both from
//! the common release.

use std::time::Duration;

/// A wave's wall time and each call's time.
pub struct Wave {
    pub wall: Duration,
    pub times: Vec<Duration>,
}

impl Wave {
    /// The call time at quantile `q` (0.5: the median; 0.99: p99).
    pub fn at(&self, q: f64) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        t[((t.len() - 1) as f64 * q).round() as usize]
    }
}

/// A duration in milliseconds, one decimal from 10 ms up, two below.
pub fn show(d: Duration) -> String {
    match d.as_micros() {
        n if n >= 10_000 => format!("{:.1} ms", n as f64 / 1e3),
        n => format!("{:.2} ms", n as f64 / 1e3),
    }
}
