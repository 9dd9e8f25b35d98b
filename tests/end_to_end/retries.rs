//! Retries within one deadline, counted at the broker.

use std::time::Duration;

use host_test::Reply;
use vd_cred_broker::CredentialError as E;
use vd_cred_broker::retry::{BASE_BACKOFF, MAX_ATTEMPTS};

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
    ends_at_once(&g).await;
}

#[tokio::test]
async fn retry_after_beyond_the_deadline_ends_the_call() {
    let f = Fixture::new();
    f.broker
        .push(Reply::json(503, "busy").with_header("retry-after", "30"));
    ends_at_once(&f).await;
}

/// A call whose broker asks for a 30 s wait, past the call's 20 s deadline,
/// ends with the 503 after one attempt, before the deadline: a call that
/// waited (for the Retry-After, or until the deadline) would take 20 s at
/// least, however fast the machine, and one that does not takes a
/// round trip, however slow.
async fn ends_at_once(f: &Fixture) {
    let deadline = Duration::from_secs(20);
    let mut o = options();
    o.timeout_ms = Some(deadline.as_millis() as u32);
    let (err, started, ended) = f.timed_failure(&o).await;
    let took = ended - started;
    assert!(matches!(err, E::BrokerFailed { status: 503, .. }), "{err}");
    assert!(took < deadline, "took {took:?}: it waited");
    assert_eq!(f.broker.request_count(), 1);
}

/// Retry-After makes each wait exactly 1 s: attempts at 0, 1 and 2 s; a
/// third wait would end at 3 s, past the 2.5 s deadline, so the call ends
/// after three attempts (a longer deadline would allow the fourth). Checked
/// against the broker's log, so that a slow machine (where a slow round trip
/// moves the stop one attempt earlier, or runs the last attempt into the
/// deadline) cannot fail it: every wait was honoured; after each attempt
/// but the last the wait still fitted (the call had run at least as long as
/// the log shows); and the call stopped only because the next wait would
/// not (it had run no longer than `took`).
#[tokio::test]
async fn a_broker_that_keeps_failing_ends_when_the_next_wait_would_pass_the_deadline() {
    let f = Fixture::new();
    let wait = Duration::from_secs(1);
    let deadline = Duration::from_millis(2_500);
    f.broker
        .set_default(Reply::json(503, "still down").with_header("retry-after", "1"));
    let mut o = options();
    o.timeout_ms = Some(deadline.as_millis() as u32);
    let (err, started, ended) = f.timed_failure(&o).await;
    let took = ended - started;
    let r = f.broker.requests();
    let n = r.len();
    let note = match n {
        1 => String::new(),
        n => format!(" (after {n} attempts)"),
    };
    let failed = format!(
        "the credential broker failed with HTTP 503; check the broker's logs or retry later. \
         Broker said: still down{note}"
    );
    assert!(
        err.to_string() == failed || err == no_answer(&f, 2_500, n as u32),
        "{n} attempts: {err}"
    );
    for pair in r.windows(2) {
        let gap = pair[1].received_at - pair[0].received_at;
        assert!(gap >= wait, "waited only {gap:?}");
    }
    for (i, request) in r[..n - 1].iter().enumerate() {
        let ran = request.received_at - r[0].received_at;
        assert!(
            ran + wait < deadline,
            "went on after attempt {} at {ran:?}",
            i + 1
        );
    }
    assert!(
        n == MAX_ATTEMPTS as usize || took + wait >= deadline,
        "stopped after {n} attempts in {took:?}"
    );
}

/// The first answer takes 700 ms, later ones 5 s: the first attempt fails at
/// 0.7 s, the second starts within 0.1 s after with under 0.3 s left, and
/// times out at the 1 s deadline instead of waiting for its answer (which
/// the broker's log says was due 5 s after that request came). Only a first
/// round trip slowed by over 0.2 s leaves no time for a second attempt: then
/// the call ends with the first 503, and the time it took shows why. That the
/// last attempt gets exactly what is left, not the 1 s per-attempt floor, is
/// a difference of under a second, so it is checked where time is scripted:
/// `attempt_budgets` in src/retry.rs.
#[tokio::test]
async fn a_broker_that_answers_too_slowly_ends_at_the_deadline() {
    let f = Fixture::new();
    let slower = Duration::from_secs(5);
    let deadline = Duration::from_millis(1_000);
    f.broker
        .push(Reply::json(503, "slow").after(Duration::from_millis(700)));
    f.broker
        .set_default(Reply::json(503, "slower").after(slower));
    let mut o = options();
    o.timeout_ms = Some(deadline.as_millis() as u32);
    let (err, started, ended) = f.timed_failure(&o).await;
    let took = ended - started;
    let r = f.broker.requests();
    match r.len() {
        2 => {
            assert_eq!(err, no_answer(&f, 1_000, 2));
            assert!(took >= deadline, "took {took:?}");
            assert!(ended < r[1].received_at + slower, "waited for the answer");
        }
        1 => {
            assert!(matches!(err, E::BrokerFailed { status: 503, .. }), "{err}");
            assert!(took + BASE_BACKOFF >= deadline, "took {took:?}");
        }
        n => panic!("{n} attempts: {err}"),
    }
}

/// A hung attempt is abandoned at half of what is left, in time for another:
/// a broker that swallows the first request and answers the second gives a
/// token within the default 10 s. The broker's log shows the second request
/// came no earlier than half the deadline after the call began; the token
/// shows it came in time.
///
/// The gap is measured from before the call, not from the first request's
/// arrival: the broker's thread may note that arrival late on a busy
/// machine, which shortens the gap between the two notes by as much, while
/// the call began before the first attempt did, and the second request's
/// note cannot come before it was sent. Every delay of the machine's
/// lengthens what is measured, so no margin is needed.
#[tokio::test]
async fn a_hung_attempt_is_abandoned_in_time_for_another() {
    let f = Fixture::new();
    f.broker.push(Reply::Drop {
        delay: Duration::from_secs(60),
    });
    let mut sandbox = f.sandbox().await;
    let started = std::time::Instant::now();
    let token = sandbox.get_token(&[VAULT]).await.unwrap().unwrap();
    assert_eq!(token.token, "mock-token-2");
    let r = f.broker.requests();
    assert_eq!(r.len(), 2);
    let gap = r[1].received_at - started;
    assert!(
        gap >= Duration::from_secs(5),
        "the second attempt came {gap:?} after the call began, before half the deadline"
    );
}

/// A broker that hangs every time still fails by the deadline, saying how
/// many attempts it made: 2 s, then 1 s, then all that is left of 4 s. The
/// broker's log shows each attempt lasted its budget at least, and that the
/// call ended long before the last hang would have answered. Only a second
/// round slowed by over 0.6 s leaves no time for a third attempt, and the
/// time taken then shows why.
#[tokio::test]
async fn a_broker_that_always_hangs_fails_by_the_deadline() {
    let f = Fixture::new();
    let hang = Duration::from_secs(60);
    let deadline = Duration::from_millis(4_000);
    f.broker.set_default(Reply::Drop { delay: hang });
    let mut o = options();
    o.timeout_ms = Some(deadline.as_millis() as u32);
    let (err, started, ended) = f.timed_failure(&o).await;
    let took = ended - started;
    let r = f.broker.requests();
    let n = r.len();
    assert_eq!(err, no_answer(&f, 4_000, n as u32));
    assert!(
        n == 3 || (n == 2 && took + 2 * BASE_BACKOFF >= deadline),
        "{n} attempts in {took:?}"
    );
    for (pair, budget) in r.windows(2).zip([2_000, 1_000]) {
        let gap = pair[1].received_at - pair[0].received_at;
        assert!(
            gap >= Duration::from_millis(budget),
            "an attempt ended after {gap:?}"
        );
    }
    assert!(took >= deadline, "took {took:?} with a 4 s deadline");
    assert!(ended < r[n - 1].received_at + hang / 2, "took {took:?}");
}

/// The error of a call whose last attempt got no answer before the deadline.
fn no_answer(f: &Fixture, timeout_ms: u32, attempts: u32) -> E {
    let url = format!("{}/token", f.broker.url());
    E::BrokerUnreachable(format!(
        "no answer from {url} within {timeout_ms} ms (timeout-ms): is Studio running? Raise \
         timeout-ms if the broker is just slow (after {attempts} attempts)"
    ))
}
