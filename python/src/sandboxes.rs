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
use std::sync::{Arc, Mutex, MutexGuard};

use vd_cred_broker::{AudienceMap, CredentialError};
use vd_cred_host::from_env::Setup;
use vd_cred_host::{
    CredentialOptions, Host, Sandbox, TokenInfoResult, TokenRequestOptions, TrustedRoots,
};
use wasmtime::component::ResourceAny;

/// What every sandbox of a credential is built from.
pub(crate) struct Config {
    pub(crate) setup: Setup,
    pub(crate) roots: TrustedRoots,
    pub(crate) options: CredentialOptions,
    /// The credential's scope -> audience map, to pick the sandbox.
    pub(crate) audiences: AudienceMap,
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
        host: &Host,
    ) -> anyhow::Result<Result<Open, CredentialError>> {
        let mut sandbox = config
            .setup
            .sandbox_trusting(host, config.roots.clone())
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
    inner: Mutex<Inner>,
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
    /// No sandbox yet but `spare`.
    pub(crate) fn new(cache: bool, spare: Option<Open>) -> Self {
        Sandboxes {
            cache,
            inner: Mutex::new(Inner {
                spare,
                ..Inner::default()
            }),
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

    /// A sandbox for a call: the spare, or a new one.
    async fn fresh(
        &self,
        config: &Config,
        host: &Host,
    ) -> anyhow::Result<Result<Open, CredentialError>> {
        let spare = self.inner().spare.take();
        match spare {
            Some(open) => Ok(Ok(open)),
            None => Open::build(config, host).await,
        }
    }

    /// `get-token-info` for `scopes` in the sandbox that serves them.
    pub(crate) async fn get_token_info(
        &self,
        config: &Config,
        host: &Host,
        scopes: &[String],
        options: &TokenRequestOptions,
    ) -> anyhow::Result<TokenInfoResult> {
        if !self.cache {
            let idle = self.inner().idle.pop();
            let mut open = match idle {
                Some(open) => open,
                None => match self.fresh(config, host).await? {
                    Ok(open) => open,
                    Err(e) => return Ok(Err(e)),
                },
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
        let slot = self
            .inner()
            .by_audience
            .entry(audience.to_string())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
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
