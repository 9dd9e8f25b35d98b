//! One token from call to answer: settings, scopes -> audience, bearer,
//! cache, request with retries, answer. The outside world comes in through
//! [`Platform`].

use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::cache::{BearerDigest, Lookup, TokenCache, TokenInfo};
use crate::retry::{MAX_ATTEMPTS, attempt_budget, backoff, is_retryable_send, is_retryable_status};
use crate::{
    BrokerRequest, CredentialError, Minted, Mode, Options, Secret, Settings, bearer::read_bearer,
    parse_answer, parse_helper_answer,
};

/// An access token and when it expires (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// The token; a secret.
    pub token: Secret,
    /// Expiry, Unix seconds.
    pub expires_on: u64,
}

/// azure-core's `TokenRequestOptions`. The broker takes none of them:
/// `tenant_id` and `enable_cae` are accepted and have no effect; `claims` is
/// refused, since a claims challenge cannot be met by the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenRequestOptions {
    /// A claims challenge from a resource; refused when non-empty.
    pub claims: Option<String>,
    /// Ignored: the broker decides the tenant.
    pub tenant_id: Option<String>,
    /// Ignored: the broker decides.
    pub enable_cae: bool,
}

/// The broker's raw answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body, as read: at most [`crate::MAX_ANSWER_BYTES`]. A non-2xx body
    /// past the cap is cut there (status first); a 2xx one is
    /// [`SendError::TooLarge`].
    pub body: Vec<u8>,
    /// The `Retry-After` header in seconds, if sent in that form.
    pub retry_after: Option<Duration>,
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Nothing came back within the time left.
    TimedOut,
    /// The host's HTTP policy refused the request.
    Denied,
    /// A 2xx answer's body was larger than the transport accepts.
    TooLarge(usize),
    /// The TLS handshake failed in a way another attempt would repeat (an
    /// untrusted, expired or misnamed certificate): not retried.
    Tls(String),
    /// Anything else: refused connection, DNS, reset, protocol error.
    Failed(String),
}

/// What the credential needs from outside: clocks, the bearer file, and a
/// way to send one request. The component implements it over WASI.
pub trait Platform {
    /// The wall clock, in Unix seconds.
    fn now_unix(&mut self) -> u64;

    /// Read and check the bearer file.
    fn read_bearer(&mut self, path: &str) -> Result<Secret, CredentialError> {
        read_bearer(path)
    }

    /// Send `request` and read the answer, giving up after `timeout`. A
    /// non-2xx body is read up to [`crate::MAX_ANSWER_BYTES`] and cut there;
    /// a 2xx body over it is [`SendError::TooLarge`].
    fn send(&mut self, request: &BrokerRequest, timeout: Duration) -> Result<Answer, SendError>;

    /// Wait (between retries).
    fn sleep(&mut self, duration: Duration);

    /// A number in `[0, 1)` for backoff jitter; need not be cryptographic.
    fn random_unit(&mut self) -> f64;
}

/// A credential bound to one broker and one bearer file, with its own cache.
#[derive(Debug)]
pub struct Credential {
    settings: Settings,
    cache: Option<RefCell<TokenCache>>,
}

impl Credential {
    /// Resolve and check settings; reads and sends nothing.
    pub fn open(
        options: &Options,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, CredentialError> {
        Ok(Credential {
            settings: Settings::resolve(options, env)?,
            cache: (!options.disable_cache).then(RefCell::default),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A token for `scopes`, as azure-core's `get_token`.
    pub fn get_token(
        &self,
        scopes: &[String],
        platform: &mut impl Platform,
    ) -> Result<AccessToken, CredentialError> {
        let info = self.get_token_info(scopes, &TokenRequestOptions::default(), platform)?;
        Ok(AccessToken {
            token: info.token,
            expires_on: info.expires_on,
        })
    }

    /// A token for `scopes` with its refresh time, as azure-core's `get_token_info`.
    ///
    /// The bearer file is read on every call. A cached token is served only
    /// while the file holds the bearer that minted it and no refresh is due;
    /// a due refresh that fails transiently serves the unexpired cached token.
    pub fn get_token_info(
        &self,
        scopes: &[String],
        options: &TokenRequestOptions,
        platform: &mut impl Platform,
    ) -> Result<TokenInfo, CredentialError> {
        let started = Instant::now();
        if options
            .claims
            .as_deref()
            .is_some_and(|c| !c.trim().is_empty())
        {
            return Err(CredentialError::Unsupported(
                "a claims challenge was passed, but the Studio credential broker mints tokens without \
                 claims and cannot meet it: ask Studio for an intent that grants the access directly"
                    .into(),
            ));
        }
        let audience = self.settings.audiences.audience_for(scopes)?;
        // Broker modes read the bearer on every call, hit or miss; lane and
        // revision are checked before anything is read or sent. The helper
        // holds the bearer, so its tokens are cached by audience alone.
        let broker = match &self.settings.mode {
            Mode::Broker {
                credential_file, ..
            } => {
                let protocol = self.settings.protocol()?;
                Some((protocol, platform.read_bearer(credential_file)?))
            }
            Mode::Helper { .. } => None,
        };
        let mut digest = broker
            .as_ref()
            .map_or(BearerDigest::HELPER, |(_, bearer)| BearerDigest::of(bearer));
        let lookup = match &self.cache {
            Some(cache) => cache.borrow().lookup(audience, digest, platform.now_unix()),
            None => Lookup::Miss,
        };
        if let Lookup::Fresh(info) = lookup {
            return Ok(info);
        }
        // Only a miss or a due refresh pays for building the request.
        let url = self.settings.token_url();
        let (request, protocol) = match broker {
            Some((protocol, bearer)) => (
                BrokerRequest::mint(url.clone(), bearer, audience, &protocol),
                Some(protocol),
            ),
            None => (BrokerRequest::helper(url.clone(), audience), None),
        };
        let mut result = self.mint(&request, started, platform);
        // One retry across a rotation: rejected (401/403) while the file now
        // holds another bearer, which the broker may accept. Once per call,
        // inside the same deadline, never with the same bearer.
        if let (
            Err(CredentialError::BrokerRejected { .. }),
            Some(protocol),
            Mode::Broker {
                credential_file, ..
            },
        ) = (&result, &protocol, &self.settings.mode)
            && let Ok(fresh) = platform.read_bearer(credential_file)
            && let fresh_digest = BearerDigest::of(&fresh)
            && fresh_digest != digest
        {
            digest = fresh_digest;
            let request = BrokerRequest::mint(url, fresh, audience, protocol);
            result = self.mint(&request, started, platform);
        }
        match result {
            Ok(minted) => {
                let info = TokenInfo::minted(
                    minted.token,
                    platform.now_unix(),
                    minted.expires_in,
                    minted.refresh_in,
                );
                if let Some(cache) = &self.cache {
                    cache.borrow_mut().store(audience, digest, info.clone());
                }
                Ok(info)
            }
            Err(error) => {
                let now = platform.now_unix();
                match (lookup, &self.cache) {
                    (Lookup::Refresh(cached), Some(cache))
                        if is_transient(&error) && cached.is_unexpired(now) =>
                    {
                        cache.borrow_mut().refresh_failed(audience, now);
                        Ok(cached)
                    }
                    _ => Err(error),
                }
            }
        }
    }

    /// Up to [`MAX_ATTEMPTS`] round trips, all before `started + timeout`.
    fn mint(
        &self,
        request: &BrokerRequest,
        started: Instant,
        platform: &mut impl Platform,
    ) -> Result<Minted, CredentialError> {
        let timeout = self.settings.timeout;
        let secrets = request.secrets();
        let helper = matches!(self.settings.mode, Mode::Helper { .. });
        let parse = |answer: &Answer| match helper {
            true => parse_helper_answer(answer.status, &answer.body),
            false => parse_answer(answer.status, &answer.body, &secrets),
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let left = timeout.saturating_sub(started.elapsed());
            let budget = attempt_budget(left, attempts);
            let (error, retry_after) = match platform.send(request, budget) {
                Ok(answer) if is_retryable_status(answer.status) => {
                    let error = parse(&answer).err();
                    (
                        error.expect("a retryable status is an error"),
                        answer.retry_after,
                    )
                }
                Ok(answer) => {
                    return parse(&answer).map_err(|e| e.after_attempts(attempts));
                }
                Err(e) if is_retryable_send(&e) => (self.unreachable(request, e), None),
                Err(e) => return Err(self.unreachable(request, e).after_attempts(attempts)),
            };
            let wait = backoff(attempts, retry_after, platform.random_unit());
            if attempts >= MAX_ATTEMPTS || started.elapsed() + wait >= timeout {
                return Err(error.after_attempts(attempts));
            }
            platform.sleep(wait);
        }
    }

    fn unreachable(&self, request: &BrokerRequest, error: SendError) -> CredentialError {
        let url = &request.url;
        let ms = self.settings.timeout.as_millis();
        if let (
            Mode::Helper { .. },
            SendError::TimedOut | SendError::Failed(_) | SendError::Tls(_) | SendError::Denied,
        ) = (&self.settings.mode, &error)
        {
            let why = match error {
                SendError::TimedOut => format!("no answer within {ms} ms"),
                SendError::Denied => "the host has no route to it".to_string(),
                SendError::Failed(why) | SendError::Tls(why) => why,
                SendError::TooLarge(_) => unreachable!(),
            };
            return CredentialError::BrokerUnreachable(format!(
                "runtime access helper is unavailable at {url} ({why}): is the runtime-access socket \
                 (VD_RUNTIME_ACCESS_SOCKET, default /run/vd-access/program.sock) present, and does the \
                 host route the helper to it?"
            ));
        }
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
            // The reason names what to fix (trust the CA, the host name, renew).
            SendError::Tls(why) => {
                CredentialError::BrokerUnreachable(format!("{url} failed: {why}"))
            }
        }
    }
}

/// Failures after which a still-valid cached token may be served: the broker
/// was unreachable or failed. A rejection (401/403: the intent was revoked or
/// is out of scope) and a malformed answer are not.
fn is_transient(error: &CredentialError) -> bool {
    match error {
        CredentialError::BrokerUnreachable(_) => true,
        CredentialError::BrokerFailed { status, .. } => is_retryable_status(*status),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A scripted platform: answers in order, a settable clock, recorded sends and sleeps.
    struct Fake {
        bearer: Result<&'static str, CredentialError>,
        answers: VecDeque<Result<Answer, SendError>>,
        now: u64,
        sent: Vec<(BrokerRequest, Duration)>,
        slept: Vec<Duration>,
    }

    impl Platform for Fake {
        fn now_unix(&mut self) -> u64 {
            self.now
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
            self.answers
                .pop_front()
                .unwrap_or(Err(SendError::Failed("script ran out".into())))
        }
        fn sleep(&mut self, duration: Duration) {
            self.slept.push(duration);
        }
        fn random_unit(&mut self) -> f64 {
            0.5
        }
    }

    fn answer(status: u16, body: &str) -> Result<Answer, SendError> {
        Ok(Answer {
            status,
            body: body.as_bytes().to_vec(),
            retry_after: None,
        })
    }

    fn fake(answers: Vec<Result<Answer, SendError>>) -> Fake {
        Fake {
            bearer: Ok("vd_iat_b"),
            answers: answers.into(),
            now: 1_000,
            sent: vec![],
            slept: vec![],
        }
    }

    fn credential_with(disable_cache: bool) -> Credential {
        let options = Options {
            broker_url: Some("http://127.0.0.1:9/api/".into()),
            credential_file: Some("/run/vd/credential".into()),
            timeout_ms: Some(5_000),
            disable_cache,
            ..Default::default()
        };
        Credential::open(&options, |_| None).unwrap()
    }

    fn credential() -> Credential {
        credential_with(false)
    }

    fn vault() -> Vec<String> {
        vec!["https://vault.azure.net/.default".into()]
    }

    #[test]
    fn mints_with_expiry_from_clock() {
        let mut p = fake(vec![answer(
            200,
            r#"{"access_token":"tok","expires_in":"60"}"#,
        )]);
        let t = credential().get_token(&vault(), &mut p).unwrap();
        assert_eq!((t.token.expose(), t.expires_on), ("tok", 1_060));
        let (req, timeout) = &p.sent[0];
        assert_eq!(req.url, "http://127.0.0.1:9/api/token");
        assert_eq!(req.body, br#"{"audience":"vault"}"#);
        // The first of up to four attempts gets half of the 5 s timeout.
        assert!(
            *timeout <= Duration::from_millis(2_500) && *timeout > Duration::from_millis(2_000),
            "{timeout:?}"
        );
    }

    #[test]
    fn scope_errors_come_before_any_io() {
        let mut p = fake(vec![]);
        p.bearer = Err(CredentialError::BearerUnavailable("x".into()));
        let err = credential()
            .get_token(&["https://nope".into()], &mut p)
            .unwrap_err();
        assert!(matches!(err, CredentialError::ScopeNotAllowed { .. }));
        let err = credential().get_token(&vault(), &mut p).unwrap_err();
        assert!(matches!(err, CredentialError::BearerUnavailable(_)));
        assert!(p.sent.is_empty());
    }

    #[test]
    fn final_send_errors_map_to_cases() {
        let err = credential()
            .get_token(&vault(), &mut fake(vec![Err(SendError::Denied)]))
            .unwrap_err();
        assert!(
            matches!(err, CredentialError::BrokerUnreachable(ref m) if m.contains("refused")),
            "{err}"
        );
        let err = credential()
            .get_token(&vault(), &mut fake(vec![Err(SendError::TooLarge(10))]))
            .unwrap_err();
        assert!(matches!(err, CredentialError::InvalidResponse(_)));
    }

    #[test]
    fn cache_serves_until_due_and_follows_the_bearer() {
        let c = credential();
        let mut p = fake(vec![
            answer(200, r#"{"access_token":"one","expires_in":3600}"#),
            answer(200, r#"{"access_token":"two","expires_in":3600}"#),
            answer(200, r#"{"access_token":"three","expires_in":3600}"#),
        ]);
        for _ in 0..5 {
            assert_eq!(c.get_token(&vault(), &mut p).unwrap().token.expose(), "one");
        }
        assert_eq!(p.sent.len(), 1);
        p.bearer = Ok("vd_iat_rotated");
        assert_eq!(c.get_token(&vault(), &mut p).unwrap().token.expose(), "two");
        p.now += 3600 - 300;
        assert_eq!(
            c.get_token(&vault(), &mut p).unwrap().token.expose(),
            "three"
        );
        assert_eq!(p.sent.len(), 3);
        p.bearer = Err(CredentialError::BearerUnavailable("gone".into()));
        assert!(c.get_token(&vault(), &mut p).is_err());
    }

    #[test]
    fn disabled_cache_mints_every_time() {
        let c = credential_with(true);
        let mut p = fake(vec![
            answer(200, r#"{"access_token":"a"}"#),
            answer(200, r#"{"access_token":"b"}"#),
        ]);
        assert_eq!(c.get_token(&vault(), &mut p).unwrap().token.expose(), "a");
        assert_eq!(c.get_token(&vault(), &mut p).unwrap().token.expose(), "b");
    }

    #[test]
    fn failed_refresh_serves_cached_then_backs_off() {
        let c = credential();
        let mut p = fake(vec![answer(
            200,
            r#"{"access_token":"one","expires_in":3600,"refresh_in":600}"#,
        )]);
        c.get_token(&vault(), &mut p).unwrap();
        p.now += 600;
        p.answers = vec![answer(400, "no"), Err(SendError::Denied)].into();
        // 400 is not transient: the error stands even with a cached token.
        assert!(matches!(
            c.get_token(&vault(), &mut p),
            Err(CredentialError::BrokerFailed { status: 400, .. })
        ));
        p.answers = vec![
            answer(503, ""),
            answer(503, ""),
            answer(503, ""),
            answer(503, ""),
        ]
        .into();
        let sent = p.sent.len();
        let info = c
            .get_token_info(&vault(), &TokenRequestOptions::default(), &mut p)
            .unwrap();
        assert_eq!((info.token.expose(), info.refresh_on), ("one", Some(1_600)));
        assert_eq!(p.sent.len(), sent + 4);
        p.now += 29;
        c.get_token(&vault(), &mut p).unwrap();
        assert_eq!(p.sent.len(), sent + 4, "no new attempt within 30 s");
        p.now += 1;
        p.answers = vec![answer(200, r#"{"access_token":"two"}"#)].into();
        assert_eq!(c.get_token(&vault(), &mut p).unwrap().token.expose(), "two");
    }

    #[test]
    fn retries_transient_failures_with_backoff() {
        let c = credential_with(true);
        let mut p = fake(vec![
            Err(SendError::Failed("connection refused".into())),
            answer(503, ""),
            Ok(Answer {
                status: 429,
                body: vec![],
                retry_after: Some(Duration::from_secs(1)),
            }),
            answer(200, r#"{"access_token":"ok"}"#),
        ]);
        assert_eq!(c.get_token(&vault(), &mut p).unwrap().token.expose(), "ok");
        assert_eq!(p.sent.len(), 4);
        assert_eq!(p.slept[2], Duration::from_secs(1));
        assert!(p.slept[0] < p.slept[1]);
    }

    #[test]
    fn gives_up_after_max_attempts_saying_so() {
        let c = credential_with(true);
        let mut p = fake((0..10).map(|_| answer(500, "boom")).collect());
        let err = c.get_token(&vault(), &mut p).unwrap_err();
        assert_eq!(p.sent.len(), MAX_ATTEMPTS as usize);
        assert!(
            err.to_string().contains("after 4 attempts") && err.to_string().contains("boom"),
            "{err}"
        );
    }

    #[test]
    fn retry_after_beyond_the_deadline_stops() {
        let c = credential_with(true);
        let mut p = fake(vec![Ok(Answer {
            status: 503,
            body: vec![],
            retry_after: Some(Duration::from_secs(60)),
        })]);
        let err = c.get_token(&vault(), &mut p).unwrap_err();
        assert!(matches!(
            err,
            CredentialError::BrokerFailed { status: 503, .. }
        ));
        assert_eq!(p.sent.len(), 1);
        assert!(p.slept.is_empty());
    }

    #[test]
    fn final_statuses_are_not_retried() {
        for status in [400, 401, 403, 404] {
            let mut p = fake(vec![
                answer(status, ""),
                answer(200, r#"{"access_token":"x"}"#),
            ]);
            assert!(credential().get_token(&vault(), &mut p).is_err());
            assert_eq!(p.sent.len(), 1, "{status}");
        }
        let mut p = fake(vec![
            answer(200, "not json"),
            answer(200, r#"{"access_token":"x"}"#),
        ]);
        assert!(credential().get_token(&vault(), &mut p).is_err());
        assert_eq!(p.sent.len(), 1);
    }

    #[test]
    fn claims_are_refused_other_options_ignored() {
        let mut p = fake(vec![answer(200, r#"{"access_token":"x"}"#)]);
        let claims = TokenRequestOptions {
            claims: Some("{\"access_token\":{}}".into()),
            ..Default::default()
        };
        let err = credential()
            .get_token_info(&vault(), &claims, &mut p)
            .unwrap_err();
        assert!(matches!(err, CredentialError::Unsupported(_)));
        assert!(p.sent.is_empty());
        let other = TokenRequestOptions {
            claims: Some(String::new()),
            tenant_id: Some("t".into()),
            enable_cae: true,
        };
        assert!(
            credential()
                .get_token_info(&vault(), &other, &mut p)
                .is_ok()
        );
    }
}
