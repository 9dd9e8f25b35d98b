//! Sandboxes: one instance of the credential per agent or per test, each with
//! its own store, environment, preopen, clock and HTTP policy.
//!
//! A sandbox is tight by default: no inherited environment, no preopened
//! directory but the bearer's (read-only), no sockets, and outgoing HTTP only
//! to the broker's scheme and authority (or the runtime-access helper).
//! Everything else is denied in `WasiHttpHooks::send_request` and recorded.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre, ResourceAny, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, HostWallClock, WasiCtx};
use wasmtime_wasi_http::WasiHttpCtx;

use crate::bindings::CredBroker;
use crate::bindings::exports::vibedata::cred_broker::token_credential as wit;
use crate::host::Host;
use crate::policy::{BrokerOnly, RUNTIME_ACCESS_URL};
use crate::state::State;
use crate::tls::TrustedRoots;

impl Host {
    /// Start configuring a sandbox: nothing is granted unless asked for.
    pub fn sandbox(&self) -> SandboxBuilder<'_> {
        SandboxBuilder {
            host: self,
            env: Vec::new(),
            preopen: None,
            broker: None,
            runtime_access: None,
            also_allow: Vec::new(),
            clock: None,
            roots: TrustedRoots::public(),
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
    clock: Option<Box<dyn HostWallClock>>,
    roots: TrustedRoots,
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

    /// Helper mode: route [`RUNTIME_ACCESS_URL`] to the
    /// runtime-access helper's Unix `socket` and tell the component so
    /// (`VD_RUNTIME_ACCESS_URL`). This replaces any broker origin; combine it
    /// with no `bearer_dir`, so the bearer never enters the sandbox.
    pub fn runtime_access(mut self, socket: impl Into<PathBuf>) -> Self {
        self.runtime_access = Some(socket.into());
        self.broker = None;
        self.env(vd_cred_broker::ENV_RUNTIME_ACCESS_URL, RUNTIME_ACCESS_URL)
    }

    /// Also allow HTTP to the origin of `url`: for a composed component that
    /// calls one more service (the Key Vault example). Use sparingly.
    pub fn also_allow(mut self, url: impl Into<String>) -> Self {
        self.also_allow.push(url.into());
        self
    }

    /// Verify an https broker against `roots`: the public web roots plus any
    /// private CA added to them. A handshake that fails is never retried over
    /// plain http.
    pub fn trusted_roots(mut self, roots: TrustedRoots) -> Self {
        self.roots = roots;
        self
    }

    /// The component's wall clock (a test's settable clock, say); the real
    /// clock when unset.
    pub fn clock(mut self, clock: impl HostWallClock + 'static) -> Self {
        self.clock = Some(Box::new(clock));
        self
    }

    /// The host this sandbox is instantiated from.
    pub fn host(&self) -> &Host {
        self.host
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

    /// Instantiate any component linked with [`crate::link`] in this sandbox;
    /// for worlds other than the credential's (a composed consumer, a test
    /// probe).
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
            // No raw sockets or name lookups (wasmtime's defaults, stated):
            // the only way out is wasi:http, through the egress policy.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
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
            wasi.wall_clock(Clock(clock));
        }
        let mut hooks = match (&self.runtime_access, &self.broker) {
            (Some(socket), _) => BrokerOnly::runtime_access(socket),
            (None, Some(url)) => BrokerOnly::for_url(url)?,
            (None, None) => BrokerOnly::deny_all(),
        };
        for url in &self.also_allow {
            hooks.also_allow(url)?;
        }
        hooks.trust(self.roots);
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

/// A boxed wall clock, as wasmtime-wasi takes one.
struct Clock(Box<dyn HostWallClock>);

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
