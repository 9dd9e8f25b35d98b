//! Helper routing: requests the policy lets through to the runtime-access
//! helper's origin go over its Unix socket, since a component cannot open one.

use std::path::PathBuf;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use wasmtime_wasi_http::{Error, WasiBody};

/// A response and the future that drives its connection, as
/// `WasiHttpHooks::send_request` returns them.
pub(crate) type Sent = (
    hyper::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// Send `request` over a fresh connection to the Unix socket at `path`.
pub(crate) async fn send_over_unix_socket(
    path: PathBuf,
    mut request: hyper::Request<WasiBody>,
) -> Result<Sent, Error> {
    let stream = tokio::net::UnixStream::connect(&path)
        .await
        .map_err(Error::Connect)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Origin-form on the wire, as for TCP.
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = path_and_query
        .parse()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let io = async move {
        match driver.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::from(e)),
            Err(_) => Err(Error::ConnectionTerminated),
        }
    };
    Ok((
        response.map(|body| body.map_err(Error::from).boxed_unsync()),
        Box::new(io) as Box<dyn Future<Output = _> + Send>,
    ))
}
