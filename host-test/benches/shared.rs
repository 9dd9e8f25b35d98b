//! `cargo bench -p host-test --bench shared`: the fleet benchmark (see
//! `fleet.rs`) with the WASI 0.3 build's one shared instance beside the WASI
//! 0.2 build's one instance per agent. Every agent holds the same bearer
//! (one intent session: the case sharing is for) and asks for the same
//! audience at once. For 1, 100 and 1,000 agents, against the fast loopback
//! broker with 0 ms and 20 ms of added latency:
//!
//! - 0.2, an instance per agent: N sandboxes, each with a credential opened;
//!   all N call `get-token` at once;
//! - 0.3, one shared instance: one instance, one credential opened in it, and
//!   N agents (tasks, each with a clone of the [`SharedCredential`] and the
//!   handle); all N call `get-token` at once;
//! - 0.3, sharded: as many shared instances as the machine has cores
//!   ([`Shards`]), the credential opened in each, every agent assigned one.
//!
//! The first wave's wall time, p50 / p99 per call (from the common release),
//! the mints the broker saw; then [`CACHED_WAVES`] more, every token cached,
//! of which the one with the median wall time is shown (one wave's wall
//! time moves by half from run to run on a busy machine). Memory
//! per agent is the host's RSS growth from before the configuration was
//! built to after the first cached wave, over N (and its anonymous part alone); for the
//! shared instances, also their own fixed cost (built, credential opened in
//! each, no agent yet) and the per-agent part without it. The engines and
//! compiled components are loaded, and one call of each build made, before
//! any baseline: no row counts them. Prints a Markdown table; asserts nothing
//! about time.

use std::future::Future;
use std::time::{Duration, Instant};

use host_test::fast_broker::FastBroker;
use host_test::wave::{Wave, show};
use host_test::{rss_anon_kib, rss_kib};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use vd_cred_host::shards::Shards;
use vd_cred_host::shared::{SharedCredential, SharedHandle};
use vd_cred_host::{
    Build, COMPONENT_P3_WASM, COMPONENT_WASM, Host, HostOptions, Sandbox, default_options,
};
use wasmtime::component::ResourceAny;

const VAULT: &str = "https://vault.azure.net/.default";
const SIZES: [usize; 3] = [1, 100, 1000];
/// How many cached waves each row runs (the median is shown).
const CACHED_WAVES: usize = 5;
const LATENCIES: [Duration; 2] = [Duration::ZERO, Duration::from_millis(20)];
const GUEST_DIR: &str = "/run/vd";
const GUEST_FILE: &str = "/run/vd/credential";
/// The one bearer every agent holds.
const BEARER: &str = "vd_iat_shared_intent_session\n";

/// RSS and its anonymous part, KiB.
#[derive(Clone, Copy)]
struct Memory {
    rss: i64,
    anon: i64,
}

fn memory() -> Memory {
    Memory {
        rss: rss_kib().unwrap_or(0) as i64,
        anon: rss_anon_kib().unwrap_or(0) as i64,
    }
}

impl std::ops::Sub for Memory {
    type Output = Memory;
    fn sub(self, base: Memory) -> Memory {
        Memory {
            rss: self.rss - base.rss,
            anon: self.anon - base.anon,
        }
    }
}

/// The process's peak RSS (`VmHWM`) since the last
/// [`host_test::reset_peak_rss`], KiB.
fn peak_kib() -> Option<i64> {
    host_test::peak_rss_kib().map(|kib| kib as i64)
}

/// Give freed heap memory back to the system, so that a configuration's RSS
/// growth is not hidden by memory a previous one left behind (as fleet.rs).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// An agent of the 0.2 build: an instance of its own.
struct P2Agent {
    sandbox: Sandbox,
    credential: ResourceAny,
}

async fn p2_agent(host: &Host, url: &str, bearer: &std::path::Path) -> P2Agent {
    let mut sandbox = host
        .sandbox()
        .env("VD_CREDENTIAL_BROKER_URL", url)
        .env("VD_CREDENTIAL_FILE", GUEST_FILE)
        .bearer_dir(bearer, GUEST_DIR)
        .broker_url(url)
        .build()
        .await
        .unwrap();
    let credential = sandbox.open(&default_options()).await.unwrap().unwrap();
    P2Agent {
        sandbox,
        credential,
    }
}

async fn p2_call(mut a: P2Agent) -> (P2Agent, String) {
    let token = a
        .sandbox
        .credential_get_token(a.credential, &[VAULT])
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("a 0.2 agent's get-token failed: {e}"));
    (a, token.token)
}

/// An agent of the 0.3 build: a clone of the one instance, and the one
/// credential opened in it.
#[derive(Clone)]
struct P3Agent {
    shared: SharedCredential,
    handle: SharedHandle,
}

async fn p3_shards(host: &Host, url: &str, bearer: &std::path::Path, shards: usize) -> Shards {
    let shards = host
        .sandbox()
        .env("VD_CREDENTIAL_BROKER_URL", url)
        .env("VD_CREDENTIAL_FILE", GUEST_FILE)
        .bearer_dir(bearer, GUEST_DIR)
        .broker_url(url)
        .build_shards(shards)
        .await
        .unwrap();
    for shard in shards.shards() {
        shard
            .open_shared(&default_options())
            .await
            .unwrap()
            .unwrap();
    }
    shards
}

/// A new agent: the shard it is assigned, and the credential opened there.
async fn p3_agent(shards: &Shards) -> P3Agent {
    let shared = shards.assign();
    let handle = shared
        .open_shared(&default_options())
        .await
        .unwrap()
        .unwrap();
    P3Agent { shared, handle }
}

async fn p3_call(a: P3Agent) -> (P3Agent, String) {
    let token = a
        .shared
        .get_token(&a.handle, &[VAULT])
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("a 0.3 agent's get-token failed: {e}"));
    (a, token.token)
}

/// Every agent makes its call at once (tasks released together); each
/// call's time counts from the release. Checks each token is non-empty.
async fn wave<A, F>(agents: Vec<A>, call: fn(A) -> F) -> (Vec<A>, Wave)
where
    A: Send + 'static,
    F: Future<Output = (A, String)> + Send + 'static,
{
    let (go, ready) = watch::channel(false);
    let tasks: Vec<_> = agents
        .into_iter()
        .map(|a| {
            let mut ready = ready.clone();
            tokio::spawn(async move {
                ready.wait_for(|go| *go).await.unwrap();
                let out = call(a).await;
                (out, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await; // every task waiting
    let released = Instant::now();
    go.send(true).unwrap();
    let mut agents = Vec::new();
    let mut times = Vec::new();
    let mut last = released;
    for task in tasks {
        let ((a, token), done) = task.await.unwrap();
        assert!(!token.is_empty(), "every agent gets a token");
        times.push(done - released);
        last = last.max(done);
        agents.push(a);
    }
    (
        agents,
        Wave {
            wall: last - released,
            times,
        },
    )
}

/// [`CACHED_WAVES`] cached waves one after another, `first` being the
/// first of them: the one of median wall time.
async fn more_cached_waves<A, F>(
    mut agents: Vec<A>,
    call: fn(A) -> F,
    first: Wave,
) -> (Vec<A>, Wave)
where
    A: Send + 'static,
    F: Future<Output = (A, String)> + Send + 'static,
{
    let mut waves = vec![first];
    while waves.len() < CACHED_WAVES {
        let (back, one) = wave(agents, call).await;
        agents = back;
        waves.push(one);
    }
    waves.sort_by_key(|w| w.wall);
    (agents, waves.swap_remove(CACHED_WAVES / 2))
}

/// What one (build, N, latency) configuration measured.
struct Row {
    build: String,
    n: usize,
    latency: Duration,
    first: Wave,
    mints: usize,
    cached: Wave,
    cached_mints: usize,
    /// Connections the broker accepted for the configuration.
    connections: usize,
    /// Growth from the baseline to after the first cached wave, agents
    /// still alive.
    growth: Memory,
    /// The same after giving freed heap back (`malloc_trim`): what stays.
    retained: Memory,
    /// The shared instance's own cost (before any agent), if any.
    fixed: Option<Memory>,
    /// Peak RSS over the baseline, if the peak could be reset.
    peak: Option<i64>,
}

impl Row {
    fn markdown(&self) -> String {
        let n = self.n as f64;
        let per = |total: i64, fixed: Option<i64>| match fixed {
            None => format!("{:.1}", total as f64 / n),
            Some(f) => format!(
                "{:.1} (without the instance: {:.1})",
                total as f64 / n,
                (total - f) as f64 / n
            ),
        };
        format!(
            "| {} | {} | {} ms | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.build,
            self.n,
            self.latency.as_millis(),
            show(self.first.wall),
            show(self.first.at(0.5)),
            show(self.first.at(0.99)),
            self.mints,
            self.cached_mints,
            per(self.growth.rss, self.fixed.map(|f| f.rss)),
            per(self.growth.anon, self.fixed.map(|f| f.anon)),
            show(self.cached.wall),
            show(self.cached.at(0.99)),
            match self.peak {
                Some(p) => format!("{:.1}", p as f64 / n),
                None => "n/a".into(),
            },
            per(self.retained.anon, self.fixed.map(|f| f.anon)),
            match self.fixed {
                Some(f) => format!("{} / {}", f.rss, f.anon),
                None => "-".into(),
            },
            self.connections,
        )
    }
}

/// Let tasks finishing in the background (a dropped shared instance's
/// driver) end, then give freed memory back.
fn settle(runtime: &Runtime) {
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });
    trim_heap();
}

fn p2_row(
    runtime: &Runtime,
    host: &Host,
    broker: &FastBroker,
    bearer: &std::path::Path,
    n: usize,
    latency: Duration,
) -> Row {
    let url = broker.url();
    settle(runtime);
    let base = memory();
    let peaked = host_test::reset_peak_rss();
    let connected = broker.connections();
    let agents = runtime.block_on(async {
        let mut agents = Vec::with_capacity(n);
        for _ in 0..n {
            agents.push(p2_agent(host, &url, bearer).await);
        }
        agents
    });
    let before = broker.requests();
    let (agents, first) = runtime.block_on(wave(agents, p2_call));
    let mints = broker.requests() - before;
    let (agents, cached) = runtime.block_on(wave(agents, p2_call));
    // Memory after the first wave and one cached wave, as the rows were
    // always measured; the other cached waves only time.
    let growth = memory() - base;
    let peak = peak_kib().filter(|_| peaked).map(|p| p - base.rss);
    let (agents, cached) = runtime.block_on(more_cached_waves(agents, p2_call, cached));
    let cached_mints = broker.requests() - before - mints;
    trim_heap();
    let retained = memory() - base;
    drop(agents);
    Row {
        build: "0.2, an instance per agent".into(),
        n,
        latency,
        first,
        mints,
        cached,
        cached_mints,
        connections: broker.connections() - connected,
        growth,
        retained,
        fixed: None,
        peak,
    }
}

#[allow(clippy::too_many_arguments)]
fn p3_row(
    runtime: &Runtime,
    host: &Host,
    broker: &FastBroker,
    bearer: &std::path::Path,
    n: usize,
    latency: Duration,
    shards: usize,
) -> Row {
    let url = broker.url();
    settle(runtime);
    let base = memory();
    let peaked = host_test::reset_peak_rss();
    let connected = broker.connections();
    let built = runtime.block_on(p3_shards(host, &url, bearer, shards));
    let fixed = memory() - base;
    let agents: Vec<P3Agent> = runtime.block_on(async {
        let mut agents = Vec::with_capacity(n);
        for _ in 0..n {
            agents.push(p3_agent(&built).await);
        }
        agents
    });
    let before = broker.requests();
    let (agents, first) = runtime.block_on(wave(agents, p3_call));
    let mints = broker.requests() - before;
    let (agents, cached) = runtime.block_on(wave(agents, p3_call));
    // Memory after the first wave and one cached wave, as the rows were
    // always measured; the other cached waves only time.
    let growth = memory() - base;
    let peak = peak_kib().filter(|_| peaked).map(|p| p - base.rss);
    let (agents, cached) = runtime.block_on(more_cached_waves(agents, p3_call, cached));
    let cached_mints = broker.requests() - before - mints;
    trim_heap();
    let retained = memory() - base;
    for shard in built.shards() {
        assert_eq!(shard.calls_in_progress(), 0, "every call answered");
        assert_eq!(shard.generation(), 0, "no call trapped");
    }
    drop(agents);
    drop(built); // an instance's task ends once every clone is gone
    Row {
        build: match shards {
            1 => "0.3, one shared instance".into(),
            k => format!("0.3, {k} shared instances (shards)"),
        },
        n,
        latency,
        first,
        mints,
        cached,
        cached_mints,
        connections: broker.connections() - connected,
        growth,
        retained,
        fixed: Some(fixed),
        peak,
    }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    format!("machine: {cores} cores (nproc), {model}")
}

fn main() {
    let started = Instant::now();
    println!("{}", machine());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The 0.2 host as fleet.rs loads it (pooling for 1,000 instances); the
    // 0.3 host for its one instance.
    let p2 = Host::load_with(
        COMPONENT_WASM,
        HostOptions {
            pooling: Some(1100),
            ..Default::default()
        },
    )
    .unwrap();
    let p3 = Host::load_with(COMPONENT_P3_WASM, HostOptions::default()).unwrap();
    assert_eq!(p2.build(), Build::P2);
    assert_eq!(p3.build(), Build::P3);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("credential"), BEARER).unwrap();
    let bearer = dir.path();

    // Warm up: one call of each build, so that no row pays for first use
    // (code paged in, allocator and runtime pools grown).
    {
        let broker = FastBroker::start().unwrap();
        let url = broker.url();
        runtime.block_on(async {
            let a = p2_agent(&p2, &url, bearer).await;
            let (_a, token) = p2_call(a).await;
            assert!(!token.is_empty());
            let shards = p3_shards(&p3, &url, bearer, 1).await;
            let (_b, token) = p3_call(p3_agent(&shards).await).await;
            assert!(!token.is_empty());
        });
    }

    let mut rows = vec![
        "| build | agents | broker latency | first wave: wall | p50 | p99 | mints seen (first / cached waves) | RSS KiB/agent | anon KiB/agent | cached wave (median of 5): wall | cached p99 | peak RSS KiB/agent | anon KiB/agent retained (after malloc_trim) | instance fixed cost, KiB (RSS / anon) | broker connections |".to_string(),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |".to_string(),
    ];
    // One shard per core, as the sharded rows build.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for latency in LATENCIES {
        let broker = FastBroker::with_latency(latency).unwrap();
        for n in SIZES {
            let row = p2_row(&runtime, &p2, &broker, bearer, n, latency);
            rows.push(row.markdown());
            let row = p3_row(&runtime, &p3, &broker, bearer, n, latency, 1);
            rows.push(row.markdown());
            if cores > 1 {
                let row = p3_row(&runtime, &p3, &broker, bearer, n, latency, cores);
                rows.push(row.markdown());
            }
        }
    }
    for row in rows {
        println!("{row}");
    }
    println!();
    println!(
        "RSS / anon KiB per agent: the process's growth from before the configuration was built \
         to after the first cached wave (agents alive), over the agents, as fleet.rs measures it (heap the \
         waves freed but malloc kept is counted). Retained: the same after malloc_trim gave free \
         heap back. Peak: the process's peak RSS (VmHWM, reset at the baseline) over the \
         baseline, over the agents. For the shared instances the first figure includes their \
         own fixed cost (built, credential opened in each, before any agent: its column); \
         the one in brackets is (growth - fixed cost) / agents, what each agent adds; peak \
         includes the fixed cost. The process holds the harness too: a tokio task per agent \
         during a wave (its future is about 0.5 KiB) and the fast broker, in-process, with a \
         thread and buffers per connection (N connections for the 0.2 rows, one per instance \
         for the 0.3 rows: its column). The sharded rows build one shared instance per core \
         and assign each agent the one the fewest agents hold. Engines and compiled components are loaded, and one call of each \
         build made, before every baseline: no row counts them."
    );
    println!("run took {:.1} s", started.elapsed().as_secs_f64());
}
