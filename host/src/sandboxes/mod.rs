//! Sandboxes: instances of the credential, one per agent or per test
//! ([`Sandbox`]) or one WASI 0.3 instance serving many callers
//! ([`crate::shared`]; a few of them, by [`crate::shards`]), each with its
//! own store, environment, preopen, clock and egress policy. Its threat
//! model is a caller (an agent, a test) that must get tokens but never the
//! credential's inputs: the broker URL, the bearer file and the helper's
//! socket stay inside, and errors are [`Withheld`] from them.
//!
//! - `from_env.rs`: the sandbox a process builds from its own environment
//!   ([`crate::from_env`]).
//! - `sandbox.rs`: [`Sandbox`] and [`SandboxBuilder`], the per-agent
//!   instance and its options.
//! - `shared.rs`: one 0.3 instance serving many callers at once
//!   ([`crate::shared`]).
//! - `shards.rs`: a bearer's agents spread over a few such instances
//!   ([`crate::shards`]).
//! - `withheld.rs`: what an agent is not told ([`Withheld`]).

pub mod from_env;
mod sandbox;
pub mod shards;
pub mod shared;
mod withheld;

pub use sandbox::{
    AccessToken, AccessTokenInfo, CALL_MARGIN, CredentialOptions, DEFAULT_MEMORY_LIMIT,
    DEFAULT_TABLE_LIMIT, Sandbox, SandboxBuilder, TokenInfoResult, TokenRequestOptions,
    TokenResult, default_options,
};
pub use withheld::Withheld;
