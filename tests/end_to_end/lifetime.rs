//! Token lifetime through the component: the cache, refresh-on, fallback on a
//! failed refresh, get-token-info. Time moves only on the host's clock.

use std::time::{Duration, Instant};

use host_test::Reply;
use vd_cred_broker::CredentialError as E;
use vd_cred_broker::DEFAULT_TIMEOUT_MS;
use vd_cred_broker::retry::{MAX_ATTEMPTS, MAX_BACKOFF};
use vd_cred_host::{Sandbox, TokenRequestOptions};
use wasmtime::component::ResourceAny;

use crate::{Fixture, T0, VAULT, options};

fn no_options() -> TokenRequestOptions {
    TokenRequestOptions {
        claims: None,
        tenant_id: None,
        enable_cae: false,
    }
}

/// A sandbox with one open, caching credential.
async fn open(f: &Fixture) -> (Sandbox, ResourceAny) {
    let mut sandbox = f.sandbox().await;
    let credential = sandbox.open(&options()).await.unwrap().unwrap();
    (sandbox, credential)
}

async fn token(s: &mut Sandbox, c: ResourceAny) -> String {
    s.credential_get_token(c, &[VAULT])
        .await
        .unwrap()
        .unwrap()
        .token
}

/// A failing refresh makes every attempt the retry policy allows (all
/// failures here are transient, and their waits, under 1 s in all, fit the
/// default 10 s deadline many times over), so the broker receives
/// [`MAX_ATTEMPTS`] requests, plus `resent`: those the host sent again on a
/// fresh connection because they failed on the one it had kept alive. Fewer
/// only if the call ran so long that the next wait would have passed the
/// deadline: then it took at least the deadline less the longest wait, which
/// `took` shows. Exact on any machine that does not stall for seconds, and
/// explained on one that does.
fn assert_every_attempt_made(requests: usize, resent: usize, took: Duration, what: &str) {
    let deadline = Duration::from_millis(DEFAULT_TIMEOUT_MS.into());
    let every = MAX_ATTEMPTS as usize + resent;
    assert!(
        requests == every || ((1..every).contains(&requests) && took + MAX_BACKOFF >= deadline),
        "{what}: {requests} refresh requests in {took:?}, not {every}"
    );
}

#[tokio::test]
async fn n_calls_mint_once() {
    let f = Fixture::new();
    let (mut s, c) = open(&f).await;
    for _ in 0..10 {
        assert_eq!(token(&mut s, c).await, "mock-token-1");
    }
    assert_eq!(f.broker.request_count(), 1);
    // Another audience is its own entry.
    s.credential_get_token(c, &["https://storage.azure.com/.default"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.broker.request_count(), 2);
}

#[tokio::test]
async fn rotation_mints_again_with_the_new_bearer() {
    let f = Fixture::new();
    let (mut s, c) = open(&f).await;
    assert_eq!(token(&mut s, c).await, "mock-token-1");
    f.write_bearer("vd_iat_rotated\n");
    assert_eq!(token(&mut s, c).await, "mock-token-2");
    assert_eq!(token(&mut s, c).await, "mock-token-2");
    let requests = f.broker.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].header("authorization"),
        Some("Bearer vd_iat_rotated")
    );
}

#[tokio::test]
async fn a_missing_or_empty_bearer_fails_even_with_a_cached_token() {
    let f = Fixture::new();
    let (mut s, c) = open(&f).await;
    token(&mut s, c).await;
    f.write_bearer("");
    let err = s
        .credential_get_token(c, &[VAULT])
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, E::BearerUnavailable(ref m) if m.contains("empty")),
        "{err}"
    );
    std::fs::remove_file(f.dir.path().join("credential")).unwrap();
    let err = s
        .credential_get_token(c, &[VAULT])
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, E::BearerUnavailable(ref m) if m.contains("does not exist")),
        "{err}"
    );
    assert_eq!(f.broker.request_count(), 1);
}

#[tokio::test]
async fn the_300_second_margin_on_both_sides() {
    let f = Fixture::new();
    let (mut s, c) = open(&f).await;
    assert_eq!(token(&mut s, c).await, "mock-token-1"); // expires T0 + 3600
    f.clock.set_unix(T0 + 3600 - 301);
    assert_eq!(token(&mut s, c).await, "mock-token-1");
    f.clock.set_unix(T0 + 3600 - 300);
    assert_eq!(token(&mut s, c).await, "mock-token-2");
    assert_eq!(f.broker.request_count(), 2);
}

#[tokio::test]
async fn refresh_on_from_refresh_in_and_from_half_life() {
    let f = Fixture::new();
    f.broker.push(Reply::json(
        200,
        r#"{"access_token":"a","expires_in":3600,"refresh_in":600}"#,
    ));
    let (mut s, c) = open(&f).await;
    let info = s
        .credential_get_token_info(c, &[VAULT], &no_options())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (info.token.as_str(), info.token_type.as_str()),
        ("a", "Bearer")
    );
    assert_eq!(
        (info.expires_on, info.refresh_on),
        (T0 + 3600, Some(T0 + 600))
    );
    f.clock.set_unix(T0 + 599);
    assert_eq!(token(&mut s, c).await, "a");
    f.clock.set_unix(T0 + 600);
    f.broker.push(Reply::token("b", 7200));
    let info = s
        .credential_get_token_info(c, &[VAULT], &no_options())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.token, "b");
    assert_eq!(
        info.refresh_on,
        Some(T0 + 600 + 3600),
        "half of a 2 h lifetime"
    );
    f.clock.set_unix(T0 + 600 + 3599);
    assert_eq!(token(&mut s, c).await, "b");
    f.clock.set_unix(T0 + 600 + 3600);
    assert_eq!(token(&mut s, c).await, "mock-token-3");
    // A short-lived token has no refresh-on.
    let info = s
        .credential_get_token_info(c, &[VAULT], &no_options())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.refresh_on, None);
}

#[tokio::test]
async fn a_failed_refresh_serves_the_cached_token_and_backs_off_30_s() {
    let f = Fixture::new();
    f.broker.push(Reply::json(
        200,
        r#"{"access_token":"a","expires_in":3600,"refresh_in":600}"#,
    ));
    let (mut s, c) = open(&f).await;
    assert_eq!(token(&mut s, c).await, "a");
    f.broker.set_default(Reply::json(503, "maintenance"));
    f.clock.set_unix(T0 + 600);
    let started = Instant::now();
    assert_eq!(
        token(&mut s, c).await,
        "a",
        "refresh failed: the unexpired token is served"
    );
    let after_refresh = f.broker.request_count();
    assert_every_attempt_made(after_refresh - 1, 0, started.elapsed(), "503");
    f.clock.set_unix(T0 + 629);
    assert_eq!(token(&mut s, c).await, "a");
    assert_eq!(
        f.broker.request_count(),
        after_refresh,
        "no attempt within 30 s"
    );
    f.clock.set_unix(T0 + 630);
    f.broker.set_default(Reply::Mint);
    assert_ne!(token(&mut s, c).await, "a");
}

#[tokio::test]
async fn every_transient_refresh_failure_serves_the_cached_token() {
    // (name, answer, requests the host resends): a failure status keeps the
    // connection; a drop closes it after the broker read the request, which
    // the host therefore never resends (only a request that never left is):
    // each request the broker sees is one of the component's attempts.
    for (name, failure, resent) in [
        ("408", Reply::json(408, "timeout"), 0),
        ("429", Reply::json(429, "slow down"), 0),
        ("500", Reply::json(500, "boom"), 0),
        ("502", Reply::json(502, "bad gateway"), 0),
        ("504", Reply::json(504, "gateway timeout"), 0),
        (
            "dropped connection",
            Reply::Drop {
                delay: Duration::ZERO,
            },
            0,
        ),
    ] {
        let f = Fixture::new();
        f.broker.push(Reply::json(
            200,
            r#"{"access_token":"a","expires_in":3600,"refresh_in":600}"#,
        ));
        let (mut s, c) = open(&f).await;
        assert_eq!(token(&mut s, c).await, "a");
        f.broker.set_default(failure);
        f.clock.set_unix(T0 + 600);
        let started = Instant::now();
        assert_eq!(
            token(&mut s, c).await,
            "a",
            "{name}: the unexpired token is served"
        );
        let requests = f.broker.request_count() - 1;
        assert_every_attempt_made(requests, resent, started.elapsed(), name);
    }
}

#[tokio::test]
async fn the_cache_is_bound_to_the_bearer_not_to_the_file() {
    let f = Fixture::new();
    let (mut s, c) = open(&f).await;
    assert_eq!(token(&mut s, c).await, "mock-token-1");
    // The same bearer written again, with other surrounding whitespace: a hit.
    f.write_bearer(&format!("  {}\r\n\n", f.bearer));
    assert_eq!(token(&mut s, c).await, "mock-token-1");
    // Another bearer: a new mint; and the first one back: minted again, as
    // the entry now belongs to the other bearer.
    f.write_bearer("vd_iat_other");
    assert_eq!(token(&mut s, c).await, "mock-token-2");
    f.write_bearer(&f.bearer);
    assert_eq!(token(&mut s, c).await, "mock-token-3");
    assert_eq!(f.broker.request_count(), 3);
}

#[tokio::test]
async fn a_failure_after_expiry_is_an_error() {
    let f = Fixture::new();
    let (mut s, c) = open(&f).await;
    token(&mut s, c).await;
    f.broker.set_default(Reply::json(503, "down"));
    f.clock.set_unix(T0 + 3600);
    let err = s
        .credential_get_token(c, &[VAULT])
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, E::BrokerFailed { status: 503, .. }), "{err}");
}

#[tokio::test]
async fn a_rejection_during_refresh_is_not_papered_over() {
    let f = Fixture::new();
    let (mut s, c) = open(&f).await;
    token(&mut s, c).await;
    f.broker.push(Reply::json(401, "intent revoked"));
    f.clock.set_unix(T0 + 3400);
    let err = s
        .credential_get_token(c, &[VAULT])
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, E::BrokerRejected { status: 401, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn disable_cache_mints_every_call() {
    let f = Fixture::new();
    let mut s = f.sandbox().await;
    let mut o = options();
    o.disable_cache = true;
    let c = s.open(&o).await.unwrap().unwrap();
    for n in 1..=3 {
        assert_eq!(token(&mut s, c).await, format!("mock-token-{n}"));
    }
}

#[tokio::test]
async fn get_token_info_options() {
    let f = Fixture::new();
    let mut s = f.sandbox().await;
    let claims = TokenRequestOptions {
        claims: Some(r#"{"access_token":{"acrs":{}}}"#.into()),
        tenant_id: None,
        enable_cae: false,
    };
    let err = s
        .get_token_info(&[VAULT], &claims)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, E::Unsupported(ref m) if m.contains("claims")),
        "{err}"
    );
    assert_eq!(f.broker.request_count(), 0);
    let ignored = TokenRequestOptions {
        claims: None,
        tenant_id: Some("contoso".into()),
        enable_cae: true,
    };
    let info = s.get_token_info(&[VAULT], &ignored).await.unwrap().unwrap();
    assert_eq!(
        (info.token_type.as_str(), info.expires_on),
        ("Bearer", T0 + 3600)
    );
    assert_eq!(f.broker.requests()[0].body, br#"{"audience":"vault"}"#);
}
