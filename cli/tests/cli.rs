//! `vd-cred` as a user runs it: the built binary in a process of its own,
//! against the loopback mock broker (which records every request), with
//! nothing of this process's environment that the credential reads, and its
//! own precompiled cache (the test command's, else a temporary one).

use std::path::Path;
use std::process::{Command, Output};

use host_test::{MockBroker, Reply};

const VAULT: &str = "https://vault.azure.net/.default";

/// A bearer file and a cache directory, gone with the value.
struct Env {
    dir: tempfile::TempDir,
    bearer: String,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let bearer = format!("vd_iat_cli_{}", std::process::id());
        std::fs::write(dir.path().join("credential"), format!("{bearer}\n")).unwrap();
        Env { dir, bearer }
    }

    /// `vd-cred <args>` with only the variables given here.
    fn vd_cred(&self, args: &[&str], vars: &[(&str, &Path)]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vd-cred"));
        command.args(args);
        for name in vd_cred_host::from_env::ENV_VARS
            .iter()
            .chain(&vd_cred_host::precompiled::CACHE_ENV_VARS)
        {
            command.env_remove(name);
        }
        let cache = std::env::var_os(vd_cred_host::precompiled::ENV_CACHE_DIR)
            .unwrap_or_else(|| self.dir.path().join("cache").into());
        command
            .env(vd_cred_host::precompiled::ENV_CACHE_DIR, cache)
            // No helper: its default socket is never consulted.
            .env(
                "VD_RUNTIME_ACCESS_SOCKET",
                self.dir.path().join("no-helper.sock"),
            );
        for (name, value) in vars {
            command.env(name, value);
        }
        command.output().expect("running vd-cred")
    }

    fn get_token(&self, broker: &MockBroker) -> Output {
        let url = broker.url();
        self.vd_cred(
            &["get-token", VAULT],
            &[
                ("VD_CREDENTIAL_BROKER_URL", Path::new(&url)),
                ("VD_CREDENTIAL_FILE", &self.dir.path().join("credential")),
            ],
        )
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn get_token_prints_the_brokers_token_as_json() {
    let env = Env::new();
    let broker = MockBroker::start().unwrap();
    broker.push(Reply::token("tok-from-the-broker", 1800));
    let out = env.get_token(&broker);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["token"], "tok-from-the-broker");
    assert!(json["expires_on"].as_u64().unwrap() > 1_700_000_000);
    let requests = broker.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {}", env.bearer).as_str())
    );
    assert_eq!(text(&requests[0].body), r#"{"audience":"vault"}"#);
    assert!(!text(&out.stderr).contains(&env.bearer));
}

#[test]
fn a_broker_refusal_is_exit_code_1_with_the_reason_and_no_bearer() {
    let env = Env::new();
    let broker = MockBroker::start().unwrap();
    broker.push(Reply::json(403, r#"{"error":"intent revoked"}"#));
    let out = env.get_token(&broker);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    assert!(stderr.contains("intent revoked"), "{stderr}");
    assert!(!stderr.contains(&env.bearer), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn without_a_broker_it_says_what_to_set() {
    let env = Env::new();
    let out = env.vd_cred(&["get-token", VAULT], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("VD_CREDENTIAL_BROKER_URL"), "{stderr}");
}

#[test]
fn a_wrong_command_line_is_exit_code_2_with_the_usage() {
    let env = Env::new();
    for args in [&[][..], &["get-token"], &["mint", VAULT]] {
        let out = env.vd_cred(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains("vd-cred get-token <scope>"));
    }
    let out = env.vd_cred(&["--help"], &[]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("vd-cred run-agent <agent.wasm>"));
    // A malformed call is refused before anything is compiled or sent.
    let out = env.vd_cred(&["run-agent", "no-such.wasm", "--invoke", "f("], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--invoke f("),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_demo_runs_and_never_prints_the_bearer() {
    let env = Env::new();
    let out = env.vd_cred(&["demo"], &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for line in [
        "token            mock-token-1",
        "agent asked      storage: scope \"https://storage.azure.com/.default\" is not allowed",
        "agent GET        the broker: Err(\"ErrorCode::HttpRequestDenied\")",
        "vault received   GET /secrets/db?api-version=7.4 with authorization: Bearer mock-token-",
        "authorization: Bearer vd_iat_[redacted]",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("vd_iat_demo_"), "{stdout}");
}

/// A debug build on Linux is a position-dependent executable (`build.rs`):
/// no relocations for the loader to apply at each start. The ELF header's
/// `e_type` says which: 2 (`ET_EXEC`), not 3 (`ET_DYN`, position-independent).
#[test]
#[cfg(all(target_os = "linux", debug_assertions))]
fn a_debug_build_starts_without_relocating_itself() {
    use std::io::Read;
    let mut header = [0u8; 18];
    std::fs::File::open(env!("CARGO_BIN_EXE_vd-cred"))
        .and_then(|mut binary| binary.read_exact(&mut header))
        .unwrap();
    assert_eq!(&header[..4], b"\x7fELF");
    let e_type = u16::from_le_bytes([header[16], header[17]]);
    assert_eq!(e_type, 2, "ET_EXEC, not a position-independent executable");
}
