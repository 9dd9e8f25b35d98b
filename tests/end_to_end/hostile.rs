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
        (
            Reply::json(200, r#"{"access_token":null}"#),
            "is missing access_token",
        ),
        (
            Reply::json(200, r#"{"access_token":"two words"}"#),
            "has an access_token with spaces, control or non-ASCII characters",
        ),
        (
            Reply::json(200, r#"{"access_token":"t","expires_in":0}"#),
            "has expires_in 0: a token must live a positive number of seconds",
        ),
        (
            Reply::json(200, r#"{"access_token":"t","expires_in":3599.5}"#),
            "has a expires_in that is not a positive whole number of seconds",
        ),
        (
            Reply::json(200, r#"{"access_token":"t","expires_in":604801}"#),
            "has expires_in 604801, above the 604800 seconds accepted",
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

/// Status first: a failure's body past the 1 MiB cap is cut, not refused, so
/// the status decides (and a transient one is retried); only a 2xx body over
/// the cap is `invalid-response`.
#[tokio::test]
async fn a_failure_with_a_body_over_the_cap_keeps_its_status() {
    let f = Fixture::new();
    let big = format!("{}{}", "down for maintenance ", "x".repeat(2 << 20));
    f.broker.set_default(Reply::json(503, big.clone()));
    let mut o = options();
    o.timeout_ms = Some(5_000);
    let err = f.get_token_with(o, &[VAULT]).await.unwrap_err();
    let E::BrokerFailed {
        status: 503,
        detail,
    } = &err
    else {
        panic!("{err}")
    };
    assert!(detail.starts_with("down for maintenance xxx"), "{detail}");
    assert!(err.to_string().ends_with("(after 4 attempts)"), "{err}");
    assert_eq!(f.broker.request_count(), 4, "a transient status is retried");
    f.broker.set_default(Reply::json(401, big));
    let err = f.get_token(&[VAULT]).await.unwrap_err();
    assert!(
        matches!(err, E::BrokerRejected { status: 401, .. }),
        "{err}"
    );
    assert_eq!(f.broker.request_count(), 5, "a rejection is not retried");
}

#[tokio::test]
async fn secret_like_members_are_scrubbed_from_error_excerpts() {
    let f = Fixture::new();
    let values = [
        "sess-cookie-value-1",
        "hunter2-password-value",
        "assertion-value-eyQ",
        "Basic dXNlcjpwYXNz",
        "a-session-token-value",
    ];
    let body = format!(
        r#"{{"error":"denied","cookie":"{}","password":"{}","client_assertion":"{}","Authorization":"{}","nested":{{"session_token":"{}"}}}}"#,
        values[0], values[1], values[2], values[3], values[4]
    );
    f.broker.push(Reply::json(403, body));
    let err = f.get_token(&[VAULT]).await.unwrap_err();
    let E::BrokerRejected {
        status: 403,
        detail,
    } = &err
    else {
        panic!("{err}")
    };
    for value in values {
        assert!(!detail.contains(value), "{value} in {detail}");
    }
    for name in [
        "cookie",
        "password",
        "client_assertion",
        "Authorization",
        "session_token",
    ] {
        assert!(
            detail.contains(&format!(r#""{name}":"[redacted]""#)),
            "{name}: {detail}"
        );
    }
    assert!(detail.contains(r#""error":"denied""#), "{detail}");
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

/// A broker that sends an endless 200 (announced as 1 GiB, or chunked without
/// end): the component stops reading past the 1 MiB cap, so the server can
/// push little more than the cap plus the kernel's socket buffers.
#[tokio::test]
async fn an_endless_answer_is_never_buffered_beyond_the_cap() {
    use std::io::{Read, Write};
    for chunked in [false, true] {
        let f = Fixture::new();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // A reader that stopped: writes block, then time out.
            stream
                .set_write_timeout(Some(std::time::Duration::from_millis(300)))
                .unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).unwrap();
            let head = match chunked {
                false => {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n"
                }
                true => {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                }
            };
            stream.write_all(head.as_bytes()).unwrap();
            let block = vec![b' '; 64 * 1024];
            let framed = [
                format!("{:x}\r\n", block.len()).into_bytes(),
                block.clone(),
                b"\r\n".to_vec(),
            ]
            .concat();
            let mut sent = 0usize;
            while sent < 1 << 30 {
                let chunk = if chunked { &framed } else { &block };
                if stream.write_all(chunk).is_err() {
                    break;
                }
                sent += block.len();
            }
            sent
        });
        let mut sandbox = f
            .builder()
            .env("VD_CREDENTIAL_BROKER_URL", &url)
            .broker_url(&url)
            .build()
            .await
            .unwrap();
        let err = sandbox.get_token(&[VAULT]).await.unwrap().unwrap_err();
        assert_eq!(
            err,
            E::InvalidResponse(format!(
                "the answer from {url}/token is larger than 1048576 bytes; it was not read further"
            )),
            "chunked: {chunked}"
        );
        drop(sandbox);
        let sent = server.join().unwrap();
        assert!(
            sent < 32 << 20,
            "chunked: {chunked}: the server pushed {sent} bytes before the component stopped reading"
        );
    }
}
