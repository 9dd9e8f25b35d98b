//! What the tests, the demo and the benchmarks need around the host library
//! ([`vd_cred_host`]): nothing here is for production.
//!
//! - [`MockBroker`] is a real HTTP/1.1 server on 127.0.0.1 (or a Unix socket,
//!   as the runtime-access helper) that records every request and answers
//!   from a script.
//! - [`fast_broker::FastBroker`] is a minimal loopback broker for benchmarks
//!   (one write per answer, TCP_NODELAY, keep-alive).
//! - [`TestClock`] is a wall clock the test controls.
//! - [`tls::TestCa`] is a throw-away CA for the https mock broker
//!   ([`MockBroker::start_tls`]).
//! - [`probe`] runs a test component in the credential's exact sandbox.
//! - [`sink::Sink`] reads everything and never answers; [`sink::Gate`]
//!   answers when the test says so.
//! - [`keyvault`] is the composed Key Vault example; [`native`] the same core
//!   without wasm, the benchmarks' floor.
//! - [`ClosedPort`] is a loopback port held where nothing listens.
//! - [`rss_kib`], [`peak_rss_kib`] and [`reset_peak_rss`] read and reset
//!   this process's memory (Linux), for the tests and the benchmarks alike.
//! - [`agent`] is the test agent (typed calls for every attack the tests
//!   make) and [`js_agent`] the JavaScript one, both run in
//!   [`vd_cred_host::runner`]'s store.
//! - [`azure::MockAzure`] is a mock Key Vault and Storage; [`proxy`] a
//!   loopback HTTP proxy, counted and recorded.
//! - [`original`] runs the original Python credential beside the component,
//!   [`plain_host`] the credential in a host configured as most embedders
//!   leave it, [`wave`] times a wave of concurrent calls and [`timing`]
//!   prints one measure's samples: for the benchmarks.
//!
//! `src/main.rs` is the `host-test` binary: the mock broker, the mock Azure
//! services and the benchmark broker as processes, for other runtimes'
//! tests. The product's command line is `vd-cred` (`cli/`).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use host_test::MockBroker;
//! use vd_cred_host::Host;
//! let broker = MockBroker::start()?;
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join("credential"), "vd_iat_example\n")?;
//! let mut sandbox = Host::shared()
//!     .sandbox()
//!     .bearer_dir(dir.path(), "/run/vd")
//!     .env("VD_CREDENTIAL_FILE", "/run/vd/credential")
//!     .env("VD_CREDENTIAL_BROKER_URL", broker.url())
//!     .broker_url(broker.url())
//!     .build()
//!     .await?;
//! let token = sandbox.get_token(&["https://vault.azure.net/.default"]).await??;
//! # Ok(()) }
//! ```

pub mod agent;
pub mod azure;
pub mod broker;
pub mod clock;
pub mod fast_broker;
pub mod js_agent;
pub mod keyvault;
pub mod native;
pub mod original;
pub mod plain_host;
pub mod probe;
pub mod proxy;
mod server_thread;
pub mod sink;
pub mod timing;
pub mod tls;
pub mod wave;

pub use broker::{MockBroker, Recorded, Reply};
pub use clock::TestClock;

/// This process's resident set size in KiB, from Linux's `/proc/self/status`;
/// `None` where that does not exist: for the soak test and the memory benchmark.
pub fn rss_kib() -> Option<u64> {
    status_kib("VmRSS:")
}

/// The anonymous (private) part of [`rss_kib`]: without file-backed pages,
/// such as a precompiled component's data that every instance maps and
/// shares, which RSS counts once per instance.
pub fn rss_anon_kib() -> Option<u64> {
    status_kib("RssAnon:")
}

/// This process's peak resident set size in KiB (`VmHWM`), since it
/// started or since [`reset_peak_rss`].
pub fn peak_rss_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

/// Start [`peak_rss_kib`] again from the current resident set (Linux's
/// `/proc/self/clear_refs`): a test measures the peak of what it does next,
/// not of the warm-up before. `false` where that cannot be done.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// How many file descriptors this process has open (Linux's
/// `/proc/self/fd`), `None` where that cannot be read.
pub fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// A loopback TCP port held for as long as the value lives, where nothing
/// listens: the socket is bound but never listening, so a connection to it
/// is refused (the kernel answers a reset) every time, and nothing else can
/// take the port meanwhile (it is bound without `SO_REUSEADDR`, which a
/// later bind would need). A port bound, dropped and assumed free could be
/// taken by whatever runs beside the test.
pub struct ClosedPort {
    _socket: socket2::Socket,
    addr: std::net::SocketAddr,
}

impl ClosedPort {
    /// Bind a port on 127.0.0.1.
    pub fn new() -> std::io::Result<ClosedPort> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        let addr = socket
            .local_addr()?
            .as_socket()
            .expect("an IPv4 socket has an IP address");
        Ok(ClosedPort {
            _socket: socket,
            addr,
        })
    }

    /// The held address, e.g. `127.0.0.1:41234`.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

fn status_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
