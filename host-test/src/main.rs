//! `host-test demo` and `host-test get-token <scope>...`: the component in the
//! wasmtime sandbox, against the loopback mock broker or a real one.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use host_test::MockBroker;
use vd_cred_host::Host;

const USAGE: &str = "\
usage:
  host-test demo [scope] [--component <file.wasm>]
                                  mint a token through the component against a loopback mock broker
  host-test get-token <scope>...  mint a real token, prints {\"token\",\"expires_on\"} as JSON:
                                  through the runtime-access helper when its socket exists
                                  (VD_RUNTIME_ACCESS_SOCKET, default /run/vd-access/program.sock),
                                  else VD_CREDENTIAL_BROKER_URL and VD_CREDENTIAL_FILE (and
                                  VD_CREDENTIAL_LANE, VD_CREDENTIAL_CONFIGURATION_REVISION)
  host-test fast-broker           run a minimal loopback broker for benchmarks (one write per
                                  answer, TCP_NODELAY, keep-alive; always the same token): prints
                                  its URL, serves until stdin closes
  host-test mock-broker [--unix <socket>]
                                  run the loopback mock broker (or, with --unix, a mock
                                  runtime-access helper on that socket) for another runtime's
                                  tests: prints its URL, then reads commands from stdin, one per
                                  line: \"push <status> <body>\" scripts the next answer;
                                  \"reply <json>\" scripts one from {\"status\", \"body\",
                                  \"headers\": [[name, value]], \"delay_ms\", \"drop\": true};
                                  \"default <json>\" answers every unscripted request so;
                                  \"requests\" prints every request received as one JSON line
                                  (and so confirms the commands before it); exits at EOF";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => {
            let mut rest = args[1..].iter().map(String::as_str);
            let (mut scope, mut component) = ("https://vault.azure.net/.default", None);
            while let Some(arg) = rest.next() {
                match arg {
                    "--component" => component = rest.next(),
                    _ => scope = arg,
                }
            }
            demo(scope, component).await
        }
        Some("get-token") if args.len() > 1 => get_token(&args[1..]).await,
        Some("fast-broker") => fast_broker(),
        Some("mock-broker") => match args.get(1..) {
            Some([]) => mock_broker(None),
            Some([flag, socket]) if flag == "--unix" => mock_broker(Some(socket)),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("host-test: {e:#}");
        ExitCode::from(2)
    })
}

async fn demo(scope: &str, component: Option<&str>) -> Result<ExitCode> {
    let broker = MockBroker::start()?;
    let dir = tempfile::tempdir()?;
    let bearer = format!("vd_iat_demo_{}", std::process::id());
    std::fs::write(dir.path().join("credential"), format!("{bearer}\n"))?;
    println!("mock broker      {}", broker.url());
    println!(
        "bearer file      {}/credential (preopened read-only as /run/vd)",
        dir.path().display()
    );

    let started = Instant::now();
    let loaded;
    let host = match component {
        Some(path) => {
            loaded = Host::load(path)?;
            &loaded
        }
        None => Host::shared(),
    };
    let how = match host.source() {
        vd_cred_host::precompiled::Source::Compiled => "compiled and cached",
        vd_cred_host::precompiled::Source::Cached => "loaded precompiled",
    };
    println!(
        "component        {} ({how} in {:.0?})",
        component.unwrap_or(vd_cred_host::COMPONENT_WASM),
        started.elapsed()
    );

    let started = Instant::now();
    let mut sandbox = host
        .sandbox()
        .env("VD_CREDENTIAL_BROKER_URL", broker.url())
        .env("VD_CREDENTIAL_FILE", "/run/vd/credential")
        .bearer_dir(dir.path(), "/run/vd")
        .broker_url(broker.url())
        .build()
        .await?;
    let instantiated = started.elapsed();
    let started = Instant::now();
    let result = sandbox.get_token(&[scope]).await?;
    println!(
        "instantiate      {instantiated:.1?}; get-token {:.1?}",
        started.elapsed()
    );
    let token = match result {
        Ok(token) => token,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    println!("scope            {scope}");
    println!("token            {}", token.token);
    println!(
        "expires-on       {} (in {} s)",
        token.expires_on,
        token.expires_on.saturating_sub(now)
    );
    for request in broker.requests() {
        println!(
            "broker received  {} {} {}",
            request.method, request.path, request.version
        );
        for (name, value) in &request.headers {
            let value = if name == "authorization" {
                value.replace(&bearer, "vd_iat_[redacted]")
            } else {
                value.clone()
            };
            println!("                 {name}: {value}");
        }
        println!(
            "                 body: {}",
            String::from_utf8_lossy(&request.body)
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn get_token(scopes: &[String]) -> Result<ExitCode> {
    let env = |name: &str| std::env::var(name).ok();
    let mut sandbox = vd_cred_host::from_env::sandbox_from_env(Host::shared(), env)
        .build()
        .await?;
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    match sandbox.get_token(&scopes).await? {
        Ok(token) => {
            let json = serde_json::json!({ "token": token.token, "expires_on": token.expires_on });
            println!("{json}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The benchmark broker as a process: serves until stdin closes.
fn fast_broker() -> Result<ExitCode> {
    let broker = host_test::fast_broker::FastBroker::start()?;
    println!("{}", broker.url());
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    Ok(ExitCode::SUCCESS)
}

/// A scripted reply from its JSON form (see the usage).
fn reply_from_json(spec: &str) -> Result<host_test::Reply> {
    let spec: serde_json::Value = serde_json::from_str(spec)?;
    let delay = std::time::Duration::from_millis(spec["delay_ms"].as_u64().unwrap_or(0));
    if spec["drop"].as_bool() == Some(true) {
        return Ok(host_test::Reply::Drop { delay });
    }
    let status = spec["status"].as_u64().unwrap_or(200).try_into()?;
    let mut reply =
        host_test::Reply::json(status, spec["body"].as_str().unwrap_or("")).after(delay);
    for pair in spec["headers"].as_array().into_iter().flatten() {
        if let (Some(name), Some(value)) = (pair[0].as_str(), pair[1].as_str()) {
            reply = reply.with_header(name, value);
        }
    }
    Ok(reply)
}

/// The mock broker as a process, driven over stdin (used by the jco run and
/// the Python tests).
fn mock_broker(socket: Option<&str>) -> Result<ExitCode> {
    use std::io::BufRead;
    let broker = match socket {
        Some(path) => MockBroker::start_unix(path)?,
        None => MockBroker::start()?,
    };
    println!("{}", broker.url());
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        match line.split_once(' ').unwrap_or((line.as_str(), "")) {
            ("push", rest) => {
                let (status, body) = rest.split_once(' ').unwrap_or((rest, ""));
                broker.push(host_test::Reply::json(status.parse()?, body));
            }
            ("reply", spec) => {
                broker.push(reply_from_json(spec)?);
            }
            ("default", spec) => broker.set_default(reply_from_json(spec)?),
            ("requests", _) => {
                let requests: Vec<_> = broker
                    .requests()
                    .into_iter()
                    .map(|r| {
                        serde_json::json!({
                            "method": r.method,
                            "path": r.path,
                            "headers": r.headers.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                            "body": String::from_utf8_lossy(&r.body),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::from(requests));
            }
            (other, _) => eprintln!("mock-broker: unknown command {other:?}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
