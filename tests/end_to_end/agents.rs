//! Rust agents built on the guest crate (`vd-cred-guest`): the wstd example
//! agent (`examples/wstd-agent`) gets a Key Vault token through the crate and
//! reads a secret with wstd's HTTP client, run as `vd-cred run-agent` runs
//! an agent (its credential import linked by the host, the call WAVE-encoded).
//!
//! Key Vault is the TLS mock with a throw-away CA on loopback; the vault's
//! name reaches it through the agent's `connect_to`, never through DNS.

use std::sync::OnceLock;

use host_test::agent::wstd_agent::WSTD_AGENT_WASM;
use host_test::azure::MockAzure;
use host_test::tls::{TestCa, Validity};
use host_test::{MockBroker, Reply};
use vd_cred_broker::CredentialError;
use vd_cred_host::linked::{AgentPolicy, LinkedCredential};
use vd_cred_host::runner::{self, AgentBuilder, AgentState};
use wasmtime::component::{Component, InstancePre, Val};

use crate::{Fixture, VAULT, rand_u64};

const VAULT_HOST: &str = "myvault.vault.azure.net";
const READ_DB: &str = r#"read-secret("https://myvault.vault.azure.net", "db")"#;

/// The wstd agent, compiled (or loaded precompiled) and linked, as
/// `run-agent` loads an agent.
fn wstd_agent() -> &'static (Component, InstancePre<AgentState>) {
    static AGENT: OnceLock<(Component, InstancePre<AgentState>)> = OnceLock::new();
    AGENT.get_or_init(|| {
        let engine = crate::host().engine();
        let (component, _) =
            vd_cred_host::precompiled::load(engine, std::path::Path::new(WSTD_AGENT_WASM)).unwrap();
        let pre = runner::link(engine, &component).unwrap();
        (component, pre)
    })
}

/// A mock broker that mints one token, and the mock vault accepting it.
struct Vault {
    f: Fixture,
    ca: TestCa,
    mock: MockAzure,
    token: String,
}

impl Vault {
    fn new() -> Vault {
        let token = format!("mock-wstd-{:016x}", rand_u64());
        let broker = MockBroker::start().unwrap();
        broker.push(Reply::json(
            200,
            format!(r#"{{"access_token":"{token}","expires_in":3600,"token_type":"Bearer"}}"#),
        ));
        let ca = TestCa::new().unwrap();
        let config = ca
            .server_config(&["*.vault.azure.net"], Validity::Current)
            .unwrap();
        let mock = MockAzure::start_tls(config).unwrap();
        mock.accept(vec![token.clone()]);
        Vault {
            f: Fixture::with_broker(broker),
            ca,
            mock,
            token,
        }
    }

    /// Run the agent with `policy` and invoke `call`: its results.
    async fn run(&self, policy: AgentPolicy, call: &str) -> Vec<Val> {
        let roots = self.ca.roots();
        let builder = AgentBuilder::default()
            .trust(roots)
            .credential_broker(self.f.broker.url())
            .egress(format!("https://{VAULT_HOST}"))
            .connect_to(VAULT_HOST, 443, self.mock.addr());
        let linked = LinkedCredential::new(self.f.sandbox().await, policy);
        let (component, pre) = wstd_agent();
        let engine = crate::host().engine();
        let (mut store, instance) = builder.instantiate(engine, pre, linked).await.unwrap();
        vd_cred_cli::invoke(component, &instance, &mut store, call)
            .await
            .unwrap()
    }
}

/// `result<string, string>` as a Rust result.
fn string_result(results: &[Val]) -> Result<String, String> {
    let [Val::Result(result)] = results else {
        panic!("not one result: {results:?}");
    };
    let text = |v: &Option<Box<Val>>| match v.as_deref() {
        Some(Val::String(s)) => s.clone(),
        other => panic!("not a string: {other:?}"),
    };
    match result {
        Ok(v) => Ok(text(v)),
        Err(v) => Err(text(v)),
    }
}

#[tokio::test]
async fn the_wstd_agent_reads_a_secret_with_the_token_the_broker_minted() {
    let v = Vault::new();
    let results = v.run(AgentPolicy::new("wstd-agent"), READ_DB).await;
    assert_eq!(string_result(&results), Ok("secret-value-of-db".into()));

    let seen = v.mock.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/secrets/db?api-version=7.4");
    assert_eq!(seen[0].host.as_deref(), Some(VAULT_HOST));
    let bearer = format!("Bearer {}", v.token);
    assert_eq!(seen[0].authorization.as_deref(), Some(bearer.as_str()));

    let minted = v.f.broker.requests();
    assert_eq!(minted.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&minted[0].body).unwrap();
    assert_eq!(body["audience"], "vault");
}

#[tokio::test]
async fn a_scope_the_policy_refuses_is_scope_not_allowed_in_the_credentials_words() {
    let v = Vault::new();
    let policy = AgentPolicy::new("wstd-agent").allow(["https://storage.azure.com"]);
    let results = v.run(policy, READ_DB).await;
    // The agent returns the guest crate's `Error::ScopeNotAllowed` as its
    // `Display`: the credential's own sentence for that case.
    let expected = CredentialError::ScopeNotAllowed {
        scope: VAULT.into(),
        known_resources: vec!["https://storage.azure.com".into()],
    }
    .to_string();
    assert_eq!(string_result(&results), Err(expected));
    assert!(v.f.broker.requests().is_empty());
    assert!(v.mock.requests().is_empty());
}

#[tokio::test]
async fn a_token_the_vault_refuses_is_an_error_naming_its_status() {
    let v = Vault::new();
    v.mock.revoke(&v.token);
    let results = v.run(AgentPolicy::new("wstd-agent"), READ_DB).await;
    let err = string_result(&results).unwrap_err();
    assert!(err.contains("401"), "{err}");
    assert!(err.contains("\"db\""), "{err}");
    assert!(!err.contains(&v.token), "{err}");
    assert_eq!(v.mock.requests().len(), 1);
}
