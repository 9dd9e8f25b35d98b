//! Tokens, with the secret behind a type whose `Debug` does not show it.

use std::fmt;

use crate::raw;

/// A secret string (a token): `Debug` prints `Secret(<redacted>)`; read it
/// with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret itself, as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Secret(secret)
    }
}

/// An access token (azure-core's `AccessToken`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// The token, to send as `Authorization: Bearer <token>`.
    pub token: Secret,
    /// When it expires, in Unix seconds.
    pub expires_on: u64,
}

impl AccessToken {
    /// `Bearer <token>`: the value of the `Authorization` header.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.token.expose())
    }
}

/// An access token with its refresh time (azure-core's `AccessTokenInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenInfo {
    /// The token, to send as `Authorization: Bearer <token>`.
    pub token: Secret,
    /// When it expires, in Unix seconds.
    pub expires_on: u64,
    /// Always `Bearer`.
    pub token_type: String,
    /// When to get a fresh one, in Unix seconds (when none: 300 s before
    /// `expires_on`).
    pub refresh_on: Option<u64>,
}

/// azure-core's `TokenRequestOptions`: the WIT `token-request-options`
/// record. A non-empty `claims` is refused ([`crate::Error::Unsupported`]);
/// the rest have no effect.
pub type TokenRequestOptions = raw::TokenRequestOptions;

impl From<raw::AccessToken> for AccessToken {
    fn from(t: raw::AccessToken) -> Self {
        AccessToken {
            token: Secret(t.token),
            expires_on: t.expires_on,
        }
    }
}

impl From<AccessToken> for raw::AccessToken {
    fn from(t: AccessToken) -> Self {
        raw::AccessToken {
            token: t.token.0,
            expires_on: t.expires_on,
        }
    }
}

impl From<raw::AccessTokenInfo> for AccessTokenInfo {
    fn from(t: raw::AccessTokenInfo) -> Self {
        AccessTokenInfo {
            token: Secret(t.token),
            expires_on: t.expires_on,
            token_type: t.token_type,
            refresh_on: t.refresh_on,
        }
    }
}

impl From<AccessTokenInfo> for raw::AccessTokenInfo {
    fn from(t: AccessTokenInfo) -> Self {
        raw::AccessTokenInfo {
            token: t.token.0,
            expires_on: t.expires_on,
            token_type: t.token_type,
            refresh_on: t.refresh_on,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let token = AccessToken {
            token: Secret::from("eyJsecret".to_string()),
            expires_on: 7,
        };
        let shown = format!("{token:?}");
        assert!(!shown.contains("eyJsecret"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
        assert_eq!(token.authorization(), "Bearer eyJsecret");
        assert_eq!(raw::AccessToken::from(token).token, "eyJsecret");
    }
}
