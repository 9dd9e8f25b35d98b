//! A loopback mock of the Studio credential broker.
//!
//! A real HTTP/1.1 server (hyper) on `127.0.0.1:0`, on its own thread and
//! runtime, so it works the same from async tests and from plain `main`. It
//! records every request and answers from a script: each request takes the
//! next scripted [`Reply`], or the default (a fresh token) when the script is
//! empty.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use crate::server_thread::ServerThread;

/// The path prefix of [`MockBroker::url`], as Studio's broker uses.
pub const BASE_PATH: &str = "/api/v1/credential-broker";

/// The body of the 401 the mock answers a bearer it does not accept
/// ([`Reply::Authorized`], [`MockBroker::accept_bearers`]).
pub const BAD_BEARER_BODY: &str = r#"{"error":{"code":"Unauthorized","message":"bad bearer"}}"#;

/// One scripted answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Answer with a fresh token `mock-token-<n>` (n counts requests) living 3600 s.
    Mint,
    /// Answer `status` with `body` (as `application/json`) and extra
    /// `headers`, after `delay`.
    Answer {
        status: u16,
        body: String,
        delay: Duration,
        headers: Vec<(String, String)>,
    },
    /// Read the request, wait `delay`, then close the connection without answering.
    Drop { delay: Duration },
    /// One of these, picked pseudo-randomly (deterministic per request number).
    OneOf(Vec<Reply>),
    /// `then` when the request carries `Authorization: Bearer <bearer>`,
    /// else 401: a resource server (Key Vault) that checks its token.
    Authorized { bearer: String, then: Box<Reply> },
    /// Answer, after `delay`, a fresh token naming what was asked for:
    /// `mock-<audience>-<n>` (n counts requests), living 3600 s. A client
    /// that hands one caller another's answer is caught by the name.
    Named { delay: Duration },
}

impl Reply {
    /// `status` with a JSON (or any) body, at once.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Reply::Answer {
            status,
            body: body.into(),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// A 200 with `access_token` and `expires_in`.
    pub fn token(token: &str, expires_in: u64) -> Self {
        Reply::json(
            200,
            format!(r#"{{"access_token":"{token}","expires_in":{expires_in}}}"#),
        )
    }

    /// This answer, after `delay`.
    pub fn after(self, delay: Duration) -> Self {
        match self {
            Reply::Answer {
                status,
                body,
                headers,
                ..
            } => Reply::Answer {
                status,
                body,
                delay,
                headers,
            },
            Reply::Drop { .. } => Reply::Drop { delay },
            Reply::Mint => Reply::json(200, mint_body(0)).after(delay),
            Reply::OneOf(choices) => {
                Reply::OneOf(choices.into_iter().map(|c| c.after(delay)).collect())
            }
            Reply::Authorized { bearer, then } => Reply::Authorized {
                bearer,
                then: Box::new(then.after(delay)),
            },
            Reply::Named { .. } => Reply::Named { delay },
        }
    }

    /// This answer with one more header (e.g. `retry-after`).
    pub fn with_header(self, name: &str, value: &str) -> Self {
        match self {
            Reply::Answer {
                status,
                body,
                delay,
                mut headers,
            } => {
                headers.push((name.to_string(), value.to_string()));
                Reply::Answer {
                    status,
                    body,
                    delay,
                    headers,
                }
            }
            other => other,
        }
    }
}

fn mint_body(n: usize) -> String {
    format!(r#"{{"access_token":"mock-token-{n}","expires_in":3600,"token_type":"Bearer"}}"#)
}

/// A request as the broker received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `POST`, normally.
    pub method: String,
    /// Path and query, e.g. `/api/v1/credential-broker/token`.
    pub path: String,
    /// HTTP version, e.g. `HTTP/1.1`.
    pub version: String,
    /// Headers in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body as received (de-chunked if it was chunked).
    pub body: Vec<u8>,
    /// When the whole request had arrived.
    pub received_at: std::time::Instant,
    /// What the mock answered (a [`Reply::OneOf`] or [`Reply::Authorized`]
    /// resolved to the reply it chose; a mint as [`Reply::Mint`]), once chosen.
    pub answered: Option<Reply>,
}

impl Recorded {
    /// The value of header `name` (lower-case), if present once or more (first wins).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    default: Option<Reply>,
    requests: Vec<Recorded>,
    /// Requests received since the start, forgotten ones included.
    served: usize,
    /// Connections accepted since the start.
    connections: usize,
    /// Connections closed (by either side) since the start.
    closed: usize,
    /// TLS handshakes that failed (the client refused the certificate).
    failed_handshakes: usize,
    /// When set, only these bearers get past the 401 (a broker mid-rotation).
    accepted: Option<Vec<String>>,
    /// Called with each request's number before it is answered ([`MockBroker::on_request`]).
    hook: Option<RequestHook>,
    /// Requests held before they are answered ([`MockBroker::hold`]), by number.
    held: Vec<(usize, Arc<tokio::sync::Semaphore>)>,
}

/// A request the broker holds until [`Hold::release`] (or until dropped).
pub struct Hold(Arc<tokio::sync::Semaphore>);

impl Hold {
    /// Let the held request be answered.
    pub fn release(self) {}
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

/// What [`MockBroker::on_request`] runs.
type RequestHook = Box<dyn FnMut(usize, &mut Option<Vec<String>>) + Send>;

/// Where the mock listens.
enum Listener {
    Tcp(std::net::TcpListener),
    Tls(std::net::TcpListener, tokio_rustls::TlsAcceptor),
    Unix(std::os::unix::net::UnixListener),
}

/// The running mock broker; stops when dropped.
pub struct MockBroker {
    /// First, so that it stops (and is joined) before the rest is dropped.
    _thread: ServerThread,
    addr: Option<SocketAddr>,
    https: bool,
    socket: Option<PathBuf>,
    inner: Arc<Mutex<Inner>>,
    /// Bumped to close every idle connection.
    closer: tokio::sync::watch::Sender<u64>,
}

impl MockBroker {
    /// Start on `127.0.0.1:0`.
    pub fn start() -> Result<MockBroker> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        MockBroker::spawn(Listener::Tcp(listener), Some(addr), None)
    }

    /// Start on `127.0.0.1:0` speaking https with `config`'s certificate
    /// (see [`crate::tls::TestCa`]); [`MockBroker::url`] names `localhost`.
    pub fn start_tls(config: Arc<rustls::ServerConfig>) -> Result<MockBroker> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        MockBroker::spawn(Listener::Tls(listener, acceptor), Some(addr), None)
    }

    /// Start on a Unix socket at `path`: a mock runtime-access helper.
    pub fn start_unix(path: impl Into<PathBuf>) -> Result<MockBroker> {
        let path = path.into();
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        MockBroker::spawn(Listener::Unix(listener), None, Some(path))
    }

    fn spawn(
        listener: Listener,
        addr: Option<SocketAddr>,
        socket: Option<PathBuf>,
    ) -> Result<MockBroker> {
        let https = matches!(listener, Listener::Tls(..));
        let inner = Arc::new(Mutex::new(Inner::default()));
        let (closer, close) = tokio::sync::watch::channel(0);
        let state = inner.clone();
        let thread = ServerThread::spawn("mock-broker", move |stopped| {
            serve(listener, state, close, stopped)
        })?;
        Ok(MockBroker {
            addr,
            https,
            socket,
            inner,
            closer,
            _thread: thread,
        })
    }

    /// The broker base URL, e.g. `http://127.0.0.1:41234/api/v1/credential-broker`
    /// (for a Unix-socket mock, the helper origin the host routes to it).
    pub fn url(&self) -> String {
        match self.addr {
            Some(_) if self.https => self.url_for_host("localhost"),
            Some(addr) => format!("http://{addr}{BASE_PATH}"),
            None => vd_cred_host::RUNTIME_ACCESS_URL.to_string(),
        }
    }

    /// The base URL naming the broker's host as `host` (its port, its scheme).
    pub fn url_for_host(&self, host: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{host}:{}{BASE_PATH}", self.addr().port())
    }

    /// The listening TCP address (panics for a Unix-socket mock).
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("a TCP mock broker")
    }

    /// The Unix socket path, for a mock started with [`MockBroker::start_unix`].
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// Answer the next request (after those already scripted) with `reply`.
    pub fn push(&self, reply: Reply) -> &Self {
        self.inner.lock().unwrap().script.push_back(reply);
        self
    }

    /// Answer every unscripted request with `reply` (default: [`Reply::Mint`]).
    pub fn set_default(&self, reply: Reply) {
        self.inner.lock().unwrap().default = Some(reply);
    }

    /// Answer 401 ([`BAD_BEARER_BODY`]) to any request whose bearer is not
    /// one of `bearers`, before the script (which such a request does not
    /// consume); `None` accepts any bearer again. For rotation tests.
    pub fn accept_bearers(&self, bearers: Option<Vec<String>>) {
        self.inner.lock().unwrap().accepted = bearers;
    }

    /// Call `hook` with each request's number (counting from 1 since the
    /// start) and the bearers the broker accepts ([`MockBroker::accept_bearers`]),
    /// which it may change, once the request is recorded and before it is
    /// answered: the bearer rotates, or the bearer file changes, at a chosen
    /// request rather than after a chosen time, so a race is met the same way
    /// on a fast machine and a slow one. Runs on the broker's thread with the
    /// broker locked (it must not call the broker); replaces any earlier hook.
    pub fn on_request(&self, hook: impl FnMut(usize, &mut Option<Vec<String>>) + Send + 'static) {
        self.inner.lock().unwrap().hook = Some(Box::new(hook));
    }

    /// Hold request number `n` (counting from 1 since the start), recorded,
    /// unanswered, until the returned [`Hold`] is released or dropped: a
    /// test decides what happens while a request is at the broker, without
    /// assuming how long anything takes. The broker goes on serving other
    /// requests meanwhile.
    pub fn hold(&self, n: usize) -> Hold {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        self.inner.lock().unwrap().held.push((n, gate.clone()));
        Hold(gate)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Every request received so far, forgetting them (the next request is
    /// still numbered after them).
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.inner.lock().unwrap().requests)
    }

    /// How many requests were received.
    pub fn request_count(&self) -> usize {
        self.inner.lock().unwrap().requests.len()
    }

    /// How many connections were accepted since the start.
    pub fn connection_count(&self) -> usize {
        self.inner.lock().unwrap().connections
    }

    /// Close every idle connection now, as a broker's idle timeout does
    /// (a request in progress is answered first).
    pub fn close_idle_connections(&self) {
        self.closer.send_modify(|n| *n += 1);
    }

    /// How many connections have closed (either side) since the start.
    pub fn closed_connections(&self) -> usize {
        self.inner.lock().unwrap().closed
    }

    /// How many TLS handshakes failed since the start.
    pub fn failed_handshakes(&self) -> usize {
        self.inner.lock().unwrap().failed_handshakes
    }
}

async fn serve(
    listener: Listener,
    inner: Arc<Mutex<Inner>>,
    close: tokio::sync::watch::Receiver<u64>,
    mut stopped: oneshot::Receiver<()>,
) {
    enum Accepting {
        Tcp(tokio::net::TcpListener, Option<tokio_rustls::TlsAcceptor>),
        Unix(tokio::net::UnixListener),
    }
    let listener = match listener {
        Listener::Tcp(l) => Accepting::Tcp(
            tokio::net::TcpListener::from_std(l).expect("tokio listener"),
            None,
        ),
        Listener::Tls(l, acceptor) => Accepting::Tcp(
            tokio::net::TcpListener::from_std(l).expect("tokio listener"),
            Some(acceptor),
        ),
        Listener::Unix(l) => {
            Accepting::Unix(tokio::net::UnixListener::from_std(l).expect("tokio listener"))
        }
    };
    loop {
        let accepted = async {
            match &listener {
                Accepting::Tcp(l, tls) => l.accept().await.map(|(stream, _)| {
                    inner.lock().unwrap().connections += 1;
                    // One write per answer: no Nagle/delayed-ACK stalls on loopback.
                    let _ = stream.set_nodelay(true);
                    let inner = inner.clone();
                    match tls.clone() {
                        None => drop(tokio::spawn(serve_connection(stream, inner, close.clone()))),
                        Some(acceptor) => {
                            let close = close.clone();
                            drop(tokio::spawn(async move {
                                match acceptor.accept(stream).await {
                                    Ok(stream) => serve_connection(stream, inner, close).await,
                                    Err(_) => inner.lock().unwrap().failed_handshakes += 1,
                                }
                            }))
                        }
                    }
                }),
                Accepting::Unix(l) => l.accept().await.map(|(stream, _)| {
                    inner.lock().unwrap().connections += 1;
                    drop(tokio::spawn(serve_connection(
                        stream,
                        inner.clone(),
                        close.clone(),
                    )))
                }),
            }
        };
        tokio::select! {
            _ = &mut stopped => return,
            _ = accepted => {}
        }
    }
}

async fn serve_connection<S>(
    stream: S,
    inner: Arc<Mutex<Inner>>,
    mut close: tokio::sync::watch::Receiver<u64>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let state = inner.clone();
    let service = service_fn(move |req| answer(req, state.clone()));
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    close.mark_unchanged();
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = close.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
    inner.lock().unwrap().closed += 1;
}

/// Record the request, then answer from the script. An `Err` makes hyper
/// close the connection without a response: that is [`Reply::Drop`].
async fn answer(
    req: Request<Incoming>,
    inner: Arc<Mutex<Inner>>,
) -> Result<Response<Full<Bytes>>, DroppedConnection> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => return Err(DroppedConnection),
    };
    let gate;
    let reply = {
        let mut inner = inner.lock().unwrap();
        inner.requests.push(Recorded {
            method,
            path,
            version,
            headers,
            body,
            received_at: std::time::Instant::now(),
            answered: None,
        });
        inner.served += 1;
        let n = inner.served;
        gate = inner
            .held
            .iter()
            .find(|(held, _)| *held == n)
            .map(|(_, g)| g.clone());
        let last = inner.requests.len() - 1;
        let Inner { hook, accepted, .. } = &mut *inner;
        if let Some(hook) = hook {
            hook(n, accepted);
        }
        let authorization = inner.requests[last]
            .header("authorization")
            .map(str::to_string);
        let refused = inner.accepted.as_ref().is_some_and(|accepted| {
            !accepted
                .iter()
                .any(|b| authorization.as_deref() == Some(format!("Bearer {b}").as_str()))
        });
        let mut reply = match refused {
            true => Some(Reply::json(401, BAD_BEARER_BODY)),
            false => inner.script.pop_front().or_else(|| inner.default.clone()),
        };
        if let Some(Reply::Authorized { bearer, then }) = reply {
            reply = Some(match authorization == Some(format!("Bearer {bearer}")) {
                true => *then,
                false => Reply::json(401, BAD_BEARER_BODY),
            });
        }
        while let Some(Reply::OneOf(choices)) = reply {
            // The request number, mixed: varied, and repeatable per run.
            let x = vd_cred_broker::retry::splitmix64(n as u64);
            reply = choices.get(x as usize % choices.len().max(1)).cloned();
        }
        inner.requests[last].answered = Some(reply.clone().unwrap_or(Reply::Mint));
        match reply {
            None | Some(Reply::Mint) => Reply::json(200, mint_body(n)),
            Some(Reply::Named { delay }) => {
                let audience =
                    serde_json::from_slice::<serde_json::Value>(&inner.requests[last].body)
                        .ok()
                        .and_then(|body| body["audience"].as_str().map(str::to_string))
                        .unwrap_or_default();
                let body = format!(
                    r#"{{"access_token":"mock-{audience}-{n}","expires_in":3600,"token_type":"Bearer"}}"#
                );
                Reply::json(200, body).after(delay)
            }
            Some(reply) => reply,
        }
    };
    if let Some(gate) = gate {
        let _ = gate.acquire().await;
    }
    match reply {
        Reply::Answer {
            status,
            body,
            delay,
            headers,
        } => {
            tokio::time::sleep(delay).await;
            let mut response = Response::builder()
                .status(status)
                .header("content-type", "application/json");
            for (name, value) in headers {
                response = response.header(name, value);
            }
            Ok(response
                .body(Full::new(Bytes::from(body)))
                .expect("valid response"))
        }
        Reply::Drop { delay } => {
            tokio::time::sleep(delay).await;
            Err(DroppedConnection)
        }
        Reply::Mint | Reply::OneOf(_) | Reply::Authorized { .. } | Reply::Named { .. } => {
            unreachable!("resolved above")
        }
    }
}

#[derive(Debug)]
struct DroppedConnection;

impl std::fmt::Display for DroppedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted dropped connection")
    }
}

impl std::error::Error for DroppedConnection {}
