//! The one error type, mirrored case for case by the WIT `credential-error`.
//!
//! Each payload string is a complete sentence that names what failed and what
//! to do about it. No payload ever holds the bearer or a minted token: callers
//! build messages from paths, variable names, statuses and scrubbed excerpts
//! only (see `excerpt`).

/// Why a credential could not be built or a token could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// A setting is missing or invalid; the message names the env var or option.
    #[error("credential configuration error: {0}")]
    Configuration(String),

    /// No scope, or scopes that map to different audiences.
    #[error("invalid scopes: {0}")]
    InvalidScopes(String),

    /// A scope that maps to no resource this credential serves (for a
    /// host-linked agent: none its policy allows).
    #[error(
        "scope {scope:?} is not allowed: it maps to none of the resources this credential serves: \
         {}. Request one of these (optionally with /.default); to serve another resource, add it \
         with the audience-map option (for a host-linked agent, the host's policy decides)",
        known_resources.join(", ")
    )]
    ScopeNotAllowed {
        /// The scope as the caller gave it.
        scope: String,
        /// Every resource the credential knows, sorted.
        known_resources: Vec<String>,
    },

    /// The bearer file is missing, unreadable, outside the sandbox, empty or malformed.
    #[error("intent bearer unavailable: {0}")]
    BearerUnavailable(String),

    /// The broker could not be reached (connect failure, DNS, timeout, denied by the host).
    #[error("could not reach the credential broker: {0}")]
    BrokerUnreachable(String),

    /// The broker answered 401 or 403.
    #[error(
        "the credential broker rejected the request (HTTP {status}): the intent access token may be \
         expired, revoked, or out of scope; start a new Studio intent session{}",
        detail_suffix(detail)
    )]
    BrokerRejected {
        /// The HTTP status.
        status: u16,
        /// A scrubbed excerpt of the broker's body.
        detail: String,
    },

    /// The broker answered another non-2xx status.
    #[error(
        "the credential broker failed with HTTP {status}; check the broker's logs or retry later{}",
        detail_suffix(detail)
    )]
    BrokerFailed {
        /// The HTTP status.
        status: u16,
        /// A scrubbed excerpt of the broker's body.
        detail: String,
    },

    /// A 2xx answer that is not a usable token.
    #[error("invalid response from the credential broker: {0}")]
    InvalidResponse(String),

    /// A request option the broker cannot honour (a claims challenge).
    #[error("unsupported request: {0}")]
    Unsupported(String),
}

impl CredentialError {
    /// The WIT `credential-error` case's name (`scope-not-allowed`, ...): a
    /// kind to log or to match on without the message.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Configuration(_) => "configuration",
            Self::InvalidScopes(_) => "invalid-scopes",
            Self::ScopeNotAllowed { .. } => "scope-not-allowed",
            Self::BearerUnavailable(_) => "bearer-unavailable",
            Self::BrokerUnreachable(_) => "broker-unreachable",
            Self::BrokerRejected { .. } => "broker-rejected",
            Self::BrokerFailed { .. } => "broker-failed",
            Self::InvalidResponse(_) => "invalid-response",
            Self::Unsupported(_) => "unsupported",
        }
    }

    /// The same error, saying it is what the last of `attempts` attempts got.
    pub fn after_attempts(self, attempts: u32) -> Self {
        if attempts < 2 {
            return self;
        }
        let note = format!("after {attempts} attempts");
        let with = |m: String| format!("{m} ({note})");
        let detail = |d: String| {
            if d.is_empty() {
                format!("({note})")
            } else {
                format!("{d} ({note})")
            }
        };
        match self {
            Self::BrokerRejected { status, detail: d } => Self::BrokerRejected {
                status,
                detail: detail(d),
            },
            Self::BrokerFailed { status, detail: d } => Self::BrokerFailed {
                status,
                detail: detail(d),
            },
            Self::BrokerUnreachable(m) => Self::BrokerUnreachable(with(m)),
            Self::InvalidResponse(m) => Self::InvalidResponse(with(m)),
            other => other,
        }
    }
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(". Broker said: {detail}")
    }
}

/// `From` both ways between [`CredentialError`] and the WIT `credential-error`
/// type of the bindings module `$wit` (an absolute path): every build's
/// exports and every host's bindings map it the same way.
#[macro_export]
macro_rules! wit_error_conversions {
    ($wit:path) => {
        const _: () = {
            use $wit as wit;
            impl From<wit::CredentialError> for $crate::CredentialError {
                fn from(e: wit::CredentialError) -> Self {
                    use wit::CredentialError as W;
                    use $crate::CredentialError as E;
                    match e {
                        W::Configuration(m) => E::Configuration(m),
                        W::InvalidScopes(m) => E::InvalidScopes(m),
                        W::ScopeNotAllowed(s) => E::ScopeNotAllowed {
                            scope: s.scope,
                            known_resources: s.known_resources,
                        },
                        W::BearerUnavailable(m) => E::BearerUnavailable(m),
                        W::BrokerUnreachable(m) => E::BrokerUnreachable(m),
                        W::BrokerRejected(f) => E::BrokerRejected {
                            status: f.status,
                            detail: f.detail,
                        },
                        W::BrokerFailed(f) => E::BrokerFailed {
                            status: f.status,
                            detail: f.detail,
                        },
                        W::InvalidResponse(m) => E::InvalidResponse(m),
                        W::Unsupported(m) => E::Unsupported(m),
                    }
                }
            }

            impl From<$crate::CredentialError> for wit::CredentialError {
                fn from(e: $crate::CredentialError) -> Self {
                    use wit::CredentialError as W;
                    use $crate::CredentialError as E;
                    match e {
                        E::Configuration(m) => W::Configuration(m),
                        E::InvalidScopes(m) => W::InvalidScopes(m),
                        E::ScopeNotAllowed {
                            scope,
                            known_resources,
                        } => W::ScopeNotAllowed(wit::ScopeNotAllowed {
                            scope,
                            known_resources,
                        }),
                        E::BearerUnavailable(m) => W::BearerUnavailable(m),
                        E::BrokerUnreachable(m) => W::BrokerUnreachable(m),
                        E::BrokerRejected { status, detail } => {
                            W::BrokerRejected(wit::BrokerFailure { status, detail })
                        }
                        E::BrokerFailed { status, detail } => {
                            W::BrokerFailed(wit::BrokerFailure { status, detail })
                        }
                        E::InvalidResponse(m) => W::InvalidResponse(m),
                        E::Unsupported(m) => W::Unsupported(m),
                    }
                }
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_fix() {
        let e = CredentialError::ScopeNotAllowed {
            scope: "https://x".into(),
            known_resources: vec!["a".into(), "b".into()],
        };
        let text = e.to_string();
        assert!(text.contains("\"https://x\""), "{text}");
        assert!(text.contains("a, b"), "{text}");
        assert!(text.contains("audience-map"), "{text}");

        let e = CredentialError::BrokerRejected {
            status: 401,
            detail: String::new(),
        };
        assert!(e.to_string().contains("HTTP 401"));
        assert!(!e.to_string().contains("Broker said"));
        let e = CredentialError::BrokerFailed {
            status: 500,
            detail: "boom".into(),
        };
        assert!(e.to_string().ends_with("Broker said: boom"));
        let e = e.after_attempts(3);
        assert!(
            e.to_string()
                .ends_with("Broker said: boom (after 3 attempts)"),
            "{e}"
        );
        let e = CredentialError::BrokerUnreachable("x".into()).after_attempts(1);
        assert_eq!(e, CredentialError::BrokerUnreachable("x".into()));
    }
}
