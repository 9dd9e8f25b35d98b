//! What the host tells [`tracing`]: a span per credential call, an event per
//! request it sends, and an event when a call ends; a `tracing-subscriber`
//! or OpenTelemetry layer picks them up. Nothing here ever records a token,
//! the bearer, a header, a query string or an error's message (a
//! configuration error quotes the URL it was given): only scopes, audiences,
//! origins, statuses, counts, durations and error kinds.
//!
//! Every span and event has the target [`TARGET`]:
//!
//! - span `vd_cred.get_token` / `vd_cred.get_token_info` (INFO): one call on
//!   a [`crate::Sandbox`], with `audience`, `scopes`, `mode`, `credential`,
//!   then `attempts`, `statuses`, `outcome`, `status`, `source`,
//!   `duration_ms`;
//! - event `request answered` / `request failed` (DEBUG): one request the
//!   sandbox sent, with `method`, `origin` (`scheme://host[:port]`),
//!   `status` or `error`, `elapsed_ms`;
//! - event `get_token succeeded` (INFO when minted, DEBUG when cached) or
//!   `get_token failed` (WARN, with `error_kind`) when the call ends, with
//!   the span's fields;
//! - the linked route's and the injection's events (see [`crate::linked`],
//!   [`crate::inject`]), under spans `vd_cred.agent_call` and
//!   `vd_cred.inject` carrying `agent_id`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::field::Empty;
use tracing::{Instrument, Span};
use vd_cred_broker::{CredentialError, DEFAULT_AUDIENCES, normalize_scope};
use wasmtime_wasi_http::Error;

use crate::outbound::client::Sent;
use crate::outbound::origin::shown;

/// The target of every span and event of this crate's.
pub const TARGET: &str = "vd_cred_host";

/// What became of one request a sandbox sent.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// The answer's status.
    Status(u16),
    /// No answer: the wasi:http error's name.
    Failed(&'static str),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Status(s) => write!(f, "{s}"),
            Answer::Failed(e) => f.write_str(e),
        }
    }
}

/// The answers to the requests a sandbox sent during its current call, in
/// order (a sandbox makes one call at a time; each call starts them anew).
#[derive(Debug, Clone, Default)]
pub(crate) struct Requests(Arc<Mutex<Vec<Answer>>>);

impl Requests {
    fn push(&self, answer: Answer) {
        self.0.lock().unwrap().push(answer);
    }

    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }

    /// `503,200`: the answers so far, and forget them.
    fn take(&self) -> String {
        let answers = std::mem::take(&mut *self.0.lock().unwrap());
        let shown: Vec<String> = answers.iter().map(Answer::to_string).collect();
        shown.join(",")
    }
}

/// One request a sandbox lets through, watched until its answer's head.
pub(crate) struct Request {
    method: hyper::Method,
    origin: String,
    requests: Requests,
    /// The call's span (the one current when the request was made).
    span: Span,
}

impl Request {
    /// Watch `request`, recording its answer in `requests`.
    pub(crate) fn of<B>(request: &hyper::Request<B>, requests: &Requests) -> Self {
        Request {
            method: request.method().clone(),
            origin: shown(request.uri()),
            requests: requests.clone(),
            span: Span::current(),
        }
    }

    /// `sent`, recording its status (or failure) and a DEBUG event.
    pub(crate) fn watch(
        self,
        sent: impl Future<Output = Result<Sent, Error>> + Send + 'static,
    ) -> impl Future<Output = Result<Sent, Error>> + Send + 'static {
        let started = Instant::now();
        let span = self.span.clone();
        async move {
            let result = sent.await;
            let elapsed_ms = millis(started);
            let (method, origin) = (self.method.as_str(), self.origin.as_str());
            match &result {
                Ok((response, _)) => {
                    let status = response.status().as_u16();
                    self.requests.push(Answer::Status(status));
                    tracing::debug!(target: TARGET, method, origin, status, elapsed_ms, "request answered");
                }
                Err(e) => {
                    let error = error_name(e);
                    self.requests.push(Answer::Failed(error));
                    tracing::debug!(target: TARGET, method, origin, error, elapsed_ms, "request failed");
                }
            }
            result
        }
        .instrument(span)
    }
}

/// Milliseconds since `start`, to the microsecond.
fn millis(start: Instant) -> f64 {
    (start.elapsed().as_micros() as f64) / 1000.0
}

/// The wasi:http error's name, without its payload.
fn error_name(e: &Error) -> &'static str {
    match e {
        Error::DnsTimeout => "dns-timeout",
        Error::DnsError { .. } | Error::InvalidDnsNameError(_) => "dns-error",
        Error::DestinationNotFound => "destination-not-found",
        Error::DestinationUnavailable => "destination-unavailable",
        Error::ConnectionRefused | Error::Connect(_) => "connection-refused",
        Error::ConnectionTerminated => "connection-terminated",
        Error::ConnectionTimeout => "connection-timeout",
        Error::ConnectionReadTimeout => "connection-read-timeout",
        Error::ConnectionWriteTimeout => "connection-write-timeout",
        Error::TlsProtocolError | Error::Tls(_) => "tls-protocol-error",
        Error::TlsCertificateError => "tls-certificate-error",
        Error::TlsAlertReceived { .. } => "tls-alert-received",
        Error::HttpRequestDenied => "http-request-denied",
        Error::HttpRequestBodySize(_) => "http-request-body-size",
        Error::HttpResponseTimeout => "http-response-timeout",
        Error::HttpProtocolError | Error::Hyper(_) => "http-protocol-error",
        _ => "internal-error",
    }
}

/// The broker's status an error carries, if any.
pub(crate) fn error_status(error: &CredentialError) -> Option<u16> {
    match error {
        CredentialError::BrokerRejected { status, .. }
        | CredentialError::BrokerFailed { status, .. } => Some(*status),
        _ => None,
    }
}

/// The audience the default audience map gives `scopes` (empty when it
/// knows none of them; a credential opened with its own `audience-map` may
/// map differently: `scopes` says what was asked).
/// The scopes as a span records them: each up to a `?` or `#` (a scope is
/// a resource URI; a query is no part of it and may carry a signature),
/// control characters escaped (no newline forges a log line),
/// space-separated.
fn shown_scopes(scopes: &[String]) -> String {
    let shown: Vec<String> = scopes
        .iter()
        .map(|s| {
            let resource = s.split(['?', '#']).next().unwrap_or_default();
            resource.escape_debug().to_string()
        })
        .collect();
    shown.join(" ")
}

fn audience(scopes: &[String]) -> &'static str {
    scopes
        .iter()
        .find_map(|s| {
            let resource = normalize_scope(s);
            DEFAULT_AUDIENCES
                .iter()
                .find(|(r, a)| *r == resource || *a == resource)
                .map(|(_, a)| *a)
        })
        .unwrap_or("")
}

/// Which credential call a span is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Open,
    GetToken,
    GetTokenInfo,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::GetToken => "get_token",
            Op::GetTokenInfo => "get_token_info",
        }
    }
}

/// A sandbox's request counts at a moment: sent, and held back by the host
/// (an agent's mint budget).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) sent: u64,
    pub(crate) held_back: u64,
}

/// One credential call on a sandbox, traced: its span, and what to count
/// the call's requests from.
pub(crate) struct Call {
    op: Op,
    span: Span,
    started: Instant,
    /// The sandbox's counts when the call started.
    before: Counts,
    /// `finish` ran; otherwise the call was dropped (cancelled).
    finished: bool,
}

impl Drop for Call {
    /// A call whose future was dropped (an asyncio cancel, an abandoned
    /// pool call) ends its span with `outcome = "cancelled"`.
    fn drop(&mut self) {
        if !self.finished {
            self.span.record("outcome", "cancelled");
            self.span.record("duration_ms", millis(self.started));
        }
    }
}

macro_rules! call_span {
    ($name:literal, $scopes:expr, $mode:expr, $credential:expr) => {
        tracing::info_span!(
            target: TARGET,
            $name,
            audience = audience($scopes),
            scopes = %shown_scopes($scopes),
            mode = $mode,
            credential = $credential,
            attempts = Empty,
            statuses = Empty,
            outcome = Empty,
            status = Empty,
            source = Empty,
            duration_ms = Empty,
        )
    };
}

impl Call {
    /// A call of `op` for `scopes` starts, in a sandbox in `mode` (`broker`
    /// or `helper`), on an opened credential or (`credential: false`) the
    /// free functions.
    pub(crate) fn start(
        op: Op,
        scopes: &[String],
        mode: &'static str,
        credential: bool,
        requests: &Requests,
        counts: Counts,
    ) -> Call {
        let span = match op {
            Op::Open => tracing::debug_span!(
                target: TARGET,
                "vd_cred.open",
                mode,
                outcome = Empty,
                duration_ms = Empty,
            ),
            Op::GetToken => call_span!("vd_cred.get_token", scopes, mode, credential),
            Op::GetTokenInfo => call_span!("vd_cred.get_token_info", scopes, mode, credential),
        };
        requests.clear();
        Call {
            op,
            span,
            started: Instant::now(),
            before: counts,
            finished: false,
        }
    }

    /// The call's span, to run the call in.
    pub(crate) fn span(&self) -> Span {
        self.span.clone()
    }

    /// The call ended with `result` (`Err`: the credential trapped or ran
    /// past its limit): record the span's fields and the ending event.
    pub(crate) fn finish<T>(
        mut self,
        result: &anyhow::Result<Result<T, CredentialError>>,
        requests: &Requests,
        counts: Counts,
    ) {
        self.finished = true;
        // Even with the span disabled (a filter at WARN), a failure's event
        // may be wanted: the fields are cheap (no request: no allocation).
        let attempts = counts.sent - self.before.sent;
        let statuses = requests.take();
        let duration_ms = millis(self.started);
        let op = self.op.name();
        let span = &self.span;
        span.record("attempts", attempts);
        span.record("statuses", statuses.as_str());
        span.record("duration_ms", duration_ms);
        let _entered = span.enter();
        let (kind, status) = match result {
            Ok(Ok(_)) if self.op == Op::Open => {
                span.record("outcome", "ok");
                tracing::debug!(target: TARGET, op, duration_ms, "{op} succeeded");
                return;
            }
            Ok(Ok(_)) => {
                let source = if attempts > 0 { "minted" } else { "cached" };
                span.record("outcome", "ok");
                span.record("source", source);
                let statuses = statuses.as_str();
                if attempts > 0 {
                    tracing::info!(target: TARGET, op, source, attempts, statuses, duration_ms, "{op} succeeded");
                } else {
                    tracing::debug!(target: TARGET, op, source, attempts, statuses, duration_ms, "{op} succeeded");
                }
                return;
            }
            // The host held a request back (an agent's mint budget, spent
            // by this call's first request or a retry): not the broker's
            // failure; the linked route reports it.
            Ok(Err(_)) if counts.held_back > self.before.held_back => {
                span.record("outcome", "held");
                tracing::debug!(target: TARGET, op, duration_ms, "{op} held back by the host");
                return;
            }
            Ok(Err(e)) => (e.kind(), error_status(e)),
            // A trap, or a call stopped at its limit: the host's failure.
            Err(_) => ("host", None),
        };
        span.record("outcome", kind);
        if let Some(status) = status {
            span.record("status", status);
        }
        let statuses = statuses.as_str();
        tracing::warn!(
            target: TARGET,
            op,
            error_kind = kind,
            status,
            attempts,
            statuses,
            duration_ms,
            "{op} failed: {kind}"
        );
    }
}
