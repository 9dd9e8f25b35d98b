//! `cargo bench -p host-test`: the component's size, cold start, instantiation,
//! per-call cost (sandboxed vs native, uncached vs cached) and host memory per
//! live instance, side by side in one run, against the loopback mock broker.
//! Prints a Markdown table; figures are medians (p90 in brackets).

use std::time::{Duration, Instant};

use host_test::native::NativePlatform;
use host_test::{MockBroker, rss_kib};
use vd_cred_broker::{Credential, Options};
use vd_cred_host::precompiled::Source;
use vd_cred_host::{
    COMPONENT_WASM, CredentialOptions, Host, HostOptions, Sandbox, default_options,
};

const VAULT: &str = "https://vault.azure.net/.default";

struct Row(String, String, String);

fn stats(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    format!(
        "{} ({} p90, n={})",
        show(at(0.5)),
        show(at(0.9)),
        samples.len()
    )
}

fn show(d: Duration) -> String {
    match d.as_nanos() {
        n if n >= 10_000_000 => format!("{:.1} ms", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.0} us", n as f64 / 1e3),
        n => format!("{:.2} us", n as f64 / 1e3),
    }
}

fn time<T>(n: usize, mut f: impl FnMut() -> T) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect()
}

struct Env {
    broker: MockBroker,
    dir: tempfile::TempDir,
}

impl Env {
    async fn sandbox(&self, host: &Host) -> Sandbox {
        host.sandbox()
            .env("VD_CREDENTIAL_BROKER_URL", self.broker.url())
            .env("VD_CREDENTIAL_FILE", "/run/vd/credential")
            .bearer_dir(self.dir.path(), "/run/vd")
            .broker_url(self.broker.url())
            .build()
            .await
            .unwrap()
    }
}

fn options(disable_cache: bool) -> CredentialOptions {
    CredentialOptions {
        disable_cache,
        ..default_options()
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let env = Env {
        broker: MockBroker::start().unwrap(),
        dir: tempfile::tempdir().unwrap(),
    };
    std::fs::write(env.dir.path().join("credential"), "vd_iat_bench\n").unwrap();
    let mut rows = Vec::new();
    let size = std::fs::metadata(COMPONENT_WASM).unwrap().len();
    rows.push(Row(
        "component size".into(),
        format!("{size} bytes"),
        "release, wasm32-wasip2".into(),
    ));

    // Cold start: load the component, instantiate, one get-token.
    let no_cache = HostOptions {
        precompiled_cache: false,
        ..Default::default()
    };
    let cold = |options: HostOptions| {
        let host = Host::load_with(COMPONENT_WASM, options).unwrap();
        let source = host.source();
        rt.block_on(async {
            let mut s = env.sandbox(&host).await;
            s.get_token(&[VAULT]).await.unwrap().unwrap();
        });
        source
    };
    cold(HostOptions::default()); // write the precompiled cache
    let compiled = time(5, || assert_eq!(cold(no_cache.clone()), Source::Compiled));
    let cached = time(20, || {
        assert_eq!(cold(HostOptions::default()), Source::Cached)
    });
    rows.push(Row(
        "cold start: compile .wasm + instantiate + get-token".into(),
        stats(compiled),
        "Cranelift".into(),
    ));
    rows.push(Row(
        "cold start: load precompiled + instantiate + get-token".into(),
        stats(cached),
        "Component::deserialize_file".into(),
    ));

    // Instantiation from InstancePre, default vs pooling allocator.
    let host = Host::load(COMPONENT_WASM).unwrap();
    let pooled = Host::load_with(
        COMPONENT_WASM,
        HostOptions {
            pooling: Some(1100),
            ..Default::default()
        },
    )
    .unwrap();
    for (name, h) in [("default allocator", &host), ("pooling allocator", &pooled)] {
        let samples = time(2000, || rt.block_on(env.sandbox(h)));
        rows.push(Row(
            format!("instantiate from InstancePre, {name}"),
            stats(samples),
            "store + WASI ctx + instance".into(),
        ));
    }

    // Per call, in one warm instance.
    let mut s = rt.block_on(env.sandbox(&host));
    let floor = time(5000, || {
        rt.block_on(s.get_token(&["https://nope"]))
            .unwrap()
            .unwrap_err()
    });
    rows.push(Row(
        "component call that fails before I/O".into(),
        stats(floor),
        "the call floor".into(),
    ));
    let uncached = rt.block_on(s.open(&options(true))).unwrap().unwrap();
    let samples = time(2000, || {
        rt.block_on(s.credential_get_token(uncached, &[VAULT]))
            .unwrap()
            .unwrap()
    });
    rows.push(Row(
        "get-token, uncached (component)".into(),
        stats(samples),
        "file + new TCP connection + POST + parse".into(),
    ));
    let cached = rt.block_on(s.open(&options(false))).unwrap().unwrap();
    let samples = time(20000, || {
        rt.block_on(s.credential_get_token(cached, &[VAULT]))
            .unwrap()
            .unwrap()
    });
    rows.push(Row(
        "get-token, cached (component)".into(),
        stats(samples),
        "bearer file re-read + digest".into(),
    ));

    // The same core, natively: the floor the sandbox is measured against.
    let mut native = NativePlatform::new().unwrap();
    let native_options = |disable_cache| Options {
        broker_url: Some(env.broker.url()),
        credential_file: Some(
            env.dir
                .path()
                .join("credential")
                .to_string_lossy()
                .into_owned(),
        ),
        disable_cache,
        ..Default::default()
    };
    let scopes = [VAULT.to_string()];
    let credential = Credential::open(&native_options(true), |_| None).unwrap();
    let samples = time(2000, || credential.get_token(&scopes, &mut native).unwrap());
    rows.push(Row(
        "get-token, uncached (native, same core)".into(),
        stats(samples),
        "std + hyper, new connection".into(),
    ));
    let credential = Credential::open(&native_options(false), |_| None).unwrap();
    let samples = time(20000, || {
        credential.get_token(&scopes, &mut native).unwrap()
    });
    rows.push(Row(
        "get-token, cached (native, same core)".into(),
        stats(samples),
        "std::fs read + digest".into(),
    ));

    // Host memory with live instances.
    for (name, h) in [("default", &host), ("pooling", &pooled)] {
        let base = rss_kib().expect("RSS is read from /proc/self/status (Linux)");
        let mut live = Vec::new();
        for target in [1usize, 100, 1000] {
            while live.len() < target {
                let mut s = rt.block_on(env.sandbox(h));
                rt.block_on(s.get_token(&["https://nope"]))
                    .unwrap()
                    .unwrap_err();
                live.push(s);
            }
            let grown = rss_kib().unwrap_or(base).saturating_sub(base);
            rows.push(Row(
                format!("host RSS growth, {target} live instances ({name})"),
                format!("{:.1} MiB", grown as f64 / 1024.0),
                format!("{:.0} KiB per instance", grown as f64 / target as f64),
            ));
        }
    }

    println!("| measure | result | note |\n| --- | --- | --- |");
    for Row(a, b, c) in rows {
        println!("| {a} | {b} | {c} |");
    }
    println!(
        "\nrequests served by the mock broker: {}",
        env.broker.request_count()
    );
}
