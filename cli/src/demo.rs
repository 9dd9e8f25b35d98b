//! `vd-cred demo`: the whole path on this machine, with nothing to set up.
//! A loopback mock broker (`host-test`'s) mints for a throw-away bearer;
//! the component mints through it in its sandbox; the test agent then runs
//! linked to a credential that allows it only Key Vault (and tries the
//! bearer file and the broker itself), and again with the host injecting
//! the vault token into its request to a mock Key Vault over TLS.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use host_test::MockBroker;
use vd_cred_host::Host;
use vd_cred_host::runner::AgentBuilder;

/// Mint a token for `scope` through the component (the embedded one, or
/// `component`) against a loopback mock broker, then run the test agent
/// linked to it and with tokens injected; print what each part saw.
pub async fn run(scope: &str, component: Option<&str>) -> Result<ExitCode> {
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
    let mut sandbox = sandbox(host, &broker, dir.path()).await?;
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

/// A credential sandbox against the mock broker, the bearer's directory
/// preopened read-only at `/run/vd`.
async fn sandbox(
    host: &Host,
    broker: &MockBroker,
    bearer_dir: &std::path::Path,
) -> Result<vd_cred_host::Sandbox> {
    host.sandbox()
        .env("VD_CREDENTIAL_BROKER_URL", broker.url())
        .env("VD_CREDENTIAL_FILE", "/run/vd/credential")
        .bearer_dir(bearer_dir, "/run/vd")
        .broker_url(broker.url())
        .build()
        .await
}

/// The demo's second part: an agent component whose credential import the
/// host links to a credential in a sandbox of its own, allowed only Key Vault.
async fn agent_demo(broker: &MockBroker, bearer_dir: &std::path::Path, host: &Host) -> Result<()> {
    use host_test::agent::test_agent::{self, TestAgent};
    use vd_cred_host::linked::{AgentPolicy, LinkedCredential, TokenSource};

    let sandbox = sandbox(host, broker, bearer_dir).await?;
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
    let builder = AgentBuilder::default().credential_broker(broker.url());
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
    let sandbox = sandbox(host, broker, bearer_dir).await?;
    let policy = AgentPolicy::new("vault-reader")
        .allow(["vault"])
        .reveal_tokens(false);
    let linked = LinkedCredential::new(sandbox, policy);
    let builder = AgentBuilder::default()
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
