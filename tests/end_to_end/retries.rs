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
    for reply in [
        Reply::json(400, "bad"),
        Reply::json(401, "no"),
        Reply::json(403, "no"),
        Reply::json(404, "where"),
        Reply::json(200, "not json"),
        Reply::json(200, r#"{"expires_in":5}"#),
    ] {
        let before = f.broker.request_count();
        f.broker.push(reply.clone());
        assert!(f.get_token(&[VAULT]).await.is_err(), "{reply:?}");
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
async fn a_broker_that_keeps_failing_ends_within_the_deadline() {
    let f = Fixture::new();
    f.broker.set_default(Reply::json(500, "still down"));
    let mut o = options();
    o.timeout_ms = Some(1_000);
    let started = Instant::now();
    let err = f.get_token_with(o, &[VAULT]).await.unwrap_err();
    let took = started.elapsed();
    let text = err.to_string();
    assert!(
        text.contains("HTTP 500") && text.contains("attempts") && text.contains("still down"),
        "{text}"
    );
    // Generous slack for a loaded CI machine; four attempts is the real bound here.
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} with a 1 s deadline"
    );
    assert!((2..=4).contains(&f.broker.request_count()));

    // A broker that answers too slowly every time also ends at the deadline:
    // without it, four 700 ms attempts would take over 2.8 s.
    let g = Fixture::new();
    g.broker
        .set_default(Reply::json(503, "slow").after(Duration::from_millis(700)));
    let mut o = options();
    o.timeout_ms = Some(1_000);
    let started = Instant::now();
    assert!(g.get_token_with(o, &[VAULT]).await.is_err());
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} with a 1 s deadline"
    );
    assert!(
        g.broker.request_count() <= 2,
        "{} attempts fit no 1 s deadline",
        g.broker.request_count()
    );
}
