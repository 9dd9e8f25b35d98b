//! The three modes: broker 0.1 (neither lane nor revision), broker 0.2 (lane
//! and configuration revision), and the runtime-access helper on a Unix socket.

use std::collections::HashMap;

use host_test::{MockBroker, Reply};
use vd_cred_broker::CredentialError as E;
use vd_cred_host::from_env::sandbox_from_env;

use crate::{Fixture, VAULT, options};

fn body(r: &host_test::Recorded) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn protocol_0_1_when_lane_and_revision_are_unset() {
    let f = Fixture::new();
    f.get_token(&[VAULT]).await.unwrap();
    assert_eq!(f.broker.requests()[0].body, br#"{"audience":"vault"}"#);
}

#[tokio::test]
async fn protocol_0_2_sends_every_field() {
    let f = Fixture::new();
    let mut s = f
        .builder()
        .env("VD_CREDENTIAL_LANE", "service")
        .env("VD_CREDENTIAL_CONFIGURATION_REVISION", "7")
        .build()
        .await
        .unwrap();
    s.get_token(&[VAULT]).await.unwrap().unwrap();
    let r = &f.broker.requests()[0];
    assert_eq!(
        r.body,
        br#"{"audience":"vault","scope":"data_platform","lane":"service","configurationRevision":7}"#
    );
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {}", f.bearer).as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );

    // Options win over the environment.
    let mut o = options();
    o.lane = Some("user".into());
    o.configuration_revision = Some(12);
    f.get_token_with(o, &[VAULT]).await.unwrap();
    let b = body(&f.broker.requests()[1]);
    assert_eq!(
        (b["lane"].as_str(), b["configurationRevision"].as_u64()),
        (Some("user"), Some(12))
    );
}

#[tokio::test]
async fn scope_class_of_each_secret_store_audience_and_a_default_one() {
    let f = Fixture::new();
    let mut o = options();
    o.lane = Some("user".into());
    o.configuration_revision = Some(1);
    o.audience_map = vec![
        ("https://discovery.example".into(), "discovery".into()),
        ("https://validation.example".into(), "validation".into()),
        (
            "https://vault.azure.net".into(),
            "key_vault_data_plane".into(),
        ),
    ];
    for scope in [
        "https://discovery.example/.default",
        "https://validation.example",
        VAULT,
        "https://storage.azure.com/.default",
    ] {
        f.get_token_with(o.clone(), &[scope]).await.unwrap();
    }
    let classes: Vec<(String, String)> = f
        .broker
        .requests()
        .iter()
        .map(|r| {
            let b = body(r);
            (
                b["audience"].as_str().unwrap().to_string(),
                b["scope"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("discovery", "secret_store"),
        ("validation", "secret_store"),
        ("key_vault_data_plane", "secret_store"),
        ("storage", "data_platform"),
    ];
    assert_eq!(classes, want.map(|(a, c)| (a.to_string(), c.to_string())));
    // The default vault audience stays data_platform.
    let mut o = options();
    o.lane = Some("user".into());
    o.configuration_revision = Some(1);
    f.get_token_with(o, &[VAULT]).await.unwrap();
    assert_eq!(body(&f.broker.requests()[4])["scope"], "data_platform");
}

#[tokio::test]
async fn bad_or_missing_lane_or_revision_fails_before_any_request() {
    let f = Fixture::new();
    for (lane, revision, names) in [
        (Some("admin"), Some("7"), "VD_CREDENTIAL_LANE"),
        (Some(""), Some("7"), "VD_CREDENTIAL_LANE"),
        (Some("user"), None, "VD_CREDENTIAL_CONFIGURATION_REVISION"),
        (None, Some("7"), "VD_CREDENTIAL_LANE"),
        (
            Some("user"),
            Some("-1"),
            "VD_CREDENTIAL_CONFIGURATION_REVISION",
        ),
        (
            Some("user"),
            Some("seven"),
            "VD_CREDENTIAL_CONFIGURATION_REVISION",
        ),
        (
            Some("service"),
            Some("7.5"),
            "VD_CREDENTIAL_CONFIGURATION_REVISION",
        ),
    ] {
        let mut b = f.builder();
        if let Some(lane) = lane {
            b = b.env("VD_CREDENTIAL_LANE", lane);
        }
        if let Some(revision) = revision {
            b = b.env("VD_CREDENTIAL_CONFIGURATION_REVISION", revision);
        }
        let err = b
            .build()
            .await
            .unwrap()
            .get_token(&[VAULT])
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(err, E::Configuration(ref m) if m.contains(names)),
            "{lane:?} {revision:?}: {err}"
        );
    }
    assert_eq!(f.broker.request_count(), 0);
}

/// A mock helper on a real Unix socket in a temp dir, and a sandbox built the
/// way `vd-cred get-token` builds it from its environment.
struct Helper {
    _dir: tempfile::TempDir,
    mock: MockBroker,
    env: HashMap<String, String>,
}

impl Helper {
    fn new() -> Helper {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("program.sock");
        let mock = MockBroker::start_unix(&socket).unwrap();
        let env = HashMap::from([
            (
                "VD_RUNTIME_ACCESS_SOCKET".to_string(),
                socket.to_str().unwrap().to_string(),
            ),
            // Present in the host's environment, but not passed in helper mode.
            (
                "VD_CREDENTIAL_FILE".to_string(),
                "/run/vd/credential".to_string(),
            ),
            (
                "VD_CREDENTIAL_BROKER_URL".to_string(),
                "http://127.0.0.1:1/api".to_string(),
            ),
        ]);
        Helper {
            _dir: dir,
            mock,
            env,
        }
    }

    /// `get-token` in a fresh sandbox built the way `vd-cred get-token` builds it.
    async fn get_token(&self, scopes: &[&str]) -> vd_cred_host::TokenResult {
        self.builder()
            .build()
            .await
            .unwrap()
            .get_token(scopes)
            .await
            .unwrap()
    }

    fn builder(&self) -> vd_cred_host::SandboxBuilder<'static> {
        let env = self.env.clone();
        sandbox_from_env(crate::host(), move |k| env.get(k).cloned()).unwrap()
    }
}

#[tokio::test]
async fn helper_mode_mints_over_the_socket_without_a_bearer() {
    let h = Helper::new();
    let builder = h.builder();
    assert!(
        builder.preopen().is_none(),
        "no directory is preopened in helper mode"
    );
    let vars: Vec<&str> = builder.env_vars().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        vars,
        ["VD_RUNTIME_ACCESS_URL"],
        "no bearer path or broker URL in the sandbox"
    );
    let mut s = builder.build().await.unwrap();
    let token = s.get_token(&[VAULT]).await.unwrap().unwrap();
    assert_eq!(token.token, "mock-token-1");
    let r = &h.mock.requests()[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/credentials")
    );
    assert_eq!(r.body, br#"{"scope":"data_platform","audience":"vault"}"#);
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("transfer-encoding"), None);
}

#[tokio::test]
async fn helper_mode_ignores_lane_and_revision() {
    let h = Helper::new();
    let mut s = h
        .builder()
        .env("VD_CREDENTIAL_LANE", "bogus")
        .build()
        .await
        .unwrap();
    s.get_token(&["https://storage.azure.com/.default"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        h.mock.requests()[0].body,
        br#"{"scope":"data_platform","audience":"storage"}"#
    );
}

#[tokio::test]
async fn helper_refusals_map_to_error_cases() {
    let h = Helper::new();
    let refusal = |status, code: &str| {
        Reply::json(
            status,
            format!(r#"{{"code":"{code}","message":"said no"}}"#),
        )
        .with_header("x-runtime-access-error", code)
    };
    h.mock.push(refusal(403, "intent_out_of_scope"));
    let err = h.get_token(&[VAULT]).await.unwrap_err();
    assert!(
        matches!(err, E::BrokerRejected { status: 403, ref detail } if detail.contains("intent_out_of_scope: said no")),
        "{err}"
    );
    h.mock.push(refusal(409, "configuration_stale"));
    let err = h.get_token(&[VAULT]).await.unwrap_err();
    assert!(
        matches!(err, E::BrokerFailed { status: 409, ref detail } if detail.contains("configuration_stale: said no")),
        "{err}"
    );
}

#[tokio::test]
async fn helper_answers_over_1_mib_are_refused() {
    let h = Helper::new();
    let big = format!(
        r#"{{"access_token":"t","pad":"{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    h.mock.push(Reply::json(200, big));
    let err = h.get_token(&[VAULT]).await.unwrap_err();
    assert!(
        matches!(err, E::InvalidResponse(ref m) if m.contains("larger than 1048576")),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_helper_socket_is_unavailable() {
    let h = Helper::new();
    let socket = h.mock.socket_path().unwrap().to_path_buf();
    // The socket existed when the sandbox was configured, then went away.
    let builder = h.builder();
    std::fs::remove_file(&socket).unwrap();
    let err = builder
        .build()
        .await
        .unwrap()
        .get_token(&[VAULT])
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, E::BrokerUnreachable(ref m) if m.contains("runtime access helper is unavailable")),
        "{err}"
    );
    // With no socket at all, get-token falls back to broker mode.
    let fallback = h.builder();
    assert!(
        fallback
            .env_vars()
            .iter()
            .any(|(k, _)| k == "VD_CREDENTIAL_FILE")
    );
}

#[tokio::test]
async fn in_helper_mode_the_sandbox_has_no_preopen_and_no_bearer_path() {
    let h = Helper::new();
    let mut probe = host_test::probe::build_probe(h.builder()).await.unwrap();
    assert!(probe.preopens().await.unwrap().is_empty());
    let env = probe.environment().await.unwrap();
    assert_eq!(
        env,
        [(
            "VD_RUNTIME_ACCESS_URL".to_string(),
            "http://runtime-access".to_string()
        )]
    );
    // The helper origin is the only one reachable, over the socket.
    assert_eq!(
        probe
            .http_get("http://runtime-access/v1/credentials")
            .await
            .unwrap(),
        Ok(200)
    );
    // Any other origin is refused by the host's policy (were it let through,
    // 127.0.0.1:1 would answer ConnectionRefused instead).
    for url in ["http://127.0.0.1:1/", "http://localhost/v1/credentials"] {
        assert_eq!(
            probe.http_get(url).await.unwrap(),
            Err("ErrorCode::HttpRequestDenied".to_string()),
            "{url}"
        );
    }
}

#[tokio::test]
async fn a_helper_url_must_not_send_the_token_back_in_clear() {
    for (url, ok) in [
        ("http://10.0.0.5:8080", false),
        ("http://helper.example.com", false),
        ("http://host.docker.internal:9", false),
        ("https://helper.example.com", true),
        ("http://127.0.0.1:9", true),
    ] {
        let mut sandbox = crate::host()
            .sandbox()
            .env("VD_RUNTIME_ACCESS_URL", url)
            .build()
            .await
            .unwrap();
        let mut o = crate::options();
        let refused = sandbox.open(&o).await.unwrap().err();
        match ok {
            true => assert_eq!(refused, None, "{url}"),
            false => assert_eq!(
                refused,
                Some(vd_cred_broker::CredentialError::Configuration(format!(
                    "the runtime-access helper URL {url:?} (VD_RUNTIME_ACCESS_URL or \
                     runtime-access-url) uses plain http to a non-local host, so the minted token \
                     would cross the network in clear text; use https, or set \
                     allow-insecure-http if the network is trusted; expected e.g. \
                     \"http://runtime-access\""
                ))),
                "{url}"
            ),
        }
        o.allow_insecure_http = true;
        assert!(sandbox.open(&o).await.unwrap().is_ok(), "{url}: opted in");
    }
}
