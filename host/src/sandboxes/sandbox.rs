//! Sandboxes: one instance of the credential per agent or per test, each with
//! its own store, environment, preopen, clock and HTTP policy.
//!
//! A sandbox is tight by default: no inherited environment, no preopened
//! directory but the bearer's (read-only), no sockets, and outgoing HTTP only
//! to the broker's scheme and authority (or the runtime-access helper).
//! Everything else is denied in `WasiHttpHooks::send_request` and recorded.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use wasmtime::component::{Instance, InstancePre, ResourceAny, ResourceTable};
use wasmtime::{Engine, Store, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, HostWallClock, WasiCtx};
use wasmtime_wasi_http::WasiHttpCtx;

use crate::engine::State;
use crate::engine::bindings::CredBroker;
use crate::engine::bindings::exports::vibedata::cred_broker::token_credential as wit;
use crate::engine::{Host, Pre};
use crate::outbound::Resolver;
use crate::outbound::TrustedRoots;
use crate::outbound::broker_only::{BrokerOnly, RUNTIME_ACCESS_URL, Traffic};
use crate::outbound::proxy::Proxies;
use crate::sandboxes::withheld::Withheld;

/// The most memory the credential's instance may grow to, by default.
pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;

/// The most elements any of the instance's tables may grow to, by default.
pub const DEFAULT_TABLE_LIMIT: usize = 20_000;

/// How long a call into the credential may run past the longest
/// `timeout-ms` the sandbox was given (10 s when none was) before the host
/// stops it.
pub const CALL_MARGIN: Duration = Duration::from_secs(5);

/// The component's own default `timeout-ms`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Host {
    /// Start configuring a sandbox: nothing is granted unless asked for.
    pub fn sandbox(&self) -> SandboxBuilder<'_> {
        SandboxBuilder {
            host: self,
            plan: Plan {
                env: Vec::new(),
                preopen: None,
                broker: None,
                runtime_access: None,
                also_allow: Vec::new(),
                clock: None,
                roots: TrustedRoots::public(),
                proxies: Proxies::none(),
                resolver: Resolver::system(),
                memory_limit: DEFAULT_MEMORY_LIMIT,
                table_limit: DEFAULT_TABLE_LIMIT,
            },
            call_limit: None,
        }
    }
}

/// How one sandbox is set up. Nothing is granted unless asked for.
pub struct SandboxBuilder<'h> {
    host: &'h Host,
    plan: Plan,
    call_limit: Option<Duration>,
}

/// What goes into a sandbox's store: its environment, grants and limits.
#[derive(Clone)]
struct Plan {
    env: Vec<(String, String)>,
    preopen: Option<(PathBuf, String)>,
    broker: Option<String>,
    runtime_access: Option<PathBuf>,
    also_allow: Vec<String>,
    clock: Option<Arc<dyn HostWallClock + Sync>>,
    roots: TrustedRoots,
    proxies: Proxies,
    resolver: Resolver,
    memory_limit: usize,
    table_limit: usize,
}

impl SandboxBuilder<'_> {
    /// Set (or replace) one environment variable; nothing is inherited from the host.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.plan.env.retain(|(k, _)| *k != key);
        self.plan.env.push((key, value.into()));
        self
    }

    /// Preopen `host_dir` read-only at `guest_path`: the only directory the
    /// component can see (the bearer's).
    pub fn bearer_dir(
        mut self,
        host_dir: impl Into<PathBuf>,
        guest_path: impl Into<String>,
    ) -> Self {
        self.plan.preopen = Some((host_dir.into(), guest_path.into()));
        self
    }

    /// The broker's base URL: HTTP to its scheme and authority is allowed,
    /// everything else denied. Without it, all HTTP is denied.
    pub fn broker_url(mut self, url: impl Into<String>) -> Self {
        self.plan.broker = Some(url.into());
        self
    }

    /// Helper mode: route [`RUNTIME_ACCESS_URL`] to the
    /// runtime-access helper's Unix `socket` and tell the component so
    /// (`VD_RUNTIME_ACCESS_URL`). This replaces any broker origin; combine it
    /// with no `bearer_dir`, so the bearer never enters the sandbox.
    pub fn runtime_access(mut self, socket: impl Into<PathBuf>) -> Self {
        self.plan.runtime_access = Some(socket.into());
        self.plan.broker = None;
        self.env(vd_cred_broker::ENV_RUNTIME_ACCESS_URL, RUNTIME_ACCESS_URL)
    }

    /// Also allow HTTP to the origin of `url`: for a composed component that
    /// calls one more service (the Key Vault example). Use sparingly.
    pub fn also_allow(mut self, url: impl Into<String>) -> Self {
        self.plan.also_allow.push(url.into());
        self
    }

    /// Verify an https broker against `roots`: the public web roots plus any
    /// private CA added to them. A handshake that fails is never retried over
    /// plain http.
    pub fn trusted_roots(mut self, roots: TrustedRoots) -> Self {
        self.plan.roots = roots;
        self
    }

    /// Send the broker requests through `proxies` (an HTTP proxy: CONNECT
    /// for https, absolute-form for http), chosen per request as Python's
    /// `requests` chooses ([`crate::proxy`]); none by default. The helper's
    /// Unix socket never goes through a proxy.
    pub fn proxies(mut self, proxies: Proxies) -> Self {
        self.plan.proxies = proxies;
        self
    }

    /// Look the broker's host name up (and an [`SandboxBuilder::also_allow`]
    /// origin's, and a proxy's) with `resolver`: [`Resolver::system`]
    /// unless set; a [`Resolver::table`] keeps a test off the machine's
    /// DNS. An agent's egress started with
    /// [`crate::egress::AgentEgress::for_agent_of`] this credential uses it
    /// too.
    pub fn resolver(mut self, resolver: Resolver) -> Self {
        self.plan.resolver = resolver;
        self
    }

    /// The component's wall clock (a test's settable clock, say); the real
    /// clock when unset.
    pub fn clock(mut self, clock: impl HostWallClock + Sync + 'static) -> Self {
        self.plan.clock = Some(Arc::new(clock));
        self
    }

    /// The most linear memory the credential's instance may grow to
    /// ([`DEFAULT_MEMORY_LIMIT`] unless set). Growing past it fails in the
    /// guest, whose call then traps: the call fails and the next one runs
    /// in a fresh instance.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.plan.memory_limit = bytes;
        self
    }

    /// The most elements any table of the instance may grow to
    /// ([`DEFAULT_TABLE_LIMIT`] unless set).
    pub fn table_limit(mut self, elements: usize) -> Self {
        self.plan.table_limit = elements;
        self
    }

    /// How long one call into the credential may run before the host stops
    /// it (the call fails; the next one runs in a fresh instance). Unset:
    /// the longest `timeout-ms` the sandbox was opened with (10 s by
    /// default) plus [`CALL_MARGIN`], so only a credential that ignores its
    /// own deadline is ever stopped.
    pub fn call_limit(mut self, limit: Duration) -> Self {
        self.call_limit = Some(limit);
        self
    }

    /// The host this sandbox is instantiated from.
    pub fn host(&self) -> &Host {
        self.host
    }

    /// The environment the component will see, in order.
    pub fn env_vars(&self) -> &[(String, String)] {
        &self.plan.env
    }

    /// The one preopened directory, if any: `(host path, guest path)`.
    pub fn preopen(&self) -> Option<&(PathBuf, String)> {
        self.plan.preopen.as_ref()
    }

    /// Instantiate the component in a fresh store.
    pub async fn build(self) -> Result<Sandbox> {
        let call_limit = self.call_limit;
        let recipe = self.recipe();
        let withheld = recipe.withheld();
        let live = recipe.instantiate().await?;
        Ok(Sandbox {
            live: Some(live),
            recipe,
            call_limit,
            longest_timeout: DEFAULT_TIMEOUT,
            generation: 0,
            withheld,
        })
    }

    /// Instantiate any component linked with [`crate::link`] in this sandbox;
    /// for worlds other than the credential's (a composed consumer, a test
    /// probe). Its store has the sandbox's limits and no call deadline.
    pub async fn instantiate(self, pre: &InstancePre<State>) -> Result<(Store<State>, Instance)> {
        let mut store = self.recipe().store()?;
        let instance = pre.instantiate_async(&mut store).await?;
        Ok((store, instance))
    }

    /// What the sandbox is made from, with the call limit it was given.
    pub(crate) fn into_parts(self) -> (Recipe, Option<Duration>) {
        let call_limit = self.call_limit;
        (self.recipe(), call_limit)
    }

    /// What the sandbox is made from, and made again from after a trap.
    pub(crate) fn recipe(self) -> Recipe {
        Recipe {
            engine: self.host.engine.clone(),
            pre: self.host.pre.clone(),
            plan: self.plan,
            records: Records::default(),
        }
    }
}

/// Everything a sandbox is made from, kept to make it again after a trap.
pub(crate) struct Recipe {
    engine: Engine,
    pre: Pre,
    plan: Plan,
    records: Records,
}

/// What the sandbox's owner watches, kept across the instances it replaces.
#[derive(Clone)]
struct Records {
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    denied: Arc<Mutex<Vec<String>>>,
    traffic: Arc<Traffic>,
}

impl Default for Records {
    fn default() -> Self {
        Records {
            stdout: MemoryOutputPipe::new(64 * 1024),
            stderr: MemoryOutputPipe::new(64 * 1024),
            denied: Arc::default(),
            traffic: Arc::default(),
        }
    }
}

/// A live instance of the credential, of either build.
pub(crate) enum Live {
    P2(CredBroker, Store<State>),
    P3(crate::engine::p3::Instance),
}

impl Live {
    fn store(&mut self) -> &mut Store<State> {
        match self {
            Live::P2(_, store) => store,
            Live::P3(instance) => &mut instance.store,
        }
    }
}

impl Recipe {
    /// Whether this is the 0.3 build.
    pub(crate) fn is_p3(&self) -> bool {
        matches!(self.pre, Pre::P3(_))
    }

    /// The same recipe with records of its own: another instance made from
    /// it has the same grants and limits, and its own counts and output.
    pub(crate) fn twin(&self) -> Recipe {
        Recipe {
            engine: self.engine.clone(),
            pre: self.pre.clone(),
            plan: self.plan.clone(),
            records: Records::default(),
        }
    }

    /// The policy's counts, kept across the instances the recipe makes.
    pub(crate) fn traffic(&self) -> Arc<Traffic> {
        self.records.traffic.clone()
    }

    /// The sandbox's wall clock, in Unix seconds (the test's when set).
    pub(crate) fn clock(&self) -> Arc<dyn HostWallClock + Sync> {
        match &self.plan.clock {
            Some(clock) => clock.clone(),
            None => Arc::new(RealClock),
        }
    }

    /// What messages to an agent withhold.
    pub(crate) fn withheld(&self) -> Withheld {
        Withheld::new(
            &self.plan.env,
            self.plan.broker.as_deref(),
            self.plan.runtime_access.as_deref(),
        )
    }

    /// How the credential's host names are looked up.
    pub(crate) fn resolver(&self) -> Resolver {
        self.plan.resolver.clone()
    }

    /// The broker URLs the credential is configured with.
    pub(crate) fn broker_urls(&self) -> Vec<String> {
        let plan = &self.plan;

        let from_env = plan
            .env
            .iter()
            .filter(|(k, v)| k == vd_cred_broker::ENV_BROKER_URL && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string());
        let mut urls: Vec<String> = self.plan.broker.iter().cloned().chain(from_env).collect();
        urls.dedup();
        urls
    }

    /// The credential in a fresh store.
    pub(crate) async fn instantiate(&self) -> Result<Live> {
        let mut store = self.store()?;
        Ok(match &self.pre {
            Pre::P2(pre) => Live::P2(pre.instantiate_async(&mut store).await?, store),
            Pre::P3(pre) => Live::P3(crate::engine::p3::Instance::new(pre, store).await?),
        })
    }

    /// A fresh store holding the sandbox's WASI context, HTTP policy and limits.
    pub(crate) fn store(&self) -> Result<Store<State>> {
        let records = self.records.clone();
        let mut wasi = WasiCtx::builder();
        wasi.stdout(records.stdout)
            .stderr(records.stderr)
            .envs(&self.plan.env)
            // No raw sockets or name lookups (wasmtime's defaults, stated):
            // the only way out is wasi:http, through the egress policy.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            // Filesystem calls are tiny: run them on this thread rather than
            // tokio's blocking pool (several times faster per call).
            .allow_blocking_current_thread(true);
        if let Some((dir, guest)) = &self.plan.preopen {
            wasi.preopened_dir(dir, guest, FsPerms::ReadOnly)
                .map_err(|e| {
                    anyhow::Error::from(e).context(format!("preopening {}", dir.display()))
                })?;
        }
        if let Some(clock) = &self.plan.clock {
            wasi.wall_clock(Clock(clock.clone()));
        }
        let mut hooks = match (&self.plan.runtime_access, &self.plan.broker) {
            (Some(socket), _) => BrokerOnly::runtime_access(socket),
            (None, Some(url)) => BrokerOnly::for_url(url)?,
            (None, None) => BrokerOnly::deny_all(),
        };
        for url in &self.plan.also_allow {
            hooks.also_allow(url)?;
        }
        hooks.trust(self.plan.roots.clone());
        hooks.proxies(self.plan.proxies.clone());
        hooks.resolver(self.plan.resolver.clone());
        hooks.record_into(records.denied, records.traffic);
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.plan.memory_limit)
            .table_elements(self.plan.table_limit)
            .instances(64)
            .tables(64)
            .memories(16)
            .build();
        let state = State {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks,
            limits,
            deadline: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        // The engine interrupts wasm at every epoch tick: give the thread
        // back to the runtime, and stop a call that ran past its deadline.
        store.epoch_deadline_callback(|store| match store.data().deadline {
            Some(deadline) if Instant::now() >= deadline => {
                Err(wasmtime::format_err!("the call ran past its deadline"))
            }
            _ => Ok(UpdateDeadline::Yield(1)),
        });
        store.set_epoch_deadline(1);
        Ok(store)
    }
}

/// One instance of the component in its sandbox.
///
/// A call that traps (the guest ran out of its memory limit, or ran past
/// its deadline) fails with an error; the next call runs in a fresh instance
/// built the same way ([`Sandbox::generation`] counts them), in which
/// credentials opened before no longer exist. So does a call whose future
/// was dropped before it ended (its store may have stopped inside the
/// guest): the instance is not entered again.
pub struct Sandbox {
    /// The instance and its store; `None` after a trap, until replaced.
    live: Option<Live>,
    recipe: Recipe,
    call_limit: Option<Duration>,
    /// The longest `timeout-ms` a credential was opened with.
    longest_timeout: Duration,
    generation: u64,
    withheld: Withheld,
}

/// A token as the component returns it.
pub type AccessToken = wit::AccessToken;
/// The WIT options record.
pub type CredentialOptions = wit::CredentialOptions;
/// The result of a call: a token, or the component's error as the core type.
pub type TokenResult = std::result::Result<AccessToken, vd_cred_broker::CredentialError>;
/// A token with its refresh time, as the component returns it.
pub type AccessTokenInfo = wit::AccessTokenInfo;
/// The WIT request options record.
pub type TokenRequestOptions = wit::TokenRequestOptions;
/// The result of a `get-token-info` call.
pub type TokenInfoResult = std::result::Result<AccessTokenInfo, vd_cred_broker::CredentialError>;

impl Sandbox {
    /// Run one call into the instance (a fresh one if the last call
    /// trapped), bounded by the call limit; a trap or an overrun leaves the
    /// instance to be replaced. The instance is out of the sandbox while
    /// the call runs: a call whose future is dropped before it ends (its
    /// store may be stopped inside the guest) leaves it to be replaced too,
    /// rather than entered again.
    async fn call<R>(
        &mut self,
        call: impl AsyncFnOnce(&mut Live) -> wasmtime::Result<R>,
    ) -> Result<R> {
        self.renew().await?;
        let limit = self
            .call_limit
            .unwrap_or(self.longest_timeout + CALL_MARGIN);
        let mut live = self.live.take().expect("renewed");
        // No deadline at all for a limit past the clock's range.
        let deadline = Instant::now().checked_add(limit);
        live.store().data_mut().deadline = deadline;
        let outcome = match deadline {
            Some(deadline) => within(deadline, call(&mut live)).await,
            None => Ok(call(&mut live).await),
        };
        live.store().data_mut().deadline = None;
        match outcome {
            Ok(Ok(result)) => {
                self.live = Some(live);
                Ok(result)
            }
            Ok(Err(trap)) => {
                drop(live);
                Err(anyhow::Error::from(trap).context("the credential trapped"))
            }
            Err(_) => {
                drop(live);
                anyhow::bail!(
                    "the credential's call ran past its limit of {} ms and was stopped",
                    limit.as_millis()
                )
            }
        }
    }

    /// Replace the instance now if the last call trapped (the next call
    /// would): afterwards [`Sandbox::generation`] is the one calls run in.
    pub async fn renew(&mut self) -> Result<()> {
        // The old instance was dropped when its call failed, so a pooling
        // allocator has its slot back.
        if self.live.is_none() {
            self.live = Some(self.recipe.instantiate().await?);
            self.generation += 1;
        }
        Ok(())
    }

    /// One token call ([`Sandbox::call`]) in its span ([`crate::trace`]):
    /// its requests, outcome and duration recorded when it ends.
    async fn traced<T, E: Into<vd_cred_broker::CredentialError>>(
        &mut self,
        op: crate::outbound::trace::Op,
        scopes: &[String],
        credential: bool,
        call: impl AsyncFnOnce(&mut Live) -> wasmtime::Result<Result<T, E>>,
    ) -> Result<Result<T, vd_cred_broker::CredentialError>> {
        let mode = match self.recipe.plan.runtime_access {
            Some(_) => "helper",
            None => "broker",
        };
        let traffic = self.traffic();
        let (requests, counts) = (&traffic.requests, traffic.counts());
        let traced =
            crate::outbound::trace::Call::start(op, scopes, mode, credential, requests, counts);
        let result = tracing::Instrument::instrument(self.call(call), traced.span())
            .await
            .map(|r| r.map_err(Into::into));
        let traffic = self.traffic();
        traced.finish(&result, &traffic.requests, traffic.counts());
        result
    }

    /// The free function `get-token`: a credential from the environment, one call.
    pub async fn get_token(&mut self, scopes: &[&str]) -> Result<TokenResult> {
        let scopes = owned(scopes);
        let op = crate::outbound::trace::Op::GetToken;
        self.traced(op, &scopes.clone(), false, async |live| match live {
            Live::P2(i, store) => {
                let iface = i.vibedata_cred_broker_token_credential();
                Ok(iface
                    .call_get_token(store, &scopes)
                    .await?
                    .map_err(Into::into))
            }
            Live::P3(i) => i.run(async |a, c| c.get_token(a, scopes).await).await,
        })
        .await
    }

    /// `credential.open(options)`.
    pub async fn open(
        &mut self,
        options: &CredentialOptions,
    ) -> Result<std::result::Result<ResourceAny, vd_cred_broker::CredentialError>> {
        if let Some(ms) = options.timeout_ms {
            self.longest_timeout = self.longest_timeout.max(Duration::from_millis(ms.into()));
        }
        let op = crate::outbound::trace::Op::Open;
        let options = options.clone();
        self.traced(op, &[], true, async |live| match live {
            Live::P2(i, store) => {
                let iface = i.vibedata_cred_broker_token_credential();
                let opened = iface.credential().call_open(store, &options).await?;
                Ok(opened.map_err(Into::into))
            }
            Live::P3(i) => i.run(async |a, c| c.open(a, &options).await).await,
        })
        .await
    }

    /// `credential.get-token(scopes)` on a credential from [`Sandbox::open`].
    pub async fn credential_get_token(
        &mut self,
        credential: ResourceAny,
        scopes: &[&str],
    ) -> Result<TokenResult> {
        let scopes = owned(scopes);
        let op = crate::outbound::trace::Op::GetToken;
        self.traced(op, &scopes.clone(), true, async |live| match live {
            Live::P2(i, store) => {
                let iface = i.vibedata_cred_broker_token_credential().credential();
                let token = iface.call_get_token(store, credential, &scopes).await?;
                Ok(token.map_err(Into::into))
            }
            Live::P3(i) => {
                i.run(async |a, c| c.credential_get_token(a, credential, scopes).await)
                    .await
            }
        })
        .await
    }

    /// The free function `get-token-info`.
    pub async fn get_token_info(
        &mut self,
        scopes: &[&str],
        options: &TokenRequestOptions,
    ) -> Result<TokenInfoResult> {
        let scopes = owned(scopes);
        let op = crate::outbound::trace::Op::GetTokenInfo;
        let options = options.clone();
        self.traced(op, &scopes.clone(), false, async |live| match live {
            Live::P2(i, store) => {
                let iface = i.vibedata_cred_broker_token_credential();
                let info = iface.call_get_token_info(store, &scopes, &options).await?;
                Ok(info.map_err(Into::into))
            }
            Live::P3(i) => {
                i.run(async |a, c| c.get_token_info(a, scopes, &options).await)
                    .await
            }
        })
        .await
    }

    /// `credential.get-token-info(scopes, options)`.
    pub async fn credential_get_token_info(
        &mut self,
        credential: ResourceAny,
        scopes: &[&str],
        options: &TokenRequestOptions,
    ) -> Result<TokenInfoResult> {
        let scopes = owned(scopes);
        let op = crate::outbound::trace::Op::GetTokenInfo;
        let options = options.clone();
        self.traced(op, &scopes.clone(), true, async |live| match live {
            Live::P2(i, store) => {
                let iface = i.vibedata_cred_broker_token_credential().credential();
                let info = iface
                    .call_get_token_info(store, credential, &scopes, &options)
                    .await?;
                Ok(info.map_err(Into::into))
            }
            Live::P3(i) => {
                let call = async |a: &_, c: crate::engine::p3::Calls| {
                    c.credential_get_token_info(a, credential, scopes, &options)
                        .await
                };
                i.run(call).await
            }
        })
        .await
    }

    /// Drop a credential resource (of this [`Sandbox::generation`]).
    pub async fn drop_credential(&mut self, credential: ResourceAny) -> Result<()> {
        self.call(async |live| credential.resource_drop_async(live.store()).await)
            .await
    }

    /// `describe-error`, rendered by the component.
    pub async fn describe_error(
        &mut self,
        error: &vd_cred_broker::CredentialError,
    ) -> Result<String> {
        let error = error.clone();
        self.call(async |live| match live {
            Live::P2(i, store) => {
                let iface = i.vibedata_cred_broker_token_credential();
                iface.call_describe_error(store, &error.into()).await
            }
            Live::P3(i) => i.run(async |a, c| c.describe_error(a, &error).await).await,
        })
        .await
    }

    /// What the component wrote to stdout and stderr so far.
    pub fn output(&self) -> (Vec<u8>, Vec<u8>) {
        let records = &self.recipe.records;
        (
            records.stdout.contents().to_vec(),
            records.stderr.contents().to_vec(),
        )
    }

    /// Every outgoing request the policy denied, as `scheme://host[:port]`
    /// (no user-info).
    pub fn denied_requests(&self) -> Vec<String> {
        self.recipe.records.denied.lock().unwrap().clone()
    }

    /// How many requests the policy let through, and the switch that holds
    /// back requests to the broker.
    pub fn traffic(&self) -> &Traffic {
        &self.recipe.records.traffic
    }

    /// The broker URLs the credential is configured with (the builder's
    /// and `VD_CREDENTIAL_BROKER_URL`'s), for an agent's egress policy to
    /// refuse.
    pub fn broker_urls(&self) -> Vec<String> {
        self.recipe.broker_urls()
    }

    /// How the credential's host names are looked up (for an agent's
    /// egress policy to look the broker up the same way).
    #[cfg(feature = "agent")]
    pub(crate) fn resolver(&self) -> Resolver {
        self.recipe.resolver()
    }

    /// How often the instance was replaced after a trap: credentials opened
    /// in an earlier generation are gone.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The credential's broker URL, bearer path and helper socket, which
    /// messages passed to an agent name only generically.
    pub fn withheld(&self) -> &Withheld {
        &self.withheld
    }
}

/// `future`, or `Err(())` once `deadline` (the one the epoch callback
/// checks) has passed. The timer is armed only if the first poll does not
/// finish: a cached call, which does, never touches the runtime's timer
/// (arming it wakes the timer's thread: about 10 us per call on a 2-core
/// machine).
async fn within<T>(deadline: Instant, future: impl Future<Output = T>) -> Result<T, ()> {
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut future = std::pin::pin!(future);
    let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(cx) {
            return std::task::Poll::Ready(Ok(out));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().poll(cx).map(|()| Err(()))
    })
    .await
}

/// The real wall clock.
struct RealClock;

impl HostWallClock for RealClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A shared wall clock, as wasmtime-wasi takes one.
struct Clock(Arc<dyn HostWallClock + Sync>);

impl HostWallClock for Clock {
    fn resolution(&self) -> std::time::Duration {
        self.0.resolution()
    }

    fn now(&self) -> std::time::Duration {
        self.0.now()
    }
}

fn owned(scopes: &[&str]) -> Vec<String> {
    scopes.iter().map(|s| s.to_string()).collect()
}

/// Options with everything unset: all from the environment.
pub fn default_options() -> CredentialOptions {
    CredentialOptions {
        broker_url: None,
        credential_file: None,
        timeout_ms: None,
        audience_map: Vec::new(),
        allow_insecure_http: false,
        disable_cache: false,
        lane: None,
        configuration_revision: None,
        runtime_access_url: None,
    }
}
