//! A loopback mock of the Azure resources an agent calls with a bearer token:
//! Key Vault (`*.vault.azure.net`) and storage (`*.blob.core.windows.net`,
//! OneLake, anything else).
//!
//! A real HTTP/1.1 server (hyper) on `127.0.0.1:0`, over TLS
//! ([`MockAzure::start_tls`], with a certificate from
//! [`crate::tls::TestCa::server_config`], wildcard names allowed) or plain
//! http ([`MockAzure::start_plain`], e.g. a redirect target), on its own
//! thread and runtime. It records every request ([`Seen`]), body included,
//! before answering. Each request takes the next [`Scripted`] reply, if any
//! ([`MockAzure::push`]); otherwise it gets the default answer, chosen by the
//! request's host (its `Host` header, or the URI's authority; port ignored):
//!
//! - a host ending in `.vault.azure.net` is Key Vault: without an accepted
//!   bearer ([`MockAzure::accept`]), 401 with Key Vault's challenge
//!   ([`VAULT_CHALLENGE`]) and a JSON error; with one, `GET /secrets/{name}`
//!   (any query) is 200 with the secret `secret-value-of-{name}`, anything
//!   else 404 (JSON);
//! - any other host is storage: without an accepted bearer, 401 with
//!   storage's challenge ([`STORAGE_CHALLENGE`]) and an XML error; with one,
//!   200 `text/plain` `blob {path}` (the path without its query), whatever
//!   the method.
//!
//! ```no_run
//! # fn demo() -> anyhow::Result<()> {
//! use host_test::azure::MockAzure;
//! use host_test::tls::{TestCa, Validity};
//! let ca = TestCa::new()?;
//! let vault = MockAzure::start_tls(ca.server_config(&["*.vault.azure.net"], Validity::Current)?)?;
//! vault.accept(vec!["token-1".into()]);
//! // ... the agent's request to https://myvault.vault.azure.net/secrets/db
//! // reaches vault.addr() ...
//! let seen = vault.requests();
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use crate::server_thread::ServerThread;

/// The tenant the mock's challenges name (the same as the Python tests').
pub const TENANT: &str = "00000000-0000-0000-0000-000000000001";

/// Key Vault's `WWW-Authenticate` on a 401.
pub const VAULT_CHALLENGE: &str = concat!(
    r#"Bearer authorization="https://login.microsoftonline.com/"#,
    "00000000-0000-0000-0000-000000000001",
    r#"", resource="https://vault.azure.net""#
);

/// Storage's `WWW-Authenticate` on a 401.
pub const STORAGE_CHALLENGE: &str = concat!(
    "Bearer authorization_uri=https://login.microsoftonline.com/",
    "00000000-0000-0000-0000-000000000001",
    "/oauth2/authorize resource_id=https://storage.azure.com"
);

/// A request as the mock received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The `Host` header, or else the URI's authority (port included).
    pub host: Option<String>,
    /// Path and query, e.g. `/secrets/db?api-version=7.4`.
    pub path: String,
    /// The `Authorization` header, e.g. `Bearer eyJ...`.
    pub authorization: Option<String>,
    /// The `Proxy-Authorization` header.
    pub proxy_authorization: Option<String>,
    /// Every header in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body as received (de-chunked if it was chunked).
    pub body: Vec<u8>,
}

impl Seen {
    /// The value of header `name` (lower-case), if present (first wins).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One scripted answer, given instead of the default one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scripted {
    /// Status `.1` (a 3xx) with `Location: .0` and no body.
    Redirect(String, u16),
    /// 401 with `WWW-Authenticate: .0` and a JSON error body.
    Challenge(String),
    /// Status `.0` with body `.1` (`application/json` when it starts with
    /// `{` or `[`, else `text/plain`).
    Status(u16, String),
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Scripted>,
    accepted: Vec<String>,
    requests: Vec<Seen>,
    failed_handshakes: usize,
}

/// The running mock; stops when dropped.
pub struct MockAzure {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    _thread: ServerThread,
}

impl MockAzure {
    /// Start on `127.0.0.1:0` speaking https with `config`'s certificate
    /// (see [`crate::tls::TestCa::server_config`]).
    pub fn start_tls(config: Arc<rustls::ServerConfig>) -> Result<MockAzure> {
        MockAzure::spawn(Some(tokio_rustls::TlsAcceptor::from(config)))
    }

    /// Start on `127.0.0.1:0` speaking plain http.
    pub fn start_plain() -> Result<MockAzure> {
        MockAzure::spawn(None)
    }

    fn spawn(tls: Option<tokio_rustls::TlsAcceptor>) -> Result<MockAzure> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let state = inner.clone();
        let thread = ServerThread::spawn("mock-azure", move |stopped| {
            serve(listener, tls, state, stopped)
        })?;
        Ok(MockAzure {
            addr,
            inner,
            _thread: thread,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accept exactly these bearer tokens from now on (replacing the set;
    /// none at the start). An entry ending in `*` accepts every token it
    /// begins (`mock-*`: whatever the mock broker mints).
    pub fn accept(&self, tokens: Vec<String>) {
        self.inner.lock().unwrap().accepted = tokens;
    }

    /// Stop accepting `token`.
    pub fn revoke(&self, token: &str) {
        self.inner.lock().unwrap().accepted.retain(|t| t != token);
    }

    /// Answer the next request (after those already scripted) with `reply`
    /// instead of the default.
    pub fn push(&self, reply: Scripted) {
        self.inner.lock().unwrap().script.push_back(reply);
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// How many TLS handshakes failed (the client refused the certificate,
    /// or spoke plain http).
    pub fn failed_handshakes(&self) -> usize {
        self.inner.lock().unwrap().failed_handshakes
    }
}

async fn serve(
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    inner: Arc<Mutex<Inner>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let inner = inner.clone();
        match tls.clone() {
            None => drop(tokio::spawn(serve_connection(stream, inner))),
            Some(acceptor) => drop(tokio::spawn(async move {
                match acceptor.accept(stream).await {
                    Ok(stream) => serve_connection(stream, inner).await,
                    Err(_) => inner.lock().unwrap().failed_handshakes += 1,
                }
            })),
        }
    }
}

async fn serve_connection<S>(stream: S, inner: Arc<Mutex<Inner>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| answer(req, inner.clone()));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Record the request, then answer from the script or by default.
async fn answer(
    req: Request<Incoming>,
    inner: Arc<Mutex<Inner>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let host = header("host").or_else(|| req.uri().authority().map(|a| a.to_string()));
    let authorization = header("authorization");
    let proxy_authorization = header("proxy-authorization");
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
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
    let body = req.into_body().collect().await?.to_bytes().to_vec();
    let seen = Seen {
        method,
        host,
        path,
        authorization,
        proxy_authorization,
        headers,
        body,
    };
    let mut inner = inner.lock().unwrap();
    inner.requests.push(seen.clone());
    let response = match inner.script.pop_front() {
        Some(reply) => scripted(reply),
        None => default_answer(&seen, &inner.accepted),
    };
    Ok(response)
}

fn respond(status: u16, headers: &[(&str, &str)], body: String) -> Response<Full<Bytes>> {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn json_error(code: &str, message: &str) -> String {
    serde_json::json!({"error": {"code": code, "message": message}}).to_string()
}

fn scripted(reply: Scripted) -> Response<Full<Bytes>> {
    match reply {
        Scripted::Redirect(location, status) => {
            respond(status, &[("location", &location)], String::new())
        }
        Scripted::Challenge(challenge) => respond(
            401,
            &[
                ("www-authenticate", &challenge),
                ("content-type", "application/json"),
            ],
            json_error("Unauthorized", "scripted challenge"),
        ),
        Scripted::Status(status, body) => {
            let kind = match body.starts_with('{') || body.starts_with('[') {
                true => "application/json",
                false => "text/plain",
            };
            respond(status, &[("content-type", kind)], body)
        }
    }
}

/// The host name without its port (and without brackets around an IPv6 address).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

fn default_answer(seen: &Seen, accepted: &[String]) -> Response<Full<Bytes>> {
    let host = seen.host.as_deref().unwrap_or_default();
    let name = host_name(host).to_ascii_lowercase();
    let bearer = seen
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "));
    let authorized = bearer.is_some_and(|b| {
        accepted.iter().any(|t| match t.strip_suffix('*') {
            Some(prefix) => b.starts_with(prefix),
            None => t == b,
        })
    });
    let path = seen.path.split('?').next().unwrap_or_default();
    if name.ends_with(".vault.azure.net") {
        if !authorized {
            let message = match bearer {
                None => "AKV10000: Request is missing a Bearer or PoP token.",
                Some(_) => "AKV10032: Invalid issuer or token not accepted.",
            };
            return respond(
                401,
                &[
                    ("www-authenticate", VAULT_CHALLENGE),
                    ("content-type", "application/json; charset=utf-8"),
                ],
                json_error("Unauthorized", message),
            );
        }
        let secret = path
            .strip_prefix("/secrets/")
            .filter(|s| !s.is_empty() && !s.contains('/'));
        return match (seen.method.as_str(), secret) {
            ("GET", Some(secret)) => respond(
                200,
                &[("content-type", "application/json; charset=utf-8")],
                serde_json::json!({
                    "value": format!("secret-value-of-{secret}"),
                    "id": format!(
                        "https://{host}/secrets/{secret}/0123456789abcdef0123456789abcdef"
                    ),
                    "attributes": {"enabled": true},
                })
                .to_string(),
            ),
            _ => respond(
                404,
                &[("content-type", "application/json; charset=utf-8")],
                json_error("NotFound", &format!("{} {path} not found", seen.method)),
            ),
        };
    }
    if !authorized {
        let (code, message) = match bearer {
            None => (
                "NoAuthenticationInformation",
                "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
            ),
            Some(_) => (
                "InvalidAuthenticationInfo",
                "Server failed to authenticate the request.",
            ),
        };
        return respond(
            401,
            &[
                ("www-authenticate", STORAGE_CHALLENGE),
                ("content-type", "application/xml"),
            ],
            format!(
                r#"<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"#
            ),
        );
    }
    respond(
        200,
        &[("content-type", "text/plain")],
        format!("blob {path}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{TestCa, Validity};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    /// What a test client got back: status, headers (lower-case names), body.
    struct Got {
        status: u16,
        headers: hyper::HeaderMap,
        body: String,
    }

    impl Got {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).and_then(|v| v.to_str().ok())
        }
    }

    /// Send one request over `stream` (plain or TLS) with hyper's client.
    async fn send<S>(
        stream: S,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Got>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::from(body.to_string())))?)
            .await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        drop(sender);
        let _ = connection.await;
        Ok(Got {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Connect to `mock` over TLS, naming `host`, trusting only `ca`.
    async fn tls_send(
        ca: &TestCa,
        mock: &MockAzure,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Got> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca.pem().as_bytes())?)?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(mock.addr()).await?;
        let stream = connector
            .connect(ServerName::try_from(host.to_string())?, tcp)
            .await?;
        send(stream, "GET", host, path, headers, "").await
    }

    #[tokio::test]
    async fn azure_vault_over_tls_challenges_then_answers() -> Result<()> {
        let ca = TestCa::new()?;
        let config = ca.server_config(
            &["*.vault.azure.net", "*.blob.core.windows.net"],
            Validity::Current,
        )?;
        let mock = MockAzure::start_tls(config)?;
        let host = "myvault.vault.azure.net";

        let got = tls_send(&ca, &mock, host, "/secrets/db?api-version=7.4", &[]).await?;
        assert_eq!(got.status, 401);
        assert_eq!(
            got.header("www-authenticate"),
            Some(
                "Bearer authorization=\"https://login.microsoftonline.com/00000000-0000-0000-0000-000000000001\", resource=\"https://vault.azure.net\""
            )
        );
        let error: serde_json::Value = serde_json::from_str(&got.body)?;
        assert_eq!(error["error"]["code"], "Unauthorized");

        mock.accept(vec!["tok-1".into(), "tok-2".into()]);
        let got = tls_send(
            &ca,
            &mock,
            host,
            "/secrets/db?api-version=7.4",
            &[("authorization", "Bearer tok-1")],
        )
        .await?;
        assert_eq!(got.status, 200);
        let secret: serde_json::Value = serde_json::from_str(&got.body)?;
        assert_eq!(secret["value"], "secret-value-of-db");
        assert_eq!(
            secret["id"],
            "https://myvault.vault.azure.net/secrets/db/0123456789abcdef0123456789abcdef"
        );

        mock.revoke("tok-1");
        let got = tls_send(
            &ca,
            &mock,
            host,
            "/secrets/db",
            &[("authorization", "Bearer tok-1")],
        )
        .await?;
        assert_eq!(got.status, 401);
        assert_eq!(got.header("www-authenticate"), Some(VAULT_CHALLENGE));
        let got = tls_send(
            &ca,
            &mock,
            host,
            "/keys/k",
            &[("authorization", "Bearer tok-2")],
        )
        .await?;
        assert_eq!(got.status, 404);

        // Storage behind the same listener, chosen by name.
        let got = tls_send(&ca, &mock, "acct.blob.core.windows.net", "/c/b.txt", &[]).await?;
        assert_eq!(got.status, 401);
        assert_eq!(got.header("www-authenticate"), Some(STORAGE_CHALLENGE));

        let seen = mock.requests();
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[0].method, "GET");
        assert_eq!(seen[0].host.as_deref(), Some(host));
        assert_eq!(seen[0].path, "/secrets/db?api-version=7.4");
        assert_eq!(seen[0].authorization, None);
        assert_eq!(seen[1].authorization.as_deref(), Some("Bearer tok-1"));
        assert_eq!(seen[4].host.as_deref(), Some("acct.blob.core.windows.net"));
        assert_eq!(mock.failed_handshakes(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn azure_storage_over_plain_http_and_script() -> Result<()> {
        let mock = MockAzure::start_plain()?;
        let host = "onelake.dfs.fabric.microsoft.com";
        let connect = || tokio::net::TcpStream::connect(mock.addr());
        let got = send(
            connect().await?,
            "PUT",
            host,
            "/ws/item/Files/a.txt?resource=file",
            &[
                ("authorization", "Bearer nope"),
                ("proxy-authorization", "Basic eDp5"),
            ],
            "hello",
        )
        .await?;
        assert_eq!(got.status, 401);
        assert_eq!(
            got.header("www-authenticate"),
            Some(
                "Bearer authorization_uri=https://login.microsoftonline.com/00000000-0000-0000-0000-000000000001/oauth2/authorize resource_id=https://storage.azure.com"
            )
        );

        mock.accept(vec!["good".into()]);
        let auth = [("authorization", "Bearer good")];
        let got = send(
            connect().await?,
            "GET",
            host,
            "/ws/item/Files/a.txt?x=1",
            &auth,
            "",
        )
        .await?;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("content-type"), Some("text/plain"));
        assert_eq!(got.body, "blob /ws/item/Files/a.txt");

        mock.push(Scripted::Redirect("http://elsewhere.example/x".into(), 307));
        mock.push(Scripted::Challenge("Bearer claims=\"e30=\"".into()));
        mock.push(Scripted::Status(503, "busy".into()));
        let got = send(connect().await?, "GET", host, "/a", &auth, "").await?;
        assert_eq!(got.status, 307);
        assert_eq!(got.header("location"), Some("http://elsewhere.example/x"));
        let got = send(connect().await?, "GET", host, "/a", &auth, "").await?;
        assert_eq!(got.status, 401);
        assert_eq!(
            got.header("www-authenticate"),
            Some("Bearer claims=\"e30=\"")
        );
        let got = send(connect().await?, "GET", host, "/a", &auth, "").await?;
        assert_eq!((got.status, got.body.as_str()), (503, "busy"));
        let got = send(connect().await?, "GET", host, "/a", &auth, "").await?;
        assert_eq!((got.status, got.body.as_str()), (200, "blob /a"));

        let seen = mock.requests();
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[0].method, "PUT");
        assert_eq!(seen[0].host.as_deref(), Some(host));
        assert_eq!(seen[0].path, "/ws/item/Files/a.txt?resource=file");
        assert_eq!(seen[0].authorization.as_deref(), Some("Bearer nope"));
        assert_eq!(seen[0].proxy_authorization.as_deref(), Some("Basic eDp5"));
        assert_eq!(seen[0].body, b"hello");
        assert_eq!(seen[0].header("content-length"), Some("5"));
        Ok(())
    }

    #[test]
    fn azure_challenges_name_the_tenant() {
        assert!(VAULT_CHALLENGE.contains(&format!("/{TENANT}\"")));
        assert!(STORAGE_CHALLENGE.contains(&format!("/{TENANT}/oauth2/")));
    }

    #[test]
    fn azure_host_name_drops_the_port() {
        assert_eq!(host_name("a.vault.azure.net:8443"), "a.vault.azure.net");
        assert_eq!(host_name("a.vault.azure.net"), "a.vault.azure.net");
        assert_eq!(host_name("[::1]:443"), "::1");
        assert_eq!(host_name("[::1]"), "::1");
    }
}
