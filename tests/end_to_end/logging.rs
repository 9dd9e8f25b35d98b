//! The host's `tracing` spans and events ([`vd_cred_host::trace`]): one span
//! per credential call with its audience, attempts, statuses, outcome and
//! source, a DEBUG event per request, WARN on failure; the linked route's
//! and the injection's events carry the agent's id. No token, bearer, query
//! string or header is ever in them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use host_test::agent::test_agent::{self, TestAgent};
use host_test::azure::MockAzure;
use host_test::tls::{TestCa, Validity};
use host_test::{MockBroker, Reply};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::{DefaultGuard, Interest};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use vd_cred_host::linked::{AgentPolicy, LinkedCredential};
use vd_cred_host::runner::AgentBuilder;

use crate::{Fixture, VAULT, options};

/// One span as it ended up: its name, level, parent's name and fields.
#[derive(Debug, Clone)]
struct SpanRec {
    name: &'static str,
    level: Level,
    parent: Option<&'static str>,
    fields: BTreeMap<String, String>,
}

/// One event: its level, message, fields and the spans it was in (root first).
#[derive(Debug, Clone)]
struct EventRec {
    level: Level,
    message: String,
    fields: BTreeMap<String, String>,
    spans: Vec<&'static str>,
}

#[derive(Default)]
struct Log {
    spans: Vec<SpanRec>,
    open: HashMap<Id, usize>,
    events: Vec<EventRec>,
}

/// A layer recording this crate's spans and events (target `vd_cred*`).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Log>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
}

fn ours(metadata: &Metadata<'_>) -> bool {
    metadata.target().starts_with("vd_cred")
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        match ours(metadata) {
            true => Interest::always(),
            false => Interest::never(),
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        ours(metadata)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx.span(id).and_then(|s| s.parent()).map(|p| p.name());
        let mut log = self.0.lock().unwrap();
        log.spans.push(SpanRec {
            name: attrs.metadata().name(),
            level: *attrs.metadata().level(),
            parent,
            fields,
        });
        let index = log.spans.len() - 1;
        log.open.insert(id.clone(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut log = self.0.lock().unwrap();
        if let Some(&index) = log.open.get(id) {
            values.record(&mut Fields(&mut log.spans[index].fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        let spans = ctx
            .event_scope(event)
            .map(|scope| scope.from_root().map(|s| s.name()).collect())
            .unwrap_or_default();
        self.0.lock().unwrap().events.push(EventRec {
            level: *event.metadata().level(),
            message,
            fields,
            spans,
        });
    }
}

/// What `tracing_subscriber`'s fmt layer printed.
#[derive(Clone, Default)]
struct Printed(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Printed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// This thread's spans and events, captured (and printed by the fmt layer,
/// spans too) until the guard drops. `#[tokio::test]`'s runtime runs every
/// task on the test's thread, the requests' tasks too.
struct Captured {
    log: Capture,
    printed: Printed,
    _guard: DefaultGuard,
}

/// A dispatcher that lives as long as the test binary and is nobody's
/// default. `tracing` decides once whether a callsite is wanted; with one
/// dispatcher alive it asks only the default of whichever thread reaches the
/// callsite first (another test's thread has none: "never"). With this one
/// alive too it asks every dispatcher, and this one wants ours.
fn anchor() {
    static ANCHOR: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    ANCHOR.get_or_init(|| {
        tracing::Dispatch::new(tracing_subscriber::registry().with(Capture::default()))
    });
}

impl Captured {
    fn start() -> Captured {
        anchor();
        let (log, printed) = (Capture::default(), Printed::default());
        let writer = printed.clone();
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_span_events(FmtSpan::CLOSE);
        let subscriber = tracing_subscriber::registry().with(log.clone()).with(fmt);
        let guard = tracing::subscriber::set_default(subscriber);
        Captured {
            log,
            printed,
            _guard: guard,
        }
    }

    /// The spans named `name`, in the order they started.
    fn spans(&self, name: &str) -> Vec<SpanRec> {
        let log = self.log.0.lock().unwrap();
        log.spans
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }

    /// The events whose message starts with `message`.
    fn events(&self, message: &str) -> Vec<EventRec> {
        let log = self.log.0.lock().unwrap();
        let events = log.events.iter();
        events
            .filter(|e| e.message.starts_with(message))
            .cloned()
            .collect()
    }

    /// Everything recorded and printed, as text.
    fn text(&self) -> String {
        let log = self.log.0.lock().unwrap();
        let mut text = String::from_utf8(self.printed.0.lock().unwrap().clone()).unwrap();
        for s in &log.spans {
            text += &format!("{s:?}\n");
        }
        for e in &log.events {
            text += &format!("{e:?}\n");
        }
        text
    }

    /// Nothing recorded or printed holds any of `secrets`, or a bearer.
    fn assert_no_secret(&self, secrets: &[&str]) {
        let text = self.text();
        assert!(!text.is_empty());
        for secret in secrets
            .iter()
            .chain(&["vd_iat_", "Bearer ", "mock-token", "?"])
        {
            assert!(!text.contains(secret), "{secret:?} in:\n{text}");
        }
    }
}

/// Each event's level and two of its fields.
fn levels<'a>(events: &'a [EventRec], a: &str, b: &str) -> Vec<(Level, &'a str, &'a str)> {
    let events = events.iter();
    events
        .map(|e| (e.level, e.fields[a].as_str(), e.fields[b].as_str()))
        .collect()
}

fn field<'a>(s: &'a SpanRec, name: &str) -> &'a str {
    s.fields
        .get(name)
        .map_or_else(|| panic!("no {name} in {s:?}"), String::as_str)
}

#[tokio::test]
async fn a_minted_then_a_cached_call_and_their_requests() {
    let f = Fixture::new();
    let log = Captured::start();
    let mut sandbox = f.sandbox().await;
    let credential = sandbox.open(&options()).await.unwrap().unwrap();
    let minted = sandbox
        .credential_get_token(credential, &[VAULT])
        .await
        .unwrap()
        .unwrap();
    let cached = sandbox
        .credential_get_token(credential, &[VAULT])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(minted.token, cached.token);

    let spans = log.spans("vd_cred.get_token");
    assert_eq!(spans.len(), 2, "{spans:?}");
    for s in &spans {
        assert_eq!(s.level, Level::INFO);
        assert_eq!(field(s, "audience"), "vault");
        assert_eq!(field(s, "scopes"), VAULT);
        assert_eq!(field(s, "mode"), "broker");
        assert_eq!(field(s, "credential"), "true");
        assert_eq!(field(s, "outcome"), "ok");
        assert!(field(s, "duration_ms").parse::<f64>().unwrap() >= 0.0);
        assert!(!s.fields.contains_key("status"), "{s:?}");
    }
    let (first, second) = (&spans[0], &spans[1]);
    assert_eq!(field(first, "attempts"), "1");
    assert_eq!(field(first, "statuses"), "200");
    assert_eq!(field(first, "source"), "minted");
    assert_eq!(field(second, "attempts"), "0");
    assert_eq!(field(second, "statuses"), "");
    assert_eq!(field(second, "source"), "cached");

    // The mint's ending event at INFO, the cache hit's at DEBUG.
    let ended = log.events("get_token succeeded");
    let levels: Vec<Level> = ended.iter().map(|e| e.level).collect();
    assert_eq!(levels, [Level::INFO, Level::DEBUG]);
    assert_eq!(ended[0].fields["source"], "minted");
    assert_eq!(ended[0].spans, ["vd_cred.get_token"]);

    // One request, at DEBUG, in the call's span: its origin only.
    let requests = log.events("request");
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(request.level, Level::DEBUG);
    assert_eq!(request.message, "request answered");
    assert_eq!(request.fields["method"], "POST");
    assert_eq!(request.fields["status"], "200");
    let origin = f.broker.url().split("/api").next().unwrap().to_string();
    assert!(origin.starts_with("http://127.0.0.1:"), "{origin}");
    assert_eq!(request.fields["origin"], origin);
    assert!(request.fields.contains_key("elapsed_ms"));
    assert_eq!(request.spans, ["vd_cred.get_token"]);

    // The fmt layer prints the span with its fields.
    let printed = String::from_utf8(log.printed.0.lock().unwrap().clone()).unwrap();
    assert!(printed.contains("vd_cred.get_token"), "{printed}");
    assert!(printed.contains("source=\"minted\""), "{printed}");
    assert!(printed.contains("statuses=\"200\""), "{printed}");
    log.assert_no_secret(&[&f.bearer, &minted.token]);
}

#[tokio::test]
async fn a_retried_call_counts_both_attempts() {
    let f = Fixture::new();
    f.broker.push(Reply::json(503, "busy"));
    let log = Captured::start();
    let token = f.get_token(&[VAULT]).await.unwrap();
    let spans = log.spans("vd_cred.get_token");
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(field(s, "credential"), "false");
    assert_eq!(field(s, "attempts"), "2");
    assert_eq!(field(s, "statuses"), "503,200");
    assert_eq!(field(s, "outcome"), "ok");
    assert_eq!(field(s, "source"), "minted");
    let statuses: Vec<String> = log
        .events("request answered")
        .iter()
        .map(|e| e.fields["status"].clone())
        .collect();
    assert_eq!(statuses, ["503", "200"]);
    log.assert_no_secret(&[&f.bearer, &token.token]);
}

#[tokio::test]
async fn a_failed_call_is_a_warning_with_its_kind() {
    let f = Fixture::new();
    let log = Captured::start();
    f.broker.push(Reply::json(401, "no such intent"));
    let err = f.get_token(&[VAULT]).await.unwrap_err();
    assert!(matches!(
        err,
        vd_cred_broker::CredentialError::BrokerRejected { status: 401, .. }
    ));
    let s = &log.spans("vd_cred.get_token")[0];
    assert_eq!(field(s, "outcome"), "broker-rejected");
    assert_eq!(field(s, "status"), "401");
    assert_eq!(field(s, "attempts"), "1");
    assert_eq!(field(s, "statuses"), "401");
    assert!(!s.fields.contains_key("source"), "{s:?}");
    let failed = log.events("get_token failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].level, Level::WARN);
    assert_eq!(failed[0].message, "get_token failed: broker-rejected");
    assert_eq!(failed[0].fields["error_kind"], "broker-rejected");
    assert_eq!(failed[0].fields["status"], "401");

    // An error before any request: no status, no attempt; get_token_info's
    // own span name.
    let mut sandbox = f.sandbox().await;
    let none = vd_cred_host::TokenRequestOptions {
        claims: None,
        tenant_id: None,
        enable_cae: false,
    };
    let err = sandbox
        .get_token_info(&["https://nope.example/.default"], &none)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(
        err,
        vd_cred_broker::CredentialError::ScopeNotAllowed { .. }
    ));
    let s = &log.spans("vd_cred.get_token_info")[0];
    assert_eq!(field(s, "audience"), "");
    assert_eq!(field(s, "outcome"), "scope-not-allowed");
    assert_eq!(field(s, "attempts"), "0");
    let failed = log.events("get_token_info failed");
    assert_eq!(failed[0].level, Level::WARN);
    assert_eq!(failed[0].fields["error_kind"], "scope-not-allowed");
    // The broker's answer (its detail) is not logged either.
    log.assert_no_secret(&[&f.bearer, "no such intent"]);
}

#[tokio::test]
async fn a_configuration_error_quotes_no_query_and_logs_no_url() {
    let f = Fixture::new();
    let log = Captured::start();
    let mut sandbox = f.sandbox().await;
    let mut opts = options();
    opts.broker_url = Some("http://127.0.0.1:1/x?sig=SECRET-SIG".into());
    // Refused at open or at the call; neither logs the URL.
    let result = match sandbox.open(&opts).await.unwrap() {
        Ok(credential) => sandbox
            .credential_get_token(credential, &[VAULT])
            .await
            .unwrap(),
        Err(e) => Err(e),
    };
    // The component quotes the URL without its query (the message may be
    // logged by whoever gets it).
    let message = result.unwrap_err().to_string();
    assert!(
        message.contains("\"http://127.0.0.1:1/x?...\""),
        "{message}"
    );
    assert!(!message.contains("SECRET-SIG"), "{message}");
    let log_ = log.log.0.lock().unwrap();
    let warned: Vec<&EventRec> = log_
        .events
        .iter()
        .filter(|e| e.level == Level::WARN)
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0].fields["error_kind"], "configuration");
    drop(log_);
    log.assert_no_secret(&[&f.bearer, "SECRET-SIG"]);
}

/// The test agent, its credential linked under `policy` to `f`'s broker.
async fn linked_agent(f: &Fixture, policy: AgentPolicy) -> TestAgent {
    let linked = LinkedCredential::new(f.sandbox().await, policy);
    let builder = AgentBuilder::default().credential_broker(f.broker.url());
    crate::linked_agent(builder, linked).await
}

#[tokio::test]
async fn the_linked_route_names_the_agent() {
    let f = Fixture::new();
    let log = Captured::start();
    let policy = AgentPolicy::new("agent-logged").allow(["vault"]);
    let mut agent = linked_agent(&f, policy).await;
    let no = test_agent::no_options();
    let token = agent.token(&no, &[VAULT], 2).await.unwrap().unwrap();
    let refused = agent.token(&no, &["https://storage.azure.com/.default"], 1);
    let refused = refused.await.unwrap();
    assert!(
        matches!(&refused, Err(test_agent::CredentialError::ScopeNotAllowed(r))
            if r.scope == "https://storage.azure.com/.default"),
        "{refused:?}"
    );

    let calls = log.spans("vd_cred.agent_call");
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls.iter().all(|s| field(s, "agent_id") == "agent-logged"));
    // The credential's own spans run inside the agent's.
    let inner = log.spans("vd_cred.get_token_info");
    assert_eq!(inner.len(), 2, "refused before the credential: {inner:?}");
    assert!(inner.iter().all(|s| s.parent == Some("vd_cred.agent_call")));

    let handed = log.events("token handed to agent");
    assert_eq!(
        levels(&handed, "source", "audience"),
        [
            (Level::INFO, "minted", "vault"),
            (Level::DEBUG, "cached", "vault")
        ]
    );
    assert_eq!(handed[0].fields["agent_id"], "agent-logged");
    assert_eq!(handed[0].spans, ["vd_cred.agent_call"]);
    let failed = log.events("agent call failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].level, Level::WARN);
    assert_eq!(failed[0].message, "agent call failed: scope-not-allowed");
    assert_eq!(failed[0].fields["agent_id"], "agent-logged");
    log.assert_no_secret(&[&f.bearer, &token.token]);
}

#[tokio::test]
async fn an_injection_names_the_agent_and_the_destination() {
    const VAULT_HOST: &str = "myvault.vault.azure.net";
    let broker = MockBroker::start().unwrap();
    broker.set_default(Reply::Named {
        delay: std::time::Duration::ZERO,
    });
    let f = Fixture::with_broker(broker);
    let ca = TestCa::new().unwrap();
    let config = ca
        .server_config(&["*.vault.azure.net"], Validity::Current)
        .unwrap();
    let azure = MockAzure::start_tls(config).unwrap();
    azure.accept((0..8).map(|n| format!("mock-vault-{n}")).collect());
    let roots = ca.roots();

    let log = Captured::start();
    let builder = AgentBuilder::default()
        .trust(roots)
        .credential_broker(f.broker.url())
        .connect_to(VAULT_HOST, 443, azure.addr())
        .egress(format!("https://{VAULT_HOST}"))
        .inject_defaults();
    let policy = AgentPolicy::new("agent-injected").reveal_tokens(false);
    let linked = LinkedCredential::new(f.sandbox().await, policy);
    let mut agent = crate::linked_agent(builder, linked).await;
    let url = format!("https://{VAULT_HOST}/secrets/db?api-version=7.4");
    for _ in 0..2 {
        let answer = agent.http_request("GET", &url, &[], b"").await.unwrap();
        assert_eq!(answer.unwrap().status, 200);
    }

    let spans = log.spans("vd_cred.inject");
    assert_eq!(spans.len(), 2, "{spans:?}");
    for s in &spans {
        assert_eq!(field(s, "agent_id"), "agent-injected");
        assert_eq!(field(s, "audience"), "vault");
        assert_eq!(field(s, "destination"), format!("{VAULT_HOST}:443"));
    }
    let injected = log.events("token injection");
    assert_eq!(
        levels(&injected, "source", "outcome"),
        [
            (Level::INFO, "minted", "Sent"),
            (Level::DEBUG, "cached", "Sent")
        ]
    );
    // The token's own call runs in the injection's span.
    let inner = log.spans("vd_cred.get_token_info");
    assert_eq!(inner[0].parent, Some("vd_cred.inject"));
    assert_eq!(field(&inner[0], "source"), "minted");
    log.assert_no_secret(&[&f.bearer, "mock-vault-", "api-version", "/secrets/db"]);
}

#[tokio::test]
async fn a_scope_is_logged_without_its_query_and_with_control_characters_escaped() {
    let f = Fixture::new();
    let log = Captured::start();
    let mut sandbox = f.sandbox().await;
    for scope in [
        "https://vault.azure.net/.default?sig=SECRET-SIG",
        "https://nope.example/x\nINFO forged line",
    ] {
        let err = sandbox.get_token(&[scope]).await.unwrap().unwrap_err();
        assert!(
            matches!(&err, vd_cred_broker::CredentialError::ScopeNotAllowed { scope: s, .. } if s == scope),
            "{err:?}"
        );
    }
    let spans = log.spans("vd_cred.get_token");
    let scopes: Vec<&str> = spans.iter().map(|s| field(s, "scopes")).collect();
    assert_eq!(
        scopes,
        [
            "https://vault.azure.net/.default",
            "https://nope.example/x\\nINFO forged line"
        ]
    );
    let printed = String::from_utf8(log.printed.0.lock().unwrap().clone()).unwrap();
    assert!(!printed.contains("\nINFO forged"), "{printed}");
    log.assert_no_secret(&[&f.bearer, "SECRET-SIG"]);
}

#[tokio::test]
async fn a_call_the_agents_budget_holds_back_is_not_a_broker_failure() {
    let f = Fixture::new();
    let log = Captured::start();
    let limits = vd_cred_host::linked::AgentLimits {
        mints_per_minute: 1,
        ..Default::default()
    };
    let policy = AgentPolicy::new("agent-held").limits(limits);
    let mut agent = linked_agent(&f, policy).await;
    let uncached = test_agent::CredentialOptions {
        disable_cache: true,
        ..test_agent::no_options()
    };
    assert!(agent.token(&uncached, &[VAULT], 1).await.unwrap().is_ok());
    let held = agent.token(&uncached, &[VAULT], 1).await.unwrap();
    assert!(
        matches!(&held, Err(test_agent::CredentialError::BrokerFailed(b)) if b.status == 429),
        "{held:?}"
    );
    assert_eq!(f.broker.request_count(), 1);

    let inner = log.spans("vd_cred.get_token_info");
    let outcomes: Vec<&str> = inner.iter().map(|s| field(s, "outcome")).collect();
    // Over budget, the host held the request back: no broker failure from
    // the credential, one WARN from the linked route (429, the budget).
    assert_eq!(outcomes, ["ok", "held"]);
    assert!(log.events("get_token_info failed").is_empty());
    assert_eq!(log.events("get_token_info held back by the host").len(), 1);
    let failed = log.events("agent call failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].fields["status"], "429");
}

#[tokio::test]
async fn a_call_dropped_before_its_answer_ends_its_span_as_cancelled() {
    let f = Fixture::new();
    let log = Captured::start();
    // The broker answers only after an hour: the call is dropped once the
    // broker has the request (a count, not a time, decides when).
    f.broker.push(Reply::Answer {
        status: 200,
        body: "{}".into(),
        delay: std::time::Duration::from_secs(3600),
        headers: Vec::new(),
    });
    let mut sandbox = f.sandbox().await;
    {
        let call = sandbox.get_token(&[VAULT]);
        tokio::pin!(call);
        // Drive the call until the broker has its request (polled asleep,
        // not spinning), then drop it.
        let at_broker = crate::until("the request at the broker", || {
            f.broker.request_count() == 1
        });
        tokio::select! {
            _ = &mut call => panic!("the broker never answers"),
            () = at_broker => {}
        }
    }
    let spans = log.spans("vd_cred.get_token");
    assert_eq!(spans.len(), 1);
    assert_eq!(field(&spans[0], "outcome"), "cancelled");
    assert!(log.events("get_token failed").is_empty());
}
