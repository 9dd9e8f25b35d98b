//! The wit-bindgen exports: WIT types <-> core types, and [`Platform`] over WASI.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{BrokerRequest, Credential, CredentialError, Options, Platform, transport};

wit_bindgen::generate!({ world: "cred-broker", path: "wit" });

use exports::vibedata::cred_broker::token_credential as wit;

struct Component;
export!(Component);

/// The platform inside the component: std's clock and filesystem are
/// wasi:clocks and wasi:filesystem; requests go out through wasi:http.
struct Wasi;

impl Platform for Wasi {
    fn now_unix(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn send(
        &mut self,
        request: &BrokerRequest,
        timeout: Duration,
    ) -> Result<crate::Answer, crate::SendError> {
        transport::send(request, timeout)
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn get_token(
    credential: &Credential,
    scopes: Vec<String>,
) -> Result<wit::AccessToken, wit::CredentialError> {
    let token = credential.get_token(&scopes, &mut Wasi)?;
    Ok(wit::AccessToken {
        token: token.token.into_inner(),
        expires_on: token.expires_on,
    })
}

impl wit::Guest for Component {
    type Credential = Credential;

    fn get_token(scopes: Vec<String>) -> Result<wit::AccessToken, wit::CredentialError> {
        get_token(&Credential::open(&Options::default(), env)?, scopes)
    }

    fn describe_error(error: wit::CredentialError) -> String {
        CredentialError::from(error).to_string()
    }
}

impl wit::GuestCredential for Credential {
    fn open(options: wit::CredentialOptions) -> Result<wit::Credential, wit::CredentialError> {
        let options = Options {
            broker_url: options.broker_url,
            credential_file: options.credential_file,
            timeout_ms: options.timeout_ms,
            audience_map: options.audience_map,
            allow_insecure_http: options.allow_insecure_http,
        };
        Ok(wit::Credential::new(Credential::open(&options, env)?))
    }

    fn get_token(&self, scopes: Vec<String>) -> Result<wit::AccessToken, wit::CredentialError> {
        get_token(self, scopes)
    }
}

impl From<CredentialError> for wit::CredentialError {
    fn from(e: CredentialError) -> Self {
        use CredentialError as E;
        match e {
            E::Configuration(m) => Self::Configuration(m),
            E::InvalidScopes(m) => Self::InvalidScopes(m),
            E::ScopeNotAllowed {
                scope,
                known_resources,
            } => Self::ScopeNotAllowed(wit::ScopeNotAllowed {
                scope,
                known_resources,
            }),
            E::BearerUnavailable(m) => Self::BearerUnavailable(m),
            E::BrokerUnreachable(m) => Self::BrokerUnreachable(m),
            E::BrokerRejected { status, detail } => {
                Self::BrokerRejected(wit::BrokerFailure { status, detail })
            }
            E::BrokerFailed { status, detail } => {
                Self::BrokerFailed(wit::BrokerFailure { status, detail })
            }
            E::InvalidResponse(m) => Self::InvalidResponse(m),
        }
    }
}

impl From<wit::CredentialError> for CredentialError {
    fn from(e: wit::CredentialError) -> Self {
        use wit::CredentialError as W;
        match e {
            W::Configuration(m) => Self::Configuration(m),
            W::InvalidScopes(m) => Self::InvalidScopes(m),
            W::ScopeNotAllowed(s) => Self::ScopeNotAllowed {
                scope: s.scope,
                known_resources: s.known_resources,
            },
            W::BearerUnavailable(m) => Self::BearerUnavailable(m),
            W::BrokerUnreachable(m) => Self::BrokerUnreachable(m),
            W::BrokerRejected(f) => Self::BrokerRejected {
                status: f.status,
                detail: f.detail,
            },
            W::BrokerFailed(f) => Self::BrokerFailed {
                status: f.status,
                detail: f.detail,
            },
            W::InvalidResponse(m) => Self::InvalidResponse(m),
        }
    }
}
