//! Sending the requests the egress policy lets through: one pooled HTTP/1.1
//! client per sandbox that keeps connections alive, over TCP (plain or TLS
//! with the sandbox's [`TrustedRoots`]) or the runtime-access helper's Unix
//! socket.
//!
//! A credential makes one request at a time, so a sandbox keeps at most one
//! idle connection per origin, for [`IDLE_TIMEOUT`]. A connection the peer
//! closed while idle is dropped once its driver notices; a request that
//! fails on a reused connection before any answer (the broker closed it
//! while the request was on its way) is sent once more on a fresh
//! connection, at once, so a broker's idle timeout never becomes an error or
//! a backoff for the caller. A request on a fresh connection is never sent
//! twice: the component's own retry policy decides.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, capture_connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::policy::RUNTIME_ACCESS_URL;
use crate::tls::{TrustedRoots, explain};

/// A response and the future that drives its connection, as
/// `WasiHttpHooks::send_request` returns them.
pub(crate) type Sent = (
    hyper::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// How long an idle connection is kept for the next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request body sent (a broker request is a few hundred bytes).
const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// A sandbox's connections.
pub(crate) struct Connections {
    client: Client<Connector, Full<Bytes>>,
    /// How many connections the connector has opened.
    opened: Arc<AtomicU64>,
}

impl Connections {
    /// A client verifying https peers against `roots`; requests to
    /// [`RUNTIME_ACCESS_URL`] go to the Unix socket `helper` when set.
    pub(crate) fn new(roots: &TrustedRoots, helper: Option<PathBuf>) -> Self {
        let opened = Arc::new(AtomicU64::new(0));
        let connector = Connector {
            roots: roots.clone(),
            helper: helper.map(Arc::new),
            opened: opened.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(1)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Connections { client, opened }
    }

    /// Send `request` (already allowed by the policy), honouring the
    /// wasi:http timeouts in `options`.
    pub(crate) fn send(
        &self,
        request: hyper::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> impl Future<Output = Result<Sent, Error>> + Send + 'static {
        let client = self.client.clone();
        let opened = self.opened.clone();
        async move {
            let timeouts = Timeouts::from(options);
            let (parts, body) = request.into_parts();
            let body = Limited::new(body, MAX_REQUEST_BODY)
                .collect()
                .await
                .map_err(|e| match e.downcast::<Error>() {
                    Ok(e) => *e,
                    Err(_) => Error::HttpRequestBodySize(None),
                })?
                .to_bytes();
            let send = async {
                let opened_before = opened.load(Ordering::Acquire);
                let mut request =
                    hyper::Request::from_parts(parts.clone(), Full::new(body.clone()));
                let captured = capture_connection(&mut request);
                match client.request(request).await {
                    Err(e) if !e.is_connect() && reused(&captured, opened_before) => {
                        let request = hyper::Request::from_parts(parts, Full::new(body));
                        client.request(request).await
                    }
                    result => result,
                }
            };
            let response = tokio::time::timeout(timeouts.head, send)
                .await
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

/// Which connection a request went out on (its number, from 1).
#[derive(Clone, Copy)]
struct ConnectionNumber(u64);

/// Whether the connection `captured` for a request had been opened before
/// the request started: a kept-alive one.
fn reused(
    captured: &hyper_util::client::legacy::connect::CaptureConnection,
    opened_before: u64,
) -> bool {
    let mut extensions = hyper::http::Extensions::new();
    match captured.connection_metadata().as_ref() {
        Some(connected) => connected.get_extras(&mut extensions),
        None => return false,
    }
    extensions
        .get::<ConnectionNumber>()
        .is_some_and(|n| n.0 <= opened_before)
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
    helper: Option<Arc<PathBuf>>,
    opened: Arc<AtomicU64>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Numbered>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let opened = this.opened.clone();
            let stream = this.connect(uri).await?;
            let number = opened.fetch_add(1, Ordering::AcqRel) + 1;
            Ok(TokioIo::new(Numbered(stream, ConnectionNumber(number))))
        })
    }
}

impl Connector {
    async fn connect(self, uri: Uri) -> Result<Stream, ConnectError> {
        let host = uri.host().ok_or(ConnectError::NoHost)?;
        let https = uri.scheme_str() == Some("https");
        if let Some(socket) = &self.helper
            && !https
            && RUNTIME_ACCESS_URL.strip_prefix("http://") == Some(host)
        {
            let stream = UnixStream::connect(socket.as_path())
                .await
                .map_err(ConnectError::Io)?;
            return Ok(Stream::Unix(stream));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addrs: Vec<_> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
            .await
            .map_err(ConnectError::Dns)?
            .collect();
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

/// A stream and its connection's number.
struct Numbered(Stream, ConnectionNumber);

impl Connection for Numbered {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.1)
    }
}

macro_rules! each_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().0 {
            Stream::Tcp($s) => $e,
            Stream::Tls($s) => $e,
            Stream::Unix($s) => $e,
        }
    };
}

impl AsyncRead for Numbered {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Numbered {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        each_stream!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_shutdown(cx))
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
