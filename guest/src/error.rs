//! The error: the WIT `credential-error`, case for case.

use std::fmt;

use crate::raw;

/// Why a credential could not be opened or a token could not be had.
///
/// `Display` is the credential's own sentence (the WIT `describe-error`),
/// naming what failed and what to do; no case holds the bearer or a token.
///
/// ```no_run
/// use vd_cred_guest::{Credential, Error};
/// match Credential::new().and_then(|c| c.token(&["https://vault.azure.net/.default"])) {
///     Ok(token) => println!("expires at {}", token.expires_on),
///     Err(Error::BrokerRejected { status, .. }) => eprintln!("start a new session ({status})"),
///     Err(e) => eprintln!("{e}"),
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A setting is missing or invalid; names the env var or option.
    Configuration(String),
    /// No scope, or scopes that map to different audiences.
    InvalidScopes(String),
    /// A scope that maps to no known resource (for a host-linked agent: one
    /// its policy does not allow).
    ScopeNotAllowed {
        /// The scope as the caller gave it.
        scope: String,
        /// The resources this credential knows (may ask for), sorted.
        known_resources: Vec<String>,
    },
    /// The bearer file is missing, unreadable, empty or malformed (is the
    /// Studio intent session active?).
    BearerUnavailable(String),
    /// The broker could not be reached (is Studio running?).
    BrokerUnreachable(String),
    /// The broker answered 401 or 403: the intent bearer may be expired,
    /// revoked, or out of scope.
    BrokerRejected {
        /// The HTTP status.
        status: u16,
        /// A scrubbed excerpt of the broker's body; may be empty.
        detail: String,
    },
    /// The broker answered another non-2xx status (429: a host's budget).
    BrokerFailed {
        /// The HTTP status.
        status: u16,
        /// A scrubbed excerpt of the broker's body; may be empty.
        detail: String,
    },
    /// A 2xx answer that is not a usable token.
    InvalidResponse(String),
    /// A request option the broker cannot honour, or a token call the host's
    /// policy does not allow (it adds tokens to the agent's requests instead).
    Unsupported(String),
}

impl fmt::Display for Error {
    /// The credential's `describe-error`: one source for every message.
    #[cfg(target_arch = "wasm32")]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&raw::describe_error(&self.clone().into()))
    }

    /// Off wasm32 there is no credential to ask: the case and its payload.
    #[cfg(not(target_arch = "wasm32"))]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Configuration(m) => write!(f, "credential configuration error: {m}"),
            Error::InvalidScopes(m) => write!(f, "invalid scopes: {m}"),
            Error::ScopeNotAllowed {
                scope,
                known_resources,
            } => write!(
                f,
                "scope {scope:?} is not allowed; known resources: {}",
                known_resources.join(", ")
            ),
            Error::BearerUnavailable(m) => write!(f, "intent bearer unavailable: {m}"),
            Error::BrokerUnreachable(m) => {
                write!(f, "could not reach the credential broker: {m}")
            }
            Error::BrokerRejected { status, detail } => {
                write!(
                    f,
                    "the credential broker rejected the request (HTTP {status}) {detail}"
                )
            }
            Error::BrokerFailed { status, detail } => {
                write!(
                    f,
                    "the credential broker failed with HTTP {status} {detail}"
                )
            }
            Error::InvalidResponse(m) => {
                write!(f, "invalid response from the credential broker: {m}")
            }
            Error::Unsupported(m) => write!(f, "unsupported request: {m}"),
        }
    }
}

impl From<raw::CredentialError> for Error {
    fn from(e: raw::CredentialError) -> Self {
        use raw::CredentialError as W;
        match e {
            W::Configuration(m) => Error::Configuration(m),
            W::InvalidScopes(m) => Error::InvalidScopes(m),
            W::ScopeNotAllowed(s) => Error::ScopeNotAllowed {
                scope: s.scope,
                known_resources: s.known_resources,
            },
            W::BearerUnavailable(m) => Error::BearerUnavailable(m),
            W::BrokerUnreachable(m) => Error::BrokerUnreachable(m),
            W::BrokerRejected(b) => Error::BrokerRejected {
                status: b.status,
                detail: b.detail,
            },
            W::BrokerFailed(b) => Error::BrokerFailed {
                status: b.status,
                detail: b.detail,
            },
            W::InvalidResponse(m) => Error::InvalidResponse(m),
            W::Unsupported(m) => Error::Unsupported(m),
        }
    }
}

impl From<Error> for raw::CredentialError {
    fn from(e: Error) -> Self {
        use raw::CredentialError as W;
        match e {
            Error::Configuration(m) => W::Configuration(m),
            Error::InvalidScopes(m) => W::InvalidScopes(m),
            Error::ScopeNotAllowed {
                scope,
                known_resources,
            } => W::ScopeNotAllowed(raw::ScopeNotAllowed {
                scope,
                known_resources,
            }),
            Error::BearerUnavailable(m) => W::BearerUnavailable(m),
            Error::BrokerUnreachable(m) => W::BrokerUnreachable(m),
            Error::BrokerRejected { status, detail } => {
                W::BrokerRejected(raw::BrokerFailure { status, detail })
            }
            Error::BrokerFailed { status, detail } => {
                W::BrokerFailed(raw::BrokerFailure { status, detail })
            }
            Error::InvalidResponse(m) => W::InvalidResponse(m),
            Error::Unsupported(m) => W::Unsupported(m),
        }
    }
}
