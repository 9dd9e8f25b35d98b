//! One token from call to answer: settings, scopes -> audience, bearer,
//! request, answer. The outside world comes in through [`Platform`].

use std::time::{Duration, Instant};

use crate::{
    BrokerRequest, CredentialError, Options, Secret, Settings, bearer::read_bearer, parse_answer,
};

/// An access token and when it expires (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// The token; a secret.
    pub token: Secret,
    /// Expiry, Unix seconds.
    pub expires_on: u64,
}

/// The broker's raw answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body, as read (the transport caps it).
    pub body: Vec<u8>,
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Nothing came back within the time left.
    TimedOut,
    /// The host's HTTP policy refused the request.
    Denied,
    /// The answer's body was larger than the transport accepts.
    TooLarge(usize),
    /// Anything else: refused connection, DNS, reset, protocol error.
    Failed(String),
}

/// What the credential needs from outside: a clock, the bearer file, and a
/// way to send one request. The component implements it over WASI.
pub trait Platform {
    /// The wall clock, in Unix seconds.
    fn now_unix(&mut self) -> u64;

    /// Read and check the bearer file.
    fn read_bearer(&mut self, path: &str) -> Result<Secret, CredentialError> {
        read_bearer(path)
    }

    /// Send `request` and read the answer, giving up after `timeout`.
    fn send(&mut self, request: &BrokerRequest, timeout: Duration) -> Result<Answer, SendError>;
}

/// A credential bound to one broker and one bearer file.
#[derive(Debug, Clone)]
pub struct Credential {
    settings: Settings,
}

impl Credential {
    /// Resolve and check settings; reads and sends nothing.
    pub fn open(
        options: &Options,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, CredentialError> {
        Ok(Credential {
            settings: Settings::resolve(options, env)?,
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Mint a token for `scopes`: one bearer read and one broker round trip,
    /// all within the timeout.
    pub fn get_token(
        &self,
        scopes: &[String],
        platform: &mut impl Platform,
    ) -> Result<AccessToken, CredentialError> {
        let started = Instant::now();
        let audience = self.settings.audiences.audience_for(scopes)?;
        let bearer = platform.read_bearer(&self.settings.credential_file)?;
        let request = BrokerRequest::mint(self.settings.token_url(), bearer, audience);
        let left = self.settings.timeout.saturating_sub(started.elapsed());
        let answer = platform
            .send(&request, left)
            .map_err(|e| self.unreachable(&request, e))?;
        let minted = parse_answer(answer.status, &answer.body, &[request.bearer.expose()])?;
        Ok(AccessToken {
            token: minted.token,
            expires_on: platform.now_unix().saturating_add(minted.expires_in),
        })
    }

    fn unreachable(&self, request: &BrokerRequest, error: SendError) -> CredentialError {
        let url = &request.url;
        let ms = self.settings.timeout.as_millis();
        match error {
            SendError::TimedOut => CredentialError::BrokerUnreachable(format!(
                "no answer from {url} within {ms} ms (timeout-ms): is Studio running? \
                 Raise timeout-ms if the broker is just slow"
            )),
            SendError::Denied => CredentialError::BrokerUnreachable(format!(
                "the host refused the request to {url}: the sandbox lets the component reach only \
                 the broker's address; check VD_CREDENTIAL_BROKER_URL and the host's HTTP policy"
            )),
            SendError::TooLarge(limit) => CredentialError::InvalidResponse(format!(
                "the answer from {url} is larger than {limit} bytes; it was not read further"
            )),
            SendError::Failed(why) => CredentialError::BrokerUnreachable(format!(
                "{url} failed: {why}: is Studio running, and is VD_CREDENTIAL_BROKER_URL right?"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        bearer: Result<&'static str, CredentialError>,
        answer: Result<Answer, SendError>,
        sent: Vec<(BrokerRequest, Duration)>,
    }

    impl Platform for Fake {
        fn now_unix(&mut self) -> u64 {
            1_000
        }
        fn read_bearer(&mut self, _: &str) -> Result<Secret, CredentialError> {
            self.bearer.clone().map(|b| Secret::new(b.into()))
        }
        fn send(
            &mut self,
            request: &BrokerRequest,
            timeout: Duration,
        ) -> Result<Answer, SendError> {
            self.sent.push((request.clone(), timeout));
            self.answer.clone()
        }
    }

    fn fake(answer: Result<Answer, SendError>) -> Fake {
        Fake {
            bearer: Ok("vd_iat_b"),
            answer,
            sent: vec![],
        }
    }

    fn credential() -> Credential {
        let options = Options {
            broker_url: Some("http://127.0.0.1:9/api/".into()),
            credential_file: Some("/run/vd/credential".into()),
            timeout_ms: Some(500),
            ..Default::default()
        };
        Credential::open(&options, |_| None).unwrap()
    }

    #[test]
    fn mints_with_expiry_from_clock() {
        let mut p = fake(Ok(Answer {
            status: 200,
            body: br#"{"access_token":"tok","expires_in":"60"}"#.to_vec(),
        }));
        let t = credential()
            .get_token(&["https://vault.azure.net/.default".into()], &mut p)
            .unwrap();
        assert_eq!((t.token.expose(), t.expires_on), ("tok", 1_060));
        let (req, timeout) = &p.sent[0];
        assert_eq!(req.url, "http://127.0.0.1:9/api/token");
        assert_eq!(req.body, br#"{"audience":"vault"}"#);
        assert!(*timeout <= Duration::from_millis(500) && *timeout > Duration::from_millis(400));
    }

    #[test]
    fn scope_errors_come_before_any_io() {
        let mut p = fake(Err(SendError::TimedOut));
        p.bearer = Err(CredentialError::BearerUnavailable("x".into()));
        let err = credential()
            .get_token(&["https://nope".into()], &mut p)
            .unwrap_err();
        assert!(matches!(err, CredentialError::ScopeNotAllowed { .. }));
        assert!(p.sent.is_empty());
        let err = credential()
            .get_token(&["https://vault.azure.net".into()], &mut p)
            .unwrap_err();
        assert!(matches!(err, CredentialError::BearerUnavailable(_)));
        assert!(p.sent.is_empty());
    }

    #[test]
    fn send_errors_map_to_cases() {
        let scope = ["https://storage.azure.com/.default".to_string()];
        for (e, want) in [
            (SendError::TimedOut, "500 ms"),
            (SendError::Denied, "refused"),
            (
                SendError::Failed("connection refused".into()),
                "connection refused",
            ),
        ] {
            let err = credential()
                .get_token(&scope, &mut fake(Err(e)))
                .unwrap_err();
            assert!(
                matches!(err, CredentialError::BrokerUnreachable(ref m) if m.contains(want)),
                "{err}"
            );
        }
        let err = credential()
            .get_token(&scope, &mut fake(Err(SendError::TooLarge(10))))
            .unwrap_err();
        assert!(matches!(err, CredentialError::InvalidResponse(_)));
    }
}
