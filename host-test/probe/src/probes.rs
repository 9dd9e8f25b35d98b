//! What a probe tries from inside its sandbox: reading and writing files,
//! the environment, the preopens, HTTP through wasi:http, raw sockets and name
//! lookups. Shared by the sandbox probe and the test agent (`#[path]`).

use wasi::http::types::{
    Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, Method, OutgoingBody,
    OutgoingRequest, Scheme,
};
use wasi::io::streams::StreamError;

pub fn read_file(path: String) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

pub fn write_file(path: String, contents: String) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| e.to_string())
}

pub fn environment() -> Vec<(String, String)> {
    std::env::vars().collect()
}

pub fn tcp_connect(address: String) -> Result<(), String> {
    std::net::TcpStream::connect(address)
        .map(drop)
        .map_err(|e| e.to_string())
}

pub fn udp_send(address: String) -> Result<(), String> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    socket
        .send_to(b"probe", address)
        .map(drop)
        .map_err(|e| e.to_string())
}

pub fn resolve(name: String) -> Result<Vec<String>, String> {
    use std::net::ToSocketAddrs;
    (name.as_str(), 80)
        .to_socket_addrs()
        .map(|addrs| addrs.map(|a| a.ip().to_string()).collect())
        .map_err(|e| e.to_string())
}

pub fn preopens() -> Vec<String> {
    wasi::filesystem::preopens::get_directories()
        .into_iter()
        .map(|(_, path)| path)
        .collect()
}

/// `method url` with `headers`, handed to wasi:http and not waited for:
/// its body (to write, then finish) and its pending answer; or why it could
/// not be made, or the error code `handle` refused it with.
pub fn start(
    method: Method,
    url: &str,
    headers: Fields,
) -> Result<(OutgoingBody, FutureIncomingResponse), String> {
    let (scheme, rest) = url.split_once("://").ok_or("not absolute")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let scheme = match scheme {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        other => Scheme::Other(other.to_string()),
    };
    let request = OutgoingRequest::new(headers);
    request.set_method(&method).map_err(|()| "method")?;
    request.set_scheme(Some(&scheme)).map_err(|()| "scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|()| "authority")?;
    request
        .set_path_with_query(Some(&path))
        .map_err(|()| "path")?;
    let body = request.body().map_err(|()| "body")?;
    let pending =
        wasi::http::outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    Ok((body, pending))
}

pub fn http_get(url: String) -> Result<u16, String> {
    let (body, pending) = start(Method::Get, &url, Fields::new())?;
    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
    Ok(answer(&pending)?.status())
}

/// The answer's head, once it has come, or the error code.
fn answer(pending: &FutureIncomingResponse) -> Result<IncomingResponse, String> {
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => Ok(response),
        Some(Ok(Err(code))) => Err(format!("{code:?}")),
        _ => Err("no response".into()),
    }
}

/// `POST url` with a JSON `body`, and the whole answer's body: the
/// exchange a minting component makes, with nothing else around it.
pub fn http_post(url: String, body: String) -> Result<String, String> {
    let headers = Fields::from_list(&[("content-type".into(), b"application/json".to_vec())])
        .map_err(|e| format!("{e:?}"))?;
    let (outgoing, pending) = start(Method::Post, &url, headers)?;
    write_body(&outgoing, body.as_bytes())?;
    OutgoingBody::finish(outgoing, None).map_err(|e| format!("{e:?}"))?;
    let response = answer(&pending)?;
    let incoming = response.consume().map_err(|()| "response body")?;
    let answer = read_body(&incoming)?;
    drop(IncomingBody::finish(incoming));
    String::from_utf8(answer).map_err(|e| e.to_string())
}

/// Write `body` into `outgoing` (not finished), in 4 KiB chunks.
pub fn write_body(outgoing: &OutgoingBody, body: &[u8]) -> Result<(), String> {
    if body.is_empty() {
        return Ok(());
    }
    let stream = outgoing.write().map_err(|()| "body stream")?;
    for chunk in body.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|e| format!("writing the body: {e:?}"))?;
    }
    Ok(())
}

/// The whole of `incoming`'s body.
pub fn read_body(incoming: &IncomingBody) -> Result<Vec<u8>, String> {
    let stream = incoming.stream().map_err(|()| "response body stream")?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(body),
            Err(e) => return Err(format!("reading the body: {e:?}")),
        }
    }
}
