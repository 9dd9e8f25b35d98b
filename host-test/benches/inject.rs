//! `cargo bench -p host-test --bench inject`: what the host's injection of
//! a token into an agent's request costs ([`vd_cred_host::inject`]), next to
//! the same request carrying a token the agent got itself (the free
//! `get-token`, then the request with its header), in one run against the
//! fast loopback broker and a loopback mock Key Vault over TLS (keep-alive,
//! so the handshake is paid once). Prints a Markdown table; figures are
//! medians (p90 in brackets) of whole requests from inside the test agent.
//!
//! - cached: the broker's token lives an hour, so after the first request
//!   every token comes from the credential's cache;
//! - uncached: the broker's token lives 120 s, under the credential's 300 s
//!   refresh margin, so every token is minted (one broker request each).

use std::time::{Duration, Instant};

use host_test::agent::test_agent::{self, TestAgent};
use host_test::azure::MockAzure;
use host_test::fast_broker::FastBroker;
use host_test::rss_kib;
use host_test::tls::{TestCa, Validity};
use vd_cred_host::linked::{AgentLimits, AgentPolicy, LinkedCredential};
use vd_cred_host::runner::AgentBuilder;
use vd_cred_host::{Host, TrustedRoots};

const VAULT: &str = "https://vault.azure.net/.default";
const VAULT_HOST: &str = "bench.vault.azure.net";
/// What the fast broker mints.
const TOKEN: &str = "fast-token";
const SAMPLES: usize = 4_000;

fn stats(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    format!(
        "{:.1} us ({:.1} us p90, n={})",
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
    let ca = TestCa::new().unwrap();
    let vault = MockAzure::start_tls(
        ca.server_config(&["*.vault.azure.net"], Validity::Current)
            .unwrap(),
    )
    .unwrap();
    vault.accept(vec![TOKEN.to_string()]);
    let mut roots = TrustedRoots::public();
    roots.add_pem(ca.pem().as_bytes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("credential"), "vd_iat_bench\n").unwrap();
    let host = Host::shared();
    let pre = test_agent::load(host.engine()).unwrap();
    let url = format!("https://{VAULT_HOST}/secrets/db?api-version=7.4");

    // An agent linked to a credential whose broker mints tokens living
    // `expires_in` seconds; `inject` or not.
    let agent = |broker: &FastBroker, inject: bool| {
        let sandbox = rt
            .block_on(
                host.sandbox()
                    .env("VD_CREDENTIAL_BROKER_URL", broker.url())
                    .env("VD_CREDENTIAL_FILE", "/run/vd/credential")
                    .bearer_dir(dir.path(), "/run/vd")
                    .broker_url(broker.url())
                    .build(),
            )
            .unwrap();
        // A budget that never holds the benchmark back (still checked).
        let limits = AgentLimits {
            mints_per_minute: u32::MAX,
            ..AgentLimits::default()
        };
        let linked = LinkedCredential::new(sandbox, AgentPolicy::new("bench").limits(limits));
        let mut builder = AgentBuilder::default()
            .credential_broker(broker.url())
            .trust(roots.clone())
            .connect_to(VAULT_HOST, 443, vault.addr());
        builder = builder.egress(format!("https://{VAULT_HOST}"));
        if inject {
            builder = builder.inject_defaults();
        }
        rt.block_on(TestAgent::new(builder, host.engine(), &pre, linked))
            .unwrap()
    };
    // The agent's own way, its token cached: the request with the header
    // of a token it holds (what it would send after a cached get-token).
    let held = |a: &mut TestAgent| {
        let t = Instant::now();
        let answer = rt
            .block_on(a.http_request(
                "GET",
                &url,
                &[("Authorization", &format!("Bearer {TOKEN}"))],
                b"",
            ))
            .unwrap()
            .unwrap();
        assert_eq!(answer.status, 200);
        t.elapsed()
    };
    // The agent's own way, uncached: get-token (the free function, which
    // mints), then the request with the header.
    let own = |a: &mut TestAgent| {
        let t = Instant::now();
        let token = rt.block_on(a.free_token(&[VAULT])).unwrap().unwrap().token;
        let header = format!("Bearer {token}");
        let answer = rt
            .block_on(a.http_request("GET", &url, &[("Authorization", &header)], b""))
            .unwrap()
            .unwrap();
        assert_eq!(answer.status, 200);
        t.elapsed()
    };
    // The host's way: the request without a token.
    let injected = |a: &mut TestAgent| {
        let t = Instant::now();
        let answer = rt
            .block_on(a.http_request("GET", &url, &[], b""))
            .unwrap()
            .unwrap();
        assert_eq!(answer.status, 200);
        t.elapsed()
    };

    let mut rows = Vec::new();
    type Way<'a> = &'a dyn Fn(&mut TestAgent) -> Duration;
    let cases: [(&str, FastBroker, Way, &str); 2] = [
        (
            "cached",
            FastBroker::start().unwrap(),
            &held,
            "GET with a token the agent holds",
        ),
        (
            "uncached",
            FastBroker::short_lived().unwrap(),
            &own,
            "get-token in the agent (a mint), then GET with it",
        ),
    ];
    for (label, broker, theirs_own, own_label) in cases {
        let mut mine = agent(&broker, false);
        let mut theirs = agent(&broker, true);
        for _ in 0..100 {
            theirs_own(&mut mine);
            injected(&mut theirs);
        }
        // Alternating sample by sample, so that drift affects both alike;
        // the added cost is the median of the paired differences.
        let (mut a, mut b, mut added) = (Vec::new(), Vec::new(), Vec::new());
        let before = broker.requests();
        for _ in 0..SAMPLES {
            let x = theirs_own(&mut mine);
            let y = injected(&mut theirs);
            added.push(y.as_nanos() as i128 - x.as_nanos() as i128);
            a.push(x);
            b.push(y);
        }
        let per_request = (broker.requests() - before) as f64 / SAMPLES as f64;
        added.sort();
        rows.push((format!("{label}: {own_label}"), stats(a)));
        rows.push((
            format!("{label}: GET without a token, the host injects it"),
            stats(b),
        ));
        rows.push((
            format!(
                "{label}: added by injection (median of paired differences; broker requests per pair: {per_request:.0})"
            ),
            format!("{:+.1} us", added[added.len() / 2] as f64 / 1e3),
        ));
    }

    // What an agent costs in host memory (its store, its linked credential
    // with a token minted, its connections to the broker and the vault):
    // getting its token itself, or with the host injecting it (the default
    // rules, and a credential of the host's own in the same sandbox).
    // Batches of 200 kept alive, alternating, so that no batch reuses
    // memory an earlier one freed; each kind's figure is the mean of its
    // two batches.
    let broker = FastBroker::start().unwrap();
    let mut live = Vec::new();
    let mut grown = [0u64; 2];
    for inject in [false, true, false, true] {
        let base = rss_kib().expect("RSS is read from /proc/self/status (Linux)");
        for _ in 0..200 {
            let mut a = agent(&broker, inject);
            match inject {
                true => injected(&mut a),
                false => own(&mut a),
            };
            live.push(a);
        }
        grown[inject as usize] += rss_kib().unwrap_or(base).saturating_sub(base);
    }
    for (inject, label) in [
        (false, "the agent's own token"),
        (true, "the host injects it (8 default rules)"),
    ] {
        rows.push((
            format!("host RSS per agent (400 live, one request each), {label}"),
            format!("{:.0} KiB", grown[inject as usize] as f64 / 400.0),
        ));
    }
    drop(live);

    println!("| measure | result |\n| --- | --- |");
    for (name, result) in rows {
        println!("| {name} | {result} |");
    }
}
