//! Sending the requests an egress policy lets through: one pooled HTTP/1.1
//! client per sandbox (or agent) that keeps connections alive, over TCP
//! (plain or TLS with the given [`TrustedRoots`]) or a Unix socket (the
//! runtime-access helper's). The client only sends: which origins may be
//! asked for is the policy's decision before [`Connections::send`], and
//! which addresses may be connected to is the policy's [`Vet`], asked at
//! connect time about every address a host name resolved to (the connection
//! then goes only to those addresses: nothing is resolved twice).
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

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
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

use crate::tls::{TrustedRoots, explain};

/// A response and the future that drives its connection, as
/// `WasiHttpHooks::send_request` returns them.
pub(crate) type Sent = (
    hyper::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// How long an idle connection is kept for the next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request body a credential sends (a broker request is a few
/// hundred bytes).
pub(crate) const CREDENTIAL_MAX_REQUEST_BODY: usize = 1024 * 1024;

/// What the policy answers about the addresses a host name resolved to:
/// `Ok` to connect (to those addresses only), `Err(why)` to refuse the
/// connection (the request then fails with `HTTP-request-denied`).
pub(crate) type VetFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

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
            watches: watches.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(1)
            .pool_timer(TokioTimer::new())
            // A request hyper hands back unsent (the reused connection was
            // found closed before the request was taken for writing) goes
            // out once more on another connection; nothing else is re-sent.
            .retry_canceled_requests(true)
            .build(connector);
        Connections {
            client,
            max_request_body: setup.max_request_body,
            watches,
        }
    }

    /// The largest request body sent.
    pub(crate) fn max_request_body(&self) -> usize {
        self.max_request_body
    }

    /// Send `request` (already allowed by the policy), honouring the
    /// wasi:http timeouts in `options`.
    pub(crate) fn send(
        &self,
        request: hyper::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> impl Future<Output = Result<Sent, Error>> + Send + 'static {
        let client = self.client.clone();
        let max_request_body = self.max_request_body;
        let watches = self.watches.clone();
        async move {
            let timeouts = Timeouts::from(options);
            let (parts, body) = request.into_parts();
            let body = collect_body(body, max_request_body).await?;
            let mut request = hyper::Request::from_parts(parts, Full::new(body));
            let captured = capture_connection(&mut request);
            // No request on a connection the peer has closed.
            watches.retire_closed();
            let response = tokio::time::timeout(timeouts.head, client.request(request)).await;
            Watches::captured(captured);
            let response = response
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(from_client_error)?;
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

/// A request body, whole (`HTTP-request-body-size` past `max` bytes).
pub(crate) async fn collect_body(body: WasiBody, max: usize) -> Result<Bytes, Error> {
    Ok(Limited::new(body, max)
        .collect()
        .await
        .map_err(|e| match e.downcast::<Error>() {
            Ok(e) => *e,
            Err(_) => Error::HttpRequestBodySize(None),
        })?
        .to_bytes())
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
fn from_client_error(e: hyper_util::client::legacy::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(c) = s.downcast_ref::<ConnectError>() {
            return c.to_wasi();
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
    watches: Watches,
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
            let watches = this.watches.clone();
            let stream = this.connect(uri).await?;
            Ok(TokioIo::new(watches.watch(stream)))
        })
    }
}

impl Connector {
    async fn connect(self, uri: Uri) -> Result<Stream, ConnectError> {
        let host = uri.host().ok_or(ConnectError::NoHost)?;
        let https = uri.scheme_str() == Some("https");
        if let Some(route) = &self.unix
            && !https
            && route.host == host
        {
            let stream = UnixStream::connect(&route.socket)
                .await
                .map_err(ConnectError::Io)?;
            return Ok(Stream::Unix(stream));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let mapped: Vec<SocketAddr> = self
            .connect_to
            .iter()
            .filter(|((h, p), _)| h == host && *p == port)
            .map(|(_, addr)| *addr)
            .collect();
        let addrs: Vec<SocketAddr> = match mapped.is_empty() {
            false => mapped,
            true => tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
                .await
                .map_err(ConnectError::Dns)?
                .collect(),
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
            return Ok(Stream::Tcp(stream));
        }
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
            .map_err(|_| ConnectError::NoHost)?;
        let stream = TlsConnector::from(self.roots.client_config())
            .connect(name, stream)
            .await
            .map_err(ConnectError::Tls)?;
        Ok(Stream::Tls(Box::new(stream)))
    }
}

/// Why a connection could not be opened.
#[derive(Debug)]
enum ConnectError {
    NoHost,
    Dns(std::io::Error),
    /// The policy refused the addresses (why).
    Refused(String),
    Io(std::io::Error),
    Tls(std::io::Error),
}

impl ConnectError {
    fn to_wasi(&self) -> Error {
        match self {
            ConnectError::NoHost => Error::HttpRequestUriInvalid,
            ConnectError::Dns(e) => Error::DnsError {
                rcode: Some(e.to_string()),
                info_code: None,
            },
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
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::NoHost => write!(f, "the URL has no usable host"),
            ConnectError::Dns(e) => write!(f, "the host name did not resolve: {e}"),
            ConnectError::Refused(why) => write!(f, "the egress policy refused: {why}"),
            ConnectError::Io(e) => write!(f, "connecting failed: {e}"),
            ConnectError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
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

/// Which [`Watch`] a pooled connection is (its `Connected` extra).
#[derive(Clone)]
struct WatchOf(Weak<Watch>);

/// The open connections of one client.
#[derive(Clone, Default)]
struct Watches(Arc<Mutex<Vec<Weak<Watch>>>>);

impl Watches {
    /// `stream`, watched.
    fn watch(&self, stream: Stream) -> Watched {
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
        Watched { stream, watch }
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
}

impl Connection for Watched {
    fn connected(&self) -> Connected {
        match &self.watch {
            Some(watch) => Connected::new().extra(WatchOf(Arc::downgrade(watch))),
            None => Connected::new(),
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
