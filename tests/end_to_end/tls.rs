//! An https broker with a private CA: trusted through the host's extra roots,
//! and each way a certificate can be wrong named in the error, with no
//! plain-http fallback and no retry of a refused handshake.

use host_test::tls::{TestCa, Validity};
use vd_cred_broker::CredentialError as E;
use vd_cred_host::TrustedRoots;

use crate::{Fixture, VAULT, options};

fn trusting(ca: &TestCa) -> TrustedRoots {
    let mut roots = TrustedRoots::public();
    assert_eq!(roots.add_pem(ca.pem().as_bytes()).unwrap(), 1);
    roots
}

/// One `get-token` through `f`'s sandbox trusting `roots`, with the broker
/// named by `url`.
async fn token_via(
    f: &Fixture,
    roots: TrustedRoots,
    url: &str,
) -> Result<vd_cred_host::AccessToken, E> {
    let mut o = options();
    o.broker_url = Some(url.to_string());
    let mut sandbox = f
        .builder()
        .broker_url(url)
        .trusted_roots(roots)
        .build()
        .await
        .unwrap();
    let credential = sandbox.open(&o).await.unwrap()?;
    let result = sandbox
        .credential_get_token(credential, &[VAULT])
        .await
        .unwrap();
    assert!(sandbox.denied_requests().is_empty());
    result
}

#[tokio::test]
async fn a_broker_with_a_private_ca_mints_over_https() {
    let ca = TestCa::new().unwrap();
    let broker = ca.broker(&["localhost"], Validity::Current).unwrap();
    let f = Fixture::with_broker(broker);
    let url = f.broker.url();
    assert!(url.starts_with("https://localhost:"), "{url}");
    let token = token_via(&f, trusting(&ca), &url).await.unwrap();
    assert_eq!(token.token, "mock-token-1");
    let requests = f.broker.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.path, "/api/v1/credential-broker/token");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {}", f.bearer).as_str())
    );
    assert_eq!(
        r.header("host"),
        Some(format!("localhost:{}", f.broker.addr().port()).as_str())
    );
    assert_eq!(f.broker.failed_handshakes(), 0);
}

#[tokio::test]
async fn an_untrusted_misnamed_or_expired_certificate_is_named_and_not_retried() {
    let ca = TestCa::new().unwrap();
    let other_ca = TestCa::new().unwrap();
    let trust = "give the host its CA (SSL_CERT_FILE, or TrustedRoots::add_pem)";
    let cases = [
        (
            "public roots only",
            Validity::Current,
            TrustedRoots::public(),
            "localhost",
            format!(
                "the broker's certificate is not trusted (its issuer is not among the host's \
                 trusted roots): {trust}"
            ),
        ),
        (
            "another CA of the same name trusted",
            Validity::Current,
            trusting(&other_ca),
            "localhost",
            format!(
                "the broker's certificate is not trusted (its signature does not verify against \
                 the host's trusted roots): {trust}"
            ),
        ),
        (
            "wrong host name",
            Validity::Current,
            trusting(&ca),
            "127.0.0.1",
            "the broker's certificate is for another host name: use the name on the \
             certificate in the broker URL"
                .to_string(),
        ),
        (
            "expired",
            Validity::Expired,
            trusting(&ca),
            "localhost",
            "the broker's certificate has expired: renew it on the broker".to_string(),
        ),
    ];
    for (case, validity, roots, host, why) in cases {
        let broker = ca.broker(&["localhost"], validity).unwrap();
        let f = Fixture::with_broker(broker);
        let url = f.broker.url_for_host(host);
        let err = token_via(&f, roots, &url).await.unwrap_err();
        assert_eq!(
            err,
            E::BrokerUnreachable(format!("{url}/token failed: TLS handshake failed: {why}")),
            "{case}"
        );
        // One connection, one refused handshake: no second attempt, no
        // plain-http request on the same port, no request answered. (The
        // client returned as soon as it refused; the mock notes it later.)
        crate::until("the mock noted the failed handshake", || {
            f.broker.failed_handshakes() > 0
        })
        .await;
        assert_eq!(f.broker.connection_count(), 1, "{case}");
        assert_eq!(f.broker.failed_handshakes(), 1, "{case}");
        assert_eq!(f.broker.request_count(), 0, "{case}");
    }
}

#[tokio::test]
async fn https_to_a_plain_http_broker_says_it_did_not_answer_in_tls() {
    let f = Fixture::new();
    let url = f.broker.url().replacen("http://", "https://", 1);
    let err = token_via(&f, TrustedRoots::public(), &url)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        E::BrokerUnreachable(format!(
            "{url}/token failed: TLS handshake failed: the broker did not answer in TLS: does \
             it serve https on this port?"
        ))
    );
    crate::until("the mock noted the connection", || {
        f.broker.connection_count() > 0
    })
    .await;
    assert_eq!(f.broker.connection_count(), 1);
}
