//! Agent components linked to the credential by the host: each agent runs in
//! a store of its own, whose `token-credential` import is met by a
//! [`LinkedCredential`] (the credential in its own sandbox). The agent's
//! store gets only what [`AgentBuilder`] grants: no `VD_*` variable, no
//! preopen unless asked for, HTTP only to the origins allowed with
//! [`AgentBuilder::egress`] (none by default) and never to the credential's
//! broker or helper ([`AgentEgress`]).
//!
//! With [`AgentBuilder::inject`] the host adds Azure tokens to the agent's
//! own https requests to the hosts the rules name ([`vd_cred_host::inject`]):
//! the agent then needs no token and no credential import at all.
//!
//! This is the shape a runtime author would write around `vd-cred-host`;
//! here it serves the tests, the demo and `host-test run-agent`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use vd_cred_host::TrustedRoots;
use vd_cred_host::egress::{AgentEgress, EgressLimits};
use vd_cred_host::inject::{DEFAULT_RULES, InjectEvent, Injection};
use vd_cred_host::linked::{self, LinkedCredential};
use wasmtime::component::wasm_wave::untyped::UntypedFuncCall;
use wasmtime::component::{Component, Instance, InstancePre, Linker, ResourceTable, Val};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

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
    proxies: Option<vd_cred_host::Proxies>,
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
    /// ([`vd_cred_host::precompiled::check_agent_preopen`]).
    pub fn dir(mut self, host_dir: impl Into<PathBuf>, guest_path: impl Into<String>) -> Self {
        self.dirs.push((host_dir.into(), guest_path.into()));
        self
    }

    /// Allow the agent HTTP to `origin` (`scheme://host[:port]`, the host
    /// may be `*` or `*.domain`; see [`vd_cred_host::egress::AllowedOrigin`]).
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
    /// [`vd_cred_host::inject::InjectRule::parse`]); rules are tried in
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
    pub fn proxies(mut self, proxies: vd_cred_host::Proxies) -> Self {
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
            vd_cred_host::precompiled::check_agent_preopen(dir)?;
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
        vd_cred_host::yield_on_epoch(&mut store);
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

/// Call `call` on `instance`, as `host-test run-agent --invoke` does:
/// `name(args)` with WAVE-encoded arguments, `name` a root export or a
/// function in an exported interface. Its results.
pub async fn invoke<T: Send>(
    component: &Component,
    instance: &Instance,
    mut store: &mut Store<T>,
    call: &str,
) -> Result<Vec<Val>> {
    use wasmtime::component::types::ComponentItem;
    let call = UntypedFuncCall::parse(call).map_err(|e| anyhow::anyhow!("{call}: {e}"))?;
    let engine = store.engine().clone();
    let name = call.name().to_string();
    let mut index = instance.get_export_index(&mut store, None, &name);
    for (export, item) in component.component_type().exports(&engine) {
        if index.is_some() {
            break;
        }
        if let ComponentItem::ComponentInstance(_) = item.ty {
            let parent = instance.get_export_index(&mut store, None, export);
            index = instance.get_export_index(&mut store, parent.as_ref(), &name);
        }
    }
    let func = index
        .and_then(|i| instance.get_func(&mut store, i))
        .ok_or_else(|| anyhow::anyhow!("the agent exports no function {name:?}"))?;
    let ty = func.ty(&store);
    let param_types: Vec<_> = ty.params().map(|(_, t)| t).collect();
    let params = call
        .to_wasm_params(param_types.iter())
        .map_err(|e| anyhow::anyhow!("arguments of {name}: {e}"))?;
    let mut results = vec![Val::Bool(false); ty.results().len()];
    func.call_async(&mut store, &params, &mut results).await?;
    Ok(results)
}

/// The wstd example agent (`examples/wstd-agent`): `read-secret(vault, name)`
/// with a token from the guest crate.
pub mod wstd_agent {
    /// Path of the wstd agent built by this crate's build script.
    pub const WSTD_AGENT_WASM: &str = env!("VD_WSTD_AGENT_WASM");
}

/// The test agent (`host-test/agent`), for the tests and the demo.
pub mod test_agent {
    use super::*;

    mod bindings {
        wasmtime::component::bindgen!({
            world: "vibedata:test-agent/test-agent",
            path: ["../wit", "agent/wit"],
            exports: { default: async },
            with: {
                "vibedata:cred-broker/token-credential": vd_cred_host::linked::bindings::vibedata::cred_broker::token_credential,
            },
        });
    }

    pub use vd_cred_host::linked::bindings::vibedata::cred_broker::token_credential::{
        AccessToken, AccessTokenInfo, CredentialError, CredentialOptions, TokenRequestOptions,
    };

    /// What the agent's [`TestAgent::http_flood`] saw.
    pub use bindings::exports::vibedata::test_agent::agent::FloodReport;
    /// What the agent's [`TestAgent::http_request`] got back.
    pub use bindings::exports::vibedata::test_agent::agent::HttpAnswer;

    /// Path of the test agent built by this crate's build script.
    pub const TEST_AGENT_WASM: &str = env!("VD_TEST_AGENT_WASM");

    /// The test agent, compiled and linked for `engine`.
    pub fn load(engine: &Engine) -> Result<InstancePre<AgentState>> {
        let (component, _) =
            vd_cred_host::precompiled::load(engine, std::path::Path::new(TEST_AGENT_WASM))?;
        link(engine, &component)
    }

    /// Options with nothing set: what an agent passes to use the host's settings.
    pub fn no_options() -> CredentialOptions {
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

    /// One test agent in its store.
    pub struct TestAgent {
        /// The agent's store (its state holds the linked credential).
        pub store: Store<AgentState>,
        instance: bindings::TestAgent,
    }

    impl TestAgent {
        /// Instantiate the test agent from `pre` in the store `builder` describes.
        pub async fn new(
            builder: AgentBuilder,
            engine: &Engine,
            pre: &InstancePre<AgentState>,
            linked: LinkedCredential,
        ) -> Result<Self> {
            let (mut store, instance) = builder.instantiate(engine, pre, linked).await?;
            let instance = bindings::TestAgent::new(&mut store, &instance)?;
            Ok(TestAgent { store, instance })
        }

        fn iface(&self) -> bindings::exports::vibedata::test_agent::agent::Guest {
            self.instance.vibedata_test_agent_agent().clone()
        }

        /// `credential.open(options)`, then `get-token(scopes)` `calls` times.
        pub async fn token(
            &mut self,
            options: &CredentialOptions,
            scopes: &[&str],
            calls: u32,
        ) -> Result<Result<AccessToken, CredentialError>> {
            let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
            Ok(self
                .iface()
                .call_token(&mut self.store, options, &scopes, calls)
                .await?)
        }

        /// `credential.open(options)`, then `get-token-info`.
        pub async fn token_info(
            &mut self,
            options: &CredentialOptions,
            scopes: &[&str],
            request: &TokenRequestOptions,
        ) -> Result<Result<AccessTokenInfo, CredentialError>> {
            let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
            Ok(self
                .iface()
                .call_token_info(&mut self.store, options, &scopes, request)
                .await?)
        }

        /// The free `get-token`.
        pub async fn free_token(
            &mut self,
            scopes: &[&str],
        ) -> Result<Result<AccessToken, CredentialError>> {
            let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
            Ok(self
                .iface()
                .call_free_token(&mut self.store, &scopes)
                .await?)
        }

        /// The imported `describe-error`, called by the agent.
        pub async fn describe(&mut self, error: &CredentialError) -> Result<String> {
            Ok(self.iface().call_describe(&mut self.store, error).await?)
        }

        /// Read a file from inside the agent.
        pub async fn read_file(&mut self, path: &str) -> Result<Result<String, String>> {
            Ok(self.iface().call_read_file(&mut self.store, path).await?)
        }

        /// The agent's environment.
        pub async fn environment(&mut self) -> Result<Vec<(String, String)>> {
            Ok(self.iface().call_environment(&mut self.store).await?)
        }

        /// `GET url` from inside the agent.
        pub async fn http_get(&mut self, url: &str) -> Result<Result<u16, String>> {
            Ok(self.iface().call_http_get(&mut self.store, url).await?)
        }

        /// `method url` with `headers` and `body` from inside the agent (no
        /// redirect followed): the whole answer, or the error code.
        pub async fn http_request(
            &mut self,
            method: &str,
            url: &str,
            headers: &[(&str, &str)],
            body: &[u8],
        ) -> Result<Result<HttpAnswer, String>> {
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Ok(self
                .iface()
                .call_http_request(&mut self.store, method, url, &headers, body)
                .await?)
        }

        /// `GET url` `count` times from inside the agent: each outcome (a
        /// status, or an error code) and how often it came.
        pub async fn http_loop(&mut self, url: &str, count: u32) -> Result<Vec<(String, u32)>> {
            Ok(self
                .iface()
                .call_http_loop(&mut self.store, url, count)
                .await?)
        }

        /// `count` `POST url` requests with bodies of `body_bytes`, all held
        /// at once, then the free `get-token(scopes)` while they are held
        /// (see the agent's `http-flood`).
        pub async fn http_flood(
            &mut self,
            url: &str,
            body_bytes: u64,
            count: u32,
            scopes: &[&str],
        ) -> Result<FloodReport> {
            let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
            Ok(self
                .iface()
                .call_http_flood(&mut self.store, url, body_bytes, count, &scopes)
                .await?)
        }

        /// Start `GET url`, then `GET sync_url` and wait for it, then drop
        /// the first unanswered: the second's status, or its error code.
        pub async fn abandon(&mut self, url: &str, sync_url: &str) -> Result<Result<u16, String>> {
            Ok(self
                .iface()
                .call_abandon(&mut self.store, url, sync_url)
                .await?)
        }

        /// Open `count` credentials, all kept open until the end: how many
        /// opened, and the first refusal.
        pub async fn open_many(
            &mut self,
            options: &CredentialOptions,
            count: u32,
        ) -> Result<(u32, Option<CredentialError>)> {
            Ok(self
                .iface()
                .call_open_many(&mut self.store, options, count)
                .await?)
        }

        /// Open and drop a credential `count` times: how many opened, and
        /// the first refusal.
        pub async fn open_drop(
            &mut self,
            options: &CredentialOptions,
            count: u32,
        ) -> Result<(u32, Option<CredentialError>)> {
            Ok(self
                .iface()
                .call_open_drop(&mut self.store, options, count)
                .await?)
        }

        /// `get-token(scopes)` `count` times on one credential (or the free
        /// function): tokens, errors, the last error.
        pub async fn mint_loop(
            &mut self,
            options: &CredentialOptions,
            scopes: &[&str],
            count: u32,
            free: bool,
        ) -> Result<(u32, u32, Option<CredentialError>)> {
            let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
            Ok(self
                .iface()
                .call_mint_loop(&mut self.store, options, &scopes, count, free)
                .await?)
        }
    }
}
