//! Engine: the wasmtime engine and the credential component, compiled once
//! (or loaded from the precompiled cache) and linked, from which every
//! sandbox is instantiated; the store's state; the WASI 0.3 build's
//! bindings. Its threat model is the component itself: it runs with the
//! limits, the epoch interruption and the WASI the host links, and reaches
//! the network only through [`crate::broker_only`].
//!
//! - `bindings.rs`: the `cred-broker` world's [`bindings`], from `bindgen!`.
//! - `code_memory.rs`: cached machine code run where it was read, in a
//!   mapping of the host's own.
//! - `digest.rs`: a component's digest, for its cache file's name (the build
//!   script's too).
//! - `error.rs`: the WIT `credential-error` to and from the core's.
//! - `host.rs`: [`Host`], one engine and the credential component.
//! - `p3.rs`: the credential's WASI 0.3 build ([`crate::p3`]).
//! - `precompiled.rs`: compile once, cache the machine code
//!   ([`crate::precompiled`]).
//! - `state.rs`: what a store holds ([`State`]) and the shared linker.

pub mod bindings;
#[cfg(unix)]
mod code_memory;
mod digest;
mod error;
mod host;
pub mod p3;
pub mod precompiled;
mod state;

pub(crate) use host::Pre;
pub use host::{
    Build, COMPONENT, COMPONENT_P3, COMPONENT_P3_WASM, COMPONENT_WASM, EPOCH_TICK, Host,
    HostOptions, engine_config, engine_config_for, yield_on_epoch,
};
pub use state::{State, link};
