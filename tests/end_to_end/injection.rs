//! Tokens an agent never holds: the host adds them to the agent's own
//! requests to Azure ([`vd_cred_host::inject`]).
//!
//! The Azure services are mocks over TLS with a throw-away CA, on loopback;
//! the Azure host names reach them through the agent's `connect_to` (the
//! host's resolver), never through DNS. The mocks record the bearer each
//! request carried.

use std::sync::{Arc, Mutex, OnceLock};

use host_test::agent::test_agent::{self, TestAgent};
use host_test::azure::{MockAzure, Scripted};
use host_test::tls::{TestCa, Validity};
use host_test::{MockBroker, Reply};
use vd_cred_broker::CredentialError;
use vd_cred_host::egress::Reason;
use vd_cred_host::inject::InjectOutcome;
use vd_cred_host::linked::{AgentLimits, AgentPolicy, LinkedCredential, TokenSource};
use vd_cred_host::runner::{AgentBuilder, AgentState};
use wasmtime::component::InstancePre;

use crate::Fixture;

const VAULT_HOST: &str = "myvault.vault.azure.net";
const BLOB_HOST: &str = "acct.blob.core.windows.net";
const ONELAKE_HOST: &str = "onelake.dfs.fabric.microsoft.com";

/// What the audit hook saw, without the token (it never has one).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    agent: String,
    audience: String,
    destination: String,
    source: Option<TokenSource>,
    minted: u32,
    outcome: InjectOutcome,
    removed: bool,
}

impl Seen {
    fn of(e: &vd_cred_host::inject::InjectEvent<'_>) -> Seen {
        Seen {
            agent: e.agent_id.to_string(),
            audience: e.audience.to_string(),
            destination: e.destination.to_string(),
            source: e.source,
            minted: e.minted,
            outcome: e.outcome,
            removed: e.removed_agent_authorization,
        }
    }
}

/// A broker minting `mock-<audience>-<n>`, a mock vault and storage over
/// TLS, and the CA the agent trusts for them.
struct Azure {
    f: Fixture,
    ca: TestCa,
    mock: MockAzure,
    events: Arc<Mutex<Vec<Seen>>>,
}

impl Azure {
    fn new() -> Azure {
        let broker = MockBroker::start().unwrap();
        broker.set_default(Reply::Named {
            delay: std::time::Duration::ZERO,
        });
        let f = Fixture::with_broker(broker);
        let ca = TestCa::new().unwrap();
        let config = ca
            .server_config(
                &["*.vault.azure.net", "*.blob.core.windows.net", ONELAKE_HOST],
                Validity::Current,
            )
            .unwrap();
        let mock = MockAzure::start_tls(config).unwrap();
        // Tokens are minted as mock-<audience>-<request number>.
        let mut accepted = Vec::new();
        for n in 0..64 {
            for audience in ["vault", "storage"] {
                accepted.push(format!("mock-{audience}-{n}"));
            }
        }
        mock.accept(accepted);
        Azure {
            f,
            ca,
            mock,
            events: Arc::default(),
        }
    }

    /// The agent's builder: the CA trusted, the Azure names sent to the mock.
    fn builder(&self) -> AgentBuilder {
        let roots = self.ca.roots();
        let port = self.mock.addr().port();
        let mut builder = AgentBuilder::default()
            .trust(roots)
            .credential_broker(self.f.broker.url());
        // A rule opens nothing: the agent may reach these three.
        for host in [VAULT_HOST, BLOB_HOST, ONELAKE_HOST] {
            builder = builder.connect_to(host, 443, self.mock.addr());
            builder = builder.connect_to(host, port, self.mock.addr());
            builder = builder.egress(format!("https://{host}"));
        }
        builder
    }

    /// A test agent with the default rules and `policy`.
    async fn agent(&self, policy: AgentPolicy) -> TestAgent {
        self.agent_with(policy, self.builder().inject_defaults())
            .await
    }

    async fn agent_with(&self, policy: AgentPolicy, builder: AgentBuilder) -> TestAgent {
        self.agent_in(self.f.sandbox().await, policy, builder).await
    }

    /// The agent linked to the credential in `sandbox`.
    async fn agent_in(
        &self,
        sandbox: vd_cred_host::Sandbox,
        policy: AgentPolicy,
        builder: AgentBuilder,
    ) -> TestAgent {
        let linked = LinkedCredential::new(sandbox, policy).budget_clock(self.f.clock.clone());
        crate::linked_agent(self.audited(builder), linked).await
    }

    /// `builder` with its injections recorded in [`Azure::events`].
    fn audited(&self, builder: AgentBuilder) -> AgentBuilder {
        let events = self.events.clone();
        builder.on_inject(move |e| events.lock().unwrap().push(Seen::of(e)))
    }

    fn events(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    /// The bearers the broker handed out, in order.
    fn minted(&self) -> Vec<String> {
        self.f
            .broker
            .requests()
            .iter()
            .map(|r| {
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                body["audience"].as_str().unwrap().to_string()
            })
            .collect()
    }
}

fn event(audience: &str, destination: &str, source: TokenSource, outcome: InjectOutcome) -> Seen {
    Seen {
        agent: "injected".into(),
        audience: audience.into(),
        destination: destination.into(),
        source: Some(source),
        minted: u32::from(source == TokenSource::Minted),
        outcome,
        removed: false,
    }
}

/// An event for a request to the vault.
fn vault_event(source: TokenSource, outcome: InjectOutcome) -> Seen {
    event("vault", &format!("{VAULT_HOST}:443"), source, outcome)
}

fn secret_url(name: &str) -> String {
    format!("https://{VAULT_HOST}/secrets/{name}?api-version=7.4")
}

/// `GET` the secret `db` from inside the agent: the answer.
async fn get(a: &mut TestAgent) -> host_test::agent::test_agent::HttpAnswer {
    a.http_request("GET", &secret_url("db"), &[], b"")
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn an_agent_reads_a_secret_and_a_blob_without_holding_a_token() {
    let az = Azure::new();
    let mut a = az.agent(AgentPolicy::new("injected")).await;
    for _ in 0..2 {
        let answer = a
            .http_request("GET", &secret_url("db"), &[], b"")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        let body = String::from_utf8(answer.body).unwrap();
        assert!(body.contains("secret-value-of-db"), "{body}");
    }
    let blob = a
        .http_request(
            "GET",
            &format!("https://{BLOB_HOST}/container/file.csv"),
            &[],
            b"",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(blob.status, 200);
    assert_eq!(blob.body, b"blob /container/file.csv");

    // One vault mint serves both secret reads; storage is another audience.
    assert_eq!(az.minted(), ["vault", "storage"]);
    let seen = az.mock.requests();
    assert_eq!(seen.len(), 3);
    let vault_bearer = seen[0].authorization.clone().unwrap();
    assert!(
        vault_bearer.starts_with("Bearer mock-vault-"),
        "{vault_bearer}"
    );
    assert_eq!(
        seen[1].authorization.as_deref(),
        Some(vault_bearer.as_str())
    );
    assert!(
        seen[2]
            .authorization
            .as_deref()
            .unwrap()
            .starts_with("Bearer mock-storage-"),
        "{:?}",
        seen[2].authorization
    );
    assert_eq!(seen[0].host.as_deref(), Some(VAULT_HOST));
    assert_eq!(
        az.events(),
        [
            vault_event(TokenSource::Minted, InjectOutcome::Sent),
            vault_event(TokenSource::Cached, InjectOutcome::Sent),
            event(
                "storage",
                &format!("{BLOB_HOST}:443"),
                TokenSource::Minted,
                InjectOutcome::Sent
            ),
        ]
    );
}

#[tokio::test]
async fn a_forged_authorization_is_replaced_by_the_real_one() {
    let az = Azure::new();
    let mut a = az.agent(AgentPolicy::new("injected")).await;
    let answer = a
        .http_request(
            "GET",
            &secret_url("db"),
            &[
                ("Authorization", "Bearer forged-by-the-agent"),
                ("authorization", "Basic c2Vjb25kOm9uZQ=="),
            ],
            b"",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, 200);
    // wasmtime refuses a Proxy-Authorization from a guest outright (the
    // host removes one too, should an embedder's header filter let it by).
    let proxy = a
        .http_request(
            "GET",
            &secret_url("db"),
            &[("Proxy-Authorization", "Basic Zm9v")],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(proxy.unwrap_err(), "headers: HeaderError::Forbidden");
    let seen = az.mock.requests();
    assert_eq!(seen.len(), 1);
    let bearer = seen[0].authorization.as_deref().unwrap();
    assert!(bearer.starts_with("Bearer mock-vault-"), "{bearer}");
    let events = az.events();
    assert_eq!(events.len(), 1);
    assert!(
        events[0].removed,
        "the audit says the agent's header was removed"
    );
}

#[tokio::test]
async fn a_put_with_a_body_is_sent_whole_and_again_after_a_challenge_to_its_cached_token() {
    let az = Azure::new();
    let mut a = az.agent(AgentPolicy::new("injected")).await;
    assert_eq!(get(&mut a).await.status, 200);
    // The next answer is a challenge: the cached token may be revoked.
    az.mock.push(Scripted::Challenge(
        host_test::azure::VAULT_CHALLENGE.into(),
    ));
    let body = br#"{"value":"s3cret"}"#;
    let answer = a
        .http_request(
            "PUT",
            &secret_url("db"),
            &[("Content-Type", "application/json")],
            body,
        )
        .await
        .unwrap()
        .unwrap();
    assert_ne!(answer.status, 401);
    let seen = az.mock.requests();
    assert_eq!(
        seen.len(),
        3,
        "the GET; the PUT, and once more after the challenge"
    );
    assert_eq!(seen[1].method, "PUT");
    assert_eq!(seen[1].body, body);
    assert_eq!(seen[2].body, body);
    assert_eq!(
        seen[0].authorization, seen[1].authorization,
        "the cached token"
    );
    assert_ne!(
        seen[1].authorization, seen[2].authorization,
        "a fresh token"
    );
    assert_eq!(az.minted(), ["vault", "vault"]);
    assert_eq!(
        az.events()[1],
        vault_event(TokenSource::Minted, InjectOutcome::ChallengeAnswered)
    );
}

#[tokio::test]
async fn a_revoked_token_is_replaced_once_and_only_once() {
    let az = Azure::new();
    let mut a = az.agent(AgentPolicy::new("injected")).await;
    assert_eq!(get(&mut a).await.status, 200);
    let first = az.mock.requests()[0].authorization.clone().unwrap();
    az.mock.revoke(first.strip_prefix("Bearer ").unwrap());

    // The cached token is refused with Key Vault's challenge: a fresh one.
    assert_eq!(get(&mut a).await.status, 200);
    let seen = az.mock.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].authorization.as_deref(), Some(first.as_str()));
    assert_ne!(seen[2].authorization.as_deref(), Some(first.as_str()));
    // And the fresh one is cached for the next request.
    assert_eq!(get(&mut a).await.status, 200);
    assert_eq!(az.mock.requests()[3].authorization, seen[2].authorization);
    assert_eq!(az.minted(), ["vault", "vault"]);

    // Every token refused: the agent gets the 401 after one more try.
    az.mock.accept(Vec::new());
    let refused = get(&mut a).await;
    assert_eq!(refused.status, 401);
    assert_eq!(az.mock.requests().len(), 6, "two requests, no loop");
    let outcomes: Vec<InjectOutcome> = az.events().iter().map(|e| e.outcome).collect();
    assert_eq!(
        outcomes,
        [
            InjectOutcome::Sent,
            InjectOutcome::ChallengeAnswered,
            InjectOutcome::Sent,
            InjectOutcome::ChallengeAnswered,
        ]
    );
}

#[tokio::test]
async fn claims_challenges_and_challenges_for_other_resources_reach_the_agent() {
    let az = Azure::new();
    let mut a = az.agent(AgentPolicy::new("injected")).await;
    let claims = "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", error=\"insufficient_claims\", claims=\"eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZX19fQ==\"";
    az.mock.push(Scripted::Challenge(claims.into()));
    let answer = a
        .http_request("GET", &secret_url("db"), &[], b"")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, 401);
    let header = answer
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
        .map(|(_, v)| v.clone());
    assert_eq!(
        header.as_deref(),
        Some(claims),
        "the agent sees the challenge"
    );

    // A challenge naming another resource: no token for it is minted.
    az.mock.push(Scripted::Challenge(
        "Bearer authorization=\"https://login.microsoftonline.com/t\", resource=\"https://management.azure.com\"".into(),
    ));
    let answer = a
        .http_request("GET", &secret_url("db"), &[], b"")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, 401);
    assert_eq!(az.minted(), ["vault"], "no mint for either challenge");
    assert_eq!(az.mock.requests().len(), 2);
    let outcomes: Vec<InjectOutcome> = az.events().iter().map(|e| e.outcome).collect();
    assert_eq!(
        outcomes,
        [InjectOutcome::ClaimsChallenge, InjectOutcome::OtherResource]
    );
}

#[tokio::test]
async fn a_redirect_reaches_the_agent_and_its_new_origin_gets_no_token() {
    let az = Azure::new();
    // Another https origin the agent may reach, which no rule names.
    let elsewhere = MockAzure::start_tls(
        az.ca
            .server_config(&["landing.example"], Validity::Current)
            .unwrap(),
    )
    .unwrap();
    let landing = "https://landing.example/landing".to_string();
    let builder = az
        .builder()
        .inject_defaults()
        .egress("https://landing.example")
        .connect_to("landing.example", 443, elsewhere.addr());
    let mut a = az.agent_with(AgentPolicy::new("injected"), builder).await;
    az.mock.push(Scripted::Redirect(landing.clone(), 302));
    let answer = a
        .http_request("GET", &secret_url("db"), &[], b"")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, 302, "the host follows no redirect");
    let location = answer
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.clone());
    assert_eq!(location.as_deref(), Some(landing.as_str()));
    // The agent follows it itself: a request like any other.
    let followed = a
        .http_request("GET", &landing, &[], b"")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(followed.status, 401, "the mock wants a token it never gets");
    let there = elsewhere.requests();
    assert_eq!(there.len(), 1);
    assert_eq!(there[0].authorization, None, "no token off the vault");
    assert_eq!(az.events().len(), 1, "one injection: the vault request");
}

#[tokio::test]
async fn plain_http_is_never_injected() {
    let az = Azure::new();
    let plain = MockAzure::start_plain().unwrap();
    let port = plain.addr().port();
    // The agent may reach the vault's name over plain http (a policy that
    // allows it), and the rule names that port: still no token.
    let builder = az
        .builder()
        .inject(format!("*.vault.azure.net:{port}=vault"))
        .inject_defaults()
        .egress(format!("http://{VAULT_HOST}:{port}"))
        .connect_to(VAULT_HOST, port, plain.addr());
    let mut a = az.agent_with(AgentPolicy::new("injected"), builder).await;
    let answer = a
        .http_request(
            "GET",
            &format!("http://{VAULT_HOST}:{port}/secrets/db?api-version=7.4"),
            &[("Authorization", "Bearer the-agents-own")],
            b"",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, 401, "the mock vault wants a token");
    let seen = plain.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Bearer the-agents-own"),
        "not an injected request: the agent's own header, untouched"
    );
    assert!(az.minted().is_empty());
    assert!(az.events().is_empty());
}

#[tokio::test]
async fn a_rule_opens_nothing_and_injects_only_ordinary_methods() {
    let az = Azure::new();
    let mut a = az.agent(AgentPolicy::new("injected")).await;
    // A rule's destination the agent was not allowed, and hosts no rule
    // names: refused before anything is resolved or minted.
    for url in [
        "https://othervault.vault.azure.net/secrets/db",
        "https://vault.azure.net/secrets/db",
        "https://a.b.vault.azure.net/secrets/db",
        "https://myvault.vault.azure.net.evil.example/secrets/db",
        "http://myvault.vault.azure.net/secrets/db",
    ] {
        let got = a.http_request("GET", url, &[], b"").await.unwrap();
        assert_eq!(got.unwrap_err(), "ErrorCode::HttpRequestDenied", "{url}");
    }
    // TRACE would echo the token back: refused, as is an unknown method.
    for method in ["TRACE", "FOO"] {
        let got = a
            .http_request(method, &secret_url("db"), &[], b"")
            .await
            .unwrap();
        assert_eq!(got.unwrap_err(), "ErrorCode::HttpRequestDenied", "{method}");
    }
    let refusals = a.store.data().egress().refusals().recent();
    let reasons: Vec<Reason> = refusals.iter().map(|r| r.reason).collect();
    assert_eq!(reasons[..5], [Reason::NotAllowed; 5]);
    assert_eq!(reasons[5..], [Reason::MethodNotInjected; 2]);
    assert!(az.mock.requests().is_empty());
    assert!(az.minted().is_empty());
}

#[tokio::test]
async fn the_host_header_is_the_name_as_checked_not_as_spelled() {
    let az = Azure::new();
    let mut a = az.agent(AgentPolicy::new("injected")).await;
    for url in [
        "https://MYVAULT.Vault.Azure.NET./secrets/db",
        "https://myvault.vault.azure.net:0443/secrets/db",
        "https://evil.example:1@myvault.vault.azure.net/secrets/db",
    ] {
        let answer = a.http_request("GET", url, &[], b"").await.unwrap().unwrap();
        assert_eq!(answer.status, 200, "{url}");
    }
    let seen = az.mock.requests();
    assert_eq!(seen.len(), 3);
    for seen in seen {
        assert_eq!(seen.host.as_deref(), Some(VAULT_HOST));
        assert!(
            seen.authorization
                .unwrap()
                .starts_with("Bearer mock-vault-")
        );
    }
}

#[tokio::test]
async fn a_challenge_for_one_audience_keeps_the_others_cached_token() {
    let az = Azure::new();
    let mut a = az.agent(AgentPolicy::new("injected")).await;
    let blob = format!("https://{BLOB_HOST}/c/b");
    let answer = a
        .http_request("GET", &blob, &[], b"")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(get(&mut a).await.status, 200);
    let vault_token = az.mock.requests()[1].authorization.clone().unwrap();
    az.mock.revoke(vault_token.strip_prefix("Bearer ").unwrap());
    assert_eq!(get(&mut a).await.status, 200);
    let answer = a
        .http_request("GET", &blob, &[], b"")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        az.minted(),
        ["storage", "vault", "vault"],
        "storage stays cached"
    );
}

#[tokio::test]
async fn a_request_that_cannot_be_sent_is_audited_with_the_token_it_cost() {
    let az = Azure::new();
    // A vault name mapped to a loopback port nothing listens on, held for
    // the whole test (connecting is refused every time).
    let closed = host_test::ClosedPort::new().unwrap();
    let builder = az
        .builder()
        .inject_defaults()
        .egress("https://gone.vault.azure.net")
        .connect_to("gone.vault.azure.net", 443, closed.addr());
    let mut a = az.agent_with(AgentPolicy::new("injected"), builder).await;
    let got = a
        .http_request("GET", "https://gone.vault.azure.net/secrets/db", &[], b"")
        .await
        .unwrap();
    // Refused by the port held closed, as the agent's wasi:http error says.
    assert!(
        matches!(&got, Err(e) if e == "ErrorCode::ConnectionRefused"),
        "{got:?}"
    );
    assert_eq!(az.minted(), ["vault"]);
    assert_eq!(
        az.events(),
        [event(
            "vault",
            "gone.vault.azure.net:443",
            TokenSource::Minted,
            InjectOutcome::SendFailed
        )]
    );
}

#[tokio::test]
async fn the_agents_policy_decides_which_audiences_are_injected() {
    let az = Azure::new();
    let mut a = az
        .agent(AgentPolicy::new("injected").allow(["storage"]))
        .await;
    let got = a
        .http_request("GET", &secret_url("db"), &[], b"")
        .await
        .unwrap();
    let error = got.unwrap_err();
    assert!(error.contains("could not add a vault token"), "{error}");
    assert!(
        error.contains("https://vault.azure.net/.default"),
        "{error}"
    );
    assert!(
        az.mock.requests().is_empty(),
        "nothing sent without a token"
    );
    assert!(az.minted().is_empty());
    assert_eq!(
        az.events(),
        [Seen {
            source: None,
            ..vault_event(TokenSource::Cached, InjectOutcome::NoToken)
        }]
    );
    let blob = a
        .http_request(
            "GET",
            &format!("https://{ONELAKE_HOST}/ws/lh/Files/x"),
            &[],
            b"",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(blob.status, 200);
}

#[tokio::test]
async fn with_token_calls_off_the_agent_uses_azure_and_cannot_read_a_token() {
    let az = Azure::new();
    let policy = AgentPolicy::new("injected").reveal_tokens(false);
    let mut a = az.agent(policy).await;
    let answer = a
        .http_request("GET", &secret_url("db"), &[], b"")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, 200);

    let vault = ["https://vault.azure.net/.default"];
    let options = test_agent::no_options();
    let no_request = test_agent::TokenRequestOptions {
        claims: None,
        tenant_id: None,
        enable_cae: false,
    };
    let refusals = [
        a.token(&options, &vault, 1).await.unwrap().map(|t| t.token),
        a.free_token(&vault).await.unwrap().map(|t| t.token),
        a.token_info(&options, &vault, &no_request)
            .await
            .unwrap()
            .map(|t| t.token),
    ];
    for refusal in refusals {
        match refusal.map_err(CredentialError::from) {
            Err(CredentialError::Unsupported(why)) => {
                assert!(why.contains("may not read tokens"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }
    let (tokens, errors, _) = a.mint_loop(&options, &vault, 3, false).await.unwrap();
    assert_eq!((tokens, errors), (0, 3));
    assert_eq!(az.minted(), ["vault"], "the refused calls minted nothing");
}

#[tokio::test]
async fn an_endpoint_that_always_challenges_costs_at_most_the_mint_budget() {
    let az = Azure::new();
    az.mock.accept(Vec::new());
    let limits = AgentLimits {
        mints_per_minute: 3,
        ..AgentLimits::default()
    };
    let mut a = az.agent(AgentPolicy::new("injected").limits(limits)).await;
    let mut answers = Vec::new();
    for _ in 0..10 {
        let got = a
            .http_request("GET", &secret_url("db"), &[], b"")
            .await
            .unwrap();
        answers.push(got.map(|answer| answer.status));
    }
    // The host's clock does not move: three mints, whatever the agent does.
    // A minted token refused is not replaced; a cached one is, once, while
    // the budget lasts; then the cached token is kept and sent.
    assert_eq!(az.minted(), ["vault", "vault", "vault"]);
    assert_eq!(az.mock.requests().len(), 1 + 2 + 2 + 7);
    assert!(answers.iter().all(|a| *a == Ok(401)), "{answers:?}");
    let events = az.events();
    let outcomes: Vec<InjectOutcome> = events.iter().map(|e| e.outcome).collect();
    let mut expected = vec![
        InjectOutcome::FreshTokenRefused,
        InjectOutcome::ChallengeAnswered,
        InjectOutcome::ChallengeAnswered,
    ];
    expected.extend([InjectOutcome::ChallengeUnanswered; 7]);
    assert_eq!(outcomes, expected);
    let mints: u32 = events.iter().map(|e| e.minted).sum();
    assert_eq!(mints, 3, "the audit adds up to what the broker saw");
}

/// The JavaScript agent (`examples/js-agent`), compiled once per process.
fn js_pre() -> &'static InstancePre<AgentState> {
    static PRE: OnceLock<InstancePre<AgentState>> = OnceLock::new();
    PRE.get_or_init(|| host_test::js_agent::load(crate::host().engine()).unwrap())
}

#[tokio::test]
async fn a_javascript_agent_reads_a_secret_with_its_plain_fetch_and_no_credential_code() {
    let az = Azure::new();
    let policy = AgentPolicy::new("injected").reveal_tokens(false);
    let linked = LinkedCredential::new(az.f.sandbox().await, policy);
    let builder = az.audited(az.builder().inject_defaults());
    let mut js =
        host_test::js_agent::JsAgent::new(builder, crate::host().engine(), js_pre(), linked)
            .await
            .unwrap();
    let vault = format!("https://{VAULT_HOST}");
    for _ in 0..2 {
        let value = js.read_secret(&vault, "db").await.unwrap();
        assert_eq!(value.as_deref(), Ok("secret-value-of-db"));
    }
    let seen = az.mock.requests();
    assert_eq!(seen.len(), 2);
    let bearer = seen[0].authorization.as_deref().unwrap();
    assert!(bearer.starts_with("Bearer mock-vault-"), "{bearer}");
    assert_eq!(seen[1].authorization.as_deref(), Some(bearer));
    assert_eq!(az.minted(), ["vault"]);
    assert_eq!(
        az.events(),
        [
            vault_event(TokenSource::Minted, InjectOutcome::Sent),
            vault_event(TokenSource::Cached, InjectOutcome::Sent),
        ]
    );
    // A secret that is not there: the vault's own 404, as JavaScript sees it.
    az.mock.push(Scripted::Status(
        404,
        r#"{"error":{"code":"SecretNotFound"}}"#.into(),
    ));
    let missing = js.read_secret(&vault, "missing").await.unwrap();
    assert!(
        missing.unwrap_err().starts_with("404 "),
        "the vault's answer"
    );
    // A redirect off the vault reaches the agent as the 302 it is.
    az.mock
        .push(Scripted::Redirect("https://elsewhere.example/".into(), 302));
    let status = js
        .fetch_status(&format!("{vault}/secrets/db"))
        .await
        .unwrap();
    assert_eq!(status, Ok(302));
    // Anything not a rule's host is refused, with the agent's fetch error.
    let before = js
        .store
        .data()
        .egress()
        .refusals()
        .count(Reason::NotAllowed);
    let refused = js.fetch_status("https://elsewhere.example/").await.unwrap();
    assert!(refused.is_err(), "{refused:?}");
    // The host refused it as off the allowlist (the agent's fetch error is
    // StarlingMonkey's text, which does not carry the kind).
    let record = js.store.data().egress().refusals();
    assert_eq!(record.count(Reason::NotAllowed), before + 1);
    let last = record.recent().last().cloned().expect("a refusal");
    assert_eq!(
        (last.target.as_str(), last.reason),
        ("https://elsewhere.example", Reason::NotAllowed)
    );
}

#[tokio::test]
async fn a_credential_that_traps_while_injecting_is_replaced_for_the_next_request() {
    let az = Azure::new();
    let ceiling = crate::hostile_agent::smallest_ceiling(&az.f).await;
    let sandbox = az.f.builder().memory_limit(ceiling).build().await.unwrap();
    let mut a = az
        .agent_in(
            sandbox,
            AgentPolicy::new("injected"),
            az.builder().inject_defaults(),
        )
        .await;
    // An answer of almost 1 MiB: more than the credential's memory allows.
    az.f.broker.push(crate::hostile_agent::big_answer());
    let got = a
        .http_request("GET", &secret_url("db"), &[], b"")
        .await
        .unwrap();
    let error = got.unwrap_err();
    assert!(error.contains("stopped inside the host"), "{error}");
    assert!(
        az.mock.requests().is_empty(),
        "nothing sent without a token"
    );
    // The next request: a fresh instance, the host's credential opened in it.
    assert_eq!(get(&mut a).await.status, 200);
    assert_eq!(
        a.store.data().linked.sandbox().await.unwrap().generation(),
        1
    );
    let outcomes: Vec<InjectOutcome> = az.events().iter().map(|e| e.outcome).collect();
    assert_eq!(outcomes, [InjectOutcome::NoToken, InjectOutcome::Sent]);
}

/// An agent that gives up on its injected request while the token for it
/// is being minted (the broker holds the mint), again and again: the mint
/// finishes, is cached, charged and audited; the abandoned request is not
/// sent; the credential never traps; and the agent's next request goes out
/// with its token, from the cache.
#[tokio::test]
async fn an_agent_abandoning_its_requests_mid_mint_causes_no_trap_no_tokenless_request_and_no_unaudited_mint()
 {
    let az = Azure::new();
    // The agent gives up once the broker has the mint: its `GET` to the
    // gate is answered when the broker receives a request.
    let gate = host_test::sink::Gate::start().unwrap();
    let opener = gate.opener();
    az.f.broker.on_request(move |_, _| opener.let_one_through());
    let builder = az.builder().inject_defaults().egress(gate.url());
    let mut a = az.agent_with(AgentPolicy::new("injected"), builder).await;
    const ROUNDS: usize = 5;
    for round in 1..=ROUNDS {
        // The cached token has expired (the sandbox's clock): a mint.
        az.f.clock.advance(std::time::Duration::from_secs(3600));
        let held = az.f.broker.hold(round);
        let synced = a
            .abandon(&secret_url("db"), &format!("{}/sync", gate.url()))
            .await
            .unwrap();
        assert_eq!(synced, Ok(200), "round {round}");
        assert_eq!(
            az.f.broker.request_count(),
            round,
            "the mint is at the broker"
        );
        held.release();
        // The next request waits for that mint, and is sent with its token.
        let answer = get(&mut a).await;
        assert_eq!(answer.status, 200, "round {round}");
    }
    let linked = &a.store.data().linked;
    assert_eq!(linked.sandbox().await.unwrap().generation(), 0, "no trap");
    assert_eq!(az.f.broker.request_count(), ROUNDS, "one mint a round");
    // Each abandoned request is audited with its mint, and was not sent;
    // each next one went out with the token minted for it.
    let events = az.events();
    let mut expected = Vec::new();
    for _ in 0..ROUNDS {
        expected.push(vault_event(TokenSource::Minted, InjectOutcome::Abandoned));
        expected.push(vault_event(TokenSource::Cached, InjectOutcome::Sent));
    }
    assert_eq!(events, expected);
    let minted: u32 = events.iter().map(|e| e.minted).sum();
    assert_eq!(minted as usize, az.f.broker.request_count());
    let seen = az.mock.requests();
    assert_eq!(seen.len(), ROUNDS, "only the requests not abandoned");
    for (round, request) in seen.iter().enumerate() {
        assert_eq!(
            request.authorization.as_deref(),
            Some(format!("Bearer mock-vault-{}", round + 1).as_str())
        );
    }
}
