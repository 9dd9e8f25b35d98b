//! What only the WASI 0.3 build does: many calls at once in one instance
//! ([`vd_cred_host::shared::SharedCredential`]), and a bearer's agents
//! spread over a few ([`vd_cred_host::shards::Shards`]). The broker holds its
//! answer until the test lets it go, so every verdict follows from what was
//! waiting when, never from how fast the machine is.

use std::time::Duration;

use host_test::Reply;
use vd_cred_broker::CredentialError;
use vd_cred_host::shared::SharedCredential;
use vd_cred_host::{Host, TokenResult};

use crate::{Fixture, OVERRUN_LIMIT, VAULT, options, until};

const STORAGE: &str = "https://storage.azure.com/.default";

/// The fixture's sandbox, as one shared instance of the 0.3 build.
pub(crate) async fn shared(f: &Fixture) -> SharedCredential {
    f.builder_on(Host::shared_p3())
        .build_shared()
        .await
        .unwrap()
}

/// Options for calls whose request the broker holds: a minute, so that a
/// slow machine's call does not give up before the test releases it.
fn patient() -> vd_cred_host::CredentialOptions {
    let mut options = options();
    options.timeout_ms = Some(60_000);
    options
}

/// `n` vault calls on one credential of a shared instance, all in the
/// instance while the broker holds the first request; then released.
async fn held_calls(f: &Fixture, n: usize) -> Vec<tokio::task::JoinHandle<TokenResult>> {
    let shared = shared(f).await;
    let credential = shared.open(&patient()).await.unwrap().unwrap();
    let held = f.broker.hold(1);
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let shared = shared.clone();
            tokio::spawn(async move { shared.get_token(&credential, &[VAULT]).await.unwrap() })
        })
        .collect();
    until(
        &format!("{n} calls in the instance, one at the broker"),
        || shared.calls_in_progress() == n && f.broker.request_count() == 1,
    )
    .await;
    held.release();
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_audience_share_one_mint() {
    let f = Fixture::new();
    f.broker.set_default(Reply::Named {
        delay: Duration::ZERO,
    });
    let calls = held_calls(&f, 50).await;
    for call in calls {
        let token = call.await.unwrap().unwrap();
        assert_eq!(token.token, "mock-vault-1");
    }
    let requests = f.broker.requests();
    assert_eq!(requests.len(), 1, "one mint for 50 callers");
    assert_eq!(requests[0].body, br#"{"audience":"vault"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_mint_that_fails_fails_each_caller_once() {
    let f = Fixture::new();
    f.broker
        .set_default(Reply::json(403, r#"{"detail":"intent revoked"}"#));
    let calls = held_calls(&f, 20).await;
    for call in calls {
        match call.await.unwrap() {
            Err(CredentialError::BrokerRejected { status: 403, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(f.broker.request_count(), 1, "one request for 20 callers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_call_is_not_held_up_by_another_audiences_mint() {
    let f = Fixture::new();
    f.broker.set_default(Reply::Named {
        delay: Duration::ZERO,
    });
    let shared = shared(&f).await;
    let credential = shared.open(&patient()).await.unwrap().unwrap();
    let vault = shared.get_token(&credential, &[VAULT]).await.unwrap();
    assert_eq!(vault.unwrap().token, "mock-vault-1");
    // The storage mint waits at the broker until released; the cached vault
    // token comes back meanwhile (were calls taken in turn, this would wait
    // forever).
    let held = f.broker.hold(2);
    let storage = {
        let shared = shared.clone();
        tokio::spawn(async move { shared.get_token(&credential, &[STORAGE]).await })
    };
    until("the storage mint at the broker", || {
        f.broker.request_count() == 2
    })
    .await;
    for _ in 0..10 {
        let token = shared.get_token(&credential, &[VAULT]).await.unwrap();
        assert_eq!(token.unwrap().token, "mock-vault-1");
    }
    assert!(!storage.is_finished());
    held.release();
    let storage = storage.await.unwrap().unwrap().unwrap();
    assert_eq!(storage.token, "mock-storage-2");
    assert_eq!(f.broker.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_free_functions_and_other_credentials_do_not_share_a_cache() {
    // Each credential (and each free call, which opens its own) keeps its
    // own cache: sharing is per credential, as in the 0.2 build.
    let f = Fixture::new();
    f.broker.set_default(Reply::Named {
        delay: Duration::ZERO,
    });
    let shared = shared(&f).await;
    let one = shared.open(&options()).await.unwrap().unwrap();
    let two = shared.open(&options()).await.unwrap().unwrap();
    let a = shared.get_token(&one, &[VAULT]).await.unwrap().unwrap();
    let b = shared.get_token(&two, &[VAULT]).await.unwrap().unwrap();
    let no_options = vd_cred_host::TokenRequestOptions {
        claims: None,
        tenant_id: None,
        enable_cae: false,
    };
    let c = shared
        .free_get_token_info(&[VAULT], &no_options)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        [a.token, b.token, c.token],
        ["mock-vault-1", "mock-vault-2", "mock-vault-3"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_instance_keeps_the_sandbox() {
    // Denied egress and the bearer's directory hold for the shared instance
    // as for a sandbox: a broker URL the policy does not allow is refused.
    let f = Fixture::new();
    let shared = shared(&f).await;
    let mut elsewhere = options();
    elsewhere.broker_url = Some("http://127.0.0.1:9/api".into());
    let credential = shared.open(&elsewhere).await.unwrap().unwrap();
    let err = shared
        .get_token(&credential, &[VAULT])
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, CredentialError::BrokerUnreachable(m) if m.contains("refused")),
        "{err}"
    );
    assert_eq!(f.broker.request_count(), 0);
    let mut outside = options();
    outside.credential_file = Some("/etc/passwd".into());
    let credential = shared.open(&outside).await.unwrap().unwrap();
    let err = shared
        .get_token(&credential, &[VAULT])
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, CredentialError::BearerUnavailable(_)),
        "{err}"
    );
}

/// The linked route over one shared instance: agents of one bearer, each
/// with its own policy, budget and audit.
mod linked {
    use std::sync::{Arc, Mutex};

    use host_test::agent::test_agent::{self, AccessToken, CredentialError as W, TestAgent};
    use vd_cred_host::linked::{AgentLimits, AgentPolicy, LinkedCredential, TokenSource};
    use vd_cred_host::runner::AgentBuilder;

    use super::*;

    type Events = Arc<Mutex<Vec<(String, TokenSource)>>>;

    async fn agent(
        f: &Fixture,
        shared: &SharedCredential,
        policy: AgentPolicy,
        events: &Events,
    ) -> TestAgent {
        let seen = events.clone();
        let linked = LinkedCredential::shared(shared.clone(), policy).on_token(move |e| {
            seen.lock()
                .unwrap()
                .push((e.agent_id.to_string(), e.source))
        });
        let builder = AgentBuilder::default().credential_broker(f.broker.url());
        crate::linked_agent(builder, linked).await
    }

    /// A task per agent, each asking for a vault token with a minute's
    /// `timeout-ms` (the broker holds the request until the test releases
    /// it): the agent back, and what it got (a trap fails the task).
    fn patient_vault_calls(
        agents: Vec<TestAgent>,
    ) -> Vec<tokio::task::JoinHandle<(TestAgent, Result<AccessToken, W>)>> {
        agents
            .into_iter()
            .map(|mut a| {
                tokio::spawn(async move {
                    let mut patient = test_agent::no_options();
                    patient.timeout_ms = Some(60_000);
                    let token = a.token(&patient, &[VAULT], 1).await;
                    (a, token.expect("the agent's call trapped"))
                })
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_agents_one_instance_one_mint() {
        let f = Fixture::new();
        f.broker.set_default(Reply::Named {
            delay: Duration::ZERO,
        });
        let shared = shared(&f).await;
        let events = Events::default();
        let mut agents = Vec::new();
        for i in 0..20 {
            let policy = AgentPolicy::new(format!("agent-{i}")).allow(["vault"]);
            agents.push(agent(&f, &shared, policy, &events).await);
        }
        let held = f.broker.hold(1);
        let calls = patient_vault_calls(agents);
        until(
            "20 agents' calls in the instance, one at the broker",
            || shared.calls_in_progress() == 20 && f.broker.request_count() == 1,
        )
        .await;
        held.release();
        for call in calls {
            let (_, token) = call.await.unwrap();
            assert_eq!(token.unwrap().token, "mock-vault-1");
        }
        assert_eq!(f.broker.request_count(), 1, "one mint for 20 agents");
        let events = events.lock().unwrap();
        assert_eq!(events.len(), 20);
        let minted = events
            .iter()
            .filter(|(_, s)| *s == TokenSource::Minted)
            .count();
        assert_eq!(minted, 1, "one agent is told it minted: {events:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_on_a_shard_is_charged_for_its_own_shards_mint_only() {
        // Two agents on two shards, both first calls at the broker at once:
        // each shard mints once, and each agent is charged its shard's mint
        // alone. With two mints a minute, each may then mint once more (had
        // an agent been charged both mints, its second would be refused).
        let f = Fixture::new();
        f.broker.set_default(Reply::Named {
            delay: Duration::ZERO,
        });
        let shards = f
            .builder_on(Host::shared_p3())
            .build_shards(2)
            .await
            .unwrap();
        let events = Events::default();
        let two_mints = AgentLimits {
            mints_per_minute: 2,
            ..AgentLimits::default()
        };
        let mut agents = Vec::new();
        for i in 0..2 {
            let policy = AgentPolicy::new(format!("agent-{i}"))
                .allow(["vault"])
                .limits(two_mints);
            agents.push(agent(&f, &shards.assign(), policy, &events).await);
        }
        let holders: Vec<usize> = shards.shards().iter().map(|s| s.holders()).collect();
        assert_eq!(holders, [2, 2], "one agent on each shard");
        let first = f.broker.hold(1);
        let second = f.broker.hold(2);
        let calls = patient_vault_calls(agents);
        until("both shards' mints at the broker", || {
            f.broker.request_count() == 2
        })
        .await;
        first.release();
        second.release();
        let mut agents = Vec::new();
        let mut tokens = Vec::new();
        for call in calls {
            let (a, token) = call.await.unwrap();
            tokens.push(token.unwrap().token);
            agents.push(a);
        }
        tokens.sort();
        assert_eq!(tokens, ["mock-vault-1", "mock-vault-2"]);
        // An hour on (the sandboxes' clock), both tokens have expired.
        f.clock.advance(Duration::from_secs(3600));
        for a in &mut agents {
            let token = a.token(&test_agent::no_options(), &[VAULT], 1).await;
            let token = token
                .unwrap()
                .unwrap_or_else(|e| panic!("not allowed to mint: {e:?}"));
            assert!(token.token == "mock-vault-3" || token.token == "mock-vault-4");
        }
        assert_eq!(f.broker.request_count(), 4);
        for shard in shards.shards() {
            assert_eq!(shard.traffic().sent(), 2, "each shard sent its own two");
        }
        let events = events.lock().unwrap();
        assert_eq!(events.len(), 4);
        assert!(
            events.iter().all(|(_, s)| *s == TokenSource::Minted),
            "each agent is told it minted each time: {events:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_agent_keeps_its_policy_and_budget() {
        let f = Fixture::new();
        f.broker.set_default(Reply::Named {
            delay: Duration::ZERO,
        });
        let shared = shared(&f).await;
        let events = Events::default();
        let one_mint = AgentLimits {
            mints_per_minute: 1,
            ..AgentLimits::default()
        };
        let policy = AgentPolicy::new("vault-only").allow(["vault", "storage"]);
        let mut frugal = agent(&f, &shared, policy.limits(one_mint), &events).await;
        let policy = AgentPolicy::new("storage-only").allow(["storage"]);
        let mut other = agent(&f, &shared, policy, &events).await;
        // Policy: refused by the host, nothing sent.
        let err = other
            .token(&test_agent::no_options(), &[VAULT], 1)
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, W::ScopeNotAllowed(_)), "{err:?}");
        assert_eq!(f.broker.request_count(), 0);
        // An agent may not widen the shared credential's settings.
        let mut wider = test_agent::no_options();
        wider.broker_url = Some("http://127.0.0.1:9/".into());
        let err = other
            .token(&wider, &[STORAGE], 1)
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, W::Configuration(_)), "{err:?}");
        // Budget: one mint a minute per audience. The first vault token
        // spends it; the same token is served again from the agent's last.
        let t = frugal.token(&test_agent::no_options(), &[VAULT], 1).await;
        assert_eq!(t.unwrap().unwrap().token, "mock-vault-1");
        let t = frugal.token(&test_agent::no_options(), &[VAULT], 2).await;
        assert_eq!(t.unwrap().unwrap().token, "mock-vault-1");
        // Another agent's storage mint, which a third agent is then served
        // from the shared credential's cache.
        let t = other.token(&test_agent::no_options(), &[STORAGE], 1).await;
        assert_eq!(t.unwrap().unwrap().token, "mock-storage-2");
        let policy = AgentPolicy::new("late").allow(["storage"]);
        let mut late = agent(&f, &shared, policy, &events).await;
        let t = late.token(&test_agent::no_options(), &[STORAGE], 1).await;
        assert_eq!(t.unwrap().unwrap().token, "mock-storage-2");
        assert_eq!(f.broker.request_count(), 2);
        // An hour on (the sandbox's clock): the vault token has expired.
        // The frugal agent, its budget spent (the budget's clock is the real
        // one), is refused; another agent mints.
        f.clock.advance(Duration::from_secs(3600));
        let err = frugal
            .token(&test_agent::no_options(), &[VAULT], 1)
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&err, W::BrokerFailed(b) if b.status == 429),
            "{err:?}"
        );
        assert_eq!(f.broker.request_count(), 2);
        let policy = AgentPolicy::new("fresh").allow(["vault"]);
        let mut fresh = agent(&f, &shared, policy, &events).await;
        let t = fresh.token(&test_agent::no_options(), &[VAULT], 1).await;
        assert_eq!(t.unwrap().unwrap().token, "mock-vault-3");
        assert_eq!(f.broker.request_count(), 3);
        let sources: Vec<(String, TokenSource)> = events.lock().unwrap().clone();
        assert_eq!(
            sources,
            [
                ("vault-only".into(), TokenSource::Minted),
                ("vault-only".into(), TokenSource::Cached),
                ("vault-only".into(), TokenSource::Cached),
                ("storage-only".into(), TokenSource::Minted),
                ("late".into(), TokenSource::Cached),
                ("fresh".into(), TokenSource::Minted),
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_mint_counts_against_the_agents_budget() {
    // The intent grants no storage: every storage call is refused by the
    // broker. With one mint a minute, the second never reaches it.
    use host_test::agent::test_agent::{self, CredentialError as W};
    use vd_cred_host::linked::{AgentLimits, AgentPolicy, LinkedCredential};
    use vd_cred_host::runner::AgentBuilder;
    let f = Fixture::new();
    f.broker
        .set_default(Reply::json(403, r#"{"detail":"not in this intent"}"#));
    let shared = shared(&f).await;
    let limits = AgentLimits {
        mints_per_minute: 1,
        ..AgentLimits::default()
    };
    let policy = AgentPolicy::new("refused").limits(limits);
    let linked = LinkedCredential::shared(shared, policy);
    let builder = AgentBuilder::default().credential_broker(f.broker.url());
    let mut agent = crate::linked_agent(builder, linked).await;
    let first = agent.token(&test_agent::no_options(), &[STORAGE], 1).await;
    assert!(
        matches!(first.unwrap(), Err(W::BrokerRejected(b)) if b.status == 403),
        "the broker's refusal"
    );
    let second = agent.token(&test_agent::no_options(), &[STORAGE], 1).await;
    assert!(
        matches!(second.unwrap(), Err(W::BrokerFailed(b)) if b.status == 429),
        "over budget"
    );
    assert_eq!(f.broker.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_give_a_new_agent_the_shard_fewest_agents_hold() {
    use vd_cred_host::shards::{MAX_SHARDS, Shards};
    let f = Fixture::new();
    let shards = f
        .builder_on(Host::shared_p3())
        .build_shards(2)
        .await
        .unwrap();
    // Agents per shard: its holders but the one `Shards` keeps.
    let agents =
        |s: &Shards| -> Vec<usize> { s.shards().iter().map(|s| s.holders() - 1).collect() };
    assert_eq!(agents(&shards), [0, 0]);
    let a = shards.assign();
    assert_eq!(agents(&shards), [1, 0]);
    let b = shards.assign();
    assert_eq!(agents(&shards), [1, 1]);
    let c = shards.assign();
    assert_eq!(agents(&shards), [2, 1], "a tie goes to the first shard");
    drop((a, c));
    let d = shards.assign();
    assert_eq!(
        agents(&shards),
        [1, 1],
        "agents that went gave their place back"
    );
    // Each shard is an instance of its own, with its own cache and counts.
    f.broker.set_default(Reply::Named {
        delay: Duration::ZERO,
    });
    for shard in [&b, &d, &b, &d] {
        let credential = shard.open_shared(&options()).await.unwrap().unwrap();
        shard
            .get_token(&credential, &[VAULT])
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        f.broker.request_count(),
        2,
        "a mint per shard, then its cache"
    );
    assert_eq!(b.traffic().sent(), 1);
    assert_eq!(d.traffic().sent(), 1);
    for wrong in [0, MAX_SHARDS + 1] {
        let error = f
            .builder_on(Host::shared_p3())
            .build_shards(wrong)
            .await
            .err()
            .expect("refused");
        assert!(
            error.to_string().contains("build between 1 and 64"),
            "{error}"
        );
    }
    let error = f
        .builder_on(Host::shared())
        .build_shards(2)
        .await
        .err()
        .expect("the 0.2 build is refused");
    assert!(error.to_string().contains("WASI 0.3 build"), "{error}");
}

/// The fixture's shared instance with `memory_limit` bytes of memory.
async fn shared_within(f: &Fixture, memory_limit: usize) -> SharedCredential {
    f.builder_on(Host::shared_p3())
        .memory_limit(memory_limit)
        .build_shared()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_credentials_give_their_memory_back() {
    // 4 MiB of memory, and 20,000 credentials opened and dropped one after
    // another: kept, they would not fit, and the instance would trap.
    let f = Fixture::new();
    let shared = shared_within(&f, 4 << 20).await;
    for _ in 0..20_000 {
        let credential = shared.open(&options()).await.unwrap().unwrap();
        shared.drop_credential(credential);
    }
    assert_eq!(shared.generation(), 0, "the instance never trapped");
    let credential = shared.open(&options()).await.unwrap().unwrap();
    assert!(
        shared
            .get_token(&credential, &[VAULT])
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_trap_the_next_call_runs_in_a_fresh_instance() {
    let f = Fixture::new();
    let shared = shared_within(&f, 4 << 20).await;
    let credential = shared.open(&options()).await.unwrap().unwrap();
    assert!(
        shared
            .get_token(&credential, &[VAULT])
            .await
            .unwrap()
            .is_ok()
    );
    // A scope larger than the instance's memory: the guest cannot take it.
    let huge = "x".repeat(8 << 20);
    let trap = shared.get_token(&credential, &[&huge]).await.unwrap_err();
    assert!(format!("{trap:#}").contains("trapped"), "{trap:#}");
    until("the instance replaced", || shared.generation() == 1).await;
    // The old credential is gone with its instance, and says so.
    let stale = shared.get_token(&credential, &[VAULT]).await.unwrap();
    assert!(
        matches!(&stale, Err(CredentialError::Configuration(m)) if m.contains("open it again")),
        "{stale:?}"
    );
    let credential = shared.open(&options()).await.unwrap().unwrap();
    let token = shared.get_token(&credential, &[VAULT]).await.unwrap();
    assert_eq!(token.unwrap().token, "mock-token-2");
    // Another shared instance's credential is refused before any call.
    let other = shared_within(&f, 4 << 20).await;
    let foreign = other.get_token(&credential, &[VAULT]).await.unwrap_err();
    assert!(
        format!("{foreign}").contains("another shared instance"),
        "{foreign}"
    );
    assert_eq!(other.generation(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_at_once_while_no_instance_can_be_made() {
    // The bearer's directory is gone after a trap: the instance cannot be
    // made again (the preopen fails), and calls say so rather than wait.
    let f = Fixture::new();
    let shared = shared_within(&f, 4 << 20).await;
    let credential = shared.open(&options()).await.unwrap().unwrap();
    let moved = f.dir.path().with_extension("moved");
    std::fs::rename(f.dir.path(), &moved).unwrap();
    let huge = "x".repeat(8 << 20);
    let trap = shared.get_token(&credential, &[&huge]).await.unwrap_err();
    assert!(format!("{trap:#}").contains("trapped"), "{trap:#}");
    let err = shared.open(&options()).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("could not be made again"),
        "{err:#}"
    );
    // Back: the host's retry makes it, and calls work again.
    std::fs::rename(&moved, f.dir.path()).unwrap();
    let mut credential = None;
    for _ in 0..60_000 {
        if let Ok(Ok(opened)) = shared.open(&options()).await {
            credential = Some(opened);
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let credential = credential.expect("the instance is made again");
    assert!(
        shared
            .get_token(&credential, &[VAULT])
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_hosts_limit_replaces_the_instance() {
    // The broker holds the request; the credential would wait its minute,
    // but the host allows a call only OVERRUN_LIMIT: the instance is
    // replaced and the call fails saying so, and the next one (under the
    // same limit, ample for a call answered at once) runs in a fresh
    // instance.
    let f = Fixture::new();
    let shared = f
        .builder_on(Host::shared_p3())
        .call_limit(OVERRUN_LIMIT)
        .build_shared()
        .await
        .unwrap();
    let credential = shared.open(&patient()).await.unwrap().unwrap();
    let held = f.broker.hold(1);
    let err = shared.get_token(&credential, &[VAULT]).await.unwrap_err();
    assert!(format!("{err:#}").contains("replaced"), "{err:#}");
    until("the instance replaced", || shared.generation() == 1).await;
    held.release();
    let credential = shared.open(&patient()).await.unwrap().unwrap();
    assert!(
        shared
            .get_token(&credential, &[VAULT])
            .await
            .unwrap()
            .is_ok()
    );
}
