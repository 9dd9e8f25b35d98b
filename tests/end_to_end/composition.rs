//! The Key Vault example composed with the credential (as `wac plug` does):
//! one component whose only imports are WASI, run against the mock broker
//! and a mock Key Vault that accepts only the token the broker minted.

use std::sync::OnceLock;

use host_test::keyvault::{self, KeyVaultReader};
use host_test::{MockBroker, Reply};
use vd_cred_host::State;
use wasmtime::component::{Component, InstancePre};

use crate::Fixture;

fn composed() -> &'static (Component, InstancePre<State>) {
    static COMPOSED: OnceLock<(Component, InstancePre<State>)> = OnceLock::new();
    COMPOSED.get_or_init(|| keyvault::load(crate::host()).unwrap())
}

#[test]
fn the_composed_component_imports_only_wasi() {
    let (component, _) = composed();
    let engine = crate::host().engine();
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    assert!(!imports.is_empty());
    for name in &imports {
        assert!(name.starts_with("wasi:"), "non-WASI import {name}");
    }
    assert!(
        imports.iter().any(|n| n.starts_with("wasi:filesystem/")),
        "{imports:?}"
    );
    assert!(
        imports
            .iter()
            .any(|n| n.starts_with("wasi:http/outgoing-handler")),
        "{imports:?}"
    );
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(exports, ["vibedata:keyvault-reader/reader@0.1.0"]);
}

#[tokio::test]
async fn reads_a_secret_with_the_minted_token() {
    let f = Fixture::new();
    let vault = MockBroker::start().unwrap();
    let vault_url = format!("http://{}", vault.addr());
    vault.set_default(Reply::Authorized {
        bearer: "mock-token-1".into(),
        then: Box::new(Reply::json(
            200,
            r#"{"value":"p@ssw0rd","id":"https://vault/secrets/db-password/1"}"#,
        )),
    });
    let mut reader = KeyVaultReader::instantiate(f.builder().also_allow(&vault_url), &composed().1)
        .await
        .unwrap();

    let secret = reader.read_secret(&vault_url, "db-password").await.unwrap();
    assert_eq!(secret, Ok("p@ssw0rd".to_string()));
    assert_eq!(f.broker.requests()[0].body, br#"{"audience":"vault"}"#);
    let r = &vault.requests()[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("GET", "/secrets/db-password?api-version=7.4")
    );
    assert_eq!(r.header("authorization"), Some("Bearer mock-token-1"));

    // A token the vault does not accept is its 401, reported as such.
    f.broker.push(Reply::token("some-other-token", 3600));
    let err = reader
        .read_secret(&vault_url, "db-password")
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.contains("HTTP 401"), "{err}");
}

#[tokio::test]
async fn credential_errors_reach_the_consumer_as_sentences() {
    let f = Fixture::new();
    f.broker.push(Reply::json(
        403,
        r#"{"error":"intent has no Key Vault grant"}"#,
    ));
    let vault = MockBroker::start().unwrap();
    let vault_url = format!("http://{}", vault.addr());
    let mut reader = KeyVaultReader::instantiate(f.builder().also_allow(&vault_url), &composed().1)
        .await
        .unwrap();
    let err = reader
        .read_secret(&vault_url, "x")
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.contains("HTTP 403") && err.contains("no Key Vault grant"),
        "{err}"
    );
    assert!(!err.contains(&f.bearer));
    assert_eq!(vault.request_count(), 0);
}
