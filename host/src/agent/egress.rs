//! An agent's own HTTP egress, deny by default: [`AgentEgress`].
//!
//! An agent running next to a linked credential gets HTTP only to the
//! origins its runtime allows ([`AgentEgress::allow`]: `scheme://host[:port]`,
//! the host exact, `*.example.com` for its subdomains or `*` for any), and
//! never to the credential's broker or helper, whatever the allowlist says:
//!
//! - by name, before anything is resolved: the helper's origin
//!   ([`crate::RUNTIME_ACCESS_URL`], any scheme or port) and the broker's host and
//!   port as its URL spells them (host lower-cased, trailing dot removed);
//! - by address, at connect time: the client resolves the request's host once
//!   and asks [`decide`] about every address it got; the connection goes to
//!   those addresses only, or the request fails with `HTTP-request-denied`
//!   when any of them is refused. So every spelling of the broker is caught
//!   (`localhost`, `[::ffff:127.0.0.1]`, `2130706433`, `0x7f.0.0.1`,
//!   `0177.0.0.1`, `127.1`, a name that resolves to it), and a name cannot be
//!   re-resolved elsewhere between the check and the connection. The broker's
//!   own host is resolved at the same moment (its URL may name it). Names
//!   are looked up by the policy's [`Resolver`] ([`AgentEgress::resolver`]:
//!   the credential's with [`AgentEgress::for_agent_of`], else the
//!   system's); an IP address, in any of those forms, never is. When the
//!   broker is on this machine (its address is loopback, unspecified, or one
//!   of this machine's), every loopback, unspecified or local address on its
//!   port is refused too: a broker bound to `0.0.0.0` or `127.0.0.1` answers
//!   on all of them.
//!
//! To the agent, the broker looks like any other address: a request to it
//! that the allowlist would have let through fails as a closed port does
//! (`connection-refused`), one the allowlist would not as any origin off it
//! does (`HTTP-request-denied`), so that probing does not tell which
//! addresses are the broker's; the record says why.
//!
//! Link-local addresses (`169.254.0.0/16`, `fe80::/10`: the metadata
//! services of most clouds, ECS and EKS credentials) and the cloud metadata
//! addresses outside them ([`METADATA_ADDRESSES`]), with their IPv4-mapped
//! forms, are refused unless allowed explicitly: by an allowlisted origin whose host
//! is that address literally (`http://169.254.169.254`: that address, on
//! that port only), or for all of them with
//! [`AgentEgress::allow_link_local`]. Start an agent's policy with
//! [`AgentEgress::for_agent_of`], which knows its credential's broker. Redirects are the agent's own new
//! requests (wasi:http never follows one) and meet the same checks.
//!
//! **Limits.** What the agent's requests hold in the host is counted and
//! capped ([`EgressLimits`], on by default): requests in flight, connections
//! open, bytes of request bodies held, a body's size, and how long an
//! answer may be waited for (a ceiling on the timeouts the agent sets).
//! Over a count, a request fails at once with `connection-limit-reached`
//! and the refusal is recorded; a slot is given back when its request is
//! done with, whatever the agent did with it (read its answer, dropped it
//! unread, abandoned it while it was sent).
//!
//! Every refusal is counted by reason, and the last few are kept in full
//! ([`AgentEgress::refusals`]): the record stays the same size however many
//! requests the agent has refused. Requests let through are sent by the same
//! pooled client the credential uses, verifying https peers against the
//! public web roots unless [`AgentEgress::trust`] says otherwise. A proxy's
//! problems are told to the host's log; the agent learns only that the
//! host's proxy failed, never which proxy or which variable set it.
//!
//! The host can add Azure tokens to the requests an injection's rules match
//! ([`AgentEgress::inject`], [`crate::inject`]); a rule opens nothing the
//! allowlist does not. [`AgentEgress::connect_to`] sends a host name to
//! another address (tests, split-horizon networks), vetted like any other.
//! [`AgentEgress::proxies`] sends the agent's requests through an HTTP
//! proxy, as the credential's ([`crate::proxy`]; `NO_PROXY` is matched
//! against the URL as the agent wrote it, its port only if written); the
//! checks above are made all the same, on the addresses the destination
//! resolves to here, by the policy's resolver (a name that does not resolve
//! here is not reached through the proxy either), and the proxy is then asked for a
//! vetted address, never the name, so a proxy resolving the name again
//! (elsewhere, or to something else by then) cannot take the request
//! past the checks: `CONNECT 203.0.113.7:443` for https (the TLS name and
//! certificate check stay the host's name), `GET http://203.0.113.7/path`
//! with `Host:` the name for plain http (the first address). What the
//! proxy itself may reach is beyond this policy.
//!
//! What this does not cover: other machines that reach the broker (a broker
//! on another host listening on several addresses is refused only at the
//! addresses its URL resolves to), metadata endpoints at addresses not
//! listed here (a name is refused by the addresses it resolves to, so
//! `metadata.google.internal` is refused as `169.254.169.254`), the time a
//! refusal takes (immediate, where a remote closed port takes a round
//! trip), and anything the agent does without wasi:http.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use hyper::Uri;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::agent::inject::{Injection, injects_method};
pub use crate::outbound::Origin;
use crate::outbound::Resolver;
use crate::outbound::TrustedRoots;
use crate::outbound::broker_only::helper_host;
use crate::outbound::proxy::Proxies;
use crate::outbound::shown;
use crate::outbound::{Caps, Limit, Slot, holding};
use crate::outbound::{Connections, Sent, Setup, Vet, VetRefusal};
use crate::outbound::{default_port, literal_ip, normal_host};

/// The largest request body an agent may send unless
/// [`AgentEgress::max_request_body`] says otherwise (the body is held in
/// host memory while it is sent).
pub const DEFAULT_MAX_REQUEST_BODY: usize = 16 << 20;

/// What one agent's own HTTP may hold in the host at once. Over a count a
/// request fails at once with `connection-limit-reached` (a body over
/// `request_body`: `HTTP-request-body-size`) and the refusal is recorded
/// ([`AgentEgress::refusals`]); nothing is queued and nothing traps. The
/// defaults are far above what a data agent's SDKs use (azure-core and
/// `requests` pool 10 connections per host) and keep a hostile agent's
/// share of the host to about 64 MiB of bodies and 256 descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressLimits {
    /// Requests sent and not yet done with: from the send until the answer's
    /// body is read to its end or dropped (or the request fails). 64.
    pub requests_in_flight: usize,
    /// Connections open at once, idle ones kept for reuse included (an
    /// idle connection closes after 30 s). 128.
    pub connections: usize,
    /// Bytes of request bodies held in host memory at once, over all the
    /// agent's requests (a body is collected whole before it is sent, and
    /// held until it is written; an injected request's until its challenge
    /// is answered). 64 MiB.
    pub body_bytes_held: usize,
    /// The largest request body. 16 MiB ([`DEFAULT_MAX_REQUEST_BODY`]).
    pub request_body: usize,
    /// The longest wait for an answer's head (connecting and the first
    /// byte) and between two chunks of its body: a ceiling on the timeouts
    /// the agent sets, and the wait when it sets none (wasi:http's own
    /// default is 600 s). 300 s, azure-core's own read timeout.
    pub response_wait: Duration,
}

impl Default for EgressLimits {
    fn default() -> Self {
        EgressLimits {
            requests_in_flight: 64,
            connections: 128,
            body_bytes_held: 64 << 20,
            request_body: DEFAULT_MAX_REQUEST_BODY,
            response_wait: Duration::from_secs(300),
        }
    }
}

/// How many refusals [`Refusals::recent`] keeps in full.
pub const REFUSALS_KEPT: usize = 32;

/// Which hosts an allowlist entry covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// This host only.
    Exact(String),
    /// Hosts ending in `.` and this (not this host itself).
    Subdomains(String),
    /// Any host.
    Any,
}

/// One allowlist entry: `scheme://host[:port]` with an optional trailing
/// `/`; the host may be `*` (any) or `*.example.com` (its subdomains); the
/// port defaults to the scheme's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    scheme: String,
    host: HostPattern,
    port: u16,
}

impl AllowedOrigin {
    /// Parse an allowlist entry.
    pub fn parse(text: &str) -> Result<AllowedOrigin> {
        let bad = |why: &str| anyhow::anyhow!("egress origin {text:?}: {why}");
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("needs a scheme (http:// or https://)"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default =
            default_port(&scheme).ok_or_else(|| bad("the scheme must be http or https"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(bad("an origin has no path, query or fragment"));
        }
        if authority.contains('@') {
            return Err(bad("an origin has no user-info"));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(inner) => {
                let (ip, after) = inner
                    .split_once(']')
                    .ok_or_else(|| bad("unclosed [ in the host"))?;
                (format!("[{ip}]"), after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), Some(port)),
                None => (authority.to_string(), None),
            },
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| bad("the port must be a number from 0 to 65535"))?,
            None => default,
        };
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            HostPattern::Subdomains(normal_host(suffix).ok_or_else(|| bad("not a host"))?)
        } else {
            if host.contains('*') {
                return Err(bad("a wildcard is `*` or `*.` before a domain"));
            }
            HostPattern::Exact(normal_host(&host).ok_or_else(|| bad("not a host"))?)
        };
        Ok(AllowedOrigin { scheme, host, port })
    }

    /// Whether `origin` is covered.
    pub fn matches(&self, origin: &Origin) -> bool {
        self.scheme == origin.scheme
            && self.port == origin.port
            && match &self.host {
                HostPattern::Exact(h) => *h == origin.host,
                HostPattern::Subdomains(s) => origin
                    .host
                    .strip_suffix(s.as_str())
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                HostPattern::Any => true,
            }
    }

    /// The IP address and port this entry names literally (an explicit
    /// allowance for a link-local or metadata address, on that port only).
    fn literal_address(&self) -> Option<SocketAddr> {
        match &self.host {
            HostPattern::Exact(h) => literal_ip(h).map(|ip| SocketAddr::new(ip, self.port)),
            _ => None,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its origin is not on the allowlist (or is not an http(s) origin).
    NotAllowed,
    /// It names the runtime-access helper's origin.
    Helper,
    /// It would go to the credential's broker (by name or by address).
    CredentialBroker,
    /// A link-local or cloud metadata address not explicitly allowed.
    LinkLocal,
    /// The broker's host name did not resolve, so no address can be told
    /// apart from it: refused rather than guessed.
    BrokerUnresolved,
    /// A request the host would add a token to, with a method it adds none
    /// to (`TRACE`, `CONNECT`, an unknown one).
    MethodNotInjected,
    /// As many requests in flight as [`EgressLimits::requests_in_flight`].
    RequestsInFlight,
    /// As many connections open as [`EgressLimits::connections`].
    Connections,
    /// The body would take the bytes held past
    /// [`EgressLimits::body_bytes_held`].
    BodyBytesHeld,
}

impl Reason {
    /// Every reason, in the order [`Refusals::counts`] gives them.
    pub const ALL: [Reason; 9] = [
        Reason::NotAllowed,
        Reason::Helper,
        Reason::CredentialBroker,
        Reason::LinkLocal,
        Reason::BrokerUnresolved,
        Reason::MethodNotInjected,
        Reason::RequestsInFlight,
        Reason::Connections,
        Reason::BodyBytesHeld,
    ];

    fn index(self) -> usize {
        Reason::ALL
            .iter()
            .position(|r| *r == self)
            .expect("every reason is in ALL")
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::NotAllowed => "the origin is not on the agent's egress allowlist",
            Reason::Helper => "the runtime-access helper is the credential's",
            Reason::CredentialBroker => "the destination is the credential broker",
            Reason::LinkLocal => "a link-local or cloud metadata address, not explicitly allowed",
            Reason::BrokerUnresolved => {
                "the credential broker's host name did not resolve, so the destination \
                 cannot be told apart from it"
            }
            Reason::MethodNotInjected => {
                "the host adds tokens only to GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS \
                 requests"
            }
            Reason::RequestsInFlight => "the agent has as many requests in flight as it may",
            Reason::Connections => "the agent has as many connections open as it may",
            Reason::BodyBytesHeld => {
                "the agent's request bodies held by the host would pass its limit"
            }
        })
    }
}

/// What [`decide`] says about one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Connect.
    Allow,
    /// Do not connect.
    Refuse(Reason),
}

/// What [`decide`] knows besides the address.
pub struct Vetting<'a> {
    /// The addresses the credential's broker resolved to.
    pub broker: &'a [SocketAddr],
    /// Every link-local and metadata address is allowed.
    pub allow_link_local: bool,
    /// These addresses (and ports) are allowed even if link-local or
    /// metadata: allowlisted literally.
    pub allowed_ips: &'a [SocketAddr],
    /// Whether an address belongs to this machine ([`is_local_address`]; a
    /// test passes its own).
    pub is_local: &'a dyn Fn(IpAddr) -> bool,
}

/// Azure's platform address (WireServer: VM agent configuration,
/// extensions' settings), refused like the metadata service.
pub const AZURE_WIRESERVER: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);

/// Cloud metadata and identity endpoints outside the link-local ranges
/// (which hold the rest: `169.254.169.254` for Azure, AWS, GCP, Oracle and
/// others, ECS's `169.254.170.2`, EKS Pod Identity's `169.254.170.23`),
/// refused like them: the one list, here.
pub const METADATA_ADDRESSES: [IpAddr; 6] = [
    // Azure WireServer.
    IpAddr::V4(AZURE_WIRESERVER),
    // Alibaba Cloud's metadata service.
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    // Oracle Cloud's metadata service (also at 169.254.169.254).
    IpAddr::V4(Ipv4Addr::new(192, 0, 0, 192)),
    // AWS's instance metadata service over IPv6.
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    // EKS Pod Identity's agent over IPv6.
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
    // GCP's metadata server over IPv6.
    IpAddr::V6(Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)),
];

/// Whether `ip` is link-local (`169.254.0.0/16`, `fe80::/10`) or one of
/// the [`METADATA_ADDRESSES`], in any form (IPv4-mapped included).
pub fn is_link_local_or_metadata(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    METADATA_ADDRESSES.contains(&ip)
        || match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        }
}

/// Whether `ip` is an address of this machine: one a socket can be bound to.
pub fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// May an agent connect to `addr`? Pure: the broker's addresses and the
/// allowances come in `cx`. IPv4-mapped IPv6 addresses are compared as the
/// IPv4 address they carry.
pub fn decide(addr: SocketAddr, cx: &Vetting<'_>) -> Verdict {
    let ip = addr.ip().to_canonical();
    let here = |ip: IpAddr| ip.is_loopback() || ip.is_unspecified() || (cx.is_local)(ip);
    for broker in cx.broker {
        if broker.port() != addr.port() {
            continue;
        }
        let broker_ip = broker.ip().to_canonical();
        // The broker's address, or (a broker on this machine) any address
        // of this machine on its port.
        if ip == broker_ip || (here(broker_ip) && here(ip)) {
            return Verdict::Refuse(Reason::CredentialBroker);
        }
    }
    let literal = cx
        .allowed_ips
        .iter()
        .any(|a| a.ip().to_canonical() == ip && a.port() == addr.port());
    if is_link_local_or_metadata(ip) && !cx.allow_link_local && !literal {
        return Verdict::Refuse(Reason::LinkLocal);
    }
    Verdict::Allow
}

/// One refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `scheme://host[:port]` as the agent wrote it, never its user-info,
    /// path or query.
    pub target: String,
    /// The refused address, for a refusal at connect time.
    pub address: Option<SocketAddr>,
    /// Why.
    pub reason: Reason,
}

/// The record of an agent's refused requests, shared with the policy's
/// owner (clones share it): a count per [`Reason`], and the last
/// [`REFUSALS_KEPT`] refusals in full. It stays the same size however many
/// requests are refused.
#[derive(Clone, Default)]
pub struct Refusals(Arc<Mutex<Log>>);

#[derive(Default)]
struct Log {
    counts: [u64; Reason::ALL.len()],
    recent: VecDeque<Refusal>,
}

impl Refusals {
    fn refuse(&self, target: String, address: Option<SocketAddr>, reason: Reason) {
        tracing::debug!(target: crate::outbound::trace::TARGET, destination = target, reason = %reason, "agent request refused");
        let mut log = self.0.lock().unwrap();
        log.counts[reason.index()] += 1;
        if log.recent.len() == REFUSALS_KEPT {
            log.recent.pop_front();
        }
        log.recent.push_back(Refusal {
            target,
            address,
            reason,
        });
    }

    /// The last refusals in full (at most [`REFUSALS_KEPT`]), oldest first.
    pub fn recent(&self) -> Vec<Refusal> {
        self.0.lock().unwrap().recent.iter().cloned().collect()
    }

    /// How many requests were refused for `reason`.
    pub fn count(&self, reason: Reason) -> u64 {
        self.0.lock().unwrap().counts[reason.index()]
    }

    /// How many requests were refused in all.
    pub fn total(&self) -> u64 {
        self.0.lock().unwrap().counts.iter().sum()
    }

    /// Each reason with its count, in [`Reason::ALL`]'s order.
    pub fn counts(&self) -> Vec<(Reason, u64)> {
        let log = self.0.lock().unwrap();
        Reason::ALL.into_iter().zip(log.counts).collect()
    }
}

/// A host name sent to another address ([`AgentEgress::connect_to`]).
struct ConnectTo {
    host: String,
    port: u16,
    addr: SocketAddr,
}

/// An agent's egress policy: only allowlisted origins (none by default),
/// never the credential's broker or helper, no link-local or metadata
/// address unless allowed. See the [module documentation](self).
pub struct AgentEgress {
    allowed: Vec<AllowedOrigin>,
    /// The brokers' (host, port), host normalised.
    brokers: Vec<(String, u16)>,
    allow_link_local: bool,
    roots: TrustedRoots,
    limits: EgressLimits,
    /// The counts of what the agent's requests hold (made with the limits).
    caps: Arc<Caps>,
    record: Refusals,
    /// Tokens the host adds to the agent's requests.
    injection: Option<Injection>,
    /// Host names sent to other addresses (`connect_to`).
    connect_to: Vec<ConnectTo>,
    /// Send through these (none by default).
    proxies: Proxies,
    /// Looks up the destinations' and the brokers' host names.
    resolver: Resolver,
    /// Made on the first request let through.
    connections: Option<Connections>,
}

impl Default for AgentEgress {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentEgress {
    /// Deny everything (allow origins with [`AgentEgress::allow`]), with
    /// the default [`EgressLimits`].
    pub fn new() -> Self {
        let record = Refusals::default();
        let limits = EgressLimits::default();
        AgentEgress {
            allowed: Vec::new(),
            brokers: Vec::new(),
            allow_link_local: false,
            roots: TrustedRoots::public(),
            limits,
            caps: caps(&limits, &record),
            record,
            injection: None,
            connect_to: Vec::new(),
            proxies: Proxies::none(),
            resolver: Resolver::system(),
            connections: None,
        }
    }

    /// Deny everything, and never the broker of `linked` (the agent's own
    /// linked credential) whatever is allowed later: the way to start an
    /// agent's policy, so that the broker cannot be forgotten. Host names
    /// are looked up as the credential looks them up (its sandbox's
    /// [`crate::SandboxBuilder::resolver`]), so the broker's name is found
    /// where the credential finds it.
    pub fn for_agent_of(linked: &crate::agent::linked::LinkedCredential) -> Result<Self> {
        let mut egress = AgentEgress::new();
        egress.resolver = linked.resolver().clone();
        for url in linked.broker_urls() {
            egress.credential_broker(url)?;
        }
        Ok(egress)
    }

    /// Allow the origin `origin` (see [`AllowedOrigin::parse`]).
    pub fn allow(&mut self, origin: &str) -> Result<&mut Self> {
        self.allowed.push(AllowedOrigin::parse(origin)?);
        self.connections = None;
        Ok(self)
    }

    /// Never let a request reach the broker whose URL is `url` (the linked
    /// credential's), by name or by address, whatever the allowlist says.
    pub fn credential_broker(&mut self, url: &str) -> Result<&mut Self> {
        let uri: Uri = match url.parse() {
            Ok(uri) => uri,
            Err(_) => bail!("broker URL {url:?} is not a URL"),
        };
        let Some(origin) = Origin::of(&uri) else {
            bail!("broker URL {url:?} needs an http(s) scheme and a host");
        };
        self.brokers.push((origin.host, origin.port));
        self.connections = None;
        Ok(self)
    }

    /// Allow (`true`) every link-local and metadata address; by default
    /// only those an allowlisted origin names literally. The broker stays
    /// refused.
    pub fn allow_link_local(&mut self, allow: bool) -> &mut Self {
        self.allow_link_local = allow;
        self.connections = None;
        self
    }

    /// Add Azure tokens to the agent's requests that `injection`'s rules
    /// match (see [`crate::inject`]). A rule opens nothing: the agent
    /// reaches a destination only if [`AgentEgress::allow`] lets it.
    /// Replaces earlier rules.
    pub fn inject(&mut self, injection: Injection) -> &mut Self {
        self.injection = Some(injection);
        self
    }

    /// Connect to `addr` for requests to `host:port`, the way curl's
    /// `--connect-to` does: the request, its `Host` and the name its TLS
    /// certificate must have stay `host`; only the address changes, and it
    /// is vetted like any other. For tests (an Azure host name served by a
    /// loopback mock) and split-horizon networks.
    pub fn connect_to(&mut self, host: &str, port: u16, addr: SocketAddr) -> Result<&mut Self> {
        let Some(host) = normal_host(host) else {
            bail!("{host:?} is not a host name");
        };
        self.connect_to.push(ConnectTo { host, port, addr });
        self.connections = None;
        Ok(self)
    }

    /// Send the agent's requests through `proxies` (none by default), as
    /// the credential's are ([`crate::proxy`]). Every check is still made,
    /// on the addresses the destination resolves to here, and the proxy is
    /// asked for a vetted address, not the name (see the [module
    /// documentation](self)); a `connect_to` host goes directly.
    pub fn proxies(&mut self, proxies: Proxies) -> &mut Self {
        self.proxies = proxies;
        self.connections = None;
        self
    }

    /// Verify https peers against `roots` (the public web roots by default).
    pub fn trust(&mut self, roots: TrustedRoots) -> &mut Self {
        self.roots = roots;
        self.connections = None;
        self
    }

    /// Look host names up with `resolver`: each destination's (the checks
    /// are made on the addresses it answers, and the connection goes only
    /// to them), the credential brokers' (to tell them apart by address)
    /// and a proxy's. [`Resolver::system`] for [`AgentEgress::new`], the
    /// credential's for [`AgentEgress::for_agent_of`]. A broker name it
    /// does not resolve refuses every request
    /// ([`Reason::BrokerUnresolved`]); a destination it does not resolve
    /// fails as a name that does not exist (`DNS-error`).
    pub fn resolver(&mut self, resolver: Resolver) -> &mut Self {
        self.resolver = resolver;
        self.connections = None;
        self
    }

    /// Refuse (`HTTP-request-body-size`) request bodies over `bytes`
    /// (default [`DEFAULT_MAX_REQUEST_BODY`]): [`EgressLimits::request_body`].
    pub fn max_request_body(&mut self, bytes: usize) -> &mut Self {
        let limits = EgressLimits {
            request_body: bytes,
            ..self.limits
        };
        self.limits(limits)
    }

    /// Replace the agent's [`EgressLimits`] (before its first request: the
    /// counts start again from zero).
    pub fn limits(&mut self, limits: EgressLimits) -> &mut Self {
        self.limits = limits;
        self.caps = caps(&limits, &self.record);
        self.connections = None;
        self
    }

    /// The agent's limits.
    pub fn egress_limits(&self) -> &EgressLimits {
        &self.limits
    }

    /// Requests in flight, connections open and request body bytes held
    /// for the agent, now.
    pub fn in_use(&self) -> (usize, usize, usize) {
        self.caps.now()
    }

    /// The record of refused requests: counts by reason and the last few
    /// in full, `scheme://host[:port]` as the agent wrote it (no user-info).
    pub fn refusals(&self) -> Refusals {
        self.record.clone()
    }

    /// The check by name: the request's origin normalised, or why it is
    /// refused before anything is resolved.
    pub fn admit(&self, uri: &Uri) -> std::result::Result<Origin, Reason> {
        let origin = Origin::of(uri).ok_or(Reason::NotAllowed)?;
        if origin.host == helper_host() {
            return Err(Reason::Helper);
        }
        if self
            .brokers
            .iter()
            .any(|(host, port)| *host == origin.host && *port == origin.port)
        {
            return Err(Reason::CredentialBroker);
        }
        if !self.allows(&origin) {
            return Err(Reason::NotAllowed);
        }
        Ok(origin)
    }

    /// Whether the allowlist covers `origin`.
    fn allows(&self, origin: &Origin) -> bool {
        self.allowed.iter().any(|a| a.matches(origin))
    }

    /// The connect-time check, for the client.
    fn vet(&self) -> Vet {
        let brokers = Arc::new(self.brokers.clone());
        let allow_link_local = self.allow_link_local;
        let allowed_ips: Arc<Vec<SocketAddr>> = Arc::new(
            self.allowed
                .iter()
                .filter_map(AllowedOrigin::literal_address)
                .collect(),
        );
        let record = self.record.clone();
        let resolver = self.resolver.clone();
        Arc::new(move |uri: &Uri, addrs: &[SocketAddr]| {
            let (brokers, allowed_ips, record, resolver) = (
                brokers.clone(),
                allowed_ips.clone(),
                record.clone(),
                resolver.clone(),
            );
            let (target, addrs) = (shown(uri), addrs.to_vec());
            Box::pin(async move {
                let mut broker = Vec::new();
                for (host, port) in brokers.iter() {
                    match resolver.lookup(host, *port).await {
                        Ok(found) => broker.extend(found),
                        Err(_) => {
                            record.refuse(target, None, Reason::BrokerUnresolved);
                            return Err(VetRefusal {
                                why: Reason::BrokerUnresolved.to_string(),
                                as_closed: false,
                            });
                        }
                    }
                }
                let cx = Vetting {
                    broker: &broker,
                    allow_link_local,
                    allowed_ips: &allowed_ips,
                    is_local: &is_local_address,
                };
                for addr in addrs {
                    if let Verdict::Refuse(reason) = decide(addr, &cx) {
                        record.refuse(target, Some(addr), reason);
                        return Err(VetRefusal {
                            why: format!("{addr}: {reason}"),
                            as_closed: reason == Reason::CredentialBroker,
                        });
                    }
                }
                Ok(())
            })
        })
    }
}

type ResponseFuture = Box<dyn Future<Output = std::result::Result<Sent, Error>> + Send>;

/// How much of a request body an agent may write into one wasi:http 0.2
/// write, and so (with one chunk buffered) how much of it wasmtime holds
/// in host memory for a request the agent has not yet handed over (not yet
/// counted in [`EgressLimits::body_bytes_held`]): 16 KiB, where wasmtime's
/// default is 1 MiB.
pub const BODY_CHUNK_BYTES: usize = 16 << 10;

impl WasiHttpHooks for AgentEgress {
    /// `Host` is made from the URI as checked (lower-cased, no trailing
    /// dot, no user info, the port only if not the scheme's), never copied
    /// from the agent's spelling.
    fn set_host_header(&mut self) -> bool {
        false
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES
    }

    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn send_request(
        &mut self,
        mut request: hyper::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = std::result::Result<(), Error>> + Send>,
    ) -> ResponseFuture {
        drop(fut);
        let target = shown(request.uri());
        let admitted = self.admit(request.uri()).and_then(|origin| {
            // Sent to the host as checked (lower-cased, no trailing dot), the
            // port only if the agent wrote one (`NO_PROXY` tells the two
            // apart, as `requests` does).
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            let port = match request.uri().port() {
                Some(_) => format!(":{}", origin.port),
                None => String::new(),
            };
            let uri = format!("{}://{}{port}{path}", origin.scheme, origin.host)
                .parse::<Uri>()
                .map_err(|_| Reason::NotAllowed)?;
            Ok((origin, uri))
        });
        let origin = match admitted {
            Ok((origin, uri)) => {
                *request.uri_mut() = uri;
                origin
            }
            Err(reason) => {
                // The broker by name fails as a closed port (as it does by
                // address) where the allowlist would have let the request
                // through; elsewhere as any origin off the allowlist, so
                // that neither tells the broker apart.
                let allowed = || Origin::of(request.uri()).is_some_and(|o| self.allows(&o));
                let error = match reason {
                    Reason::CredentialBroker if allowed() => Error::ConnectionRefused,
                    _ => Error::HttpRequestDenied,
                };
                self.record.refuse(target, None, reason);
                return Box::new(async move { Err(error) });
            }
        };
        let injected = match &self.injection {
            Some(injection) => injection.rule_for(&origin).cloned(),
            None => None,
        };
        if injected.is_some() && !injects_method(request.method()) {
            self.record.refuse(target, None, Reason::MethodNotInjected);
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        // Counted from here until the answer is done with.
        let Some(slot) = self.caps.take(Limit::RequestsInFlight, &target) else {
            return Box::new(async { Err(Error::ConnectionLimitReached) });
        };
        let options = Some(within(options, self.limits.response_wait));
        if self.connections.is_none() {
            self.connections = Some(Connections::new(Setup {
                roots: self.roots.clone(),
                unix: None,
                vet: Some(self.vet()),
                max_request_body: self.limits.request_body,
                connect_to: self
                    .connect_to
                    .iter()
                    .map(|c| ((c.host.clone(), c.port), c.addr))
                    .collect(),
                proxies: self.proxies.clone(),
                resolver: self.resolver.clone(),
                caps: Some(self.caps.clone()),
                withhold: Some(Arc::new(|why: &str| {
                    tracing::warn!(target: crate::outbound::trace::TARGET, why, "an agent's request failed at the host's proxy");
                })),
            }));
        }
        let connections = self.connections.clone().expect("made above");
        match (&self.injection, injected) {
            (Some(injection), Some(rule)) => {
                // The slot goes with the trip, which finishes (and is
                // audited) even if the agent drops its future.
                Box::new(injection.send(&rule, &origin, connections, request, options, slot))
            }
            _ => Box::new(holding_answer(slot, connections.send(request, options))),
        }
    }
}

/// The counts of `limits`, recording refusals in `record`.
fn caps(limits: &EgressLimits, record: &Refusals) -> Arc<Caps> {
    let record = record.clone();
    Caps::new(
        limits.requests_in_flight,
        limits.connections,
        limits.body_bytes_held,
        Box::new(move |limit, target| {
            let reason = match limit {
                Limit::RequestsInFlight => Reason::RequestsInFlight,
                Limit::Connections => Reason::Connections,
                Limit::BodyBytes => Reason::BodyBytesHeld,
            };
            record.refuse(target.to_string(), None, reason);
        }),
    )
}

/// The agent's timeouts, none longer than `most` (and `most` where it set
/// none).
fn within(options: Option<RequestOptions>, most: Duration) -> RequestOptions {
    let o = options.unwrap_or_default();
    let cap = |asked: Option<Duration>| Some(asked.map_or(most, |d| d.min(most)));
    RequestOptions {
        connect_timeout: cap(o.connect_timeout),
        first_byte_timeout: cap(o.first_byte_timeout),
        between_bytes_timeout: cap(o.between_bytes_timeout),
    }
}

/// `sent`, its request slot kept until the answer's body is done with (see
/// [`holding`]), or given back with the future when the agent drops it
/// first.
async fn holding_answer(
    slot: Slot,
    sent: impl Future<Output = std::result::Result<Sent, Error>>,
) -> std::result::Result<Sent, Error> {
    let (response, io) = sent.await?;
    Ok((holding(slot, response), io))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::RUNTIME_ACCESS_URL;
    use crate::outbound::mute_server;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// `decide` with the broker at `broker`, nothing allowed, and a machine
    /// whose only non-loopback address is 10.1.2.3.
    fn verdict(broker: &[&str], target: &str) -> Verdict {
        let broker: Vec<SocketAddr> = broker.iter().map(|b| addr(b)).collect();
        let cx = Vetting {
            broker: &broker,
            allow_link_local: false,
            allowed_ips: &[],
            is_local: &|ip| ip == IpAddr::from([10, 1, 2, 3]),
        };
        decide(addr(target), &cx)
    }

    const BROKER: Verdict = Verdict::Refuse(Reason::CredentialBroker);
    const LINK_LOCAL: Verdict = Verdict::Refuse(Reason::LinkLocal);

    #[test]
    fn every_address_of_a_local_broker_on_its_port_is_refused() {
        let at = ["127.0.0.1:8080"];
        for target in [
            "127.0.0.1:8080",
            "[::ffff:127.0.0.1]:8080",
            "127.0.0.2:8080",
            "127.255.255.254:8080",
            "[::1]:8080",
            "0.0.0.0:8080",
            "[::]:8080",
            "[::ffff:0.0.0.0]:8080",
            "10.1.2.3:8080",
        ] {
            assert_eq!(verdict(&at, target), BROKER, "{target}");
        }
        // Another port, another machine: not the broker.
        for target in [
            "127.0.0.1:8081",
            "[::1]:80",
            "10.9.9.9:8080",
            "93.184.216.34:8080",
        ] {
            assert_eq!(verdict(&at, target), Verdict::Allow, "{target}");
        }
        // A broker bound to the unspecified address, or named by a local
        // interface address.
        for at in [["0.0.0.0:8080"], ["[::]:8080"], ["10.1.2.3:8080"]] {
            assert_eq!(verdict(&at, "127.0.0.1:8080"), BROKER, "{at:?}");
            assert_eq!(verdict(&at, "[::ffff:127.0.0.9]:8080"), BROKER, "{at:?}");
        }
        // Named by its IPv4-mapped form.
        assert_eq!(
            verdict(&["[::ffff:127.0.0.1]:8080"], "127.3.0.1:8080"),
            BROKER
        );
    }

    #[test]
    fn a_remote_broker_is_refused_at_its_own_addresses() {
        let at = ["172.17.0.1:8080", "[2001:db8::5]:8080"];
        for target in [
            "172.17.0.1:8080",
            "[::ffff:172.17.0.1]:8080",
            "[2001:db8::5]:8080",
        ] {
            assert_eq!(verdict(&at, target), BROKER, "{target}");
        }
        for target in ["172.17.0.2:8080", "172.17.0.1:443", "127.0.0.1:8080"] {
            assert_eq!(verdict(&at, target), Verdict::Allow, "{target}");
        }
    }

    #[test]
    fn link_local_and_metadata_addresses_are_refused_unless_allowed() {
        let targets = [
            "169.254.169.254:80",
            "169.254.0.1:443",
            "[::ffff:169.254.169.254]:80",
            "[fe80::1]:80",
            "[febf::1]:80",
            "[fd00:ec2::254]:80",
        ];
        for target in targets {
            assert_eq!(verdict(&[], target), LINK_LOCAL, "{target}");
        }
        for target in ["169.255.0.1:80", "[fec0::1]:80", "[fd00:ec2::253]:80"] {
            assert_eq!(verdict(&[], target), Verdict::Allow, "{target}");
        }
        let all = Vetting {
            broker: &[],
            allow_link_local: true,
            allowed_ips: &[],
            is_local: &|_| false,
        };
        let one = Vetting {
            allow_link_local: false,
            allowed_ips: &[addr("169.254.169.254:80")],
            ..all
        };
        for target in targets {
            assert_eq!(decide(addr(target), &all), Verdict::Allow, "{target}");
        }
        assert_eq!(decide(addr("169.254.169.254:80"), &one), Verdict::Allow);
        assert_eq!(
            decide(addr("[::ffff:169.254.169.254]:80"), &one),
            Verdict::Allow
        );
        assert_eq!(decide(addr("169.254.169.253:80"), &one), LINK_LOCAL);
        // Allowed literally on one port, not on another.
        assert_eq!(decide(addr("169.254.169.254:8080"), &one), LINK_LOCAL);
        // Azure's WireServer is a metadata address too.
        assert_eq!(verdict(&[], "168.63.129.16:80"), LINK_LOCAL);
        assert_eq!(verdict(&[], "[::ffff:168.63.129.16]:32526"), LINK_LOCAL);
        // The broker stays refused whatever is allowed.
        let broker = [addr("169.254.1.1:8080")];
        let everything = Vetting {
            broker: &broker,
            ..all
        };
        assert_eq!(decide(addr("169.254.1.1:8080"), &everything), BROKER);
    }

    #[test]
    fn allowlist_entries_parse_and_match_normalised_origins() {
        let origin = |s: &str| Origin::of(&s.parse().unwrap());
        assert_eq!(
            origin("HTTP://LocalHost.:80/x").unwrap().to_string(),
            "http://localhost:80"
        );
        assert_eq!(
            origin("https://[::FFFF:7f00:1]/").unwrap().to_string(),
            "https://[::ffff:127.0.0.1]:443"
        );
        assert_eq!(origin("ftp://example.com/"), None);
        assert_eq!(origin("/relative"), None);

        let allows = |entry: &str, url: &str| {
            AllowedOrigin::parse(entry)
                .unwrap()
                .matches(&origin(url).unwrap())
        };
        assert!(allows(
            "https://API.example.com/",
            "https://api.example.com./v1"
        ));
        assert!(allows(
            "https://api.example.com",
            "https://api.example.com:443"
        ));
        assert!(!allows("https://api.example.com", "http://api.example.com"));
        assert!(!allows(
            "https://api.example.com",
            "https://api.example.com:8443"
        ));
        assert!(!allows("https://api.example.com", "https://example.com"));
        assert!(allows("http://127.0.0.1:8080", "http://127.0.0.1:8080/x"));
        assert!(allows("http://[::1]:8080", "http://[0::1]:8080/"));
        assert!(allows("https://*.example.com", "https://a.b.example.com"));
        assert!(!allows("https://*.example.com", "https://example.com"));
        assert!(!allows("https://*.example.com", "https://badexample.com"));
        assert!(allows("https://*", "https://anything.test"));
        assert!(!allows("https://*", "https://anything.test:444"));
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://example.com/path",
            "https://user@example.com",
            "https://example.com?q",
            "https://example.com:99999",
            "https://ex*ample.com",
            "https://[::1",
        ] {
            assert!(AllowedOrigin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_helper_and_the_broker_are_refused_by_name_whatever_the_allowlist() {
        let mut egress = AgentEgress::new();
        egress
            .allow("http://runtime-access")
            .unwrap()
            .allow("http://127.0.0.1:8080")
            .unwrap()
            .allow("http://localhost:8080")
            .unwrap()
            .allow("http://other:9")
            .unwrap()
            .credential_broker("http://LOCALHOST.:8080/api/v1/credential-broker")
            .unwrap();
        let admit = |url: &str| egress.admit(&url.parse().unwrap());
        assert_eq!(admit(RUNTIME_ACCESS_URL), Err(Reason::Helper));
        assert_eq!(admit("https://runtime-access:8443/x"), Err(Reason::Helper));
        assert_eq!(
            admit("http://localhost:8080/token"),
            Err(Reason::CredentialBroker)
        );
        assert_eq!(
            admit("http://localhost.:8080/token"),
            Err(Reason::CredentialBroker)
        );
        assert_eq!(admit("http://elsewhere:8080/"), Err(Reason::NotAllowed));
        // By name the broker is only its URL's spelling; 127.0.0.1 is
        // caught at connect time, by address.
        assert!(admit("http://127.0.0.1:8080/token").is_ok());
        assert_eq!(
            admit("http://other:9/").unwrap().to_string(),
            "http://other:9"
        );
        assert_eq!(
            AgentEgress::new().admit(&"http://other:9/".parse().unwrap()),
            Err(Reason::NotAllowed)
        );
    }

    #[tokio::test]
    async fn the_connect_time_check_refuses_the_brokers_addresses_and_records_them() {
        let mut egress = AgentEgress::new();
        egress
            .allow("http://*:8080")
            .unwrap()
            .credential_broker("http://localhost:8080/api")
            .unwrap();
        let vet = egress.vet();
        let uri: Uri = "http://2130706433:8080/token".parse().unwrap();
        let refused = vet(&uri, &[addr("127.0.0.1:8080")]).await.unwrap_err();
        assert!(refused.why.contains("the credential broker"), "{refused:?}");
        // To the agent, the broker looks like a closed port.
        assert!(refused.as_closed);
        // One refused address refuses the request.
        let mixed = [
            addr("127.0.0.1:8081"),
            addr("[::ffff:169.254.169.254]:8081"),
        ];
        let refused = vet(&uri, &mixed).await.unwrap_err();
        assert!(refused.why.contains("link-local"), "{refused:?}");
        assert!(!refused.as_closed);
        assert_eq!(vet(&uri, &[addr("127.0.0.1:8081")]).await, Ok(()));
        let refusals = egress.refusals().recent();
        let targets: Vec<&str> = refusals.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(
            targets,
            ["http://2130706433:8080", "http://2130706433:8080"]
        );
        assert_eq!(refusals[0].address, Some(addr("127.0.0.1:8080")));
        assert_eq!(refusals[0].reason, Reason::CredentialBroker);
        assert_eq!(refusals[1].reason, Reason::LinkLocal);
    }

    #[test]
    fn every_metadata_address_is_refused_in_every_form_unless_allowed() {
        // IPv4 ones also IPv4-mapped; each on any port.
        let mut forms = Vec::new();
        for ip in METADATA_ADDRESSES {
            forms.push(SocketAddr::new(ip, 80));
            if let IpAddr::V4(v4) = ip {
                forms.push(SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), 8080));
            }
        }
        for named in [
            "[fd20:ce::254]:80",
            "[fd00:ec2::23]:80",
            "[fd00:ec2::254]:80",
            "100.100.100.200:80",
            "[::ffff:100.100.100.200]:80",
            "192.0.0.192:80",
            "[::ffff:192.0.0.192]:443",
            "168.63.129.16:32526",
            // The link-local ones: IMDS, ECS, EKS Pod Identity.
            "169.254.169.254:80",
            "169.254.170.2:80",
            "169.254.170.23:80",
        ] {
            forms.push(addr(named));
        }
        for target in &forms {
            assert_eq!(verdict(&[], &target.to_string()), LINK_LOCAL, "{target}");
        }
        // Their neighbours are ordinary addresses.
        for target in [
            "100.100.100.201:80",
            "192.0.0.193:80",
            "[fd20:ce::253]:80",
            "[fd00:ec2::24]:80",
        ] {
            assert_eq!(verdict(&[], target), Verdict::Allow, "{target}");
        }
        // Allowed all together, or one by its literal address and port.
        let all = Vetting {
            broker: &[],
            allow_link_local: true,
            allowed_ips: &[],
            is_local: &|_| false,
        };
        for target in &forms {
            assert_eq!(decide(*target, &all), Verdict::Allow, "{target}");
        }
        let alibaba = [addr("100.100.100.200:80")];
        let one = Vetting {
            allow_link_local: false,
            allowed_ips: &alibaba,
            ..all
        };
        assert_eq!(decide(addr("100.100.100.200:80"), &one), Verdict::Allow);
        assert_eq!(decide(addr("[fd20:ce::254]:80"), &one), LINK_LOCAL);
    }

    #[test]
    fn the_record_of_refusals_stays_the_same_size() {
        let record = Refusals::default();
        let long = format!("http://{}", "a".repeat(4096));
        for i in 0..10_000u64 {
            let reason = match i % 2 {
                0 => Reason::NotAllowed,
                _ => Reason::RequestsInFlight,
            };
            record.refuse(long.clone(), None, reason);
        }
        assert_eq!(record.total(), 10_000);
        assert_eq!(record.count(Reason::NotAllowed), 5_000);
        assert_eq!(record.count(Reason::RequestsInFlight), 5_000);
        assert_eq!(record.count(Reason::LinkLocal), 0);
        let recent = record.recent();
        assert_eq!(recent.len(), REFUSALS_KEPT);
        assert_eq!(recent.last().unwrap().reason, Reason::RequestsInFlight);
        assert_eq!(record.counts().len(), Reason::ALL.len());
    }

    /// A body that sends `first`, then ends when `end` fires (or is dropped).
    struct Gated {
        first: Option<bytes::Bytes>,
        end: tokio::sync::oneshot::Receiver<()>,
    }

    impl hyper::body::Body for Gated {
        type Data = bytes::Bytes;
        type Error = Error;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<bytes::Bytes>, Error>>>
        {
            if let Some(first) = self.first.take() {
                return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(first))));
            }
            std::pin::Pin::new(&mut self.end).poll(cx).map(|_| None)
        }
    }

    fn gated(bytes: usize) -> (WasiBody, tokio::sync::oneshot::Sender<()>) {
        use http_body_util::BodyExt;
        let (done, end) = tokio::sync::oneshot::channel();
        let first = Some(bytes::Bytes::from(vec![0u8; bytes]));
        (Gated { first, end }.boxed_unsync(), done)
    }

    fn whole(bytes: usize) -> WasiBody {
        gated(bytes).0
    }

    /// Wait (without a time limit of its own) until `done` holds.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let wait = async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        // A backstop only, far past any machine's need.
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("never: {what}"));
    }

    #[tokio::test]
    async fn requests_connections_and_body_bytes_are_capped_and_given_back() {
        // A server that accepts and never reads or answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let mut egress = AgentEgress::new();
        egress.allow(&format!("http://127.0.0.1:{port}")).unwrap();
        egress.limits(EgressLimits {
            requests_in_flight: 3,
            connections: 2,
            body_bytes_held: 64 << 10,
            request_body: 1 << 20,
            ..EgressLimits::default()
        });
        let url = format!("http://127.0.0.1:{port}/");
        let in_use = egress.caps.clone();
        let record = egress.refusals();
        let mut send = |body: WasiBody| {
            let request = hyper::Request::post(&url).body(body).unwrap();
            let sent = egress.send_request(request, None, Box::new(async { Ok(()) }));
            tokio::spawn(std::pin::Pin::from(sent))
        };
        let code = |r: std::result::Result<Sent, Error>| match r {
            Ok(_) => "answered".to_string(),
            Err(e) => format!("{e:?}"),
        };

        // Bytes held: a body still being written holds what it sent.
        let (slow, finish) = gated(40 << 10);
        let first = send(slow);
        until("40 KiB held", || in_use.now().2 >= 40 << 10).await;
        let refused = send(whole(30 << 10)).await.unwrap();
        assert_eq!(code(refused), "ConnectionLimitReached");
        // A body over the bytes held is never sent, whatever else is held.
        let refused = send(whole(100 << 10)).await.unwrap();
        assert_eq!(code(refused), "ConnectionLimitReached");
        // The first body ends and is sent (the server never answers); the
        // bytes are given back once written, and another body fits.
        finish.send(()).unwrap();
        until("the first connection", || {
            accepted.load(std::sync::atomic::Ordering::SeqCst) == 1
        })
        .await;
        until("its bytes written", || in_use.now().2 == 0).await;
        let second = send(whole(30 << 10));
        until("two connections", || {
            accepted.load(std::sync::atomic::Ordering::SeqCst) == 2
        })
        .await;
        // Connections: two open, both waiting; a third is refused.
        let refused = send(whole(0)).await.unwrap();
        assert_eq!(code(refused), "ConnectionLimitReached");
        // Requests in flight: a third one (its body never ends), then none.
        let (_stuck, _never) = gated(1);
        let third = send(_stuck);
        until("three in flight", || in_use.now().0 == 3).await;
        let refused = send(whole(0)).await.unwrap();
        assert_eq!(code(refused), "ConnectionLimitReached");
        // Given back when the agent drops its requests.
        for task in [first, second, third] {
            task.abort();
            let _ = task.await;
        }
        until("nothing in flight", || in_use.now().0 == 0).await;
        until("no connection open", || in_use.now().1 == 0).await;
        assert_eq!(record.count(Reason::BodyBytesHeld), 2);
        assert_eq!(record.count(Reason::Connections), 1);
        assert_eq!(record.count(Reason::RequestsInFlight), 1);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// A table resolver: a metadata name, a public test address (never
    /// connected to), a name for the broker and one for loopback.
    fn names() -> Resolver {
        Resolver::table([
            ("metadata.test", IpAddr::from([169, 254, 169, 254])),
            ("public.test", IpAddr::from([192, 0, 2, 10])),
            ("broker.test", IpAddr::from([127, 0, 0, 1])),
            ("loop.test", IpAddr::from([127, 0, 0, 1])),
        ])
        .unwrap()
    }

    /// What `egress` makes of a GET to `url`: the answer's status, or the
    /// error's debug form.
    async fn get(egress: &mut AgentEgress, url: &str) -> String {
        let request = hyper::Request::get(url).body(whole(0)).unwrap();
        let sent = egress.send_request(request, None, Box::new(async { Ok(()) }));
        match std::pin::Pin::from(sent).await {
            Ok((response, _)) => response.status().to_string(),
            Err(e) => format!("{e:?}"),
        }
    }

    /// The error a name off a [`Resolver::table`] fails with, as the
    /// agent sees it.
    async fn not_found() -> String {
        let text = io_not_found().await;
        format!(
            "{:?}",
            Error::DnsError {
                rcode: Some(text),
                info_code: None,
            }
        )
    }

    async fn io_not_found() -> String {
        let failed = names().lookup("absent.test", 80).await;
        failed.unwrap_err().to_string()
    }

    #[tokio::test]
    async fn names_are_decided_by_the_addresses_the_resolver_gives() {
        // Through a proxy on loopback: an allowed name's address is asked
        // of the proxy (which refuses), so nothing past loopback is reached.
        let (proxy, mut heard) = mute_server(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
        let mut egress = AgentEgress::new();
        egress
            .allow("https://*")
            .unwrap()
            .allow("http://*:8080")
            .unwrap()
            .credential_broker("http://broker.test:8080/api")
            .unwrap()
            .resolver(names())
            // The proxy's own name goes through the table too.
            .proxies(
                Proxies::none()
                    .all(&format!("http://loop.test:{}", proxy.port()))
                    .unwrap(),
            );
        let record = egress.refusals();

        // A name the table maps to the metadata address: refused as one,
        // the proxy never asked.
        assert_eq!(
            get(&mut egress, "https://metadata.test/latest").await,
            "HttpRequestDenied"
        );
        let last = record.recent().pop().unwrap();
        assert_eq!(last.reason, Reason::LinkLocal);
        assert_eq!(last.address, Some(addr("169.254.169.254:443")));

        // A name the table maps to a public address: allowed, and the proxy
        // asked for that address, never the name.
        let answer = get(&mut egress, "https://public.test/").await;
        assert!(answer.starts_with("InternalError"), "{answer}");
        let head = heard.recv().await.unwrap();
        assert!(
            head.starts_with("CONNECT 192.0.2.10:443 HTTP/1.1\r\n"),
            "{head}"
        );

        // A name off the table does not resolve: a DNS error, not a refusal.
        let total = record.total();
        assert_eq!(
            get(&mut egress, "https://absent.test/").await,
            not_found().await
        );
        assert_eq!(record.total(), total);

        // The broker's name resolves through the table too: its address is
        // the broker's, refused as a closed port.
        assert_eq!(
            get(&mut egress, "http://127.0.0.1:8080/token").await,
            "ConnectionRefused"
        );
        assert_eq!(
            record.recent().pop().unwrap().reason,
            Reason::CredentialBroker
        );
        // Plain http through the proxy: the name is resolved and vetted
        // before the request is sent to the proxy.
        assert_eq!(
            get(&mut egress, "http://metadata.test:8080/").await,
            "HttpRequestDenied"
        );
        let last = record.recent().pop().unwrap();
        assert_eq!(last.address, Some(addr("169.254.169.254:8080")));
        assert!(
            heard.try_recv().is_err(),
            "only public.test reached the proxy"
        );

        // A broker name off the table: nothing can be told apart from it.
        let mut egress = AgentEgress::new();
        egress
            .allow("https://*")
            .unwrap()
            .credential_broker("http://gone.test:8080/api")
            .unwrap()
            .resolver(names());
        assert_eq!(
            get(&mut egress, "https://public.test/").await,
            "HttpRequestDenied"
        );
        assert_eq!(egress.refusals().count(Reason::BrokerUnresolved), 1);
    }

    #[tokio::test]
    async fn a_direct_connection_goes_where_the_resolver_says() {
        let (server, mut heard) =
            mute_server(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").await;
        let port = server.port();
        let mut egress = AgentEgress::new();
        egress
            .allow(&format!("http://loop.test:{port}"))
            .unwrap()
            .allow("http://metadata.test")
            .unwrap()
            .allow("http://absent.test")
            .unwrap()
            .resolver(names());
        assert_eq!(
            get(&mut egress, &format!("http://LOOP.test.:{port}/x")).await,
            "204 No Content"
        );
        let head = heard.recv().await.unwrap();
        assert!(head.starts_with("GET /x HTTP/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("host: loop.test:{port}\r\n")),
            "{head}"
        );
        assert_eq!(
            get(&mut egress, "http://metadata.test/").await,
            "HttpRequestDenied"
        );
        assert_eq!(egress.refusals().count(Reason::LinkLocal), 1);
        assert_eq!(
            get(&mut egress, "http://absent.test/").await,
            not_found().await
        );
    }

    #[tokio::test]
    async fn a_name_off_the_table_fails_as_the_systems_resolver_words_it() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert_eq!(
            io_not_found().await,
            "failed to lookup address information: Name or service not known"
        );
        let shown = not_found().await;
        assert!(shown.starts_with("DnsError"), "{shown}");
    }

    #[test]
    fn the_agents_timeouts_are_held_under_the_ceiling() {
        let most = Duration::from_secs(300);
        let none = within(None, most);
        assert_eq!(none.connect_timeout, Some(most));
        assert_eq!(none.first_byte_timeout, Some(most));
        assert_eq!(none.between_bytes_timeout, Some(most));
        let asked = RequestOptions {
            connect_timeout: Some(Duration::from_secs(5)),
            first_byte_timeout: Some(Duration::from_secs(86_400)),
            between_bytes_timeout: None,
        };
        let held = within(Some(asked), most);
        assert_eq!(held.connect_timeout, Some(Duration::from_secs(5)));
        assert_eq!(held.first_byte_timeout, Some(most));
        assert_eq!(held.between_bytes_timeout, Some(most));
    }
}
