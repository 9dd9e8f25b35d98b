//! One instance of the credential's WASI 0.3 build serving many callers at
//! once: a [`SharedCredential`].
//!
//! Under WASI 0.2 an instance runs one call at a time, so a runtime gives
//! each agent a [`Sandbox`](crate::Sandbox) of its own. The 0.3 build's
//! exports are `async func`s: one instance takes any number of calls at
//! once, a call waiting on the broker holds up no other, and concurrent
//! misses for one audience share one mint (the core's flights). The
//! instance lives in a task of its own, which runs the store's event loop
//! and starts each call as it arrives.
//!
//! ```no_run
//! # async fn demo(broker_url: String) -> anyhow::Result<()> {
//! use vd_cred_host::Host;
//! let shared = Host::shared_p3()
//!     .sandbox()
//!     .env("VD_CREDENTIAL_BROKER_URL", &broker_url)
//!     .env("VD_CREDENTIAL_FILE", "/run/vd/credential")
//!     .bearer_dir("/run/vd", "/run/vd")
//!     .broker_url(&broker_url)
//!     .build_shared()
//!     .await?;
//! let credential = shared.open(&vd_cred_host::default_options()).await??;
//! // Clones share the instance; calls on them run concurrently.
//! let calls = (0..100).map(|_| {
//!     let shared = shared.clone();
//!     tokio::spawn(async move { shared.get_token(&credential, &["https://vault.azure.net/.default"]).await })
//! });
//! # let _ = calls.count(); Ok(()) }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use vd_cred_broker::cache::BearerDigest;
use wasmtime::component::{Accessor, ResourceAny};
use wasmtime_wasi::HostWallClock;

use crate::engine::State;
use crate::engine::p3::Calls;
use crate::outbound::broker_only::Traffic;
use crate::sandboxes::sandbox::{CALL_MARGIN, Live, Recipe, SandboxBuilder};
use crate::sandboxes::sandbox::{
    CredentialOptions, TokenInfoResult, TokenRequestOptions, TokenResult,
};
use crate::sandboxes::withheld::Withheld;

/// A credential opened in a [`SharedCredential`]: valid in the instance
/// generation it was opened in (after a trap, open it again). Credentials
/// live as long as the instance (open one per set of options and share
/// it: its cache and its mints are what callers share).
#[derive(Debug, Clone, Copy)]
pub struct SharedHandle {
    /// The [`SharedCredential`] it belongs to.
    owner: u64,
    generation: u64,
    resource: ResourceAny,
    /// Its `timeout-ms`: a call on it may run this plus [`CALL_MARGIN`].
    timeout: Duration,
    /// Opened by [`SharedCredential::open_shared`]: shared, never dropped.
    shared: bool,
}

impl SharedHandle {
    /// The instance generation the credential belongs to.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// One instance of the 0.3 build, shared: clone it freely; every clone
/// sends its calls to the same instance, where they run concurrently.
#[derive(Clone)]
pub struct SharedCredential {
    inner: Arc<Inner>,
}

struct Inner {
    /// Which shared credential this is (handles name it).
    id: u64,
    jobs: mpsc::UnboundedSender<Job>,
    generation: Arc<AtomicU64>,
    in_progress: AtomicUsize,
    traffic: Arc<Traffic>,
    withheld: Withheld,
    broker_urls: Vec<String>,
    /// How the credential's host names are looked up (for an agent's egress).
    #[cfg_attr(not(feature = "agent"), allow(dead_code))]
    resolver: crate::outbound::Resolver,
    clock: Arc<dyn HostWallClock + Sync>,
    /// Credentials opened for [`SharedCredential::open_shared`], by options.
    opened: tokio::sync::Mutex<Vec<(String, SharedHandle)>>,
    /// The requests to the broker per audience that a call has claimed
    /// ([`SharedCredential::claim`]).
    claims: Mutex<HashMap<String, Claims>>,
    /// What each credential last returned per audience
    /// ([`SharedCredential::returned`]).
    returned: Mutex<HashMap<String, Returned>>,
}

/// What the driver task runs: one call, and where its answer goes.
enum Job {
    Open {
        options: CredentialOptions,
        reply: oneshot::Sender<wasmtime::Result<Result<SharedHandle, CoreError>>>,
    },
    Token {
        handle: Option<SharedHandle>,
        scopes: Vec<String>,
        options: Option<TokenRequestOptions>,
        reply: oneshot::Sender<wasmtime::Result<TokenInfoResult>>,
    },
    /// Drop a credential (between two runs of the event loop: wasmtime
    /// drops a resource only with the store in hand).
    Drop { resource: ResourceAny },
}

impl Job {
    /// Answer the job with `error` (the instance could not be made).
    fn fail(self, error: &str) {
        let error = || wasmtime::format_err!("{error}");
        match self {
            Job::Open { reply, .. } => drop(reply.send(Err(error()))),
            Job::Token { reply, .. } => drop(reply.send(Err(error()))),
            Job::Drop { .. } => {}
        }
    }
}

type CoreError = vd_cred_broker::CredentialError;

/// The component's own default `timeout-ms`.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(vd_cred_broker::DEFAULT_TIMEOUT_MS as u64);

impl SandboxBuilder<'_> {
    /// One instance of the WASI 0.3 build ([`crate::Build::P3`]) serving
    /// any number of concurrent calls (a [`SharedCredential`]), set up as
    /// [`SandboxBuilder::build`] sets up a sandbox: the same grants, policy,
    /// limits and clock. Fails for the 0.2 build.
    pub async fn build_shared(self) -> Result<SharedCredential> {
        let (recipe, call_limit) = self.into_parts();
        SharedCredential::start(recipe, call_limit).await
    }
}

impl SharedCredential {
    /// Start the instance's task on the current tokio runtime. The builder's
    /// host must run the 0.3 build ([`crate::Build::P3`]).
    pub(crate) async fn start(recipe: Recipe, call_limit: Option<Duration>) -> Result<Self> {
        anyhow::ensure!(
            recipe.is_p3(),
            "a shared credential needs the WASI 0.3 build (Host::shared_p3, or Host::load of \
             vd_cred_broker_p3.wasm): the 0.2 build runs one call at a time"
        );
        // Calls are charged by the broker's requests for their audience.
        recipe.traffic().count_by_audience();
        // Instantiate once here, so that a component that fails to start
        // fails now.
        let first = recipe.instantiate().await?;
        let (jobs, queue) = mpsc::unbounded_channel();
        let generation = Arc::new(AtomicU64::new(0));
        static IDS: AtomicU64 = AtomicU64::new(0);
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let inner = Inner {
            id,
            jobs,
            generation: generation.clone(),
            in_progress: AtomicUsize::new(0),
            traffic: recipe.traffic(),
            withheld: recipe.withheld(),
            broker_urls: recipe.broker_urls(),
            resolver: recipe.resolver(),
            clock: recipe.clock(),
            opened: Default::default(),
            claims: Default::default(),
            returned: Default::default(),
        };
        tokio::spawn(drive(recipe, first, queue, generation, call_limit, id));
        Ok(SharedCredential {
            inner: Arc::new(inner),
        })
    }

    async fn send<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<wasmtime::Result<T>>) -> Job,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let in_progress = &self.inner.in_progress;
        in_progress.fetch_add(1, Ordering::AcqRel);
        let _done = Done(in_progress);
        self.inner
            .jobs
            .send(job(reply))
            .map_err(|_| anyhow::anyhow!("the shared credential's task has ended"))?;
        let answer = answer.await.map_err(|_| {
            anyhow::anyhow!(
                "the shared credential's instance stopped during the call (a call in it \
                     trapped: it ran out of its memory or time limit) and is replaced: try again"
            )
        })?;
        answer.map_err(|trap| anyhow::Error::from(trap).context("the credential trapped"))
    }

    /// `credential.open(options)` in the shared instance.
    pub async fn open(
        &self,
        options: &CredentialOptions,
    ) -> Result<Result<SharedHandle, CoreError>> {
        let options = options.clone();
        self.send(|reply| Job::Open { options, reply }).await
    }

    /// The credential opened with `options` for everyone who asks with the
    /// same options: opened on first use (and again after the instance was
    /// replaced), then shared, with its cache and its mints.
    pub async fn open_shared(
        &self,
        options: &CredentialOptions,
    ) -> Result<Result<SharedHandle, CoreError>> {
        let key = format!("{options:?}");
        let mut opened = self.inner.opened.lock().await;
        let generation = self.generation();
        if let Some((_, handle)) = opened.iter().find(|(k, _)| *k == key)
            && handle.generation == generation
        {
            return Ok(Ok(*handle));
        }
        let handle = match self.open(options).await? {
            Ok(handle) => SharedHandle {
                shared: true,
                ..handle
            },
            Err(e) => return Ok(Err(e)),
        };
        opened.retain(|(k, _)| *k != key);
        opened.push((key, handle));
        Ok(Ok(handle))
    }

    /// Claim the requests to the broker for `audience` numbered
    /// `before + 1 ..= after` ([`Traffic::sent_for`] before and after a
    /// call) that no call has claimed yet: how many. Each request is
    /// claimed once, by the first call that waited on it to end, so that
    /// one caller per mint is told it minted.
    pub fn claim(&self, audience: &str, before: u64, after: u64) -> u64 {
        let mut claims = self.inner.claims.lock().unwrap();
        let claims = match claims.get_mut(audience) {
            Some(claims) => claims,
            None => claims.entry(audience.to_string()).or_default(),
        };
        let first = before.max(after.saturating_sub(CLAIMS_KEPT as u64)) + 1;
        let mut claimed = 0;
        for request in first..=after {
            if request > claims.floor && claims.taken.insert(request) {
                claimed += 1;
            }
        }
        while claims.taken.len() > CLAIMS_KEPT {
            claims.floor = claims.taken.pop_first().unwrap_or(claims.floor);
        }
        claimed
    }

    /// What the credential `handle` last returned for `audience`
    /// ([`SharedCredential::returned`]): a call on a credential with a
    /// cache that returns the same was served from its cache.
    pub fn last_returned(&self, handle: &SharedHandle, audience: &str) -> Option<Returned> {
        let returned = self.inner.returned.lock().unwrap();
        returned.get(&returned_key(handle, audience)).copied()
    }

    /// Note what the credential `handle` returned for `audience`.
    pub fn returned(&self, handle: &SharedHandle, audience: &str, what: Returned) {
        let mut returned = self.inner.returned.lock().unwrap();
        if returned.len() >= RETURNED_KEPT {
            // Forgotten, a credential's next call is charged as a mint.
            returned.clear();
        }
        returned.insert(returned_key(handle, audience), what);
    }

    /// The instance's wall clock, in Unix seconds.
    pub fn now_unix(&self) -> u64 {
        self.inner.clock.now().as_secs()
    }

    /// `credential.get-token(scopes)` on `handle`, alongside any other calls.
    pub async fn get_token(&self, handle: &SharedHandle, scopes: &[&str]) -> Result<TokenResult> {
        let info = self.token(Some(*handle), scopes, None).await?;
        Ok(info.map(|i| crate::sandboxes::sandbox::AccessToken {
            token: i.token,
            expires_on: i.expires_on,
        }))
    }

    /// `credential.get-token-info(scopes, options)` on `handle`.
    pub async fn get_token_info(
        &self,
        handle: &SharedHandle,
        scopes: &[&str],
        options: &TokenRequestOptions,
    ) -> Result<TokenInfoResult> {
        self.token(Some(*handle), scopes, Some(options.clone()))
            .await
    }

    /// The free `get-token-info` (a credential from the environment, one call).
    pub async fn free_get_token_info(
        &self,
        scopes: &[&str],
        options: &TokenRequestOptions,
    ) -> Result<TokenInfoResult> {
        self.token(None, scopes, Some(options.clone())).await
    }

    async fn token(
        &self,
        handle: Option<SharedHandle>,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> Result<TokenInfoResult> {
        if let Some(handle) = &handle {
            anyhow::ensure!(
                handle.owner == self.inner.id,
                "a credential of another shared instance was passed"
            );
        }
        let scopes = scopes.iter().map(|s| s.to_string()).collect();
        self.send(|reply| Job::Token {
            handle,
            scopes,
            options,
            reply,
        })
        .await
    }

    /// How many [`SharedCredential`] values (this one and its clones)
    /// share the instance: its agents, and whatever else holds one (a
    /// [`Shards`](crate::shards::Shards) holds one of each of its shards).
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// Calls sent to the instance and not yet answered.
    pub fn calls_in_progress(&self) -> usize {
        self.inner.in_progress.load(Ordering::Acquire)
    }

    /// Drop a credential opened with [`SharedCredential::open`] (one from
    /// [`SharedCredential::open_shared`] stays: others use it; one of an
    /// earlier generation is gone already).
    pub fn drop_credential(&self, handle: SharedHandle) {
        if handle.owner == self.inner.id && !handle.shared && handle.generation == self.generation()
        {
            let resource = handle.resource;
            let _ = self.inner.jobs.send(Job::Drop { resource });
        }
    }

    /// How often the instance was replaced after a trap.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// The requests the policy let through (to the broker, or the helper).
    pub fn traffic(&self) -> &Traffic {
        &self.inner.traffic
    }

    /// The credential's broker URL, bearer path and helper socket.
    pub fn withheld(&self) -> &Withheld {
        &self.inner.withheld
    }

    /// The broker URLs the credential is configured with.
    pub fn broker_urls(&self) -> &[String] {
        &self.inner.broker_urls
    }

    /// How the credential's host names are looked up.
    #[cfg(feature = "agent")]
    pub(crate) fn resolver(&self) -> crate::outbound::Resolver {
        self.inner.resolver.clone()
    }
}

/// What a credential returned, without the token: a digest of it, and its
/// expiry (a mint of the same token string expires later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Returned {
    token: BearerDigest,
    expires_on: u64,
}

impl Returned {
    /// What `info` is, for comparing.
    pub fn of(info: &crate::sandboxes::sandbox::AccessTokenInfo) -> Returned {
        Returned {
            token: BearerDigest::of(&vd_cred_broker::Secret::new(info.token.clone())),
            expires_on: info.expires_on,
        }
    }
}

/// How many credentials' last returns are remembered.
const RETURNED_KEPT: usize = 4096;

fn returned_key(handle: &SharedHandle, audience: &str) -> String {
    format!("{}/{:?}/{audience}", handle.generation, handle.resource)
}

/// The requests of one audience claimed by a call: every one up to
/// `floor`, and those in `taken` (the last [`CLAIMS_KEPT`]).
#[derive(Default)]
struct Claims {
    floor: u64,
    taken: BTreeSet<u64>,
}

/// How many claimed requests per audience are remembered above the floor.
const CLAIMS_KEPT: usize = 4096;

/// Counts a call out of [`SharedCredential::calls_in_progress`] when it
/// ends, answered or dropped.
struct Done<'a>(&'a AtomicUsize);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The instance's task: run the store's event loop, with every call in
/// flight in it at once; after a trap (or a call past its limit), fail what
/// is in flight and go on in a fresh instance. While no instance can be
/// made, jobs fail at once.
///
/// The calls are futures polled together here (not tasks spawned into the
/// store, which cost several KiB each more), and one timer watches the
/// earliest deadline among them (not one timer per call).
async fn drive(
    recipe: Recipe,
    first: Live,
    mut queue: mpsc::UnboundedReceiver<Job>,
    generation: Arc<AtomicU64>,
    limit: Option<Duration>,
    owner: u64,
) {
    let Live::P3(mut instance) = first else {
        return;
    };
    let mut drops: Vec<ResourceAny> = Vec::new();
    loop {
        let calls = instance.calls.clone();
        let number = generation.load(Ordering::Acquire);
        let ran = instance
            .store
            .run_concurrent(async |a| {
                let mut running = FuturesUnordered::new();
                let mut deadlines = BTreeSet::new();
                let mut ids = 0u64;
                loop {
                    // Credentials are dropped between runs of the loop,
                    // with no call in flight (leaving it drops them).
                    if running.is_empty() && !drops.is_empty() {
                        return Exit::Drop;
                    }
                    let next = deadlines.first().map(|(at, _): &Deadline| *at);
                    let overdue = async {
                        match next {
                            Some(at) => tokio::time::sleep_until(at.into()).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        biased;
                        Some((deadline, trapped)) = running.next(), if !running.is_empty() => {
                            deadlines.remove(&deadline);
                            if trapped {
                                return Exit::Trapped;
                            }
                        }
                        () = overdue => return Exit::Trapped,
                        job = queue.recv() => {
                            // Take what else is queued now too (a wave of
                            // agents queues many at once), up to a batch, so
                            // that each job does not cost a turn of this loop.
                            let Some(mut job) = job else {
                                return Exit::Closed;
                            };
                            let mut taken = 1;
                            loop {
                                match job {
                                    Job::Drop { resource } => drops.push(resource),
                                    job => {
                                        ids += 1;
                                        let deadline = (Instant::now() + job.limit(limit), ids);
                                        deadlines.insert(deadline);
                                        running.push(serve(job, a, &calls, number, owner, deadline));
                                    }
                                }
                                if taken == BATCH {
                                    break;
                                }
                                match queue.try_recv() {
                                    Ok(next) => (job, taken) = (next, taken + 1),
                                    Err(_) => break,
                                }
                            }
                        }
                    }
                }
            })
            .await;
        match ran {
            Ok(Exit::Closed) => return, // every handle dropped
            Ok(Exit::Drop) => {
                for resource in drops.drain(..) {
                    // A credential still in use is not dropped (wasmtime
                    // refuses); it goes with the instance.
                    let _ = resource.resource_drop_async(&mut instance.store).await;
                }
                continue;
            }
            Ok(Exit::Trapped) | Err(_) => {}
        }
        // Replaced: calls still in flight in the old store are dropped with
        // it (their callers are told), and handles of this generation are
        // stale from now on.
        generation.fetch_add(1, Ordering::AcqRel);
        drops.clear();
        drop(instance);
        instance = loop {
            match recipe.instantiate().await {
                Ok(Live::P3(fresh)) => break fresh,
                Ok(Live::P2(..)) => return,
                Err(e) => {
                    let why = format!(
                        "the shared credential's instance could not be made again after a \
                         trap ({e:#}): the host retries every 100 ms"
                    );
                    while let Ok(job) = queue.try_recv() {
                        job.fail(&why);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
    }
}

/// The most jobs the event loop takes from its queue in one turn.
const BATCH: usize = 64;

/// Why the event loop was left.
enum Exit {
    /// Every [`SharedCredential`] is gone.
    Closed,
    /// A call trapped or overran: replace the instance.
    Trapped,
    /// Drop the credentials asked to be dropped, then go on.
    Drop,
}

impl Job {
    /// How long the call may run: the host's limit, or else the call's own
    /// `timeout-ms` plus [`CALL_MARGIN`]. Past it, the instance is replaced
    /// (wasmtime 48 cancels no single call).
    fn limit(&self, limit: Option<Duration>) -> Duration {
        let timeout = match self {
            Job::Token {
                handle: Some(h), ..
            } => h.timeout,
            _ => DEFAULT_TIMEOUT,
        };
        limit.unwrap_or(timeout + CALL_MARGIN)
    }
}

/// When a call in flight must end: the instant, and a number that tells
/// two calls with the same instant apart.
type Deadline = (Instant, u64);

/// A call in flight in the event loop: when it ends, its deadline and
/// whether it trapped (its caller is answered by then).
type Running<'a> = Pin<Box<dyn Future<Output = (Deadline, bool)> + Send + 'a>>;

/// Start one job's call. The future is kept small (the call, where its
/// answer goes, its deadline): a shared instance holds one per call in
/// flight, a thousand at once in a wave of agents.
fn serve<'a>(
    job: Job,
    a: &'a Accessor<State>,
    calls: &'a Calls,
    number: u64,
    owner: u64,
    deadline: Deadline,
) -> Running<'a> {
    match job {
        Job::Open { options, reply } => Box::pin(async move {
            let timeout = options
                .timeout_ms
                .map_or(DEFAULT_TIMEOUT, |ms| Duration::from_millis(ms.into()));
            let opened = calls.open(a, &options).await.map(|r| {
                r.map(|resource| SharedHandle {
                    owner,
                    generation: number,
                    resource,
                    timeout,
                    shared: false,
                })
            });
            let trapped = opened.is_err();
            let _ = reply.send(opened);
            (deadline, trapped)
        }),
        Job::Token {
            handle,
            scopes,
            options,
            reply,
        } => {
            if let Some(h) = &handle
                && h.generation != number
            {
                let stale = CoreError::Configuration(
                    "this credential was opened in an instance the host has since replaced (a \
                     call trapped): open it again"
                        .into(),
                );
                let _ = reply.send(Ok(Err(stale)));
                return Box::pin(std::future::ready((deadline, false)));
            }
            let options = options.unwrap_or_else(no_options);
            match handle {
                Some(h) => answer(
                    calls.credential_get_token_info(a, h.resource, scopes, &options),
                    reply,
                    deadline,
                ),
                None => answer(calls.get_token_info(a, scopes, &options), reply, deadline),
            }
        }
        Job::Drop { .. } => Box::pin(std::future::ready((deadline, false))),
    }
}

/// `call`, answered to `reply` when it ends (mapped, not awaited in an
/// `async` block, which would hold the call's future twice).
fn answer<'a>(
    call: impl Future<Output = wasmtime::Result<TokenInfoResult>> + Send + 'a,
    reply: oneshot::Sender<wasmtime::Result<TokenInfoResult>>,
    deadline: Deadline,
) -> Running<'a> {
    Box::pin(call.map(move |result| {
        let trapped = result.is_err();
        let _ = reply.send(result);
        (deadline, trapped)
    }))
}

fn no_options() -> TokenRequestOptions {
    TokenRequestOptions {
        claims: None,
        tenant_id: None,
        enable_cae: false,
    }
}
