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
  host-test run-agent <agent.wasm> --invoke '<fn>(<args>)'... [--allow <resource-or-audience>,...]
                  [--egress <origin>,...] [--dir <host-dir>::<guest-dir>] [--env <KEY>=<VALUE>]
                  [--inject <host[:port]>=<audience>,...|defaults] [--reveal-tokens yes|no]
                  [--trust <ca.pem>] [--connect-to <host>:<port>=<ip>:<port>]
                                  run an agent component whose token-credential import the host
                                  links to the credential in a sandbox of its own (set up as
                                  get-token sets it up); the agent gets only --dir, --env and HTTP
                                  to the --egress origins (scheme://host[:port], host * or
                                  *.domain allowed; default: none), never to the broker or the
                                  helper under any name or address, nor to link-local or metadata
                                  addresses unless an origin names one literally. Calls <fn> (a
                                  root export or one in an exported interface) with WAVE-encoded
                                  arguments (each --invoke in turn, in one store), prints each
                                  result in WAVE, and prints an audit line for each token handed
                                  to the agent and each call refused (default --allow: the six
                                  default resources). --inject: the host adds the token for
                                  <audience> to the agent's https requests to <host> (exact or
                                  *.domain; \"defaults\": Key Vault, Storage, OneLake, Fabric,
                                  Power BI, ARM), removing any Authorization the agent set, and
                                  prints an audit line per request (a rule opens nothing: allow
                                  the destinations with --egress); --reveal-tokens no: the
                                  agent's get-token calls are refused (it never holds a token);
                                  --trust: also trust this CA for the agent's https;
                                  --connect-to: send requests for <host>:<port> to that address
  host-test fast-broker           run a minimal loopback broker for benchmarks (one write per
                                  answer, TCP_NODELAY, keep-alive; always the same token): prints
                                  its URL, serves until stdin closes
  host-test mock-azure --ca <ca.pem>
                                  run a mock Key Vault and Storage over TLS on loopback (for
                                  run-agent --inject --trust <ca.pem> --connect-to ...): writes
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
        Some("run-agent") if args.len() > 1 => run_agent(&args[1..]).await,
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
    let requests = broker.requests();
    agent_demo(&broker, dir.path(), host).await?;
    inject_demo(&broker, dir.path(), host).await?;
    for request in requests {
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

/// The demo's second part: an agent component whose credential import the
/// host links to a credential in a sandbox of its own, allowed only Key Vault.
async fn agent_demo(broker: &MockBroker, bearer_dir: &std::path::Path, host: &Host) -> Result<()> {
    use host_test::agent::test_agent::{self, TestAgent};
    use vd_cred_host::linked::{AgentPolicy, LinkedCredential, TokenSource};

    let sandbox = host
        .sandbox()
        .env("VD_CREDENTIAL_BROKER_URL", broker.url())
        .env("VD_CREDENTIAL_FILE", "/run/vd/credential")
        .bearer_dir(bearer_dir, "/run/vd")
        .broker_url(broker.url())
        .build()
        .await?;
    let linked = LinkedCredential::new(sandbox, AgentPolicy::new("demo-agent").allow(["vault"]))
        .on_token(|e| {
            let source = match e.source {
                TokenSource::Minted => "minted",
                TokenSource::Cached => "cached",
            };
            println!(
                "audit            agent {} got a {} token expiring at {} ({source})",
                e.agent_id, e.audience, e.expires_on
            );
        });
    let pre = test_agent::load(host.engine())?;
    let builder = host_test::agent::AgentBuilder::default().credential_broker(broker.url());
    let mut agent = TestAgent::new(builder, host.engine(), &pre, linked).await?;
    println!(
        "agent            test_agent.wasm, linked to the credential by the host, allowed: vault"
    );
    let options = test_agent::no_options();
    agent
        .token(&options, &["https://vault.azure.net/.default"], 2)
        .await??;
    let refused = agent
        .token(&options, &["https://storage.azure.com/.default"], 1)
        .await?;
    if let Err(e) = refused {
        println!(
            "agent asked      storage: {}",
            vd_cred_broker::CredentialError::from(e)
        );
    }
    let bearer = agent.read_file("/run/vd/credential").await?;
    println!("agent read       /run/vd/credential: {bearer:?}");
    let broker_get = agent.http_get(&format!("{}/token", broker.url())).await?;
    println!("agent GET        the broker: {broker_get:?}");
    let by_name = agent
        .http_get(&format!("{}/token", broker.url_for_host("localhost")))
        .await?;
    println!("agent GET        the broker as localhost: {by_name:?}");
    Ok(())
}

/// The demo's third part: an agent that never holds a token. The host adds
/// the vault token to the agent's own request to a mock Key Vault (TLS with a
/// throw-away CA, its Azure name mapped to loopback in the agent's resolver).
async fn inject_demo(broker: &MockBroker, bearer_dir: &std::path::Path, host: &Host) -> Result<()> {
    use host_test::agent::test_agent::{self, TestAgent};
    use host_test::azure::MockAzure;
    use host_test::tls::{TestCa, Validity};
    use vd_cred_host::linked::{AgentPolicy, LinkedCredential};

    const VAULT: &str = "myvault.vault.azure.net";
    let ca = TestCa::new()?;
    let vault = MockAzure::start_tls(ca.server_config(&["*.vault.azure.net"], Validity::Current)?)?;
    vault.accept(vec!["mock-*".into()]);
    let mut roots = vd_cred_host::TrustedRoots::public();
    roots.add_pem(ca.pem().as_bytes())?;
    let sandbox = host
        .sandbox()
        .env("VD_CREDENTIAL_BROKER_URL", broker.url())
        .env("VD_CREDENTIAL_FILE", "/run/vd/credential")
        .bearer_dir(bearer_dir, "/run/vd")
        .broker_url(broker.url())
        .build()
        .await?;
    let policy = AgentPolicy::new("vault-reader")
        .allow(["vault"])
        .reveal_tokens(false);
    let linked = LinkedCredential::new(sandbox, policy);
    let builder = host_test::agent::AgentBuilder::default()
        .credential_broker(broker.url())
        .trust(roots)
        .connect_to(VAULT, 443, vault.addr())
        .egress(format!("https://{VAULT}"))
        .inject_defaults()
        .on_inject(|e| {
            println!(
                "audit            agent {}: a {} token ({:?}) added to its request to {}: {:?}",
                e.agent_id,
                e.audience,
                e.source.expect("a token was had"),
                e.destination,
                e.outcome
            )
        });
    let pre = test_agent::load(host.engine())?;
    let mut agent = TestAgent::new(builder, host.engine(), &pre, linked).await?;
    println!(
        "agent            test_agent.wasm, no token calls; the host injects tokens for the \
         default rules ({VAULT} -> vault, ...)"
    );
    let url = format!("https://{VAULT}/secrets/db?api-version=7.4");
    let answer = agent
        .http_request("GET", &url, &[("Authorization", "Bearer forged")], b"")
        .await?
        .map_err(|e| anyhow::anyhow!("the agent's request failed: {e}"))?;
    println!(
        "agent GET        {url} (its own Authorization: forged): {} {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
    for seen in vault.requests() {
        println!(
            "vault received   {} {} with authorization: {}",
            seen.method,
            seen.path,
            seen.authorization.as_deref().unwrap_or("(none)")
        );
    }
    let refused = agent
        .free_token(&["https://vault.azure.net/.default"])
        .await?;
    if let Err(e) = refused {
        println!(
            "agent asked      for the vault token: {}",
            vd_cred_broker::CredentialError::from(e)
        );
    }
    Ok(())
}

async fn get_token(scopes: &[String]) -> Result<ExitCode> {
    let env = |name: &str| std::env::var(name).ok();
    let mut sandbox = vd_cred_host::from_env::sandbox_from_env(Host::shared(), env)?
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

/// `run-agent`: the agent in its own store, its credential import linked by
/// the host to the credential in the sandbox `get-token` would build.
async fn run_agent(args: &[String]) -> Result<ExitCode> {
    use host_test::agent::{self, AgentBuilder};
    use vd_cred_host::linked::{AgentPolicy, LinkedCredential};
    use wasmtime::component::wasm_wave::untyped::UntypedFuncCall;

    let wasm = &args[0];
    let id = std::path::Path::new(wasm)
        .file_stem()
        .map_or(wasm.clone(), |s| s.to_string_lossy().into_owned());
    let (mut invoke, mut policy, mut builder) =
        (Vec::new(), AgentPolicy::new(id), AgentBuilder::default());
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--invoke" => invoke.push(value.clone()),
            "--allow" => policy = policy.allow(value.split(',')),
            "--egress" => {
                for origin in value.split(',').filter(|o| !o.is_empty()) {
                    builder = builder.egress(origin);
                }
            }
            "--dir" => {
                let (host, guest) = value.split_once("::").unwrap_or((value, value));
                builder = builder.dir(host, guest);
            }
            "--env" => {
                let (k, v) = value.split_once('=').unwrap_or((value, ""));
                builder = builder.env(k, v);
            }
            "--inject" => {
                for rule in value.split(',').filter(|r| !r.is_empty()) {
                    builder = match rule {
                        "defaults" => builder.inject_defaults(),
                        rule => builder.inject(rule),
                    };
                }
            }
            "--reveal-tokens" => match value.as_str() {
                "yes" => policy = policy.reveal_tokens(true),
                "no" => policy = policy.reveal_tokens(false),
                other => anyhow::bail!("--reveal-tokens {other}: yes or no\n{USAGE}"),
            },
            "--trust" => {
                let mut roots = vd_cred_host::TrustedRoots::public();
                roots.add_pem_file(value)?;
                builder = builder.trust(roots);
            }
            "--connect-to" => {
                let parsed = value.split_once('=').and_then(|(from, to)| {
                    let (host, port) = from.rsplit_once(':')?;
                    Some((host, port.parse::<u16>().ok()?, to.parse().ok()?))
                });
                let Some((host, port, addr)) = parsed else {
                    anyhow::bail!("--connect-to {value}: <host>:<port>=<ip>:<port>\n{USAGE}");
                };
                builder = builder.connect_to(host, port, addr);
            }
            other => anyhow::bail!("unknown option {other}\n{USAGE}"),
        }
    }
    anyhow::ensure!(!invoke.is_empty(), "--invoke is required\n{USAGE}");
    // Malformed calls are reported before the agent is compiled.
    for call in &invoke {
        UntypedFuncCall::parse(call).map_err(|e| anyhow::anyhow!("--invoke {call}: {e}"))?;
    }

    let host = Host::shared();
    let setup = vd_cred_host::from_env::Setup::from_env(|name| std::env::var(name).ok());
    if let Some(url) = &setup.broker_url {
        builder = builder.credential_broker(url);
    }
    let sandbox = setup.sandbox(host)?.build().await?;
    let builder = builder.on_inject(|e| {
        eprintln!(
            "audit: agent {}'s request to {}: {} token {}, {:?}{}",
            e.agent_id,
            e.destination,
            e.audience,
            match e.source {
                Some(vd_cred_host::linked::TokenSource::Minted) => "minted and added",
                Some(vd_cred_host::linked::TokenSource::Cached) => "from the cache added",
                None => "not had",
            },
            e.outcome,
            match e.removed_agent_authorization {
                true => "; the agent's own Authorization was removed",
                false => "",
            }
        )
    });
    let linked = LinkedCredential::new(sandbox, policy)
        .on_token(|e| {
            eprintln!(
                "audit: agent {} got a {} token expiring at {} ({})",
                e.agent_id,
                e.audience,
                e.expires_on,
                match e.source {
                    vd_cred_host::linked::TokenSource::Minted => "minted",
                    vd_cred_host::linked::TokenSource::Cached => "cached",
                }
            )
        })
        .on_error(|e| {
            eprintln!(
                "audit: agent {} was refused{}: {}",
                e.agent_id,
                e.audience
                    .map(|a| format!(" a {a} token"))
                    .unwrap_or_default(),
                e.error
            )
        });
    // Compiled once, then loaded from the per-user precompiled cache, as the
    // credential is: never from beside the .wasm, where an agent may be able
    // to write (see vd_cred_host::precompiled).
    let (component, _) = vd_cred_host::precompiled::load(host.engine(), std::path::Path::new(wasm))
        .map_err(|e| anyhow::anyhow!("loading {wasm}: {e:#}"))?;
    let pre = agent::link(host.engine(), &component)?;
    let (mut store, instance) = builder.instantiate(host.engine(), &pre, linked).await?;

    for call in &invoke {
        let results = host_test::agent::invoke(&component, &instance, &mut store, call).await?;
        for result in &results {
            println!("{}", wasmtime::component::wasm_wave::to_string(result)?);
        }
    }
    Ok(ExitCode::SUCCESS)
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

/// The mock broker as a process, driven over stdin (used by the jco run and
/// the Python tests).
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
