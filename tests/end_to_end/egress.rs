//! An agent's own HTTP: deny by default, and never to the credential's broker
//! or helper under any spelling.
//!
//! Every request here goes to loopback, or is refused before anything is
//! connected; link-local and metadata refusals are pinned as decisions of the
//! policy (`vd_cred_host::egress` unit tests), never by connecting.

use host_test::agent::test_agent::{self, TestAgent};
use host_test::{MockBroker, Reply};
use vd_cred_host::egress::{Reason, Refusal};
use vd_cred_host::linked::{AgentPolicy, LinkedCredential};
use vd_cred_host::runner::AgentBuilder;

use crate::Fixture;

/// What the test agent's `http-get` returns for a refused request.
const DENIED: &str = "ErrorCode::HttpRequestDenied";
/// What it returns for a request to the credential's broker: a closed
/// port's error, so that probing does not tell the broker's addresses.
const REFUSED: &str = "ErrorCode::ConnectionRefused";

/// A test agent linked to `f`'s credential, its egress as `builder` says,
/// with `f`'s broker as the credential's broker.
async fn agent(f: &Fixture, builder: AgentBuilder) -> TestAgent {
    let linked = LinkedCredential::new(f.sandbox().await, AgentPolicy::new("egress"));
    let builder = builder.credential_broker(f.broker.url());
    crate::linked_agent(builder, linked).await
}

fn refusals(a: &TestAgent) -> Vec<Refusal> {
    a.store.data().egress().refusals().recent()
}

/// The broker's other names, as URL hosts (its URL says 127.0.0.1).
const SPELLINGS: &[&str] = &[
    "127.0.0.1",
    "localhost",
    "LocalHost",
    "localhost.",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::1]",
    "2130706433",
    "0x7f000001",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "127.1",
    "127.0.0.2",
    "0.0.0.0",
    "[::]",
];

#[tokio::test]
async fn the_broker_is_refused_under_every_spelling_even_when_allowlisted() {
    let f = Fixture::new();
    let port = f.broker.addr().port();
    let mut builder = AgentBuilder::default()
        .egress("http://runtime-access")
        .egress(format!("http://*:{port}"))
        .egress(format!("https://*:{port}"));
    for host in SPELLINGS {
        builder = builder.egress(format!("http://{host}:{port}"));
    }
    let mut a = agent(&f, builder).await;
    let mut urls: Vec<String> = SPELLINGS
        .iter()
        .map(|host| format!("http://{host}:{port}/api/v1/credential-broker/token"))
        .collect();
    urls.push(format!(
        "https://localhost:{port}/api/v1/credential-broker/token"
    ));
    urls.push("http://runtime-access/v1/credentials".to_string());
    for url in &urls {
        let expected = match url.contains("runtime-access") {
            true => DENIED,
            false => REFUSED,
        };
        assert_eq!(
            a.http_get(url).await.unwrap(),
            Err(expected.to_string()),
            "{url}"
        );
    }
    // Nothing reached the broker: no request, not even a connection.
    assert_eq!(f.broker.requests(), []);
    assert_eq!(f.broker.connection_count(), 0);
    // Each refusal recorded, as the broker's (by name for its URL's own
    // spelling, else by address at connect time) or the helper's.
    let refusals = refusals(&a);
    assert_eq!(refusals.len(), urls.len(), "{refusals:#?}");
    for (refusal, url) in refusals.iter().zip(&urls) {
        let expected = match url.contains("runtime-access") {
            true => Reason::Helper,
            false => Reason::CredentialBroker,
        };
        assert_eq!(refusal.reason, expected, "{url}: {refusal:?}");
        if let Some(address) = refusal.address {
            assert_eq!(address.port(), port, "{url}");
            assert!(address.ip().to_canonical().is_loopback() || address.ip().is_unspecified());
        }
    }
    assert_eq!(refusals[0].address, None, "127.0.0.1: refused by name");
    assert!(
        refusals[1].address.is_some(),
        "localhost: refused by address"
    );
    let record = a.store.data().egress().refusals();
    assert_eq!(record.total(), urls.len() as u64);
    assert_eq!(record.count(Reason::Helper), 1);
}

/// Probing tells an agent nothing of where the broker is: off the
/// allowlist its address is refused as any origin is (`HttpRequestDenied`);
/// on it, as a port with nothing listening is (`ConnectionRefused`). The
/// record says which was the broker.
#[tokio::test]
async fn the_broker_looks_like_any_other_address_to_a_probing_agent() {
    let f = Fixture::new();
    let broker = f.broker.addr().port();
    // A port bound and not listening: connecting to it is refused.
    let unused = tokio::net::TcpSocket::new_v4().unwrap();
    unused.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = unused.local_addr().unwrap().port();
    let probe = |port: u16| format!("http://127.0.0.1:{port}/");
    let mut off = agent(&f, AgentBuilder::default()).await;
    let on = AgentBuilder::default()
        .egress(format!("http://*:{broker}"))
        .egress(format!("http://*:{closed}"));
    let mut on = agent(&f, on).await;
    for port in [broker, closed] {
        assert_eq!(
            off.http_get(&probe(port)).await.unwrap(),
            Err(DENIED.to_string())
        );
        assert_eq!(
            on.http_get(&probe(port)).await.unwrap(),
            Err(REFUSED.to_string())
        );
    }
    let reasons = |a: &TestAgent| -> Vec<Reason> { refusals(a).iter().map(|r| r.reason).collect() };
    assert_eq!(
        reasons(&off),
        [Reason::CredentialBroker, Reason::NotAllowed]
    );
    assert_eq!(reasons(&on), [Reason::CredentialBroker]);
    assert_eq!(f.broker.connection_count(), 0);
}

#[tokio::test]
async fn only_allowlisted_origins_are_reached() {
    let f = Fixture::new();
    let allowed = MockBroker::start().unwrap();
    let other = MockBroker::start().unwrap();
    let allowed_origin = format!("http://127.0.0.1:{}", allowed.addr().port());

    // By default, nothing.
    let mut a = agent(&f, AgentBuilder::default()).await;
    assert_eq!(
        a.http_get(&format!("{allowed_origin}/x")).await.unwrap(),
        Err(DENIED.to_string())
    );
    assert_eq!(refusals(&a)[0].reason, Reason::NotAllowed);

    let mut a = agent(&f, AgentBuilder::default().egress(&allowed_origin)).await;
    assert_eq!(
        a.http_get(&format!("{allowed_origin}/x")).await.unwrap(),
        Ok(200)
    );
    for url in [
        format!("{}/x", other.url()),
        // The allowed server under another spelling or scheme is another
        // origin.
        format!("http://localhost:{}/x", allowed.addr().port()),
        format!("https://127.0.0.1:{}/x", allowed.addr().port()),
    ] {
        assert_eq!(
            a.http_get(&url).await.unwrap(),
            Err(DENIED.to_string()),
            "{url}"
        );
    }
    assert_eq!(allowed.request_count(), 1);
    assert_eq!(allowed.requests()[0].path, "/x");
    assert_eq!((other.request_count(), other.connection_count()), (0, 0));
    assert_eq!(
        (f.broker.request_count(), f.broker.connection_count()),
        (0, 0)
    );
    let reasons: Vec<Reason> = refusals(&a).iter().map(|r| r.reason).collect();
    assert_eq!(reasons, [Reason::NotAllowed; 3]);
}

#[tokio::test]
async fn a_redirect_to_the_broker_is_returned_and_following_it_is_refused() {
    let f = Fixture::new();
    let allowed = MockBroker::start().unwrap();
    let port = f.broker.addr().port();
    let location = format!("http://localhost:{port}/api/v1/credential-broker/token");
    allowed.push(Reply::json(302, "").with_header("location", &location));
    let builder = AgentBuilder::default()
        .egress(format!("http://127.0.0.1:{}", allowed.addr().port()))
        // Even with the redirect's target on the allowlist.
        .egress(format!("http://localhost:{port}"));
    let mut a = agent(&f, builder).await;
    assert_eq!(
        a.http_get(&format!("{}/start", allowed.url()))
            .await
            .unwrap(),
        Ok(302),
        "the redirect is the agent's to see, not followed by the host"
    );
    assert_eq!(
        a.http_get(&location).await.unwrap(),
        Err(REFUSED.to_string())
    );
    assert_eq!(allowed.request_count(), 1);
    assert_eq!(
        (f.broker.request_count(), f.broker.connection_count()),
        (0, 0)
    );
    assert_eq!(refusals(&a)[0].reason, Reason::CredentialBroker);
}

#[tokio::test]
async fn the_agents_credential_still_reaches_the_broker() {
    let f = Fixture::new();
    let port = f.broker.addr().port();
    let mut a = agent(
        &f,
        AgentBuilder::default().egress(format!("http://localhost:{port}")),
    )
    .await;
    let token = a
        .token(&test_agent::no_options(), &[crate::VAULT], 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(token.token, "mock-token-1");
    assert_eq!(
        a.http_get(&format!(
            "http://localhost:{port}/api/v1/credential-broker/token"
        ))
        .await
        .unwrap(),
        Err(REFUSED.to_string())
    );
    assert_eq!(f.broker.request_count(), 1, "only the credential's mint");
}
