//! The host-linked credential: an agent component imports
//! `vibedata:cred-broker/token-credential`, and the host meets that import by
//! forwarding each call to a credential instance in a sandbox of its own.
//!
//! The agent's store holds none of the credential's grants: not the bearer's
//! directory, not the `VD_*` variables, not HTTP to the broker or the helper.
//! The host decides the credential's settings (an agent's `open` options may
//! set only `timeout-ms` and `disable-cache`), may allow the agent only some
//! resources or audiences ([`AgentPolicy`]), and can observe every token
//! handed out ([`TokenEvent`]), never the token itself.
//!
//! ```no_run
//! # async fn demo(broker_url: String) -> anyhow::Result<()> {
//! use vd_cred_host::Host;
//! use vd_cred_host::linked::{AgentPolicy, LinkedCredential};
//! // The credential's own sandbox, as for a direct call.
//! let sandbox = Host::shared()
//!     .sandbox()
//!     .env("VD_CREDENTIAL_BROKER_URL", &broker_url)
//!     .env("VD_CREDENTIAL_FILE", "/run/vd/credential")
//!     .bearer_dir("/run/vd", "/run/vd")
//!     .broker_url(&broker_url)
//!     .build()
//!     .await?;
//! let policy = AgentPolicy::new("agent-7").allow(["vault", "https://storage.azure.com"]);
//! let linked = LinkedCredential::new(sandbox, policy)
//!     .on_token(|e| println!("{} got a {} token ({:?})", e.agent_id, e.audience, e.source));
//! // Keep `linked` in the agent's store data and add the import to its linker:
//! // vd_cred_host::linked::add_to_linker(&mut linker, |state: &mut MyState| &mut state.linked)?;
//! # let _ = linked; Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use slab::Slab;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard, OwnedMutexGuard};
use vd_cred_broker::{AudienceMap, CredentialError, DEFAULT_AUDIENCES, normalize_scope};
use wasmtime::component::{HasSelf, Linker, Resource};
use wasmtime_wasi::HostMonotonicClock;

use crate::backend::{Backend, Opened};
use crate::sandbox::{Sandbox, default_options};
use crate::shared::{Returned, SharedCredential};

/// Host bindings for the `credential-user` world: the import side of
/// `token-credential`, whose `credential` resource is a [`LinkedHandle`].
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "credential-user",
        path: "../wit",
        imports: { default: async | trappable },
        with: { "vibedata:cred-broker/token-credential.credential": super::LinkedHandle },
    });
}

use bindings::vibedata::cred_broker::token_credential as wit;

/// The host's side of an agent's `credential` resource.
pub struct LinkedHandle;

/// What one agent may use, per [`LinkedCredential`]. Going over a limit is
/// refused with a typed error; the agent keeps working afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentLimits {
    /// Credentials open at once (`open` beyond it: `configuration`).
    pub credentials: usize,
    /// Scopes in one call (`invalid-scopes` beyond it).
    pub scopes_per_call: usize,
    /// Bytes in one scope (`invalid-scopes` beyond it), and in a request
    /// option's `claims` (`unsupported`) or `tenant-id` (`configuration`).
    pub scope_bytes: usize,
    /// Requests that reach the broker, per audience, per minute: a token
    /// bucket holding this many, refilled evenly over a minute. Every
    /// request is charged, a call's retries included: with its own
    /// sandbox, the request past the budget is held back; over a shared
    /// instance, a call is charged after it ends for the requests the
    /// broker was sent for its audience meanwhile, unless its credential's
    /// cache answered it (the bucket may go below empty, and refills from
    /// there).
    /// A call over budget gets the credential's cached token while one is
    /// valid and fresh, else `broker-failed` with status 429 saying so.
    pub mints_per_minute: u32,
    /// The largest `timeout-ms` an agent may set (`configuration` beyond it).
    pub max_timeout_ms: u32,
}

impl Default for AgentLimits {
    /// 16 credentials, 16 scopes of at most 1 KiB per call, 30 mints per
    /// audience per minute, `timeout-ms` up to 60 s.
    fn default() -> Self {
        AgentLimits {
            credentials: 16,
            scopes_per_call: 16,
            scope_bytes: 1024,
            mints_per_minute: 30,
            max_timeout_ms: 60_000,
        }
    }
}

/// Which tokens an agent may have, and its [`AgentLimits`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPolicy {
    agent_id: String,
    /// Resources (normalised) and audiences the agent may ask for.
    allowed: Vec<String>,
    limits: AgentLimits,
    reveal_tokens: bool,
}

impl AgentPolicy {
    /// An agent called `agent_id` (shown in [`TokenEvent`]s), allowed the six
    /// default resources, with the default [`AgentLimits`].
    pub fn new(agent_id: impl Into<String>) -> Self {
        AgentPolicy {
            agent_id: agent_id.into(),
            allowed: DEFAULT_AUDIENCES
                .iter()
                .map(|(r, _)| r.to_string())
                .collect(),
            limits: AgentLimits::default(),
            reveal_tokens: true,
        }
    }

    /// Allow only these resources (`https://vault.azure.net`, with or without
    /// `/.default`) or audiences (`vault`); replaces the default.
    pub fn allow<S: AsRef<str>>(mut self, entries: impl IntoIterator<Item = S>) -> Self {
        self.allowed = entries
            .into_iter()
            .map(|e| normalize_scope(e.as_ref()).to_string())
            .collect();
        self
    }

    /// Replace the agent's limits.
    pub fn limits(mut self, limits: AgentLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether the agent may read tokens (`get-token`, `get-token-info`;
    /// `true` by default). With `false` they return `unsupported`: the
    /// agent can still reach Azure through the host's injection rules
    /// ([`crate::inject`]), and never holds a token.
    pub fn reveal_tokens(mut self, reveal: bool) -> Self {
        self.reveal_tokens = reveal;
        self
    }

    /// Whether the agent may read tokens ([`AgentPolicy::reveal_tokens`]).
    pub fn reveals_tokens(&self) -> bool {
        self.reveal_tokens
    }

    /// The agent's id.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The agent's limits.
    pub fn agent_limits(&self) -> &AgentLimits {
        &self.limits
    }

    /// The audience `scope` maps to, if the agent may ask for it.
    fn allowed_audience(&self, map: &AudienceMap, scope: &str) -> Option<String> {
        let audience = map.lookup(scope)?;
        let resource = normalize_scope(scope);
        let allowed = |e: &String| e == resource || e == audience;
        self.allowed
            .iter()
            .any(allowed)
            .then(|| audience.to_string())
    }

    /// The resources the agent may ask for, sorted: what `scope-not-allowed` lists.
    fn known_resources(&self) -> Vec<String> {
        let mut known: Vec<String> = DEFAULT_AUDIENCES
            .iter()
            .filter(|(r, a)| self.allowed.iter().any(|e| e == r || e == a))
            .map(|(r, _)| r.to_string())
            .collect();
        known.sort();
        known
    }
}

/// Whether a token handed to an agent was minted for it or served from the
/// credential's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The host sent the broker (or helper) a request during the call.
    Minted,
    /// No request left the host: the credential's cache served it.
    Cached,
}

/// One token handed to an agent, for an audit log. It never holds the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEvent<'a> {
    /// The agent, as its [`AgentPolicy`] names it.
    pub agent_id: &'a str,
    /// The audience of the token.
    pub audience: &'a str,
    /// When the token expires, in Unix seconds.
    pub expires_on: u64,
    /// Minted for this call, or served from the cache.
    pub source: TokenSource,
}

/// One call of an agent's that failed, for an audit log: the error in full
/// (the agent got it with the broker's URL, the bearer's path and the
/// helper's socket withheld).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorEvent<'a> {
    /// The agent, as its [`AgentPolicy`] names it.
    pub agent_id: &'a str,
    /// The audience asked for, when the scopes named one.
    pub audience: Option<&'a str>,
    /// The full error, or the host's reason for a trap in the credential.
    pub error: &'a str,
}

type AuditHook = Arc<dyn Fn(&TokenEvent<'_>) + Send + Sync>;
type ErrorHook = Arc<dyn Fn(&ErrorEvent<'_>) + Send + Sync>;

/// One `credential` the agent opened: its options, and the credential in
/// the backend (opened again after the instance was replaced).
struct Handle {
    options: crate::CredentialOptions,
    resource: Option<(u64, Opened)>,
}

/// A token bucket of mints for one audience.
struct Bucket {
    tokens: f64,
    at: u64,
}

/// The credential an agent's import is linked to: a credential instance in
/// its own [`Sandbox`], the agent's [`AgentPolicy`], and optional audit
/// hooks. Keep one in each agent's store data; many agents share one
/// compiled credential through [`crate::Host`].
///
/// Cloning gives another handle to the same credential: the agent's import
/// and the host's injection of tokens into the agent's requests
/// ([`crate::inject`]) share one sandbox, one cache and one mint budget,
/// and take turns (one call at a time).
#[derive(Clone)]
pub struct LinkedCredential {
    linked: Arc<Mutex<Linked>>,
    policy: Arc<AgentPolicy>,
    broker_urls: Arc<[String]>,
    /// How the credential looks its broker up.
    resolver: crate::Resolver,
}

/// What a [`LinkedCredential`] shares between its handles.
struct Linked {
    credential: Backend,
    /// With a shared instance: the last token handed to the agent per
    /// audience, served while fresh when the agent is over its mint budget
    /// (a shared instance's requests cannot be held back for one agent).
    last: HashMap<String, crate::AccessTokenInfo>,
    policy: Arc<AgentPolicy>,
    audiences: AudienceMap,
    handles: Slab<Handle>,
    /// The credentials the host's injection uses (never the agent's), one
    /// per audience, so that answering a challenge for one drops no other's
    /// cached token.
    injectors: HashMap<String, Injector>,
    budget: HashMap<String, Bucket>,
    clock: Box<dyn HostMonotonicClock + Sync>,
    on_token: Option<AuditHook>,
    on_error: Option<ErrorHook>,
}

/// One of the host's injection credentials, and the last token it gave.
struct Injector {
    handle: Handle,
    last: Option<String>,
}

/// Which credential a token call goes to.
#[derive(Clone, Copy)]
enum Caller {
    /// The agent's credential with this handle.
    Handle(u32),
    /// The agent's free functions.
    Free,
    /// The host, injecting a token into the agent's request; `fresh` opens
    /// a new credential for the audience first (no cached token).
    Injector { fresh: bool },
}

/// The real monotonic clock, for the mint budget.
struct RealClock(Instant);

impl HostMonotonicClock for RealClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

const MINUTE_NS: f64 = 60e9;

impl LinkedCredential {
    /// Forward an agent's calls to the credential in `sandbox`, under `policy`.
    pub fn new(sandbox: Sandbox, policy: AgentPolicy) -> Self {
        Self::with(Backend::Own(Box::new(sandbox)), policy)
    }

    /// Forward an agent's calls to `shared`, one instance of the WASI 0.3
    /// build that many agents share (one per bearer), under `policy`: the
    /// policy, limits, budget and audit stay the agent's own and are checked
    /// here before a call is forwarded; calls of different agents run
    /// concurrently, and agents opening a credential with the same options
    /// share it (its cache, and its mints: a thousand agents asking at once
    /// cause one). A token is reported [`TokenSource::Minted`] to the first
    /// agent handed it, [`TokenSource::Cached`] to the rest. A call is
    /// charged for the requests the broker was sent for its audience while
    /// it was in the instance, unless its credential's cache answered it
    /// (it returned what that credential returned last): a thousand agents
    /// sharing one mint each pay one, and an agent's own mints, its
    /// retries included, are always its own to pay. Over budget, an agent
    /// is served the last token it was handed while that is fresh, else
    /// refused (429).
    pub fn shared(shared: SharedCredential, policy: AgentPolicy) -> Self {
        Self::with(Backend::Shared(shared), policy)
    }

    fn with(credential: Backend, policy: AgentPolicy) -> Self {
        let policy = Arc::new(policy);
        let broker_urls = credential.broker_urls().into();
        let resolver = credential.resolver();
        let linked = Linked {
            credential,
            last: HashMap::new(),
            policy: policy.clone(),
            audiences: AudienceMap::default(),
            handles: Slab::new(),
            injectors: HashMap::new(),
            budget: HashMap::new(),
            clock: Box::new(RealClock(Instant::now())),
            on_token: None,
            on_error: None,
        };
        LinkedCredential {
            linked: Arc::new(Mutex::new(linked)),
            policy,
            broker_urls,
            resolver,
        }
    }

    /// The shared state, while this is the only handle: the builder calls
    /// ([`LinkedCredential::on_token`] and the rest) come before any clone
    /// (the injection's), and panic after.
    fn configure(&mut self) -> &mut Linked {
        Arc::get_mut(&mut self.linked)
            .expect("configure a LinkedCredential before cloning it")
            .get_mut()
    }

    /// Call `hook` for every token handed to the agent.
    pub fn on_token(mut self, hook: impl Fn(&TokenEvent<'_>) + Send + Sync + 'static) -> Self {
        self.configure().on_token = Some(Arc::new(hook));
        self
    }

    /// Call `hook` for every call of the agent's that failed, with the error
    /// in full.
    pub fn on_error(mut self, hook: impl Fn(&ErrorEvent<'_>) + Send + Sync + 'static) -> Self {
        self.configure().on_error = Some(Arc::new(hook));
        self
    }

    /// Measure the mint budget's minute on `clock` (a test's, say) rather
    /// than the real monotonic clock.
    pub fn budget_clock(mut self, clock: impl HostMonotonicClock + Sync + 'static) -> Self {
        self.configure().clock = Box::new(clock);
        self
    }

    /// The agent's policy.
    pub fn policy(&self) -> &AgentPolicy {
        &self.policy
    }

    /// The credential's broker URLs (see [`Sandbox::broker_urls`]).
    pub fn broker_urls(&self) -> &[String] {
        &self.broker_urls
    }

    /// How the credential looks host names up (its sandbox's
    /// [`crate::SandboxBuilder::resolver`]).
    pub(crate) fn resolver(&self) -> &crate::Resolver {
        &self.resolver
    }

    /// The credential's sandbox (its output, its denied requests), once no
    /// call is in progress; `None` for a shared instance
    /// ([`LinkedCredential::shared`]). Do not hold the guard across a call
    /// into the agent: the agent's token calls wait for it.
    pub async fn sandbox(&self) -> Option<MappedMutexGuard<'_, Sandbox>> {
        MutexGuard::try_map(self.linked.lock().await, |l| match &mut l.credential {
            Backend::Own(sandbox) => Some(&mut **sandbox),
            Backend::Shared(_) => None,
        })
        .ok()
    }

    /// How many credentials the agent has open.
    pub async fn open_credentials(&self) -> usize {
        self.linked.lock().await.handles.len()
    }

    /// A token for `scope` for the host to add to the agent's request:
    /// under the agent's policy, limits and mint budget, from a credential
    /// of the host's own for its audience (its cache). With `rejected` (a
    /// token the destination refused), a fresh one, unless the credential
    /// already holds another (a concurrent request refreshed it) or the
    /// budget is spent (then the cached token stays). Never handed to the
    /// agent; no [`TokenEvent`] (the injection has its own audit). The
    /// error is the agent-facing one (withheld), and goes to the error hook
    /// in full.
    pub(crate) async fn injection_token(
        &self,
        scope: &str,
        rejected: Option<&str>,
    ) -> Result<(crate::AccessTokenInfo, TokenSource), CredentialError> {
        let mut linked = self.linked.lock().await;
        let scopes = vec![scope.to_string()];
        let fresh = rejected.is_some_and(|rejected| {
            let audience = linked.audiences.lookup(scope).unwrap_or_default();
            let last = linked
                .injectors
                .get(audience)
                .and_then(|i| i.last.as_deref());
            last.is_none_or(|last| last == rejected)
        });
        let caller = Caller::Injector { fresh };
        match linked.token(caller, scopes, &no_request_options()).await {
            Ok((info, source, _)) => Ok((info, source)),
            Err(fault) => Err(match linked.answer(fault) {
                Ok(error) => error,
                // Only a handle the agent does not have is a trap; the
                // injection has none.
                Err(_) => CredentialError::BrokerUnreachable(
                    "the host's credential for this request is gone: try again".into(),
                ),
            }),
        }
    }
}

impl Linked {
    /// The audience every scope maps to, if the limits and the policy allow
    /// them all; else the error the agent gets, before anything is read or
    /// sent.
    fn audience_for(&self, scopes: &[String]) -> Result<String, CredentialError> {
        let limits = &self.policy.limits;
        if scopes.len() > limits.scopes_per_call {
            return Err(CredentialError::InvalidScopes(format!(
                "{} scopes in one call; the host allows an agent at most {} (one scope, such as \
                 https://vault.azure.net/.default, is what a token needs)",
                scopes.len(),
                limits.scopes_per_call
            )));
        }
        if let Some(long) = scopes.iter().find(|s| s.len() > limits.scope_bytes) {
            return Err(CredentialError::InvalidScopes(format!(
                "a scope of {} bytes; the host allows an agent at most {} (a scope is a resource \
                 URL such as https://vault.azure.net/.default)",
                long.len(),
                limits.scope_bytes
            )));
        }
        let mut audience = None;
        for scope in scopes {
            match self.policy.allowed_audience(&self.audiences, scope) {
                Some(a) => audience = audience.or(Some(a)),
                None => {
                    return Err(CredentialError::ScopeNotAllowed {
                        scope: scope.clone(),
                        known_resources: self.policy.known_resources(),
                    });
                }
            }
        }
        // No scope: let the credential say so, in its words.
        Ok(audience.unwrap_or_default())
    }

    /// Whether the agent may mint for `audience` now (refilling its bucket).
    fn may_mint(&mut self, audience: &str) -> bool {
        self.mints_left(audience) >= 1
    }

    /// How many requests the agent may send the broker for `audience` now
    /// (refilling its bucket).
    fn mints_left(&mut self, audience: &str) -> u64 {
        let per_minute = f64::from(self.policy.limits.mints_per_minute);
        let now = self.clock.now();
        // Looked up by `&str`: a key is allocated once per audience, not per call.
        if !self.budget.contains_key(audience) {
            let full = Bucket {
                tokens: per_minute,
                at: now,
            };
            self.budget.insert(audience.to_string(), full);
        }
        let bucket = self.budget.get_mut(audience).expect("inserted above");
        let elapsed = now.saturating_sub(bucket.at) as f64;
        bucket.tokens = (bucket.tokens + elapsed * per_minute / MINUTE_NS).min(per_minute);
        bucket.at = now;
        bucket.tokens.max(0.0).floor() as u64
    }

    /// Count `requests` sent to the broker against `audience`'s budget (a
    /// call the credential retried counts each attempt). Over a shared
    /// instance a call may have waited on more than was left: the bucket
    /// goes below empty, and the agent waits the longer.
    fn spend(&mut self, audience: &str, requests: u64) {
        if let Some(bucket) = self.budget.get_mut(audience) {
            bucket.tokens -= requests as f64;
        }
    }

    /// Request options the credential takes at most `scope_bytes` of:
    /// larger ones are refused here, before they reach its memory.
    fn check_request(&self, options: &crate::TokenRequestOptions) -> Result<(), CredentialError> {
        let most = self.policy.limits.scope_bytes;
        if options.claims.as_ref().is_some_and(|c| c.len() > most) {
            return Err(CredentialError::Unsupported(format!(
                "a claims challenge of more than {most} bytes was passed; the Studio credential \
                 broker mints tokens without claims and cannot meet any: ask Studio for an \
                 intent that grants the access directly"
            )));
        }
        if let Some(tenant) = options.tenant_id.as_ref().filter(|t| t.len() > most) {
            return Err(CredentialError::Configuration(format!(
                "a tenant-id of {} bytes; the host allows an agent at most {most} (a tenant id is \
                 a GUID or a domain, and the broker decides the tenant anyway)",
                tenant.len()
            )));
        }
        Ok(())
    }

    /// Tell the error hook, and hand the agent the error with the
    /// credential's whereabouts withheld.
    fn refuse(&self, audience: Option<&str>, error: CredentialError) -> CredentialError {
        agent_error(
            &self.policy.agent_id,
            audience,
            error.kind(),
            crate::trace::error_status(&error),
        );
        if let Some(hook) = &self.on_error {
            hook(&ErrorEvent {
                agent_id: &self.policy.agent_id,
                audience: audience.filter(|a| !a.is_empty()),
                error: &error.to_string(),
            });
        }
        self.credential.withheld().error(error)
    }

    /// A trap in the credential's store (it is replaced on the next call):
    /// the full reason to the error hook, a typed error to the agent.
    fn trapped(&self, audience: Option<&str>, trap: anyhow::Error) -> CredentialError {
        agent_error(&self.policy.agent_id, audience, "host", None);
        if let Some(hook) = &self.on_error {
            hook(&ErrorEvent {
                agent_id: &self.policy.agent_id,
                audience: audience.filter(|a| !a.is_empty()),
                error: &format!("{trap:#}"),
            });
        }
        CredentialError::BrokerUnreachable(
            "the credential stopped inside the host (it ran out of its memory or time limit, or \
             failed) and is restarted for the next call: try again; the host's audit log has the \
             details"
                .into(),
        )
    }

    /// The agent's credential `key` in the current instance, opened again
    /// if the instance was replaced since.
    async fn resource(&mut self, key: u32) -> Result<Opened, Fault> {
        if let Err(trap) = self.credential.renew().await {
            return Err(Fault::Trapped(None, trap));
        }
        let generation = self.credential.generation();
        let handle = self
            .handles
            .get(key as usize)
            .ok_or(Fault::UnknownHandle(key))?;
        if let Some((g, resource)) = handle.resource
            && g == generation
        {
            return Ok(resource);
        }
        let options = handle.options.clone();
        let opened = self.open_in_sandbox(&options, false).await?;
        if let Some(handle) = self.handles.get_mut(key as usize) {
            handle.resource = Some(opened);
        }
        Ok(opened.1)
    }

    /// The host's own credential for injecting `audience`'s tokens in the
    /// current instance: opened on first use, again after the instance was
    /// replaced, and anew (its cache dropped with the old one) when `fresh`.
    async fn injector_resource(&mut self, audience: &str, fresh: bool) -> Result<Opened, Fault> {
        if let Err(trap) = self.credential.renew().await {
            return Err(Fault::Trapped(None, trap));
        }
        let generation = self.credential.generation();
        let current = self
            .injectors
            .get(audience)
            .and_then(|i| i.handle.resource)
            .filter(|(g, _)| *g == generation);
        match (current, fresh) {
            (Some((_, resource)), false) => return Ok(resource),
            (Some((_, resource)), true) => {
                self.injectors.remove(audience);
                // A trap here replaces the instance; the open below renews it.
                let _ = self.credential.drop_credential(resource).await;
                if let Err(trap) = self.credential.renew().await {
                    return Err(Fault::Trapped(None, trap));
                }
            }
            (None, _) => {}
        }
        let options = default_options();
        let opened = self.open_in_sandbox(&options, fresh).await?;
        let handle = Handle {
            options,
            resource: Some(opened),
        };
        self.injectors
            .insert(audience.to_string(), Injector { handle, last: None });
        Ok(opened.1)
    }

    /// `open` in the credential's backend (`fresh`: a credential of its own
    /// even in a shared instance): the credential, and the instance
    /// generation it belongs to.
    async fn open_in_sandbox(
        &mut self,
        options: &crate::CredentialOptions,
        fresh: bool,
    ) -> Result<(u64, Opened), Fault> {
        match self.credential.open(options, fresh).await {
            Ok(Ok(resource)) => Ok((self.credential.generation_of(&resource), resource)),
            Ok(Err(e)) => Err(Fault::Refused(None, e)),
            Err(trap) => Err(Fault::Trapped(None, trap)),
        }
    }

    /// What the agent gets for `fault`: a typed error (reported in full to
    /// the error hook, handed over withheld), or a trap for a handle it does
    /// not have.
    fn answer(&self, fault: Fault) -> wasmtime::Result<CredentialError> {
        match fault {
            Fault::UnknownHandle(key) => {
                Err(wasmtime::format_err!("unknown credential handle {key}"))
            }
            Fault::Refused(audience, e) => Ok(self.refuse(audience.as_deref(), e)),
            Fault::Trapped(audience, trap) => Ok(self.trapped(audience.as_deref(), trap)),
        }
    }

    /// Forward one token call of the agent's: its credential `key`, or the
    /// free functions (`None`). The token goes to the agent (and an event
    /// to the audit hook), unless the policy keeps tokens from it.
    async fn forward(
        &mut self,
        key: Option<u32>,
        scopes: Vec<String>,
        options: &crate::TokenRequestOptions,
    ) -> wasmtime::Result<Result<crate::AccessTokenInfo, CredentialError>> {
        let span = agent_call(&self.policy.agent_id, key.is_some());
        tracing::Instrument::instrument(self.forward_traced(key, scopes, options), span).await
    }

    /// [`Linked::forward`], in its span.
    async fn forward_traced(
        &mut self,
        key: Option<u32>,
        scopes: Vec<String>,
        options: &crate::TokenRequestOptions,
    ) -> wasmtime::Result<Result<crate::AccessTokenInfo, CredentialError>> {
        if !self.policy.reveal_tokens {
            let refusal = CredentialError::Unsupported(format!(
                "agent {} may not read tokens: the host adds them to the agent's requests to \
                 the Azure services it may use; send the request without one",
                self.policy.agent_id
            ));
            return Ok(Err(self.answer(Fault::Refused(None, refusal))?));
        }
        let caller = key.map_or(Caller::Free, Caller::Handle);
        let (info, source, audience) = match self.token(caller, scopes, options).await {
            Ok(answer) => answer,
            Err(fault) => return Ok(Err(self.answer(fault)?)),
        };
        agent_token(&self.policy.agent_id, &audience, info.expires_on, source);
        if let Some(hook) = &self.on_token {
            hook(&TokenEvent {
                agent_id: &self.policy.agent_id,
                audience: &audience,
                expires_on: info.expires_on,
                source,
            });
        }
        Ok(Ok(info))
    }

    /// A token for `caller`, within the agent's policy, limits and budget:
    /// the token, where it came from, and its audience.
    async fn token(
        &mut self,
        caller: Caller,
        scopes: Vec<String>,
        options: &crate::TokenRequestOptions,
    ) -> Result<(crate::AccessTokenInfo, TokenSource, String), Fault> {
        let audience = self
            .audience_for(&scopes)
            .and_then(|a| self.check_request(options).map(|()| a))
            .map_err(|e| Fault::Refused(None, e))?;
        if let Caller::Injector { fresh: true } = caller
            && !self.may_mint(&audience)
        {
            // Over budget: keep the cached token rather than drop it.
            return Err(self.over_budget(audience));
        }
        let resource = match caller {
            Caller::Handle(key) => Some(self.resource(key).await.map_err(|f| f.about(&audience))?),
            Caller::Free => None,
            Caller::Injector { fresh } => Some(
                self.injector_resource(&audience, fresh)
                    .await
                    .map_err(|f| f.about(&audience))?,
            ),
        };
        if let Backend::Shared(shared) = &self.credential {
            return self
                .shared_token(shared.clone(), caller, resource, scopes, options, audience)
                .await;
        }
        // Each request to the broker spends the budget as it goes: the one
        // past it is held back (the credential then answers from its cache,
        // or fails, and the agent is told it is over budget).
        let left = self.mints_left(&audience);
        let traffic = self.credential.traffic();
        traffic.allow(Some(left));
        let (sent, held_back) = (traffic.sent(), traffic.held_back());
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let result = self
            .credential
            .get_token_info(resource, &scopes, options)
            .await;
        // The sandbox keeps its traffic across the instances it replaces.
        let traffic = self.credential.traffic();
        let requests = traffic.sent() - sent;
        let reached_broker = requests > 0;
        let was_held = traffic.held_back() > held_back;
        traffic.allow(None);
        self.spend(&audience, requests);
        let result = result.map_err(|trap| Fault::Trapped(Some(audience.clone()), trap))?;
        let info = match result {
            Ok(info) => info,
            Err(_) if was_held => return Err(self.over_budget(audience)),
            Err(e) => return Err(Fault::Refused(Some(audience), e)),
        };
        let source = match reached_broker {
            true => TokenSource::Minted,
            false => TokenSource::Cached,
        };
        if let Caller::Injector { .. } = caller
            && let Some(injector) = self.injectors.get_mut(&audience)
        {
            injector.last = Some(info.token.clone());
        }
        Ok((info, source, audience))
    }

    /// [`Linked::token`] through a shared instance: an agent over its budget
    /// gets the last token it was handed while that is fresh, else a 429;
    /// a call is charged for every request to the broker for its audience
    /// made while it was in the instance, unless its credential's cache
    /// answered it ([`shared_charge`]), and the first call to claim a
    /// request is told it minted.
    async fn shared_token(
        &mut self,
        shared: SharedCredential,
        caller: Caller,
        resource: Option<Opened>,
        scopes: Vec<String>,
        options: &crate::TokenRequestOptions,
        audience: String,
    ) -> Result<(crate::AccessTokenInfo, TokenSource, String), Fault> {
        if !self.may_mint(&audience) {
            let now = shared.now_unix();
            let fresh = self.last.get(&audience).filter(|info| {
                now < info
                    .expires_on
                    .saturating_sub(vd_cred_broker::cache::EXPIRY_MARGIN_SECS)
                    && info.refresh_on.is_none_or(|r| now < r)
            });
            return match fresh {
                Some(info) => Ok((info.clone(), TokenSource::Cached, audience)),
                None => Err(self.over_budget(audience)),
            };
        }
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        // A call on a credential with a cache that returns what that
        // credential last returned was served from its cache. Any other
        // call is charged for the requests the broker was sent for this
        // audience while it was in the instance (by this call, or by the
        // calls whose mint it shared), whatever came back: not by whether
        // the token is one seen before (a broker may hand out the same
        // token twice).
        let handle = match resource {
            Some(Opened::Shared(handle)) => Some(handle),
            _ => None,
        };
        let cached_before = match (caller, handle) {
            (Caller::Handle(key), Some(handle)) => self
                .handles
                .get(key as usize)
                .filter(|h| !h.options.disable_cache)
                .and(shared.last_returned(&handle, &audience)),
            (Caller::Injector { .. }, Some(handle)) => shared.last_returned(&handle, &audience),
            _ => None,
        };
        let before = shared.traffic().sent_for(&audience);
        let result = self
            .credential
            .get_token_info(resource, &scopes, options)
            .await;
        let after = shared.traffic().sent_for(&audience);
        let returned = match &result {
            Ok(Ok(info)) => Some(Returned::of(info)),
            _ => None,
        };
        let charged = shared_charge(cached_before, returned, after - before);
        self.spend(&audience, charged);
        let result = result.map_err(|trap| Fault::Trapped(Some(audience.clone()), trap))?;
        let info = match result {
            Ok(info) => info,
            Err(e) => return Err(Fault::Refused(Some(audience), e)),
        };
        if let Some(handle) = handle {
            shared.returned(&handle, &audience, Returned::of(&info));
        }
        let source = match charged > 0 && shared.claim(&audience, before, after) > 0 {
            true => TokenSource::Minted,
            false => TokenSource::Cached,
        };
        if let Caller::Injector { .. } = caller
            && let Some(injector) = self.injectors.get_mut(&audience)
        {
            injector.last = Some(info.token.clone());
        }
        self.last.insert(audience.clone(), info.clone());
        Ok((info, source, audience))
    }

    /// The refusal of a call over the agent's mint budget for `audience`.
    fn over_budget(&self, audience: String) -> Fault {
        let detail = format!(
            "agent {} is over its mint budget for {audience} ({} per minute); a credential kept \
             open serves its cached token meanwhile",
            self.policy.agent_id, self.policy.limits.mints_per_minute
        );
        Fault::Refused(
            Some(audience),
            CredentialError::BrokerFailed {
                status: 429,
                detail,
            },
        )
    }

    /// `open` for the agent: its options checked, a credential opened in the
    /// sandbox, a handle from the slab.
    async fn open_checked(&mut self, options: wit::CredentialOptions) -> Result<u32, Fault> {
        let limits = self.policy.limits;
        if self.handles.len() >= limits.credentials {
            return Err(Fault::Refused(
                None,
                CredentialError::Configuration(format!(
                    "agent {} has {} credentials open, as many as the host allows: reuse one, or \
                     drop one before opening another",
                    self.policy.agent_id,
                    self.handles.len()
                )),
            ));
        }
        let options = agent_options(options, &limits).map_err(|e| Fault::Refused(None, e))?;
        let opened = self.open_in_sandbox(&options, false).await?;
        let key = self.handles.insert(Handle {
            options,
            resource: Some(opened),
        });
        Ok(u32::try_from(key).expect("at most `credentials` handles"))
    }
}

/// What a call over a shared instance is charged: nothing when its
/// credential has a cache and returned what it returned last
/// (`cached_before`: the cache answered, whatever other agents' mints the
/// call overlapped); else the `window`, the requests the broker was sent
/// for its audience while it was in the instance.
fn shared_charge(cached_before: Option<Returned>, returned: Option<Returned>, window: u64) -> u64 {
    match (cached_before, returned) {
        (Some(before), Some(now)) if before == now => 0,
        _ => window,
    }
}

/// Why a forwarded call did not return a token.
enum Fault {
    /// A handle the agent does not have (wasmtime checks ownership, so a
    /// bug of the host's): a trap.
    UnknownHandle(u32),
    /// A typed error for the agent (the audience, when known).
    Refused(Option<String>, CredentialError),
    /// The credential's store trapped; it is replaced on the next call.
    Trapped(Option<String>, anyhow::Error),
}

impl Fault {
    /// The fault, about `audience`.
    fn about(self, audience: &str) -> Fault {
        match self {
            Fault::Refused(_, e) => Fault::Refused(Some(audience.to_string()), e),
            Fault::Trapped(_, e) => Fault::Trapped(Some(audience.to_string()), e),
            other => other,
        }
    }
}

/// The request options an agent passed, as the credential's.
fn request_options(o: wit::TokenRequestOptions) -> crate::TokenRequestOptions {
    crate::TokenRequestOptions {
        claims: o.claims,
        tenant_id: o.tenant_id,
        enable_cae: o.enable_cae,
    }
}

/// The host's credential options with what an agent may set (`timeout-ms`,
/// `disable-cache`); anything else the agent set is refused.
fn agent_options(
    o: wit::CredentialOptions,
    limits: &AgentLimits,
) -> Result<crate::CredentialOptions, CredentialError> {
    let mut refused = Vec::new();
    for (set, name) in [
        (o.broker_url.is_some(), "broker-url"),
        (o.credential_file.is_some(), "credential-file"),
        (!o.audience_map.is_empty(), "audience-map"),
        (o.allow_insecure_http, "allow-insecure-http"),
        (o.lane.is_some(), "lane"),
        (o.configuration_revision.is_some(), "configuration-revision"),
        (o.runtime_access_url.is_some(), "runtime-access-url"),
    ] {
        if set {
            refused.push(name);
        }
    }
    if !refused.is_empty() {
        return Err(CredentialError::Configuration(format!(
            "{} set by the agent: the host decides the credential's settings; an agent may set \
             only timeout-ms and disable-cache",
            refused.join(", ")
        )));
    }
    if let Some(ms) = o.timeout_ms.filter(|&ms| ms > limits.max_timeout_ms) {
        return Err(CredentialError::Configuration(format!(
            "timeout-ms {ms} is over the {} the host allows an agent: set it lower, or leave it \
             unset for the default",
            limits.max_timeout_ms
        )));
    }
    let mut options = default_options();
    options.timeout_ms = o.timeout_ms;
    options.disable_cache = o.disable_cache;
    Ok(options)
}

fn to_token(info: crate::AccessTokenInfo) -> wit::AccessToken {
    wit::AccessToken {
        token: info.token,
        expires_on: info.expires_on,
    }
}

fn to_token_info(info: crate::AccessTokenInfo) -> wit::AccessTokenInfo {
    wit::AccessTokenInfo {
        token: info.token,
        expires_on: info.expires_on,
        token_type: info.token_type,
        refresh_on: info.refresh_on,
    }
}

fn no_request_options() -> crate::TokenRequestOptions {
    crate::TokenRequestOptions {
        claims: None,
        tenant_id: None,
        enable_cae: false,
    }
}

type Answer<T> = wasmtime::Result<Result<T, wit::CredentialError>>;

impl LinkedCredential {
    /// Run `call` on the shared state as a task of its own, and wait for
    /// it: should the agent's call be dropped (its runtime gave up on the
    /// agent, say), the credential's call still ends as it would have (a
    /// mint finishes, is cached, charged and audited) rather than stopping
    /// inside the credential's store.
    async fn detached<T, F>(
        &self,
        call: impl FnOnce(OwnedMutexGuard<Linked>) -> F + Send + 'static,
    ) -> wasmtime::Result<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let linked = self.linked.clone();
        tokio::spawn(async move { call(linked.lock_owned().await).await })
            .await
            .map_err(|e| wasmtime::format_err!("the host's task for a credential call failed: {e}"))
    }

    /// Forward a token call of the agent's ([`Linked::forward`]), detached.
    async fn forward_detached(
        &self,
        key: Option<u32>,
        scopes: Vec<String>,
        options: crate::TokenRequestOptions,
    ) -> wasmtime::Result<Result<crate::AccessTokenInfo, CredentialError>> {
        self.detached(move |mut linked| async move { linked.forward(key, scopes, &options).await })
            .await?
    }
}

impl wit::HostCredential for LinkedCredential {
    async fn open(&mut self, options: wit::CredentialOptions) -> Answer<Resource<LinkedHandle>> {
        let opened: Answer<u32> = self
            .detached(move |mut linked| async move {
                match linked.open_checked(options).await {
                    Ok(key) => Ok(Ok(key)),
                    Err(fault) => Ok(Err(linked.answer(fault)?.into())),
                }
            })
            .await?;
        Ok(opened?.map(Resource::new_own))
    }

    async fn get_token(
        &mut self,
        handle: Resource<LinkedHandle>,
        scopes: Vec<String>,
    ) -> Answer<wit::AccessToken> {
        let result = self
            .forward_detached(Some(handle.rep()), scopes, no_request_options())
            .await?;
        Ok(result.map(to_token).map_err(Into::into))
    }

    async fn get_token_info(
        &mut self,
        handle: Resource<LinkedHandle>,
        scopes: Vec<String>,
        options: wit::TokenRequestOptions,
    ) -> Answer<wit::AccessTokenInfo> {
        let result = self
            .forward_detached(Some(handle.rep()), scopes, request_options(options))
            .await?;
        Ok(result.map(to_token_info).map_err(Into::into))
    }

    async fn drop(&mut self, handle: Resource<LinkedHandle>) -> wasmtime::Result<()> {
        let key = handle.rep() as usize;
        self.detached(move |mut linked| async move {
            // A credential of an instance that trapped is gone with it.
            let renewed = linked.credential.renew().await.is_ok();
            if let Some(handle) = linked.handles.try_remove(key)
                && let Some((generation, resource)) = handle.resource
                && renewed
                && generation == linked.credential.generation()
            {
                // A trap here replaces the instance; the agent's drop succeeds.
                let _ = linked.credential.drop_credential(resource).await;
            }
        })
        .await
    }
}

impl wit::Host for LinkedCredential {
    async fn get_token(&mut self, scopes: Vec<String>) -> Answer<wit::AccessToken> {
        let result = self
            .forward_detached(None, scopes, no_request_options())
            .await?;
        Ok(result.map(to_token).map_err(Into::into))
    }

    async fn get_token_info(
        &mut self,
        scopes: Vec<String>,
        options: wit::TokenRequestOptions,
    ) -> Answer<wit::AccessTokenInfo> {
        let result = self
            .forward_detached(None, scopes, request_options(options))
            .await?;
        Ok(result.map(to_token_info).map_err(Into::into))
    }

    /// Rendered by the core the component is built from (the same `Display`),
    /// without a call into the credential's store.
    async fn describe_error(&mut self, error: wit::CredentialError) -> wasmtime::Result<String> {
        Ok(CredentialError::from(error).to_string())
    }
}

/// Add `vibedata:cred-broker/token-credential` to an agent's `linker`,
/// implemented by the [`LinkedCredential`] that `get` finds in the agent's
/// store data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut LinkedCredential,
) -> Result<()> {
    Ok(wit::add_to_linker::<T, HasSelf<LinkedCredential>>(
        linker, get,
    )?)
}

/// The span of one token call of an agent's on its linked credential
/// (`credential`: on a credential it opened, else the free functions).
fn agent_call(agent_id: &str, credential: bool) -> tracing::Span {
    tracing::info_span!(target: crate::trace::TARGET, "vd_cred.agent_call", agent_id, credential)
}

/// A token handed to an agent (what [`crate::linked::TokenEvent`] says):
/// INFO when minted, DEBUG when served from the cache.
fn agent_token(agent_id: &str, audience: &str, expires_on: u64, source: TokenSource) {
    match source {
        TokenSource::Minted => {
            let source = "minted";
            tracing::info!(target: crate::trace::TARGET, agent_id, audience, expires_on, source, "token handed to agent");
        }
        TokenSource::Cached => {
            let source = "cached";
            tracing::debug!(target: crate::trace::TARGET, agent_id, audience, expires_on, source, "token handed to agent");
        }
    }
}

/// A call of an agent's that failed (what [`crate::linked::ErrorEvent`]
/// says, but the error's kind rather than its message): WARN.
fn agent_error(
    agent_id: &str,
    audience: Option<&str>,
    error_kind: &'static str,
    status: Option<u16>,
) {
    let audience = audience.unwrap_or("");
    tracing::warn!(target: crate::trace::TARGET, agent_id, audience, error_kind, status, "agent call failed: {error_kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn returned(token: &str, expires_on: u64) -> Returned {
        Returned::of(&crate::AccessTokenInfo {
            token: token.into(),
            expires_on,
            token_type: "Bearer".into(),
            refresh_on: None,
        })
    }

    #[test]
    fn a_shared_call_is_charged_unless_its_cache_answered() {
        let cached = returned("t", 1_000);
        // The cache answered: other agents' mints meanwhile are not its.
        assert_eq!(shared_charge(Some(cached), Some(cached), 3), 0);
        // A mint: a new token, or the same token expiring later (a broker
        // that hands out its cached token).
        assert_eq!(
            shared_charge(Some(cached), Some(returned("u", 1_000)), 1),
            1
        );
        assert_eq!(
            shared_charge(Some(cached), Some(returned("t", 4_600)), 2),
            2
        );
        // No cache (disable-cache, a free call, a first call), or a failure.
        assert_eq!(shared_charge(None, Some(cached), 1), 1);
        assert_eq!(shared_charge(Some(cached), None, 4), 4);
        assert_eq!(shared_charge(None, None, 0), 0);
    }
}
