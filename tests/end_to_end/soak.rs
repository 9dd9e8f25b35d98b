//! Sustained faults: thousands of calls across many instances against a
//! broker that randomly mints, rejects, throttles, fails, hangs past the
//! timeout, or drops the connection. Every call ends with a token or a typed
//! error within its deadline; nothing traps; host memory stays flat.

use std::time::{Duration, Instant};

use host_test::{Reply, rss_kib};
use vd_cred_broker::CredentialError as E;
use vd_cred_host::Sandbox;

use crate::{Fixture, VAULT, options};

const TASKS: usize = 8;
const INSTANCES_PER_TASK: usize = 6;
const CALLS_PER_INSTANCE: usize = 42; // 8 * 6 * 42 = 2016 calls
const TIMEOUT_MS: u32 = 250;
/// Scheduling slack on a loaded 2-core machine, on top of the deadline.
const SLACK: Duration = Duration::from_millis(400);

#[derive(Default, Debug)]
struct Tally {
    tokens: usize,
    rejected: usize,
    failed: usize,
    unreachable: usize,
    slowest: Duration,
}

async fn run_instance(mut sandbox: Sandbox, tally: &mut Tally) {
    let mut o = options();
    o.timeout_ms = Some(TIMEOUT_MS);
    o.disable_cache = true;
    let credential = sandbox.open(&o).await.unwrap().unwrap();
    for _ in 0..CALLS_PER_INSTANCE {
        let started = Instant::now();
        // A trap would surface as the outer Err and fail the unwrap.
        let result = sandbox
            .credential_get_token(credential, &[VAULT])
            .await
            .unwrap();
        let took = started.elapsed();
        tally.slowest = tally.slowest.max(took);
        assert!(
            took < Duration::from_millis(TIMEOUT_MS.into()) + SLACK,
            "a call took {took:?}"
        );
        match result {
            Ok(token) => {
                assert!(token.token.starts_with("mock-token-"));
                tally.tokens += 1;
            }
            Err(E::BrokerRejected { status: 401, .. }) => tally.rejected += 1,
            Err(E::BrokerFailed {
                status: 429 | 500, ..
            }) => tally.failed += 1,
            Err(E::BrokerUnreachable(_)) => tally.unreachable += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    let (out, err) = sandbox.output();
    assert!(
        out.is_empty() && err.is_empty(),
        "the component wrote output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_calls_against_a_faulty_broker() {
    let f = std::sync::Arc::new(Fixture::new());
    f.broker.set_default(Reply::OneOf(vec![
        Reply::Mint,
        Reply::Mint,
        Reply::json(401, r#"{"error":"revoked"}"#),
        Reply::json(429, "slow down"),
        Reply::json(500, "boom"),
        Reply::Mint.after(Duration::from_millis(600)), // hangs past the timeout
        Reply::Drop {
            delay: Duration::ZERO,
        },
    ]));

    let started = Instant::now();
    let mut rss = Vec::new();
    let mut total = Tally::default();
    // Two rounds: the first warms allocator and caches; the second must not grow.
    for _round in 0..2 {
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let f = f.clone();
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    for _ in 0..INSTANCES_PER_TASK / 2 {
                        run_instance(f.sandbox().await, &mut tally).await;
                    }
                    tally
                })
            })
            .collect();
        for task in tasks {
            let t = task.await.unwrap();
            total.tokens += t.tokens;
            total.rejected += t.rejected;
            total.failed += t.failed;
            total.unreachable += t.unreachable;
            total.slowest = total.slowest.max(t.slowest);
        }
        rss.push(rss_kib());
    }
    let calls = total.tokens + total.rejected + total.failed + total.unreachable;
    println!(
        "soak: {calls} calls across {} instances in {:.1?}: {total:?}; broker saw {} requests; host RSS after round 1 {} KiB, after round 2 {} KiB",
        TASKS * INSTANCES_PER_TASK,
        started.elapsed(),
        f.broker.request_count(),
        rss[0],
        rss[1],
    );
    assert_eq!(calls, TASKS * INSTANCES_PER_TASK * CALLS_PER_INSTANCE);
    assert!(
        total.tokens > 0 && total.rejected > 0 && total.failed > 0 && total.unreachable > 0,
        "{total:?}"
    );
    let growth = rss[1].saturating_sub(rss[0]);
    assert!(
        growth < 32 * 1024,
        "host RSS grew {growth} KiB between identical rounds"
    );
}
