//! End-to-end tests: the release component in the wasmtime sandbox, against
//! the loopback mock broker. One test binary, so the component is compiled
//! once ([`host`]) and shared by every test.
//!
//! The suite runs against the WASI 0.2 build, or with `VD_E2E_BUILD=p3` the
//! WASI 0.3 build (`scripts/test.sh` runs both); `concurrent` holds what
//! only the 0.3 build does.
//!
//! The credential through the component:
//! - `protocol`, `modes`: exactly what the original sends (broker 0.1, 0.2,
//!   the runtime-access helper) and how it reads the answer.
//! - `errors`, `hostile`, `secrets`: every error case; malformed and hostile
//!   input failing closed; no bearer or token in any text.
//! - `lifetime`, `rotation`, `retries`, `keepalive`: the cache and refresh on
//!   the host's clock, the bearer re-read, retries in one deadline, the kept
//!   connection.
//! - `sandbox`, `tls`, `proxy`, `from_env`: what the sandbox holds, an https
//!   broker with a private CA, proxies as `requests` uses them, the set-up
//!   from a process's environment.
//! - `logging`, `soak`: the host's spans and events; sustained faults.
//! - `concurrent`: many calls in one 0.3 instance.
//!
//! Agents:
//! - `linked`, `egress`, `injection`: the linked credential from inside a
//!   test agent, the agent's own HTTP, tokens it never holds.
//! - `hostile_agent`, `hostile_http`: an agent attacking the linked route and
//!   the host through its own HTTP.
//! - `agents`, `agents_lang`, `composition`: agents in Rust, Python and
//!   JavaScript (through `vd-cred run-agent`), and the Key Vault example
//!   composed with the credential.

mod agents;
mod agents_lang;
mod composition;
mod concurrent;
mod egress;
mod errors;
mod from_env;
mod hostile;
mod hostile_agent;
mod hostile_http;
mod injection;
mod keepalive;
mod lifetime;
mod linked;
mod logging;
mod modes;
mod protocol;
mod proxy;
mod retries;
mod rotation;
mod sandbox;
mod secrets;
mod soak;
mod tls;

use std::time::{Duration, Instant};

use host_test::{MockBroker, TestClock};
use tempfile::TempDir;
use vd_cred_host::{
    CredentialOptions, Host, Resolver, Sandbox, SandboxBuilder, TokenResult, default_options,
};

/// Where the bearer directory appears inside the sandbox.
pub const GUEST_DIR: &str = "/run/vd";
/// The bearer file, as the component sees it.
pub const GUEST_FILE: &str = "/run/vd/credential";
/// The wall clock every fixture starts at.
pub const T0: u64 = 1_700_000_000;

/// A mock broker, a bearer file in a temp dir, and a host-controlled clock.
pub struct Fixture {
    pub broker: MockBroker,
    pub dir: TempDir,
    pub bearer: String,
    pub clock: TestClock,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_broker(MockBroker::start().unwrap())
    }

    /// A fixture around `broker` (an https one, say).
    pub fn with_broker(broker: MockBroker) -> Fixture {
        // Load (or, on a fresh machine, compile) the component now, so that
        // tests timing a call do not time the first compile too.
        host();
        let dir = tempfile::tempdir().unwrap();
        let bearer = format!("vd_iat_{:016x}", rand_u64());
        std::fs::write(dir.path().join("credential"), format!("{bearer}\n")).unwrap();
        Fixture {
            broker,
            dir,
            bearer,
            clock: TestClock::at_unix(T0),
        }
    }

    /// Replace the bearer file's content.
    pub fn write_bearer(&self, content: &str) {
        std::fs::write(self.dir.path().join("credential"), content).unwrap();
    }

    /// The standard sandbox: env pointing at the broker and the bearer file,
    /// the bearer dir preopened read-only, HTTP only to the broker, our clock.
    pub fn builder(&self) -> SandboxBuilder<'static> {
        self.builder_on(host())
    }

    /// [`Fixture::builder`] on another build than the suite's (the 0.3
    /// build for a shared instance, say).
    pub fn builder_on(&self, host: &'static Host) -> SandboxBuilder<'static> {
        host.sandbox()
            .env("VD_CREDENTIAL_BROKER_URL", self.broker.url())
            .env("VD_CREDENTIAL_FILE", GUEST_FILE)
            .bearer_dir(self.dir.path(), GUEST_DIR)
            .broker_url(self.broker.url())
            .clock(self.clock.clone())
            .resolver(names())
    }

    pub async fn sandbox(&self) -> Sandbox {
        self.builder().build().await.unwrap()
    }

    /// The free `get-token` in a fresh sandbox.
    pub async fn get_token(&self, scopes: &[&str]) -> TokenResult {
        self.sandbox().await.get_token(scopes).await.unwrap()
    }

    /// `credential.open(options)` in a fresh sandbox, then one vault
    /// `get-token` that must fail: its error, and when the call (only the
    /// call) started and ended.
    pub async fn timed_failure(
        &self,
        options: &CredentialOptions,
    ) -> (vd_cred_broker::CredentialError, Instant, Instant) {
        let mut sandbox = self.sandbox().await;
        let credential = sandbox.open(options).await.unwrap().unwrap();
        let started = Instant::now();
        let err = sandbox
            .credential_get_token(credential, &[VAULT])
            .await
            .unwrap()
            .unwrap_err();
        (err, started, Instant::now())
    }

    /// `credential.open(options)` then one `get-token`, in a fresh sandbox.
    pub async fn get_token_with(&self, options: CredentialOptions, scopes: &[&str]) -> TokenResult {
        let mut sandbox = self.sandbox().await;
        let credential = sandbox.open(&options).await.unwrap()?;
        sandbox
            .credential_get_token(credential, scopes)
            .await
            .unwrap()
    }
}

/// The host the suite runs against: the embedded WASI 0.2 build, or with
/// `VD_E2E_BUILD=p3` the 0.3 build.
pub fn host() -> &'static Host {
    match std::env::var("VD_E2E_BUILD").as_deref() {
        Ok("p3") => Host::shared_p3(),
        Ok("p2") | Err(_) => Host::shared(),
        Ok(other) => panic!("VD_E2E_BUILD={other}: use p2 or p3"),
    }
}

/// The call limit of a sandbox whose first call must run past its limit
/// (against a broker that never answers) and whose next call must then
/// succeed: the host's own margin over a call's deadline
/// ([`vd_cred_host::CALL_MARGIN`]). The host sets one limit for every call
/// of a sandbox, so the follow-up call gets what the overrun got; a limit
/// of 100-200 ms failed that follow-up on a loaded machine, whose loopback
/// round trip alone can take that long.
pub const OVERRUN_LIMIT: Duration = vd_cred_host::CALL_MARGIN;

/// The test agent (compiled once per process, [`linked::agent_pre`]), its
/// egress as `builder` says, its `token-credential` import linked to
/// `linked`: the one way the suite makes a linked test agent.
pub async fn linked_agent(
    builder: vd_cred_host::runner::AgentBuilder,
    linked: vd_cred_host::linked::LinkedCredential,
) -> host_test::agent::test_agent::TestAgent {
    host_test::agent::test_agent::TestAgent::new(
        builder,
        host().engine(),
        linked::agent_pre(),
        linked,
    )
    .await
    .unwrap()
}

/// The names the suite resolves, through the host's resolver override
/// rather than the machine's: `localhost` (in any spelling the host
/// accepts, `localhost.` included) is loopback; every other name does not
/// exist, as `.invalid` names never do (RFC 6761). Every sandbox of
/// [`Fixture::builder`] uses it, and the agents' egress inherits it.
pub fn names() -> Resolver {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    Resolver::table([
        ("localhost", IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ("localhost", IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ])
    .unwrap()
}

/// Options with only these fields set.
pub fn options() -> CredentialOptions {
    default_options()
}

/// Run the ignored test `name` of this binary in a process of its own (the
/// binary run again for it alone, with the same build of the credential),
/// so that what it measures of the process (its peak memory, its open
/// descriptors) is its own, not what other tests beside it did.
///
/// On Linux the binary is run as `/proc/self/exe`, the very file this
/// process runs, even if a build beside it has since replaced the file at
/// its path (cargo's target directory is often shared).
pub fn alone(name: &str) {
    let exe = match std::path::Path::new("/proc/self/exe").exists() {
        true => std::path::PathBuf::from("/proc/self/exe"),
        false => std::env::current_exe().unwrap(),
    };
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            name,
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Poll `ready` until it holds, sleeping a millisecond between polls (never
/// spinning on a core that the code under test may need). A backstop only:
/// after 60 s, far past any machine's need, the test fails naming `what`.
pub async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let backstop = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < backstop, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Per-test randomness without a dependency: hash the time and a counter.
pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

pub const VAULT: &str = "https://vault.azure.net/.default";
