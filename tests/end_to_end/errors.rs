//! Every `credential-error` case, through the component.

use std::time::Duration;

use host_test::Reply;
use vd_cred_broker::CredentialError as E;

use crate::{Fixture, GUEST_DIR, GUEST_FILE, VAULT, options};

fn message(e: &E) -> String {
    e.to_string()
}

#[tokio::test]
async fn configuration_names_the_variable() {
    let f = Fixture::new();
    // No environment at all.
    let mut bare = crate::host()
        .sandbox()
        .bearer_dir(f.dir.path(), GUEST_DIR)
        .build()
        .await
        .unwrap();
    let err = bare.get_token(&[VAULT]).await.unwrap().unwrap_err();
    assert!(
        matches!(err, E::Configuration(ref m) if m.contains("VD_CREDENTIAL_BROKER_URL")),
        "{err}"
    );

    let mut only_url = crate::host()
        .sandbox()
        .env("VD_CREDENTIAL_BROKER_URL", f.broker.url())
        .build()
        .await
        .unwrap();
    let err = only_url.get_token(&[VAULT]).await.unwrap().unwrap_err();
    assert!(
        matches!(err, E::Configuration(ref m) if m.contains("VD_CREDENTIAL_FILE")),
        "{err}"
    );

    let mut sandbox = f.sandbox().await;
    let mut o = options();
    o.timeout_ms = Some(0);
    let err = sandbox.open(&o).await.unwrap().unwrap_err();
    assert!(
        matches!(err, E::Configuration(ref m) if m.contains("timeout-ms")),
        "{err}"
    );
    let mut o = options();
    o.broker_url = Some("http://broker.example.com/api".into());
    let err = sandbox.open(&o).await.unwrap().unwrap_err();
    assert!(
        matches!(err, E::Configuration(ref m) if m.contains("allow-insecure-http")),
        "{err}"
    );
    let mut o = options();
    o.audience_map = vec![("".into(), "x".into())];
    let err = sandbox.open(&o).await.unwrap().unwrap_err();
    assert!(
        matches!(err, E::Configuration(ref m) if m.contains("audience-map")),
        "{err}"
    );
    assert_eq!(f.broker.request_count(), 0);
}

#[tokio::test]
async fn invalid_scopes_and_scope_not_allowed() {
    let f = Fixture::new();
    let mut sandbox = f.sandbox().await;
    let err = sandbox.get_token(&[]).await.unwrap().unwrap_err();
    assert!(matches!(err, E::InvalidScopes(_)), "{err}");
    let err = sandbox
        .get_token(&[VAULT, "https://storage.azure.com/.default"])
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, E::InvalidScopes(ref m) if m.contains("vault") && m.contains("storage")),
        "{err}"
    );
    let err = sandbox
        .get_token(&["https://graph.microsoft.com/.default"])
        .await
        .unwrap()
        .unwrap_err();
    let E::ScopeNotAllowed {
        scope,
        known_resources,
    } = err
    else {
        panic!("{err}")
    };
    assert_eq!(scope, "https://graph.microsoft.com/.default");
    assert_eq!(
        known_resources,
        [
            "https://analysis.windows.net/powerbi/api",
            "https://api.fabric.microsoft.com",
            "https://database.windows.net",
            "https://management.azure.com",
            "https://storage.azure.com",
            "https://vault.azure.net",
        ]
    );
    assert_eq!(f.broker.request_count(), 0);
}

#[tokio::test]
async fn bearer_missing_empty_and_malformed_are_told_apart() {
    let f = Fixture::new();
    f.write_bearer("  \n");
    let empty = f.get_token(&[VAULT]).await.unwrap_err();
    assert!(
        matches!(empty, E::BearerUnavailable(ref m) if m.contains("empty")),
        "{empty}"
    );
    f.write_bearer("vd_iat_a\nb");
    let ctl = f.get_token(&[VAULT]).await.unwrap_err();
    assert!(
        matches!(ctl, E::BearerUnavailable(ref m) if m.contains("control")),
        "{ctl}"
    );
    std::fs::remove_file(f.dir.path().join("credential")).unwrap();
    let missing = f.get_token(&[VAULT]).await.unwrap_err();
    assert!(
        matches!(missing, E::BearerUnavailable(ref m) if m.contains("does not exist") && m.contains(GUEST_FILE)),
        "{missing}"
    );
    std::fs::create_dir(f.dir.path().join("credential")).unwrap();
    let dir = f.get_token(&[VAULT]).await.unwrap_err();
    assert!(
        matches!(dir, E::BearerUnavailable(ref m) if m.contains("directory")),
        "{dir}"
    );
    assert_eq!(f.broker.request_count(), 0);
}

#[tokio::test]
async fn broker_rejected_and_failed_carry_status_and_excerpt() {
    let f = Fixture::new();
    for status in [401, 403] {
        f.broker
            .push(Reply::json(status, r#"{"error":"intent expired"}"#));
        let err = f.get_token(&[VAULT]).await.unwrap_err();
        assert!(
            matches!(err, E::BrokerRejected { status: s, ref detail } if s == status && detail.contains("intent expired")),
            "{err}"
        );
        assert!(message(&err).contains("expired, revoked, or out of scope"));
    }
    // Not retried, so one scripted answer is the whole story (retryable
    // statuses are covered in retries.rs).
    for status in [400, 404, 409, 501] {
        f.broker.push(Reply::json(status, "upstream said no"));
        let err = f.get_token(&[VAULT]).await.unwrap_err();
        assert!(
            matches!(err, E::BrokerFailed { status: s, ref detail } if s == status && detail == "upstream said no"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn invalid_responses() {
    let f = Fixture::new();
    for (body, want) in [
        ("<html>oops</html>", "not JSON"),
        (r#"{"token":"x"}"#, "missing access_token"),
        (r#"{"access_token":""}"#, "missing access_token"),
        (r#"{"access_token":"t","expires_in":"soon"}"#, "expires_in"),
        (r#"["access_token"]"#, "not an object"),
    ] {
        f.broker.push(Reply::json(200, body));
        let err = f.get_token(&[VAULT]).await.unwrap_err();
        assert!(
            matches!(err, E::InvalidResponse(ref m) if m.contains(want)),
            "{body}: {err}"
        );
    }
}

/// The deadline ends the call: not before it (however fast the machine),
/// and not by waiting for the answer, which the broker's log says was due
/// 5 s after the request arrived (a call that waited would end after that,
/// however fast the machine).
#[tokio::test]
async fn slow_broker_fails_in_about_the_timeout() {
    let f = Fixture::new();
    let late = Duration::from_secs(5);
    f.broker.push(Reply::Mint.after(late));
    let mut o = options();
    o.timeout_ms = Some(300);
    let (err, started, ended) = f.timed_failure(&o).await;
    let took = ended - started;
    assert!(
        matches!(err, E::BrokerUnreachable(ref m) if m.contains("300 ms")),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(300),
        "gave up early: {took:?}"
    );
    let requests = f.broker.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        ended < requests[0].received_at + late,
        "took {took:?}: waited for the answer, the timeout-ms bound was not applied"
    );
}

#[tokio::test]
async fn dropped_connection_and_nothing_listening() {
    let f = Fixture::new();
    f.broker.set_default(Reply::Drop {
        delay: Duration::ZERO,
    });
    let err = f.get_token(&[VAULT]).await.unwrap_err();
    assert!(
        matches!(err, E::BrokerUnreachable(ref m) if m.contains("after 4 attempts")),
        "{err}"
    );
    assert_eq!(
        f.broker.request_count(),
        4,
        "a dropped connection is retried"
    );

    // A port held where nothing listens, for the whole test: connecting is
    // refused every time, and nothing beside the test can take the port.
    let closed = host_test::ClosedPort::new().unwrap();
    let dead = format!("http://{}/api", closed.addr());
    let mut sandbox = f
        .builder()
        .env("VD_CREDENTIAL_BROKER_URL", &dead)
        .broker_url(&dead)
        .build()
        .await
        .unwrap();
    let err = sandbox.get_token(&[VAULT]).await.unwrap().unwrap_err();
    // A refused connection is transient: retried up to the attempt limit.
    assert!(
        matches!(err, E::BrokerUnreachable(ref m) if m.contains("refused")
            && m.contains("Studio running")
            && m.ends_with("(after 4 attempts)")),
        "{err}"
    );
}

#[tokio::test]
async fn describe_error_renders_in_the_component() {
    let f = Fixture::new();
    let mut sandbox = f.sandbox().await;
    let err = sandbox
        .get_token(&["https://nope"])
        .await
        .unwrap()
        .unwrap_err();
    // Expected sentences written out, not rendered by the same Display code.
    let cases = [
        (
            err,
            "scope \"https://nope\" is not allowed: it maps to none of the resources this \
             credential serves: https://analysis.windows.net/powerbi/api, \
             https://api.fabric.microsoft.com, https://database.windows.net, \
             https://management.azure.com, https://storage.azure.com, https://vault.azure.net. \
             Request one of these (optionally with /.default); to serve another resource, add it \
             with the audience-map option (for a host-linked agent, the host's policy decides)",
        ),
        (
            E::BrokerRejected {
                status: 401,
                detail: "revoked".into(),
            },
            "the credential broker rejected the request (HTTP 401): the intent access token may be \
             expired, revoked, or out of scope; start a new Studio intent session. Broker said: revoked",
        ),
        (
            E::BrokerFailed {
                status: 503,
                detail: String::new(),
            },
            "the credential broker failed with HTTP 503; check the broker's logs or retry later",
        ),
        (
            E::Configuration("timeout-ms must be more than 0".into()),
            "credential configuration error: timeout-ms must be more than 0",
        ),
        (
            E::BearerUnavailable("the bearer file \"/run/vd/credential\" is empty".into()),
            "intent bearer unavailable: the bearer file \"/run/vd/credential\" is empty",
        ),
        (
            E::Unsupported("claims".into()),
            "unsupported request: claims",
        ),
    ];
    for (error, expected) in cases {
        assert_eq!(sandbox.describe_error(&error).await.unwrap(), expected);
    }
}

#[tokio::test]
async fn a_broker_host_name_that_does_not_resolve_says_so() {
    let f = crate::Fixture::new();
    // `.invalid` never resolves (RFC 6761).
    let url = "https://broker.invalid:8443/api/v1/credential-broker";
    let mut o = crate::options();
    o.broker_url = Some(url.into());
    let mut sandbox = f.builder().broker_url(url).build().await.unwrap();
    let credential = sandbox.open(&o).await.unwrap().unwrap();
    let err = sandbox
        .credential_get_token(credential, &[crate::VAULT])
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, vd_cred_broker::CredentialError::BrokerUnreachable(ref m)
            if m.starts_with(&format!("{url}/token failed: the broker's host name did not resolve"))),
        "{err}"
    );
    assert!(sandbox.denied_requests().is_empty());
}
