//! Outbound: every HTTP request the host sends on a component's behalf, and
//! the credential's own egress policy. The lowest layer: it knows nothing of
//! engines, sandboxes or agents. Its threat model is a component that asks
//! for anything: nothing leaves but what a policy lets through, over the
//! proxy, resolver and trusted roots the host chose, counted against caps.
//!
//! - `broker_only.rs`: the credential's egress policy, [`BrokerOnly`]: only
//!   the broker's origin or the runtime-access helper's (public as
//!   [`crate::broker_only`]).
//! - `caps.rs`: what one agent's HTTP holds at once, against its limits.
//! - `client.rs`: the pooled HTTP/1.1 client that sends what a policy lets
//!   through.
//! - `origin.rs`: a request's origin as the host compares it ([`Origin`]).
//! - `proxy.rs`: which requests go through an HTTP proxy ([`crate::proxy`]).
//! - `resolver.rs`: how a host name becomes addresses ([`Resolver`]).
//! - `tls.rs`: the certificate authorities the host trusts ([`TrustedRoots`]).
//! - `trace.rs`: what the host tells `tracing` ([`crate::trace`]).
//! - `tunnel.rs`: a connection to a proxy, and a CONNECT tunnel through it.
//!
//! [`BrokerOnly`]: broker_only::BrokerOnly

pub mod broker_only;
mod caps;
mod client;
mod origin;
pub mod proxy;
mod resolver;
mod tls;
pub mod trace;
mod tunnel;

pub use broker_only::RUNTIME_ACCESS_URL;
#[cfg(test)]
pub(crate) use client::tests::mute_server;
pub use resolver::Resolver;
pub use tls::TrustedRoots;

// What only the agent route's egress uses (the `agent` feature).
#[cfg(feature = "agent")]
pub(crate) use caps::{Caps, Limit, Slot, holding};
#[cfg(feature = "agent")]
pub(crate) use client::{Connections, Sent, Setup, Vet, VetRefusal};
#[cfg(feature = "agent")]
pub use origin::Origin;
#[cfg(feature = "agent")]
pub(crate) use origin::{default_port, literal_ip, normal_host, shown};
