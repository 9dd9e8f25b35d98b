//! Sending one request over wasi:http, bounded by a deadline.
//!
//! Written directly on the `wasi` bindings rather than wstd's `Client`: when
//! the host denies a request, `Client::send` reports the failed body write
//! ("connection reset") instead of the request's own `ErrorCode`, and the
//! whole exchange here is a handful of calls. The body is written whole with
//! a `Content-Length`, so it is never chunked.

use std::time::Duration;

use wasi::clocks::monotonic_clock;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, FutureIncomingResponse, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme, http_error_code,
};
use wasi::io::poll::{Pollable, poll};
use wasi::io::streams::{InputStream, StreamError};

use crate::{Answer, BrokerRequest, MAX_ANSWER_BYTES, SendError};

/// `POST` the request and read the whole answer (at most [`MAX_ANSWER_BYTES`])
/// within `timeout`. The wasi:http connect, first-byte and between-bytes
/// timeouts are set to it too, so the host gives up at the same moment.
pub fn send(request: &BrokerRequest, timeout: Duration) -> Result<Answer, SendError> {
    let deadline = monotonic_clock::subscribe_duration(timeout.as_nanos() as u64);
    let pending = start(request, timeout)?;
    let response = wait_for_response(&pending, &deadline)?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .first()
        .and_then(|v| crate::retry::parse_retry_after(v, now_unix()));
    // Status first: a failure's body is only quoted, so past the cap it is
    // cut, not refused; only a 2xx body over the cap is an error.
    let body = read_body(&response, &deadline, (200..300).contains(&status))?;
    Ok(Answer {
        status,
        body,
        retry_after,
    })
}

fn start(request: &BrokerRequest, timeout: Duration) -> Result<FutureIncomingResponse, SendError> {
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
    let outgoing = OutgoingRequest::new(fields);
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
    let body = outgoing
        .body()
        .map_err(|()| failed("the request body was already taken"))?;

    let options = RequestOptions::new();
    let nanos = Some(timeout.as_nanos() as u64);
    // A host that does not support a timeout option still gets the deadline below.
    let _ = options.set_connect_timeout(nanos);
    let _ = options.set_first_byte_timeout(nanos);
    let _ = options.set_between_bytes_timeout(nanos);

    let pending = outgoing_handler::handle(outgoing, Some(options)).map_err(|e| from_code(&e))?;
    // If writing fails, the response future says why (e.g. the host denied
    // the request), so write errors are not reported on their own.
    if let Ok(stream) = body.write() {
        for chunk in request.body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);
    Ok(pending)
}

/// Block until the response head arrives or the deadline passes.
fn wait_for_response(
    pending: &FutureIncomingResponse,
    deadline: &Pollable,
) -> Result<IncomingResponse, SendError> {
    let ready = pending.subscribe();
    loop {
        if let Some(result) = pending.get() {
            return match result {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(code)) => Err(from_code(&code)),
                Err(()) => Err(failed("the response was already taken")),
            };
        }
        if deadline.ready() {
            return Err(SendError::TimedOut);
        }
        poll(&[&ready, deadline]);
    }
}

/// Read the body up to the cap, or until the deadline. Past the cap it is
/// [`SendError::TooLarge`] when `over_cap_is_error`, else the bytes so far.
fn read_body(
    response: &IncomingResponse,
    deadline: &Pollable,
    over_cap_is_error: bool,
) -> Result<Vec<u8>, SendError> {
    let body = response
        .consume()
        .map_err(|()| failed("the response body was already taken"))?;
    let stream: InputStream = body
        .stream()
        .map_err(|()| failed("the response body stream was already taken"))?;
    // Locals drop in reverse order: `ready` before `stream` before `body`, as
    // wasi:http requires of child resources.
    let ready = stream.subscribe();
    let mut bytes = Vec::new();
    loop {
        match stream.read((MAX_ANSWER_BYTES + 1 - bytes.len()) as u64) {
            Ok(chunk) if chunk.is_empty() => {
                if deadline.ready() {
                    return Err(SendError::TimedOut);
                }
                poll(&[&ready, deadline]);
            }
            Ok(chunk) => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > MAX_ANSWER_BYTES {
                    if !over_cap_is_error {
                        bytes.truncate(MAX_ANSWER_BYTES);
                        break;
                    }
                    return Err(SendError::TooLarge(MAX_ANSWER_BYTES));
                }
            }
            Err(StreamError::Closed) => break,
            // The body's wasi:http error, as the 0.3 build reads it from the
            // trailers; else the host's words for the I/O error.
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(match http_error_code(&e) {
                    Some(code) => crate::while_reading_answer(from_code(&code)),
                    None => failed(&format!(
                        "reading the answer failed: {}",
                        e.to_debug_string()
                    )),
                });
            }
        }
    }
    Ok(bytes)
}

/// The component's wall clock (the host's), in Unix seconds.
fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn failed(why: &str) -> SendError {
    SendError::Failed(why.to_string())
}

// The mapping both builds share (`crate::send_error_for`).
crate::wasi_http_error_mapping!(from_code, wasi::http::types::ErrorCode);
