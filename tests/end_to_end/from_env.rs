//! The host library's set-up from a process's environment: `SSL_CERT_FILE`
//! (or `requests`' variables) for an https broker, and bearer paths that are symbolic links.

use std::collections::HashMap;
use std::os::unix::fs::symlink;
use std::path::Path;

use host_test::MockBroker;
use host_test::tls::{TestCa, Validity};
use vd_cred_broker::CredentialError as E;
use vd_cred_host::Sandbox;
use vd_cred_host::from_env::{Setup, sandbox_from_env};

use crate::VAULT;

/// The environment of a process in broker mode (no helper socket).
fn env(broker: &MockBroker, file: &Path, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("VD_RUNTIME_ACCESS_SOCKET", "/nonexistent/helper.sock"),
        ("VD_CREDENTIAL_BROKER_URL", broker.url().as_str()),
        ("VD_CREDENTIAL_FILE", file.to_str().unwrap()),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.retain(|_, v| !v.is_empty());
    env
}

async fn sandbox(env: HashMap<String, String>) -> Sandbox {
    sandbox_from_env(crate::host(), move |k| env.get(k).cloned())
        .unwrap()
        .build()
        .await
        .unwrap()
}

/// The bearer the broker saw last.
fn last_bearer(broker: &MockBroker) -> String {
    let requests = broker.requests();
    let r = requests.last().expect("a request");
    r.header("authorization")
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_string()
}

#[tokio::test]
async fn ssl_cert_file_adds_a_private_ca() {
    let ca = TestCa::new().unwrap();
    let broker = ca.broker(&["localhost"], Validity::Current).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credential");
    std::fs::write(&file, "vd_iat_tls\n").unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    // Each variable alone adds the CA: OpenSSL's, and the two `requests`
    // (the original) reads.
    for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
        let with_ca = env(&broker, &file, &[(var, ca_file.to_str().unwrap())]);
        let token = sandbox(with_ca).await.get_token(&[VAULT]).await.unwrap();
        assert!(token.unwrap().token.starts_with("mock-token-"), "{var}");
    }

    let without = env(&broker, &file, &[]);
    let err = sandbox(without)
        .await
        .get_token(&[VAULT])
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, E::BrokerUnreachable(ref m) if m.contains("is not trusted")),
        "{err}"
    );

    // A file without certificates is read, and refused, by the first https
    // connection (as `requests` reads `REQUESTS_CA_BUNDLE`), not when the
    // sandbox is set up; nothing reaches the broker.
    let not_pem = env(&broker, &file, &[("SSL_CERT_FILE", file.to_str().unwrap())]);
    let err = sandbox(not_pem)
        .await
        .get_token(&[VAULT])
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, E::BrokerUnreachable(ref m) if m.contains(&format!(
            "TLS handshake failed: SSL_CERT_FILE names {}, which does not hold usable CA \
             certificates: fix or unset it: CA certificates in {0}: no PEM certificate \
             (-----BEGIN CERTIFICATE-----) found",
            file.display()
        ))),
        "{err}"
    );
    assert!(!format!("{err}").contains("vd_iat_tls"), "{err}");
    assert_eq!(broker.request_count(), 3);
}

#[tokio::test]
async fn ca_files_are_not_read_for_a_plain_http_broker() {
    // A CI image or desktop that sets all three variables, one of them to a
    // file that is not there: a plain-http broker never needs the roots, so
    // nothing is read and the token comes as without them.
    let broker = MockBroker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credential");
    std::fs::write(&file, "vd_iat_plain\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let with_vars = env(
        &broker,
        &file,
        &[
            ("SSL_CERT_FILE", missing.to_str().unwrap()),
            ("REQUESTS_CA_BUNDLE", missing.to_str().unwrap()),
            ("CURL_CA_BUNDLE", file.to_str().unwrap()),
        ],
    );
    let token = sandbox(with_vars).await.get_token(&[VAULT]).await.unwrap();
    assert!(token.unwrap().token.starts_with("mock-token-"));
    assert_eq!(broker.request_count(), 1);
}

#[tokio::test]
async fn a_bearer_link_out_of_its_directory_is_followed_by_the_host() {
    let broker = MockBroker::start().unwrap();
    let shared = tempfile::tempdir().unwrap(); // where the variable points
    let target = tempfile::tempdir().unwrap(); // where the bearer really is
    let real = target.path().join("credential");
    std::fs::write(&real, "vd_iat_first\n").unwrap();
    let absolute = shared.path().join("absolute");
    symlink(&real, &absolute).unwrap();
    let relative = shared.path().join("relative");
    let up = format!(
        "../{}/credential",
        target.path().file_name().unwrap().to_str().unwrap()
    );
    symlink(&up, &relative).unwrap();

    for link in [&absolute, &relative] {
        std::fs::write(&real, "vd_iat_first\n").unwrap();
        let setup = Setup::from_env(|k| env(&broker, link, &[]).get(k).cloned());
        let real_path = real.canonicalize().unwrap();
        assert_eq!(
            setup.bearer_location(),
            Some((
                real_path.parent().unwrap().to_path_buf(),
                real_path.to_str().unwrap().to_string()
            )),
            "{}: the target's directory is shared and the resolved path handed in",
            link.display()
        );
        let mut sandbox = sandbox(env(&broker, link, &[])).await;
        sandbox.get_token(&[VAULT]).await.unwrap().unwrap();
        assert_eq!(last_bearer(&broker), "vd_iat_first");
        // The target rewritten (Studio's rotation): seen on the next call.
        std::fs::write(&real, "vd_iat_second\n").unwrap();
        sandbox.get_token(&[VAULT]).await.unwrap().unwrap();
        assert_eq!(last_bearer(&broker), "vd_iat_second", "{}", link.display());
    }
}

#[tokio::test]
async fn a_kubernetes_style_layout_works_and_a_swap_is_seen_on_the_next_call() {
    // credential -> ..data/credential, ..data -> ..2026_11_29_a, all inside
    // the one directory, as a Kubernetes secret or projected volume is.
    let broker = MockBroker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (version, bearer) in [
        ("..2026_11_29_a", "vd_iat_a"),
        ("..2026_11_29_b", "vd_iat_b"),
    ] {
        std::fs::create_dir(d.join(version)).unwrap();
        std::fs::write(d.join(version).join("credential"), format!("{bearer}\n")).unwrap();
    }
    symlink("..2026_11_29_a", d.join("..data")).unwrap();
    symlink("..data/credential", d.join("credential")).unwrap();
    let file = d.join("credential");

    let setup = Setup::from_env(|k| env(&broker, &file, &[]).get(k).cloned());
    assert_eq!(
        setup.bearer_location(),
        Some((d.to_path_buf(), file.to_str().unwrap().to_string())),
        "links inside the directory are left to the component"
    );
    let mut sandbox = sandbox(env(&broker, &file, &[])).await;
    sandbox.get_token(&[VAULT]).await.unwrap().unwrap();
    assert_eq!(last_bearer(&broker), "vd_iat_a");

    // The atomic swap Kubernetes makes: a new link renamed over `..data`.
    symlink("..2026_11_29_b", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    sandbox.get_token(&[VAULT]).await.unwrap().unwrap();
    assert_eq!(last_bearer(&broker), "vd_iat_b");
    assert_eq!(broker.request_count(), 2);
}
