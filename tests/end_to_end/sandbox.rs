//! The sandbox holds: only the preopened directory, only the broker's origin.

use vd_cred_broker::CredentialError as E;

use crate::{Fixture, VAULT, options};

#[tokio::test]
async fn a_bearer_file_outside_the_preopen_is_unavailable() {
    let f = Fixture::new();
    let outside = tempfile::tempdir().unwrap();
    let path = outside.path().join("credential");
    std::fs::write(&path, "vd_iat_outside").unwrap();
    let mut o = options();
    o.credential_file = Some(path.to_str().unwrap().to_string());
    let err = f.get_token_with(o, &[VAULT]).await.unwrap_err();
    assert!(
        matches!(err, E::BearerUnavailable(ref m) if m.contains("preopen")),
        "{err}"
    );
    // A relative path escaping the preopen is refused too.
    let mut o = options();
    o.credential_file = Some("/run/vd/../../etc/passwd".into());
    let err = f.get_token_with(o, &[VAULT]).await.unwrap_err();
    assert!(matches!(err, E::BearerUnavailable(_)), "{err}");
    assert_eq!(f.broker.request_count(), 0);
}

#[tokio::test]
async fn requests_to_any_other_origin_are_denied() {
    let f = Fixture::new();
    let other = host_test::MockBroker::start().unwrap();
    let port = f.broker.addr().port();
    for url in [
        other.url(),                             // same host, another port
        format!("http://localhost:{port}/api"),  // another name for the same origin
        format!("https://127.0.0.1:{port}/api"), // another scheme
    ] {
        let mut o = options();
        o.broker_url = Some(url.clone());
        let mut sandbox = f.sandbox().await;
        let credential = sandbox.open(&o).await.unwrap().unwrap();
        let err = sandbox
            .credential_get_token(credential, &[VAULT])
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(err, E::BrokerUnreachable(ref m) if m.contains("refused the request")),
            "{url}: {err}"
        );
        assert_eq!(sandbox.denied_requests().len(), 1, "{url}");
    }
    assert_eq!(other.request_count(), 0);
    assert_eq!(f.broker.request_count(), 0);
}

#[tokio::test]
async fn without_a_broker_origin_all_http_is_denied() {
    let f = Fixture::new();
    let mut sandbox = host_test::Host::shared()
        .sandbox()
        .env("VD_CREDENTIAL_BROKER_URL", f.broker.url())
        .env("VD_CREDENTIAL_FILE", crate::GUEST_FILE)
        .bearer_dir(f.dir.path(), crate::GUEST_DIR)
        .build()
        .await
        .unwrap();
    let err = sandbox.get_token(&[VAULT]).await.unwrap().unwrap_err();
    assert!(matches!(err, E::BrokerUnreachable(_)), "{err}");
    assert_eq!(
        sandbox.denied_requests(),
        [format!("http://{}", f.broker.addr())]
    );
    assert_eq!(f.broker.request_count(), 0);
}
