//! The `Credential` class: one `StudioAzureCredBroker`'s configuration, and
//! its sandboxes in the process using it.
//!
//! Calls release the GIL. A synchronous call runs on the caller's thread
//! (`block_on` the process's runtime); an asyncio call ([`Credential::start`])
//! runs as a task on the runtime's threads and signals its end by writing to
//! a pipe the event loop watches, so no thread of the loop's executor waits on
//! the broker and no runtime thread ever takes the GIL. After `os.fork()` the
//! child builds its own runtime, engine and sandboxes on first use
//! ([`crate::fork`]); the parent's are left untouched.

use std::collections::HashMap;
use std::io::{PipeReader, PipeWriter, Write};
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use tokio::runtime::Runtime;
use vd_cred_broker::{AudienceMap, CredentialError};
use vd_cred_host::from_env::{Setup, absolute_path};
use vd_cred_host::{TokenRequestOptions, default_options};

use crate::fork::PerProcess;
use crate::sandboxes::{Config, Open, Sandboxes, closed};
use crate::{built_host, host, host_failure, raise};

/// A token as Python receives it: `(token, expires_on, refresh_on)`.
type TokenTuple = (String, u64, Option<u64>);

/// What a call ends with: the component's answer, or a host failure.
type Outcome = anyhow::Result<Result<TokenTuple, CredentialError>>;

/// The process's runtime: its worker thread drives connections and asyncio
/// calls; synchronous calls run on their callers' threads.
fn runtime() -> PyResult<&'static Runtime> {
    static RUNTIME: PerProcess<Runtime> = PerProcess::new();
    RUNTIME.get_or_try_init(|_| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vd-cred-broker")
            .enable_all()
            .build()
            .map_err(|e| host_failure(e.into()))
    })
}

/// One credential.
#[pyclass(frozen)]
pub(crate) struct Credential {
    config: Arc<Config>,
    mode: &'static str,
    closed: AtomicBool,
    /// This process's sandboxes (built again in a forked child).
    sandboxes: PerProcess<Arc<Sandboxes>>,
}

impl Credential {
    /// This process's sandboxes, or the error for a closed credential.
    fn sandboxes(&self) -> PyResult<Arc<Sandboxes>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(raise(closed()));
        }
        let config = &self.config;
        let sandboxes = self.sandboxes.get_or_try_init(|_| {
            let roots = config.roots.unshared();
            Ok::<_, PyErr>(Arc::new(Sandboxes::new(config, None, roots)))
        })?;
        Ok(sandboxes.clone())
    }

    /// The call both entry points make, once the process has its host.
    fn call(
        &self,
        scopes: Vec<String>,
        claims: Option<String>,
        tenant_id: Option<String>,
        enable_cae: bool,
        abandoned: impl Fn() -> bool + Send + Sync + 'static,
    ) -> PyResult<impl Future<Output = Outcome> + Send + 'static> {
        let sandboxes = self.sandboxes()?;
        let config = self.config.clone();
        let options = TokenRequestOptions {
            claims,
            tenant_id,
            enable_cae,
        };
        Ok(async move {
            // Loading (or compiling) the component blocks: off the runtime's
            // worker, once per process.
            let loaded = match built_host() {
                Some(loaded) => loaded,
                None => {
                    let config = config.clone();
                    tokio::task::spawn_blocking(move || host(&config.env)).await??
                }
            };
            let result = sandboxes
                .get_token_info(&config, loaded, &scopes, &options, &abandoned)
                .await?;
            Ok(result.map(|info| (info.token, info.expires_on, info.refresh_on)))
        })
    }
}

/// The Python value of an outcome.
fn settle(outcome: Outcome) -> PyResult<TokenTuple> {
    outcome.map_err(host_failure)?.map_err(raise)
}

#[pymethods]
impl Credential {
    /// Build the first sandbox from `env` (the environment variables of
    /// `vd_cred_host::from_env::ENV_VARS` the caller read from `os.environ`)
    /// and these overrides, and open the credential in it: a bad setting is
    /// reported here, as the original reports it.
    #[new]
    #[pyo3(signature = (
        env, broker_url=None, credential_file=None, lane=None, configuration_revision=None,
        timeout_ms=10_000, audience_map=Vec::new(), allow_insecure_http=false, cache=true
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        env: HashMap<String, String>,
        broker_url: Option<String>,
        credential_file: Option<String>,
        lane: Option<String>,
        configuration_revision: Option<u64>,
        timeout_ms: u32,
        audience_map: Vec<(String, String)>,
        allow_insecure_http: bool,
        cache: bool,
    ) -> PyResult<Self> {
        let mut setup = Setup::from_env(|name| env.get(name).cloned());
        let credential_file = credential_file.map(|f| absolute_path(&f));
        if broker_url.is_some() {
            setup.broker_url.clone_from(&broker_url);
        }
        if credential_file.is_some() {
            setup.credential_file.clone_from(&credential_file);
        }
        let helper = setup.runtime_access_socket.is_some();
        // Where the bearer is, resolved now (a link out of its directory is
        // followed, as for the environment's path): every sandbox of this
        // credential then shares the same directory and path.
        if let Some((_, guest_file)) = setup.bearer_location() {
            setup.credential_file = Some(guest_file);
        }
        let mut options = default_options();
        if !helper {
            options.broker_url = broker_url;
            if credential_file.is_some() {
                options.credential_file.clone_from(&setup.credential_file);
            }
        }
        options.lane = lane;
        options.configuration_revision = configuration_revision;
        options.timeout_ms = Some(timeout_ms);
        options.allow_insecure_http = allow_insecure_http;
        options.disable_cache = !cache;
        // A bad map is the component's to report, when it opens.
        let audiences = AudienceMap::with_overrides(&audience_map).unwrap_or_default();
        options.audience_map = audience_map;

        py.detach(|| {
            let roots = setup.trusted_roots();
            let config = Config {
                setup,
                roots,
                options,
                audiences,
                env,
            };
            let host = host(&config.env).map_err(host_failure)?;
            let roots = config.roots.unshared();
            let first = runtime()?
                .block_on(Open::build(&config, &roots, host))
                .map_err(host_failure)?
                .map_err(raise)?;
            let sandboxes = Sandboxes::new(&config, Some(first), roots);
            Ok(Credential {
                config: Arc::new(config),
                mode: if helper { "helper" } else { "broker" },
                closed: AtomicBool::new(false),
                sandboxes: PerProcess::with(Arc::new(sandboxes)),
            })
        })
    }

    /// `broker` or `helper` (the runtime-access socket existed at construction).
    #[getter]
    fn mode(&self) -> &'static str {
        self.mode
    }

    /// How many sandboxes this credential has in this process (for tests:
    /// one per audience called, with the cache).
    #[getter]
    fn sandbox_count(&self) -> usize {
        self.sandboxes.get().map_or(0, |s| s.count())
    }

    /// Calls on this credential in this process that have started and not
    /// ended (waiting for their audience's sandbox, or in it).
    #[getter]
    fn calls_in_flight(&self) -> usize {
        self.sandboxes.get().map_or(0, |s| s.in_flight())
    }

    /// `credential.get-token-info`: `(token, expires_on, refresh_on)`.
    #[pyo3(signature = (scopes, claims=None, tenant_id=None, enable_cae=false))]
    fn get_token_info(
        &self,
        py: Python<'_>,
        scopes: Vec<String>,
        claims: Option<String>,
        tenant_id: Option<String>,
        enable_cae: bool,
    ) -> PyResult<TokenTuple> {
        let call = self.call(scopes, claims, tenant_id, enable_cae, || false)?;
        let runtime = runtime()?;
        // A panic is a host failure like a trap: the sandbox it happened in
        // is already dropped (see `Sandboxes`).
        settle(py.detach(|| {
            std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(call)))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a call panicked")))
        }))
    }

    /// Start `get_token_info` as a task and return at once: the returned
    /// call's `fileno()` becomes readable when it has ended, then `result()`
    /// returns or raises what it ended with. Dropping the call (a cancelled
    /// awaiter) ends the task if it is still waiting for its sandbox, and
    /// otherwise leaves it to finish on its own, so a sandbox is never left
    /// mid-call.
    #[pyo3(signature = (scopes, claims=None, tenant_id=None, enable_cae=false))]
    fn start(
        &self,
        scopes: Vec<String>,
        claims: Option<String>,
        tenant_id: Option<String>,
        enable_cae: bool,
    ) -> PyResult<PendingCall> {
        let (reader, writer) = std::io::pipe().map_err(|e| host_failure(e.into()))?;
        let shared = Arc::new(Shared {
            outcome: Mutex::new(None),
            reader,
            abandoned: AtomicBool::new(false),
        });
        let watched = shared.clone();
        let abandoned = move || watched.abandoned.load(Ordering::Acquire);
        let call = self.call(scopes, claims, tenant_id, enable_cae, abandoned)?;
        let finish = Finish {
            shared: shared.clone(),
            writer,
        };
        runtime()?.spawn(async move { finish.with(call.await) });
        Ok(PendingCall { shared })
    }

    /// Make this process's next call on any credential panic inside its
    /// sandbox, once (tests only: the `test-hooks` feature).
    #[cfg(feature = "test-hooks")]
    #[staticmethod]
    fn _panic_in_next_call() {
        crate::sandboxes::PANIC_IN_NEXT_CALL.store(true, Ordering::Release);
    }

    /// Drop this process's sandboxes. Later calls fail; closing twice is
    /// harmless; a call in progress finishes first, on its own.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(sandboxes) = self.sandboxes.get() {
            sandboxes.clear();
        }
    }
}

/// What a started call and its awaiter share: the outcome, and the read end
/// of the pipe that signals it. The read end stays open until both are done
/// with it, so the task's one-byte write never meets a closed pipe.
struct Shared {
    outcome: Mutex<Option<Outcome>>,
    reader: PipeReader,
    /// Set when the awaiter dropped the call.
    abandoned: AtomicBool,
}

/// What a started task owns. Dropping it, after storing the outcome or in a
/// panic, writes one byte: the read end becomes readable then, even when a
/// forked child holds a copy of the write end (end of file would wait for
/// that child too).
struct Finish {
    shared: Arc<Shared>,
    writer: PipeWriter,
}

impl Finish {
    fn with(self, outcome: Outcome) {
        *self
            .shared
            .outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(outcome);
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        let _ = self.writer.write_all(&[1]);
    }
}

/// A call started by [`Credential::start`].
#[pyclass(frozen)]
pub(crate) struct PendingCall {
    shared: Arc<Shared>,
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        self.shared.abandoned.store(true, Ordering::Release);
    }
}

#[pymethods]
impl PendingCall {
    /// The descriptor to watch: readable once the call has ended.
    fn fileno(&self) -> i32 {
        self.shared.reader.as_raw_fd()
    }

    /// What the call ended with, once its descriptor is readable.
    fn result(&self) -> PyResult<TokenTuple> {
        let outcome = self
            .shared
            .outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        settle(outcome.unwrap_or_else(|| {
            Err(anyhow::anyhow!(
                "the call ended without an outcome (its task panicked, or its \
                 result was already taken): the credential builds a fresh \
                 sandbox for the next call"
            ))
        }))
    }
}
