//! A future raced against a `wasi:clocks` wait.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use wasip3::clocks::monotonic_clock;

/// `future`'s output, or `None` when `timeout` passes first. The loser is
/// dropped, which cancels what it was waiting on (a request in the host, or
/// the timer).
pub async fn within<F: Future>(timeout: Duration, future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut timer = pin!(monotonic_clock::wait_for(nanos(timeout)));
    poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// A duration in nanoseconds, saturating (584 years).
pub fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
