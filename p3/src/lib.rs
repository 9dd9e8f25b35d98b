//! VibeData Studio credential broker client, as a WASI 0.3 WebAssembly
//! component with `async` exports.
//!
//! The core (`vd-cred-broker`: settings, scopes, the broker request, the
//! answer, the cache, retries, shared mints) is the 0.2 build's; this crate is
//! only its glue to WASI 0.3, on `wasm32`:
//!
//! - `component.rs`: the `token-credential` exports of `wit/world.wit`
//!   (package `vibedata:cred-broker-async`), WIT types <-> core types;
//! - `platform.rs`: the core's `Platform` over `wasi:clocks` (a wait, not a
//!   block) and the two modules below;
//! - `transport.rs`: the broker `POST` over the `wasi:http` client;
//! - `bearer.rs`: the bearer file over `wasi:filesystem` preopens, found by
//!   `preopen.rs` (the one module built natively too, for its tests);
//! - `deadline.rs`: a future raced against a `wasi:clocks` wait.
//!
//! Two ways to build it, the core's WASI 0.2 glue left out either way (its
//! exports and imports would otherwise be linked in too):
//!
//! - `wasm32-unknown-unknown`, linked by `wasm-component-ld` (rustc's
//!   component linker, from the `wasm32-wasip2` target's toolchain): a
//!   component importing only WASI 0.3. std has no WASI there, so a panic
//!   traps without a message, and `std::time`'s clocks, `std::fs` and
//!   `std::env` do not work: the glue uses none of them.
//! - `wasm32-wasip2`: std's WASI 0.2 libc comes along, for a panic's
//!   message (stdio, environment, exit): those imports stay.
//!
//! Natively the crate is empty but for `preopen.rs`'s tests.

#[cfg(target_arch = "wasm32")]
mod bearer;
#[cfg(target_arch = "wasm32")]
mod component;
#[cfg(target_arch = "wasm32")]
mod deadline;
#[cfg(target_arch = "wasm32")]
mod platform;
#[cfg(any(target_arch = "wasm32", test))]
mod preopen;
#[cfg(target_arch = "wasm32")]
mod transport;
