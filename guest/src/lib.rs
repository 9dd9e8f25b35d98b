//! Azure tokens for Rust agents: the `vibedata:cred-broker` credential as a
//! WebAssembly import, behind a small API.
//!
//! An agent built for `wasm32-wasip2` with this crate imports
//! `vibedata:cred-broker/token-credential` (the `credential-user` world of
//! `wit/world.wit`). Whatever meets that import hands it tokens: the host's
//! linked credential (`vd-cred-host`, `vd-cred run-agent`), or the
//! credential component plugged in by composition (`wac plug`). The agent
//! never sees the intent bearer or the broker.
//!
//! ```no_run
//! use vd_cred_guest::Credential;
//!
//! # fn main() -> Result<(), vd_cred_guest::Error> {
//! let credential = Credential::new()?; // the host's (or the environment's) settings
//! let token = credential.token(&["https://vault.azure.net/.default"])?;
//! // Send it as `Authorization: Bearer <token>`; its Debug never shows it.
//! let header = token.authorization();
//! println!("{token:?} expires at {}", token.expires_on);
//! # let _ = header;
//! # Ok(())
//! # }
//! ```
//!
//! Every failure is an [`Error`], one case per WIT `credential-error` case,
//! whose `Display` is the credential's own sentence: what failed and what to
//! do.
//!
//! ```no_run
//! match vd_cred_guest::token(&["https://storage.azure.com/.default"]) {
//!     Ok(token) => { /* use token.authorization() */ }
//!     Err(vd_cred_guest::Error::ScopeNotAllowed { known_resources, .. }) => {
//!         eprintln!("this agent may ask for: {}", known_resources.join(", "));
//!     }
//!     Err(e) => eprintln!("no token: {e}"),
//! }
//! ```
//!
//! The generated bindings are public as [`bindings`], for the raw WIT API.
//! The crate compiles on every target (for docs and workspace builds); off
//! `wasm32` there is nothing to import, and every call panics.

#![deny(missing_docs)]

/// The raw `credential-user` imports, as `wit_bindgen::generate!` makes them:
/// `bindings::vibedata::cred_broker::token_credential`. A component of your
/// own that exports types from this interface can share them with
/// `with: { "vibedata:cred-broker/token-credential@0.1.0":
/// vd_cred_guest::bindings::vibedata::cred_broker::token_credential }`.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "vibedata:cred-broker/credential-user",
        path: "../wit",
        // `Options::default()`, `TokenRequestOptions::default()`: nothing set.
        additional_derives: [Default],
        additional_derives_ignore: ["credential-error"],
    });
}

mod credential;
mod error;
mod token;

pub use credential::{Credential, Options, token, token_info};
pub use error::Error;
pub use token::{AccessToken, AccessTokenInfo, Secret, TokenRequestOptions};

/// The interface's raw items, for this crate's conversions.
use bindings::vibedata::cred_broker::token_credential as raw;
