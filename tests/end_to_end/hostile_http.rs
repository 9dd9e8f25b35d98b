//! An agent that attacks the host through its own HTTP (wasi:http, as its
//! egress allowlist opened it): a gigabyte of request bodies and thousands
//! of requests held by a server that never answers, and a hundred thousand
//! requests the policy refuses. Each request is held within the agent's
//! limits or refused with a typed error; the host's peak memory (after
//! warm-up) and its open descriptors stay bounded, each flood measured in a
//! process of its own; and the agent's token calls are served while the
//! flood is held.

use std::sync::{Arc, Mutex};

use host_test::agent::test_agent::TestAgent;
use host_test::sink::Sink;
use vd_cred_host::egress::{EgressLimits, Reason};
use vd_cred_host::linked::{AgentPolicy, LinkedCredential};
use vd_cred_host::runner::AgentBuilder;

use crate::{Fixture, VAULT};

/// What the host's process held when a token was handed to the agent (the
/// agent asks for one while its flood is held): open descriptors, and
/// resident memory in KiB.
type AtToken = Arc<Mutex<Vec<(usize, u64)>>>;

/// An agent allowed HTTP to `sinks`, whose every token hand-out records
/// what the host held at that moment.
async fn flooder(f: &Fixture, sinks: &[&Sink]) -> (TestAgent, AtToken) {
    let at_token = AtToken::default();
    let seen = at_token.clone();
    let linked =
        LinkedCredential::new(f.sandbox().await, AgentPolicy::new("flooder")).on_token(move |_| {
            let held = (
                host_test::open_fds().unwrap_or(0),
                host_test::rss_kib().unwrap_or(0),
            );
            seen.lock().unwrap().push(held);
        });
    let mut builder = AgentBuilder::default().credential_broker(f.broker.url());
    for sink in sinks {
        builder = builder.egress(sink.url());
    }
    let agent = crate::linked_agent(builder, linked).await;
    (agent, at_token)
}

const MIB: u64 = 1024;

/// The host's ceilings the floods are held under.
const MOST_KIB: u64 = 512 * MIB;
const MOST_FDS: usize = 1024;

#[test]
fn held_floods_are_bounded_and_the_agent_keeps_its_tokens() {
    crate::alone("hostile_http::held_floods_alone");
}

#[tokio::test]
#[ignore = "run in a process of its own by held_floods_are_bounded_and_the_agent_keeps_its_tokens"]
async fn held_floods_alone() {
    let f = Fixture::new();
    let (reading, mute) = (Sink::reading().unwrap(), Sink::mute().unwrap());
    let (mut a, at_token) = flooder(&f, &[&reading, &mute]).await;
    let limits = EgressLimits::default();
    let record = a.store.data().egress().refusals();

    // Warm-up: one small request, one token; then the peak starts again.
    let warm = a.http_flood(&mute.url(), 1024, 1, &[VAULT]).await.unwrap();
    assert!(warm.token.is_ok(), "{:?}", warm.token);
    settle(&a).await;
    assert!(host_test::reset_peak_rss(), "Linux's clear_refs");

    // 64 POSTs of 16 MiB (1 GiB) to a server that reads them all and never
    // answers: each body is sent and let go; 64 requests held in flight.
    let report = a
        .http_flood(&reading.url(), 16 << 20, 64, &[VAULT])
        .await
        .unwrap();
    assert!(
        report.token.is_ok(),
        "served while held: {:?}",
        report.token
    );
    assert_eq!((report.started, report.cut_short), (64, 0));
    assert_eq!(record.total(), 0);
    settle(&a).await;

    // The same to a server that reads none of it: what is held in host
    // memory is capped, the rest refused (their bodies cut short), each
    // with a typed error, none trapped.
    let report = a
        .http_flood(&mute.url(), 16 << 20, 64, &[VAULT])
        .await
        .unwrap();
    assert!(
        report.token.is_ok(),
        "served while held: {:?}",
        report.token
    );
    assert_eq!(report.started, 64);
    let by_bytes = record.count(Reason::BodyBytesHeld);
    let most = (limits.body_bytes_held / (16 << 20)) as u64;
    assert!(
        by_bytes >= 64 - most,
        "at most {most} bodies held: {by_bytes} refused"
    );
    assert_eq!(u64::from(report.cut_short), by_bytes);
    // What the agent saw of those it had an answer for by then.
    for (outcome, _) in &report.settled {
        assert_eq!(outcome, "ErrorCode::ConnectionLimitReached");
    }
    settle(&a).await;

    // 3,000 requests held at once: at most the limit in flight, every
    // other one refused.
    let before = record.total();
    let report = a.http_flood(&mute.url(), 0, 3_000, &[VAULT]).await.unwrap();
    assert!(
        report.token.is_ok(),
        "served while held: {:?}",
        report.token
    );
    let refused = record.total() - before;
    assert!(
        refused >= 3_000u64.saturating_sub(limits.requests_in_flight as u64),
        "at most {} in flight: {refused} refused",
        limits.requests_in_flight
    );
    assert!(record.count(Reason::RequestsInFlight) > 0);
    assert!(
        mute.most_open() <= limits.connections,
        "{}",
        mute.most_open()
    );

    let peak = host_test::peak_rss_kib().unwrap();
    let at_token = at_token.lock().unwrap().clone();
    println!(
        "peak RSS {peak} KiB; at each token (fds, RSS KiB): {at_token:?}; refusals {:?}; \
         connections: reading sink {}, mute sink {}",
        record.counts(),
        reading.accepted(),
        mute.accepted()
    );
    assert!(peak < MOST_KIB, "peak RSS {peak} KiB");
    assert_eq!(at_token.len(), 4);
    for (fds, _) in &at_token {
        assert!(
            *fds < MOST_FDS,
            "{fds} descriptors open while a flood was held"
        );
    }
    // And after: an ordinary call.
    let token = a
        .token(&host_test::agent::test_agent::no_options(), &[VAULT], 1)
        .await
        .unwrap();
    assert!(token.is_ok(), "{token:?}");
}

/// Wait until the agent's last flood, which it dropped, holds no request
/// or connection in the host (the host lets go of them as it notices).
async fn settle(a: &TestAgent) {
    let egress = a.store.data().egress();
    crate::until("the dropped requests let go of their slots", || {
        let (requests, connections, _) = egress.in_use();
        requests == 0 && connections == 0
    })
    .await;
}

#[test]
fn a_refusal_flood_leaves_a_record_of_fixed_size() {
    crate::alone("hostile_http::refusal_flood_alone");
}

#[tokio::test]
#[ignore = "run in a process of its own by a_refusal_flood_leaves_a_record_of_fixed_size"]
async fn refusal_flood_alone() {
    let f = Fixture::new();
    let sink = Sink::reading().unwrap();
    let (mut a, at_token) = flooder(&f, &[&sink]).await;
    // A host name of 4,000 bytes (labels of 63), not on the allowlist.
    let label = "a".repeat(63);
    let long: Vec<&str> = std::iter::repeat_n(label.as_str(), 62).collect();
    let url = format!("http://{}/x", long.join("."));
    assert!(url.len() > 3_900);
    let warm = a.http_loop(&url, 10).await.unwrap();
    assert_eq!(warm, [("ErrorCode::HttpRequestDenied".to_string(), 10)]);
    assert!(host_test::reset_peak_rss(), "Linux's clear_refs");
    let start = host_test::rss_kib().unwrap();

    let outcomes = a.http_loop(&url, 100_000).await.unwrap();
    assert_eq!(
        outcomes,
        [("ErrorCode::HttpRequestDenied".to_string(), 100_000)]
    );
    let record = a.store.data().egress().refusals();
    assert_eq!(record.total(), 100_010);
    assert_eq!(record.count(Reason::NotAllowed), 100_010);
    assert_eq!(record.recent().len(), vd_cred_host::egress::REFUSALS_KEPT);
    let peak = host_test::peak_rss_kib().unwrap();
    println!("peak RSS {peak} KiB after 100,000 refusals of a 4 KB host name, from {start} KiB");
    assert!(peak < MOST_KIB, "peak RSS {peak} KiB");
    // What is kept of them stays small: a record that kept every refusal
    // would hold 100,000 targets of 4 KB (400 MB).
    assert!(peak - start < 64 * MIB, "grew by {} KiB", peak - start);
    // The agent still gets its tokens.
    let token = a
        .token(&host_test::agent::test_agent::no_options(), &[VAULT], 1)
        .await
        .unwrap();
    assert!(token.is_ok(), "{token:?}");
    let (fds, _) = at_token.lock().unwrap()[0];
    assert!(fds < MOST_FDS, "{fds} descriptors open");
    assert_eq!(sink.accepted(), 0);
}
