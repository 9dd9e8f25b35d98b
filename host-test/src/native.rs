//! The same credential core, run natively: a [`Platform`] over std and a
//! hyper client. It is the floor the sandboxed component is measured against
//! (`cargo bench -p host-test`), and shows how a native Rust host could use
//! the core without wasm.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use vd_cred_broker::{
    Answer, BrokerRequest, MAX_ANSWER_BYTES, Platform, SendError, retry::parse_retry_after,
};

/// std filesystem and clock, hyper over a fresh TCP connection per request
/// (as wasmtime's `default_send_request` does). Call it from outside any
/// tokio runtime: it drives its own.
pub struct NativePlatform {
    runtime: tokio::runtime::Runtime,
}

impl NativePlatform {
    /// A platform with its own current-thread runtime.
    pub fn new() -> std::io::Result<Self> {
        Ok(NativePlatform {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }
}

impl Platform for NativePlatform {
    fn now_unix(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    async fn send(
        &mut self,
        request: &BrokerRequest,
        timeout: Duration,
    ) -> Result<Answer, SendError> {
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, send(request)).await })
            .unwrap_or(Err(SendError::TimedOut))
    }

    async fn sleep(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }

    fn random_unit(&mut self) -> f64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(0u8) as f64 / (u64::MAX as f64 + 1.0)
    }
}

async fn send(request: &BrokerRequest) -> Result<Answer, SendError> {
    let failed = |e: &dyn std::fmt::Display| SendError::Failed(e.to_string());
    let uri: hyper::Uri = request.url.parse().map_err(|e| failed(&e))?;
    let authority = uri
        .authority()
        .ok_or_else(|| SendError::Failed("no authority".into()))?;
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .map_err(|e| failed(&e))?;
    stream.set_nodelay(true).map_err(|e| failed(&e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(&e))?;
    tokio::spawn(connection);
    let mut builder = hyper::Request::post(uri.path()).header("host", authority.as_str());
    for (name, value) in request.headers() {
        builder = builder.header(name, value);
    }
    let http_request = builder
        .body(Full::new(Bytes::from(request.body.clone())))
        .map_err(|e| failed(&e))?;
    let response = sender
        .send_request(http_request)
        .await
        .map_err(|e| failed(&e))?;
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").and_then(|v| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        parse_retry_after(v.as_bytes(), now)
    });
    // Frame by frame up to the cap: a 2xx body past it is refused, another
    // status's body is cut there (status first), as in the component.
    let mut incoming = response.into_body();
    let mut body = Vec::new();
    while let Some(frame) = incoming.frame().await {
        if let Ok(data) = frame.map_err(|e| failed(&e))?.into_data() {
            body.extend_from_slice(&data);
        }
        if body.len() > MAX_ANSWER_BYTES {
            if (200..300).contains(&status) {
                return Err(SendError::TooLarge(MAX_ANSWER_BYTES));
            }
            body.truncate(MAX_ANSWER_BYTES);
            break;
        }
    }
    Ok(Answer {
        status,
        body,
        retry_after,
    })
}
