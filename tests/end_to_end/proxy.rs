//! Proxies as `requests` uses them: the broker reached through a loopback
//! HTTP proxy (CONNECT for https, absolute form for http), `NO_PROXY`
//! bypasses, proxy credentials sent and never shown, the helper's Unix
//! socket never proxied, and a proxy's refusal explained. `broker.invalid`
//! resolves only at the test proxy, so reaching it proves the proxy was used.
//! An agent's requests through a proxy go to the address its egress policy
//! vetted, never to a name the proxy would resolve again.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use host_test::MockBroker;
use host_test::agent::test_agent::TestAgent;
use host_test::proxy::TestProxy;
use host_test::tls::{TestCa, Validity};
use vd_cred_broker::CredentialError as E;
use vd_cred_host::from_env::Setup;
use vd_cred_host::linked::{AgentPolicy, LinkedCredential};
use vd_cred_host::runner::AgentBuilder;
use vd_cred_host::{Proxies, Sandbox, TrustedRoots};

use crate::{Fixture, VAULT, options};

const NAME: &str = "broker.invalid";

/// An https broker for `broker.invalid` with a private CA, the roots that
/// trust it, and a proxy that maps the name to it.
fn https_broker() -> (Fixture, TrustedRoots, TestProxy) {
    let ca = TestCa::new().unwrap();
    let config = ca.server_config(&[NAME], Validity::Current).unwrap();
    let f = Fixture::with_broker(MockBroker::start_tls(config).unwrap());
    let roots = ca.roots();
    let proxy = TestProxy::start().unwrap();
    proxy.map(NAME, f.broker.addr());
    (f, roots, proxy)
}

/// Whether `e` says the broker's name did not resolve (the host's
/// wasi:http `DNS-error`, as the credential words it), not merely that the
/// broker could not be reached: a refused connection or a timeout says
/// otherwise.
fn did_not_resolve(e: &E) -> bool {
    matches!(e, E::BrokerUnreachable(m) if m.contains("the broker's host name did not resolve"))
}

/// A sandbox for the broker at `url`, through `proxies`.
async fn sandbox(f: &Fixture, url: &str, roots: TrustedRoots, proxies: Proxies) -> Sandbox {
    f.builder()
        .env("VD_CREDENTIAL_BROKER_URL", url)
        .broker_url(url)
        .trusted_roots(roots)
        .proxies(proxies)
        .build()
        .await
        .unwrap()
}

/// One vault `get-token` on a credential opened for `url` (plain http to
/// any host allowed, a 60 s timeout: the calls that fail here fail on an
/// answer, not a deadline).
async fn mint(sandbox: &mut Sandbox, url: &str) -> Result<String, E> {
    let mut o = options();
    o.broker_url = Some(url.to_string());
    o.allow_insecure_http = true;
    o.timeout_ms = Some(60_000);
    let credential = sandbox.open(&o).await.unwrap()?;
    let token = sandbox
        .credential_get_token(credential, &[VAULT])
        .await
        .unwrap()?;
    Ok(token.token)
}

/// Everything a failed sandbox shows: the error, its description, output
/// and denied list.
async fn everything_shown(sandbox: &mut Sandbox, e: &E) -> String {
    let (out, err) = sandbox.output();
    format!(
        "{e:?} {} {} {} {:?}",
        sandbox.describe_error(e).await.unwrap(),
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err),
        sandbox.denied_requests()
    )
}

#[tokio::test]
async fn an_https_broker_only_the_proxy_can_resolve_is_reached_through_a_tunnel() {
    let (f, roots, proxy) = https_broker();
    let url = f.broker.url_for_host(NAME);
    let proxies = Proxies::none().https(&proxy.url()).unwrap();
    let mut s = sandbox(&f, &url, roots.clone(), proxies).await;
    assert_eq!(mint(&mut s, &url).await.unwrap(), "mock-token-1");
    // A new credential: no cache, a second request.
    assert!(mint(&mut s, &url).await.is_ok());
    // One tunnel, kept alive for the second mint; TLS to the broker's name.
    let port = f.broker.addr().port();
    assert_eq!(proxy.tunnels(), [format!("{NAME}:{port}")]);
    assert_eq!(f.broker.connection_count(), 1);
    let r = &f.broker.requests()[0];
    assert_eq!(r.path, "/api/v1/credential-broker/token");
    assert_eq!(r.header("host"), Some(format!("{NAME}:{port}").as_str()));
    assert_eq!(r.header("proxy-authorization"), None);

    // Without the proxy the name does not resolve.
    let mut direct = sandbox(&f, &url, roots, Proxies::none()).await;
    let e = mint(&mut direct, &url).await.unwrap_err();
    assert!(did_not_resolve(&e), "{e:?}");
    assert_eq!(proxy.requests().len(), 1);
}

#[tokio::test]
async fn an_http_broker_is_sent_its_requests_through_the_proxy_in_absolute_form() {
    let f = Fixture::new();
    let proxy = TestProxy::start().unwrap();
    proxy.map(NAME, f.broker.addr());
    let port = f.broker.addr().port();
    for (url, host) in [
        (f.broker.url_for_host(NAME), NAME.to_string()),
        // Loopback goes through the proxy too, as with requests.
        (f.broker.url(), "127.0.0.1".to_string()),
    ] {
        let proxies = Proxies::none().all(&proxy.url()).unwrap();
        let mut s = sandbox(&f, &url, TrustedRoots::public(), proxies).await;
        assert!(mint(&mut s, &url).await.is_ok(), "{url}");
        let forwarded = proxy.forwarded();
        assert_eq!(
            forwarded.last().unwrap(),
            &format!("http://{host}:{port}/api/v1/credential-broker/token")
        );
    }
    assert_eq!(proxy.tunnels(), Vec::<String>::new());
    assert_eq!(f.broker.request_count(), 2);
    for r in f.broker.requests() {
        assert_eq!(r.path, "/api/v1/credential-broker/token");
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {}", f.bearer).as_str())
        );
    }
}

/// The environment of a process in broker mode, with `extra`.
fn env(f: &Fixture, url: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let file = f.dir.path().join("credential");
    [
        ("VD_RUNTIME_ACCESS_SOCKET", "/nonexistent/helper.sock"),
        ("VD_CREDENTIAL_BROKER_URL", url),
        ("VD_CREDENTIAL_FILE", file.to_str().unwrap()),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn from_env(env: HashMap<String, String>, roots: Option<TrustedRoots>) -> Sandbox {
    let setup = Setup::from_env(|k| env.get(k).cloned());
    let builder = setup
        .sandbox(crate::host())
        .unwrap()
        .resolver(crate::names());
    let builder = match roots {
        Some(roots) => builder.trusted_roots(roots),
        None => builder,
    };
    builder.build().await.unwrap()
}

#[tokio::test]
async fn setup_from_env_reads_the_proxy_variables_and_no_proxy_bypasses() {
    let (f, roots, proxy) = https_broker();
    let url = f.broker.url_for_host(NAME);
    let proxy_url = proxy.url();
    let vars = [("HTTPS_PROXY", proxy_url.as_str())];
    let mut s = from_env(env(&f, &url, &vars), Some(roots.clone())).await;
    assert!(s.get_token(&[VAULT]).await.unwrap().is_ok());
    assert_eq!(proxy.tunnels().len(), 1);

    // NO_PROXY: a suffix with a leading dot, then `*`, then the lower-case
    // no_proxy winning over NO_PROXY. The name then does not resolve: the
    // proxy was not asked.
    for no_proxy in [
        &[("NO_PROXY", ".invalid")][..],
        &[("no_proxy", "*")],
        &[("no_proxy", "broker.invalid"), ("NO_PROXY", "other")],
    ] {
        let vars: Vec<_> = vars.iter().chain(no_proxy).copied().collect();
        let mut s = from_env(env(&f, &url, &vars), Some(roots.clone())).await;
        let e = s.get_token(&[VAULT]).await.unwrap().unwrap_err();
        assert!(did_not_resolve(&e), "{no_proxy:?}: {e:?}");
    }
    assert_eq!(proxy.requests().len(), 1, "no request reached the proxy");

    // A loopback broker in NO_PROXY is sent to directly.
    let direct = Fixture::new();
    let vars = [
        ("HTTP_PROXY", proxy_url.as_str()),
        ("NO_PROXY", "127.0.0.1"),
    ];
    let mut s = from_env(env(&direct, &direct.broker.url(), &vars), None).await;
    assert!(s.get_token(&[VAULT]).await.unwrap().is_ok());
    assert_eq!(direct.broker.request_count(), 1);
    assert_eq!(proxy.requests().len(), 1);
}

#[tokio::test]
async fn proxy_credentials_are_sent_and_never_shown() {
    let (f, roots, proxy) = https_broker();
    let url = f.broker.url_for_host(NAME);
    let secret = "s3cr!t pw";
    proxy.require("agent", secret);
    let good = proxy.url_with("agent", "s3cr%21t%20pw");
    let mut s = sandbox(
        &f,
        &url,
        roots.clone(),
        Proxies::none().https(&good).unwrap(),
    )
    .await;
    assert!(mint(&mut s, &url).await.is_ok());
    let sent = proxy.requests()[0].authorization.clone().unwrap();
    assert_eq!(sent, "Basic YWdlbnQ6czNjciF0IHB3", "agent:s3cr!t pw");

    // Wrong credentials: a 407 the error explains, from the environment
    // (naming the variable) and from the builder.
    let bad = proxy.url_with("agent", "wrong-pw");
    let vars = [("HTTPS_PROXY", bad.as_str())];
    let mut s = from_env(env(&f, &url, &vars), Some(roots.clone())).await;
    let e = s.get_token(&[VAULT]).await.unwrap().unwrap_err();
    let port = f.broker.addr().port();
    let expected = format!(
        "the proxy {} (HTTPS_PROXY) refused CONNECT {NAME}:{port} with 407 Proxy Authentication \
         Required: check the proxy credentials in HTTPS_PROXY",
        proxy.url()
    );
    assert!(format!("{e:?}").contains(&expected), "{e:?}");
    let shown = everything_shown(&mut s, &e).await;
    assert!(
        !shown.contains("wrong-pw") && !shown.contains("agent"),
        "{shown}"
    );

    // No credentials at all: the error says where to put them.
    let mut s = sandbox(
        &f,
        &url,
        roots,
        Proxies::none().https(&proxy.url()).unwrap(),
    )
    .await;
    let e = mint(&mut s, &url).await.unwrap_err();
    assert!(
        format!("{e:?}")
            .contains("the proxy wants credentials: give them in the host's proxy settings"),
        "{e:?}"
    );

    // Plain http: the proxy's 407 to a forwarded request is an error too,
    // not a status blamed on the broker.
    let plain = Fixture::new();
    let mut s = sandbox(
        &plain,
        &plain.broker.url(),
        TrustedRoots::public(),
        Proxies::none().http(&bad).unwrap(),
    )
    .await;
    let e = mint(&mut s, &plain.broker.url()).await.unwrap_err();
    assert!(matches!(e, E::BrokerUnreachable(_)), "{e:?}");
    assert!(
        format!("{e:?}")
            .contains("with 407 Proxy Authentication Required: check the proxy credentials"),
        "{e:?}"
    );
    let shown = everything_shown(&mut s, &e).await;
    assert!(!shown.contains("wrong-pw"), "{shown}");
    assert_eq!(plain.broker.request_count(), 0);
}

#[tokio::test]
async fn a_proxy_that_refuses_or_is_unusable_is_named_in_the_error() {
    let (f, roots, proxy) = https_broker();
    let url = f.broker.url_for_host(NAME);
    proxy.refuse(Some(502));
    let mut s = sandbox(
        &f,
        &url,
        roots.clone(),
        Proxies::none().https(&proxy.url()).unwrap(),
    )
    .await;
    let e = mint(&mut s, &url).await.unwrap_err();
    let port = f.broker.addr().port();
    assert!(matches!(e, E::BrokerUnreachable(_)), "{e:?}");
    assert!(
        format!("{e:?}").contains(&format!(
            "the proxy {} refused CONNECT {NAME}:{port} with 502 Bad Gateway: check that the \
             proxy may reach it, or list the host in NO_PROXY",
            proxy.url()
        )),
        "{e:?}"
    );
    assert_eq!(f.broker.connection_count(), 0);

    // A SOCKS proxy (which requests can use with PySocks) is refused with
    // why, its credentials not shown.
    let vars = [("ALL_PROXY", "socks5://user:hunter2@127.0.0.1:1080")];
    let mut s = from_env(env(&f, &url, &vars), Some(roots)).await;
    let e = s.get_token(&[VAULT]).await.unwrap().unwrap_err();
    assert!(format!("{e:?}").contains("the proxy socks5://127.0.0.1:1080 (ALL_PROXY) cannot be used: a SOCKS proxy is not supported"), "{e:?}");
    let shown = everything_shown(&mut s, &e).await;
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[tokio::test]
async fn the_helpers_unix_socket_is_never_proxied() {
    let dir = tempfile::tempdir().unwrap();
    let helper = MockBroker::start_unix(dir.path().join("program.sock")).unwrap();
    let proxy = TestProxy::start().unwrap();
    let everything = Proxies::none().all(&proxy.url()).unwrap();
    let mut s = crate::host()
        .sandbox()
        .runtime_access(helper.socket_path().unwrap())
        .proxies(everything)
        .build()
        .await
        .unwrap();
    assert!(s.get_token(&[VAULT]).await.unwrap().is_ok());
    assert_eq!(helper.request_count(), 1);
    assert_eq!(proxy.connection_count(), 0);

    // From the environment too: helper mode ignores the proxy variables.
    let env: HashMap<String, String> = [
        (
            "VD_RUNTIME_ACCESS_SOCKET",
            helper.socket_path().unwrap().to_str().unwrap(),
        ),
        ("HTTP_PROXY", proxy.url().as_str()),
        ("ALL_PROXY", proxy.url().as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut s = from_env(env, None).await;
    assert!(s.get_token(&[VAULT]).await.unwrap().is_ok());
    assert_eq!(helper.request_count(), 2);
    assert_eq!(proxy.connection_count(), 0);
}

#[tokio::test]
async fn a_tunnel_answered_with_bare_line_feeds_is_used() {
    let (f, roots, proxy) = https_broker();
    proxy.bare_lf(true);
    let url = f.broker.url_for_host(NAME);
    let proxies = Proxies::none().https(&proxy.url()).unwrap();
    let mut s = sandbox(&f, &url, roots, proxies).await;
    assert_eq!(mint(&mut s, &url).await.unwrap(), "mock-token-1");
    assert_eq!(proxy.tunnels().len(), 1);
    assert_eq!(f.broker.request_count(), 1);
}

/// A test agent linked to `f`'s credential, its egress as `builder` says.
async fn agent(f: &Fixture, builder: AgentBuilder) -> TestAgent {
    let linked = LinkedCredential::new(f.sandbox().await, AgentPolicy::new("proxy"));
    let builder = builder.credential_broker(f.broker.url());
    crate::linked_agent(builder, linked).await
}

/// Every target the proxy was asked for.
fn targets(proxy: &TestProxy) -> Vec<String> {
    proxy.requests().into_iter().map(|r| r.target).collect()
}

/// `localhost` as a URL host: its first address through the suite's
/// resolver ([`crate::names`]).
async fn localhost_ip(port: u16) -> String {
    let first = crate::names()
        .lookup("localhost", port)
        .await
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    match first.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

#[tokio::test]
async fn an_agents_tunnel_goes_to_the_address_vetted_here_never_to_the_name() {
    let f = Fixture::new();
    let ca = TestCa::new().unwrap();
    let config = || ca.server_config(&["localhost"], Validity::Current).unwrap();
    let server = MockBroker::start_tls(config()).unwrap();
    // Where the proxy would take the name itself (DNS rebinding, split
    // horizon): another server, which must see nothing.
    let elsewhere = MockBroker::start_tls(config()).unwrap();
    let proxy = TestProxy::start().unwrap();
    proxy.map("localhost", elsewhere.addr());
    let roots = ca.roots();
    let port = server.addr().port();
    let builder = AgentBuilder::default()
        .egress(format!("https://localhost:{port}"))
        .trust(roots)
        .proxies(Proxies::none().https(&proxy.url()).unwrap());
    let mut a = agent(&f, builder).await;
    assert_eq!(
        a.http_get(&format!("https://localhost:{port}/x"))
            .await
            .unwrap(),
        Ok(200)
    );
    // CONNECT to an address localhost resolved to here (the next one only
    // when the proxy could not reach one), never `localhost:port`.
    let connects = targets(&proxy);
    assert!(!connects.is_empty());
    for target in &connects {
        let addr: SocketAddr = target
            .parse()
            .unwrap_or_else(|_| panic!("CONNECT {target}: not an address"));
        assert!(addr.ip().is_loopback() && addr.port() == port, "{target}");
    }
    assert_eq!(proxy.tunnels().len(), 1);
    // TLS and Host stay the name.
    assert_eq!(server.request_count(), 1);
    let r = &server.requests()[0];
    assert_eq!(r.path, "/x");
    assert_eq!(r.header("host"), Some(format!("localhost:{port}").as_str()));
    assert_eq!(elsewhere.connection_count(), 0);
}

#[tokio::test]
async fn an_agents_plain_http_request_names_the_vetted_address_to_the_proxy() {
    let f = Fixture::new();
    let server = MockBroker::start().unwrap();
    let elsewhere = MockBroker::start().unwrap();
    let proxy = TestProxy::start().unwrap();
    proxy.map("localhost", elsewhere.addr());
    let (port, broker_port) = (server.addr().port(), f.broker.addr().port());
    let builder = AgentBuilder::default()
        .egress(format!("http://localhost:{port}"))
        .egress(format!("http://localhost:{broker_port}"))
        .proxies(Proxies::none().all(&proxy.url()).unwrap());
    let mut a = agent(&f, builder).await;
    let status = a
        .http_get(&format!("http://localhost:{port}/x?y=1"))
        .await
        .unwrap();
    let ip = localhost_ip(port).await;
    assert_eq!(targets(&proxy), [format!("http://{ip}:{port}/x?y=1")]);
    assert_eq!(elsewhere.request_count(), 0);
    if ip == "127.0.0.1" {
        // (The server listens on 127.0.0.1 only.)
        assert_eq!(status, Ok(200));
        let r = &server.requests()[0];
        assert_eq!(r.path, "/x?y=1");
        assert_eq!(r.header("host"), Some(format!("localhost:{port}").as_str()));
    }
    // The broker, by address: refused here (as a closed port), the proxy
    // never asked.
    let url = format!("http://localhost:{broker_port}/api/v1/credential-broker/token");
    assert_eq!(
        a.http_get(&url).await.unwrap(),
        Err("ErrorCode::ConnectionRefused".to_string())
    );
    assert_eq!(targets(&proxy).len(), 1);
    assert_eq!(f.broker.connection_count(), 0);
}

#[tokio::test]
async fn no_proxy_with_a_port_matches_an_agents_url_only_when_it_writes_the_port() {
    let f = Fixture::new();
    let proxy = TestProxy::start().unwrap();
    // Answered at once, nothing forwarded.
    proxy.refuse(Some(502));
    let proxies = Proxies::none()
        .all(&proxy.url())
        .unwrap()
        .no_proxy("localhost:80");
    let builder = AgentBuilder::default()
        .egress("http://localhost")
        .proxies(proxies);
    let mut a = agent(&f, builder).await;
    // As requests: `localhost:80` is not matched by a URL without a port.
    assert_eq!(a.http_get("http://localhost/x").await.unwrap(), Ok(502));
    let ip = localhost_ip(80).await;
    assert_eq!(targets(&proxy), [format!("http://{ip}/x")]);
    // Written, it is: connected to directly (whatever answers there).
    let _ = a.http_get("http://localhost:80/x").await.unwrap();
    assert_eq!(targets(&proxy).len(), 1);
}

/// An agent whose request the host's proxy refuses, or whose proxy asks for
/// credentials, learns that the host's proxy failed: never which proxy (its
/// address, its user) or which setting named it. The host's log has both.
#[tokio::test]
async fn an_agent_is_not_told_which_proxy_failed_it() {
    let f = Fixture::new();
    let proxy = TestProxy::start().unwrap();
    proxy.refuse(Some(403));
    let port = f.broker.addr().port() + 1;
    let https = format!("https://localhost:{port}");
    let proxies = Proxies::none()
        .https(&proxy.url_with("ops", "s3cret"))
        .unwrap();
    let builder = AgentBuilder::default()
        .egress(https.clone())
        .proxies(proxies);
    let mut a = agent(&f, builder).await;
    let err = a
        .http_get(&format!("{https}/x"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.contains("the host's proxy could not take this request"),
        "{err}"
    );
    let address = proxy.addr().to_string();
    for secret in [
        address.as_str(),
        "ops",
        "HTTPS_PROXY",
        "proxy settings",
        "403",
    ] {
        assert!(!err.contains(secret), "{secret:?} in {err}");
    }
    assert_eq!(proxy.requests().len(), 1, "the proxy was asked");
}
