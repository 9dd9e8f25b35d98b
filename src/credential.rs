//! One token from call to answer: settings, scopes -> audience, bearer,
//! cache, request with retries, answer. The outside world comes in through
//! [`Platform`].

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::cache::{BearerDigest, Lookup, TokenCache, TokenInfo};
use crate::flight::{Flights, Joined};
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
/// way to send one request. Each build implements it over its WASI: the 0.2
/// build blocks inside these methods (its calls run one at a time, through
/// [`crate::ready`]); the 0.3 build waits, so that other calls into the same
/// instance go on meanwhile.
// The futures are never sent between threads (a component instance has
// one), so the methods need not promise `Send`.
#[allow(async_fn_in_trait)]
pub trait Platform {
    /// The wall clock, in Unix seconds.
    fn now_unix(&mut self) -> u64;

    /// A monotonic clock: only differences between readings matter (each
    /// call's deadline). By default, std's `Instant`.
    fn monotonic(&mut self) -> Duration {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed()
    }

    /// Read and check the bearer file.
    async fn read_bearer(&mut self, path: &str) -> Result<Secret, CredentialError> {
        read_bearer(path)
    }

    /// Send `request` and read the answer, giving up after `timeout`. A
    /// non-2xx body is read up to [`crate::MAX_ANSWER_BYTES`] and cut there;
    /// a 2xx body over it is [`SendError::TooLarge`].
    async fn send(
        &mut self,
        request: &BrokerRequest,
        timeout: Duration,
    ) -> Result<Answer, SendError>;

    /// Wait (between retries, and a call waiting on another's mint for
    /// its own deadline).
    async fn sleep(&mut self, duration: Duration);

    /// A number in `[0, 1)` for backoff jitter; need not be cryptographic.
    fn random_unit(&mut self) -> f64;
}

/// A credential bound to one broker and one bearer file, with its own cache.
///
/// Calls may run concurrently (the WASI 0.3 build's `async` exports): each
/// keeps its own deadline, a cached token is served without waiting for
/// another call's mint, and concurrent misses for one audience and bearer
/// share one mint ([`crate::flight`]).
#[derive(Debug)]
pub struct Credential {
    settings: Settings,
    cache: Option<RefCell<TokenCache>>,
    flights: Flights,
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
            flights: Flights::default(),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A token for `scopes`, as azure-core's `get_token`.
    pub async fn get_token(
        &self,
        scopes: &[String],
        platform: &mut impl Platform,
    ) -> Result<AccessToken, CredentialError> {
        let info = self
            .get_token_info(scopes, &TokenRequestOptions::default(), platform)
            .await?;
        Ok(AccessToken {
            token: info.token,
            expires_on: info.expires_on,
        })
    }

    /// A token for `scopes` with its refresh time, as azure-core's `get_token_info`.
    ///
    /// The bearer file is read on every call. A cached token is served only
    /// while the file holds the bearer that minted it and no refresh is due;
    /// a due refresh that fails transiently serves the unexpired cached token,
    /// as does a due refresh while another call is already minting. A miss
    /// while another call mints for the same audience and bearer waits for
    /// that mint (within this call's own deadline) instead of minting again.
    pub async fn get_token_info(
        &self,
        scopes: &[String],
        options: &TokenRequestOptions,
        platform: &mut impl Platform,
    ) -> Result<TokenInfo, CredentialError> {
        let started = platform.monotonic();
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
        loop {
            // Broker modes read the bearer on every call, hit or miss; lane
            // and revision are checked before anything is read or sent. The
            // helper holds the bearer, so its tokens are cached by audience
            // alone.
            let broker = match &self.settings.mode {
                Mode::Broker {
                    credential_file, ..
                } => {
                    let protocol = self.settings.protocol()?;
                    Some((protocol, platform.read_bearer(credential_file).await?))
                }
                Mode::Helper { .. } => None,
            };
            let digest = broker
                .as_ref()
                .map_or(BearerDigest::HELPER, |(_, bearer)| BearerDigest::of(bearer));
            // The mint's future is boxed: a call waiting on another's mint
            // (or served from the cache) carries only the pointer, which
            // keeps a thousand waiting calls small.
            let Some(cache) = &self.cache else {
                let fetch = self.fetch(audience, broker, digest, Lookup::Miss, started, platform);
                return Box::pin(fetch).await;
            };
            let lookup = cache.borrow().lookup(audience, digest, platform.now_unix());
            match lookup {
                Lookup::Fresh(info) => return Ok(info),
                // Another call is already refreshing: the token is still good.
                Lookup::Refresh(info) if self.flights.in_air(audience, digest) => return Ok(info),
                _ => {}
            }
            match self.flights.join(audience, digest) {
                Joined::Lead(lead) => {
                    let fetch = self.fetch(audience, broker, digest, lookup, started, platform);
                    let outcome = Box::pin(fetch).await;
                    lead.land(&outcome);
                    return outcome;
                }
                Joined::Follow(follow) => {
                    let left = self
                        .settings
                        .timeout
                        .saturating_sub(platform.monotonic().saturating_sub(started));
                    let mut follow = pin!(follow);
                    let mut timer = pin!(platform.sleep(left));
                    let landed = std::future::poll_fn(|cx| {
                        if let Poll::Ready(landed) = follow.as_mut().poll(cx) {
                            return Poll::Ready(Some(landed));
                        }
                        timer.as_mut().poll(cx).map(|()| None)
                    })
                    .await;
                    match landed {
                        Some(Some(outcome)) => return outcome,
                        // The leader's caller went away: look again, and lead.
                        Some(None) => continue,
                        None => {
                            let url = self.settings.token_url();
                            return Err(self.unreachable(&url, SendError::TimedOut));
                        }
                    }
                }
            }
        }
    }

    /// Mint for `audience` (on a miss or a due refresh): the request, the
    /// retries, one retry across a bearer rotation, the cache updated.
    async fn fetch(
        &self,
        audience: &str,
        broker: Option<(crate::settings::Protocol, Secret)>,
        mut digest: BearerDigest,
        lookup: Lookup,
        started: Duration,
        platform: &mut impl Platform,
    ) -> Result<TokenInfo, CredentialError> {
        // Only a miss or a due refresh pays for building the request.
        let url = self.settings.token_url();
        let (request, protocol) = match broker {
            Some((protocol, bearer)) => (
                BrokerRequest::mint(url.clone(), bearer, audience, &protocol),
                Some(protocol),
            ),
            None => (BrokerRequest::helper(url.clone(), audience), None),
        };
        let mut result = self.mint(&request, started, platform).await;
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
            && let Ok(fresh) = platform.read_bearer(credential_file).await
            && let fresh_digest = BearerDigest::of(&fresh)
            && fresh_digest != digest
        {
            digest = fresh_digest;
            let request = BrokerRequest::mint(url, fresh, audience, protocol);
            result = self.mint(&request, started, platform).await;
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
    async fn mint(
        &self,
        request: &BrokerRequest,
        started: Duration,
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
            let elapsed = platform.monotonic().saturating_sub(started);
            let left = timeout.saturating_sub(elapsed);
            let budget = attempt_budget(left, attempts);
            let (error, retry_after) = match platform.send(request, budget).await {
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
                Err(e) if is_retryable_send(&e) => (self.unreachable(&request.url, e), None),
                Err(e) => return Err(self.unreachable(&request.url, e).after_attempts(attempts)),
            };
            let wait = backoff(attempts, retry_after, platform.random_unit());
            let elapsed = platform.monotonic().saturating_sub(started);
            if attempts >= MAX_ATTEMPTS || elapsed + wait >= timeout {
                return Err(error.after_attempts(attempts));
            }
            platform.sleep(wait).await;
        }
    }

    fn unreachable(&self, url: &str, error: SendError) -> CredentialError {
        let ms = millis_text(self.settings.timeout);
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

/// `duration.as_millis()` in decimal, without formatting a `u128` (whose
/// formatting code is 1.7 KB of the component): the seconds' digits, then
/// the milliseconds' three.
fn millis_text(duration: Duration) -> String {
    let (secs, millis) = (duration.as_secs(), duration.subsec_millis());
    if secs == 0 {
        millis.to_string()
    } else {
        format!("{secs}{millis:03}")
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
    use crate::ready;
    use std::collections::VecDeque;

    #[test]
    fn millis_text_is_as_millis() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(1),
            Duration::from_millis(999),
            Duration::from_millis(1000),
            Duration::from_millis(10_000),
            Duration::from_millis(u32::MAX.into()),
            Duration::from_nanos(1_000_999_999),
            Duration::new(u64::MAX, 999_999_999),
        ] {
            assert_eq!(millis_text(d), d.as_millis().to_string(), "{d:?}");
        }
    }

    /// A scripted platform: answers in order, a settable clock, recorded sends and sleeps.
    struct Fake {
        bearer: Result<&'static str, CredentialError>,
        answers: VecDeque<Result<Answer, SendError>>,
        now: u64,
        /// The monotonic clock: moves only when the credential sleeps.
        mono: Duration,
        sent: Vec<(BrokerRequest, Duration)>,
        slept: Vec<Duration>,
    }

    impl Platform for Fake {
        fn now_unix(&mut self) -> u64 {
            self.now
        }
        fn monotonic(&mut self) -> Duration {
            self.mono
        }
        async fn read_bearer(&mut self, _: &str) -> Result<Secret, CredentialError> {
            self.bearer.clone().map(|b| Secret::new(b.into()))
        }
        async fn send(
            &mut self,
            request: &BrokerRequest,
            timeout: Duration,
        ) -> Result<Answer, SendError> {
            self.sent.push((request.clone(), timeout));
            self.answers
                .pop_front()
                .unwrap_or(Err(SendError::Failed("script ran out".into())))
        }
        async fn sleep(&mut self, duration: Duration) {
            self.slept.push(duration);
            self.mono += duration;
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
            mono: Duration::ZERO,
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
        let t = ready(credential().get_token(&vault(), &mut p)).unwrap();
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
        let err = ready(credential().get_token(&["https://nope".into()], &mut p)).unwrap_err();
        assert!(matches!(err, CredentialError::ScopeNotAllowed { .. }));
        let err = ready(credential().get_token(&vault(), &mut p)).unwrap_err();
        assert!(matches!(err, CredentialError::BearerUnavailable(_)));
        assert!(p.sent.is_empty());
    }

    #[test]
    fn final_send_errors_map_to_cases() {
        let err = ready(credential().get_token(&vault(), &mut fake(vec![Err(SendError::Denied)])))
            .unwrap_err();
        assert!(
            matches!(err, CredentialError::BrokerUnreachable(ref m) if m.contains("refused")),
            "{err}"
        );
        let err =
            ready(credential().get_token(&vault(), &mut fake(vec![Err(SendError::TooLarge(10))])))
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
            assert_eq!(
                ready(c.get_token(&vault(), &mut p)).unwrap().token.expose(),
                "one"
            );
        }
        assert_eq!(p.sent.len(), 1);
        p.bearer = Ok("vd_iat_rotated");
        assert_eq!(
            ready(c.get_token(&vault(), &mut p)).unwrap().token.expose(),
            "two"
        );
        p.now += 3600 - 300;
        assert_eq!(
            ready(c.get_token(&vault(), &mut p)).unwrap().token.expose(),
            "three"
        );
        assert_eq!(p.sent.len(), 3);
        p.bearer = Err(CredentialError::BearerUnavailable("gone".into()));
        assert!(ready(c.get_token(&vault(), &mut p)).is_err());
    }

    #[test]
    fn disabled_cache_mints_every_time() {
        let c = credential_with(true);
        let mut p = fake(vec![
            answer(200, r#"{"access_token":"a"}"#),
            answer(200, r#"{"access_token":"b"}"#),
        ]);
        assert_eq!(
            ready(c.get_token(&vault(), &mut p)).unwrap().token.expose(),
            "a"
        );
        assert_eq!(
            ready(c.get_token(&vault(), &mut p)).unwrap().token.expose(),
            "b"
        );
    }

    #[test]
    fn failed_refresh_serves_cached_then_backs_off() {
        let c = credential();
        let mut p = fake(vec![answer(
            200,
            r#"{"access_token":"one","expires_in":3600,"refresh_in":600}"#,
        )]);
        ready(c.get_token(&vault(), &mut p)).unwrap();
        p.now += 600;
        p.answers = vec![answer(400, "no"), Err(SendError::Denied)].into();
        // 400 is not transient: the error stands even with a cached token.
        assert!(matches!(
            ready(c.get_token(&vault(), &mut p)),
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
        let info =
            ready(c.get_token_info(&vault(), &TokenRequestOptions::default(), &mut p)).unwrap();
        assert_eq!((info.token.expose(), info.refresh_on), ("one", Some(1_600)));
        assert_eq!(p.sent.len(), sent + 4);
        p.now += 29;
        ready(c.get_token(&vault(), &mut p)).unwrap();
        assert_eq!(p.sent.len(), sent + 4, "no new attempt within 30 s");
        p.now += 1;
        p.answers = vec![answer(200, r#"{"access_token":"two"}"#)].into();
        assert_eq!(
            ready(c.get_token(&vault(), &mut p)).unwrap().token.expose(),
            "two"
        );
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
        assert_eq!(
            ready(c.get_token(&vault(), &mut p)).unwrap().token.expose(),
            "ok"
        );
        assert_eq!(p.sent.len(), 4);
        assert_eq!(p.slept[2], Duration::from_secs(1));
        assert!(p.slept[0] < p.slept[1]);
    }

    #[test]
    fn gives_up_after_max_attempts_saying_so() {
        let c = credential_with(true);
        let mut p = fake((0..10).map(|_| answer(500, "boom")).collect());
        let err = ready(c.get_token(&vault(), &mut p)).unwrap_err();
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
        let err = ready(c.get_token(&vault(), &mut p)).unwrap_err();
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
            assert!(ready(credential().get_token(&vault(), &mut p)).is_err());
            assert_eq!(p.sent.len(), 1, "{status}");
        }
        let mut p = fake(vec![
            answer(200, "not json"),
            answer(200, r#"{"access_token":"x"}"#),
        ]);
        assert!(ready(credential().get_token(&vault(), &mut p)).is_err());
        assert_eq!(p.sent.len(), 1);
    }

    #[test]
    fn claims_are_refused_other_options_ignored() {
        let mut p = fake(vec![answer(200, r#"{"access_token":"x"}"#)]);
        let claims = TokenRequestOptions {
            claims: Some("{\"access_token\":{}}".into()),
            ..Default::default()
        };
        let err = ready(credential().get_token_info(&vault(), &claims, &mut p)).unwrap_err();
        assert!(matches!(err, CredentialError::Unsupported(_)));
        assert!(p.sent.is_empty());
        let other = TokenRequestOptions {
            claims: Some(String::new()),
            tenant_id: Some("t".into()),
            enable_cae: true,
        };
        assert!(ready(credential().get_token_info(&vault(), &other, &mut p)).is_ok());
    }

    /// Calls running concurrently in one instance, polled by hand: a broker
    /// whose answers wait until the test releases them, a monotonic clock
    /// the test moves, and a count of what was sent.
    mod concurrent {
        use super::*;
        use std::cell::RefCell;
        use std::pin::Pin;
        use std::rc::Rc;
        use std::task::{Context, Waker};

        #[derive(Default)]
        struct Broker {
            /// Answers released to waiting sends, in order.
            released: VecDeque<Result<Answer, SendError>>,
            sent: Vec<String>,
            mono: Duration,
            now: u64,
        }

        #[derive(Clone, Default)]
        struct Gated(Rc<RefCell<Broker>>);

        impl Platform for Gated {
            fn now_unix(&mut self) -> u64 {
                self.0.borrow().now
            }
            fn monotonic(&mut self) -> Duration {
                self.0.borrow().mono
            }
            async fn read_bearer(&mut self, _: &str) -> Result<Secret, CredentialError> {
                Ok(Secret::new("vd_iat_b".into()))
            }
            async fn send(
                &mut self,
                request: &BrokerRequest,
                _: Duration,
            ) -> Result<Answer, SendError> {
                let body = String::from_utf8(request.body.clone()).unwrap();
                self.0.borrow_mut().sent.push(body);
                std::future::poll_fn(|_| match self.0.borrow_mut().released.pop_front() {
                    Some(answer) => Poll::Ready(answer),
                    None => Poll::Pending,
                })
                .await
            }
            async fn sleep(&mut self, duration: Duration) {
                let until = self.0.borrow().mono + duration;
                std::future::poll_fn(|_| match self.0.borrow().mono >= until {
                    true => Poll::Ready(()),
                    false => Poll::Pending,
                })
                .await
            }
            fn random_unit(&mut self) -> f64 {
                0.5
            }
        }

        type Call<'a> = Pin<Box<dyn Future<Output = Result<TokenInfo, CredentialError>> + 'a>>;

        fn call<'a>(c: &'a Credential, broker: &Gated, scope: &str) -> Call<'a> {
            let mut platform = broker.clone();
            let scopes = vec![scope.to_string()];
            Box::pin(async move {
                let options = TokenRequestOptions::default();
                c.get_token_info(&scopes, &options, &mut platform).await
            })
        }

        fn poll(call: &mut Call<'_>) -> Poll<Result<TokenInfo, CredentialError>> {
            call.as_mut().poll(&mut Context::from_waker(Waker::noop()))
        }

        fn token(poll: Poll<Result<TokenInfo, CredentialError>>) -> String {
            match poll {
                Poll::Ready(Ok(info)) => info.token.expose().to_string(),
                other => panic!("expected a token, got {other:?}"),
            }
        }

        fn release(broker: &Gated, status: u16, body: &str) {
            broker
                .0
                .borrow_mut()
                .released
                .push_back(answer(status, body));
        }

        const VAULT: &str = "https://vault.azure.net/.default";
        const STORAGE: &str = "https://storage.azure.com/.default";

        #[test]
        fn concurrent_misses_share_one_mint() {
            let c = credential();
            let broker = Gated::default();
            let mut calls: Vec<Call> = (0..5).map(|_| call(&c, &broker, VAULT)).collect();
            for call in &mut calls {
                assert!(poll(call).is_pending());
            }
            assert_eq!(broker.0.borrow().sent, [r#"{"audience":"vault"}"#]);
            release(&broker, 200, r#"{"access_token":"one","expires_in":3600}"#);
            for call in &mut calls {
                assert_eq!(token(poll(call)), "one");
            }
            assert_eq!(broker.0.borrow().sent.len(), 1);
        }

        #[test]
        fn a_shared_mint_that_fails_fails_once_for_all() {
            let c = credential();
            let broker = Gated::default();
            let mut calls: Vec<Call> = (0..3).map(|_| call(&c, &broker, VAULT)).collect();
            for call in &mut calls {
                assert!(poll(call).is_pending());
            }
            release(&broker, 403, r#"{"detail":"intent revoked"}"#);
            for call in &mut calls {
                match poll(call) {
                    Poll::Ready(Err(CredentialError::BrokerRejected { status: 403, .. })) => {}
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(broker.0.borrow().sent.len(), 1);
            // The failure is not cached: the next call mints.
            let mut next = call(&c, &broker, VAULT);
            assert!(poll(&mut next).is_pending());
            assert_eq!(broker.0.borrow().sent.len(), 2);
        }

        #[test]
        fn other_audiences_and_cached_tokens_do_not_wait() {
            let c = credential();
            let broker = Gated::default();
            let mut first = call(&c, &broker, VAULT);
            assert!(poll(&mut first).is_pending());
            release(
                &broker,
                200,
                r#"{"access_token":"v","expires_in":3600,"refresh_in":600}"#,
            );
            assert_eq!(token(poll(&mut first)), "v");
            // A storage mint in the air: vault is served from the cache at once,
            // and a second storage call waits for the first's mint.
            let mut storage = call(&c, &broker, STORAGE);
            assert!(poll(&mut storage).is_pending());
            assert_eq!(token(poll(&mut call(&c, &broker, VAULT))), "v");
            // Vault's refresh falls due: one call refreshes, another is served
            // the still-valid token meanwhile.
            broker.0.borrow_mut().now += 600;
            let mut refresh = call(&c, &broker, VAULT);
            assert!(poll(&mut refresh).is_pending());
            assert_eq!(token(poll(&mut call(&c, &broker, VAULT))), "v");
            assert_eq!(broker.0.borrow().sent.len(), 3);
            release(&broker, 200, r#"{"access_token":"s"}"#);
            release(&broker, 200, r#"{"access_token":"v2","expires_in":3600}"#);
            assert_eq!(token(poll(&mut storage)), "s");
            assert_eq!(token(poll(&mut refresh)), "v2");
        }

        #[test]
        fn each_call_keeps_its_own_deadline() {
            // timeout-ms 5000. The first call mints at 0 s; a second joins at
            // 3 s and gives up at 8 s, its own deadline, not the first's.
            let c = credential();
            let broker = Gated::default();
            let mut first = call(&c, &broker, VAULT);
            assert!(poll(&mut first).is_pending());
            broker.0.borrow_mut().mono = Duration::from_secs(3);
            let mut second = call(&c, &broker, VAULT);
            assert!(poll(&mut second).is_pending());
            broker.0.borrow_mut().mono = Duration::from_millis(7_999);
            assert!(poll(&mut second).is_pending());
            broker.0.borrow_mut().mono = Duration::from_secs(8);
            match poll(&mut second) {
                Poll::Ready(Err(CredentialError::BrokerUnreachable(m))) => {
                    assert!(m.contains("within 5000 ms"), "{m}")
                }
                other => panic!("{other:?}"),
            }
            // The first is still waiting on its own request, and gets it.
            release(&broker, 200, r#"{"access_token":"late"}"#);
            assert_eq!(token(poll(&mut first)), "late");
            assert_eq!(broker.0.borrow().sent.len(), 1);
        }

        #[test]
        fn a_cancelled_mint_hands_over_to_a_waiting_call() {
            let c = credential();
            let broker = Gated::default();
            let mut first = call(&c, &broker, VAULT);
            assert!(poll(&mut first).is_pending());
            let mut second = call(&c, &broker, VAULT);
            assert!(poll(&mut second).is_pending());
            drop(first);
            // The second call mints itself.
            assert!(poll(&mut second).is_pending());
            assert_eq!(broker.0.borrow().sent.len(), 2);
            release(&broker, 200, r#"{"access_token":"mine"}"#);
            assert_eq!(token(poll(&mut second)), "mine");
        }

        #[test]
        fn without_a_cache_every_call_mints() {
            let c = credential_with(true);
            let broker = Gated::default();
            let mut calls: Vec<Call> = (0..3).map(|_| call(&c, &broker, VAULT)).collect();
            for call in &mut calls {
                assert!(poll(call).is_pending());
            }
            assert_eq!(broker.0.borrow().sent.len(), 3);
        }
    }
}
