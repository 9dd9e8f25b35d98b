//! The core's [`Platform`] over WASI 0.3: every wait is a `wasi:clocks`,
//! `wasi:http` or `wasi:filesystem` future, so other calls into the instance
//! go on meanwhile.

use std::time::Duration;

use vd_cred_broker::{Answer, BrokerRequest, CredentialError, Platform, Secret, SendError};
use wasip3::clocks::monotonic_clock;

use crate::deadline::nanos;

/// The platform of one call (it holds nothing: each call has its own).
pub struct Wasi;

impl Platform for Wasi {
    fn now_unix(&mut self) -> u64 {
        crate::transport::now_unix()
    }

    fn monotonic(&mut self) -> Duration {
        Duration::from_nanos(monotonic_clock::now())
    }

    async fn read_bearer(&mut self, path: &str) -> Result<Secret, CredentialError> {
        crate::bearer::read(path).await
    }

    async fn send(
        &mut self,
        request: &BrokerRequest,
        timeout: Duration,
    ) -> Result<Answer, SendError> {
        crate::transport::send(request, timeout).await
    }

    async fn sleep(&mut self, duration: Duration) {
        monotonic_clock::wait_for(nanos(duration)).await;
    }

    fn random_unit(&mut self) -> f64 {
        // Jitter only: the monotonic clock's nanoseconds, mixed.
        let x = vd_cred_broker::retry::splitmix64(monotonic_clock::now());
        x as f64 / (u64::MAX as f64 + 1.0)
    }
}
