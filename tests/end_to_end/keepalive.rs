//! The host keeps the connection to the broker alive between calls (plain
//! http, https, the helper's Unix socket), and a connection the broker closed
//! is replaced without the caller noticing when the request never left; a
//! request the broker may have read is the component's to retry.

use host_test::MockBroker;
use host_test::tls::{TestCa, Validity};
use vd_cred_broker::CredentialError as E;

use crate::{Fixture, VAULT, options};

/// `n` uncached mints in one sandbox built by `builder`.
async fn mints(builder: vd_cred_host::SandboxBuilder<'_>, n: usize) {
    let mut sandbox = builder.build().await.unwrap();
    let mut o = options();
    o.disable_cache = true;
    let credential = sandbox.open(&o).await.unwrap().unwrap();
    for i in 0..n {
        let token = sandbox
            .credential_get_token(credential, &[VAULT])
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert!(token.token.starts_with("mock-token-"));
    }
}

#[tokio::test]
async fn sequential_mints_share_one_connection_over_http_https_and_the_helper_socket() {
    let f = Fixture::new();
    mints(f.builder(), 5).await;
    assert_eq!(
        (f.broker.request_count(), f.broker.connection_count()),
        (5, 1)
    );

    let ca = TestCa::new().unwrap();
    let tls = Fixture::with_broker(ca.broker(&["localhost"], Validity::Current).unwrap());
    let roots = ca.roots();
    mints(tls.builder().trusted_roots(roots), 5).await;
    assert_eq!(
        (tls.broker.request_count(), tls.broker.connection_count()),
        (5, 1)
    );

    let dir = tempfile::tempdir().unwrap();
    let helper = MockBroker::start_unix(dir.path().join("helper.sock")).unwrap();
    let builder = crate::host()
        .sandbox()
        .runtime_access(helper.socket_path().unwrap());
    mints(builder, 5).await;
    assert_eq!((helper.request_count(), helper.connection_count()), (5, 1));
}

/// The broker closes the connection after every answer, and the next call
/// races the client's notice of the close. The deadline (49 ms) is under the
/// component's first backoff (50 ms), so the component cannot retry: a call
/// that gets a token got it on its one attempt, over a connection the host
/// replaced at once. A call may still run out of its 49 ms on a loaded
/// machine; that says nothing either way, so such a round is simply run
/// again. Any other error fails the test.
///
/// Each round writes a bearer of its own, so the broker's log says which
/// round sent each request: a timed-out round's request may reach the
/// broker during a later round, and is not counted as that round's. Until
/// a round has timed out, no request can be in flight outside the round,
/// so each round also opened exactly one connection; after one, the
/// abandoned request may open a connection at any time, so the connections
/// are counted only up to then.
#[tokio::test]
async fn a_connection_the_broker_closed_is_replaced_transparently() {
    const ROUNDS: usize = 20;
    /// Rounds that may time out before the test gives up (a hang guard: a
    /// machine too slow for any 49 ms call fails here rather than spin).
    const MOST_TIMED_OUT: usize = 1_000;
    let f = Fixture::new();
    let mut sandbox = f.sandbox().await;
    let mut o = options();
    o.disable_cache = true;
    o.timeout_ms = Some(49);
    let credential = sandbox.open(&o).await.unwrap().unwrap();
    let (mut tokens, mut timed_out) = (0, 0);
    for round in 0.. {
        if tokens == ROUNDS {
            break;
        }
        // The credential reads its bearer file on every call.
        let bearer = format!("vd_iat_round{round:06}");
        f.write_bearer(&format!("{bearer}\n"));
        let sent_with = format!("Bearer {bearer}");
        let this_round = || {
            f.broker
                .requests()
                .iter()
                .filter(|r| r.header("authorization") == Some(sent_with.as_str()))
                .count()
        };
        let connections = f.broker.connection_count();
        match sandbox
            .credential_get_token(credential, &[VAULT])
            .await
            .unwrap()
        {
            Ok(_) => {
                tokens += 1;
                // Minted once (no request was sent twice)...
                assert_eq!(this_round(), 1, "round {round}");
                // ...on a new connection after the close.
                if timed_out == 0 {
                    assert_eq!(
                        f.broker.connection_count() - connections,
                        1,
                        "round {round}"
                    );
                }
            }
            Err(E::BrokerUnreachable(m)) if m.contains("within 49 ms (timeout-ms)") => {
                timed_out += 1;
                assert!(timed_out <= MOST_TIMED_OUT, "{timed_out} calls timed out");
                assert!(this_round() <= 1, "round {round}");
            }
            Err(e) => panic!("round {round}: {e}"),
        }
        // The broker's idle timeout fires right after the answer; the next
        // call comes as soon as the broker has closed every connection,
        // racing the client's notice of the close.
        f.broker.close_idle_connections();
        crate::until("the mock closed every connection", || {
            f.broker.closed_connections() >= f.broker.connection_count()
        })
        .await;
    }
    println!("{ROUNDS} tokens, {timed_out} calls timed out");
}

/// The broker reads the whole POST on a kept-alive connection and closes it
/// without answering (and so on every later connection). The request may
/// have been acted on, so the host does not send it again behind the
/// component's back: every send is one of the component's attempts, and the
/// broker's count of requests is the error's "after N attempts".
#[tokio::test]
async fn a_request_the_broker_read_is_not_resent_behind_the_components_back() {
    use std::time::Duration;
    use vd_cred_broker::retry::MAX_ATTEMPTS;

    let f = Fixture::new();
    let mut sandbox = f.sandbox().await;
    let mut o = options();
    o.disable_cache = true;
    // Room for every attempt and backoff on a busy machine.
    o.timeout_ms = Some(120_000);
    let credential = sandbox.open(&o).await.unwrap().unwrap();
    sandbox
        .credential_get_token(credential, &[VAULT])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (f.broker.request_count(), f.broker.connection_count()),
        (1, 1)
    );
    f.broker.set_default(host_test::Reply::Drop {
        delay: Duration::ZERO,
    });
    let err = sandbox
        .credential_get_token(credential, &[VAULT])
        .await
        .unwrap()
        .unwrap_err();
    let requests = f.broker.request_count() - 1;
    let E::BrokerUnreachable(message) = &err else {
        panic!("{err:?}")
    };
    assert!(
        message.ends_with(&format!("(after {requests} attempts)")),
        "{requests} requests, but: {message}"
    );
    assert_eq!(requests, MAX_ATTEMPTS as usize);
    // The first attempt went out on the kept-alive connection, each later
    // one (after the close) on a fresh one.
    assert_eq!(f.broker.connection_count() - 1, requests - 1);
}
