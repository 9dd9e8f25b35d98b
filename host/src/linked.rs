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
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use anyhow::Result;
use vd_cred_broker::{AudienceMap, CredentialError, DEFAULT_AUDIENCES, normalize_scope};
use wasmtime::component::{HasSelf, Linker, Resource, ResourceAny};

use crate::sandbox::{Sandbox, default_options};

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

/// Which tokens an agent may have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPolicy {
    agent_id: String,
    /// Resources (normalised) and audiences the agent may ask for.
    allowed: Vec<String>,
}

impl AgentPolicy {
    /// An agent called `agent_id` (shown in [`TokenEvent`]s), allowed the six
    /// default resources.
    pub fn new(agent_id: impl Into<String>) -> Self {
        AgentPolicy {
            agent_id: agent_id.into(),
            allowed: DEFAULT_AUDIENCES
                .iter()
                .map(|(r, _)| r.to_string())
                .collect(),
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

    /// The agent's id.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The audience `scope` maps to, if the agent may ask for it.
    fn check(&self, map: &AudienceMap, scope: &str) -> Option<String> {
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
    /// The broker (or helper) minted it for this call.
    Minted,
    /// The credential's cache served a token handed out before.
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

type AuditHook = Arc<dyn Fn(&TokenEvent<'_>) + Send + Sync>;

/// One opened `credential` of the agent's: the resource in the credential's
/// store, and a keyed digest of the last token handed out per audience (to
/// tell a cached token from a minted one without keeping the token).
struct Opened {
    credential: ResourceAny,
    last: HashMap<String, u64>,
}

/// The credential an agent's import is linked to: a credential instance in
/// its own [`Sandbox`], the agent's [`AgentPolicy`], and an optional audit
/// hook. Keep one in each agent's store data; many agents share one compiled
/// credential through [`crate::Host`].
pub struct LinkedCredential {
    sandbox: Sandbox,
    policy: AgentPolicy,
    audiences: AudienceMap,
    opened: HashMap<u32, Opened>,
    next_rep: u32,
    digest: RandomState,
    audit: Option<AuditHook>,
}

impl LinkedCredential {
    /// Forward an agent's calls to the credential in `sandbox`, under `policy`.
    pub fn new(sandbox: Sandbox, policy: AgentPolicy) -> Self {
        LinkedCredential {
            sandbox,
            policy,
            audiences: AudienceMap::default(),
            opened: HashMap::new(),
            next_rep: 0,
            digest: RandomState::new(),
            audit: None,
        }
    }

    /// Call `hook` for every token handed to the agent.
    pub fn on_token(mut self, hook: impl Fn(&TokenEvent<'_>) + Send + Sync + 'static) -> Self {
        self.audit = Some(Arc::new(hook));
        self
    }

    /// The agent's policy.
    pub fn policy(&self) -> &AgentPolicy {
        &self.policy
    }

    /// The credential's sandbox (its output, its denied requests).
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The audience every scope maps to, if the policy allows them all; else
    /// the error the agent gets, before anything is read or sent.
    fn check(&self, scopes: &[String]) -> Result<String, CredentialError> {
        let mut audience = None;
        for scope in scopes {
            match self.policy.check(&self.audiences, scope) {
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

    /// Report a token handed out for `audience`; `rep` is the agent's
    /// credential (`None`: the free functions, which never cache).
    fn audit(&mut self, rep: Option<u32>, audience: &str, token: &str, expires_on: u64) {
        let digest = self.digest.hash_one(token);
        let source = match rep.and_then(|rep| self.opened.get_mut(&rep)) {
            Some(opened) => match opened.last.insert(audience.to_string(), digest) {
                Some(previous) if previous == digest => TokenSource::Cached,
                _ => TokenSource::Minted,
            },
            None => TokenSource::Minted,
        };
        if let Some(hook) = &self.audit {
            hook(&TokenEvent {
                agent_id: &self.policy.agent_id,
                audience,
                expires_on,
                source,
            });
        }
    }

    fn opened(&self, handle: &Resource<LinkedHandle>) -> wasmtime::Result<ResourceAny> {
        self.opened
            .get(&handle.rep())
            .map(|o| o.credential)
            .ok_or_else(|| wasmtime::format_err!("unknown credential handle {}", handle.rep()))
    }

    /// `credential`: the agent's handle and the credential it stands for;
    /// `None` for the free functions.
    async fn token_info(
        &mut self,
        credential: Option<(u32, ResourceAny)>,
        scopes: Vec<String>,
        options: &crate::TokenRequestOptions,
    ) -> wasmtime::Result<Result<crate::AccessTokenInfo, CredentialError>> {
        let audience = match self.check(&scopes) {
            Ok(audience) => audience,
            Err(e) => return Ok(Err(e)),
        };
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let result = match credential {
            Some((_, credential)) => self
                .sandbox
                .credential_get_token_info(credential, &scopes, options)
                .await
                .map_err(trap)?,
            None => self
                .sandbox
                .get_token_info(&scopes, options)
                .await
                .map_err(trap)?,
        };
        if let Ok(info) = &result {
            let rep = credential.map(|(rep, _)| rep);
            self.audit(rep, &audience, &info.token, info.expires_on);
        }
        Ok(result)
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
fn agent_options(o: wit::CredentialOptions) -> Result<crate::CredentialOptions, CredentialError> {
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
    let mut options = default_options();
    options.timeout_ms = o.timeout_ms;
    options.disable_cache = o.disable_cache;
    Ok(options)
}

fn token(info: crate::AccessTokenInfo) -> wit::AccessToken {
    wit::AccessToken {
        token: info.token,
        expires_on: info.expires_on,
    }
}

fn token_info(info: crate::AccessTokenInfo) -> wit::AccessTokenInfo {
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

impl wit::HostCredential for LinkedCredential {
    async fn open(&mut self, options: wit::CredentialOptions) -> Answer<Resource<LinkedHandle>> {
        let options = match agent_options(options) {
            Ok(options) => options,
            Err(e) => return Ok(Err(e.into())),
        };
        let credential = match self.sandbox.open(&options).await.map_err(trap)? {
            Ok(credential) => credential,
            Err(e) => return Ok(Err(e.into())),
        };
        let rep = self.next_rep;
        self.next_rep += 1;
        self.opened.insert(
            rep,
            Opened {
                credential,
                last: HashMap::new(),
            },
        );
        Ok(Ok(Resource::new_own(rep)))
    }

    async fn get_token(
        &mut self,
        handle: Resource<LinkedHandle>,
        scopes: Vec<String>,
    ) -> Answer<wit::AccessToken> {
        let credential = self.opened(&handle)?;
        let result = self
            .token_info(
                Some((handle.rep(), credential)),
                scopes,
                &no_request_options(),
            )
            .await?;
        Ok(result.map(token).map_err(Into::into))
    }

    async fn get_token_info(
        &mut self,
        handle: Resource<LinkedHandle>,
        scopes: Vec<String>,
        options: wit::TokenRequestOptions,
    ) -> Answer<wit::AccessTokenInfo> {
        let credential = self.opened(&handle)?;
        let result = self
            .token_info(
                Some((handle.rep(), credential)),
                scopes,
                &request_options(options),
            )
            .await?;
        Ok(result.map(token_info).map_err(Into::into))
    }

    async fn drop(&mut self, handle: Resource<LinkedHandle>) -> wasmtime::Result<()> {
        if let Some(opened) = self.opened.remove(&handle.rep()) {
            self.sandbox
                .drop_credential(opened.credential)
                .await
                .map_err(trap)?;
        }
        Ok(())
    }
}

impl wit::Host for LinkedCredential {
    async fn get_token(&mut self, scopes: Vec<String>) -> Answer<wit::AccessToken> {
        let result = self.token_info(None, scopes, &no_request_options()).await?;
        Ok(result.map(token).map_err(Into::into))
    }

    async fn get_token_info(
        &mut self,
        scopes: Vec<String>,
        options: wit::TokenRequestOptions,
    ) -> Answer<wit::AccessTokenInfo> {
        let result = self
            .token_info(None, scopes, &request_options(options))
            .await?;
        Ok(result.map(token_info).map_err(Into::into))
    }

    async fn describe_error(&mut self, error: wit::CredentialError) -> wasmtime::Result<String> {
        self.sandbox
            .describe_error(&error.into())
            .await
            .map_err(trap)
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

/// A failure of the credential's own store (a trap in the credential), as a
/// trap of the agent's call.
fn trap(error: anyhow::Error) -> wasmtime::Error {
    wasmtime::Error::from_anyhow(error)
}
