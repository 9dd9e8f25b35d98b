//! A connection to an HTTP proxy, and a CONNECT tunnel through it: what
//! [`crate::outbound::client`] uses when [`crate::proxy`] names a proxy for a request.
//! Errors are sentences that name the proxy (never its credentials) and
//! what to do.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::outbound::proxy::ProxyUrl;
use crate::outbound::resolver::Resolver;

/// A TCP connection to `proxy`, its host name looked up by `resolver`.
pub(crate) async fn to_proxy(proxy: &ProxyUrl, resolver: &Resolver) -> Result<TcpStream, String> {
    let (proxy_host, proxy_port) = proxy.address()?;
    let failed = |e: std::io::Error| {
        format!(
            "could not connect to the proxy {proxy}: {e}: is the proxy running, and is {} right?",
            proxy.configured_in()
        )
    };
    let addrs = resolver
        .lookup(proxy_host, proxy_port)
        .await
        .map_err(failed)?;
    let stream = TcpStream::connect(&addrs[..]).await.map_err(failed)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The largest answer head a proxy may give to CONNECT.
pub(crate) const MAX_CONNECT_ANSWER: usize = 8 * 1024;

/// What a proxy answered to CONNECT.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tunnel {
    /// 2xx: the tunnel is open, nothing of it read.
    Open,
    /// Another status, and its reason phrase (printable ASCII only).
    Refused(u16, String),
}

/// Ask `proxy` (connected on `stream`) for a tunnel to `target`
/// (`host:port`); [`Tunnel::Open`] once it answered 2xx, with nothing of
/// the tunnel read.
pub(crate) async fn tunnel(
    stream: &mut TcpStream,
    proxy: &ProxyUrl,
    target: &str,
) -> Result<Tunnel, String> {
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(credentials) = proxy.credentials() {
        head.push_str("Proxy-Authorization: ");
        head.push_str(credentials.header_value());
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let broke = |e: std::io::Error| {
        format!(
            "the proxy {proxy} broke off CONNECT {target} ({e}): is {} a proxy?",
            proxy.configured_in()
        )
    };
    stream.write_all(head.as_bytes()).await.map_err(broke)?;
    drop(head);
    // Byte by byte up to the blank line (lines ending in CRLF or, as
    // lenient parsers such as Python's accept, a bare LF): the tunnel's
    // first bytes (none before the TLS handshake starts, normally) stay in
    // the socket.
    let mut answer = Vec::with_capacity(64);
    while !(answer.ends_with(b"\n\r\n") || answer.ends_with(b"\n\n")) {
        if answer.len() >= MAX_CONNECT_ANSWER {
            return Err(format!(
                "the proxy {proxy} answered CONNECT {target} with a head over {MAX_CONNECT_ANSWER} \
                 bytes"
            ));
        }
        answer.push(stream.read_u8().await.map_err(broke)?);
    }
    let line = String::from_utf8_lossy(&answer);
    let line = line.lines().next().unwrap_or_default();
    let mut words = line.splitn(3, ' ');
    let (version, code, reason) = (words.next(), words.next(), words.next().unwrap_or(""));
    let code = match (version, code.and_then(|c| c.parse::<u16>().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code,
        _ => {
            return Err(format!(
                "the proxy {proxy} did not answer CONNECT {target} in HTTP: is {} an http:// \
                 proxy?",
                proxy.configured_in()
            ));
        }
    };
    if (200..300).contains(&code) {
        return Ok(Tunnel::Open);
    }
    let reason: String = reason
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(80)
        .collect();
    Ok(Tunnel::Refused(code, reason.trim().to_string()))
}

/// Why `proxy` refused `what` with `code`, and what to do.
pub(crate) fn refused_by(proxy: &ProxyUrl, what: &str, code: u16, reason: &str) -> String {
    let var = proxy.configured_in();
    let advice = match (code, proxy.credentials()) {
        (407, Some(_)) => format!("check the proxy credentials in {var}"),
        (407, None) => format!(
            "the proxy wants credentials: give them in {var} as http://user:password@host:port"
        ),
        _ => "check that the proxy may reach it, or list the host in NO_PROXY to connect \
              directly"
            .to_string(),
    };
    let status = match reason {
        "" => code.to_string(),
        r => format!("{code} {r}"),
    };
    format!("the proxy {proxy} refused {what} with {status}: {advice}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_connect_answer_ending_in_bare_line_feeds_is_read() {
        for (answer, expected) in [
            (&b"HTTP/1.0 200 OK\n\n"[..], Tunnel::Open),
            (b"HTTP/1.1 200 OK\r\n\r\n", Tunnel::Open),
            (b"HTTP/1.1 200 OK\r\nVia: x\n\r\n", Tunnel::Open),
            (
                b"HTTP/1.0 403 Nope\nVia: x\n\n",
                Tunnel::Refused(403, "Nope".into()),
            ),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                s.write_all(answer).await.unwrap();
                // Held open: the answer must be recognised without an EOF.
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(s);
            });
            let proxy = ProxyUrl::read(&format!("http://{addr}"), None);
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let answered = tokio::time::timeout(
                Duration::from_secs(20),
                tunnel(&mut stream, &proxy, "h:443"),
            )
            .await
            .expect("the answer was recognised")
            .unwrap();
            assert_eq!(answered, expected, "{answer:?}");
            server.abort();
        }
    }
}
