//! What the two builds' WASI glue shares, defined once: how a wasi:http
//! `error-code` becomes the core's [`SendError`], and the WIT records
//! converted to and from the core's types.
//!
//! The WASI 0.2 build (`wasi` 0.14) and the 0.3 build (`wasip3`) have each
//! their own generated `ErrorCode` and their own bindings of `wit/world.wit`:
//! different Rust types with the same cases and fields, only on wasm32. So
//! the decisions are made here, natively tested, on [`WasiHttpErrorCase`]
//! (the case without its payload), and two macros match each build's types
//! onto them: [`wasi_http_error_mapping!`](crate::wasi_http_error_mapping)
//! in each `transport.rs`, [`wit_conversions!`](crate::wit_conversions) in
//! each `component.rs`.

use crate::{SendError, TLS_HANDSHAKE_FAILED};

macro_rules! cases {
    ($($case:ident => $wit:literal,)+) => {
        /// A case of wasi:http's `error-code` (the same in WASI 0.2 and 0.3),
        /// without its payload: the variant names of both builds' bindings.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum WasiHttpErrorCase {
            $(
                #[doc = concat!("`", $wit, "`")]
                $case,
            )+
        }

        impl WasiHttpErrorCase {
            /// Every case, in the WIT's order.
            pub const ALL: &[Self] = &[$(Self::$case),+];

            /// The case's name in the WIT (`DNS-timeout`, ...).
            pub fn wit_name(self) -> &'static str {
                match self {
                    $(Self::$case => $wit,)+
                }
            }
        }
    };
}

cases! {
    DnsTimeout => "DNS-timeout",
    DnsError => "DNS-error",
    DestinationNotFound => "destination-not-found",
    DestinationUnavailable => "destination-unavailable",
    DestinationIpProhibited => "destination-IP-prohibited",
    DestinationIpUnroutable => "destination-IP-unroutable",
    ConnectionRefused => "connection-refused",
    ConnectionTerminated => "connection-terminated",
    ConnectionTimeout => "connection-timeout",
    ConnectionReadTimeout => "connection-read-timeout",
    ConnectionWriteTimeout => "connection-write-timeout",
    ConnectionLimitReached => "connection-limit-reached",
    TlsProtocolError => "TLS-protocol-error",
    TlsCertificateError => "TLS-certificate-error",
    TlsAlertReceived => "TLS-alert-received",
    HttpRequestDenied => "HTTP-request-denied",
    HttpRequestLengthRequired => "HTTP-request-length-required",
    HttpRequestBodySize => "HTTP-request-body-size",
    HttpRequestMethodInvalid => "HTTP-request-method-invalid",
    HttpRequestUriInvalid => "HTTP-request-URI-invalid",
    HttpRequestUriTooLong => "HTTP-request-URI-too-long",
    HttpRequestHeaderSectionSize => "HTTP-request-header-section-size",
    HttpRequestHeaderSize => "HTTP-request-header-size",
    HttpRequestTrailerSectionSize => "HTTP-request-trailer-section-size",
    HttpRequestTrailerSize => "HTTP-request-trailer-size",
    HttpResponseIncomplete => "HTTP-response-incomplete",
    HttpResponseHeaderSectionSize => "HTTP-response-header-section-size",
    HttpResponseHeaderSize => "HTTP-response-header-size",
    HttpResponseBodySize => "HTTP-response-body-size",
    HttpResponseTrailerSectionSize => "HTTP-response-trailer-section-size",
    HttpResponseTrailerSize => "HTTP-response-trailer-size",
    HttpResponseTransferCoding => "HTTP-response-transfer-coding",
    HttpResponseContentCoding => "HTTP-response-content-coding",
    HttpResponseTimeout => "HTTP-response-timeout",
    HttpUpgradeFailed => "HTTP-upgrade-failed",
    HttpProtocolError => "HTTP-protocol-error",
    LoopDetected => "loop-detected",
    ConfigurationError => "configuration-error",
    InternalError => "internal-error",
}

/// The send error for a wasi:http `error-code` case; `detail` is its
/// payload in words (a DNS rcode, a TLS alert, a size, the host's
/// `internal-error` text), if any.
///
/// - Every timeout (`DNS-timeout`, `connection-*-timeout`,
///   `HTTP-response-timeout`) is [`SendError::TimedOut`]: the host's
///   timeouts are set to the attempt's time left, so the host giving up is
///   the attempt running out of time; retried like any timeout, and the
///   message says which timeout to raise.
/// - A refusal by the host's policy (`HTTP-request-denied`,
///   `destination-IP-prohibited`) is [`SendError::Denied`]: not retried.
/// - A refused TLS handshake (`TLS-certificate-error`, `TLS-alert-received`,
///   or an `internal-error` whose text starts with
///   [`TLS_HANDSHAKE_FAILED`], the host's named certificate problem, kept
///   as it is) is [`SendError::Tls`]: not retried.
/// - Anything else is [`SendError::Failed`] (retried), its message saying
///   what failed and naming the case, e.g. `connection refused (wasi:http
///   connection-refused)`; the core adds the broker's URL and what to check.
pub fn send_error_for(case: WasiHttpErrorCase, detail: Option<&str>) -> SendError {
    use WasiHttpErrorCase as C;
    let named = |what: &str| match detail {
        Some(detail) => format!("{what} (wasi:http {}: {detail})", case.wit_name()),
        None => format!("{what} (wasi:http {})", case.wit_name()),
    };
    let what = match case {
        C::DnsTimeout
        | C::ConnectionTimeout
        | C::ConnectionReadTimeout
        | C::ConnectionWriteTimeout
        | C::HttpResponseTimeout => return SendError::TimedOut,
        C::HttpRequestDenied | C::DestinationIpProhibited => return SendError::Denied,
        // The host's own explanation: ours names a certificate problem this
        // way (untrusted, another host name, expired), which wasi:http's
        // payload-less `TLS-certificate-error` cannot carry.
        C::InternalError if detail.is_some_and(|d| d.starts_with(TLS_HANDSHAKE_FAILED)) => {
            return SendError::Tls(detail.unwrap_or_default().to_string());
        }
        // A handshake that was refused fails the same way next time; one
        // that broke off (a reset, `TLS-protocol-error`) is retried like any
        // dropped connection.
        C::TlsCertificateError => {
            return SendError::Tls(format!(
                "{}: is the broker's CA trusted by the host?",
                named("TLS handshake failed: the host did not accept the broker's certificate")
            ));
        }
        C::TlsAlertReceived => {
            return SendError::Tls(format!(
                "{}: check the broker's TLS set-up and that the host trusts its CA",
                named("TLS handshake failed: the broker sent a TLS alert")
            ));
        }
        C::TlsProtocolError => {
            return SendError::Failed(format!(
                "{}: if the broker's certificate is from a private CA, the host must trust that CA",
                named("TLS handshake failed")
            ));
        }
        C::DnsError | C::DestinationNotFound => "the broker's host name did not resolve",
        C::DestinationUnavailable | C::DestinationIpUnroutable => {
            "the broker's address is unreachable"
        }
        C::ConnectionRefused => "connection refused",
        C::ConnectionTerminated | C::HttpResponseIncomplete | C::HttpProtocolError => {
            "the connection closed before a complete answer"
        }
        C::ConnectionLimitReached => "the host has reached its limit of connections",
        C::HttpRequestLengthRequired | C::HttpRequestMethodInvalid | C::HttpRequestUriInvalid => {
            "the request was refused as malformed"
        }
        C::HttpRequestBodySize
        | C::HttpRequestUriTooLong
        | C::HttpRequestHeaderSectionSize
        | C::HttpRequestHeaderSize
        | C::HttpRequestTrailerSectionSize
        | C::HttpRequestTrailerSize => "the request was refused as too large",
        C::HttpResponseHeaderSectionSize
        | C::HttpResponseHeaderSize
        | C::HttpResponseBodySize
        | C::HttpResponseTrailerSectionSize
        | C::HttpResponseTrailerSize => "the answer was refused by the host as too large",
        C::HttpResponseTransferCoding | C::HttpResponseContentCoding => {
            "the answer came in an encoding the host cannot decode"
        }
        C::HttpUpgradeFailed => "an HTTP upgrade failed",
        C::LoopDetected => "the request looped back (check the host's proxy settings)",
        C::ConfigurationError => "the host's HTTP client is misconfigured",
        // The host's text names the problem; the case is named after it.
        C::InternalError => {
            return SendError::Failed(match detail {
                Some(why) => format!("{why} (wasi:http {})", case.wit_name()),
                None => named("the host's HTTP client failed"),
            });
        }
    };
    SendError::Failed(named(what))
}

/// `error` as met while reading the answer's body: a failure says so.
pub fn while_reading_answer(error: SendError) -> SendError {
    match error {
        SendError::Failed(why) => SendError::Failed(format!("reading the answer failed: {why}")),
        other => other,
    }
}

/// An `error-code` payload in words: its named parts that are present,
/// e.g. `rcode NXDOMAIN, info-code 3`; `None` when none is.
#[doc(hidden)]
pub fn wasi_http_detail(parts: &[(&str, Option<String>)]) -> Option<String> {
    let present: Vec<String> = parts
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name} {v}")))
        .collect();
    (!present.is_empty()).then(|| present.join(", "))
}

/// Defines `fn $name(code: &ErrorCode) -> SendError` for the wasi:http
/// `ErrorCode` type at the path given (`wasi::http::types::ErrorCode`,
/// `wasip3::http::types::ErrorCode`): each case and its payload matched onto
/// [`send_error_for`](crate::send_error_for). The match lists every case,
/// so bindings with a case more do not compile until it is classified.
#[macro_export]
macro_rules! wasi_http_error_mapping {
    ($name:ident, $($error_code:ident)::+) => {
        /// wasi:http's `error-code` as the core's send error, as both
        /// builds map it (`vd_cred_broker::send_error_for`).
        fn $name(code: &$($error_code)::+) -> $crate::SendError {
            use $($error_code)::+ as E;
            use $crate::WasiHttpErrorCase as C;
            use $crate::wasi_http_detail as detail;
            let size = |size: Option<String>| detail(&[("size", size)]);
            let field = |name: &Option<String>, size: Option<u32>| {
                detail(&[
                    ("field", name.clone()),
                    ("size", size.map(|s| s.to_string())),
                ])
            };
            let (case, detail) = match code {
                E::DnsTimeout => (C::DnsTimeout, None),
                E::DnsError(p) => (
                    C::DnsError,
                    detail(&[
                        ("rcode", p.rcode.clone()),
                        ("info-code", p.info_code.map(|c| c.to_string())),
                    ]),
                ),
                E::DestinationNotFound => (C::DestinationNotFound, None),
                E::DestinationUnavailable => (C::DestinationUnavailable, None),
                E::DestinationIpProhibited => (C::DestinationIpProhibited, None),
                E::DestinationIpUnroutable => (C::DestinationIpUnroutable, None),
                E::ConnectionRefused => (C::ConnectionRefused, None),
                E::ConnectionTerminated => (C::ConnectionTerminated, None),
                E::ConnectionTimeout => (C::ConnectionTimeout, None),
                E::ConnectionReadTimeout => (C::ConnectionReadTimeout, None),
                E::ConnectionWriteTimeout => (C::ConnectionWriteTimeout, None),
                E::ConnectionLimitReached => (C::ConnectionLimitReached, None),
                E::TlsProtocolError => (C::TlsProtocolError, None),
                E::TlsCertificateError => (C::TlsCertificateError, None),
                E::TlsAlertReceived(a) => (
                    C::TlsAlertReceived,
                    detail(&[
                        ("alert", a.alert_message.clone()),
                        ("id", a.alert_id.map(|id| id.to_string())),
                    ]),
                ),
                E::HttpRequestDenied => (C::HttpRequestDenied, None),
                E::HttpRequestLengthRequired => (C::HttpRequestLengthRequired, None),
                E::HttpRequestBodySize(s) => {
                    (C::HttpRequestBodySize, size(s.map(|s| s.to_string())))
                }
                E::HttpRequestMethodInvalid => (C::HttpRequestMethodInvalid, None),
                E::HttpRequestUriInvalid => (C::HttpRequestUriInvalid, None),
                E::HttpRequestUriTooLong => (C::HttpRequestUriTooLong, None),
                E::HttpRequestHeaderSectionSize(s) => {
                    (C::HttpRequestHeaderSectionSize, size(s.map(|s| s.to_string())))
                }
                E::HttpRequestHeaderSize(f) => (
                    C::HttpRequestHeaderSize,
                    f.as_ref().and_then(|f| field(&f.field_name, f.field_size)),
                ),
                E::HttpRequestTrailerSectionSize(s) => {
                    (C::HttpRequestTrailerSectionSize, size(s.map(|s| s.to_string())))
                }
                E::HttpRequestTrailerSize(f) => {
                    (C::HttpRequestTrailerSize, field(&f.field_name, f.field_size))
                }
                E::HttpResponseIncomplete => (C::HttpResponseIncomplete, None),
                E::HttpResponseHeaderSectionSize(s) => {
                    (C::HttpResponseHeaderSectionSize, size(s.map(|s| s.to_string())))
                }
                E::HttpResponseHeaderSize(f) => {
                    (C::HttpResponseHeaderSize, field(&f.field_name, f.field_size))
                }
                E::HttpResponseBodySize(s) => {
                    (C::HttpResponseBodySize, size(s.map(|s| s.to_string())))
                }
                E::HttpResponseTrailerSectionSize(s) => {
                    (C::HttpResponseTrailerSectionSize, size(s.map(|s| s.to_string())))
                }
                E::HttpResponseTrailerSize(f) => {
                    (C::HttpResponseTrailerSize, field(&f.field_name, f.field_size))
                }
                E::HttpResponseTransferCoding(c) => (
                    C::HttpResponseTransferCoding,
                    detail(&[("coding", c.clone())]),
                ),
                E::HttpResponseContentCoding(c) => (
                    C::HttpResponseContentCoding,
                    detail(&[("coding", c.clone())]),
                ),
                E::HttpResponseTimeout => (C::HttpResponseTimeout, None),
                E::HttpUpgradeFailed => (C::HttpUpgradeFailed, None),
                E::HttpProtocolError => (C::HttpProtocolError, None),
                E::LoopDetected => (C::LoopDetected, None),
                E::ConfigurationError => (C::ConfigurationError, None),
                E::InternalError(why) => (C::InternalError, why.clone()),
            };
            $crate::send_error_for(case, detail.as_deref())
        }
    };
}

/// The conversions between the core's types and the WIT types of the
/// bindings module `$wit` (an absolute path) that a build's exports need:
/// the `credential-error` both ways ([`wit_error_conversions!`](crate::wit_error_conversions)),
/// `credential-options` and `token-request-options` into the core's,
/// the core's tokens into `access-token` and `access-token-info`.
#[macro_export]
macro_rules! wit_conversions {
    ($wit:path) => {
        $crate::wit_error_conversions!($wit);

        const _: () = {
            use $wit as wit;

            impl From<wit::CredentialOptions> for $crate::Options {
                fn from(o: wit::CredentialOptions) -> Self {
                    Self {
                        broker_url: o.broker_url,
                        credential_file: o.credential_file,
                        timeout_ms: o.timeout_ms,
                        audience_map: o.audience_map,
                        allow_insecure_http: o.allow_insecure_http,
                        disable_cache: o.disable_cache,
                        lane: o.lane,
                        configuration_revision: o.configuration_revision,
                        runtime_access_url: o.runtime_access_url,
                    }
                }
            }

            impl From<wit::TokenRequestOptions> for $crate::TokenRequestOptions {
                fn from(o: wit::TokenRequestOptions) -> Self {
                    Self {
                        claims: o.claims,
                        tenant_id: o.tenant_id,
                        enable_cae: o.enable_cae,
                    }
                }
            }

            impl From<$crate::AccessToken> for wit::AccessToken {
                fn from(t: $crate::AccessToken) -> Self {
                    Self {
                        token: t.token.into_inner(),
                        expires_on: t.expires_on,
                    }
                }
            }

            impl From<$crate::TokenInfo> for wit::AccessTokenInfo {
                fn from(t: $crate::TokenInfo) -> Self {
                    Self {
                        token: t.token.into_inner(),
                        expires_on: t.expires_on,
                        token_type: "Bearer".into(),
                        refresh_on: t.refresh_on,
                    }
                }
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use WasiHttpErrorCase as C;

    fn message(error: &SendError) -> &str {
        match error {
            SendError::Failed(m) | SendError::Tls(m) => m,
            other => panic!("{other:?} has no message"),
        }
    }

    #[test]
    fn dns_timeout_is_a_timeout() {
        assert_eq!(send_error_for(C::DnsTimeout, None), SendError::TimedOut);
    }

    #[test]
    fn http_response_timeout_is_a_timeout() {
        assert_eq!(
            send_error_for(C::HttpResponseTimeout, None),
            SendError::TimedOut
        );
    }

    #[test]
    fn an_incomplete_response_is_a_closed_connection_by_its_wit_name() {
        let error = send_error_for(C::HttpResponseIncomplete, None);
        assert_eq!(
            error,
            SendError::Failed(
                "the connection closed before a complete answer \
                 (wasi:http HTTP-response-incomplete)"
                    .into()
            )
        );
        assert!(crate::retry::is_retryable_send(&error));
        assert_eq!(
            while_reading_answer(error),
            SendError::Failed(
                "reading the answer failed: the connection closed before a complete answer \
                 (wasi:http HTTP-response-incomplete)"
                    .into()
            )
        );
    }

    /// Every case maps to a kind; every one that carries a message names
    /// the case (and its payload).
    #[test]
    fn every_case_has_a_kind_and_a_message_naming_it() {
        let timeouts = [
            C::DnsTimeout,
            C::ConnectionTimeout,
            C::ConnectionReadTimeout,
            C::ConnectionWriteTimeout,
            C::HttpResponseTimeout,
        ];
        let denied = [C::HttpRequestDenied, C::DestinationIpProhibited];
        let tls = [C::TlsCertificateError, C::TlsAlertReceived];
        assert_eq!(C::ALL.len(), 39);
        let mut names = std::collections::HashSet::new();
        for &case in C::ALL {
            let name = case.wit_name();
            assert!(names.insert(name), "{name} twice");
            assert_eq!(
                format!("{case:?}").to_lowercase(),
                name.replace('-', "").to_lowercase()
            );
            for detail in [None, Some("rcode NXDOMAIN")] {
                let error = send_error_for(case, detail);
                match &error {
                    SendError::TimedOut => assert!(timeouts.contains(&case), "{name}"),
                    SendError::Denied => assert!(denied.contains(&case), "{name}"),
                    SendError::Tls(_) => assert!(tls.contains(&case), "{name}"),
                    SendError::Failed(_) => {
                        assert!(!(timeouts.contains(&case) || denied.contains(&case)));
                        assert!(!tls.contains(&case), "{name}");
                    }
                    SendError::TooLarge(_) => panic!("{name}: {error:?}"),
                }
                if matches!(error, SendError::Failed(_) | SendError::Tls(_)) {
                    let text = message(&error);
                    assert!(text.contains(&format!("(wasi:http {name}")), "{text}");
                    if let Some(detail) = detail {
                        assert!(text.contains(detail), "{text}");
                    }
                    // Names what failed: more than the case's name.
                    assert!(text.len() > name.len() + 20, "{text}");
                }
            }
        }
    }

    #[test]
    fn the_hosts_named_tls_failure_is_kept_as_it_is() {
        let why = format!("{TLS_HANDSHAKE_FAILED}: the broker's certificate has expired: renew it");
        assert_eq!(
            send_error_for(C::InternalError, Some(&why)),
            SendError::Tls(why)
        );
        assert_eq!(
            send_error_for(C::InternalError, Some("the proxy failed")),
            SendError::Failed("the proxy failed (wasi:http internal-error)".into())
        );
        assert_eq!(
            send_error_for(C::InternalError, None),
            SendError::Failed("the host's HTTP client failed (wasi:http internal-error)".into())
        );
    }

    #[test]
    fn failures_are_retried_and_refusals_not() {
        use crate::retry::is_retryable_send;
        assert!(is_retryable_send(&send_error_for(
            C::ConnectionRefused,
            None
        )));
        assert!(is_retryable_send(&send_error_for(
            C::TlsProtocolError,
            None
        )));
        assert!(!is_retryable_send(&send_error_for(
            C::TlsCertificateError,
            None
        )));
        assert!(!is_retryable_send(&send_error_for(
            C::DestinationIpProhibited,
            None
        )));
        assert_eq!(
            send_error_for(C::DnsError, Some("rcode NXDOMAIN")),
            SendError::Failed(
                "the broker's host name did not resolve (wasi:http DNS-error: rcode NXDOMAIN)"
                    .into()
            )
        );
    }

    #[test]
    fn payloads_in_words() {
        assert_eq!(
            wasi_http_detail(&[("rcode", None), ("info-code", None)]),
            None
        );
        assert_eq!(
            wasi_http_detail(&[
                ("rcode", Some("NXDOMAIN".into())),
                ("info-code", Some("3".into()))
            ]),
            Some("rcode NXDOMAIN, info-code 3".into())
        );
    }
}
