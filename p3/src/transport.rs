//! Sending one request over the `wasi:http@0.3.0` client, bounded by a
//! deadline; the 0.2 build's `transport.rs` in WASI 0.3's terms.
//!
//! The body is written whole with a `Content-Length` (the core's headers), so
//! it is never chunked. The wasi:http connect, first-byte and between-bytes
//! timeouts are set to the call's timeout, so the host gives up at the same
//! moment; whatever the host supports, the whole exchange (send, wait, read)
//! races a `wasi:clocks` wait of that length, and losing it drops the
//! exchange, which cancels the request in the host.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::time::Duration;

use vd_cred_broker::{Answer, BrokerRequest, MAX_ANSWER_BYTES, SendError};
use wasip3::clocks::system_clock;
use wasip3::http::client;
use wasip3::http::types::{
    ErrorCode, Fields, Method, Request, RequestOptions, Response, Scheme, Trailers,
};
use wasip3::wit_bindgen::{FutureWriter, StreamResult, StreamWriter};
use wasip3::{wit_future, wit_stream};

use crate::deadline::{nanos, within};

/// `POST` the request and read the whole answer (at most
/// [`MAX_ANSWER_BYTES`]) within `timeout`.
pub async fn send(request: &BrokerRequest, timeout: Duration) -> Result<Answer, SendError> {
    within(timeout, exchange(request, timeout))
        .await
        .unwrap_or(Err(SendError::TimedOut))
}

async fn exchange(request: &BrokerRequest, timeout: Duration) -> Result<Answer, SendError> {
    let (outgoing, body, trailers) = build(request, timeout)?;
    let response = first_of(
        client::send(outgoing),
        write_body(body, trailers, &request.body),
    )
    .await
    .map_err(|code| from_code(&code))?;
    let status = response.get_status_code();
    let retry_after = response
        .get_headers()
        .get("retry-after")
        .first()
        .and_then(|v| vd_cred_broker::retry::parse_retry_after(v, now_unix()));
    // Status first: a failure's body is only quoted, so past the cap it is
    // cut, not refused; only a 2xx body over the cap is an error.
    let body = read_body(response, (200..300).contains(&status)).await?;
    Ok(Answer {
        status,
        body,
        retry_after,
    })
}

/// The request, with the writing ends of its body and trailers.
type Outgoing = (
    Request,
    StreamWriter<u8>,
    FutureWriter<Result<Option<Trailers>, ErrorCode>>,
);

fn build(request: &BrokerRequest, timeout: Duration) -> Result<Outgoing, SendError> {
    let uri: http::Uri = request
        .url
        .parse()
        .map_err(|_| failed("the broker URL does not parse"))?;
    let headers: Vec<(String, Vec<u8>)> = request
        .headers()
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.into_bytes()))
        .collect();
    let fields = Fields::from_list(&headers)
        .map_err(|e| failed(&format!("a header was refused ({e:?})")))?;

    let options = RequestOptions::new();
    let nanos = Some(nanos(timeout));
    // A host that does not support a timeout option still has the deadline.
    let _ = options.set_connect_timeout(nanos);
    let _ = options.set_first_byte_timeout(nanos);
    let _ = options.set_between_bytes_timeout(nanos);

    let (body_writer, body_reader) = wit_stream::new::<u8>();
    let (trailers_writer, trailers_reader) = wit_future::new(|| Ok(None));
    // The transmission's own outcome also arrives as the response's: unread.
    let (outgoing, _transmitted) =
        Request::new(fields, Some(body_reader), trailers_reader, Some(options));

    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
        _ => Scheme::Http,
    };
    let path = uri.path_and_query().map(|p| p.as_str());
    let refused = |what: &str| failed(&format!("the host refused the request's {what}"));
    outgoing
        .set_method(&Method::Post)
        .map_err(|()| refused("method"))?;
    outgoing
        .set_scheme(Some(&scheme))
        .map_err(|()| refused("scheme"))?;
    outgoing
        .set_authority(uri.authority().map(|a| a.as_str()))
        .map_err(|()| refused("authority"))?;
    outgoing
        .set_path_with_query(path)
        .map_err(|()| refused("path"))?;
    Ok((outgoing, body_writer, trailers_writer))
}

/// Write the whole body, then no trailers. A failed write is not reported on
/// its own: the response says why (e.g. the host denied the request).
async fn write_body(
    mut body: StreamWriter<u8>,
    trailers: FutureWriter<Result<Option<Trailers>, ErrorCode>>,
    bytes: &[u8],
) {
    let unwritten = body.write_all(bytes.to_vec()).await;
    drop(body);
    if unwritten.is_empty() {
        let _ = trailers.write(Ok(None)).await;
    }
}

/// The output of `main`, while `side` runs alongside until then (and is
/// dropped unfinished if need be).
async fn first_of<F: Future>(main: F, side: impl Future<Output = ()>) -> F::Output {
    let mut main = pin!(main);
    let mut side = pin!(side);
    let mut side_done = false;
    poll_fn(|cx| {
        if !side_done {
            side_done = side.as_mut().poll(cx).is_ready();
        }
        main.as_mut().poll(cx)
    })
    .await
}

/// Read the body up to the cap. Past the cap it is [`SendError::TooLarge`]
/// when `over_cap_is_error`, else the bytes so far.
async fn read_body(response: Response, over_cap_is_error: bool) -> Result<Vec<u8>, SendError> {
    // The outcome of our handling, for the host: dropped unwritten, it is
    // the default, success.
    let (_handled, handled_reader) = wit_future::new(|| Ok(()));
    let (mut stream, trailers) = Response::consume_body(response, handled_reader);
    let mut bytes = Vec::new();
    loop {
        // At most one byte over the cap, so that an oversized body is seen.
        let room = MAX_ANSWER_BYTES + 1 - bytes.len();
        bytes.reserve_exact(room.min(bytes.len().max(16 * 1024)));
        let (result, buf) = stream.read(bytes).await;
        bytes = buf;
        match result {
            StreamResult::Complete(_) => {}
            StreamResult::Dropped | StreamResult::Cancelled => break,
        }
        if bytes.len() > MAX_ANSWER_BYTES {
            if over_cap_is_error {
                return Err(SendError::TooLarge(MAX_ANSWER_BYTES));
            }
            bytes.truncate(MAX_ANSWER_BYTES);
            return Ok(bytes);
        }
    }
    drop(stream);
    // The end of the stream is a complete body only if the trailers say so.
    match trailers.await {
        Ok(_) => Ok(bytes),
        Err(code) => Err(vd_cred_broker::while_reading_answer(from_code(&code))),
    }
}

fn failed(why: &str) -> SendError {
    SendError::Failed(why.to_string())
}

// The mapping both builds share (`vd_cred_broker::send_error_for`).
vd_cred_broker::wasi_http_error_mapping!(from_code, wasip3::http::types::ErrorCode);

/// The host's wall clock, in Unix seconds (0 before 1970): what an HTTP-date
/// `Retry-After` is counted from, and the core's clock.
pub fn now_unix() -> u64 {
    u64::try_from(system_clock::now().seconds).unwrap_or(0)
}
