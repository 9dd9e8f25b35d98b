#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// Without the agent route, the README's and the lower layers' doc links to
// it have no target (the items that serve only it are gated item by item).
#![cfg_attr(not(feature = "agent"), allow(rustdoc::broken_intra_doc_links))]

// The layers, lowest first; each imports only from its own folder or those
// below it: `outbound` (HTTP out, the credential's egress policy), `engine`
// (engine, component, store), `sandboxes` (credential instances), `agent`
// (linked credential, agent egress, injection, the agent's store; the
// `agent` feature).
#[cfg(feature = "agent")]
mod agent;
mod engine;
mod outbound;
mod sandboxes;

#[cfg(feature = "agent")]
pub use agent::{egress, inject, linked, runner};
pub use engine::{bindings, p3, precompiled};
pub use outbound::broker_only;
pub use outbound::{proxy, trace};
pub use sandboxes::{from_env, shards, shared};

pub use engine::{
    Build, COMPONENT, COMPONENT_P3, COMPONENT_P3_WASM, COMPONENT_WASM, EPOCH_TICK, Host,
    HostOptions, State, engine_config, engine_config_for, link, yield_on_epoch,
};
pub use outbound::{RUNTIME_ACCESS_URL, Resolver, TrustedRoots};
pub use proxy::Proxies;
pub use sandboxes::{
    AccessToken, AccessTokenInfo, CALL_MARGIN, CredentialOptions, DEFAULT_MEMORY_LIMIT,
    DEFAULT_TABLE_LIMIT, Sandbox, SandboxBuilder, TokenInfoResult, TokenRequestOptions,
    TokenResult, Withheld, default_options,
};
