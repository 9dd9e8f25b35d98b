//! Hostile and malformed input, through the component: each fails closed with
//! a clear, typed error and never hangs.

use std::time::{Duration, Instant};

use host_test::Reply;
use vd_cred_broker::CredentialError as E;

use crate::{Fixture, VAULT, options};

#[tokio::test]
async fn bearer_file_hostile_forms() {
    let f = Fixture::new();
    let path = f.dir.path().join("credential");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not UTF-8", b"vd_iat_\xff\xfe".to_vec(), "UTF-8"),
        (
            "CR LF inside",
            b"vd_iat_a\r\nX-Injected: 1".to_vec(),
            "control",
        ),
        ("NUL inside", b"vd_iat_a\0b".to_vec(), "control"),
        ("over 64 KiB", vec![b'a'; 64 * 1024 + 1], "bytes"),
        ("only whitespace", b" \t\r\n".to_vec(), "empty"),
    ];
    for (name, content, want) in cases {
        std::fs::write(&path, &content).unwrap();
        let err = f.get_token(&[VAULT]).await.unwrap_err();
        assert!(
            matches!(err, E::BearerUnavailable(ref m) if m.contains(want)),
            "{name}: {err}"
        );
    }
    assert_eq!(f.broker.request_count(), 0);
}

#[tokio::test]
async fn a_fifo_or_directory_as_bearer_file_fails_without_hanging() {
    let f = Fixture::new();
    let path = f.dir.path().join("credential");
    std::fs::remove_file(&path).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let err = f.get_token(&[VAULT]).await.unwrap_err();
    assert!(
        matches!(err, E::BearerUnavailable(ref m) if m.contains("not a regular file")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let err = f.get_token(&[VAULT]).await.unwrap_err();
    assert!(
        matches!(err, E::BearerUnavailable(ref m) if m.contains("directory")),
        "{err}"
    );
}

#[tokio::test]
async fn hostile_broker_answers() {
    let f = Fixture::new();
    let huge = format!(
        r#"{{"access_token":"t","pad":"{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    let long_token = format!(r#"{{"access_token":"{}"}}"#, "a".repeat(40 * 1024));
    let cases: Vec<(Reply, &str)> = vec![
        (Reply::json(200, huge), "larger than 1048576"),
        (
            Reply::json(200, long_token),
            "has an access_token of 40960 bytes, more than the 32768 accepted",
        ),
        (
            Reply::json(200, r#"{"access_token":"a\r\nb"}"#),
            "Authorization",
        ),
        (Reply::json(200, r#"{"access_token":"é"}"#), "Authorization"),
        (
            Reply::json(200, r#"{"access_token":["t"]}"#),
            "not a string",
        ),
        (
            Reply::json(200, r#"{"access_token":"t","expires_in":-1}"#),
            "expires_in",
        ),
        (
            Reply::json(200, r#"{"access_token":"t","expires_in":1e300}"#),
            "expires_in",
        ),
        (
            Reply::json(200, r#"{"access_token":"t","expires_in":"0x10"}"#),
            "expires_in",
        ),
        (Reply::json(200, "null"), "not an object"),
        (Reply::json(200, ""), "not JSON"),
        (Reply::json(200, r#"{"access_token":"t""#), "not JSON"),
    ];
    for (reply, want) in cases {
        f.broker.push(reply.clone());
        let err = f.get_token(&[VAULT]).await.unwrap_err();
        assert!(
            matches!(err, E::InvalidResponse(ref m) if m.contains(want)),
            "{reply:?}: {err}"
        );
    }
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let f = Fixture::new();
    let elsewhere = host_test::MockBroker::start().unwrap();
    f.broker
        .push(Reply::json(307, "").with_header("location", &format!("{}/token", elsewhere.url())));
    let err = f.get_token(&[VAULT]).await.unwrap_err();
    assert!(matches!(err, E::BrokerFailed { status: 307, .. }), "{err}");
    assert_eq!(f.broker.request_count(), 1);
    assert_eq!(elsewhere.request_count(), 0);
}

#[tokio::test]
async fn error_excerpts_are_bounded_single_line_and_scrubbed() {
    let f = Fixture::new();
    let body = format!(
        "line one\r\n\x1b[31mred\x1b[0m refresh_token=eyJabc.def.ghi {}\n{}",
        f.bearer,
        "z".repeat(5000)
    );
    f.broker.push(Reply::json(400, body));
    let err = f.get_token(&[VAULT]).await.unwrap_err();
    let E::BrokerFailed { detail, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(detail.chars().count(), 200, "{detail}");
    assert!(detail.ends_with("zzz..."), "{detail}");
    assert!(!detail.chars().any(char::is_control), "{detail:?}");
    assert!(
        !detail.contains("eyJabc") && !detail.contains(&f.bearer),
        "{detail}"
    );
    assert!(detail.starts_with("line one"), "{detail}");
}

#[tokio::test]
async fn insecure_or_malformed_broker_urls_are_refused() {
    let f = Fixture::new();
    let mut sandbox = f.sandbox().await;
    let clear_text = "uses plain http to a non-local host, so the bearer would cross the network \
                      in clear text; use https, or set allow-insecure-http if the network is trusted";
    for (url, why) in [
        ("http://broker.example.com/api", clear_text),
        ("http://10.1.2.3:8080/api", clear_text),
        (
            "https://user:pass@broker.example.com/api",
            "has user-info (user@host); put no credentials in the URL",
        ),
        (
            "https://broker.example.com/api?token=x",
            "has a query (?...)",
        ),
        ("https://broker.example.com/api#x", "has a fragment (#...)"),
        ("ftp://broker.example.com/api", "must use http or https"),
        (
            "broker.example.com/api",
            "is not absolute (no http:// or https://)",
        ),
        ("https://", "has no host"),
    ] {
        let mut o = options();
        o.broker_url = Some(url.into());
        let err = sandbox.open(&o).await.unwrap().unwrap_err();
        assert_eq!(
            err,
            E::Configuration(format!(
                "the broker URL {url:?} (VD_CREDENTIAL_BROKER_URL or broker-url) {why}; expected \
                 e.g. \"http://host.docker.internal:8080/api/v1/credential-broker\""
            )),
        );
    }
    let mut o = options();
    o.broker_url = Some("http://broker.example.com/api".into());
    o.allow_insecure_http = true;
    assert!(
        sandbox.open(&o).await.unwrap().is_ok(),
        "allow-insecure-http opts in"
    );
}
