//! An agent that attacks the linked route: floods, oversized input, a
//! runaway mint loop, fishing for the broker's address in errors, and a
//! credential that traps. Each attack is refused with a typed error, never a
//! trap of the agent's, and the agent's next ordinary call still works.

use std::sync::{Arc, Mutex};

use host_test::agent::test_agent::{
    self, CredentialError as W, CredentialOptions, TestAgent, TokenRequestOptions,
};
use host_test::{Reply, TestClock};
use vd_cred_host::Sandbox;
use vd_cred_host::linked::{AgentLimits, AgentPolicy, LinkedCredential, TokenSource};
use vd_cred_host::runner::AgentBuilder;

use crate::{Fixture, GUEST_FILE, VAULT};

/// Errors the host's audit saw, in full.
type Errors = Arc<Mutex<Vec<String>>>;
/// The source of every token handed out.
type Sources = Arc<Mutex<Vec<TokenSource>>>;

/// A test agent linked to `sandbox` under `policy`, its budget measured on
/// `clock`.
async fn agent_in(
    sandbox: Sandbox,
    policy: AgentPolicy,
    clock: &TestClock,
) -> (TestAgent, Errors, Sources) {
    let (errors, sources) = (Errors::default(), Sources::default());
    let (seen_errors, seen_sources) = (errors.clone(), sources.clone());
    let linked = LinkedCredential::new(sandbox, policy)
        .budget_clock(clock.clone())
        .on_error(move |e| seen_errors.lock().unwrap().push(e.error.to_string()))
        .on_token(move |e| seen_sources.lock().unwrap().push(e.source));
    let agent = crate::linked_agent(AgentBuilder::default(), linked).await;
    (agent, errors, sources)
}

async fn agent(f: &Fixture, policy: AgentPolicy) -> (TestAgent, Errors, Sources) {
    agent_in(f.sandbox().await, policy, &f.clock).await
}

/// Which credential an agent's calls are forwarded to.
#[derive(Debug, Clone, Copy)]
enum Backend {
    /// A sandbox of its own ([`LinkedCredential::new`]).
    Own,
    /// One instance of the 0.3 build shared by every agent of the bearer
    /// ([`LinkedCredential::shared`]).
    Shared,
}

/// A test agent linked under `policy` to `backend`, its budget measured on
/// the fixture's clock.
async fn agent_over(
    f: &Fixture,
    policy: AgentPolicy,
    backend: Backend,
) -> (TestAgent, Errors, Sources) {
    let linked = match backend {
        Backend::Own => LinkedCredential::new(f.sandbox().await, policy),
        Backend::Shared => LinkedCredential::shared(crate::concurrent::shared(f).await, policy),
    };
    let (errors, sources) = (Errors::default(), Sources::default());
    let (seen_errors, seen_sources) = (errors.clone(), sources.clone());
    let linked = linked
        .budget_clock(f.clock.clone())
        .on_error(move |e| seen_errors.lock().unwrap().push(e.error.to_string()))
        .on_token(move |e| seen_sources.lock().unwrap().push(e.source));
    let builder = AgentBuilder::default().credential_broker(f.broker.url());
    let agent = crate::linked_agent(builder, linked).await;
    (agent, errors, sources)
}

fn minted(sources: &Sources) -> usize {
    let sources = sources.lock().unwrap();
    sources
        .iter()
        .filter(|s| **s == TokenSource::Minted)
        .count()
}

/// A broker that hands out the same token for every request (as a broker
/// handing out its cached Entra token does): each request it was sent is
/// charged and audited as a mint, over either backend; the broker sees the
/// budget, no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_handing_out_the_same_token_is_charged_for_every_mint_over_both_backends() {
    for backend in [Backend::Own, Backend::Shared] {
        let f = Fixture::new();
        f.broker.set_default(Reply::token("same-token", 3600));
        let limits = AgentLimits {
            mints_per_minute: 5,
            ..AgentLimits::default()
        };
        let policy = AgentPolicy::new("same").limits(limits);
        let (mut a, _, sources) = agent_over(&f, policy, backend).await;
        let (tokens, failed, last) = a.mint_loop(&uncached(), &[VAULT], 20, false).await.unwrap();
        assert_eq!(f.broker.request_count(), 5, "{backend:?}");
        assert_eq!(
            minted(&sources),
            5,
            "{backend:?}: one audited mint per request"
        );
        match backend {
            // Its own sandbox holds the request back: refused, 429.
            Backend::Own => {
                assert_eq!((tokens, failed), (5, 15));
                assert!(
                    matches!(&last, Some(W::BrokerFailed(b)) if b.status == 429),
                    "{last:?}"
                );
            }
            // Over a shared instance, the last token it was handed, while
            // fresh.
            Backend::Shared => assert_eq!((tokens, failed), (20, 0)),
        }
    }
}

/// A broker failing every request (503), each call retried up to 4 times:
/// every retry spends the budget. With its own sandbox, the request past
/// the budget is held back, so the broker sees exactly the budget; over a
/// shared instance a call is charged when it ends, so the broker sees at
/// most one call's retries more, and the debt is paid before the next mint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_spend_the_budget_over_both_backends() {
    use vd_cred_broker::retry::MAX_ATTEMPTS;
    for backend in [Backend::Own, Backend::Shared] {
        let f = Fixture::new();
        f.broker
            .set_default(Reply::json(503, r#"{"detail":"overloaded"}"#));
        let limits = AgentLimits {
            mints_per_minute: 5,
            ..AgentLimits::default()
        };
        let policy = AgentPolicy::new("retrier").limits(limits);
        let (mut a, errors, _) = agent_over(&f, policy, backend).await;
        let (tokens, failed, last) = a.mint_loop(&options(), &[VAULT], 6, true).await.unwrap();
        assert_eq!((tokens, failed), (0, 6));
        assert!(
            matches!(&last, Some(W::BrokerFailed(b)) if b.status == 429),
            "{backend:?}: {last:?}"
        );
        let overspend = match backend {
            Backend::Own => 0,
            Backend::Shared => MAX_ATTEMPTS as usize - 1,
        };
        assert_eq!(f.broker.request_count(), 5 + overspend, "{backend:?}");
        assert_eq!(errors.lock().unwrap().len(), 6);
        // A minute later the bucket refills: the overspend is paid first.
        f.clock.advance(std::time::Duration::from_secs(60));
        let before = f.broker.request_count();
        let _ = a.mint_loop(&options(), &[VAULT], 6, true).await.unwrap();
        let sent = f.broker.request_count() - before;
        match backend {
            Backend::Own => assert_eq!(sent, 5),
            // 5 - 3 = 2 left: one call, which may retry past them.
            Backend::Shared => assert_eq!(sent, MAX_ATTEMPTS as usize),
        }
    }
}

fn options() -> CredentialOptions {
    test_agent::no_options()
}

fn uncached() -> CredentialOptions {
    CredentialOptions {
        disable_cache: true,
        ..test_agent::no_options()
    }
}

#[tokio::test]
async fn credentials_past_the_cap_are_refused_and_handles_never_wrap() {
    let f = Fixture::new();
    let (mut a, _, _) = agent(&f, AgentPolicy::new("flooder")).await;
    let (opened, refused) = a.open_many(&options(), 1_000).await.unwrap();
    assert_eq!(opened, AgentLimits::default().credentials as u32);
    let Some(W::Configuration(why)) = refused else {
        panic!("{refused:?}")
    };
    assert!(why.contains("16 credentials open"), "{why}");
    // They were dropped when the agent's call returned.
    assert_eq!(a.store.data().linked.open_credentials().await, 0);

    // An open/drop loop reuses handles: nothing leaks, nothing is refused.
    let (opened, refused) = a.open_drop(&options(), 20_000).await.unwrap();
    assert!(refused.is_none(), "{refused:?}");
    assert_eq!(opened, 20_000);
    assert_eq!(a.store.data().linked.open_credentials().await, 0);

    // And the agent goes on.
    let token = a.token(&options(), &[VAULT], 2).await.unwrap().unwrap();
    assert_eq!(token.token, "mock-token-1");
    assert_eq!(f.broker.request_count(), 1);
}

#[tokio::test]
async fn too_many_or_too_long_scopes_are_refused_before_anything_is_sent() {
    let f = Fixture::new();
    let (mut a, _, _) = agent(&f, AgentPolicy::new("scoper")).await;
    let many = vec![VAULT; 100_000];
    let err = a.token(&options(), &many, 1).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, W::InvalidScopes(m) if m.contains("100000 scopes in one call")),
        "{err:?}"
    );
    let long = format!("https://vault.azure.net/{}", "a".repeat(10 << 20));
    let err = a.free_token(&[&long]).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, W::InvalidScopes(m) if m.contains("bytes; the host allows an agent at most 1024")),
        "{err:?}"
    );
    let huge = "x".repeat(64 << 20);
    let claims = TokenRequestOptions {
        claims: Some(huge.clone()),
        tenant_id: None,
        enable_cae: false,
    };
    let err = a
        .token_info(&options(), &[VAULT], &claims)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, W::Unsupported(m) if m.contains("more than 1024 bytes")),
        "{err:?}"
    );
    let tenant = TokenRequestOptions {
        claims: None,
        tenant_id: Some(huge),
        enable_cae: false,
    };
    let err = a
        .token_info(&options(), &[VAULT], &tenant)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, W::Configuration(m) if m.contains("tenant-id of 67108864 bytes")),
        "{err:?}"
    );
    assert_eq!(f.broker.request_count(), 0);
    assert!(a.token(&options(), &[VAULT], 1).await.unwrap().is_ok());
    assert_eq!(
        a.store.data().linked.sandbox().await.unwrap().generation(),
        0,
        "nothing trapped"
    );
}

#[tokio::test]
async fn a_timeout_over_the_ceiling_is_refused() {
    let f = Fixture::new();
    let (mut a, _, _) = agent(&f, AgentPolicy::new("patient")).await;
    let forever = CredentialOptions {
        timeout_ms: Some(u32::MAX),
        ..options()
    };
    let err = a.token(&forever, &[VAULT], 1).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, W::Configuration(m) if m.contains("timeout-ms 4294967295 is over the 60000")),
        "{err:?}"
    );
    let minute = CredentialOptions {
        timeout_ms: Some(60_000),
        ..options()
    };
    assert!(a.token(&minute, &[VAULT], 1).await.unwrap().is_ok());
}

/// A mint loop with `disable-cache` (and one with the free functions) is
/// held to the budget: the broker sees exactly the budget, every call over
/// it is a 429 naming the budget, and a minute later minting works again.
#[tokio::test]
async fn a_mint_loop_is_held_to_the_agents_budget() {
    let f = Fixture::new();
    let limits = AgentLimits {
        mints_per_minute: 5,
        ..AgentLimits::default()
    };
    let policy = AgentPolicy::new("minter").limits(limits);
    let (mut a, errors, _) = agent(&f, policy).await;
    let (tokens, failed, last) = a.mint_loop(&uncached(), &[VAULT], 50, false).await.unwrap();
    assert_eq!((tokens, failed), (5, 45));
    let Some(W::BrokerFailed(failure)) = last else {
        panic!("{last:?}")
    };
    assert_eq!(failure.status, 429);
    assert!(
        failure
            .detail
            .contains("agent minter is over its mint budget for vault (5 per minute)"),
        "{}",
        failure.detail
    );
    let (tokens, failed, _) = a.mint_loop(&options(), &[VAULT], 10, true).await.unwrap();
    assert_eq!((tokens, failed), (0, 10));
    assert_eq!(
        f.broker.request_count(),
        5,
        "the broker saw only the budget"
    );
    assert_eq!(errors.lock().unwrap().len(), 55, "each refusal is audited");

    // Another audience has its own budget.
    let storage = "https://storage.azure.com/.default";
    assert!(a.free_token(&[storage]).await.unwrap().is_ok());

    // A minute later (the test's clock), the bucket is full again.
    f.clock.advance(std::time::Duration::from_secs(60));
    let (tokens, failed, _) = a.mint_loop(&uncached(), &[VAULT], 6, false).await.unwrap();
    assert_eq!((tokens, failed), (5, 1));
}

/// Over budget, a credential kept open still serves its cached token: the
/// agent's next ordinary call is answered.
#[tokio::test]
async fn over_budget_a_cached_token_is_still_served() {
    use vd_cred_host::linked::bindings::vibedata::cred_broker::token_credential::{
        CredentialError as Refused, Host as Free, HostCredential as Opened,
    };
    use wasmtime::component::Resource;

    let f = Fixture::new();
    let limits = AgentLimits {
        mints_per_minute: 2,
        ..AgentLimits::default()
    };
    let mut linked =
        LinkedCredential::new(f.sandbox().await, AgentPolicy::new("steady").limits(limits))
            .budget_clock(f.clock.clone());
    let handle = Opened::open(&mut linked, options()).await.unwrap().unwrap();
    let rep = handle.rep();
    let first = Opened::get_token(&mut linked, Resource::new_own(rep), vec![VAULT.into()])
        .await
        .unwrap()
        .unwrap();
    // The free functions spend the rest of the budget...
    assert!(
        Free::get_token(&mut linked, vec![VAULT.into()])
            .await
            .unwrap()
            .is_ok()
    );
    // ...and the next is held back by the budget: a 429 naming it.
    let held = Free::get_token(&mut linked, vec![VAULT.into()])
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&held, Refused::BrokerFailed(b) if b.status == 429
            && b.detail.contains("agent steady is over its mint budget for vault (2 per minute)")),
        "{held:?}"
    );
    // ...and the open credential still answers, from its cache.
    let again = Opened::get_token(&mut linked, Resource::new_own(rep), vec![VAULT.into()])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.token, first.token);
    assert_eq!(f.broker.request_count(), 2);
}

/// The audit's minted/cached label comes from the host's client: a broker
/// that hands out the same token twice was still asked twice.
#[tokio::test]
async fn the_audit_says_minted_whenever_a_request_left_the_host() {
    let f = Fixture::new();
    f.broker.set_default(Reply::token("same-token", 3600));
    let (mut a, _, sources) = agent(&f, AgentPolicy::new("auditor")).await;
    let (tokens, _, _) = a.mint_loop(&uncached(), &[VAULT], 3, false).await.unwrap();
    let (cached, _, _) = a.mint_loop(&options(), &[VAULT], 3, false).await.unwrap();
    assert_eq!((tokens, cached), (3, 3));
    assert_eq!(f.broker.request_count(), 4);
    use TokenSource::{Cached, Minted};
    assert_eq!(
        *sources.lock().unwrap(),
        [Minted, Minted, Minted, Minted, Cached, Cached]
    );
}

/// Errors passed to the agent say what happened, not where: no broker URL,
/// address or bearer path; the host's audit has the full text.
#[tokio::test]
async fn errors_crossing_the_link_withhold_the_credentials_whereabouts() {
    let f = Fixture::new();
    let (mut a, errors, _) = agent(&f, AgentPolicy::new("fisher")).await;
    let authority = f.broker.addr().to_string();
    let short = CredentialOptions {
        timeout_ms: Some(1_000),
        ..options()
    };

    f.broker.set_default(Reply::Drop {
        delay: std::time::Duration::ZERO,
    });
    let err = a.token(&short, &[VAULT], 1).await.unwrap().unwrap_err();
    let W::BrokerUnreachable(text) = &err else {
        panic!("{err:?}")
    };
    assert!(text.contains("the credential broker"), "{text}");
    assert!(
        !text.contains(&authority) && !text.contains("127.0.0.1"),
        "{text}"
    );
    let described = a.describe(&err).await.unwrap();
    assert!(!described.contains(&authority), "{described}");

    std::fs::remove_file(f.dir.path().join("credential")).unwrap();
    let err = a.token(&short, &[VAULT], 1).await.unwrap().unwrap_err();
    let W::BearerUnavailable(text) = &err else {
        panic!("{err:?}")
    };
    assert!(
        !text.contains(GUEST_FILE) && text.contains("the bearer file"),
        "{text}"
    );

    let audit = errors.lock().unwrap().clone();
    assert_eq!(audit.len(), 2);
    assert!(audit[0].contains(&authority), "{}", audit[0]);
    assert!(audit[1].contains(GUEST_FILE), "{}", audit[1]);
}

/// The credential's store has a memory ceiling: an answer that would grow
/// it past the ceiling traps the credential, the agent gets a typed error,
/// and the next call runs in a fresh instance.
#[tokio::test]
async fn a_trapping_credential_is_a_typed_error_and_is_replaced() {
    let f = Fixture::new();
    let ceiling = smallest_ceiling(&f).await;
    // An answer of almost 1 MiB needs more.
    f.broker.push(big_answer());
    let sandbox = f.builder().memory_limit(ceiling).build().await.unwrap();
    let (mut a, errors, _) = agent_in(sandbox, AgentPolicy::new("bloater"), &f.clock).await;
    let (tokens, failed, last) = a.mint_loop(&options(), &[VAULT], 2, false).await.unwrap();
    let Some(W::BrokerUnreachable(text)) = &last else {
        panic!("{last:?}")
    };
    assert!(text.contains("stopped inside the host"), "{text}");
    assert_eq!(
        (tokens, failed),
        (1, 1),
        "the second call, in a fresh instance, minted"
    );
    assert_eq!(
        a.store.data().linked.sandbox().await.unwrap().generation(),
        1
    );
    assert_eq!(errors.lock().unwrap().len(), 1);
    assert_eq!(f.broker.request_count(), 2);

    // A credential dropped while its instance is gone is not dropped into
    // the next one (which would trap again): one trap, one replacement.
    f.broker.push(big_answer());
    let (_, failed, _) = a.mint_loop(&options(), &[VAULT], 1, false).await.unwrap();
    assert_eq!(failed, 1);
    assert!(a.token(&options(), &[VAULT], 1).await.unwrap().is_ok());
    assert_eq!(
        a.store.data().linked.sandbox().await.unwrap().generation(),
        2
    );
}

/// An answer of almost 1 MiB (under the component's cap).
pub(crate) fn big_answer() -> Reply {
    let padding = "a".repeat(900 * 1024);
    Reply::json(
        200,
        format!(r#"{{"access_token":"big","expires_in":3600,"pad":"{padding}"}}"#),
    )
}

/// The smallest memory ceiling (in 128 KiB steps) the credential works in,
/// found by trying, so the tests follow the component's size.
pub(crate) async fn smallest_ceiling(f: &Fixture) -> usize {
    for step in 8..=256 {
        let limit = step * 128 * 1024;
        let Ok(mut sandbox) = f.builder().memory_limit(limit).build().await else {
            continue;
        };
        if let Ok(Ok(_)) = sandbox.get_token(&[VAULT]).await {
            f.broker.take_requests();
            return limit;
        }
    }
    panic!("the credential works in 32 MiB")
}

/// The budget holds across a trap: the replaced instance is held back too,
/// and what the trapped call sent was counted.
#[tokio::test]
async fn a_trap_does_not_reset_the_mint_budget() {
    let f = Fixture::new();
    let ceiling = smallest_ceiling(&f).await;
    f.broker.push(big_answer());
    let sandbox = f.builder().memory_limit(ceiling).build().await.unwrap();
    let limits = AgentLimits {
        mints_per_minute: 1,
        ..AgentLimits::default()
    };
    let policy = AgentPolicy::new("trapper").limits(limits);
    let (mut a, _, sources) = agent_in(sandbox, policy, &f.clock).await;
    let trapped = a.free_token(&[VAULT]).await.unwrap().unwrap_err();
    assert!(
        matches!(&trapped, W::BrokerUnreachable(m) if m.contains("stopped inside the host")),
        "{trapped:?}"
    );
    let held = a.free_token(&[VAULT]).await.unwrap().unwrap_err();
    assert!(
        matches!(&held, W::BrokerFailed(failure) if failure.status == 429),
        "{held:?}"
    );
    assert_eq!(f.broker.request_count(), 1);
    assert!(sources.lock().unwrap().is_empty());
}

/// A call into the credential cannot outlive its limit: against a broker
/// that never answers, a sandbox whose call limit is shorter than the
/// credential's own timeout stops the call, and the next call runs in a
/// fresh instance.
#[tokio::test]
async fn a_call_past_its_limit_is_stopped_and_the_instance_replaced() {
    let f = Fixture::new();
    f.broker
        .push(Reply::token("late", 3600).after(std::time::Duration::from_secs(3600)));
    // OVERRUN_LIMIT, under the credential's own 10 s: the host stops the
    // call; the same limit is ample for the next call, answered at once.
    let mut sandbox = f
        .builder()
        .call_limit(crate::OVERRUN_LIMIT)
        .build()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = sandbox.get_token(&[VAULT]).await.unwrap_err();
    // Stopped by the host at the limit, whichever of its two guards saw it
    // first: the call's timer (the guest waiting on the broker), or the
    // epoch check (the guest running wasm just then).
    let limit_ms = crate::OVERRUN_LIMIT.as_millis();
    let shown = format!("{err:#}");
    assert!(
        shown.contains(&format!("ran past its limit of {limit_ms} ms"))
            || shown.contains("the call ran past its deadline"),
        "{shown}"
    );
    assert!(started.elapsed() >= crate::OVERRUN_LIMIT, "{err:#}");
    assert_eq!(sandbox.generation(), 0);
    // The broker's next answer comes at once: the fresh instance gets it.
    let token = sandbox.get_token(&[VAULT]).await.unwrap().unwrap();
    assert_eq!(sandbox.generation(), 1);
    assert!(token.token.starts_with("mock-token-"), "{}", token.token);
}

/// The flood of the issue, in one agent: 100,000 opens kept alive, 100,000
/// open/drop pairs, 100,000 scopes, a 10 MB scope, 1,000 mints with
/// `disable-cache`. Every attack is refused with a typed error; the agent's
/// next ordinary call gets its token; and the host's peak memory stays under
/// 512 MiB.
///
/// The flood ([`flood_alone`]) runs in a process of its own, this test
/// binary run again for that test only (with the same build of the
/// credential), so that the peak it measures is the flood's: in this
/// process it would be whatever the tests scheduled beside it, or before
/// it, peaked at. In that process, the component and the agent are loaded
/// (compiled, on a fresh machine) and one agent makes a call before the
/// peak is reset: what is measured is the flood, not a cold cache's
/// compile.
#[test]
fn a_flood_is_refused_and_the_agent_goes_on() {
    crate::alone("hostile_agent::flood_alone");
}

#[tokio::test]
#[ignore = "run in a process of its own by a_flood_is_refused_and_the_agent_goes_on"]
async fn flood_alone() {
    // Warm-up, with a fixture of its own (the flood's counts stay its own):
    // the component and the agent loaded, an instance of each made, a call.
    {
        let warm = Fixture::new();
        let (mut a, _, _) = agent(&warm, AgentPolicy::new("warm-up")).await;
        assert!(a.token(&options(), &[VAULT], 1).await.unwrap().is_ok());
    }
    #[cfg(target_os = "linux")]
    assert!(host_test::reset_peak_rss(), "Linux's clear_refs");

    let f = Fixture::new();
    let (mut a, _, _) = agent(&f, AgentPolicy::new("flood")).await;
    let (opened, refused) = a.open_many(&options(), 100_000).await.unwrap();
    assert!(
        matches!(&refused, Some(W::Configuration(m)) if m.contains("16 credentials open"))
            && opened == 16,
        "{opened}: {refused:?}"
    );
    let (opened, refused) = a.open_drop(&options(), 100_000).await.unwrap();
    assert!(refused.is_none(), "{refused:?}");
    assert_eq!(opened, 100_000);
    let many = vec![VAULT; 100_000];
    assert!(matches!(
        a.token(&options(), &many, 1).await.unwrap(),
        Err(W::InvalidScopes(_))
    ));
    let long = format!("https://vault.azure.net/{}", "a".repeat(10 << 20));
    assert!(matches!(
        a.token(&options(), &[&long], 1).await.unwrap(),
        Err(W::InvalidScopes(_))
    ));
    let (tokens, failed, _) = a
        .mint_loop(&uncached(), &[VAULT], 1_000, false)
        .await
        .unwrap();
    let budget = AgentLimits::default().mints_per_minute;
    assert_eq!((tokens, failed), (budget, 1_000 - budget));
    assert_eq!(f.broker.request_count(), budget as usize);

    // The next ordinary call, once the minute is over (the test's clock).
    f.clock.advance(std::time::Duration::from_secs(60));
    let token = a.token(&options(), &[VAULT], 3).await.unwrap().unwrap();
    assert!(token.token.starts_with("mock-token-"));
    assert_eq!(f.broker.request_count(), budget as usize + 1);

    #[cfg(target_os = "linux")]
    {
        let peak_kib = host_test::peak_rss_kib().expect("VmHWM in /proc/self/status");
        println!("peak RSS {peak_kib} KiB after warm-up");
        assert!(peak_kib < 512 * 1024, "peak RSS {peak_kib} KiB");
    }
}

/// An agent store built from its linked credential refuses that
/// credential's broker even when the runtime forgot to name it and allows
/// every host on its port.
#[tokio::test]
async fn the_agents_egress_knows_its_credentials_broker_without_being_told() {
    let f = Fixture::new();
    let linked = LinkedCredential::new(f.sandbox().await, AgentPolicy::new("forgetful"));
    let port = f.broker.addr().port();
    let builder = AgentBuilder::default().egress(format!("http://*:{port}"));
    let mut a = crate::linked_agent(builder, linked).await;
    for url in [
        format!("{}/token", f.broker.url()),
        format!("http://localhost:{port}/token"),
    ] {
        assert_eq!(
            a.http_get(&url).await.unwrap(),
            Err("ErrorCode::ConnectionRefused".to_string()),
            "{url}"
        );
    }
    assert_eq!(f.broker.connection_count(), 0);
    assert!(a.token(&options(), &[VAULT], 1).await.unwrap().is_ok());
}
