//! Tokens an agent never holds: the host adds the Azure token to the
//! agent's own requests ([`Injection`]).
//!
//! A runtime author maps request destinations to audiences
//! ([`InjectRule`]: `*.vault.azure.net=vault`, `management.azure.com=arm`,
//! or [`DEFAULT_RULES`]) and gives the rules to the agent's egress
//! ([`crate::egress::AgentEgress::inject`]). For a request from the agent
//! whose destination matches a rule (https only; the host exact or one
//! label under a `*.` wildcard; port 443 unless the rule names one):
//!
//! - an `Authorization` or `Proxy-Authorization` header the agent set is
//!   **removed** (not refused: an SDK inside the agent may attach a
//!   placeholder of its own), and the audit event says so;
//! - the host gets a token for the rule's audience from the agent's
//!   [`LinkedCredential`] (its cache, its policy's allowlist, its limits and
//!   mint budget) and sends the request with `Authorization: Bearer <token>`,
//!   the header marked sensitive; the agent needs no token and no
//!   `token-credential` import;
//! - a `401` whose `WWW-Authenticate: Bearer` challenge names no claims and
//!   no other resource (Key Vault's `resource="https://vault.azure.net"`,
//!   Storage's `resource_id=https://storage.azure.com`) to a cached token
//!   is answered once: the host drops that audience's cached token (it may
//!   be revoked), gets a fresh one and sends the request again, as
//!   azure-core's challenge policy does. A
//!   claims challenge, which the broker cannot meet, and a challenge for
//!   another resource reach the agent as the 401 they are; the audit says
//!   which;
//! - the answer goes to the agent as it came: the host follows no redirect,
//!   so a 3xx reaches the agent, and its request to the new location is a new
//!   request that gets a token only if that destination matches a rule.
//!
//! Plain http is never injected. A rule opens nothing: the agent reaches a
//! destination only if its egress allowlist lets it (allow the vaults and
//! accounts it needs, `https://myvault.vault.azure.net`, rather than every
//! `*.vault.azure.net` in the world, each of them a channel out). Only GET,
//! HEAD, POST, PUT, PATCH, DELETE and OPTIONS get a token; another method to
//! a rule's destination is refused (`TRACE` would echo it). A challenge to
//! a token minted for that very request is not answered (a second would be
//! refused too), and a challenge meets the mint budget like any mint: an
//! endpoint that refuses every token costs at most the budget. The host
//! sends a token with the first request: it knows the audience from the
//! rule, so Key Vault's unauthenticated discovery request is not needed.
//! Each request is an audit event ([`InjectEvent`]: agent, audience,
//! destination, minted or cached, how many mints, what happened), whatever
//! became of it, never the token.
//!
//! An agent cannot dodge the audit or the budget by giving up on its
//! request: the host's part (getting the token, sending, answering a
//! challenge) runs as a task of its own, which holds the request's slot
//! among the agent's requests in flight and finishes whatever the agent
//! does with its future. A token being minted when the agent gives up is
//! minted, cached, charged and audited; the request is then not sent
//! ([`InjectOutcome::Abandoned`]), and a send under way is dropped. With
//! [`crate::linked::AgentPolicy::reveal_tokens`] off, no call returns the
//! agent a token.
//!
//! What a token lets the agent do is still the token's: with a storage token
//! it can ask for a user delegation key and sign SAS URLs, with an ARM token
//! list an account's keys, and those are credentials it can keep. Grant
//! each agent the audiences (and, in Studio, the intents) its task needs.

use std::sync::Arc;

use anyhow::{Result, bail};
use hyper::header::{AUTHORIZATION, HeaderValue, PROXY_AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{HeaderMap, Method, StatusCode};
use tokio::sync::oneshot;
use vd_cred_broker::{AudienceMap, CredentialError, DEFAULT_AUDIENCES, normalize_scope};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::agent::linked::{LinkedCredential, TokenSource};
use crate::outbound::{Connections, Sent};
use crate::outbound::{Origin, normal_host};
use crate::outbound::{Slot, holding};

/// The rules [`Injection::defaults`] starts from: every Azure data-plane
/// and management host the original's audiences serve over HTTP (Azure SQL
/// speaks TDS, not HTTP, and has none).
pub const DEFAULT_RULES: [&str; 8] = [
    "*.vault.azure.net=vault",
    "*.blob.core.windows.net=storage",
    "*.dfs.core.windows.net=storage",
    "onelake.dfs.fabric.microsoft.com=storage",
    "onelake.blob.fabric.microsoft.com=storage",
    "api.fabric.microsoft.com=fabric_api",
    "api.powerbi.com=fabric_cli",
    "management.azure.com=arm",
];

/// Whether the host adds tokens to a request with `method`: GET, HEAD,
/// POST, PUT, PATCH, DELETE and OPTIONS. Others to a rule's destination are
/// refused (`TRACE` would echo the token back to the agent).
pub fn injects_method(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ]
    .contains(method)
}

/// Which hosts a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Destination {
    /// This host only.
    Exact(String),
    /// One label, then `.` and this (`*.vault.azure.net`: `x.vault.azure.net`,
    /// not `vault.azure.net`, not `a.b.vault.azure.net`).
    OneLabelUnder(String),
}

/// One rule: requests to `host[:port]` over https get a token for an
/// audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectRule {
    destination: Destination,
    port: u16,
    audience: String,
    scope: String,
}

impl InjectRule {
    /// Parse `host[:port]=audience`. The host is exact (`api.powerbi.com`)
    /// or a one-label wildcard (`*.vault.azure.net`); the port defaults to
    /// 443. The audience is one of the credential's names (`vault`,
    /// `storage`, `fabric_api`, `fabric_cli`, `arm`, `sql`) or its resource
    /// (`https://vault.azure.net`, with or without `/.default`).
    ///
    /// ```
    /// use vd_cred_host::inject::InjectRule;
    /// let rule = InjectRule::parse("*.vault.azure.net=vault").unwrap();
    /// assert_eq!(rule.audience(), "vault");
    /// assert!(InjectRule::parse("*=vault").is_err());
    /// assert!(InjectRule::parse("vault.azure.net=https://example.com").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<InjectRule> {
        let Some((destination, audience)) = text.trim().split_once('=') else {
            bail!(
                "injection rule {text:?} is not host[:port]=audience (e.g. *.vault.azure.net=vault)"
            );
        };
        let destination = destination.trim();
        let (host, port) = match destination.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) if port > 0 => (host, port),
                _ => bail!("injection rule {text:?}: {port:?} is not a port"),
            },
            None => (destination, 443),
        };
        let destination = match host.strip_prefix("*.") {
            Some(rest) => Destination::OneLabelUnder(
                normal_host(rest)
                    .filter(|r| r.split('.').count() >= 3 && !r.contains('*'))
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "injection rule {text:?}: a wildcard needs a domain of three labels \
                             or more under it (*.vault.azure.net), never a public suffix such as \
                             *.co.uk"
                        )
                    })?,
            ),
            None => Destination::Exact(
                normal_host(host)
                    .filter(|h| !h.contains('*') && !h.is_empty())
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "injection rule {text:?}: {host:?} is not a host name (use an exact \
                             name or *.domain)"
                        )
                    })?,
            ),
        };
        let wanted = normalize_scope(audience.trim());
        let Some((resource, audience)) = DEFAULT_AUDIENCES
            .iter()
            .find(|(r, a)| *r == wanted || *a == wanted)
        else {
            bail!(
                "injection rule {text:?}: {wanted:?} is not an audience the credential knows ({})",
                DEFAULT_AUDIENCES
                    .iter()
                    .map(|(_, a)| *a)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        Ok(InjectRule {
            destination,
            port,
            audience: audience.to_string(),
            scope: format!("{resource}/.default"),
        })
    }

    /// The audience its tokens are for (`vault`).
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Whether a request to `origin` gets a token by this rule: https, this
    /// port, the host exact or one label under the wildcard.
    pub fn matches(&self, origin: &Origin) -> bool {
        if origin.scheme != "https" || origin.port != self.port {
            return false;
        }
        match &self.destination {
            Destination::Exact(host) => origin.host == *host,
            Destination::OneLabelUnder(domain) => origin
                .host
                .strip_suffix(domain.as_str())
                .and_then(|label| label.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

/// What became of one request the host added a token to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectOutcome {
    /// Sent with the token; the answer went to the agent.
    Sent,
    /// The destination answered 401 with a Bearer challenge; the host got a
    /// fresh token and sent the request once more.
    ChallengeAnswered,
    /// A claims challenge (the broker cannot meet one): the 401 went to the
    /// agent.
    ClaimsChallenge,
    /// A challenge naming a resource other than the rule's audience: the
    /// 401 went to the agent.
    OtherResource,
    /// A Bearer challenge the fresh token could not be had for (the mint
    /// budget is spent, or the broker failed; the error went to the error
    /// hook): the 401 went to the agent.
    ChallengeUnanswered,
    /// A challenge to a token minted for this very request: not answered
    /// (another would be refused too), the 401 went to the agent.
    FreshTokenRefused,
    /// No token could be had (the agent's policy, its budget, the broker):
    /// the request was not sent and the agent got an error.
    NoToken,
    /// A token was had, and sending failed (the connection, TLS, a timeout,
    /// or the egress policy's connect-time check): the agent got the error.
    SendFailed,
    /// The agent gave up on the request (dropped its future) before the
    /// answer came: the token being had was had (and is counted in
    /// `minted`), and the request was not sent, or its send was dropped.
    Abandoned,
}

/// One request the host added a token to (or tried to), for an audit log.
/// It never holds the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectEvent<'a> {
    /// The agent, as its policy names it.
    pub agent_id: &'a str,
    /// The audience of the token.
    pub audience: &'a str,
    /// The destination, `host:port`.
    pub destination: &'a str,
    /// Minted for this request, or from the cache (the last token had);
    /// `None` when none was had.
    pub source: Option<TokenSource>,
    /// Tokens minted for this request (0 to 2: the broker's requests for
    /// it, so the audit adds up to what the broker saw).
    pub minted: u32,
    /// What happened.
    pub outcome: InjectOutcome,
    /// The agent had set `Authorization` or `Proxy-Authorization`: removed.
    pub removed_agent_authorization: bool,
}

type InjectHook = Arc<dyn Fn(&InjectEvent<'_>) + Send + Sync>;

/// An agent's injection rules, and the linked credential the tokens come
/// from. Give it to [`crate::egress::AgentEgress::inject`].
#[derive(Clone)]
pub struct Injection {
    rules: Vec<InjectRule>,
    linked: LinkedCredential,
    on_inject: Option<InjectHook>,
}

impl Injection {
    /// No rules yet: tokens from `linked` (the agent's own linked
    /// credential).
    pub fn new(linked: &LinkedCredential) -> Self {
        Injection {
            rules: Vec::new(),
            linked: linked.clone(),
            on_inject: None,
        }
    }

    /// [`DEFAULT_RULES`].
    pub fn defaults(linked: &LinkedCredential) -> Self {
        let mut injection = Injection::new(linked);
        for rule in DEFAULT_RULES {
            injection
                .rules
                .push(InjectRule::parse(rule).expect("a valid default rule"));
        }
        injection
    }

    /// Add a rule (see [`InjectRule::parse`]); the first rule that matches
    /// a request decides.
    pub fn rule(mut self, rule: &str) -> Result<Self> {
        self.rules.push(InjectRule::parse(rule)?);
        Ok(self)
    }

    /// Call `hook` for every request the host adds a token to.
    pub fn on_inject(mut self, hook: impl Fn(&InjectEvent<'_>) + Send + Sync + 'static) -> Self {
        self.on_inject = Some(Arc::new(hook));
        self
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[InjectRule] {
        &self.rules
    }

    /// The rule a request to `origin` gets its token by, if any.
    pub fn rule_for(&self, origin: &Origin) -> Option<&InjectRule> {
        self.rules.iter().find(|r| r.matches(origin))
    }

    /// Send `request` (already admitted, to a destination `rule` matches)
    /// with a token for the rule's audience, answering one challenge. The
    /// trip runs as a task of its own holding `slot` (the request's, among
    /// the agent's in flight), and ends with its audit event whether or not
    /// the returned future is still awaited: a token being had is had, the
    /// request is not sent once the agent has gone.
    pub(crate) fn send(
        &self,
        rule: &InjectRule,
        origin: &Origin,
        connections: Connections,
        request: hyper::Request<WasiBody>,
        options: Option<RequestOptions>,
        slot: Slot,
    ) -> impl Future<Output = Result<Sent, Error>> + Send + 'static {
        let linked = self.linked.clone();
        let hook = self.on_inject.clone();
        let (audience, scope) = (rule.audience.clone(), rule.scope.clone());
        let destination = format!("{}:{}", origin.host, origin.port);
        let (answer, answered) = oneshot::channel();
        let trip = async move {
            let mut answer = answer;
            let target = crate::outbound::shown(request.uri());
            let (mut parts, body) = request.into_parts();
            let removed = remove_authorization(&mut parts.headers);
            let mut trip = Trip::default();
            let agent_id = linked.policy().agent_id();
            let span = inject_span(agent_id, &audience, &destination);
            // The body, whole (it is sent again after a challenge), unless
            // the agent gives up first: then nothing is minted or sent.
            let collected = tokio::select! {
                collected = connections.collect(body, &target) => Some(collected),
                () = answer.closed() => None,
            };
            let result = match collected {
                Some(Ok(body)) => {
                    let send = |token: &str| {
                        let (mut request, ()) = hyper::Request::new(()).into_parts();
                        request.method = parts.method.clone();
                        request.uri = parts.uri.clone();
                        request.version = parts.version;
                        request.headers = parts.headers.clone();
                        let mut value =
                            HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
                                Error::InternalError(Some("a token unfit for a header".into()))
                            })?;
                        value.set_sensitive(true);
                        request.headers.insert(AUTHORIZATION, value);
                        // The body as collected: its bytes counted once,
                        // however often it is sent.
                        Ok::<_, Error>(connections.send_collected(request, body.clone(), options))
                    };
                    let run = trip.run(&linked, &scope, &audience, send, &mut answer);
                    tracing::Instrument::instrument(run, span.clone()).await
                }
                Some(Err(e)) => {
                    // Refused (a limit) before anything else: not a trip.
                    let _ = answer.send(Err(e));
                    return;
                }
                None => {
                    trip.outcome = InjectOutcome::Abandoned;
                    Err(gone())
                }
            };
            let event = InjectEvent {
                agent_id,
                audience: &audience,
                destination: &destination,
                source: trip.source,
                minted: trip.minted,
                outcome: trip.outcome,
                removed_agent_authorization: removed,
            };
            span.in_scope(|| injected(&event));
            if let Some(hook) = &hook {
                hook(&event);
            }
            let _ = answer.send(result.map(|(response, io)| (holding(slot, response), io)));
        };
        tokio::spawn(trip);
        async move {
            answered.await.unwrap_or_else(|_| {
                Err(Error::InternalError(Some(
                    "the host's task sending this request ended without an answer".into(),
                )))
            })
        }
    }
}

/// What one injected request went through, for its audit event.
struct Trip {
    source: Option<TokenSource>,
    minted: u32,
    outcome: InjectOutcome,
}

impl Default for Trip {
    fn default() -> Self {
        Trip {
            source: None,
            minted: 0,
            outcome: InjectOutcome::NoToken,
        }
    }
}

impl Trip {
    /// A token, for the first send or (`rejected`) the one after a challenge.
    async fn token(
        &mut self,
        linked: &LinkedCredential,
        scope: &str,
        rejected: Option<&str>,
    ) -> Result<String, CredentialError> {
        let (info, source) = linked.injection_token(scope, rejected).await?;
        self.source = Some(source);
        self.minted += u32::from(source == TokenSource::Minted);
        Ok(info.token)
    }

    /// Send `request` unless the agent has gone (`answer` closed): not
    /// sent if it had gone already, the send dropped if it goes meanwhile.
    async fn unless_gone<F>(
        &mut self,
        request: F,
        answer: &mut oneshot::Sender<Result<Sent, Error>>,
    ) -> Result<Sent, Error>
    where
        F: Future<Output = Result<Sent, Error>>,
    {
        tokio::select! {
            biased;
            () = answer.closed() => {
                self.outcome = InjectOutcome::Abandoned;
                Err(gone())
            }
            sent = request => sent,
        }
    }

    /// Get a token, send, and answer one challenge; `self` says what
    /// happened, whatever the result. Tokens are had even when the agent
    /// has gone meanwhile (a mint under way finishes, and is cached);
    /// requests are not sent for an agent that has gone.
    async fn run<F>(
        &mut self,
        linked: &LinkedCredential,
        scope: &str,
        audience: &str,
        send: impl Fn(&str) -> Result<F, Error>,
        answer: &mut oneshot::Sender<Result<Sent, Error>>,
    ) -> Result<Sent, Error>
    where
        F: Future<Output = Result<Sent, Error>>,
    {
        let token = self.token(linked, scope, None).await.map_err(|e| {
            Error::InternalError(Some(format!(
                "the host could not add a {audience} token to this request: {e}"
            )))
        })?;
        self.outcome = InjectOutcome::SendFailed;
        let sent = self.unless_gone(send(&token)?, answer).await?;
        self.outcome = match challenge(&sent.0) {
            None => InjectOutcome::Sent,
            Some(c) if c.claims() => InjectOutcome::ClaimsChallenge,
            Some(c) if !c.resource_is(audience) => InjectOutcome::OtherResource,
            // A token minted for this very request, refused: another would
            // be refused too (another tenant's resource, say).
            Some(_) if self.minted > 0 => InjectOutcome::FreshTokenRefused,
            Some(_) => InjectOutcome::ChallengeAnswered,
        };
        if self.outcome != InjectOutcome::ChallengeAnswered {
            return Ok(sent);
        }
        let Ok(fresh) = self.token(linked, scope, Some(&token)).await else {
            self.outcome = InjectOutcome::ChallengeUnanswered;
            return Ok(sent);
        };
        drop(sent);
        self.outcome = InjectOutcome::SendFailed;
        let again = self.unless_gone(send(&fresh)?, answer).await?;
        self.outcome = InjectOutcome::ChallengeAnswered;
        Ok(again)
    }
}

/// The error of a request the agent gave up on (it never sees it).
fn gone() -> Error {
    Error::InternalError(Some("the agent gave up on the request".into()))
}

/// Remove the credentials the agent set; whether there were any.
fn remove_authorization(headers: &mut HeaderMap) -> bool {
    let a = headers.remove(AUTHORIZATION).is_some();
    let p = headers.remove(PROXY_AUTHORIZATION).is_some();
    a | p
}

/// A `WWW-Authenticate: Bearer` challenge's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Challenge {
    params: Vec<(String, String)>,
}

impl Challenge {
    /// Parse one `WWW-Authenticate` value; `None` unless it is a Bearer
    /// challenge. Parameters are `name=value` or `name="value"`, separated
    /// by commas or spaces (Key Vault uses the first, Storage the second).
    ///
    /// ```
    /// use vd_cred_host::inject::Challenge;
    /// let kv = Challenge::parse(r#"Bearer authorization="https://login.microsoftonline.com/t", resource="https://vault.azure.net""#).unwrap();
    /// assert_eq!(kv.param("resource"), Some("https://vault.azure.net"));
    /// let storage = Challenge::parse("Bearer authorization_uri=https://login.microsoftonline.com/t/oauth2/authorize resource_id=https://storage.azure.com").unwrap();
    /// assert_eq!(storage.param("resource_id"), Some("https://storage.azure.com"));
    /// assert!(Challenge::parse("Basic realm=\"x\"").is_none());
    /// ```
    pub fn parse(value: &str) -> Option<Challenge> {
        let value = value.trim_start();
        let scheme_end = value
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(value.len());
        if !value[..scheme_end].eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut rest = &value[scheme_end..];
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
            let Some(eq) = rest.find('=') else { break };
            let name = rest[..eq].trim();
            if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace() || c == ',') {
                // Another scheme's challenge begins: this one is over.
                break;
            }
            rest = rest[eq + 1..].trim_start();
            let value = if let Some(quoted) = rest.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                rest = &quoted[end.min(quoted.len())..];
                value
            } else {
                let end = rest
                    .find(|c: char| c == ',' || c.is_ascii_whitespace())
                    .unwrap_or(rest.len());
                let value = rest[..end].to_string();
                rest = &rest[end..];
                value
            };
            params.push((name.to_ascii_lowercase(), value));
        }
        Some(Challenge { params })
    }

    /// The value of parameter `name` (lower-case).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether it asks for claims (`claims=...`, or
    /// `error="insufficient_claims"`), which the broker cannot meet.
    pub fn claims(&self) -> bool {
        self.param("claims").is_some_and(|c| !c.is_empty())
            || self.param("error") == Some("insufficient_claims")
    }

    /// Whether the resource it names (`resource`, `resource_id` or `scope`),
    /// if any, is `audience`'s.
    pub fn resource_is(&self, audience: &str) -> bool {
        let named = ["resource", "resource_id", "scope"]
            .iter()
            .find_map(|p| self.param(p).filter(|v| !v.is_empty()));
        match named {
            None => true,
            Some(resource) => AudienceMap::default().lookup(resource) == Some(audience),
        }
    }
}

/// The Bearer challenge of a 401, if it is one.
fn challenge(response: &hyper::Response<WasiBody>) -> Option<Challenge> {
    if response.status() != StatusCode::UNAUTHORIZED {
        return None;
    }
    response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(Challenge::parse)
}

/// The span of one agent request the host adds a token to.
fn inject_span(agent_id: &str, audience: &str, destination: &str) -> tracing::Span {
    tracing::info_span!(target: crate::outbound::trace::TARGET, "vd_cred.inject", agent_id, audience, destination)
}

/// One agent request the host added a token to, or tried to (what
/// [`InjectEvent`] says): DEBUG when sent with a cached token, INFO when a
/// token was minted for it, WARN when the agent got an error or a 401.
fn injected(event: &InjectEvent<'_>) {
    let source = match event.source {
        Some(TokenSource::Minted) => "minted",
        Some(TokenSource::Cached) => "cached",
        None => "none",
    };
    let outcome = format!("{:?}", event.outcome);
    let (agent_id, audience, destination) = (event.agent_id, event.audience, event.destination);
    let (minted, removed) = (event.minted, event.removed_agent_authorization);
    macro_rules! at {
        ($level:expr) => {
            tracing::event!(
                target: crate::outbound::trace::TARGET,
                $level,
                agent_id,
                audience,
                destination,
                source,
                minted,
                outcome,
                removed_agent_authorization = removed,
                "token injection: {outcome}"
            )
        };
    }
    match event.outcome {
        InjectOutcome::Sent if event.minted == 0 => at!(tracing::Level::DEBUG),
        InjectOutcome::Sent | InjectOutcome::ChallengeAnswered => at!(tracing::Level::INFO),
        _ => at!(tracing::Level::WARN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(url: &str) -> Origin {
        Origin::of(&url.parse().unwrap()).unwrap()
    }

    #[test]
    fn rules_match_https_exact_hosts_and_one_label_wildcards_on_their_port() {
        let vault = InjectRule::parse("*.vault.azure.net=vault").unwrap();
        assert_eq!(vault.scope, "https://vault.azure.net/.default");
        assert!(vault.matches(&origin("https://myvault.vault.azure.net/secrets/x")));
        assert!(vault.matches(&origin("https://MyVault.Vault.Azure.NET./secrets/x")));
        assert!(vault.matches(&origin("https://myvault.vault.azure.net:443/")));
        assert!(
            !vault.matches(&origin("http://myvault.vault.azure.net/")),
            "plain http"
        );
        assert!(
            !vault.matches(&origin("https://myvault.vault.azure.net:8443/")),
            "port"
        );
        assert!(
            !vault.matches(&origin("https://vault.azure.net/")),
            "the domain itself"
        );
        assert!(
            !vault.matches(&origin("https://a.b.vault.azure.net/")),
            "two labels"
        );
        assert!(!vault.matches(&origin("https://evilvault.azure.net/")));
        assert!(!vault.matches(&origin("https://myvault.vault.azure.net.evil.com/")));

        let arm = InjectRule::parse("management.azure.com=https://management.azure.com/.default")
            .unwrap();
        assert_eq!(arm.audience(), "arm");
        assert!(arm.matches(&origin("https://management.azure.com/subscriptions")));
        assert!(!arm.matches(&origin("https://x.management.azure.com/")));

        let spaced = InjectRule::parse(" *.vault.azure.net = vault ").unwrap();
        assert!(spaced.matches(&origin("https://myvault.vault.azure.net/")));

        let mock = InjectRule::parse("kv.test:8443=vault").unwrap();
        assert!(mock.matches(&origin("https://kv.test:8443/")));
        assert!(!mock.matches(&origin("https://kv.test/")));
    }

    #[test]
    fn rules_that_would_be_too_broad_or_unknown_are_refused() {
        for bad in [
            "*=vault",
            "*.com=vault",
            "*.co.uk=arm",
            "*.azurewebsites.net=arm",
            "*.*.azure.net=vault",
            "a*.azure.net=vault",
            "vault.azure.net",
            "vault.azure.net=",
            "vault.azure.net=https://evil.example",
            "vault.azure.net:0=vault",
            "vault.azure.net:http=vault",
        ] {
            assert!(InjectRule::parse(bad).is_err(), "{bad} was accepted");
        }
        for rule in DEFAULT_RULES {
            InjectRule::parse(rule).unwrap();
        }
    }

    #[test]
    fn challenges_are_parsed_as_key_vault_storage_and_cae_send_them() {
        let kv = Challenge::parse(
            r#"Bearer authorization="https://login.microsoftonline.com/72f988bf", resource="https://vault.azure.net""#,
        )
        .unwrap();
        assert!(!kv.claims());
        assert!(kv.resource_is("vault"));
        assert!(!kv.resource_is("storage"));

        let storage = Challenge::parse(
            "Bearer authorization_uri=https://login.microsoftonline.com/t/oauth2/authorize resource_id=https://storage.azure.com",
        )
        .unwrap();
        assert!(storage.resource_is("storage"));
        assert!(!storage.resource_is("arm"));

        let cae = Challenge::parse(
            r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnt9fQ==""#,
        )
        .unwrap();
        assert!(cae.claims());
        assert_eq!(cae.param("claims"), Some("eyJhY2Nlc3NfdG9rZW4iOnt9fQ=="));

        let scoped =
            Challenge::parse(r#"bearer scope="https://vault.azure.net/.default""#).unwrap();
        assert!(scoped.resource_is("vault"));
        let bare = Challenge::parse("Bearer").unwrap();
        assert!(bare.resource_is("vault") && !bare.claims());
        let escaped = Challenge::parse(r#"Bearer realm="a \"b\"", x=1, Basic realm="y""#).unwrap();
        assert_eq!(escaped.param("realm"), Some(r#"a "b""#));
        assert_eq!(escaped.param("x"), Some("1"));
        assert!(Challenge::parse("Negotiate").is_none());
        assert!(Challenge::parse("Bearerx a=b").is_none());
    }

    #[test]
    fn the_agents_own_credentials_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer forged"));
        headers.append(AUTHORIZATION, HeaderValue::from_static("Basic Zm9v"));
        headers.insert(PROXY_AUTHORIZATION, HeaderValue::from_static("Basic YmFy"));
        headers.insert("x-ms-version", HeaderValue::from_static("2021-08-06"));
        assert!(remove_authorization(&mut headers));
        assert!(headers.get(AUTHORIZATION).is_none());
        assert!(headers.get(PROXY_AUTHORIZATION).is_none());
        assert_eq!(headers.len(), 1);
        assert!(!remove_authorization(&mut headers));
    }
}
