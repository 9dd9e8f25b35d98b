//! The credential sandbox's HTTP egress policy: only the broker's scheme and
//! authority, or the runtime-access helper's fixed origin (which the client
//! is told to route to the helper's Unix socket). The policy decides; the
//! client (`client.rs`) only sends. An agent's own egress is
//! [`crate::egress`]'s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Uri;
use hyper::body::{Body, Frame};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::outbound::client::{Connections, Sent, Setup, UnixRoute};
use crate::outbound::origin::shown;
use crate::outbound::proxy::Proxies;
use crate::outbound::resolver::Resolver;
use crate::outbound::tls::TrustedRoots;

type ResponseFuture = Box<dyn Future<Output = std::result::Result<Sent, Error>> + Send>;

/// Lets requests through to exactly one `scheme://host:port`; denies and
/// records everything else (another port, another name for the same host, an
/// IP literal of it, another scheme).
pub struct BrokerOnly {
    allowed: Option<(String, String)>,
    /// Origins a host adds on purpose (e.g. Key Vault for a composed consumer).
    extra: Vec<(String, String)>,
    helper: Option<PathBuf>,
    denied: Arc<Mutex<Vec<String>>>,
    traffic: Arc<Traffic>,
    roots: TrustedRoots,
    /// Send through these (never the helper's socket).
    proxies: Proxies,
    /// Look host names up with this.
    resolver: Resolver,
    /// Made on the first request let through.
    connections: Option<Connections>,
}

/// What a sandbox's owner sees of, and may switch in, its policy: how many
/// requests were let through (in all, and per audience), and how many more
/// may go to the broker (or helper) before the rest are held back (an agent
/// spending its mint budget: a call's retries spend it too).
#[derive(Debug)]
pub struct Traffic {
    sent: AtomicU64,
    /// Requests to the broker still let through; [`UNLIMITED`]: any.
    allowance: AtomicU64,
    held_back: AtomicU64,
    /// Requests let through to the broker per audience (read from each
    /// request's body), once [`Traffic::count_by_audience`] asked for them.
    by_audience: Mutex<HashMap<String, u64>>,
    counts_audiences: AtomicBool,
    /// The answers to the current call's requests, for its span.
    pub(crate) requests: crate::outbound::trace::Requests,
}

/// [`Traffic`]'s allowance when nothing is held back.
const UNLIMITED: u64 = u64::MAX;

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            sent: AtomicU64::new(0),
            allowance: AtomicU64::new(UNLIMITED),
            held_back: AtomicU64::new(0),
            by_audience: Mutex::default(),
            counts_audiences: AtomicBool::new(false),
            requests: Default::default(),
        }
    }
}

impl Traffic {
    /// Requests let through to the client so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    /// Count the requests let through to the broker per audience from now
    /// on ([`Traffic::sent_for`]): a shared instance's charges need them; a
    /// sandbox of one agent's does not read its requests' bodies.
    pub(crate) fn count_by_audience(&self) {
        self.counts_audiences.store(true, Ordering::Release);
    }

    /// Requests let through to the broker (or helper) for `audience` so far
    /// (counted only for a shared instance, whose charges need them).
    pub fn sent_for(&self, audience: &str) -> u64 {
        let counts = self.by_audience.lock().unwrap();
        counts.get(audience).copied().unwrap_or(0)
    }

    /// Let at most `requests` more through to the broker or the helper
    /// (`None`: any), holding back the rest: the component sees each held
    /// request denied.
    pub fn allow(&self, requests: Option<u64>) {
        let allowance = requests.map_or(UNLIMITED, |n| n.min(UNLIMITED - 1));
        self.allowance.store(allowance, Ordering::Release);
    }

    /// Deny (`true`) or allow again (`false`) every request to the broker
    /// or the helper: [`Traffic::allow`] with none, or any.
    pub fn hold(&self, held: bool) {
        self.allow(held.then_some(0));
    }

    /// Requests to the broker held back so far (not recorded as denied).
    pub fn held_back(&self) -> u64 {
        self.held_back.load(Ordering::Acquire)
    }

    /// [`Traffic::sent`] and [`Traffic::held_back`] now, for a call's span.
    pub(crate) fn counts(&self) -> crate::outbound::trace::Counts {
        crate::outbound::trace::Counts {
            sent: self.sent(),
            held_back: self.held_back(),
        }
    }

    /// Take one request from the allowance: `false` when none is left.
    fn admit(&self) -> bool {
        self.allowance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| match left {
                UNLIMITED => Some(UNLIMITED),
                0 => None,
                n => Some(n - 1),
            })
            .is_ok()
    }

    /// Count a request for `audience`.
    fn count(&self, audience: String) {
        *self
            .by_audience
            .lock()
            .unwrap()
            .entry(audience)
            .or_insert(0) += 1;
    }
}

/// A broker request's body, passed on as it is, read as it goes by for the
/// audience it asks for (counted once the body ends).
struct AudienceTap {
    body: WasiBody,
    /// The first bytes of the body (a broker request's is a few dozen).
    seen: Vec<u8>,
    traffic: Arc<Traffic>,
    counted: bool,
}

/// How much of a body [`AudienceTap`] reads.
const TAPPED_BYTES: usize = 4096;

impl Body for AudienceTap {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let room = TAPPED_BYTES.saturating_sub(self.seen.len());
                    let take = data.len().min(room);
                    self.seen.extend_from_slice(&data[..take]);
                }
            }
            Poll::Ready(None) if !self.counted => {
                self.counted = true;
                let audience = vd_cred_broker::BrokerRequest::audience_of(&self.seen);
                self.traffic.count(audience.unwrap_or_default());
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // Polled to its end, so that the tap sees it end.
        false
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The origin under which the component reaches the runtime-access helper;
/// the host routes it to the helper's Unix socket.
pub const RUNTIME_ACCESS_URL: &str = "http://runtime-access";

/// The host name of [`RUNTIME_ACCESS_URL`] (`runtime-access`).
pub(crate) fn helper_host() -> &'static str {
    RUNTIME_ACCESS_URL
        .strip_prefix("http://")
        .expect("an http URL")
}

/// `(scheme, host:port)` with the scheme's default port made explicit and the
/// host lower-cased.
fn origin(uri: &Uri) -> Option<(String, String)> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    let port = authority.port_u16().or(match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    })?;
    Some((
        scheme,
        format!("{}:{port}", authority.host().to_ascii_lowercase()),
    ))
}

impl BrokerOnly {
    /// Allow only the origin of the broker base URL `url`.
    pub fn for_url(url: &str) -> Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("broker URL {url:?} is not a URL"))?;
        let Some(allowed) = origin(&uri) else {
            bail!("broker URL {url:?} needs an http(s) scheme and a host");
        };
        Ok(BrokerOnly {
            allowed: Some(allowed),
            extra: Vec::new(),
            helper: None,
            denied: Arc::default(),
            traffic: Arc::default(),
            roots: TrustedRoots::public(),
            proxies: Proxies::none(),
            resolver: Resolver::system(),
            connections: None,
        })
    }

    /// Deny every request.
    pub fn deny_all() -> Self {
        BrokerOnly {
            allowed: None,
            extra: Vec::new(),
            helper: None,
            denied: Arc::default(),
            traffic: Arc::default(),
            roots: TrustedRoots::public(),
            proxies: Proxies::none(),
            resolver: Resolver::system(),
            connections: None,
        }
    }

    /// Allow only [`RUNTIME_ACCESS_URL`], sent over the Unix socket at `socket`.
    pub fn runtime_access(socket: impl Into<PathBuf>) -> Self {
        let allowed = origin(&RUNTIME_ACCESS_URL.parse().expect("valid URL"));
        BrokerOnly {
            allowed,
            extra: Vec::new(),
            helper: Some(socket.into()),
            denied: Arc::default(),
            traffic: Arc::default(),
            roots: TrustedRoots::public(),
            proxies: Proxies::none(),
            resolver: Resolver::system(),
            connections: None,
        }
    }

    /// Also allow the origin of `url` (over TCP), for a component that needs
    /// one more service, such as a composed Key Vault consumer.
    pub fn also_allow(&mut self, url: &str) -> Result<()> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL"))?;
        let Some(extra) = origin(&uri) else {
            bail!("{url:?} needs an http(s) scheme and a host");
        };
        self.extra.push(extra);
        Ok(())
    }

    /// Verify https peers against `roots` (the public web roots by default).
    pub fn trust(&mut self, roots: TrustedRoots) {
        self.roots = roots;
        self.connections = None;
    }

    /// Send requests through `proxies` ([`crate::proxy`]; none by default).
    /// The helper's Unix socket never goes through a proxy.
    pub fn proxies(&mut self, proxies: Proxies) {
        self.proxies = proxies;
        self.connections = None;
    }

    /// Look the broker's host name (and any other origin's, and a proxy's)
    /// up with `resolver` ([`Resolver::system`] by default).
    pub fn resolver(&mut self, resolver: Resolver) {
        self.resolver = resolver;
        self.connections = None;
    }

    /// The denied requests' `scheme://host[:port]` (no user-info), shared
    /// with the sandbox.
    pub fn denied(&self) -> Arc<Mutex<Vec<String>>> {
        self.denied.clone()
    }

    /// The count of requests let through, and the broker's hold switch.
    pub fn traffic(&self) -> Arc<Traffic> {
        self.traffic.clone()
    }

    /// Record denials and traffic in these (a sandbox's, kept across the
    /// instances it replaces) rather than in the policy's own.
    pub fn record_into(&mut self, denied: Arc<Mutex<Vec<String>>>, traffic: Arc<Traffic>) {
        self.denied = denied;
        self.traffic = traffic;
    }
}

impl WasiHttpHooks for BrokerOnly {
    fn send_request(
        &mut self,
        request: hyper::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = std::result::Result<(), Error>> + Send>,
    ) -> ResponseFuture {
        let target = origin(request.uri());
        let to_broker = target.is_some() && target == self.allowed;
        let to_extra = target.as_ref().is_some_and(|t| self.extra.contains(t));
        if to_broker && !self.traffic.admit() {
            self.traffic.held_back.fetch_add(1, Ordering::AcqRel);
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        if !to_broker && !to_extra {
            self.denied.lock().unwrap().push(shown(request.uri()));
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        drop(fut);
        self.traffic.sent.fetch_add(1, Ordering::AcqRel);
        // In helper mode the allowed origin is the helper's, which the
        // client sends over its socket.
        let connections = self.connections.get_or_insert_with(|| {
            let unix = self.helper.clone().map(|socket| UnixRoute {
                host: helper_host().to_string(),
                socket,
            });
            Connections::new(Setup {
                proxies: self.proxies.clone(),
                resolver: self.resolver.clone(),
                ..Setup::credential(&self.roots, unix)
            })
        });
        let watched = crate::outbound::trace::Request::of(&request, &self.traffic.requests);
        let tapped = to_broker && self.traffic.counts_audiences.load(Ordering::Acquire);
        let request = match tapped {
            true => request.map(|body| {
                AudienceTap {
                    body,
                    seen: Vec::new(),
                    traffic: self.traffic.clone(),
                    counted: false,
                }
                .boxed_unsync()
            }),
            false => request,
        };
        Box::new(watched.watch(connections.send(host_first(request), options)))
    }
}

/// `request` with its `Host` header first, as RFC 9110 asks of a user agent
/// (and as `requests` sends it): wasmtime adds it first for a WASI 0.2
/// request and last for a WASI 0.3 one, so that both builds put the same
/// bytes on the wire.
fn host_first<B>(mut request: hyper::Request<B>) -> hyper::Request<B> {
    let headers = request.headers_mut();
    if headers.keys().next() != Some(&hyper::header::HOST)
        && headers.contains_key(hyper::header::HOST)
    {
        // Rebuilt in order: `HeaderMap::remove` would swap the last field
        // into the removed one's place.
        let fields: Vec<_> = headers
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        headers.clear();
        let (host, rest): (Vec<_>, Vec<_>) = fields
            .into_iter()
            .partition(|(name, _)| *name == hyper::header::HOST);
        for (name, value) in host.into_iter().chain(rest) {
            headers.append(name, value);
        }
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_header_goes_first() {
        let names = |fields: &[&str]| {
            let mut request = hyper::Request::builder();
            for name in fields {
                request = request.header(*name, "x");
            }
            let request = host_first(request.body(()).unwrap());
            let names: Vec<String> = request.headers().keys().map(|k| k.to_string()).collect();
            names
        };
        let wire = ["host", "authorization", "content-type", "content-length"];
        // Host last (WASI 0.3), in the middle, or already first (WASI 0.2).
        assert_eq!(
            names(&["authorization", "content-type", "content-length", "host"]),
            wire
        );
        assert_eq!(
            names(&["authorization", "host", "content-type", "content-length"]),
            wire
        );
        assert_eq!(names(&wire), wire);
    }

    #[test]
    fn origins() {
        let o = |s: &str| origin(&s.parse().unwrap());
        assert_eq!(
            o("http://127.0.0.1:8080/a"),
            Some(("http".into(), "127.0.0.1:8080".into()))
        );
        assert_eq!(
            o("http://Localhost/a"),
            Some(("http".into(), "localhost:80".into()))
        );
        assert_eq!(o("https://h"), Some(("https".into(), "h:443".into())));
        assert_eq!(o("/relative"), None);
    }
}
