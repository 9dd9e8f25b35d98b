//! One credential's sandboxes in one process: a sandbox per audience, so that
//! a call for one audience never waits on a call for another.
//!
//! A component instance runs one call at a time (WASI 0.2), and a call that
//! misses the cache holds its instance while the broker answers. So:
//!
//! - **with the cache** (the default), each audience has its own sandbox
//!   behind its own async lock: concurrent misses for one audience queue on
//!   it, the first mints and the others find the token in that sandbox's
//!   cache (one mint), while another audience's cached call answers at once;
//! - **without it** (`cache=False`, a mint per call as the original), no
//!   call depends on another, so idle sandboxes are pooled and concurrent
//!   calls each take one (or build one).
//!
//! A sandbox is an instance of the component built from the process's
//! [`Host`] (one compiled component); a few more per credential cost a few
//! hundred KiB, against a broker round trip saved for every waiting caller.
//! A sandbox whose call failed in the host (a trap) or panicked is dropped,
//! never reused half-done: the next call builds a fresh one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vd_cred_broker::{AudienceMap, CredentialError};
use vd_cred_host::from_env::Setup;
use vd_cred_host::{
    CredentialOptions, Host, Sandbox, TokenInfoResult, TokenRequestOptions, TrustedRoots,
};
use wasmtime::component::ResourceAny;

/// What every sandbox of a credential is built from.
pub(crate) struct Config {
    /// With the bearer's location resolved once, at construction, so every
    /// sandbox (a new audience, a forked child's) shares the same directory.
    pub(crate) setup: Setup,
    pub(crate) roots: TrustedRoots,
    pub(crate) options: CredentialOptions,
    /// The credential's scope -> audience map, to pick the sandbox.
    pub(crate) audiences: AudienceMap,
    /// The environment read at construction (for the host's cache directory).
    pub(crate) env: HashMap<String, String>,
}

/// A sandbox and the `credential` opened in it.
pub(crate) struct Open {
    sandbox: Sandbox,
    credential: ResourceAny,
}

impl Open {
    /// A new sandbox for `config`, with the credential opened in it: a host
    /// failure, or the component's verdict on the options.
    pub(crate) async fn build(
        config: &Config,
        roots: &TrustedRoots,
        host: &Host,
    ) -> anyhow::Result<Result<Open, CredentialError>> {
        let mut sandbox = config
            .setup
            .sandbox_trusting(host, roots.clone())
            .build()
            .await?;
        let credential = sandbox.open(&config.options).await?;
        Ok(credential.map(|credential| Open {
            sandbox,
            credential,
        }))
    }

    async fn get_token_info(
        &mut self,
        scopes: &[String],
        options: &TokenRequestOptions,
    ) -> anyhow::Result<TokenInfoResult> {
        #[cfg(feature = "test-hooks")]
        if PANIC_IN_NEXT_CALL.swap(false, std::sync::atomic::Ordering::AcqRel) {
            panic!("test hook: a panic inside a call");
        }
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        self.sandbox
            .credential_get_token_info(self.credential, &scopes, options)
            .await
    }
}

/// Set by a test to make the next call panic while it holds its sandbox.
#[cfg(feature = "test-hooks")]
pub(crate) static PANIC_IN_NEXT_CALL: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// One audience's sandbox (`None` until built, or after a failure).
type Slot = Arc<tokio::sync::Mutex<Option<Open>>>;

/// A credential's sandboxes in this process.
pub(crate) struct Sandboxes {
    cache: bool,
    /// The credential's roots with this process's own TLS configuration.
    roots: TrustedRoots,
    inner: Mutex<Inner>,
    /// Calls started and not yet ended.
    in_flight: AtomicUsize,
}

/// The error for a call on a closed credential.
pub(crate) fn closed() -> CredentialError {
    CredentialError::Configuration(
        "this credential was closed: create a new StudioAzureCredBroker".into(),
    )
}

/// Counts a call in [`Sandboxes::in_flight`] while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Default)]
struct Inner {
    /// Set by [`Sandboxes::clear`]: a call that ends later drops its sandbox.
    closed: bool,
    /// A sandbox built and not yet given a role (the one the constructor
    /// opened to check the options).
    spare: Option<Open>,
    /// With the cache: each audience's sandbox.
    by_audience: HashMap<String, Slot>,
    /// Without the cache: sandboxes no call is using.
    idle: Vec<Open>,
}

impl Sandboxes {
    /// No sandbox yet but `spare`, for a credential with `config`.
    pub(crate) fn new(config: &Config, spare: Option<Open>, roots: TrustedRoots) -> Self {
        Sandboxes {
            cache: !config.options.disable_cache,
            roots,
            inner: Mutex::new(Inner {
                spare,
                ..Inner::default()
            }),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// The lock is only held to look up, take or put back a sandbox, never
    /// across a call, and nothing in it can be left half-changed by a panic:
    /// a poisoned lock is still sound.
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drop every sandbox no call is using; those in use are dropped when
    /// their call ends.
    pub(crate) fn clear(&self) {
        let taken = std::mem::replace(
            &mut *self.inner(),
            Inner {
                closed: true,
                ..Inner::default()
            },
        );
        drop(taken);
    }

    /// How many sandboxes exist: one per audience called (with the cache) or
    /// the most calls that ran at once (without), plus an unused spare.
    pub(crate) fn count(&self) -> usize {
        let inner = self.inner();
        inner.spare.iter().count() + inner.by_audience.len() + inner.idle.len()
    }

    /// Calls started (waiting for a sandbox, or in one) and not yet ended.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A sandbox for a call: an idle one (without the cache), the spare, or
    /// a new one.
    async fn fresh(
        &self,
        config: &Config,
        host: &Host,
    ) -> anyhow::Result<Result<Open, CredentialError>> {
        let found = {
            let mut inner = self.inner();
            match self.cache {
                true => inner.spare.take(),
                false => inner.idle.pop().or_else(|| inner.spare.take()),
            }
        };
        match found {
            Some(open) => Ok(Ok(open)),
            None => Open::build(config, &self.roots, host).await,
        }
    }

    /// `get-token-info` for `scopes` in the sandbox that serves them.
    /// `abandoned` says whether the caller has gone (a cancelled asyncio
    /// call): such a call that has not reached its sandbox yet ends there,
    /// so a queue of them behind a hung broker does not grow; one already
    /// in its sandbox finishes, never leaving it mid-call.
    pub(crate) async fn get_token_info(
        &self,
        config: &Config,
        host: &Host,
        scopes: &[String],
        options: &TokenRequestOptions,
        abandoned: &(dyn Fn() -> bool + Send + Sync),
    ) -> anyhow::Result<TokenInfoResult> {
        let _counted = InFlight::new(&self.in_flight);
        if !self.cache {
            let mut open = match self.fresh(config, host).await? {
                Ok(open) => open,
                Err(e) => return Ok(Err(e)),
            };
            let result = open.get_token_info(scopes, options).await?;
            let mut inner = self.inner();
            if !inner.closed {
                inner.idle.push(open);
            }
            return Ok(result);
        }
        // Scopes the map does not serve get the component's own error from
        // a sandbox of their own, without a mint.
        let audience = config.audiences.audience_for(scopes).unwrap_or_default();
        let slot = {
            let mut inner = self.inner();
            if inner.closed {
                return Ok(Err(closed()));
            }
            inner
                .by_audience
                .entry(audience.to_string())
                .or_default()
                .clone()
        };
        let mut slot = slot.lock().await;
        if abandoned() {
            return Ok(Err(CredentialError::Configuration(
                "the call was cancelled before it reached its sandbox".into(),
            )));
        }
        let mut open = match slot.take() {
            Some(open) => open,
            None => match self.fresh(config, host).await? {
                Ok(open) => open,
                Err(e) => return Ok(Err(e)),
            },
        };
        // A host failure (`?`) or a panic leaves the slot empty.
        let result = open.get_token_info(scopes, options).await?;
        *slot = Some(open);
        Ok(result)
    }
}
