//! A ready-made store for an agent component: [`AgentBuilder`] sets up
//! its own WASI (only the variables and directories it is given), wasi:http
//! through [`AgentEgress`] (deny by default, never the credential's broker or
//! helper), tokens injected into its requests if asked ([`Injection`]), and
//! [`link`] meets its `token-credential` import with a [`LinkedCredential`].
//!
//! Threat model: the agent is untrusted code. It gets nothing it was not
//! given: no `VD_*` variable, no preopen unless [`AgentBuilder::dir`] names
//! one (never the precompiled cache), HTTP only to [`AgentBuilder::egress`]
//! origins within [`EgressLimits`], and no more of the credential than the
//! tokens its [`crate::linked::AgentPolicy`] allows. This is what
//! `vd-cred run-agent` and the demo run an agent in; a runtime with its own
//! store can use [`AgentEgress`], [`Injection`] and
//! [`crate::linked::add_to_linker`] directly instead.
//!
//! ```no_run
//! # async fn run(wasm: &std::path::Path) -> anyhow::Result<()> {
//! use vd_cred_host::Host;
//! use vd_cred_host::linked::{AgentPolicy, LinkedCredential};
//! use vd_cred_host::runner::{self, AgentBuilder};
//!
//! let host = Host::shared();
//! let env = |name: &str| std::env::var(name).ok();
//! let sandbox = vd_cred_host::from_env::sandbox_from_env(host, env)?.build().await?;
//! let linked = LinkedCredential::new(sandbox, AgentPolicy::new("reader").allow(["vault"]));
//! let (component, _) = vd_cred_host::precompiled::load(host.engine(), wasm)?;
//! let pre = runner::link(host.engine(), &component)?;
//! let (store, instance) = AgentBuilder::default()
//!     .egress("https://*.vault.azure.net")
//!     .instantiate(host.engine(), &pre, linked)
//!     .await?;
//! # let _ = (store, instance);
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use wasmtime::component::{Component, Instance, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::egress::{AgentEgress, EgressLimits};
use super::inject::{DEFAULT_RULES, InjectEvent, Injection};
use super::linked::{self, LinkedCredential};
use crate::engine::{precompiled, yield_on_epoch};
use crate::outbound::TrustedRoots;
use crate::outbound::proxy::Proxies;

/// An agent's store: its own WASI and wasi:http, its egress policy, and the
/// credential its import is linked to.
pub struct AgentState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: AgentEgress,
    /// The linked credential (its sandbox, policy and audit hook).
    pub linked: LinkedCredential,
}

impl AgentState {
    /// The agent's egress policy (its record of refused requests).
    pub fn egress(&self) -> &AgentEgress {
        &self.hooks
    }
}

impl WasiView for AgentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for AgentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// WASI p2, wasi:http and the linked `token-credential`, for `component`.
pub fn link(engine: &Engine, component: &Component) -> Result<InstancePre<AgentState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    linked::add_to_linker(&mut linker, |state: &mut AgentState| &mut state.linked)?;
    Ok(linker.instantiate_pre(component)?)
}

/// How one agent's own store is set up.
#[derive(Default)]
pub struct AgentBuilder {
    env: Vec<(String, String)>,
    dirs: Vec<(PathBuf, String)>,
    egress: Vec<String>,
    brokers: Vec<String>,
    allow_link_local: bool,
    roots: Option<TrustedRoots>,
    inject: Vec<String>,
    on_inject: Option<InjectHook>,
    connect_to: Vec<(String, u16, SocketAddr)>,
    proxies: Option<Proxies>,
    limits: Option<EgressLimits>,
}

type InjectHook = Arc<dyn Fn(&InjectEvent<'_>) + Send + Sync>;

impl AgentBuilder {
    /// An environment variable for the agent (nothing is inherited).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Preopen `host_dir` read-write at `guest_path` for the agent (its
    /// workspace, say). Refused when the store is made if it is, holds or
    /// lies in the host's precompiled cache or its key
    /// ([`crate::precompiled::check_agent_preopen`]).
    pub fn dir(mut self, host_dir: impl Into<PathBuf>, guest_path: impl Into<String>) -> Self {
        self.dirs.push((host_dir.into(), guest_path.into()));
        self
    }

    /// Allow the agent HTTP to `origin` (`scheme://host[:port]`, the host
    /// may be `*` or `*.domain`; see [`crate::egress::AllowedOrigin`]).
    /// Nothing is allowed by default.
    pub fn egress(mut self, origin: impl Into<String>) -> Self {
        self.egress.push(origin.into());
        self
    }

    /// The credential's broker URL, which the agent never reaches under any
    /// name or address, whatever [`AgentBuilder::egress`] allows; the
    /// helper's origin is always refused.
    pub fn credential_broker(mut self, url: impl Into<String>) -> Self {
        self.brokers.push(url.into());
        self
    }

    /// Allow every link-local and cloud metadata address (169.254.0.0/16,
    /// fe80::/10, fd00:ec2::254); by default only those an allowed origin
    /// names literally.
    pub fn allow_link_local(mut self, allow: bool) -> Self {
        self.allow_link_local = allow;
        self
    }

    /// Verify the agent's https peers against `roots` (default: the public
    /// web roots).
    pub fn trust(mut self, roots: TrustedRoots) -> Self {
        self.roots = Some(roots);
        self
    }

    /// Add the token for the rule's audience to the agent's https requests
    /// it matches (`*.vault.azure.net=vault`; see
    /// [`crate::inject::InjectRule::parse`]); rules are tried in
    /// the order added. A rule opens nothing: allow the destinations with
    /// [`AgentBuilder::egress`].
    pub fn inject(mut self, rule: impl Into<String>) -> Self {
        self.inject.push(rule.into());
        self
    }

    /// The default injection rules ([`DEFAULT_RULES`]), after any added so far.
    pub fn inject_defaults(mut self) -> Self {
        self.inject
            .extend(DEFAULT_RULES.iter().map(|r| r.to_string()));
        self
    }

    /// Call `hook` for every request the host adds a token to.
    pub fn on_inject(mut self, hook: impl Fn(&InjectEvent<'_>) + Send + Sync + 'static) -> Self {
        self.on_inject = Some(Arc::new(hook));
        self
    }

    /// Connect to `addr` for the agent's requests to `host:port` (see
    /// [`AgentEgress::connect_to`]): an Azure name served by a loopback mock.
    pub fn connect_to(mut self, host: &str, port: u16, addr: SocketAddr) -> Self {
        self.connect_to.push((host.to_string(), port, addr));
        self
    }

    /// Send the agent's requests through `proxies` (see
    /// [`AgentEgress::proxies`]); none by default.
    pub fn proxies(mut self, proxies: Proxies) -> Self {
        self.proxies = Some(proxies);
        self
    }

    /// What the agent's own HTTP may hold at once (default:
    /// [`EgressLimits::default`]).
    pub fn egress_limits(mut self, limits: EgressLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// The agent's store, holding `linked`.
    pub fn store(self, engine: &Engine, linked: LinkedCredential) -> Result<Store<AgentState>> {
        let mut wasi = WasiCtx::builder();
        wasi.envs(&self.env);
        for (dir, guest) in &self.dirs {
            precompiled::check_agent_preopen(dir)?;
            wasi.preopened_dir(dir, guest, FsPerms::ReadWrite)?;
        }
        let mut hooks = AgentEgress::for_agent_of(&linked)?;
        if let Some(limits) = self.limits {
            hooks.limits(limits);
        }
        for origin in &self.egress {
            hooks.allow(origin)?;
        }
        for url in &self.brokers {
            hooks.credential_broker(url)?;
        }
        hooks.allow_link_local(self.allow_link_local);
        if let Some(roots) = self.roots {
            hooks.trust(roots);
        }
        for (host, port, addr) in &self.connect_to {
            hooks.connect_to(host, *port, *addr)?;
        }
        if let Some(proxies) = self.proxies {
            hooks.proxies(proxies);
        }
        if !self.inject.is_empty() {
            let mut injection = Injection::new(&linked);
            for rule in &self.inject {
                injection = injection.rule(rule)?;
            }
            if let Some(hook) = self.on_inject {
                injection = injection.on_inject(move |e| hook(e));
            }
            hooks.inject(injection);
        }
        let state = AgentState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks,
            linked,
        };
        let mut store = Store::new(engine, state);
        yield_on_epoch(&mut store);
        Ok(store)
    }

    /// Instantiate `pre` in the agent's store.
    pub async fn instantiate(
        self,
        engine: &Engine,
        pre: &InstancePre<AgentState>,
        linked: LinkedCredential,
    ) -> Result<(Store<AgentState>, Instance)> {
        let mut store = self.store(engine, linked)?;
        let instance = pre.instantiate_async(&mut store).await?;
        Ok((store, instance))
    }
}
