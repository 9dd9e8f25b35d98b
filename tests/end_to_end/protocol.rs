//! The wire protocol: exactly what the original sends and how it reads the answer.

use host_test::Reply;

use crate::{Fixture, T0, VAULT, options};

#[tokio::test]
async fn exact_wire_bytes() {
    let f = Fixture::new();
    let token = f.get_token(&[VAULT]).await.unwrap();
    assert_eq!(token.token, "mock-token-1");

    let requests = f.broker.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/api/v1/credential-broker/token");
    assert_eq!(r.version, "HTTP/1.1");
    assert_eq!(r.body, br#"{"audience":"vault"}"#);
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {}", f.bearer).as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("content-length"), Some("20"));
    assert_eq!(
        r.header("transfer-encoding"),
        None,
        "the body must not be chunked"
    );
    let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["host", "authorization", "content-type", "content-length"]
    );
    assert_eq!(r.header("host"), Some(f.broker.addr().to_string().as_str()));
}

#[tokio::test]
async fn every_default_audience_and_spelling() {
    let f = Fixture::new();
    let mut sandbox = f.sandbox().await;
    let mut expected = Vec::new();
    // Written out, not taken from the table under test.
    for (resource, audience) in [
        ("https://database.windows.net", "sql"),
        ("https://storage.azure.com", "storage"),
        ("https://vault.azure.net", "vault"),
        ("https://api.fabric.microsoft.com", "fabric_api"),
        ("https://analysis.windows.net/powerbi/api", "fabric_cli"),
        ("https://management.azure.com", "arm"),
    ] {
        for scope in [
            format!("{resource}/.default"),
            format!("{resource}/"),
            resource.to_string(),
        ] {
            sandbox.get_token(&[&scope]).await.unwrap().unwrap();
            expected.push(format!(r#"{{"audience":"{audience}"}}"#));
        }
    }
    let bodies: Vec<String> = f
        .broker
        .requests()
        .iter()
        .map(|r| String::from_utf8(r.body.clone()).unwrap())
        .collect();
    assert_eq!(bodies, expected);
}

#[tokio::test]
async fn several_scopes_with_one_audience() {
    let f = Fixture::new();
    f.get_token(&[
        "https://storage.azure.com/.default",
        "https://storage.azure.com/",
    ])
    .await
    .unwrap();
    assert_eq!(f.broker.requests()[0].body, br#"{"audience":"storage"}"#);
}

#[tokio::test]
async fn audience_map_overrides_win_and_extend() {
    let f = Fixture::new();
    let mut o = options();
    o.audience_map = vec![
        (
            "https://vault.azure.net/".into(),
            "key_vault_data_plane".into(),
        ),
        (
            "https://example.org/custom/.default".into(),
            "custom".into(),
        ),
    ];
    f.get_token_with(o.clone(), &[VAULT]).await.unwrap();
    f.get_token_with(o.clone(), &["https://example.org/custom"])
        .await
        .unwrap();
    f.get_token_with(o, &["https://management.azure.com/.default"])
        .await
        .unwrap();
    let bodies: Vec<Vec<u8>> = f.broker.requests().into_iter().map(|r| r.body).collect();
    assert_eq!(
        bodies,
        [
            br#"{"audience":"key_vault_data_plane"}"#.to_vec(),
            br#"{"audience":"custom"}"#.to_vec(),
            br#"{"audience":"arm"}"#.to_vec(),
        ]
    );
}

#[tokio::test]
async fn options_win_over_environment() {
    let f = Fixture::new();
    let other = host_test::MockBroker::start().unwrap();
    std::fs::write(f.dir.path().join("other"), "vd_iat_from_option").unwrap();
    let mut o = options();
    o.broker_url = Some(other.url());
    o.credential_file = Some("/run/vd/other".into());
    let mut sandbox = f.builder().broker_url(other.url()).build().await.unwrap();
    let credential = sandbox.open(&o).await.unwrap().unwrap();
    sandbox
        .credential_get_token(credential, &[VAULT])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.broker.request_count(), 0);
    assert_eq!(
        other.requests()[0].header("authorization"),
        Some("Bearer vd_iat_from_option")
    );
}

#[tokio::test]
async fn expires_on_is_wall_clock_plus_expires_in() {
    let f = Fixture::new();
    f.broker.push(Reply::token("t1", 1799));
    f.broker.push(Reply::json(
        200,
        r#"{"access_token":"t2","expires_in":"3599"}"#,
    ));
    f.broker.push(Reply::json(200, r#"{"access_token":"t3"}"#));
    let mut sandbox = f.sandbox().await;
    let a = sandbox.get_token(&[VAULT]).await.unwrap().unwrap();
    f.clock.advance(std::time::Duration::from_secs(100));
    let b = sandbox.get_token(&[VAULT]).await.unwrap().unwrap();
    let c = sandbox.get_token(&[VAULT]).await.unwrap().unwrap();
    assert_eq!((a.token.as_str(), a.expires_on), ("t1", T0 + 1799));
    assert_eq!((b.token.as_str(), b.expires_on), ("t2", T0 + 100 + 3599));
    assert_eq!((c.token.as_str(), c.expires_on), ("t3", T0 + 100 + 3600));
}

#[tokio::test]
async fn trailing_slash_on_broker_url_is_removed() {
    let f = Fixture::new();
    let mut o = options();
    o.broker_url = Some(format!("{}/", f.broker.url()));
    f.get_token_with(o, &[VAULT]).await.unwrap();
    assert_eq!(
        f.broker.requests()[0].path,
        "/api/v1/credential-broker/token"
    );
}
