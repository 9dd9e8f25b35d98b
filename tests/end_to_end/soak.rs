//! Sustained faults: over ten thousand calls across many instances, against
//! a plain-http broker and an https one (private CA) that randomly mint,
//! reject, throttle, fail, hang far past the timeout, or drop the connection;
//! a broker whose bearer rotates under the callers; and an https broker whose
//! certificate has expired. Every call ends with the outcome its broker's
//! answers call for, and none waits for a hung answer; nothing traps or writes
//! output; on Linux, host memory stays flat while instances live across rounds.
//!
//! No verdict depends on how fast the machine is: the bearer rotates at every
//! [`ROTATE_EVERY`]-th request the broker receives (not every so many ms), and
//! each round's outcomes are checked against what the brokers recorded having
//! answered, not against an expected share. Nor on what runs beside it: the
//! soak runs in a process of its own ([`crate::alone`]), so the memory it
//! measures is its own, not that of tests compiling agents or allocating
//! large strings in the same process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use host_test::broker::BAD_BEARER_BODY;
use host_test::tls::{TestCa, Validity};
use host_test::{MockBroker, Recorded, Reply};
use tempfile::TempDir;
use vd_cred_broker::CredentialError as E;
use vd_cred_host::{Sandbox, TrustedRoots};
use wasmtime::component::ResourceAny;

use crate::{Fixture, GUEST_DIR, VAULT, options};

/// The brokers the calls go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Plain http, every fault.
    Faulty,
    /// https with a private CA the host trusts, every fault.
    FaultyTls,
    /// Mints only for the current bearer, which it rotates at every
    /// [`ROTATE_EVERY`]-th request.
    Rotating,
    /// https with an expired certificate: every handshake is refused.
    Expired,
}

/// Each kind's tasks and the calls each of their instances makes per round.
const KINDS: [(Kind, usize, usize); 4] = [
    (Kind::Faulty, 4, 35),
    (Kind::FaultyTls, 4, 35),
    (Kind::Rotating, 2, 150),
    (Kind::Expired, 2, 150),
];
/// Instances each task keeps for the whole test, and those it makes anew each round.
const KEPT_PER_TASK: usize = 1;
const FRESH_PER_TASK: usize = 2;
const ROUNDS: usize = 4;
/// The calls the test makes (a fact about the constants above, checked at compile time).
const CALLS: usize = {
    let mut calls = 0;
    let mut i = 0;
    while i < KINDS.len() {
        calls += KINDS[i].1 * (KEPT_PER_TASK + FRESH_PER_TASK) * KINDS[i].2 * ROUNDS;
        i += 1;
    }
    calls
};
const _: () = assert!(CALLS >= 10_000, "the soak makes ten thousand calls");
/// The rotating broker rotates its bearer (and rewrites the bearer files) at
/// every this-many-th request, before answering it. With two callers, a
/// call's retry is sometimes itself such a request: its call meets two
/// rotations and ends with the stale-bearer 401.
const ROTATE_EVERY: usize = 3;
/// The deadline of calls to the faulty brokers: under the 1 s per-attempt
/// floor, so an attempt that meets a hang has the whole deadline. The
/// rotating and expired brokers answer at once: their calls keep the default
/// 10 s, so that a loaded machine cannot turn their answers into timeouts.
const TIMEOUT_MS: u32 = 250;
/// A hung answer comes this long after its request arrived. A call that
/// waited for one takes at least this long; a call that honours its 250 ms
/// deadline takes twenty times less, however loaded the machine (a bound at
/// the scale of the fault, not a scheduling slack).
const HANG: Duration = Duration::from_secs(5);
/// Host RSS may grow this much per call once warm (the allocator settles; a
/// leak of a few KiB per call does not fit).
#[cfg(target_os = "linux")]
const GROWTH_PER_CALL_BYTES: u64 = 1024;

/// How one call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Token,
    Rejected,
    Failed,
    TimedOut,
    Dropped,
    /// broker-unreachable naming the TLS handshake.
    TlsRefused,
    /// broker-rejected for a bearer the broker had rotated away from.
    StaleBearer,
}

/// How calls ended, counted.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    tokens: usize,
    rejected: usize,
    failed: usize,
    timed_out: usize,
    dropped: usize,
    tls_refused: usize,
    stale_bearer: usize,
}

impl Tally {
    fn of(outcomes: &[Outcome]) -> Tally {
        let mut t = Tally::default();
        for outcome in outcomes {
            *match outcome {
                Outcome::Token => &mut t.tokens,
                Outcome::Rejected => &mut t.rejected,
                Outcome::Failed => &mut t.failed,
                Outcome::TimedOut => &mut t.timed_out,
                Outcome::Dropped => &mut t.dropped,
                Outcome::TlsRefused => &mut t.tls_refused,
                Outcome::StaleBearer => &mut t.stale_bearer,
            } += 1;
        }
        t
    }

    fn calls(&self) -> usize {
        self.tokens
            + self.rejected
            + self.failed
            + self.timed_out
            + self.dropped
            + self.tls_refused
            + self.stale_bearer
    }
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, t: Tally) {
        self.tokens += t.tokens;
        self.rejected += t.rejected;
        self.failed += t.failed;
        self.timed_out += t.timed_out;
        self.dropped += t.dropped;
        self.tls_refused += t.tls_refused;
        self.stale_bearer += t.stale_bearer;
    }
}

/// One broker of each kind, the bearer files, and the roots trusting the CA.
struct Brokers {
    fixtures: Vec<(Kind, Fixture)>,
    /// One bearer directory per task calling the rotating broker: each task's
    /// bearer names the task, so the broker's log tells the tasks apart.
    rotating_dirs: Vec<TempDir>,
    roots: TrustedRoots,
}

impl Brokers {
    fn fixture(&self, kind: Kind) -> &Fixture {
        &self.fixtures.iter().find(|(k, _)| *k == kind).unwrap().1
    }
}

/// Task `task`'s bearer after `rotations` rotations.
fn rotating_bearer(task: usize, rotations: usize) -> String {
    format!("vd_iat_t{task}_r{rotations:06}")
}

/// The (task, rotations) a request's bearer names.
fn rotating_bearer_of(request: &Recorded) -> (usize, usize) {
    let bearer = request.header("authorization").expect("a bearer");
    let rest = bearer.strip_prefix("Bearer vd_iat_t").expect(bearer);
    let (task, rotations) = rest.split_once("_r").expect(bearer);
    (task.parse().unwrap(), rotations.parse().unwrap())
}

/// Replace the bearer file in `dir` (atomically, by rename), as Studio does.
fn write_bearer(dir: &std::path::Path, bearer: &str) {
    let tmp = dir.join(".credential.tmp");
    std::fs::write(&tmp, format!("{bearer}\n")).unwrap();
    std::fs::rename(&tmp, dir.join("credential")).unwrap();
}

/// Make the rotating broker rotate at every [`ROTATE_EVERY`]-th request:
/// every task's bearer file gets its next bearer and the broker accepts only
/// those, before that request is answered.
fn rotate_every_n_requests(broker: &MockBroker, dirs: Vec<PathBuf>) {
    let mut rotations = 0;
    broker.on_request(move |n, accepted| {
        if n % ROTATE_EVERY == 0 {
            rotations += 1;
            let bearers: Vec<String> = (0..dirs.len())
                .map(|task| rotating_bearer(task, rotations))
                .collect();
            for (dir, bearer) in dirs.iter().zip(&bearers) {
                write_bearer(dir, bearer);
            }
            *accepted = Some(bearers);
        }
    });
}

struct Instance {
    sandbox: Sandbox,
    credential: ResourceAny,
}

/// An instance calling `kind`'s broker, as task `task` of that kind.
async fn open(brokers: &Brokers, kind: Kind, task: usize) -> Instance {
    let f = brokers.fixture(kind);
    let mut builder = f.builder().trusted_roots(brokers.roots.clone());
    if kind == Kind::Rotating {
        builder = builder.bearer_dir(brokers.rotating_dirs[task].path(), GUEST_DIR);
    }
    let mut sandbox = builder.build().await.unwrap();
    let mut o = options();
    if matches!(kind, Kind::Faulty | Kind::FaultyTls) {
        o.timeout_ms = Some(TIMEOUT_MS);
    }
    o.disable_cache = true;
    let credential = sandbox.open(&o).await.unwrap().unwrap();
    Instance {
        sandbox,
        credential,
    }
}

/// Make `calls` calls, checking each outcome against what that outcome must
/// look like, and each call's duration against what its outcome allows.
async fn run_calls(instance: &mut Instance, calls: usize, outcomes: &mut Vec<Outcome>) -> Duration {
    let mut slowest = Duration::ZERO;
    let deadline = Duration::from_millis(TIMEOUT_MS.into());
    for _ in 0..calls {
        let started = Instant::now();
        // A trap would surface as the outer Err and fail the unwrap.
        let result = instance
            .sandbox
            .credential_get_token(instance.credential, &[VAULT])
            .await
            .unwrap();
        let took = started.elapsed();
        slowest = slowest.max(took);
        // Within its deadline, so never waiting for a hung answer: one that
        // did would have lasted the hang at least (see HANG).
        assert!(
            took < HANG,
            "a call took {took:?}, as long as a hung answer: {result:?}"
        );
        let outcome = match result {
            Ok(token) => {
                assert!(token.token.starts_with("mock-token-"), "{}", token.token);
                Outcome::Token
            }
            Err(E::BrokerRejected { status: 401, detail }) if detail.contains("bad bearer") => {
                Outcome::StaleBearer
            }
            Err(E::BrokerRejected { status: 401, .. }) => Outcome::Rejected,
            Err(e @ E::BrokerFailed { status, .. }) => {
                assert!(matches!(status, 429 | 500), "{e}");
                Outcome::Failed
            }
            Err(E::BrokerUnreachable(m)) if m.contains("within 250 ms (timeout-ms)") => {
                // A timeout never comes early, however fast the machine.
                assert!(took >= deadline, "timed out after {took:?}: {m}");
                Outcome::TimedOut
            }
            Err(E::BrokerUnreachable(m))
                if m.ends_with("failed: TLS handshake failed: the broker's certificate has expired: renew it on the broker") =>
            {
                Outcome::TlsRefused
            }
            Err(E::BrokerUnreachable(m)) if m.contains("failed: ") => Outcome::Dropped,
            Err(other) => panic!("unexpected error: {other}"),
        };
        outcomes.push(outcome);
    }
    let (out, err) = instance.sandbox.output();
    assert!(
        out.is_empty() && err.is_empty(),
        "the component wrote output"
    );
    slowest
}

fn is_stale(r: &Recorded) -> bool {
    matches!(&r.answered, Some(Reply::Answer { status: 401, body, .. }) if body == BAD_BEARER_BODY)
}

/// What a faulty broker answered.
#[derive(Debug)]
struct Answered {
    mints: usize,
    /// 401s (none for a stale bearer here: this broker takes any).
    unauthorized: usize,
    /// 429s and 500s.
    failures: usize,
    hangs: usize,
    drops: usize,
}

fn answered(requests: &[Recorded]) -> Answered {
    let count = |f: &dyn Fn(&Reply) -> bool| {
        requests
            .iter()
            .filter(|r| f(r.answered.as_ref().expect("answered")))
            .count()
    };
    Answered {
        mints: count(&|r| matches!(r, Reply::Mint)),
        unauthorized: count(&|r| matches!(r, Reply::Answer { status: 401, .. })),
        failures: count(&|r| {
            matches!(
                r,
                Reply::Answer {
                    status: 429 | 500,
                    ..
                }
            )
        }),
        hangs: count(&|r| matches!(r, Reply::Answer { delay, .. } if *delay >= HANG)),
        drops: count(&|r| matches!(r, Reply::Drop { .. })),
    }
}

/// How one task's calls to the rotating broker ended, from the broker's log
/// alone. The task's calls are sequential, so its requests (told apart by its
/// bearer) come in call order. A call's first request is answered with a mint
/// (a token) or the stale-bearer 401; after that 401 the credential must retry
/// once, with a newer bearer (the broker rewrote the file before it
/// answered), and that retry's answer ends the call: a token, or the 401 again
/// if the broker rotated once more before it arrived. Each call's outcome,
/// and whether it was retried.
fn replay(task: usize, requests: &[&Recorded]) -> Vec<(Outcome, bool)> {
    let mut outcomes = Vec::new();
    let mut requests = requests.iter();
    while let Some(first) = requests.next() {
        let last = match is_stale(first) {
            false => first,
            true => {
                let retry = requests
                    .next()
                    .unwrap_or_else(|| panic!("task {task}: a stale-bearer 401 was not retried"));
                let (was, now) = (rotating_bearer_of(first).1, rotating_bearer_of(retry).1);
                assert!(
                    now > was,
                    "task {task}: retried with bearer {now} after a 401 for bearer {was}"
                );
                retry
            }
        };
        let outcome = match &last.answered {
            Some(Reply::Mint) => Outcome::Token,
            _ if is_stale(last) => Outcome::StaleBearer,
            other => panic!("task {task}: the rotating broker answered {other:?}"),
        };
        outcomes.push((outcome, !std::ptr::eq(first, last)));
    }
    outcomes
}

/// Wait until the mock's thread has noted the end of every handshake it
/// accepted and at least `at_least` failed (the client returns as soon as it
/// refuses; the mock notes it a moment later), then give the count.
async fn settled_failed_handshakes(broker: &MockBroker, at_least: usize) -> usize {
    crate::until("the mock noted every failed handshake", || {
        broker.failed_handshakes() >= at_least
            && broker.failed_handshakes() == broker.connection_count()
    })
    .await;
    broker.failed_handshakes()
}

#[test]
fn ten_thousand_calls_against_faulty_rotating_and_tls_brokers() {
    crate::alone("soak::soak_alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a process of its own by ten_thousand_calls_against_faulty_rotating_and_tls_brokers"]
async fn soak_alone() {
    let faults = Reply::OneOf(vec![
        Reply::Mint,
        Reply::Mint,
        Reply::json(401, r#"{"error":"revoked"}"#),
        Reply::json(429, "slow down"),
        Reply::json(500, "boom"),
        Reply::token("late", 3600).after(HANG),
        Reply::Drop {
            delay: Duration::ZERO,
        },
    ]);
    let ca = TestCa::new().unwrap();
    let roots = ca.roots();
    let tls = |validity| ca.broker(&["localhost"], validity).unwrap();
    let rotating_tasks = KINDS.iter().find(|k| k.0 == Kind::Rotating).unwrap().1;
    let rotating_dirs: Vec<TempDir> = (0..rotating_tasks)
        .map(|task| {
            let dir = tempfile::tempdir().unwrap();
            write_bearer(dir.path(), &rotating_bearer(task, 0));
            dir
        })
        .collect();
    let brokers = Arc::new(Brokers {
        fixtures: vec![
            (Kind::Faulty, Fixture::new()),
            (
                Kind::FaultyTls,
                Fixture::with_broker(tls(Validity::Current)),
            ),
            (Kind::Rotating, Fixture::new()),
            (Kind::Expired, Fixture::with_broker(tls(Validity::Expired))),
        ],
        rotating_dirs,
        roots,
    });
    for kind in [Kind::Faulty, Kind::FaultyTls] {
        brokers.fixture(kind).broker.set_default(faults.clone());
    }
    let rotating = &brokers.fixture(Kind::Rotating).broker;
    rotating.accept_bearers(Some(
        (0..rotating_tasks)
            .map(|task| rotating_bearer(task, 0))
            .collect(),
    ));
    rotate_every_n_requests(
        rotating,
        brokers
            .rotating_dirs
            .iter()
            .map(|d| d.path().to_path_buf())
            .collect(),
    );

    let started = Instant::now();
    // (kind, task of that kind, calls per instance, kept instances)
    let mut kept: Vec<(Kind, usize, usize, Vec<Instance>)> = Vec::new();
    for (kind, tasks, calls) in KINDS {
        for task in 0..tasks {
            let mut mine = Vec::new();
            for _ in 0..KEPT_PER_TASK {
                mine.push(open(&brokers, kind, task).await);
            }
            kept.push((kind, task, calls, mine));
        }
    }
    #[cfg(target_os = "linux")]
    let mut rss = Vec::new();
    let mut totals: Vec<(Kind, Tally)> = KINDS.iter().map(|k| (k.0, Tally::default())).collect();
    let mut slowest = Duration::ZERO;
    // The rotating broker's requests so far (its log is taken each round).
    let mut rotating_requests = 0;
    let mut stale_answers = 0;
    let mut recovered = 0;
    let mut refused_handshakes = 0;
    for _round in 0..ROUNDS {
        let tasks: Vec<_> = kept
            .drain(..)
            .map(|(kind, task, calls, mut mine)| {
                let brokers = brokers.clone();
                tokio::spawn(async move {
                    let (mut outcomes, mut slowest) = (Vec::new(), Duration::ZERO);
                    for instance in &mut mine {
                        slowest = slowest.max(run_calls(instance, calls, &mut outcomes).await);
                    }
                    for _ in 0..FRESH_PER_TASK {
                        let mut instance = open(&brokers, kind, task).await;
                        slowest = slowest.max(run_calls(&mut instance, calls, &mut outcomes).await);
                    }
                    (kind, task, calls, mine, outcomes, slowest)
                })
            })
            .collect();
        let mut round: Vec<(Kind, Tally)> = KINDS.iter().map(|k| (k.0, Tally::default())).collect();
        let mut rotating_outcomes = Vec::new();
        for task in tasks {
            let (kind, task, calls, mine, outcomes, s) = task.await.unwrap();
            kept.push((kind, task, calls, mine));
            *round
                .iter_mut()
                .find(|(k, _)| *k == kind)
                .map(|(_, t)| t)
                .unwrap() += Tally::of(&outcomes);
            if kind == Kind::Rotating {
                rotating_outcomes.push((task, outcomes));
            }
            slowest = slowest.max(s);
        }
        // Every call is recorded at its broker before it is answered, so each
        // log now holds the whole round.
        for (kind, tally) in &round {
            let broker = &brokers.fixture(*kind).broker;
            let requests = broker.take_requests();
            match kind {
                Kind::Faulty | Kind::FaultyTls => check_faulty(*kind, tally, &requests),
                Kind::Rotating => {
                    // Each task's calls ended exactly as the broker's log
                    // says they must have, in order.
                    for (task, outcomes) in &rotating_outcomes {
                        let mine: Vec<&Recorded> = requests
                            .iter()
                            .filter(|r| rotating_bearer_of(r).0 == *task)
                            .collect();
                        let replayed = replay(*task, &mine);
                        let expected: Vec<Outcome> = replayed.iter().map(|c| c.0).collect();
                        assert_eq!(*outcomes, expected, "task {task}");
                        recovered += replayed
                            .iter()
                            .filter(|c| c == &&(Outcome::Token, true))
                            .count();
                    }
                    // The broker rotated at every ROTATE_EVERY-th request,
                    // which therefore carried a bearer it had just rotated away from.
                    for (i, r) in requests.iter().enumerate() {
                        let n = rotating_requests + i + 1;
                        assert!(n % ROTATE_EVERY != 0 || is_stale(r), "request {n}: {r:?}");
                    }
                    rotating_requests += requests.len();
                    stale_answers += requests.iter().filter(|r| is_stale(r)).count();
                }
                Kind::Expired => {
                    // Refused at the handshake, never retried, never sent:
                    // one failed handshake at the broker for each call.
                    assert!(requests.is_empty());
                    let handshakes =
                        settled_failed_handshakes(broker, refused_handshakes + tally.tls_refused)
                            .await;
                    assert_eq!(
                        (tally.tls_refused, tally.calls()),
                        (
                            handshakes - refused_handshakes,
                            handshakes - refused_handshakes
                        ),
                        "{tally:?}"
                    );
                    refused_handshakes = handshakes;
                }
            }
        }
        for (total, (_, t)) in totals.iter_mut().zip(&round) {
            total.1 += *t;
        }
        #[cfg(target_os = "linux")]
        rss.push(host_test::rss_kib().expect("VmRSS in /proc/self/status"));
    }
    let sum = totals.iter().fold(Tally::default(), |mut a, (_, t)| {
        a += *t;
        a
    });
    let rotations = rotating_requests / ROTATE_EVERY;
    println!(
        "soak: {ROUNDS} rounds, {CALLS} calls in {:.1?}: {sum:?}, by broker {totals:?}; \
         {rotations} rotations, {stale_answers} answers to a stale bearer, {recovered} calls \
         recovered by the retry, {} ended by a second rotation; slowest call {slowest:?}",
        started.elapsed(),
        sum.stale_bearer,
    );
    assert!(
        sum.tokens > 0
            && sum.rejected > 0
            && sum.failed > 0
            && sum.timed_out > 0
            && sum.dropped > 0
            && sum.tls_refused > 0,
        "every fault kind was seen: {sum:?}"
    );
    // The rotations happened under the callers (each met at least the
    // request it was made at), and the retry with the new bearer recovered
    // calls from them.
    assert!(rotations > 0 && stale_answers >= rotations && recovered > 0);
    #[cfg(target_os = "linux")]
    check_rss(&rss);
}

/// On Linux (the only system this check runs on, by `cfg`): rounds after the
/// first two (the warm-up: allocator and caches warm, every kind of
/// instance made) must not grow host memory by more than the per-call allowance, with
/// the kept instances still alive: a leak in the host or inside the
/// component shows. The RSS is the soak's process's alone (see the module's
/// comment).
#[cfg(target_os = "linux")]
fn check_rss(rss: &[u64]) {
    let calls_per_round = (CALLS / ROUNDS) as u64;
    let allowance_kib = GROWTH_PER_CALL_BYTES * calls_per_round / 1024;
    println!("soak: host RSS after each round {rss:?} KiB (allowance {allowance_kib} KiB a round)");
    for pair in rss[1..].windows(2) {
        let growth = pair[1].saturating_sub(pair[0]);
        assert!(
            growth <= allowance_kib,
            "host RSS grew {growth} KiB in a warm round of {calls_per_round} calls (allowance {allowance_kib} KiB): {rss:?}"
        );
    }
}

/// A faulty broker's round: outcomes match what it answered, whatever the
/// machine's speed. Every hang ends its call as a timeout (250 ms is under the
/// 1 s per-attempt floor, so an attempt has the whole deadline, and a hang
/// outlasts it); a token needs a prompt mint, a broker-rejected a 401 (not
/// retried: the bearer never changes here), a broker-failed a 429 or 500, a
/// dropped call a drop. A call can also run out of time with an answer on
/// its way (the more so the slower the machine): a mint or 401 so cut short
/// ends as a timeout, which the count of timeouts beyond the hangs must
/// account for. Drops, 429s and 500s are retried, so they end a call only
/// sometimes.
fn check_faulty(kind: Kind, round: &Tally, requests: &[Recorded]) {
    let a = answered(requests);
    assert!(round.timed_out >= a.hangs, "{kind:?} {round:?}: {a:?}");
    assert!(
        round.tokens <= a.mints
            && round.rejected <= a.unauthorized
            && round.failed <= a.failures
            && round.dropped <= a.drops,
        "{kind:?} {round:?}: {a:?}"
    );
    let cut_short = round.timed_out - a.hangs;
    assert!(
        (a.mints - round.tokens) + (a.unauthorized - round.rejected) <= cut_short,
        "{kind:?} {round:?}: {a:?}"
    );
    assert_eq!(
        round.tls_refused + round.stale_bearer,
        0,
        "{kind:?} {round:?}"
    );
}
