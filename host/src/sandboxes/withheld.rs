//! What an agent is not told: the credential's broker URL, its bearer
//! file's path and the helper's socket are the host's business. Errors
//! passed through the linked route name them generically ("the credential
//! broker", "the bearer file"); the host's audit keeps the full text.

use std::path::Path;

use vd_cred_broker::{CredentialError, ENV_BROKER_URL, ENV_CREDENTIAL_FILE};

use crate::outbound::broker_only::RUNTIME_ACCESS_URL;

/// The strings to withhold, each with the words that replace it.
#[derive(Debug, Clone, Default)]
pub struct Withheld {
    /// Longest first, so that a URL goes before its origin.
    pairs: Vec<(String, &'static str)>,
}

const BROKER: &str = "the credential broker";
const BEARER: &str = "the bearer file";
const HELPER: &str = "the runtime-access helper";
const SOCKET: &str = "the runtime-access socket";

impl Withheld {
    /// For a sandbox with this environment, broker URL and helper socket.
    pub fn new(env: &[(String, String)], broker: Option<&str>, socket: Option<&Path>) -> Self {
        let var = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut pairs = Vec::new();
        for url in [var(ENV_BROKER_URL), broker.map(str::to_string)]
            .into_iter()
            .flatten()
        {
            let url = url.trim_end_matches('/').to_string();
            pairs.push((format!("{url}/token"), BROKER));
            if let Some((scheme, rest)) = url.split_once("://") {
                let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
                if !authority.is_empty() {
                    pairs.push((format!("{scheme}://{authority}"), BROKER));
                    pairs.push((authority.to_string(), BROKER));
                }
            }
            pairs.push((url, BROKER));
        }
        if let Some(path) = var(ENV_CREDENTIAL_FILE) {
            // `the bearer file "/run/vd/credential" (...)`: drop the path.
            pairs.push((format!("{BEARER} {path:?}"), BEARER));
            pairs.push((format!("{path:?}"), BEARER));
            pairs.push((path, BEARER));
        }
        pairs.push((format!("{RUNTIME_ACCESS_URL}/v1/credentials"), HELPER));
        pairs.push((RUNTIME_ACCESS_URL.to_string(), HELPER));
        if let Some(socket) = socket {
            pairs.push((socket.display().to_string(), SOCKET));
        }
        pairs.retain(|(s, _)| !s.is_empty());
        pairs.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        pairs.dedup();
        Withheld { pairs }
    }

    /// `text` with every withheld string replaced.
    pub fn text(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (secret, words) in &self.pairs {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), words);
            }
        }
        text
    }

    /// `error` with every withheld string replaced; same variant, same status.
    pub fn error(&self, error: CredentialError) -> CredentialError {
        use CredentialError as E;
        match error {
            E::Configuration(m) => E::Configuration(self.text(&m)),
            E::InvalidScopes(m) => E::InvalidScopes(self.text(&m)),
            E::ScopeNotAllowed {
                scope,
                known_resources,
            } => E::ScopeNotAllowed {
                scope,
                known_resources,
            },
            E::BearerUnavailable(m) => E::BearerUnavailable(self.text(&m)),
            E::BrokerUnreachable(m) => E::BrokerUnreachable(self.text(&m)),
            E::BrokerRejected { status, detail } => E::BrokerRejected {
                status,
                detail: self.text(&detail),
            },
            E::BrokerFailed { status, detail } => E::BrokerFailed {
                status,
                detail: self.text(&detail),
            },
            E::InvalidResponse(m) => E::InvalidResponse(self.text(&m)),
            E::Unsupported(m) => E::Unsupported(self.text(&m)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn broker_bearer_and_helper_are_named_generically() {
        let w = Withheld::new(
            &env(&[
                (
                    ENV_BROKER_URL,
                    "http://127.0.0.1:4711/api/v1/credential-broker/",
                ),
                (ENV_CREDENTIAL_FILE, "/run/vd/credential"),
            ]),
            Some("http://127.0.0.1:4711/api/v1/credential-broker"),
            Some(Path::new("/run/vd-access/program.sock")),
        );
        let unreachable = CredentialError::BrokerUnreachable(
            "no answer from http://127.0.0.1:4711/api/v1/credential-broker/token within 10 ms \
             (connecting to 127.0.0.1:4711 failed)"
                .into(),
        );
        assert_eq!(
            w.error(unreachable).to_string(),
            "could not reach the credential broker: no answer from the credential broker within \
             10 ms (connecting to the credential broker failed)"
        );
        let bearer = CredentialError::BearerUnavailable(
            "the bearer file \"/run/vd/credential\" (VD_CREDENTIAL_FILE) does not exist".into(),
        );
        assert_eq!(
            w.error(bearer).to_string(),
            "intent bearer unavailable: the bearer file (VD_CREDENTIAL_FILE) does not exist"
        );
        let helper = CredentialError::BrokerUnreachable(
            "runtime access helper is unavailable at http://runtime-access/v1/credentials \
             (/run/vd-access/program.sock: refused)"
                .into(),
        );
        let text = w.error(helper).to_string();
        assert!(!text.contains("runtime-access/") && !text.contains("program.sock"));
        let failed = CredentialError::BrokerFailed {
            status: 503,
            detail: "upstream http://127.0.0.1:4711 down".into(),
        };
        assert_eq!(
            w.error(failed),
            CredentialError::BrokerFailed {
                status: 503,
                detail: "upstream the credential broker down".into()
            }
        );
    }

    #[test]
    fn nothing_to_withhold_leaves_the_text() {
        let w = Withheld::new(&[], None, None);
        let e = CredentialError::InvalidScopes("no scope".into());
        assert_eq!(w.error(e.clone()), e);
    }
}
