//! Retries within one deadline, counted at the broker.

use std::time::{Duration, Instant};

use host_test::Reply;
use vd_cred_broker::CredentialError as E;

use crate::{Fixture, VAULT, options};

#[tokio::test]
async fn each_retryable_status_is_retried() {
    let f = Fixture::new();
    for status in [408, 429, 500, 502, 503, 504] {
        let before = f.broker.request_count();
        f.broker.push(Reply::json(status, "transient"));
        let token = f.get_token(&[VAULT]).await.unwrap();
        assert!(token.token.starts_with("mock-token-"), "{status}");
        assert_eq!(
            f.broker.request_count() - before,
            2,
            "{status}: one failure, one success"
        );
    }
}

#[tokio::test]
async fn final_answers_are_not_retried() {
    let f = Fixture::new();
    f.broker.set_default(Reply::Mint);
    let rejected = |status, detail: &str| E::BrokerRejected {
        status,
        detail: detail.into(),
    };
    let failed = |status, detail: &str| E::BrokerFailed {
        status,
        detail: detail.into(),
    };
    for (reply, expected) in [
        (Reply::json(400, "bad"), failed(400, "bad")),
        (Reply::json(401, "no"), rejected(401, "no")),
        (Reply::json(403, "no"), rejected(403, "no")),
        (Reply::json(404, "where"), failed(404, "where")),
        (
            Reply::json(200, "not json"),
            E::InvalidResponse(
                "HTTP 200 answer is not JSON: is VD_CREDENTIAL_BROKER_URL the Studio credential \
                 broker's base URL?"
                    .into(),
            ),
        ),
        (
            Reply::json(200, r#"{"expires_in":5}"#),
            E::InvalidResponse("HTTP 200 answer is missing access_token".into()),
        ),
    ] {
        let before = f.broker.request_count();
        f.broker.push(reply.clone());
        // One attempt: the error carries no "after N attempts".
        assert_eq!(f.get_token(&[VAULT]).await.unwrap_err(), expected);
        assert_eq!(f.broker.request_count() - before, 1, "{reply:?}");
    }
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    let f = Fixture::new();
    f.broker.push(Reply::Drop {
        delay: Duration::ZERO,
    });
    f.get_token(&[VAULT]).await.unwrap();
    assert_eq!(f.broker.request_count(), 2);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let f = Fixture::new();
    f.broker
        .push(Reply::json(503, "busy").with_header("retry-after", "1"));
    f.get_token(&[VAULT]).await.unwrap();
    let r = f.broker.requests();
    let gap = r[1].received_at - r[0].received_at;
    assert!(gap >= Duration::from_secs(1), "waited only {gap:?}");
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    // The component's wall clock is the fixture's, at T0 = 1,700,000,000,
    // which is Tue, 14 Nov 2023 22:13:20 GMT.
    let f = Fixture::new();
    f.broker
        .push(Reply::json(503, "busy").with_header("retry-after", "Tue, 14 Nov 2023 22:13:21 GMT"));
    f.get_token(&[VAULT]).await.unwrap();
    let r = f.broker.requests();
    let gap = r[1].received_at - r[0].received_at;
    assert!(gap >= Duration::from_secs(1), "waited only {gap:?}");

    // A date past the deadline ends the call at once, as the seconds form does.
    let g = Fixture::new();
    g.broker
        .push(Reply::json(503, "busy").with_header("retry-after", "Tue, 14 Nov 2023 22:13:50 GMT"));
    let mut o = options();
    o.timeout_ms = Some(2_000);
    let started = Instant::now();
    let err = g.get_token_with(o, &[VAULT]).await.unwrap_err();
    assert!(matches!(err, E::BrokerFailed { status: 503, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(g.broker.request_count(), 1);
}

#[tokio::test]
async fn retry_after_beyond_the_deadline_ends_the_call() {
    let f = Fixture::new();
    f.broker
        .push(Reply::json(503, "busy").with_header("retry-after", "30"));
    let mut o = options();
    o.timeout_ms = Some(2_000);
    let started = Instant::now();
    let err = f.get_token_with(o, &[VAULT]).await.unwrap_err();
    assert!(matches!(err, E::BrokerFailed { status: 503, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(f.broker.request_count(), 1);
}

#[tokio::test]
async fn a_broker_that_keeps_failing_ends_when_the_next_wait_would_pass_the_deadline() {
    // Retry-After makes each wait exactly 1 s: attempts at 0, 1 and 2 s; a
    // third wait would end at 3 s, past the 2.5 s deadline, so the call ends
    // after three attempts (a longer deadline would allow the fourth).
    let f = Fixture::new();
    f.broker
        .set_default(Reply::json(503, "still down").with_header("retry-after", "1"));
    let mut o = options();
    o.timeout_ms = Some(2_500);
    let started = Instant::now();
    let err = f.get_token_with(o, &[VAULT]).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        err.to_string(),
        "the credential broker failed with HTTP 503; check the broker's logs or retry later. \
         Broker said: still down (after 3 attempts)"
    );
    assert_eq!(f.broker.request_count(), 3);
    assert!(
        (Duration::from_secs(2)..Duration::from_millis(2_500)).contains(&took),
        "took {took:?}"
    );
}

#[tokio::test]
async fn a_broker_that_answers_too_slowly_ends_at_the_deadline() {
    // Each answer takes 700 ms: the first attempt fails at 0.7 s, the second
    // starts within 0.1 s after and has under 0.3 s left, so it times out at
    // the 1 s deadline. Without the deadline, four attempts would take 2.8 s.
    let f = Fixture::new();
    f.broker
        .set_default(Reply::json(503, "slow").after(Duration::from_millis(700)));
    let mut o = options();
    o.timeout_ms = Some(1_000);
    let started = Instant::now();
    let err = f.get_token_with(o, &[VAULT]).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err, no_answer(&f, 1_000, 2));
    assert_eq!(f.broker.request_count(), 2);
    assert!(
        took < Duration::from_millis(1_300),
        "took {took:?} with a 1 s deadline"
    );
}

/// A hung attempt is abandoned at half of what is left, in time for another:
/// a broker that swallows the first request and answers the second gives a
/// token within the default 10 s (at about 5 s).
#[tokio::test]
async fn a_hung_attempt_is_abandoned_in_time_for_another() {
    let f = Fixture::new();
    f.broker.push(Reply::Drop {
        delay: Duration::from_secs(60),
    });
    let started = Instant::now();
    let token = f.get_token(&[VAULT]).await.unwrap();
    let took = started.elapsed();
    assert_eq!(token.token, "mock-token-2");
    assert_eq!(f.broker.request_count(), 2);
    assert!(
        (Duration::from_secs(5)..Duration::from_secs(7)).contains(&took),
        "took {took:?}: the first attempt should end at 5 s"
    );
}

/// A broker that hangs every time still fails by the deadline, saying how
/// many attempts it made: 2 s, then 1 s, then all that is left of 4 s.
#[tokio::test]
async fn a_broker_that_always_hangs_fails_by_the_deadline() {
    let f = Fixture::new();
    f.broker.set_default(Reply::Drop {
        delay: Duration::from_secs(60),
    });
    let mut o = options();
    o.timeout_ms = Some(4_000);
    let started = Instant::now();
    let err = f.get_token_with(o, &[VAULT]).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err, no_answer(&f, 4_000, 3));
    assert_eq!(f.broker.request_count(), 3);
    assert!(
        (Duration::from_millis(3_900)..Duration::from_millis(4_400)).contains(&took),
        "took {took:?} with a 4 s deadline"
    );
}

/// The error of a call whose last attempt got no answer before the deadline.
fn no_answer(f: &Fixture, timeout_ms: u32, attempts: u32) -> E {
    let url = format!("{}/token", f.broker.url());
    E::BrokerUnreachable(format!(
        "no answer from {url} within {timeout_ms} ms (timeout-ms): is Studio running? Raise \
         timeout-ms if the broker is just slow (after {attempts} attempts)"
    ))
}
