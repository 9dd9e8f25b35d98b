//! A minimal loopback broker for benchmarks: a thread per connection,
//! keep-alive, TCP_NODELAY, and each answer written in one `write`. It reads
//! a request's head and `Content-Length` body and answers every request with
//! the same token, so what a benchmark measures is the client, not the mock
//! (the hyper [`crate::MockBroker`] records and scripts, and costs more).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The answer to every request.
const BODY: &str = r#"{"access_token":"fast-token","expires_in":3600,"token_type":"Bearer"}"#;

/// The answer of [`FastBroker::short_lived`]: a token the credential does
/// not cache (less than its 300 s refresh margin left).
const SHORT_LIVED_BODY: &str =
    r#"{"access_token":"fast-token","expires_in":120,"token_type":"Bearer"}"#;

/// A running fast broker; it serves until the process exits.
pub struct FastBroker {
    addr: SocketAddr,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    requests: AtomicUsize,
    connections: AtomicUsize,
}

impl FastBroker {
    /// Start on `127.0.0.1:0`, serving on background threads.
    pub fn start() -> std::io::Result<FastBroker> {
        FastBroker::with_latency(Duration::ZERO)
    }

    /// The same, answering each request `latency` after it arrived (a
    /// broker further away, or busier): connections wait in parallel.
    pub fn with_latency(latency: Duration) -> std::io::Result<FastBroker> {
        FastBroker::spawn(latency, BODY)
    }

    /// Answering every request with a token living 120 s, which the
    /// credential never serves from its cache: every call mints.
    pub fn short_lived() -> std::io::Result<FastBroker> {
        FastBroker::spawn(Duration::ZERO, SHORT_LIVED_BODY)
    }

    fn spawn(latency: Duration, body: &'static str) -> std::io::Result<FastBroker> {
        // A backlog for a thousand agents connecting at once (std's is 128,
        // past which connection attempts wait a second to be retried).
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        socket.listen(4096)?;
        let listener: TcpListener = socket.into();
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        std::thread::Builder::new()
            .name("fast-broker".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    let counts = shared.clone();
                    let _ = std::thread::Builder::new()
                        .stack_size(64 * 1024)
                        .spawn(move || serve(stream, latency, body, &counts));
                }
            })?;
        Ok(FastBroker { addr, counts })
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counts.connections.load(Ordering::Relaxed)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The broker base URL.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, crate::broker::BASE_PATH)
    }
}

/// Answer requests on one connection until the client closes it.
fn serve(mut stream: TcpStream, latency: Duration, body: &str, counts: &Counts) {
    let _ = stream.set_nodelay(true);
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // One whole request: the head, then Content-Length bytes of body.
        let request_len = loop {
            if let Some(len) = request_length(&buffer) {
                break len;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        buffer.drain(..request_len);
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        counts.requests.fetch_add(1, Ordering::Relaxed);
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// The length of the first complete request in `buffer`, if it holds one.
fn request_length(buffer: &[u8]) -> Option<usize> {
    let head_end = buffer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buffer[..head_end]).ok()?;
    let body = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buffer.len() >= head_end + body).then_some(head_end + body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_answers_each_request_on_a_kept_alive_connection() {
        let broker = FastBroker::start().unwrap();
        let mut stream = TcpStream::connect(broker.addr).unwrap();
        let request = b"POST /api/v1/credential-broker/token HTTP/1.1\r\nhost: x\r\ncontent-length: 20\r\n\r\n{\"audience\":\"vault\"}";
        for _ in 0..3 {
            // Split across two writes: the broker must wait for the body.
            stream.write_all(&request[..30]).unwrap();
            stream.write_all(&request[30..]).unwrap();
            let mut answer = Vec::new();
            let mut chunk = [0u8; 1024];
            while !answer.ends_with(BODY.as_bytes()) {
                let n = stream.read(&mut chunk).unwrap();
                assert!(n > 0, "the broker closed the connection");
                answer.extend_from_slice(&chunk[..n]);
            }
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
            assert!(answer.ends_with(BODY), "{answer}");
        }
    }
}
