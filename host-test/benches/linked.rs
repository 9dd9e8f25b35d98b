//! `cargo bench -p host-test --bench linked`: what linking an agent's
//! `token-credential` import to a credential in its own sandbox costs, next
//! to calling the credential directly, in one run against the loopback mock
//! broker. Prints a Markdown table; figures are medians (p90 in brackets).

use std::time::{Duration, Instant};

use host_test::agent::test_agent::{self, TestAgent};
use host_test::{MockBroker, rss_kib};
use vd_cred_host::linked::{AgentLimits, AgentPolicy, LinkedCredential};
use vd_cred_host::runner::AgentBuilder;
use vd_cred_host::{Host, Sandbox, default_options};

const VAULT: &str = "https://vault.azure.net/.default";

fn stats(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    format!(
        "{:.2} us ({:.2} us p90, n={})",
        at(0.5).as_nanos() as f64 / 1e3,
        at(0.9).as_nanos() as f64 / 1e3,
        samples.len()
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let broker = MockBroker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("credential"), "vd_iat_bench\n").unwrap();
    let host = Host::shared();
    let sandbox = || {
        rt.block_on(
            host.sandbox()
                .env("VD_CREDENTIAL_BROKER_URL", broker.url())
                .env("VD_CREDENTIAL_FILE", "/run/vd/credential")
                .bearer_dir(dir.path(), "/run/vd")
                .broker_url(broker.url())
                .build(),
        )
        .unwrap()
    };
    let pre = test_agent::load(host.engine()).unwrap();
    let agent = |s: Sandbox| {
        // Each export call opens a credential and mints once: a budget that
        // never holds the benchmark back (the bucket is still checked).
        let limits = AgentLimits {
            mints_per_minute: u32::MAX,
            ..AgentLimits::default()
        };
        let linked = LinkedCredential::new(s, AgentPolicy::new("bench").limits(limits));
        let builder = AgentBuilder::default().credential_broker(broker.url());
        rt.block_on(TestAgent::new(builder, host.engine(), &pre, linked))
            .unwrap()
    };
    let mut rows = Vec::new();

    // A cached get-token, called directly on the credential's sandbox.
    let mut direct = sandbox();
    let credential = rt
        .block_on(direct.open(&default_options()))
        .unwrap()
        .unwrap();
    let call = |s: &mut Sandbox| {
        rt.block_on(s.credential_get_token(credential, &[VAULT]))
            .unwrap()
            .unwrap()
    };
    call(&mut direct);
    let samples: Vec<Duration> = (0..20_000)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(call(&mut direct));
            t.elapsed()
        })
        .collect();
    rows.push((
        "cached get-token, direct call into the credential's store".to_string(),
        stats(samples),
    ));

    // The same, from inside an agent through the host's link: the agent calls
    // get-token `n` times in one export call; the per-call cost is the
    // difference between n = 1001 and n = 1, over 1000.
    let mut a = agent(sandbox());
    let options = test_agent::no_options();
    let mut run = |n: u32| {
        let t = Instant::now();
        rt.block_on(a.token(&options, &[VAULT], n))
            .unwrap()
            .unwrap();
        t.elapsed()
    };
    run(10);
    let per_call: Vec<Duration> = (0..40)
        .map(|_| {
            let one = run(1);
            let many = run(1001);
            many.saturating_sub(one) / 1000
        })
        .collect();
    rows.push((
        "cached get-token, from an agent through the link".to_string(),
        stats(per_call),
    ));

    // What a linked credential adds per agent: its own sandbox with an open
    // credential holding a cached token.
    let base = rss_kib().expect("RSS is read from /proc/self/status (Linux)");
    let mut live = Vec::new();
    for _ in 0..200 {
        let mut s = sandbox();
        let c = rt.block_on(s.open(&default_options())).unwrap().unwrap();
        rt.block_on(s.credential_get_token(c, &[VAULT]))
            .unwrap()
            .unwrap();
        live.push(s);
    }
    let grown = rss_kib().unwrap_or(base).saturating_sub(base);
    rows.push((
        "host RSS per linked credential (200 live, each with a cached token)".to_string(),
        format!("{:.0} KiB", grown as f64 / 200.0),
    ));
    drop(live);

    println!("| measure | result |\n| --- | --- |");
    for (name, result) in rows {
        println!("| {name} | {result} |");
    }
}
