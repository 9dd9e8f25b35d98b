//! Sending the requests an egress policy lets through: one pooled HTTP/1.1
//! client per sandbox (or agent) that keeps connections alive, over TCP
//! (plain or TLS with the given [`TrustedRoots`]) or a Unix socket (the
//! runtime-access helper's). The client only sends: which origins may be
//! asked for is the policy's decision before [`Connections::send`], and
//! which addresses may be connected to is the policy's [`Vet`], asked at
//! connect time about every address a host name resolved to (the connection
//! then goes only to those addresses: nothing is resolved twice). Host names
//! (the destination's, a proxy's) are looked up by the setup's [`Resolver`].
//!
//! A credential makes one request at a time, so a sandbox keeps at most one
//! idle connection per origin, for [`IDLE_TIMEOUT`]. A connection the peer
//! closed while idle is dropped once its driver notices, and before every
//! request the client also looks at each idle connection's socket itself
//! (a non-consuming peek, which does not wait for the async runtime to
//! notice): one the peer closed (or sent bytes nobody asked for, such as a
//! TLS close_notify) is not reused. A request is sent once more, at once,
//! on a fresh connection only when it provably never left: hyper handed it
//! back unsent, because the reused connection was found closed before the
//! request was taken for writing (hyper-util's `retry_canceled_requests`).
//! So a broker's idle timeout does not become an error or a backoff for the
//! caller, and a request the peer may have read (it closed before answering,
//! or answered with a malformed head) is never sent twice behind the
//! caller's back: the error goes to the component, whose retry policy
//! decides and counts it as an attempt. (A close that crosses the request
//! on the wire is such an error too.)
//!
//! **Proxies.** When the setup's [`Proxies`] name a proxy for a request
//! (decided as Python's `requests` decides, [`crate::proxy`], on the URI as
//! sent), an https request goes through a tunnel (`CONNECT host:port` to
//! the proxy, a 2xx answer, then TLS to the destination's name over it,
//! verified as ever) and an http request is sent to the proxy in absolute
//! form; both carry `Proxy-Authorization` when the proxy URL has
//! credentials. The host does not resolve the destination then (the proxy
//! does), except for a policy that vets addresses (an agent's): the name
//! is resolved here, its addresses vetted, and the proxy is asked for a
//! vetted address, never the name (which it would resolve again, perhaps
//! elsewhere): `CONNECT 203.0.113.7:443` (each vetted address in turn
//! while the proxy answers 502, 503 or 504), TLS still to the name; for
//! plain http, each request is vetted and sent as
//! `GET http://203.0.113.7/path` (the first address) with `Host:` the name
//! (should `NO_PROXY` list that address, it is then connected to
//! directly). A name that does not resolve here fails as before. The
//! CONNECT exchange and the TLS handshake (direct or through a tunnel)
//! must end within [`SETUP_TIMEOUT`], so a proxy or server that accepts and
//! never answers cannot hold a connection attempt forever (hyper's pool
//! lets one run on in the background when an idle connection came first).
//! The runtime-access helper's Unix socket (its host name in any case) and
//! a `connect_to` override never go through a proxy: an override says
//! where the host name is, so it wins.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{
    CaptureConnection, Connected, Connection, capture_connection,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::outbound::caps::{Caps, Limit, Reservation, Slot, held_bytes};
use crate::outbound::proxy::{Proxies, ProxyUrl};
use crate::outbound::resolver::Resolver;
use crate::outbound::tls::{TrustedRoots, explain};
use crate::outbound::tunnel::{Tunnel, refused_by, to_proxy, tunnel};

/// A response and the future that drives its connection, as
/// `WasiHttpHooks::send_request` returns them.
pub(crate) type Sent = (
    hyper::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// How long an idle connection is kept for the next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long setting up a connection past its TCP connect may take: the
/// CONNECT exchange with a proxy (with the connection to the proxy) and the
/// TLS handshake. A fixed bound, besides the request's own timeouts: hyper's
/// pool lets a connection attempt run on in the background once the
/// request it was started for got an idle connection instead.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request body a credential sends (a broker request is a few
/// hundred bytes).
pub(crate) const CREDENTIAL_MAX_REQUEST_BODY: usize = 1024 * 1024;

/// What the policy answers about the addresses a host name resolved to:
/// `Ok` to connect (to those addresses only), `Err` to refuse the
/// connection (the request then fails with `HTTP-request-denied`, or
/// `connection-refused` when the refusal is to look like a closed port).
pub(crate) type VetFuture = Pin<Box<dyn Future<Output = Result<(), VetRefusal>> + Send>>;

/// Why a policy refused a connection, and how the refusal looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VetRefusal {
    /// Why (for errors and logs on the host's side).
    pub(crate) why: String,
    /// Fail as a closed port does (`connection-refused`), not as a denial.
    pub(crate) as_closed: bool,
}

/// A policy's connect-time check: the request's URI and every address its
/// host resolved to.
pub(crate) type Vet = Arc<dyn Fn(&Uri, &[SocketAddr]) -> VetFuture + Send + Sync>;

/// A Unix socket that plain-http requests to one host name go to (the
/// runtime-access helper's).
pub(crate) struct UnixRoute {
    /// The host name routed, as in the request's URI (`runtime-access`).
    pub(crate) host: String,
    pub(crate) socket: PathBuf,
}

/// How a [`Connections`] sends.
pub(crate) struct Setup {
    /// Verify https peers against these.
    pub(crate) roots: TrustedRoots,
    /// Route one host name to a Unix socket.
    pub(crate) unix: Option<UnixRoute>,
    /// Ask this about every resolved address before connecting.
    pub(crate) vet: Option<Vet>,
    /// Refuse (`HTTP-request-body-size`) request bodies larger than this.
    pub(crate) max_request_body: usize,
    /// Connect to this address for this (host, port), host normalised;
    /// the TLS name stays the host.
    pub(crate) connect_to: Vec<((String, u16), SocketAddr)>,
    /// Send through these proxies (none by default).
    pub(crate) proxies: Proxies,
    /// Look host names up with this (the system's by default).
    pub(crate) resolver: Resolver,
    /// An agent's counts and limits: connections open, body bytes held.
    pub(crate) caps: Option<Arc<Caps>>,
    /// The errors go to an agent: a proxy's problems are handed to this
    /// (the host's log), and the agent is told only that the host's proxy
    /// failed (never which proxy, or which variable set it).
    pub(crate) withhold: Option<Withhold>,
}

impl Setup {
    /// A credential's: `roots`, no vetting, [`CREDENTIAL_MAX_REQUEST_BODY`].
    pub(crate) fn credential(roots: &TrustedRoots, unix: Option<UnixRoute>) -> Self {
        Setup {
            roots: roots.clone(),
            unix,
            vet: None,
            max_request_body: CREDENTIAL_MAX_REQUEST_BODY,
            connect_to: Vec::new(),
            proxies: Proxies::none(),
            resolver: Resolver::system(),
            caps: None,
            withhold: None,
        }
    }
}

/// Where a problem withheld from an agent goes ([`Setup::withhold`]).
pub(crate) type Withhold = Arc<dyn Fn(&str) + Send + Sync>;

/// The error for a proxy's problem `why`: in full; or, with `withhold`
/// (an agent's request), handed to it and the agent told only that the
/// host's proxy failed.
fn proxy_failure(withhold: Option<&Withhold>, why: String) -> Error {
    match withhold {
        None => Error::InternalError(Some(why)),
        Some(withhold) => {
            withhold(&why);
            Error::InternalError(Some(
                "the host's proxy could not take this request (the host's log says why)".into(),
            ))
        }
    }
}

/// A sandbox's connections (a clone shares the pool).
#[derive(Clone)]
pub(crate) struct Connections {
    client: Client<Connector, Full<Bytes>>,
    max_request_body: usize,
    /// Every open connection, to look at before each request.
    watches: Watches,
    /// The client's connector, asked which requests go through a proxy.
    connector: Connector,
}

impl Connections {
    /// A client sending as `setup` says.
    pub(crate) fn new(setup: Setup) -> Self {
        let watches = Watches::default();
        let connector = Connector {
            roots: setup.roots,
            unix: setup.unix.map(Arc::new),
            vet: setup.vet,
            connect_to: Arc::new(setup.connect_to),
            proxies: Arc::new(setup.proxies),
            resolver: setup.resolver,
            watches: watches.clone(),
            setup_timeout: SETUP_TIMEOUT,
            caps: setup.caps,
            withhold: setup.withhold,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(1)
            .pool_timer(TokioTimer::new())
            // A request hyper hands back unsent (the reused connection was
            // found closed before the request was taken for writing) goes
            // out once more on another connection; nothing else is re-sent.
            .retry_canceled_requests(true)
            .build(connector.clone());
        Connections {
            client,
            max_request_body: setup.max_request_body,
            watches,
            connector,
        }
    }

    /// A request body, whole, counted against the agent's body bytes held
    /// (`HTTP-request-body-size` past the largest body,
    /// `connection-limit-reached` past the bytes held).
    pub(crate) async fn collect(&self, body: WasiBody, target: &str) -> Result<Bytes, Error> {
        let reservation = self.connector.caps.as_ref().map(|caps| caps.reservation());
        collect_body(body, self.max_request_body, reservation, target).await
    }

    /// Send `request` (already allowed by the policy), honouring the
    /// wasi:http timeouts in `options`: its body collected first
    /// ([`Connections::collect`]).
    pub(crate) fn send(
        &self,
        request: hyper::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> impl Future<Output = Result<Sent, Error>> + Send + 'static {
        let this = self.clone();
        async move {
            let target = crate::outbound::origin::shown(request.uri());
            let (parts, body) = request.into_parts();
            let body = this.collect(body, &target).await?;
            this.send_collected(parts, body, options).await
        }
    }

    /// Send a request whose body is collected already (from
    /// [`Connections::collect`]: an agent's stays counted while any copy
    /// of it lives). Should the returned future be dropped, or time out,
    /// before the answer's head, the connection is shut: one whose request
    /// body is still being written (to a peer that reads none of it) would
    /// otherwise stay open for ever.
    pub(crate) fn send_collected(
        &self,
        mut parts: hyper::http::request::Parts,
        body: Bytes,
        options: Option<RequestOptions>,
    ) -> impl Future<Output = Result<Sent, Error>> + Send + 'static {
        let client = self.client.clone();
        let watches = self.watches.clone();
        let connector = self.connector.clone();
        // A plain-http request through a proxy goes to it in absolute form,
        // with the proxy's credentials (never the sender's).
        let mut proxy = match parts.uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => self.connector.proxy_for(&parts.uri),
            _ => None,
        }
        .cloned();
        let target = crate::outbound::origin::shown(&parts.uri);
        async move {
            let timeouts = Timeouts::from(options);
            let deadline = tokio::time::Instant::now() + timeouts.head;
            if proxy.is_some() && connector.vet.is_some() {
                // Vetted here, and the proxy asked for the address vetted.
                tokio::time::timeout_at(deadline, connector.pin(&mut parts))
                    .await
                    .map_err(|_| Error::ConnectionTimeout)?
                    .map_err(|e| e.to_wasi(connector.withhold.as_ref()))?;
                proxy = connector.proxy_for(&parts.uri).cloned();
            }
            if let Some(proxy) = &proxy {
                parts.headers.remove(hyper::header::PROXY_AUTHORIZATION);
                if let Some(credentials) = proxy.credentials() {
                    let mut value = hyper::header::HeaderValue::from_str(
                        credentials.header_value(),
                    )
                    .map_err(|_| {
                        connector.proxy_error(format!(
                            "the proxy {proxy}'s credentials do not fit in a header"
                        ))
                    })?;
                    value.set_sensitive(true);
                    parts
                        .headers
                        .insert(hyper::header::PROXY_AUTHORIZATION, value);
                }
            }
            let mut request = hyper::Request::from_parts(parts, Full::new(body));
            let mut pending = Pending(Some(capture_connection(&mut request)));
            // No request on a connection the peer has closed.
            watches.retire_closed();
            // Timed out, `pending` shuts the connection as it goes (it may
            // be stuck writing the body).
            let response = tokio::time::timeout_at(deadline, client.request(request))
                .await
                .map_err(|_| Error::ConnectionTimeout)?;
            Watches::captured(pending.0.take().expect("taken once"));
            let response =
                response.map_err(|e| from_client_error(e, connector.withhold.as_ref()))?;
            // Only a proxy asks for proxy credentials: say so, rather than
            // hand the component a status it would blame on the broker.
            if let Some(proxy) = &proxy
                && response.status() == hyper::StatusCode::PROXY_AUTHENTICATION_REQUIRED
            {
                return Err(connector.proxy_error(refused_by(
                    proxy,
                    &format!("the request to {target}"),
                    407,
                    "Proxy Authentication Required",
                )));
            }
            let response = response.map(|incoming| {
                BetweenBytes {
                    incoming,
                    limit: timeouts.between_bytes,
                    timer: None,
                }
                .boxed_unsync()
            });
            // The pool drives the connection; nothing is left to await.
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        }
    }
}

/// A request body, whole (`HTTP-request-body-size` past `max` bytes);
/// with a `reservation`, every byte of the buffer it is collected in is
/// counted against the agent's body bytes held before it is allocated
/// (`connection-limit-reached` past the limit, the refusal recorded), and
/// stays counted while the bytes live.
async fn collect_body(
    body: WasiBody,
    max: usize,
    mut reservation: Option<Reservation>,
    target: &str,
) -> Result<Bytes, Error> {
    let mut body = std::pin::pin!(body);
    let mut data: Vec<u8> = Vec::new();
    // Bytes counted before they are allocated.
    let mut count = |bytes: usize| {
        if let Some(r) = &mut reservation
            && !r.grow(bytes)
        {
            r.refuse(target);
            return Err(Error::ConnectionLimitReached);
        }
        Ok(())
    };
    // A body of known length is counted, and allocated, once and exactly.
    if let Some(length) = body.size_hint().exact()
        && let Ok(length) = usize::try_from(length)
        && length <= max
    {
        count(length)?;
        data.reserve_exact(length);
    }
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let Ok(chunk) = frame?.into_data() else {
            continue; // trailers: not sent
        };
        let len = data.len() + chunk.len();
        if len > max {
            return Err(Error::HttpRequestBodySize(None));
        }
        if len > data.capacity() {
            // Grown as a Vec grows (doubling).
            let want = len.max(data.capacity() * 2).min(max);
            count(want - data.capacity())?;
            data.reserve_exact(want - data.len());
        }
        data.extend_from_slice(&chunk);
    }
    Ok(match reservation {
        Some(mut reservation) => {
            // What the doubling left spare is given back.
            let before = data.capacity();
            data.shrink_to_fit();
            reservation.release(before - data.capacity());
            held_bytes(data, reservation)
        }
        None => Bytes::from(data),
    })
}

/// The wasi:http timeouts: connecting and the answer's head share one bound
/// (the larger of the two), then each body chunk gets `between_bytes`.
struct Timeouts {
    head: Duration,
    between_bytes: Duration,
}

impl From<Option<RequestOptions>> for Timeouts {
    fn from(options: Option<RequestOptions>) -> Self {
        // wasmtime's defaults when the guest sets none.
        let default = Duration::from_secs(600);
        let o = options.unwrap_or_default();
        Timeouts {
            head: o
                .connect_timeout
                .unwrap_or(default)
                .max(o.first_byte_timeout.unwrap_or(default)),
            between_bytes: o.between_bytes_timeout.unwrap_or(default),
        }
    }
}

/// The wasi:http error for a failed request: the connector's own when it
/// failed to connect, else hyper's.
fn from_client_error(e: hyper_util::client::legacy::Error, withhold: Option<&Withhold>) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(c) = s.downcast_ref::<ConnectError>() {
            return c.to_wasi(withhold);
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            return from_hyper(h);
        }
        source = s.source();
    }
    Error::InternalError(Some(e.to_string()))
}

/// Opens connections for the pool.
#[derive(Clone)]
struct Connector {
    roots: TrustedRoots,
    unix: Option<Arc<UnixRoute>>,
    vet: Option<Vet>,
    connect_to: Arc<Vec<((String, u16), SocketAddr)>>,
    proxies: Arc<Proxies>,
    resolver: Resolver,
    watches: Watches,
    /// [`SETUP_TIMEOUT`] (shorter in tests).
    setup_timeout: Duration,
    /// An agent's counts: each connection takes a slot while open.
    caps: Option<Arc<Caps>>,
    /// Errors go to an agent ([`Setup::withhold`]).
    withhold: Option<Withhold>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Watched>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // Counted before connecting, given back when the connection
            // is dropped.
            let slot = match &this.caps {
                Some(caps) => Some(
                    caps.take(Limit::Connections, &crate::outbound::origin::shown(&uri))
                        .ok_or(ConnectError::Limit)?,
                ),
                None => None,
            };
            let watches = this.watches.clone();
            let (stream, proxied) = this.connect(uri).await?;
            Ok(TokioIo::new(watches.watch(stream, proxied, slot)))
        })
    }
}

impl Connector {
    /// The error for a proxy's problem `why`: in full for a credential's
    /// request; for an agent's, told to the host's log, and the agent told
    /// only that the host's proxy failed.
    fn proxy_error(&self, why: String) -> Error {
        proxy_failure(self.withhold.as_ref(), why)
    }

    /// Whether `uri` is routed to the helper's Unix socket: its host name
    /// in any case, as the policy compares origins.
    fn unix_route(&self, uri: &Uri) -> Option<&UnixRoute> {
        let route = self.unix.as_deref()?;
        let https = uri
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"));
        let host = uri
            .host()
            .is_some_and(|h| h.eq_ignore_ascii_case(&route.host));
        (!https && host).then_some(route)
    }

    /// The `connect_to` addresses for `host:port`.
    fn mapped(&self, host: &str, port: u16) -> Vec<SocketAddr> {
        self.connect_to
            .iter()
            .filter(|((h, p), _)| h == host && *p == port)
            .map(|(_, addr)| *addr)
            .collect()
    }

    /// The proxy a request to `uri` goes through: never for the helper's
    /// socket or a host name `connect_to` sends elsewhere.
    fn proxy_for(&self, uri: &Uri) -> Option<&ProxyUrl> {
        if self.proxies.is_empty() || self.unix_route(uri).is_some() {
            return None;
        }
        let (scheme, host) = (uri.scheme_str()?, uri.host()?);
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        if !self.mapped(host, port).is_empty() {
            return None;
        }
        self.proxies.proxy_for(scheme, host, uri.port_u16())
    }

    /// A connection for `uri`, and whether it is to a proxy that is sent
    /// requests in absolute form (plain http through a proxy).
    async fn connect(self, uri: Uri) -> Result<(Stream, bool), ConnectError> {
        let host = uri.host().ok_or(ConnectError::NoHost)?;
        let https = uri.scheme_str() == Some("https");
        if let Some(route) = self.unix_route(&uri) {
            let stream = UnixStream::connect(&route.socket)
                .await
                .map_err(ConnectError::Io)?;
            return Ok((Stream::Unix(stream), false));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if let Some(proxy) = self.proxy_for(&uri) {
            return self.via_proxy(proxy, &uri, host, port, https).await;
        }
        let mapped = self.mapped(host, port);
        let addrs: Vec<SocketAddr> = match mapped.is_empty() {
            false => mapped,
            true => self.lookup(host, port).await?,
        };
        if let Some(vet) = &self.vet {
            vet(&uri, &addrs).await.map_err(ConnectError::Refused)?;
        }
        // Only the addresses vetted above: no second resolution.
        let stream = TcpStream::connect(&addrs[..])
            .await
            .map_err(ConnectError::Io)?;
        let _ = stream.set_nodelay(true);
        if !https {
            return Ok((Stream::Tcp(stream), false));
        }
        let tls = tokio::time::timeout(self.setup_timeout, self.tls(host, stream)).await;
        let tls = tls.map_err(|_| {
            ConnectError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no TLS handshake from {host}:{port} within {} s",
                    self.setup_timeout.as_secs_f64()
                ),
            ))
        })?;
        Ok((tls?, false))
    }

    /// For a plain-http request sent through a proxy under a policy that
    /// vets addresses: resolve the request's host here, vet its addresses,
    /// and rewrite the request's target to the first of them (the proxy is
    /// sent `GET http://203.0.113.7/path`, not the name it would resolve
    /// again), `Host` set to the name (the port only if not 80).
    async fn pin(&self, parts: &mut hyper::http::request::Parts) -> Result<(), ConnectError> {
        let vet = self.vet.as_ref().ok_or(ConnectError::NoHost)?;
        let uri = parts.uri.clone();
        let host = uri.host().ok_or(ConnectError::NoHost)?;
        let port = uri.port_u16().unwrap_or(80);
        let addrs = self.lookup(host, port).await?;
        vet(&uri, &addrs).await.map_err(ConnectError::Refused)?;
        let ip = match addrs[0].ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let authority = match uri.port() {
            Some(_) => format!("{ip}:{port}"),
            None => ip,
        };
        let mut pinned = uri.clone().into_parts();
        pinned.authority = Some(authority.parse().map_err(|_| ConnectError::NoHost)?);
        parts.uri = Uri::from_parts(pinned).map_err(|_| ConnectError::NoHost)?;
        let named = match uri.port_u16() {
            Some(p) if p != 80 => format!("{host}:{p}"),
            _ => host.to_string(),
        };
        let named =
            hyper::header::HeaderValue::from_str(&named).map_err(|_| ConnectError::NoHost)?;
        parts.headers.insert(hyper::header::HOST, named);
        Ok(())
    }

    /// The addresses `host` (IPv6 in brackets) resolves to for `port`, by
    /// the setup's resolver.
    async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ConnectError> {
        self.resolver
            .lookup(host, port)
            .await
            .map_err(ConnectError::Dns)
    }

    /// TLS to `host` (its name verified) over `stream`.
    async fn tls(&self, host: &str, stream: TcpStream) -> Result<Stream, ConnectError> {
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
            .map_err(|_| ConnectError::NoHost)?;
        let config = self
            .roots
            .client_config()
            .map_err(|e| ConnectError::Tls(std::io::Error::other(e)))?;
        let stream = TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(ConnectError::Tls)?;
        Ok(Stream::Tls(Box::new(stream)))
    }

    /// A connection to `host:port` through `proxy`: to the proxy itself for
    /// plain http, through a CONNECT tunnel for https. Under a policy that
    /// vets addresses, the tunnel goes to an address vetted here (each in
    /// turn while the proxy says it cannot reach one), not to the name.
    async fn via_proxy(
        &self,
        proxy: &ProxyUrl,
        uri: &Uri,
        host: &str,
        port: u16,
        https: bool,
    ) -> Result<(Stream, bool), ConnectError> {
        proxy.address().map_err(ConnectError::Proxy)?;
        let mut targets = vec![format!("{host}:{port}")];
        if let Some(vet) = &self.vet {
            // The policy decides on the destination's own addresses, as
            // resolved here (for plain http, `send` pinned the request to
            // one already: its host is that address).
            let addrs = self.lookup(host, port).await?;
            vet(uri, &addrs).await.map_err(ConnectError::Refused)?;
            targets = addrs
                .iter()
                .map(|a| match a {
                    SocketAddr::V4(a) => a.to_string(),
                    SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
                })
                .collect();
        }
        let setup = async {
            if !https {
                let stream = to_proxy(proxy, &self.resolver)
                    .await
                    .map_err(ConnectError::Proxy)?;
                return Ok((Stream::Tcp(stream), true));
            }
            let mut refused = None;
            for target in &targets {
                let mut stream = to_proxy(proxy, &self.resolver)
                    .await
                    .map_err(ConnectError::Proxy)?;
                let answer = tunnel(&mut stream, proxy, target).await;
                match answer.map_err(ConnectError::Proxy)? {
                    Tunnel::Open => return Ok((self.tls(host, stream).await?, false)),
                    Tunnel::Refused(code, reason) => {
                        let why = refused_by(proxy, &format!("CONNECT {target}"), code, &reason);
                        refused = Some(ConnectError::Proxy(why));
                        // Another address only when the proxy could not
                        // reach this one.
                        if !(502..=504).contains(&code) {
                            break;
                        }
                    }
                }
            }
            Err(refused.unwrap_or(ConnectError::NoHost))
        };
        tokio::time::timeout(self.setup_timeout, setup)
            .await
            .map_err(|_| {
                ConnectError::Proxy(format!(
                    "setting up the connection to {host}:{port} through the proxy {proxy} took \
                     over {} s (no answer to CONNECT, or no TLS handshake through the tunnel): \
                     is {} a working proxy?",
                    self.setup_timeout.as_secs_f64(),
                    proxy.configured_in()
                ))
            })?
    }
}

/// Why a connection could not be opened.
#[derive(Debug)]
enum ConnectError {
    NoHost,
    Dns(std::io::Error),
    /// The policy refused the addresses (why).
    Refused(VetRefusal),
    Io(std::io::Error),
    Tls(std::io::Error),
    /// The proxy could not be used, or refused (why, naming it).
    Proxy(String),
    /// The agent has as many connections open as its limit allows.
    Limit,
}

impl ConnectError {
    /// The wasi:http error; with `withhold`, a proxy's problem handed to
    /// it and left unnamed.
    fn to_wasi(&self, withhold: Option<&Withhold>) -> Error {
        match self {
            ConnectError::NoHost => Error::HttpRequestUriInvalid,
            ConnectError::Dns(e) => Error::DnsError {
                rcode: Some(e.to_string()),
                info_code: None,
            },
            // The credential's broker looks like a closed port to an agent,
            // as any address with nothing listening does: which addresses
            // are the broker's is not the agent's to learn.
            ConnectError::Refused(refused) if refused.as_closed => Error::ConnectionRefused,
            ConnectError::Refused(_) => Error::HttpRequestDenied,
            ConnectError::Io(e) => match e.kind() {
                std::io::ErrorKind::TimedOut => Error::ConnectionTimeout,
                _ => Error::ConnectionRefused,
            },
            // A certificate problem is named (untrusted, wrong name,
            // expired, ...), which wasi:http's payload-less
            // `tls-certificate-error` cannot carry.
            ConnectError::Tls(e) => match explain(e) {
                Some(why) => Error::InternalError(Some(why)),
                None => Error::TlsProtocolError,
            },
            ConnectError::Proxy(why) => proxy_failure(withhold, why.clone()),
            ConnectError::Limit => Error::ConnectionLimitReached,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::NoHost => write!(f, "the URL has no usable host"),
            ConnectError::Dns(e) => write!(f, "the host name did not resolve: {e}"),
            ConnectError::Refused(refused) => {
                write!(f, "the egress policy refused: {}", refused.why)
            }
            ConnectError::Io(e) => write!(f, "connecting failed: {e}"),
            ConnectError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            ConnectError::Proxy(why) => f.write_str(why),
            ConnectError::Limit => f.write_str("the agent's connections are at their limit"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// One pooled connection's stream.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Unix(UnixStream),
}

impl Stream {
    /// A second descriptor of the socket, only ever peeked at. (A std
    /// `TcpStream` around a Unix socket's descriptor too: `peek` is a
    /// `recv(MSG_PEEK)`, the same for both.)
    fn peeker(&self) -> Option<std::net::TcpStream> {
        let fd = match self {
            Stream::Tcp(s) => s.as_fd().try_clone_to_owned(),
            Stream::Tls(s) => s.get_ref().0.as_fd().try_clone_to_owned(),
            Stream::Unix(s) => s.as_fd().try_clone_to_owned(),
        };
        let peeker = std::net::TcpStream::from(fd.ok()?);
        peeker.set_nonblocking(true).ok()?;
        Some(peeker)
    }
}

/// What the client sees of one open connection between requests.
struct Watch {
    peeker: std::net::TcpStream,
    /// The pool's record of this connection (once a request went out on
    /// it), through which it is kept from being reused.
    captured: Mutex<Option<CaptureConnection>>,
    /// The last I/O was a read that returned bytes, with no write since.
    idle: AtomicBool,
}

impl Watch {
    /// Whether the peer has closed the connection (or sent bytes on an
    /// idle one, which nothing asked for): looked at on the socket itself,
    /// not through the async runtime's readiness, which may lag.
    fn peer_closed(&self) -> bool {
        match self.peeker.peek(&mut [0u8; 1]) {
            Ok(0) => true,
            Ok(_) => self.idle.load(Ordering::Acquire),
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }

    /// Keep the pool from handing this connection out again.
    fn retire(&self) {
        if let Some(captured) = &*self.captured.lock().unwrap()
            && let Some(connected) = captured.connection_metadata().as_ref()
        {
            connected.poison();
        }
    }
}

/// A request waiting for its answer's head: if dropped meanwhile, its
/// connection is shut (see [`Connections::send_collected`]).
struct Pending(Option<CaptureConnection>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(captured) = &self.0 {
            Watches::shut(captured);
        }
    }
}

/// Which [`Watch`] a pooled connection is (its `Connected` extra).
#[derive(Clone)]
struct WatchOf(Weak<Watch>);

/// The open connections of one client.
#[derive(Clone, Default)]
struct Watches(Arc<Mutex<Vec<Weak<Watch>>>>);

impl Watches {
    /// `stream`, watched; `proxied` when requests on it go to a proxy in
    /// absolute form; `slot` counts it among the agent's connections.
    fn watch(&self, stream: Stream, proxied: bool, slot: Option<Slot>) -> Watched {
        let watch = stream.peeker().map(|peeker| {
            Arc::new(Watch {
                peeker,
                captured: Mutex::default(),
                idle: AtomicBool::new(false),
            })
        });
        if let Some(watch) = &watch {
            self.0.lock().unwrap().push(Arc::downgrade(watch));
        }
        Watched {
            stream,
            watch,
            proxied,
            _slot: slot,
        }
    }

    /// Shut the connection a request went out on (if it got one): both
    /// ways, on the socket itself, so that its driver ends (and with it
    /// the connection's slot and descriptors) whatever it was waiting for.
    fn shut(captured: &CaptureConnection) {
        let mut extras = hyper::http::Extensions::new();
        match captured.connection_metadata().as_ref() {
            Some(connected) => {
                connected.poison();
                connected.get_extras(&mut extras);
            }
            None => return,
        }
        if let Some(watch) = extras.get::<WatchOf>().and_then(|w| w.0.upgrade()) {
            let _ = watch.peeker.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Remember the pool's record of the connection a request went out on.
    fn captured(captured: CaptureConnection) {
        let mut extras = hyper::http::Extensions::new();
        match captured.connection_metadata().as_ref() {
            Some(connected) => connected.get_extras(&mut extras),
            None => return,
        }
        if let Some(watch) = extras.get::<WatchOf>().and_then(|w| w.0.upgrade()) {
            *watch.captured.lock().unwrap() = Some(captured);
        }
    }

    /// Keep the pool from handing out a connection the peer has closed;
    /// forget connections that are gone.
    fn retire_closed(&self) {
        self.0
            .lock()
            .unwrap()
            .retain(|watch| match watch.upgrade() {
                Some(watch) if watch.peer_closed() => {
                    watch.retire();
                    false
                }
                Some(_) => true,
                None => false,
            });
    }
}

/// A connection's stream, and what the client watches of it.
struct Watched {
    stream: Stream,
    watch: Option<Arc<Watch>>,
    /// Plain http to a proxy: hyper sends absolute-form request targets.
    proxied: bool,
    /// The agent's connection slot, given back when the connection goes.
    _slot: Option<Slot>,
}

impl Connection for Watched {
    fn connected(&self) -> Connected {
        let connected = Connected::new().proxy(self.proxied);
        match &self.watch {
            Some(watch) => connected.extra(WatchOf(Arc::downgrade(watch))),
            None => connected,
        }
    }
}

macro_rules! each_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.stream {
            Stream::Tcp($s) => $e,
            Stream::Tls($s) => $e,
            Stream::Unix($s) => $e,
        }
    };
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = each_stream!(this, s => Pin::new(s).poll_read(cx, buf));
        if let (Poll::Ready(Ok(())), Some(watch)) = (&read, &this.watch)
            && buf.filled().len() > before
        {
            watch.idle.store(true, Ordering::Release);
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(watch) = &this.watch {
            watch.idle.store(false, Ordering::Release);
        }
        each_stream!(this, s => Pin::new(s).poll_write(cx, buf))
    }

    /// Vectored, so that hyper queues a request body's bytes as they are
    /// (and an agent's stay counted until written) rather than copying
    /// them into a write buffer of its own.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(watch) = &this.watch {
            watch.idle.store(false, Ordering::Release);
        }
        each_stream!(this, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        each_stream!(this, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        each_stream!(this, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// An answer's body that fails with `connection-read-timeout` when no chunk
/// arrives within `limit`.
struct BetweenBytes {
    incoming: Incoming,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for BetweenBytes {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(|e| from_hyper(&e))))
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.incoming.size_hint()
    }
}

/// The wasi:http error for hyper's, while waiting for the answer's head or
/// reading its body.
fn from_hyper(e: &hyper::Error) -> Error {
    if e.is_timeout() {
        Error::ConnectionReadTimeout
    } else if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        Error::ConnectionTerminated
    } else {
        Error::HttpProtocolError
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn connector(
        proxies: Proxies,
        unix: Option<UnixRoute>,
        vet: Option<Vet>,
        setup_timeout: Duration,
    ) -> Connector {
        Connector {
            roots: TrustedRoots::public(),
            unix: unix.map(Arc::new),
            vet,
            connect_to: Arc::new(Vec::new()),
            proxies: Arc::new(proxies),
            // `localhost` without the machine's say.
            resolver: Resolver::table([("localhost", std::net::Ipv4Addr::LOCALHOST.into())])
                .unwrap(),
            watches: Watches::default(),
            setup_timeout,
            caps: None,
            withhold: None,
        }
    }

    /// A server on loopback that reads each connection's request head
    /// (sent on the channel), answers `answer` (if any), then holds the
    /// connection open without a word more. (The egress tests use it too.)
    pub(crate) async fn mute_server(
        answer: &'static [u8],
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (heard, told) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read_u8().await {
                        Ok(b) => head.push(b),
                        Err(_) => break,
                    }
                }
                let _ = heard.send(String::from_utf8_lossy(&head).into_owned());
                let _ = stream.write_all(answer).await;
                held.push(stream);
            }
        });
        (addr, told)
    }

    fn refused(result: Result<(Stream, bool), ConnectError>) -> ConnectError {
        match result {
            Ok(_) => panic!("connected"),
            Err(e) => e,
        }
    }

    #[tokio::test]
    async fn a_proxy_that_never_answers_connect_fails_the_attempt_after_the_bound() {
        let (proxy, mut heard) = mute_server(b"").await;
        let proxies = Proxies::none().https(&format!("http://{proxy}")).unwrap();
        let c = connector(proxies, None, None, Duration::from_millis(200));
        let attempt = c.connect("https://broker.invalid/".parse().unwrap());
        // Unbounded, the attempt would wait for ever (as it would in the
        // background of hyper's pool); 20 s is only a backstop far past
        // the 0.2 s bound.
        let e = refused(
            tokio::time::timeout(Duration::from_secs(20), attempt)
                .await
                .expect("the attempt gave up by itself"),
        );
        assert!(
            e.to_string()
                .contains("through the proxy http://127.0.0.1:")
                && e.to_string().contains("took over 0.2 s"),
            "{e}"
        );
        let head = heard.recv().await.unwrap();
        assert!(
            head.starts_with("CONNECT broker.invalid:443 HTTP/1.1\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn a_server_that_never_answers_the_tls_handshake_fails_the_attempt_after_the_bound() {
        let (server, _heard) = mute_server(b"").await;
        let c = connector(Proxies::none(), None, None, Duration::from_millis(200));
        let attempt = c.connect(format!("https://{server}/").parse().unwrap());
        let e = refused(
            tokio::time::timeout(Duration::from_secs(20), attempt)
                .await
                .expect("the attempt gave up by itself"),
        );
        assert!(matches!(e.to_wasi(None), Error::ConnectionTimeout), "{e}");
        assert!(e.to_string().contains("no TLS handshake"), "{e}");
    }

    #[tokio::test]
    async fn under_a_vetting_policy_the_tunnel_goes_to_the_vetted_address() {
        let (proxy, mut heard) = mute_server(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
        let vetted = Arc::new(Mutex::new(Vec::new()));
        let record = vetted.clone();
        let vet: Vet = Arc::new(move |_: &Uri, addrs: &[SocketAddr]| {
            record.lock().unwrap().extend_from_slice(addrs);
            Box::pin(async { Ok(()) }) as VetFuture
        });
        let proxies = Proxies::none().https(&format!("http://{proxy}")).unwrap();
        let c = connector(proxies, None, Some(vet), SETUP_TIMEOUT);
        for (url, sent) in [
            ("https://[::1]:8443/", "[::1]:8443"),
            ("https://127.0.0.1/", "127.0.0.1:443"),
        ] {
            let e = refused(c.clone().connect(url.parse().unwrap()).await);
            assert!(e.to_string().contains("refused CONNECT"), "{e}");
            let head = heard.recv().await.unwrap();
            assert!(
                head.starts_with(&format!("CONNECT {sent} HTTP/1.1\r\nHost: {sent}\r\n")),
                "{head}"
            );
        }
        // A name: the address it resolved to here, never the name.
        let _ = c
            .clone()
            .connect("https://localhost:8443/".parse().unwrap())
            .await;
        let head = heard.recv().await.unwrap();
        let target = head.split(' ').nth(1).unwrap();
        let addr: SocketAddr = target.parse().expect("an address");
        assert!(vetted.lock().unwrap().contains(&addr), "{head}");
        // A refusing policy: the proxy is not even connected to.
        let no: Vet = Arc::new(|_: &Uri, _: &[SocketAddr]| {
            Box::pin(async {
                Err(VetRefusal {
                    why: "no".to_string(),
                    as_closed: false,
                })
            }) as VetFuture
        });
        let proxies = Proxies::none().https(&format!("http://{proxy}")).unwrap();
        let c = connector(proxies, None, Some(no), SETUP_TIMEOUT);
        let e = refused(c.connect("https://localhost/".parse().unwrap()).await);
        assert!(matches!(e, ConnectError::Refused(_)), "{e}");
        assert!(heard.try_recv().is_err());
    }

    #[tokio::test]
    async fn the_helpers_host_name_goes_to_its_socket_in_any_case_never_to_a_proxy() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("helper.sock");
        let helper = tokio::net::UnixListener::bind(&socket).unwrap();
        let (proxy, mut heard) = mute_server(b"").await;
        let route = UnixRoute {
            host: "runtime-access".to_string(),
            socket,
        };
        let proxies = Proxies::none().all(&format!("http://{proxy}")).unwrap();
        let c = connector(proxies, Some(route), None, SETUP_TIMEOUT);
        for url in [
            "http://runtime-access/v1/x",
            "http://RUNTIME-ACCESS/v1/x",
            "HTTP://Runtime-Access:80/x",
        ] {
            let uri: Uri = url.parse().unwrap();
            assert!(c.proxy_for(&uri).is_none(), "{url}");
            let (stream, proxied) = c.clone().connect(uri).await.unwrap();
            assert!(matches!(stream, Stream::Unix(_)) && !proxied, "{url}");
            helper.accept().await.unwrap();
        }
        // https to that name is not the helper's (and is proxied).
        let https: Uri = "https://RUNTIME-ACCESS/".parse().unwrap();
        assert!(c.unix_route(&https).is_none());
        assert!(c.proxy_for(&https).is_some());
        assert!(heard.try_recv().is_err(), "nothing reached the proxy");
    }
}
