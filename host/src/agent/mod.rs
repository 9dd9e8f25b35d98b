//! The agent route, the top layer: an agent component that imports the
//! credential ([`crate::linked`]), the backends its calls go to, its own HTTP
//! egress, deny by default ([`crate::egress`]), and tokens injected into its
//! requests so it never holds one ([`crate::inject`]). Its threat model is
//! an untrusted agent: it reaches only the origins its policy allows, within
//! its limits, and learns no more of the credential than a token.
//!
//! - `backend.rs`: what a linked credential forwards an agent's calls to.
//! - `egress.rs`: the agent's own egress policy ([`crate::egress`]).
//! - `inject.rs`: the host adds the token to the agent's requests
//!   ([`crate::inject`]).
//! - `linked.rs`: the host-linked credential ([`crate::linked`]).
//! - `runner.rs`: a ready-made store for an agent, with all of the above
//!   ([`crate::runner`]).

mod backend;
pub mod egress;
pub mod inject;
pub mod linked;
pub mod runner;
