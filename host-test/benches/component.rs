//! `cargo bench -p host-test --bench component`: the component's size, cold
//! start, instantiation, per-call cost and host memory per live instance,
//! side by side in one run against one fast loopback broker (one write per
//! answer, TCP_NODELAY; its raw round trip is measured first): our host, a
//! plain wasmtime host as most embedders leave it, the same core natively,
//! and the original Python credential. Prints a Markdown table; figures are
//! medians (p90 in brackets).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use host_test::fast_broker::FastBroker;
use host_test::native::NativePlatform;
use host_test::original::OriginalPython;
use host_test::plain_host::PlainHost;
use host_test::probe::build_probe;
use host_test::rss_kib;
use host_test::timing::{median, stats};
use tokio::runtime::Runtime;
use vd_cred_broker::{Credential, Options};
use vd_cred_host::precompiled::Source;
use vd_cred_host::{
    COMPONENT_WASM, CredentialOptions, Host, HostOptions, Sandbox, default_options,
};

const VAULT: &str = "https://vault.azure.net/.default";
/// Rounds the per-call comparisons are interleaved in, so drift hits all alike.
const BLOCKS: usize = 10;

struct Row(String, String, String);

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
    url: String,
    dir: tempfile::TempDir,
}

impl Env {
    async fn sandbox(&self, host: &Host) -> Sandbox {
        host.sandbox()
            .env("VD_CREDENTIAL_BROKER_URL", &self.url)
            .env("VD_CREDENTIAL_FILE", "/run/vd/credential")
            .bearer_dir(self.dir.path(), "/run/vd")
            .broker_url(&self.url)
            .build()
            .await
            .unwrap()
    }

    fn file(&self) -> String {
        self.dir
            .path()
            .join("credential")
            .to_string_lossy()
            .into_owned()
    }
}

fn options(disable_cache: bool) -> CredentialOptions {
    CredentialOptions {
        disable_cache,
        ..default_options()
    }
}

/// One POST and its whole answer over `stream`.
fn exchange(stream: &mut TcpStream) {
    const REQUEST: &[u8] = b"POST /api/v1/credential-broker/token HTTP/1.1\r\nhost: x\r\n\
        content-type: application/json\r\ncontent-length: 20\r\n\r\n{\"audience\":\"vault\"}";
    stream.write_all(REQUEST).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.ends_with(b"}") {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0);
        answer.extend_from_slice(&chunk[..n]);
    }
}

fn multi_thread() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let multi = multi_thread();
    let broker = FastBroker::start().unwrap();
    let env = Env {
        url: broker.url(),
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
        current.block_on(async {
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
        "ownership checks, read, Component::deserialize".into(),
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
        let samples = time(2000, || current.block_on(env.sandbox(h)));
        rows.push(Row(
            format!("instantiate from InstancePre, {name}"),
            stats(samples),
            "store + WASI ctx + instance".into(),
        ));
    }

    // The broker itself, from a raw client: what is left is the clients'.
    let mut kept = TcpStream::connect(broker.addr()).unwrap();
    kept.set_nodelay(true).unwrap();
    (0..200).for_each(|_| exchange(&mut kept));
    rows.push(Row(
        "broker round trip, raw client, kept-alive connection".into(),
        stats(time(5000, || exchange(&mut kept))),
        "the benchmark broker's own cost".into(),
    ));
    rows.push(Row(
        "broker round trip, raw client, new connection each".into(),
        stats(time(2000, || {
            let mut s = TcpStream::connect(broker.addr()).unwrap();
            s.set_nodelay(true).unwrap();
            exchange(&mut s)
        })),
        "".into(),
    ));

    // Per call, one warm instance each, interleaved in blocks.
    let mut ours = current.block_on(env.sandbox(&host));
    let floor = time(5000, || {
        current
            .block_on(ours.get_token(&["https://nope"]))
            .unwrap()
            .unwrap_err()
    });
    rows.push(Row(
        "component call that fails before I/O".into(),
        stats(floor),
        "the call floor".into(),
    ));
    let ours_uncached = current
        .block_on(ours.open(&options(true)))
        .unwrap()
        .unwrap();
    let ours_cached = current
        .block_on(ours.open(&options(false)))
        .unwrap()
        .unwrap();
    let mut ours_pooled = current.block_on(env.sandbox(&pooled));
    let pooled_cached = current
        .block_on(ours_pooled.open(&options(false)))
        .unwrap()
        .unwrap();
    let mut ours_multi = multi.block_on(env.sandbox(&host));
    let multi_cached = multi
        .block_on(ours_multi.open(&options(false)))
        .unwrap()
        .unwrap();

    let plain = PlainHost::new(&host).unwrap();
    let guest_env = [
        ("VD_CREDENTIAL_BROKER_URL", env.url.as_str()),
        ("VD_CREDENTIAL_FILE", "/run/vd/credential"),
    ];
    let mut plain_instance = multi
        .block_on(plain.instance(&guest_env, env.dir.path(), "/run/vd"))
        .unwrap();
    let plain_uncached = multi
        .block_on(plain_instance.open(&options(true)))
        .unwrap()
        .unwrap();
    let plain_cached = multi
        .block_on(plain_instance.open(&options(false)))
        .unwrap()
        .unwrap();

    let mut native = NativePlatform::new().unwrap();
    let native_options = |disable_cache| Options {
        broker_url: Some(env.url.clone()),
        credential_file: Some(env.file()),
        disable_cache,
        ..Default::default()
    };
    let scopes = [VAULT.to_string()];
    let native_uncached = Credential::open(&native_options(true), |_| None).unwrap();
    let native_cached = Credential::open(&native_options(false), |_| None).unwrap();

    let original = OriginalPython::ensure(&[
        ("VD_CREDENTIAL_BROKER_URL", env.url.as_str()),
        ("VD_CREDENTIAL_FILE", env.file().as_str()),
        // 0.2.0 always speaks protocol 0.2.
        ("VD_CREDENTIAL_LANE", "user"),
        ("VD_CREDENTIAL_CONFIGURATION_REVISION", "1"),
    ]);

    // The least a minting component can do through wasi:http in our host:
    // the sandbox probe's POST, in the credential's sandbox, its whole
    // answer read (kept-alive, as the credential's).
    let mut probe = current
        .block_on(build_probe(
            host.sandbox()
                .bearer_dir(env.dir.path(), "/run/vd")
                .broker_url(&env.url),
        ))
        .unwrap();
    let token_url = format!("{}/token", env.url);
    let mut post = || {
        let answer = current.block_on(probe.http_post(&token_url, r#"{"audience":"vault"}"#));
        assert!(answer.unwrap().unwrap().contains("fast-token"));
    };

    let (mut u_ours, mut u_plain, mut u_native, mut u_original) = (vec![], vec![], vec![], vec![]);
    let mut u_probe = vec![];
    let (mut c_ours, mut c_multi, mut c_plain, mut c_native) = (vec![], vec![], vec![], vec![]);
    let mut c_pooled = vec![];
    for _ in 0..BLOCKS {
        u_ours.extend(time(300, || {
            current
                .block_on(ours.credential_get_token(ours_uncached, &[VAULT]))
                .unwrap()
                .unwrap()
        }));
        u_plain.extend(time(300, || {
            multi
                .block_on(plain_instance.get_token(plain_uncached, &[VAULT]))
                .unwrap()
                .unwrap()
        }));
        u_probe.extend(time(300, &mut post));
        u_native.extend(time(300, || {
            vd_cred_broker::ready(native_uncached.get_token(&scopes, &mut native)).unwrap()
        }));
        if let Ok(original) = &original {
            u_original.extend(original.calls(300).unwrap());
        }
        c_ours.extend(time(3000, || {
            current
                .block_on(ours.credential_get_token(ours_cached, &[VAULT]))
                .unwrap()
                .unwrap()
        }));
        c_pooled.extend(time(3000, || {
            current
                .block_on(ours_pooled.credential_get_token(pooled_cached, &[VAULT]))
                .unwrap()
                .unwrap()
        }));
        c_multi.extend(time(3000, || {
            multi
                .block_on(ours_multi.credential_get_token(multi_cached, &[VAULT]))
                .unwrap()
                .unwrap()
        }));
        c_plain.extend(time(3000, || {
            multi
                .block_on(plain_instance.get_token(plain_cached, &[VAULT]))
                .unwrap()
                .unwrap()
        }));
        c_native.extend(time(3000, || {
            vd_cred_broker::ready(native_cached.get_token(&scopes, &mut native)).unwrap()
        }));
    }
    let original_median = (!u_original.is_empty()).then(|| median(u_original.clone()));
    let versus = |samples: &Vec<Duration>| match original_median {
        Some(o) => format!(
            "{:.2}x the original's time",
            median(samples.clone()).as_secs_f64() / o.as_secs_f64()
        ),
        None => String::new(),
    };
    rows.push(Row(
        "get-token, uncached: our host".into(),
        stats(u_ours.clone()),
        format!("kept-alive connection; {}", versus(&u_ours)),
    ));
    rows.push(Row(
        "get-token, uncached: plain wasmtime host".into(),
        stats(u_plain.clone()),
        format!(
            "multi-thread tokio, default WasiCtx and send_request (new connection); {}",
            versus(&u_plain)
        ),
    ));
    rows.push(Row(
        "wasi:http exchange alone, our host: a POST and its whole answer".into(),
        stats(u_probe.clone()),
        format!(
            "the sandbox probe, kept-alive connection: the floor of a mint in this host; {}",
            versus(&u_probe)
        ),
    ));
    rows.push(Row(
        "get-token, uncached: native, same core".into(),
        stats(u_native.clone()),
        format!("std + hyper, new connection; {}", versus(&u_native)),
    ));
    rows.push(Row(
        "get-token: the original Python credential (no cache)".into(),
        match &original {
            Ok(_) => stats(u_original),
            Err(e) => format!("not run: {e:#}"),
        },
        "0.2.0, requests, new connection".into(),
    ));
    rows.push(Row(
        "get-token, cached: our host, current-thread tokio".into(),
        stats(c_ours),
        "path identity + kept file read + digest".into(),
    ));
    rows.push(Row(
        "get-token, cached: our host, pooling allocator, current-thread tokio".into(),
        stats(c_pooled),
        "instances from the pooling allocator".into(),
    ));
    rows.push(Row(
        "get-token, cached: our host, multi-thread tokio".into(),
        stats(c_multi),
        "filesystem calls via block_in_place".into(),
    ));
    rows.push(Row(
        "get-token, cached: plain wasmtime host".into(),
        stats(c_plain),
        "filesystem calls via tokio's blocking pool".into(),
    ));
    rows.push(Row(
        "get-token, cached: native, same core".into(),
        stats(c_native),
        "std::fs read + digest".into(),
    ));

    // Host memory with live instances.
    for (name, h) in [("default", &host), ("pooling", &pooled)] {
        let base = rss_kib().expect("RSS is read from /proc/self/status (Linux)");
        let mut live = Vec::new();
        for target in [1usize, 100, 1000] {
            while live.len() < target {
                let mut s = current.block_on(env.sandbox(h));
                current
                    .block_on(s.get_token(&["https://nope"]))
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
        "\nthe broker answered {} requests on {} connections",
        broker.requests(),
        broker.connections()
    );
}
