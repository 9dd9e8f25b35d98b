//! `cargo bench -p host-test --bench cold`: what a new process spends before
//! its first token, phase by phase, as the Python package's constructor and
//! first call spend it. Each sample is a process of its own (this binary run
//! again with `--child`): it loads the host from the precompiled cache (its
//! own cache directory, filled by a first process that compiles), builds a
//! sandbox, opens the credential (no token cache) and makes two calls
//! against one fast loopback broker, the first on a new connection. Prints a
//! Markdown table of medians (p90 in brackets).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use host_test::fast_broker::FastBroker;
use host_test::timing::stats;
use vd_cred_host::{CredentialOptions, Host, HostOptions, default_options};

const VAULT: &str = "https://vault.azure.net/.default";
const PHASES: [&str; 6] = [
    "host load: engine, cache file checked, deserialized, linked",
    "sandbox: store, WASI context, instance",
    "open: the credential's options",
    "first get-token (uncached, new connection)",
    "second get-token (uncached, kept-alive connection)",
    "whole process, start to exit",
];
const PROCESSES: usize = 31;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        return child(
            &args[at + 1],
            Path::new(&args[at + 2]),
            Path::new(&args[at + 3]),
        );
    }
    let broker = FastBroker::start().unwrap();
    let bearer = tempfile::tempdir().unwrap();
    std::fs::write(bearer.path().join("credential"), "vd_iat_bench\n").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let run = || {
        let start = Instant::now();
        let out = Command::new(std::env::current_exe().unwrap())
            .arg("--child")
            .arg(broker.url())
            .arg(bearer.path())
            .arg(cache.path().join("precompiled"))
            .output()
            .unwrap();
        let wall = start.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut phases: Vec<Duration> = String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(|us| Duration::from_micros(us.parse().unwrap()))
            .collect();
        phases.push(wall);
        phases
    };
    let first = run();
    let runs: Vec<Vec<Duration>> = (0..PROCESSES).map(|_| run()).collect();
    println!("| phase | result |\n| --- | --- |");
    println!(
        "| first process: host load, compiling (and caching) the component | {} |",
        stats(vec![first[0]])
    );
    for (i, phase) in PHASES.iter().enumerate() {
        println!(
            "| {phase} | {} |",
            stats(runs.iter().map(|r| r[i]).collect())
        );
    }
}

/// One process's phases, in microseconds, on one line.
fn child(url: &str, bearer: &Path, cache: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut phases = Vec::new();
    let mut t = Instant::now();
    let mut lap = |phases: &mut Vec<u128>| {
        phases.push(t.elapsed().as_micros());
        t = Instant::now();
    };
    let host = Host::embedded_with(HostOptions {
        cache_dir: Some(cache.to_path_buf()),
        ..HostOptions::default()
    })
    .unwrap();
    lap(&mut phases);
    let mut sandbox = runtime
        .block_on(
            host.sandbox()
                .env("VD_CREDENTIAL_BROKER_URL", url)
                .env("VD_CREDENTIAL_FILE", "/run/vd/credential")
                .bearer_dir(bearer, "/run/vd")
                .broker_url(url)
                .build(),
        )
        .unwrap();
    lap(&mut phases);
    let options = CredentialOptions {
        disable_cache: true,
        ..default_options()
    };
    let credential = runtime.block_on(sandbox.open(&options)).unwrap().unwrap();
    lap(&mut phases);
    for _ in 0..2 {
        runtime
            .block_on(sandbox.credential_get_token(credential, &[VAULT]))
            .unwrap()
            .unwrap();
        lap(&mut phases);
    }
    let line: Vec<String> = phases.iter().map(u128::to_string).collect();
    println!("{}", line.join(" "));
}
