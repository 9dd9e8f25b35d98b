//! `host-test mock-broker`, `mock-azure` and `fast-broker`: the test
//! servers as processes, for other runtimes' tests (jco, the stock wasmtime
//! CLI, Python) and for trying `vd-cred run-agent` by hand.

use std::process::ExitCode;

use anyhow::Result;
use host_test::MockBroker;

const USAGE: &str = "\
usage (the test tools; the product's command line is vd-cred, in cli/):
  host-test fast-broker           run a minimal loopback broker for benchmarks (one write per
                                  answer, TCP_NODELAY, keep-alive; always the same token): prints
                                  its URL, serves until stdin closes
  host-test mock-azure --ca <ca.pem>
                                  run a mock Key Vault and Storage over TLS on loopback (for
                                  vd-cred run-agent --inject --trust <ca.pem> --connect-to ...): writes
                                  its throw-away CA to <ca.pem>, prints its address, accepts the
                                  mock broker's tokens; \"requests\" on stdin prints what it
                                  received as one JSON line; exits at EOF
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
        Some("fast-broker") => fast_broker(),
        Some("mock-azure") => match args.get(1..) {
            Some([flag, ca]) if flag == "--ca" => mock_azure(ca),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        },
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
    if spec["named"].as_bool() == Some(true) {
        return Ok(host_test::Reply::Named { delay });
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

/// `mock-azure --ca <file>`: a mock Key Vault and Storage over TLS with a
/// throw-away CA (written to `file`), accepting the mock broker's tokens, for
/// trying `run-agent --inject` by hand.
fn mock_azure(ca_file: &str) -> Result<ExitCode> {
    use std::io::BufRead;
    let ca = host_test::tls::TestCa::new()?;
    let names = [
        "*.vault.azure.net",
        "*.blob.core.windows.net",
        "*.dfs.core.windows.net",
        "onelake.dfs.fabric.microsoft.com",
    ];
    let config = ca.server_config(&names, host_test::tls::Validity::Current)?;
    let azure = host_test::azure::MockAzure::start_tls(config)?;
    azure.accept(vec!["mock-*".into()]);
    std::fs::write(ca_file, ca.pem())?;
    println!("{}", azure.addr());
    for line in std::io::stdin().lock().lines() {
        match line?.as_str() {
            "requests" => {
                let requests: Vec<_> = azure
                    .requests()
                    .into_iter()
                    .map(|r| {
                        serde_json::json!({
                            "method": r.method,
                            "host": r.host,
                            "path": r.path,
                            "authorization": r.authorization,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::from(requests));
            }
            other => eprintln!("mock-azure: unknown command {other:?}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The mock broker as a process, driven over stdin (used by the jco run, the
/// stock wasmtime CLI's run and the Python tests).
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
