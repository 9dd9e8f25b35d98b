//! Samples of one measure, as the call-by-call benchmarks (`component.rs`,
//! `cold.rs`) print them.

use std::time::Duration;

/// The median, the p90 and the count: `2283 us (2446 us p90, n=31)`.
pub fn stats(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    format!(
        "{} ({} p90, n={})",
        show(at(0.5)),
        show(at(0.9)),
        samples.len()
    )
}

/// The median.
pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Milliseconds with one decimal from 10 ms up, whole microseconds from
/// 10 us, two decimals below.
fn show(d: Duration) -> String {
    match d.as_nanos() {
        n if n >= 10_000_000 => format!("{:.1} ms", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.0} us", n as f64 / 1e3),
        n => format!("{:.2} us", n as f64 / 1e3),
    }
}
