//! A wall clock the test (or host) sets, handed to the component as wasi:clocks/wall-clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// A shared, settable wall clock. Clones see the same time.
///
/// ```
/// let clock = host_test::TestClock::at_unix(1_700_000_000);
/// clock.advance(std::time::Duration::from_secs(60));
/// assert_eq!(clock.unix_seconds(), 1_700_000_060);
/// ```
#[derive(Clone, Debug)]
pub struct TestClock {
    nanos: Arc<AtomicU64>,
}

impl TestClock {
    /// A clock showing `secs` after the Unix epoch.
    pub fn at_unix(secs: u64) -> Self {
        TestClock {
            nanos: Arc::new(AtomicU64::new(secs * 1_000_000_000)),
        }
    }

    /// A clock starting at the real time now.
    pub fn now() -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        TestClock {
            nanos: Arc::new(AtomicU64::new(now.as_nanos() as u64)),
        }
    }

    /// Move the clock forward.
    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }

    /// Set the clock.
    pub fn set_unix(&self, secs: u64) {
        self.nanos.store(secs * 1_000_000_000, Ordering::SeqCst);
    }

    /// What the clock shows, in whole Unix seconds.
    pub fn unix_seconds(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst) / 1_000_000_000
    }
}

impl HostWallClock for TestClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

/// The same clock as a monotonic one (nanoseconds since the Unix epoch), for
/// the linked credential's mint budget.
impl HostMonotonicClock for TestClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }
}
