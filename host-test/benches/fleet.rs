//! `cargo bench -p host-test --bench fleet`: many agents on one host. For 1,
//! 100 and 1,000 live sandboxes, each with its own bearer, all ask for a
//! token at once against the fast loopback broker with 0 ms and with 20 ms of
//! added latency: the wave's wall time, p50 / p99 per call (from the common
//! start), the mints the broker saw, host RSS per instance; then a second wave
//! with every token cached. Memory per agent is the host's RSS growth, and
//! its anonymous part alone (RSS also counts the precompiled component's
//! data pages, which every instance maps from the same file and shares, once
//! per instance). Beside it, the same waves with the original Python
//! credential: one process per agent (up to [`MAX_PROCESSES`], memory
//! permitting) and threads in one process. Prints a Markdown table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use host_test::fast_broker::FastBroker;
use host_test::original::OriginalPython;
use host_test::wave::{Wave, show};
use host_test::{rss_anon_kib, rss_kib};
use tokio::sync::watch;
use vd_cred_host::{
    COMPONENT_WASM, CredentialOptions, Host, HostOptions, Sandbox, default_options,
};
use wasmtime::component::ResourceAny;

const VAULT: &str = "https://vault.azure.net/.default";
const SIZES: [usize; 3] = [1, 100, 1000];
const LATENCIES: [Duration; 2] = [Duration::ZERO, Duration::from_millis(20)];
/// Python processes started at most for one wave (each holds about 25 MB, and
/// starting one takes about 0.15 s of CPU on this machine's 2 cores).
const MAX_PROCESSES: usize = 250;

struct Agent {
    sandbox: Sandbox,
    credential: ResourceAny,
    _dir: tempfile::TempDir,
}

async fn agent(host: &Host, url: &str, i: usize) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("credential"),
        format!("vd_iat_agent_{i:05}\n"),
    )
    .unwrap();
    let mut sandbox = host
        .sandbox()
        .env("VD_CREDENTIAL_BROKER_URL", url)
        .env("VD_CREDENTIAL_FILE", "/run/vd/credential")
        .bearer_dir(dir.path(), "/run/vd")
        .broker_url(url)
        .build()
        .await
        .unwrap();
    let options = CredentialOptions {
        ..default_options()
    };
    let credential = sandbox.open(&options).await.unwrap().unwrap();
    Agent {
        sandbox,
        credential,
        _dir: dir,
    }
}

/// Every agent calls `get-token` at once (released together); each call's
/// time counts from the release.
async fn wave(agents: Vec<Agent>) -> (Vec<Agent>, Wave) {
    let (go, ready) = watch::channel(false);
    let tasks: Vec<_> = agents
        .into_iter()
        .map(|mut a| {
            let mut ready = ready.clone();
            tokio::spawn(async move {
                ready.wait_for(|go| *go).await.unwrap();
                let start = Instant::now();
                let token = a
                    .sandbox
                    .credential_get_token(a.credential, &[VAULT])
                    .await
                    .unwrap();
                (a, start, token.is_ok(), Instant::now())
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
        let (a, _, ok, done) = task.await.unwrap();
        assert!(ok, "every agent gets its token");
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

/// The original in `n` processes (or fewer when memory runs short), all
/// released at once.
fn original_processes(original: &OriginalPython, n: usize) -> anyhow::Result<(usize, Wave, u64)> {
    let mut waiting = Vec::new();
    let mut rss = 0;
    for _ in 0..n {
        let available = std::fs::read_to_string("/proc/meminfo")?
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        // At most MAX_PROCESSES, and 8 GiB left free for the rest.
        if waiting.len() >= MAX_PROCESSES || available < 8 * 1024 * 1024 {
            break;
        }
        let w = original.agent()?;
        rss += w.rss_kib;
        waiting.push(w);
    }
    let count = waiting.len();
    let released = Instant::now();
    let release = std::time::SystemTime::now();
    for w in &mut waiting {
        w.go(release)?;
    }
    let mut times = Vec::new();
    for w in &mut waiting {
        times.extend(w.times()?);
    }
    // Each process times its call from the common release; the wave's wall
    // is until the last answer was reported (not until the processes exit).
    let wall = released.elapsed();
    for w in waiting {
        w.finish()?;
    }
    Ok((count, Wave { wall, times }, rss / count.max(1) as u64))
}

fn original_threads(original: &OriginalPython, n: usize) -> anyhow::Result<(Wave, u64)> {
    let mut w = original.threads(n)?;
    let rss = w.rss_kib;
    let released = Instant::now();
    w.go(std::time::SystemTime::now())?;
    let times = w.times()?;
    let wall = released.elapsed();
    w.finish()?;
    Ok((Wave { wall, times }, rss))
}

/// Give freed heap memory back to the system, so that a fleet's RSS growth
/// is not hidden by memory a previous fleet left behind.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let host = Host::load_with(
        COMPONENT_WASM,
        HostOptions {
            pooling: Some(1100),
            ..Default::default()
        },
    )
    .unwrap();
    let mut rows = vec![
        "| agents | broker latency | client | first wave: wall | p50 | p99 | mints seen | cached wave: wall | p50 | p99 | memory per agent |".to_string(),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |".to_string(),
    ];
    for latency in LATENCIES {
        let broker = Arc::new(FastBroker::with_latency(latency).unwrap());
        let url = broker.url();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credential");
        std::fs::write(&file, "vd_iat_original\n").unwrap();
        let original = OriginalPython::ensure(&[
            ("VD_CREDENTIAL_BROKER_URL", url.as_str()),
            ("VD_CREDENTIAL_FILE", file.to_str().unwrap()),
            ("VD_CREDENTIAL_LANE", "user"),
            ("VD_CREDENTIAL_CONFIGURATION_REVISION", "1"),
        ]);
        for n in SIZES {
            trim_heap();
            let base = rss_kib().unwrap_or(0);
            let base_anon = rss_anon_kib().unwrap_or(0);
            let agents = runtime.block_on(async {
                let mut agents = Vec::new();
                for i in 0..n {
                    agents.push(agent(&host, &url, i).await);
                }
                agents
            });
            let before = broker.requests();
            let (agents, first) = runtime.block_on(wave(agents));
            let mints = broker.requests() - before;
            let (agents, cached) = runtime.block_on(wave(agents));
            assert_eq!(
                broker.requests() - before,
                mints,
                "the second wave is cached"
            );
            let per_agent = rss_kib().unwrap_or(0).saturating_sub(base) as f64 / n as f64;
            let anon = rss_anon_kib().unwrap_or(0).saturating_sub(base_anon) as f64 / n as f64;
            rows.push(format!(
                "| {n} | {} ms | this component, our host | {} | {} | {} | {mints} | {} | {} | {} | {per_agent:.0} KiB RSS, {anon:.0} KiB private (host growth / agents) |",
                latency.as_millis(),
                show(first.wall),
                show(first.at(0.5)),
                show(first.at(0.99)),
                show(cached.wall),
                show(cached.at(0.5)),
                show(cached.at(0.99)),
            ));
            drop(agents);
            match &original {
                Ok(original) => {
                    let before = broker.requests();
                    match original_processes(original, n) {
                        Ok((count, w, rss)) => rows.push(format!(
                            "| {count} | {} ms | original, a process per agent | {} | {} | {} | {} | (no cache) | | | {rss} KiB (each process's RSS) |",
                            latency.as_millis(),
                            show(w.wall),
                            show(w.at(0.5)),
                            show(w.at(0.99)),
                            broker.requests() - before,
                        )),
                        Err(e) => rows.push(format!("| {n} | | original, processes: not run: {e:#} |")),
                    }
                    let before = broker.requests();
                    match original_threads(original, n) {
                        Ok((w, rss)) => rows.push(format!(
                            "| {n} | {} ms | original, threads in one process | {} | {} | {} | {} | (no cache) | | | {:.0} KiB (process RSS / agents) |",
                            latency.as_millis(),
                            show(w.wall),
                            show(w.at(0.5)),
                            show(w.at(0.99)),
                            broker.requests() - before,
                            rss as f64 / n as f64,
                        )),
                        Err(e) => rows.push(format!("| {n} | | original, threads: not run: {e:#} |")),
                    }
                }
                Err(e) => rows.push(format!("| {n} | | original: not run: {e:#} |")),
            }
        }
    }
    for row in rows {
        println!("{row}");
    }
}
