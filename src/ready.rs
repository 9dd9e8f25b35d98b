//! Running the core's `async` calls where nothing ever waits: the WASI 0.2
//! build (whose [`crate::Platform`] blocks inside each call, one call per
//! instance at a time) and native tests with scripted platforms.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// The output of `future`, which must finish on its first poll: every
/// `await` in it is on a platform that blocks rather than waits (or on a
/// shared mint, which never has another call in the air under such a
/// platform).
///
/// # Panics
///
/// If `future` is still pending after one poll: a platform that really
/// waits needs an executor (the WASI 0.3 build's).
///
/// ```
/// assert_eq!(vd_cred_broker::ready(async { 1 + 1 }), 2);
/// ```
pub fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => {
            panic!("a call on a blocking platform waited: it needs an async executor")
        }
    }
}
