//! Agents written in Python (`examples/py-agent`, componentize-py) and
//! JavaScript (`examples/js-agent`, componentize-js) minting through
//! `vd-cred run-agent`, run as a process the way a user runs it: the host
//! links each agent's `token-credential` import to the credential in its own
//! sandbox, with an `--allow` list. A token for the allowed audience; for
//! another scope `scope-not-allowed`, rendered by the agent in its own
//! language, and nothing sent to the broker for it.
//!
//! The agents are built outside cargo (scripts/test.sh builds both into
//! cargo's target directory and names them in `VD_PY_AGENT_WASM` and
//! `VD_JS_AGENT_WASM`); `vd-cred` is built here with `cargo build
//! --package vd-cred-cli` unless `VD_CLI_BIN` names it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use host_test::Reply;

use crate::Fixture;

/// What the broker mints: 44 characters, never to be seen in the output.
const TOKEN: &str = "tok-0123456789abcdefghijklmnopqrstuvwxyz0123";
const ALLOWED: &str = "https://vault.azure.net/.default";
const REFUSED: &str = "https://storage.azure.com/.default";

/// One language's agent: where it is built, and how it renders the refusal.
struct Lang {
    /// The variable naming the built agent.
    env: &'static str,
    /// The default's file name, in cargo's target directory.
    file: &'static str,
    /// The script that builds it.
    script: &'static str,
    /// What the build script needs.
    needs: &'static str,
    /// The agent's `err` for [`REFUSED`], as the agent's language renders
    /// the `scope-not-allowed` payload.
    refusal: &'static str,
}

const PYTHON: Lang = Lang {
    env: "VD_PY_AGENT_WASM",
    file: "py-agent.wasm",
    script: "examples/py-agent/build.sh",
    needs: "componentize-py from python/requirements-test.txt",
    // A `match` on the generated dataclasses; Python's repr quotes.
    refusal: "scope-not-allowed: 'https://storage.azure.com/.default' is not allowed; \
              known_resources=['https://vault.azure.net']",
};

const JAVASCRIPT: Lang = Lang {
    env: "VD_JS_AGENT_WASM",
    file: "js-agent.wasm",
    script: "examples/js-agent/build.sh",
    needs: "Node.js",
    // The thrown error's `payload` (`{tag, val}`), a record with camelCase
    // fields, through JSON.stringify.
    refusal: "scope-not-allowed: \"https://storage.azure.com/.default\" is not allowed; \
              knownResources: [\"https://vault.azure.net\"]",
};

impl Lang {
    /// The built agent: the file `self.env` names, else `self.file` in
    /// cargo's target directory, wherever that is (`CARGO_TARGET_DIR` or
    /// `build.target-dir` may move it from `<repo>/target`): the parent of
    /// `CARGO_TARGET_TMPDIR`, which cargo gives integration tests as
    /// `<target dir>/tmp`. A missing one fails the test, naming the script.
    fn wasm(&self) -> PathBuf {
        let path = std::env::var_os(self.env).map_or_else(
            || {
                Path::new(env!("CARGO_TARGET_TMPDIR"))
                    .parent()
                    .expect("CARGO_TARGET_TMPDIR is <target dir>/tmp")
                    .join(self.file)
            },
            PathBuf::from,
        );
        assert!(
            path.exists(),
            "{} is missing: build it with `{} {}` (needs {}; scripts/test.sh does this), \
             or set {} to a built agent",
            path.display(),
            self.script,
            path.display(),
            self.needs,
            self.env,
        );
        path
    }
}

/// The `vd-cred` binary: `VD_CLI_BIN`, else built (once per test process;
/// a no-op when fresh) with `cargo build --package vd-cred-cli`, as
/// scripts/test.sh builds it.
fn vd_cred_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("VD_CLI_BIN") {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut command = Command::new(cargo);
        // Without what cargo sets for this test process: build scripts that
        // watch one of these (ring's watches CARGO_MANIFEST_DIR) would
        // otherwise rebuild, here and again in the next build from a shell.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name == "OUT_DIR"
                || [
                    "CARGO_PKG_",
                    "CARGO_MANIFEST_",
                    "CARGO_BIN_",
                    "CARGO_CRATE_",
                ]
                .iter()
                .any(|p| name.starts_with(p))
                || [
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                ]
                .contains(&name.as_ref())
            {
                command.env_remove(name.as_ref());
            }
        }
        let out = command
            .args([
                "build",
                "--package",
                "vd-cred-cli",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running cargo build --package vd-cred-cli");
        assert!(
            out.status.success(),
            "cargo build --package vd-cred-cli failed"
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "vd-cred")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo build --package vd-cred-cli names no vd-cred executable")
    })
}

/// What one `run-agent` process printed.
struct Run {
    stdout: String,
    stderr: String,
}

/// `vd-cred run-agent <wasm> --allow <allow> --invoke 'mint([<scope>])'...`
/// with the fixture's broker and bearer file, and nothing else of this
/// process's environment that the credential reads.
fn run_agent(f: &Fixture, wasm: &Path, allow: &str, scopes: &[&str]) -> Run {
    let mut command = Command::new(vd_cred_bin());
    command.arg("run-agent").arg(wasm).args(["--allow", allow]);
    for scope in scopes {
        command.args(["--invoke", &format!("mint([{scope:?}])")]);
    }
    for name in vd_cred_host::from_env::ENV_VARS {
        command.env_remove(name);
    }
    let mut child = command
        .env("VD_CREDENTIAL_BROKER_URL", f.broker.url())
        .env("VD_CREDENTIAL_FILE", f.dir.path().join("credential"))
        .env(
            "VD_RUNTIME_ACCESS_SOCKET",
            f.dir.path().join("no-helper.sock"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning vd-cred run-agent");
    // Both pipes are read while the child runs (a child that fills a pipe
    // nobody reads blocks on it).
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        let mut pipe = pipe.expect("piped");
        std::thread::spawn(move || {
            let mut text = Vec::new();
            pipe.read_to_end(&mut text)
                .expect("reading run-agent's output");
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    // The first run compiles the agent (tens of seconds in a debug host);
    // a hung one fails the test rather than the suite.
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let run = Run {
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    assert!(
        status.success(),
        "run-agent {}: {}\nstdout:\n{}\nstderr:\n{}",
        wasm.display(),
        status,
        run.stdout,
        run.stderr
    );
    run
}

/// A WAVE `result<string, string>` as printed by `run-agent`, decoded.
fn wave_result(line: &str) -> Result<String, String> {
    let (ok, quoted) = if let Some(rest) = line.strip_prefix("ok(") {
        (true, rest)
    } else if let Some(rest) = line.strip_prefix("err(") {
        (false, rest)
    } else {
        panic!("not a result: {line}")
    };
    let quoted = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix("\")"))
        .unwrap_or_else(|| panic!("not a string result: {line}"));
    let mut text = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        text.push(match c {
            '\\' => match chars.next() {
                Some('n') => '\n',
                Some('t') => '\t',
                Some(c) => c, // \" \' \\
                None => panic!("a dangling escape: {line}"),
            },
            c => c,
        });
    }
    if ok { Ok(text) } else { Err(text) }
}

/// The allowed scope mints once (the agent says so without the token); the
/// other is `scope-not-allowed` as the agent renders it, never sent.
fn mints_and_renders_the_refusal(lang: &Lang) {
    let wasm = lang.wasm();
    let f = Fixture::new();
    f.broker.push(Reply::token(TOKEN, 3600));
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let run = run_agent(&f, &wasm, "https://vault.azure.net", &[ALLOWED, REFUSED]);

    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one result per --invoke:\n{}", run.stdout);
    let summary = wave_result(lines[0]).unwrap_or_else(|e| panic!("{ALLOWED}: {e}"));
    let expires_on: u64 = summary
        .strip_prefix(&format!("token of {} chars, expires_on ", TOKEN.len()))
        .unwrap_or_else(|| panic!("{summary}"))
        .parse()
        .unwrap();
    let ended = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (started + 3600..=ended + 3600).contains(&expires_on),
        "{summary}"
    );
    assert_eq!(wave_result(lines[1]), Err(lang.refusal.to_string()));

    // Exactly one mint, for the allowed audience, with the fixture's bearer.
    let requests = f.broker.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].body, br#"{"audience":"vault"}"#);
    let authorization = format!("Bearer {}", f.bearer);
    assert_eq!(
        requests[0].header("authorization"),
        Some(authorization.as_str())
    );

    // The audit lines; the token in neither stream.
    let id = wasm.file_stem().unwrap().to_string_lossy();
    let minted = format!("audit: agent {id} got a vault token expiring at {expires_on} (minted)");
    assert!(run.stderr.contains(&minted), "{}", run.stderr);
    let refused = format!("audit: agent {id} was refused: scope {REFUSED:?} is not allowed");
    assert!(run.stderr.contains(&refused), "{}", run.stderr);
    assert!(!run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN));
}

#[test]
fn a_python_agent_mints_through_run_agent_and_reads_scope_not_allowed_in_python() {
    mints_and_renders_the_refusal(&PYTHON);
}

#[test]
fn a_javascript_agent_mints_through_run_agent_and_reads_scope_not_allowed_in_javascript() {
    mints_and_renders_the_refusal(&JAVASCRIPT);
}

/// Machine code an agent could plant where run-agent used to look for an
/// agent's cache (beside its `.wasm`, under the name that cache had) is
/// never run: agents' machine code is kept in the user cache, sealed with
/// the host's key; nothing is written beside the `.wasm`; and run-agent
/// refuses to preopen that cache for an agent.
#[test]
fn run_agent_never_runs_planted_machine_code_and_refuses_a_preopen_over_its_cache() {
    use vd_cred_host::precompiled::cache_file_name;
    let f = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let (agents, cache) = (dir.path().join("agents"), dir.path().join("cache"));
    std::fs::create_dir(&agents).unwrap();
    let wasm = agents.join("agent.wasm");
    let bytes = std::fs::read(host_test::agent::test_agent::TEST_AGENT_WASM).unwrap();
    std::fs::write(&wasm, &bytes).unwrap();
    // Another component's machine code (the probe's), for run-agent's
    // engine, private to this user, where the old cache would have been.
    let engine = vd_cred_host::Host::shared().engine();
    let probe = std::fs::read(host_test::probe::PROBE_WASM).unwrap();
    let planted = agents.join(cache_file_name(engine, "agent.wasm", &bytes));
    std::fs::write(&planted, engine.precompile_component(&probe).unwrap()).unwrap();
    let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(&planted, private).unwrap();
    let run = |extra: &[&str]| {
        let mut command = Command::new(vd_cred_bin());
        command.arg("run-agent").arg(&wasm).args(extra);
        for name in vd_cred_host::from_env::ENV_VARS {
            command.env_remove(name);
        }
        command
            .args(["--invoke", r#"http-loop("http://example.test/", 0)"#])
            .env("VD_CREDENTIAL_BROKER_URL", f.broker.url())
            .env("VD_CREDENTIAL_FILE", f.dir.path().join("credential"))
            .env("VD_RUNTIME_ACCESS_SOCKET", f.dir.path().join("none.sock"))
            .env(vd_cred_host::precompiled::ENV_CACHE_DIR, &cache)
            .output()
            .expect("spawning vd-cred run-agent")
    };
    for round in ["compiled", "cached"] {
        let out = run(&[]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        // The test agent's own export ran: the probe has no `http-loop`.
        assert!(
            out.status.success() && stdout.trim() == "[]",
            "{round}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
    }
    let beside: Vec<String> = std::fs::read_dir(&agents)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        beside.len(),
        2,
        "nothing written beside the .wasm: {beside:?}"
    );
    let cached = std::fs::read_dir(&cache).unwrap().count();
    assert!(cached >= 1, "the agent's machine code is in the user cache");
    assert!(
        vd_cred_host::precompiled::key_path(&cache)
            .unwrap()
            .is_file()
    );

    // A preopen over the cache, or over a directory that holds it.
    for over in [cache.clone(), dir.path().to_path_buf()] {
        let spec = format!("{}::/cache", over.display());
        let out = run(&["--dir", &spec]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("may not be preopened for an agent"),
            "{stderr}"
        );
    }
}
