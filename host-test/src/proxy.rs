//! A loopback HTTP proxy for tests: CONNECT tunnels (for https) and
//! absolute-form forwarding (for plain http), counted and recorded.
//!
//! It resolves only the names it is told ([`TestProxy::map`], such as
//! `broker.invalid` to a mock broker's `127.0.0.1:port`) and IP literals,
//! so a broker named that way is reachable through it and nowhere else.
//! It can require credentials (407 otherwise), refuse every request with
//! a status of choice (a proxy that cannot reach the destination, say), and
//! answer CONNECT the way some proxies do, with bare line feeds
//! ([`TestProxy::bare_lf`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::server_thread::ServerThread;

/// One request the proxy received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    /// `CONNECT`, or the forwarded request's method.
    pub method: String,
    /// `host:port` for CONNECT, the absolute URI otherwise.
    pub target: String,
    /// Its `Proxy-Authorization`, if any.
    pub authorization: Option<String>,
    /// The status the proxy answered (200 for a tunnel it opened; the
    /// destination's status is not seen for a forwarded request: 0).
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    names: HashMap<String, SocketAddr>,
    required: Option<String>,
    refuse: Option<u16>,
    bare_lf: bool,
    requests: Vec<ProxyRequest>,
    connections: usize,
}

/// The running proxy; stops when dropped.
pub struct TestProxy {
    _thread: ServerThread,
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl TestProxy {
    /// Start on `127.0.0.1:0`.
    pub fn start() -> Result<TestProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let state = inner.clone();
        let thread = ServerThread::spawn("test-proxy", move |mut stopped| async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => if let Ok((stream, _)) = accepted {
                        state.lock().unwrap().connections += 1;
                        tokio::spawn(handle(stream, state.clone()));
                    }
                }
            }
        })?;
        Ok(TestProxy {
            _thread: thread,
            addr,
            inner,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://user:password@127.0.0.1:<port>` (user and password written
    /// as given: percent-encode them first if they need it).
    pub fn url_with(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resolve `host` to `to`, whatever port is asked for: the only way
    /// anything reaches a name such as `broker.invalid`.
    pub fn map(&self, host: &str, to: SocketAddr) -> &Self {
        self.inner
            .lock()
            .unwrap()
            .names
            .insert(host.to_ascii_lowercase(), to);
        self
    }

    /// Answer 407 unless `Proxy-Authorization` is `Basic` for these.
    pub fn require(&self, user: &str, password: &str) -> &Self {
        use std::fmt::Write;
        let raw = format!("{user}:{password}");
        let mut b64 = String::new();
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for chunk in raw.as_bytes().chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                let c = if i <= chunk.len() {
                    A[(n >> (18 - 6 * i) & 63) as usize] as char
                } else {
                    '='
                };
                let _ = write!(b64, "{c}");
            }
        }
        self.inner.lock().unwrap().required = Some(format!("Basic {b64}"));
        self
    }

    /// Answer every request with `status` (and no tunnel); `None` to serve again.
    pub fn refuse(&self, status: Option<u16>) -> &Self {
        self.inner.lock().unwrap().refuse = status;
        self
    }

    /// Open tunnels answering `HTTP/1.0 200 OK\n\n` (bare line feeds, no
    /// reason phrase of the usual kind), as some proxies do; `false` for
    /// `HTTP/1.1 200 Connection established\r\n\r\n` again.
    pub fn bare_lf(&self, on: bool) -> &Self {
        self.inner.lock().unwrap().bare_lf = on;
        self
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<ProxyRequest> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// The tunnels opened (`host:port`), in order.
    pub fn tunnels(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "CONNECT" && r.status == 200)
            .map(|r| r.target)
            .collect()
    }

    /// The plain-http requests forwarded (absolute URIs), in order.
    pub fn forwarded(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "CONNECT" && r.status == 0)
            .map(|r| r.target)
            .collect()
    }

    /// Connections accepted.
    pub fn connection_count(&self) -> usize {
        self.inner.lock().unwrap().connections
    }
}

/// A request head: method, target, headers (names lower-cased).
type Head = (String, String, Vec<(String, String)>);

async fn read_head(stream: &mut TcpStream) -> Option<Head> {
    let mut bytes = Vec::new();
    while !bytes.ends_with(b"\r\n\r\n") {
        if bytes.len() > 64 * 1024 {
            return None;
        }
        bytes.push(stream.read_u8().await.ok()?);
    }
    let text = String::from_utf8(bytes).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((method, target, headers))
}

async fn answer(stream: &mut TcpStream, status: u16, extra: &str) {
    let head = format!(
        "HTTP/1.1 {status} {}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n",
        match status {
            407 => "Proxy Authentication Required",
            502 => "Bad Gateway",
            403 => "Forbidden",
            _ => "Refused",
        }
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Where `host:port` is, as this proxy resolves it: a mapped name, or an
/// IP literal.
fn resolve(inner: &Mutex<Inner>, host: &str, port: u16) -> Option<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Some(addr) = inner.lock().unwrap().names.get(&host.to_ascii_lowercase()) {
        return Some(*addr);
    }
    host.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}

async fn handle(mut client: TcpStream, inner: Arc<Mutex<Inner>>) {
    let Some((method, target, headers)) = read_head(&mut client).await else {
        return;
    };
    let authorization = headers
        .iter()
        .find(|(k, _)| k == "proxy-authorization")
        .map(|(_, v)| v.clone());
    let (refuse, required, bare_lf) = {
        let inner = inner.lock().unwrap();
        (inner.refuse, inner.required.clone(), inner.bare_lf)
    };
    let record = |status: u16| {
        inner.lock().unwrap().requests.push(ProxyRequest {
            method: method.clone(),
            target: target.clone(),
            authorization: authorization.clone(),
            status,
        })
    };
    if let Some(status) = refuse {
        record(status);
        return answer(&mut client, status, "").await;
    }
    if required.is_some() && authorization != required {
        record(407);
        let challenge = "Proxy-Authenticate: Basic realm=\"test proxy\"\r\n";
        return answer(&mut client, 407, challenge).await;
    }
    if method == "CONNECT" {
        let upstream = match target.rsplit_once(':') {
            Some((host, port)) => port.parse().ok().and_then(|p| resolve(&inner, host, p)),
            None => None,
        };
        let upstream = match upstream {
            Some(addr) => TcpStream::connect(addr).await.ok(),
            None => None,
        };
        let Some(mut upstream) = upstream else {
            record(502);
            return answer(&mut client, 502, "").await;
        };
        record(200);
        let established: &[u8] = match bare_lf {
            true => b"HTTP/1.0 200 OK\n\n",
            false => b"HTTP/1.1 200 Connection established\r\n\r\n",
        };
        if client.write_all(established).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return;
    }
    // Absolute form: forward once, on a connection of its own.
    let Ok(uri) = target.parse::<hyper::Uri>() else {
        record(400);
        return answer(&mut client, 400, "").await;
    };
    let port = uri.port_u16().unwrap_or(80);
    let upstream = match uri.host().and_then(|h| resolve(&inner, h, port)) {
        Some(addr) => TcpStream::connect(addr).await.ok(),
        None => None,
    };
    let Some(mut upstream) = upstream else {
        record(502);
        return answer(&mut client, 502, "").await;
    };
    record(0);
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if client.read_exact(&mut body).await.is_err() {
        return;
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in &headers {
        if !matches!(
            name.as_str(),
            "proxy-authorization" | "proxy-connection" | "connection"
        ) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("connection: close\r\n\r\n");
    if upstream.write_all(head.as_bytes()).await.is_err()
        || upstream.write_all(&body).await.is_err()
    {
        return;
    }
    let mut response = Vec::new();
    let _ = upstream.read_to_end(&mut response).await;
    let _ = client.write_all(&response).await;
    let _ = client.shutdown().await;
}
