//! The wasmtime host: one compiled component shared by many sandboxes, each
//! with its own store, environment, preopen, clock and HTTP policy.
//!
//! A sandbox is tight by default: no inherited environment, no preopened
//! directory but the bearer's (read-only), no sockets, and outgoing HTTP only
//! to the broker's scheme and authority. Everything else is denied in
//! [`WasiHttpHooks::send_request`] and recorded.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Result;
use wasmtime::component::{Component, Instance, InstancePre, Linker, ResourceAny, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::exports::vibedata::cred_broker::token_credential as wit;
use crate::bindings::{CredBroker, CredBrokerPre};
use crate::precompiled::{self, Source};
use crate::{TestClock, policy::BrokerOnly};

/// The per-instance state: WASI, wasi:http, and the broker-only HTTP policy.
pub struct State {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: BrokerOnly,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Link WASI p2 (filesystem, clocks, environment, stdio) and wasi:http for
/// `component`: what every sandbox offers, before its per-instance policy.
pub fn link(engine: &Engine, component: &Component) -> Result<InstancePre<State>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker.instantiate_pre(component)?)
}

/// How a [`Host`] is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostOptions {
    /// Use wasmtime's pooling allocator, sized for this many live instances
    /// (for a runtime hosting many agents). `None`: on-demand allocation.
    pub pooling: Option<u32>,
    /// Load from (and write) the precompiled cache next to the `.wasm`.
    pub precompiled_cache: bool,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            pooling: None,
            precompiled_cache: true,
        }
    }
}

/// The engine configuration a [`Host`] uses.
pub fn engine_config(pooling: Option<u32>) -> Config {
    let mut config = Config::new();
    if let Some(instances) = pooling {
        let mut pool = PoolingAllocationConfig::default();
        // A component instance of this crate holds a few core instances, one
        // or two memories and tables; room for all of them per instance.
        pool.total_component_instances(instances)
            .total_core_instances(instances * 8)
            .total_memories(instances * 2)
            .total_tables(instances * 4)
            .total_stacks(instances)
            .max_memory_size(64 << 20);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// An engine and the component, compiled and linked once; sandboxes are cheap.
pub struct Host {
    engine: Engine,
    pre: CredBrokerPre<State>,
    source: Source,
    probe: OnceLock<crate::probe::ProbePre>,
}

impl Host {
    /// Load the component at `wasm` (from the precompiled cache when it
    /// matches) and link WASI p2 and wasi:http.
    pub fn load(wasm: impl AsRef<Path>) -> Result<Host> {
        Host::load_with(wasm, HostOptions::default())
    }

    /// [`Host::load`] with explicit options.
    pub fn load_with(wasm: impl AsRef<Path>, options: HostOptions) -> Result<Host> {
        let wasm = wasm.as_ref();
        let engine = Engine::new(&engine_config(options.pooling))?;
        let (component, source) = if options.precompiled_cache {
            precompiled::load(&engine, wasm)?
        } else {
            let component = Component::from_file(&engine, wasm).map_err(|e| {
                anyhow::Error::from(e).context(format!("compiling {}", wasm.display()))
            })?;
            (component, Source::Compiled)
        };
        Host::from_component(engine, component, source)
    }

    /// Link an already compiled component.
    pub fn from_component(engine: Engine, component: Component, source: Source) -> Result<Host> {
        let pre = CredBrokerPre::new(link(&engine, &component)?)?;
        Ok(Host {
            engine,
            pre,
            source,
            probe: OnceLock::new(),
        })
    }

    /// The component this crate's build script built, loaded once per process.
    pub fn shared() -> &'static Host {
        static HOST: OnceLock<Host> = OnceLock::new();
        HOST.get_or_init(|| Host::load(crate::COMPONENT_WASM).expect("load the built component"))
    }

    /// The sandbox probe, loaded on first use into this host's engine.
    fn probe_pre(&self) -> Result<&crate::probe::ProbePre> {
        if let Some(pre) = self.probe.get() {
            return Ok(pre);
        }
        let pre = crate::probe::ProbePre::load(&self.engine)?;
        Ok(self.probe.get_or_init(|| pre))
    }

    /// Whether the component was compiled or loaded precompiled.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The engine (for precompiling, benchmarks).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Start configuring a sandbox.
    pub fn sandbox(&self) -> SandboxBuilder<'_> {
        SandboxBuilder {
            host: self,
            env: Vec::new(),
            preopen: None,
            broker: None,
            runtime_access: None,
            also_allow: Vec::new(),
            clock: None,
        }
    }
}

/// How one sandbox is set up. Nothing is granted unless asked for.
pub struct SandboxBuilder<'h> {
    host: &'h Host,
    env: Vec<(String, String)>,
    preopen: Option<(PathBuf, String)>,
    broker: Option<String>,
    runtime_access: Option<PathBuf>,
    also_allow: Vec<String>,
    clock: Option<TestClock>,
}

impl SandboxBuilder<'_> {
    /// Set (or replace) one environment variable; nothing is inherited from the host.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    /// Preopen `host_dir` read-only at `guest_path`: the only directory the
    /// component can see (the bearer's).
    pub fn bearer_dir(
        mut self,
        host_dir: impl Into<PathBuf>,
        guest_path: impl Into<String>,
    ) -> Self {
        self.preopen = Some((host_dir.into(), guest_path.into()));
        self
    }

    /// The broker's base URL: HTTP to its scheme and authority is allowed,
    /// everything else denied. Without it, all HTTP is denied.
    pub fn broker_url(mut self, url: impl Into<String>) -> Self {
        self.broker = Some(url.into());
        self
    }

    /// Helper mode: route [`crate::policy::RUNTIME_ACCESS_URL`] to the
    /// runtime-access helper's Unix `socket` and tell the component so
    /// (`VD_RUNTIME_ACCESS_URL`). This replaces any broker origin; combine it
    /// with no `bearer_dir`, so the bearer never enters the sandbox.
    pub fn runtime_access(mut self, socket: impl Into<PathBuf>) -> Self {
        self.runtime_access = Some(socket.into());
        self.broker = None;
        self.env(
            vd_cred_broker::ENV_RUNTIME_ACCESS_URL,
            crate::policy::RUNTIME_ACCESS_URL,
        )
    }

    /// Also allow HTTP to the origin of `url`: for a composed component that
    /// calls one more service (the Key Vault example). Use sparingly.
    pub fn also_allow(mut self, url: impl Into<String>) -> Self {
        self.also_allow.push(url.into());
        self
    }

    /// The component's wall clock; the real clock when unset.
    pub fn clock(mut self, clock: TestClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The environment the component will see, in order.
    pub fn env_vars(&self) -> &[(String, String)] {
        &self.env
    }

    /// The one preopened directory, if any: `(host path, guest path)`.
    pub fn preopen(&self) -> Option<&(PathBuf, String)> {
        self.preopen.as_ref()
    }

    /// Instantiate the component in a fresh store.
    pub async fn build(self) -> Result<Sandbox> {
        let host = self.host;
        let (mut store, stdout, stderr, denied) = self.store()?;
        let instance = host.pre.instantiate_async(&mut store).await?;
        Ok(Sandbox {
            store,
            instance,
            stdout,
            stderr,
            denied,
        })
    }

    /// Instantiate the sandbox probe (a test component that tries reading,
    /// writing, listing the environment and reaching the network) in exactly
    /// the sandbox [`SandboxBuilder::build`] would give the credential.
    pub async fn build_probe(self) -> Result<crate::probe::Probe> {
        let pre = self.host.probe_pre()?.clone();
        let (mut store, ..) = self.store()?;
        let instance = pre.instantiate_async(&mut store).await?;
        Ok(crate::probe::Probe::new(store, instance))
    }

    /// Instantiate any component linked with [`link`] in this sandbox; for
    /// worlds other than the credential's (a composed consumer, say).
    pub async fn instantiate(self, pre: &InstancePre<State>) -> Result<(Store<State>, Instance)> {
        let (mut store, ..) = self.store()?;
        let instance = pre.instantiate_async(&mut store).await?;
        Ok((store, instance))
    }

    /// A fresh store holding the sandbox's WASI context and HTTP policy.
    #[allow(clippy::type_complexity)]
    fn store(
        self,
    ) -> Result<(
        Store<State>,
        MemoryOutputPipe,
        MemoryOutputPipe,
        Arc<Mutex<Vec<String>>>,
    )> {
        let stdout = MemoryOutputPipe::new(64 * 1024);
        let stderr = MemoryOutputPipe::new(64 * 1024);
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .envs(&self.env)
            // Filesystem calls are tiny: run them on this thread rather than
            // tokio's blocking pool (several times faster per call).
            .allow_blocking_current_thread(true);
        if let Some((dir, guest)) = &self.preopen {
            wasi.preopened_dir(dir, guest, FsPerms::ReadOnly)
                .map_err(|e| {
                    anyhow::Error::from(e).context(format!("preopening {}", dir.display()))
                })?;
        }
        if let Some(clock) = self.clock {
            wasi.wall_clock(clock);
        }
        let mut hooks = match (&self.runtime_access, &self.broker) {
            (Some(socket), _) => BrokerOnly::runtime_access(socket),
            (None, Some(url)) => BrokerOnly::for_url(url)?,
            (None, None) => BrokerOnly::deny_all(),
        };
        for url in &self.also_allow {
            hooks.also_allow(url)?;
        }
        let denied = hooks.denied();
        let state = State {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks,
        };
        Ok((Store::new(&self.host.engine, state), stdout, stderr, denied))
    }
}

/// One instance of the component in its sandbox.
pub struct Sandbox {
    store: Store<State>,
    instance: CredBroker,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    denied: Arc<Mutex<Vec<String>>>,
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
    fn iface(&self) -> &wit::Guest {
        self.instance.vibedata_cred_broker_token_credential()
    }

    /// The free function `get-token`: a credential from the environment, one call.
    pub async fn get_token(&mut self, scopes: &[&str]) -> Result<TokenResult> {
        let scopes = owned(scopes);
        let iface = self.iface().clone();
        let result = iface.call_get_token(&mut self.store, &scopes).await?;
        Ok(result.map_err(Into::into))
    }

    /// `credential.open(options)`.
    pub async fn open(
        &mut self,
        options: &CredentialOptions,
    ) -> Result<std::result::Result<ResourceAny, vd_cred_broker::CredentialError>> {
        let iface = self.iface().clone();
        let result = iface
            .credential()
            .call_open(&mut self.store, options)
            .await?;
        Ok(result.map_err(Into::into))
    }

    /// `credential.get-token(scopes)` on a credential from [`Sandbox::open`].
    pub async fn credential_get_token(
        &mut self,
        credential: ResourceAny,
        scopes: &[&str],
    ) -> Result<TokenResult> {
        let scopes = owned(scopes);
        let iface = self.iface().clone();
        let result = iface
            .credential()
            .call_get_token(&mut self.store, credential, &scopes)
            .await?;
        Ok(result.map_err(Into::into))
    }

    /// The free function `get-token-info`.
    pub async fn get_token_info(
        &mut self,
        scopes: &[&str],
        options: &TokenRequestOptions,
    ) -> Result<TokenInfoResult> {
        let scopes = owned(scopes);
        let iface = self.iface().clone();
        let result = iface
            .call_get_token_info(&mut self.store, &scopes, options)
            .await?;
        Ok(result.map_err(Into::into))
    }

    /// `credential.get-token-info(scopes, options)`.
    pub async fn credential_get_token_info(
        &mut self,
        credential: ResourceAny,
        scopes: &[&str],
        options: &TokenRequestOptions,
    ) -> Result<TokenInfoResult> {
        let scopes = owned(scopes);
        let iface = self.iface().clone();
        let result = iface
            .credential()
            .call_get_token_info(&mut self.store, credential, &scopes, options)
            .await?;
        Ok(result.map_err(Into::into))
    }

    /// Drop a credential resource.
    pub async fn drop_credential(&mut self, credential: ResourceAny) -> Result<()> {
        Ok(credential.resource_drop_async(&mut self.store).await?)
    }

    /// `describe-error`, rendered by the component.
    pub async fn describe_error(
        &mut self,
        error: &vd_cred_broker::CredentialError,
    ) -> Result<String> {
        let iface = self.iface().clone();
        Ok(iface
            .call_describe_error(&mut self.store, &error.clone().into())
            .await?)
    }

    /// What the component wrote to stdout and stderr so far.
    pub fn output(&self) -> (Vec<u8>, Vec<u8>) {
        (
            self.stdout.contents().to_vec(),
            self.stderr.contents().to_vec(),
        )
    }

    /// Every outgoing request the policy denied, as `scheme://authority`.
    pub fn denied_requests(&self) -> Vec<String> {
        self.denied.lock().unwrap().clone()
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

impl From<wit::CredentialError> for vd_cred_broker::CredentialError {
    fn from(e: wit::CredentialError) -> Self {
        use vd_cred_broker::CredentialError as E;
        use wit::CredentialError as W;
        match e {
            W::Configuration(m) => E::Configuration(m),
            W::InvalidScopes(m) => E::InvalidScopes(m),
            W::ScopeNotAllowed(s) => E::ScopeNotAllowed {
                scope: s.scope,
                known_resources: s.known_resources,
            },
            W::BearerUnavailable(m) => E::BearerUnavailable(m),
            W::BrokerUnreachable(m) => E::BrokerUnreachable(m),
            W::BrokerRejected(f) => E::BrokerRejected {
                status: f.status,
                detail: f.detail,
            },
            W::BrokerFailed(f) => E::BrokerFailed {
                status: f.status,
                detail: f.detail,
            },
            W::InvalidResponse(m) => E::InvalidResponse(m),
            W::Unsupported(m) => E::Unsupported(m),
        }
    }
}

impl From<vd_cred_broker::CredentialError> for wit::CredentialError {
    fn from(e: vd_cred_broker::CredentialError) -> Self {
        use vd_cred_broker::CredentialError as E;
        use wit::CredentialError as W;
        match e {
            E::Configuration(m) => W::Configuration(m),
            E::InvalidScopes(m) => W::InvalidScopes(m),
            E::ScopeNotAllowed {
                scope,
                known_resources,
            } => W::ScopeNotAllowed(wit::ScopeNotAllowed {
                scope,
                known_resources,
            }),
            E::BearerUnavailable(m) => W::BearerUnavailable(m),
            E::BrokerUnreachable(m) => W::BrokerUnreachable(m),
            E::BrokerRejected { status, detail } => {
                W::BrokerRejected(wit::BrokerFailure { status, detail })
            }
            E::BrokerFailed { status, detail } => {
                W::BrokerFailed(wit::BrokerFailure { status, detail })
            }
            E::InvalidResponse(m) => W::InvalidResponse(m),
            E::Unsupported(m) => W::Unsupported(m),
        }
    }
}
