//! The host-linked credential, proven from inside a test agent: the agent
//! gets tokens for the audiences its policy allows, and never the bearer, the
//! broker, the helper or a wider setting.

use std::sync::{Arc, Mutex, OnceLock};

use host_test::agent::test_agent::{
    self, CredentialError as W, CredentialOptions, TestAgent, TokenRequestOptions,
};
use host_test::{MockBroker, Reply};
use vd_cred_broker::CredentialError as E;
use vd_cred_host::linked::{AgentPolicy, LinkedCredential, TokenSource};
use vd_cred_host::runner::{AgentBuilder, AgentState};
use wasmtime::component::InstancePre;

use crate::{Fixture, GUEST_FILE, VAULT};

const STORAGE: &str = "https://storage.azure.com/.default";

pub fn agent_pre() -> &'static InstancePre<AgentState> {
    static PRE: OnceLock<InstancePre<AgentState>> = OnceLock::new();
    PRE.get_or_init(|| test_agent::load(crate::host().engine()).unwrap())
}

/// (agent id, audience, expires-on, source) of every token handed out.
type Events = Arc<Mutex<Vec<(String, String, u64, TokenSource)>>>;

/// A test agent whose credential import is linked to `f`'s credential, under `policy`.
async fn agent(f: &Fixture, policy: AgentPolicy, builder: AgentBuilder) -> (TestAgent, Events) {
    let sandbox = f.sandbox().await;
    let events = Events::default();
    let seen = events.clone();
    let linked = LinkedCredential::new(sandbox, policy).on_token(move |e| {
        seen.lock().unwrap().push((
            e.agent_id.to_string(),
            e.audience.to_string(),
            e.expires_on,
            e.source,
        ))
    });
    let builder = builder.credential_broker(f.broker.url());
    let agent = crate::linked_agent(builder, linked).await;
    (agent, events)
}

/// A change an agent makes to its `open` options.
type Widen<'a> = Box<dyn Fn(&mut CredentialOptions) + 'a>;

fn options() -> CredentialOptions {
    test_agent::no_options()
}

#[tokio::test]
async fn an_agent_gets_tokens_for_allowed_audiences_only() {
    let f = Fixture::new();
    let policy = AgentPolicy::new("agent-1").allow(["vault"]);
    let (mut a, events) = agent(&f, policy, AgentBuilder::default()).await;
    let token = a.token(&options(), &[VAULT], 3).await.unwrap().unwrap();
    assert_eq!(token.token, "mock-token-1");
    let err = a
        .token(&options(), &[STORAGE], 1)
        .await
        .unwrap()
        .unwrap_err();
    let W::ScopeNotAllowed(refused) = err else {
        panic!("{err:?}")
    };
    assert_eq!(refused.scope, STORAGE);
    assert_eq!(refused.known_resources, ["https://vault.azure.net"]);
    // Allowed by resource too, and a scope with no resource at all.
    let policy = AgentPolicy::new("agent-2").allow(["https://storage.azure.com/"]);
    let (mut b, _) = agent(&f, policy, AgentBuilder::default()).await;
    assert!(b.token(&options(), &[STORAGE], 1).await.unwrap().is_ok());
    assert!(matches!(
        b.token(&options(), &["https://nope"], 1).await.unwrap(),
        Err(W::ScopeNotAllowed(_))
    ));
    let audiences: Vec<String> = f
        .broker
        .requests()
        .iter()
        .map(|r| String::from_utf8(r.body.clone()).unwrap())
        .collect();
    assert_eq!(
        audiences,
        [r#"{"audience":"vault"}"#, r#"{"audience":"storage"}"#],
        "refused scopes reach nothing"
    );
    // The audit saw one mint and two cached hand-outs, never the token.
    let expires = crate::T0 + 3600;
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events,
        [
            (
                "agent-1".into(),
                "vault".into(),
                expires,
                TokenSource::Minted
            ),
            (
                "agent-1".into(),
                "vault".into(),
                expires,
                TokenSource::Cached
            ),
            (
                "agent-1".into(),
                "vault".into(),
                expires,
                TokenSource::Cached
            ),
        ]
    );
}

#[tokio::test]
async fn the_credential_api_works_through_the_link() {
    let f = Fixture::new();
    let (mut a, events) = agent(&f, AgentPolicy::new("a"), AgentBuilder::default()).await;
    f.broker.push(Reply::json(
        200,
        r#"{"access_token":"t","expires_in":7200,"refresh_in":60}"#,
    ));
    let request = TokenRequestOptions {
        claims: None,
        tenant_id: Some("t".into()),
        enable_cae: true,
    };
    let info = a
        .token_info(&options(), &[VAULT], &request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            info.token.as_str(),
            info.token_type.as_str(),
            info.refresh_on
        ),
        ("t", "Bearer", Some(crate::T0 + 60))
    );
    let free = a.free_token(&[STORAGE]).await.unwrap().unwrap();
    assert_eq!(free.token, "mock-token-2");
    // Errors arrive as the same typed variant, and render through the link.
    f.broker.push(Reply::json(401, r#"{"error":"revoked"}"#));
    let err = a.free_token(&[VAULT]).await.unwrap().unwrap_err();
    let W::BrokerRejected(failure) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(failure.status, 401);
    assert_eq!(
        a.describe(&err).await.unwrap(),
        r#"the credential broker rejected the request (HTTP 401): the intent access token may be expired, revoked, or out of scope; start a new Studio intent session. Broker said: {"error":"revoked"}"#
    );
    let sources: Vec<TokenSource> = events.lock().unwrap().iter().map(|e| e.3).collect();
    assert_eq!(sources, [TokenSource::Minted, TokenSource::Minted]);
}

#[tokio::test]
async fn an_agent_cannot_widen_its_credential_through_open() {
    let f = Fixture::new();
    let other = MockBroker::start().unwrap();
    let (mut a, _) = agent(&f, AgentPolicy::new("a"), AgentBuilder::default()).await;
    let widened: [(&str, Widen); 7] = [
        ("broker-url", Box::new(|o| o.broker_url = Some(other.url()))),
        (
            "credential-file",
            Box::new(|o| o.credential_file = Some("/etc/passwd".into())),
        ),
        (
            "audience-map",
            Box::new(|o| o.audience_map = vec![("https://example.com".into(), "vault".into())]),
        ),
        (
            "allow-insecure-http",
            Box::new(|o| o.allow_insecure_http = true),
        ),
        ("lane", Box::new(|o| o.lane = Some("service".into()))),
        (
            "configuration-revision",
            Box::new(|o| o.configuration_revision = Some(1)),
        ),
        (
            "runtime-access-url",
            Box::new(|o| o.runtime_access_url = Some("http://runtime-access".into())),
        ),
    ];
    for (name, widen) in widened {
        let mut o = options();
        widen(&mut o);
        let err = a.token(&o, &[VAULT], 1).await.unwrap().unwrap_err();
        assert_eq!(
            E::from(err),
            E::Configuration(format!(
                "{name} set by the agent: the host decides the credential's settings; an agent \
                 may set only timeout-ms and disable-cache"
            ))
        );
    }
    assert_eq!(f.broker.request_count() + other.request_count(), 0);
    // What an agent may set: timeout-ms and disable-cache.
    let mut o = options();
    o.timeout_ms = Some(60_000);
    o.disable_cache = true;
    a.token(&o, &[VAULT], 2).await.unwrap().unwrap();
    assert_eq!(f.broker.request_count(), 2, "disable-cache: two mints");
}

/// From inside the agent: no bearer file under any path, no `VD_*`
/// variable, no HTTP to the broker or the helper, though the agent has a
/// workspace and reaches other origins.
#[tokio::test]
async fn the_agent_never_touches_the_bearer_the_broker_or_the_helper() {
    let f = Fixture::new();
    let workspace = tempfile::tempdir().unwrap();
    let elsewhere = MockBroker::start().unwrap();
    let builder = AgentBuilder::default()
        .dir(workspace.path(), "/workspace")
        .env("AGENT_NAME", "a")
        .egress(format!("http://{}", elsewhere.addr()));
    let (mut a, _) = agent(&f, AgentPolicy::new("a"), builder).await;
    assert!(a.token(&options(), &[VAULT], 1).await.unwrap().is_ok());
    let host_path = f.dir.path().join("credential");
    for path in [
        GUEST_FILE.to_string(),
        host_path.to_str().unwrap().to_string(),
        "/workspace/../run/vd/credential".to_string(),
        format!("/workspace/../{}", host_path.display()),
        "credential".to_string(),
    ] {
        let read = a.read_file(&path).await.unwrap();
        assert!(
            read.as_ref().is_err_and(|e| !e.contains(&f.bearer)),
            "{path}: {read:?}"
        );
    }
    std::fs::write(workspace.path().join("notes"), "mine").unwrap();
    assert_eq!(
        a.read_file("/workspace/notes").await.unwrap(),
        Ok("mine".into())
    );
    assert_eq!(
        a.environment().await.unwrap(),
        [("AGENT_NAME".to_string(), "a".to_string())]
    );
    for url in [
        format!("{}/token", f.broker.url()),
        "http://runtime-access/v1/credentials".to_string(),
    ] {
        assert_eq!(
            a.http_get(&url).await.unwrap(),
            Err("ErrorCode::HttpRequestDenied".to_string()),
            "{url}"
        );
    }
    assert_eq!(
        a.http_get(&format!("{}/anything", elsewhere.url()))
            .await
            .unwrap(),
        Ok(200),
        "an origin the runtime allowed"
    );
    assert_eq!(f.broker.request_count(), 1, "only the credential's mint");
}

#[tokio::test]
async fn helper_mode_through_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let helper = MockBroker::start_unix(dir.path().join("program.sock")).unwrap();
    let sandbox = crate::host()
        .sandbox()
        .runtime_access(helper.socket_path().unwrap())
        .build()
        .await
        .unwrap();
    let linked = LinkedCredential::new(sandbox, AgentPolicy::new("a").allow(["vault"]));
    let mut a = crate::linked_agent(AgentBuilder::default(), linked).await;
    let token = a.token(&options(), &[VAULT], 1).await.unwrap().unwrap();
    assert_eq!(token.token, "mock-token-1");
    assert_eq!(
        a.http_get("http://runtime-access/v1/credentials")
            .await
            .unwrap(),
        Err("ErrorCode::HttpRequestDenied".to_string())
    );
    assert_eq!(helper.request_count(), 1);
}
