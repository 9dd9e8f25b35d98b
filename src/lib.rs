//! VibeData Studio credential broker client, as a WebAssembly component.
//!
//! The crate has two halves:
//!
//! - a pure, target-independent core (this crate's public API): settings,
//!   scope -> audience, the bearer check, the broker request and the parsing of
//!   its answer, the token cache and the retry policy, tied together by
//!   [`Credential`] over a [`Platform`];
//! - on `wasm32`, thin glue that implements [`Platform`] over WASI
//!   (`component.rs`, `transport.rs`, `bearer_wasi.rs`) and exports the WIT `token-credential`
//!   interface from `wit/world.wit`.
//!
//! ```
//! use vd_cred_broker::{AudienceMap, normalize_scope};
//! let map = AudienceMap::default();
//! assert_eq!(map.lookup("https://vault.azure.net/.default"), Some("vault"));
//! assert_eq!(normalize_scope("https://storage.azure.com/"), "https://storage.azure.com");
//! ```

mod audience;
mod bearer;
pub mod cache;
mod credential;
mod error;
mod excerpt;
mod exchange;
pub mod flight;
mod ready;
pub mod retry;
mod secret;
mod settings;
mod sorted_map;
mod wasi_glue;

#[cfg(all(target_arch = "wasm32", feature = "wasip2"))]
mod bearer_wasi;
#[cfg(all(target_arch = "wasm32", feature = "wasip2"))]
mod component;
#[cfg(all(target_arch = "wasm32", feature = "wasip2"))]
mod transport;

pub use audience::{
    AudienceMap, DEFAULT_AUDIENCES, SECRET_STORE_AUDIENCES, normalize_scope, scope_class,
};
pub use bearer::{
    BearerFileError, KeptFile, KeptFiles, MAX_BEARER_BYTES, MAX_KEPT_FILES, bearer_file_error,
    parse_bearer, preopen_relative, read_bearer,
};
pub use cache::TokenInfo;
pub use credential::{AccessToken, Answer, Credential, Platform, SendError, TokenRequestOptions};
pub use error::CredentialError;
pub use excerpt::{EXCERPT_CHARS, excerpt};
pub use exchange::{
    BrokerRequest, DEFAULT_EXPIRES_IN, MAX_EXPIRES_IN, MAX_TOKEN_BYTES, Minted, parse_answer,
    parse_helper_answer,
};
pub use ready::ready;
pub use secret::Secret;
pub use settings::{
    DEFAULT_TIMEOUT_MS, ENV_BROKER_URL, ENV_CONFIGURATION_REVISION, ENV_CREDENTIAL_FILE, ENV_LANE,
    ENV_RUNTIME_ACCESS_URL, Mode, Options, Protocol, Settings, validate_broker_url,
};
#[doc(hidden)]
pub use wasi_glue::wasi_http_detail;
pub use wasi_glue::{WasiHttpErrorCase, send_error_for, while_reading_answer};

/// How a host's `internal-error` text for a refused TLS handshake starts
/// (`vd-cred-host` names the certificate problem after it); the component
/// reports such a failure as it is and does not retry it.
pub const TLS_HANDSHAKE_FAILED: &str = "TLS handshake failed";

/// Largest broker answer read, in bytes (the Studio runtime-access client's limit).
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
