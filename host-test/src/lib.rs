//! A wasmtime host for the `vd-cred-broker` component, and a loopback mock broker.
//!
//! - [`Host`] compiles the component once; [`Host::sandbox`] builds a tightly
//!   sandboxed instance ([`Sandbox`]) per agent or per test.
//! - [`MockBroker`] is a real HTTP/1.1 server on 127.0.0.1 that records every
//!   request and answers from a script.
//! - [`TestClock`] is a wall clock the host controls.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use host_test::{Host, MockBroker};
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

pub mod broker;
pub mod clock;
pub mod from_env;
pub mod keyvault;
pub mod native;
pub mod policy;
pub mod precompiled;
pub mod probe;
pub mod sandbox;

/// Host bindings for the `cred-broker` world.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "cred-broker",
        path: "../wit",
        exports: { default: async },
    });
}

pub use broker::{MockBroker, Recorded, Reply};
pub use clock::TestClock;
pub use sandbox::{
    AccessToken, AccessTokenInfo, CredentialOptions, Host, HostOptions, Sandbox, SandboxBuilder,
    TokenInfoResult, TokenRequestOptions, TokenResult, default_options,
};

/// Path of the release component built by this crate's build script.
pub const COMPONENT_WASM: &str = env!("VD_CRED_BROKER_WASM");

/// This process's resident set size in KiB (Linux `/proc/self/status`; 0
/// elsewhere): for the soak test and the memory benchmark.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
