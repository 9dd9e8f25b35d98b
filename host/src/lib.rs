//! Embed the `vd-cred-broker` credential component in a wasmtime host.
//!
//! The credential is a WebAssembly component; this crate is how a Rust
//! runtime runs it, tightly sandboxed, once per agent:
//!
//! - [`Host`] holds one engine and the component, compiled once (the
//!   component is embedded in this crate, [`COMPONENT`]; its machine code is
//!   cached per user, so a new process skips Cranelift) and linked once;
//! - [`Host::sandbox`] builds a [`Sandbox`]: a fresh store with only the
//!   environment you pass, only the bearer's directory preopened read-only,
//!   and outgoing HTTP only to the broker's origin ([`policy`]), or only to
//!   the runtime-access helper over its Unix socket;
//! - [`Resolver`] is how the host looks host names up for a sandbox (the
//!   system's resolver unless [`SandboxBuilder::resolver`] sets another,
//!   such as a fixed table for tests);
//! - [`from_env::Setup`] finds the inputs in a process's environment the way
//!   the original Python credential does (the CLI and the Python package use
//!   it).
//!
//! ```no_run
//! # async fn demo(broker_url: String) -> anyhow::Result<()> {
//! use vd_cred_host::Host;
//! let mut sandbox = Host::shared()
//!     .sandbox()                                      // nothing granted by default
//!     .env("VD_CREDENTIAL_BROKER_URL", &broker_url)   // env is explicit, never inherited
//!     .env("VD_CREDENTIAL_FILE", "/run/vd/credential")
//!     .bearer_dir("/run/vd", "/run/vd")               // the only preopen, read-only
//!     .broker_url(&broker_url)                        // HTTP only to this origin
//!     .build()
//!     .await?;
//! let token = sandbox.get_token(&["https://vault.azure.net/.default"]).await??;
//! # Ok(()) }
//! ```

mod backend;
mod caps;
mod client;
pub mod egress;
mod error;
pub mod from_env;
mod host;
pub mod inject;
pub mod linked;
mod origin;
pub mod p3;
pub mod policy;
pub mod precompiled;
pub mod proxy;
mod resolver;
mod sandbox;
pub mod shared;
mod state;
mod tls;
pub mod trace;
mod tunnel;
mod withheld;

/// Host bindings for the `cred-broker` world.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "cred-broker",
        path: "../wit",
        exports: { default: async },
    });
}

pub use host::{
    Build, COMPONENT, COMPONENT_P3, COMPONENT_P3_WASM, COMPONENT_WASM, EPOCH_TICK, Host,
    HostOptions, engine_config, engine_config_for, yield_on_epoch,
};
pub use policy::RUNTIME_ACCESS_URL;
pub use proxy::Proxies;
pub use resolver::Resolver;
pub use sandbox::{
    AccessToken, AccessTokenInfo, CALL_MARGIN, CredentialOptions, DEFAULT_MEMORY_LIMIT,
    DEFAULT_TABLE_LIMIT, Sandbox, SandboxBuilder, TokenInfoResult, TokenRequestOptions,
    TokenResult, default_options,
};
pub use state::{State, link};
pub use tls::TrustedRoots;
pub use withheld::Withheld;
