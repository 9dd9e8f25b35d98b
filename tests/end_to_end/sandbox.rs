//! The sandbox holds: only the preopened directory, only the broker's origin.

use vd_cred_broker::CredentialError as E;

use crate::{Fixture, VAULT, options};

#[tokio::test]
async fn a_bearer_file_outside_the_preopen_is_unavailable() {
    let f = Fixture::new();
    let outside = tempfile::tempdir().unwrap();
    let path = outside.path().join("credential");
    std::fs::write(&path, "vd_iat_outside").unwrap();
    let mut o = options();
    o.credential_file = Some(path.to_str().unwrap().to_string());
    let err = f.get_token_with(o, &[VAULT]).await.unwrap_err();
    assert!(
        matches!(err, E::BearerUnavailable(ref m) if m.contains("preopen")),
        "{err}"
    );
    // A path climbing out of the preopen, and a link pointing out of it, are
    // refused by the sandbox, and the message says so.
    std::os::unix::fs::symlink(&path, f.dir.path().join("link")).unwrap();
    for file in ["/run/vd/../../etc/passwd", "/run/vd/link"] {
        let mut o = options();
        o.credential_file = Some(file.into());
        let err = f.get_token_with(o, &[VAULT]).await.unwrap_err();
        assert_eq!(
            err,
            E::BearerUnavailable(format!(
                "the bearer file {file:?} (VD_CREDENTIAL_FILE) leads outside the directories the \
                 host shares with the component (a `..` or a symbolic link out of the preopened \
                 directory), so the sandbox refused it: point VD_CREDENTIAL_FILE at the link's \
                 target itself, or have the host share the target's directory"
            )),
        );
    }
    assert_eq!(f.broker.request_count(), 0);
}

#[tokio::test]
async fn requests_to_any_other_origin_are_denied() {
    let f = Fixture::new();
    let other = host_test::MockBroker::start().unwrap();
    let port = f.broker.addr().port();
    for url in [
        other.url(),                             // same host, another port
        format!("http://localhost:{port}/api"),  // another name for the same origin
        format!("https://127.0.0.1:{port}/api"), // another scheme
    ] {
        let mut o = options();
        o.broker_url = Some(url.clone());
        let mut sandbox = f.sandbox().await;
        let credential = sandbox.open(&o).await.unwrap().unwrap();
        let err = sandbox
            .credential_get_token(credential, &[VAULT])
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(err, E::BrokerUnreachable(ref m) if m.contains("refused the request")),
            "{url}: {err}"
        );
        assert_eq!(sandbox.denied_requests().len(), 1, "{url}");
    }
    assert_eq!(other.request_count(), 0);
    assert_eq!(f.broker.request_count(), 0);
}

#[tokio::test]
async fn without_a_broker_origin_all_http_is_denied() {
    let f = Fixture::new();
    let mut sandbox = crate::host()
        .sandbox()
        .env("VD_CREDENTIAL_BROKER_URL", f.broker.url())
        .env("VD_CREDENTIAL_FILE", crate::GUEST_FILE)
        .bearer_dir(f.dir.path(), crate::GUEST_DIR)
        .build()
        .await
        .unwrap();
    let err = sandbox.get_token(&[VAULT]).await.unwrap().unwrap_err();
    assert!(matches!(err, E::BrokerUnreachable(_)), "{err}");
    assert_eq!(
        sandbox.denied_requests(),
        [format!("http://{}", f.broker.addr())]
    );
    assert_eq!(f.broker.request_count(), 0);
}

/// From inside: the probe component gets exactly the credential's sandbox.
/// Every path tried leads to a file the test process itself reads (checked
/// first) or wrote, so each refusal is the sandbox's, and the error
/// says which part of it: a path outside every preopen is not there at all
/// (ENOENT), a way out of the preopen (`..`, a symbolic link) and any write
/// are not permitted (EPERM).
#[tokio::test]
async fn the_probe_can_read_only_the_bearer_directory_and_write_nothing() {
    const NOT_THERE: &str = "No such file or directory (os error 44)";
    const NOT_PERMITTED: &str = "Operation not permitted (os error 63)";
    let f = Fixture::new();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, "host secret").unwrap();
    std::os::unix::fs::symlink(&secret, f.dir.path().join("link")).unwrap();
    // The secret, from the preopened directory, by `..`: both temp dirs share a parent.
    let outside_name = outside.path().file_name().unwrap().to_str().unwrap();
    let climbing = format!("{}/../{outside_name}/secret", crate::GUEST_DIR);
    let host_climbing = f.dir.path().join("..").join(outside_name).join("secret");
    let secret = secret.to_str().unwrap();
    for host_path in [secret, "/etc/passwd", host_climbing.to_str().unwrap()] {
        std::fs::read_to_string(host_path).unwrap_or_else(|e| panic!("host: {host_path}: {e}"));
    }
    assert_eq!(
        std::fs::read_to_string(f.dir.path().join("link")).unwrap(),
        "host secret"
    );
    let mut probe = host_test::probe::build_probe(f.builder()).await.unwrap();

    assert_eq!(probe.preopens().await.unwrap(), [crate::GUEST_DIR]);
    assert_eq!(
        probe.read_file(crate::GUEST_FILE).await.unwrap(),
        Ok(format!("{}\n", f.bearer))
    );
    for (path, error) in [
        (secret, NOT_THERE),
        ("/etc/passwd", NOT_THERE),
        (climbing.as_str(), NOT_PERMITTED),
        ("/run/vd/link", NOT_PERMITTED),
    ] {
        assert_eq!(
            probe.read_file(path).await.unwrap(),
            Err(error.to_string()),
            "read {path}"
        );
    }
    for (path, error) in [
        (crate::GUEST_FILE, NOT_PERMITTED),
        ("/run/vd/new-file", NOT_PERMITTED),
        ("/run/vd/link", NOT_PERMITTED),
        (secret, NOT_THERE),
    ] {
        assert_eq!(
            probe.write_file(path, "overwritten").await.unwrap(),
            Err(error.to_string()),
            "write {path}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(f.dir.path().join("credential")).unwrap(),
        format!("{}\n", f.bearer)
    );
    assert!(!f.dir.path().join("new-file").exists());
    assert_eq!(std::fs::read_to_string(secret).unwrap(), "host secret");
}

#[tokio::test]
async fn the_probe_sees_only_the_environment_it_was_given() {
    let f = Fixture::new();
    let builder = f.builder();
    let given = builder.env_vars().to_vec();
    let mut probe = host_test::probe::build_probe(builder).await.unwrap();
    let mut seen = probe.environment().await.unwrap();
    seen.sort();
    let mut want = given;
    want.sort();
    assert_eq!(seen, want);
    assert!(
        std::env::var("PATH").is_ok() && !seen.iter().any(|(k, _)| k == "PATH"),
        "nothing is inherited"
    );
}

#[tokio::test]
async fn the_probe_reaches_only_the_brokers_origin() {
    let f = Fixture::new();
    let port = f.broker.addr().port();
    let other = host_test::MockBroker::start().unwrap();
    // Configure the broker by name, so the IP literals of the same host are other origins.
    let by_name = format!("http://localhost:{port}/api/v1/credential-broker");
    let mut probe = host_test::probe::build_probe(f.builder().broker_url(&by_name))
        .await
        .unwrap();
    assert_eq!(
        probe.http_get(&format!("{by_name}/token")).await.unwrap(),
        Ok(200)
    );
    for url in [
        format!("http://127.0.0.1:{port}/api/v1/credential-broker/token"), // IP literal of the same host
        format!("http://[::1]:{port}/x"),
        format!("http://localhost:{}/x", other.addr().port()), // same host, another port
        format!("https://localhost:{port}/x"),                 // another scheme
        "http://example.com/".to_string(),
    ] {
        let result = probe.http_get(&url).await.unwrap();
        assert_eq!(
            result,
            Err("ErrorCode::HttpRequestDenied".to_string()),
            "{url}"
        );
    }
    assert_eq!(f.broker.request_count(), 1);
    assert_eq!(other.request_count(), 0);
}

/// The probe's POST (the benchmarks' floor of a mint) is a whole exchange:
/// its body reaches the broker, the answer is read to the end, and the
/// next one goes over the same kept-alive connection.
#[tokio::test]
async fn the_probes_post_sends_its_body_and_reads_the_whole_answer() {
    let f = Fixture::new();
    let url = format!("{}/token", f.broker.url());
    let mut probe = host_test::probe::build_probe(f.builder()).await.unwrap();
    for token in ["first", "second"] {
        f.broker.push(host_test::Reply::token(token, 3600));
        let answer = probe.http_post(&url, r#"{"audience":"vault"}"#).await;
        let answer = answer.unwrap().unwrap();
        assert!(answer.contains(&format!("\"{token}\"")), "{answer}");
    }
    let requests = f.broker.requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/api/v1/credential-broker/token")
        );
        assert_eq!(r.body, br#"{"audience":"vault"}"#);
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(f.broker.connection_count(), 1, "kept alive");
}

/// From inside: wasi:sockets is linked, but no raw socket or name lookup gets
/// anywhere, not even to the broker's own address: the only way out is
/// wasi:http through the host's policy.
#[tokio::test]
async fn the_probe_opens_no_raw_socket_and_resolves_no_name() {
    let f = Fixture::new();
    let broker = f.broker.addr().to_string();
    let listener = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_target = listener.local_addr().unwrap().to_string();
    let mut probe = host_test::probe::build_probe(f.builder()).await.unwrap();
    for address in [broker.as_str(), "127.0.0.1:1", "[::1]:443", "10.0.0.1:80"] {
        assert_eq!(
            probe.tcp_connect(address).await.unwrap(),
            Err("Permission denied (os error 2)".to_string()),
            "tcp {address}"
        );
    }
    assert_eq!(
        probe.udp_send(&udp_target).await.unwrap(),
        Err("Permission denied (os error 2)".to_string()),
        "udp {udp_target}"
    );
    // wasi:sockets/ip-name-lookup is refused; std reports it as a lookup failure.
    assert_eq!(
        probe.resolve("localhost").await.unwrap(),
        Err("failed to lookup address information: Non-recoverable error".to_string()),
    );
    assert_eq!(f.broker.request_count(), 0);
    listener.set_nonblocking(true).unwrap();
    let received = listener.recv(&mut [0u8; 16]);
    assert!(
        matches!(&received, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "no datagram arrived: {received:?}"
    );
}
