//! `vd-cred`, the command line: the credential component in the host
//! library's sandbox ([`vd_cred_host`]), for a shell or a script.
//!
//! - [`get_token`]: mint a token from the process's environment (the
//!   runtime-access helper's socket, else the broker URL and bearer file)
//!   and print it as JSON.
//! - [`run_agent`]: run an agent component in its own store
//!   ([`vd_cred_host::runner`]), its `token-credential` import linked to the
//!   credential, its HTTP limited to the origins named, with audit lines.
//! - [`invoke()`]: call an agent's export with WAVE-encoded arguments.
//! - `demo` (the default feature `demo`): all of it against a loopback mock
//!   broker, a mock Key Vault and the test agent from `host-test`.
//!
//! Threat model: the agent `run-agent` runs is untrusted code (see
//! [`vd_cred_host::runner`]); the caller of `vd-cred` is not. Tokens are
//! printed only by `get-token`, on stdout, for its caller; audit lines name
//! audiences and destinations, never a token.

#![deny(missing_docs)]

#[cfg(feature = "demo")]
pub mod demo;
pub mod get_token;
mod invoke;
pub mod run_agent;

pub use invoke::invoke;

/// What `vd-cred` prints when called wrongly (and for `--help`).
pub const USAGE: &str = "\
usage:
  vd-cred get-token <scope>...    mint a token, print {\"token\",\"expires_on\"} as JSON:
                                  through the runtime-access helper when its socket exists
                                  (VD_RUNTIME_ACCESS_SOCKET, default /run/vd-access/program.sock),
                                  else VD_CREDENTIAL_BROKER_URL and VD_CREDENTIAL_FILE (and
                                  VD_CREDENTIAL_LANE, VD_CREDENTIAL_CONFIGURATION_REVISION)
  vd-cred run-agent <agent.wasm> --invoke '<fn>(<args>)'... [--allow <resource-or-audience>,...]
                  [--egress <origin>,...] [--dir <host-dir>::<guest-dir>] [--env <KEY>=<VALUE>]
                  [--inject <host[:port]>=<audience>,...|defaults] [--reveal-tokens yes|no]
                  [--trust <ca.pem>] [--connect-to <host>:<port>=<ip>:<port>]
                                  run an agent component whose token-credential import the host
                                  links to the credential in a sandbox of its own (set up as
                                  get-token sets it up); the agent gets only --dir, --env and HTTP
                                  to the --egress origins (scheme://host[:port], host * or
                                  *.domain allowed; default: none), never to the broker or the
                                  helper under any name or address, nor to link-local or metadata
                                  addresses unless an origin names one literally. Calls <fn> (a
                                  root export or one in an exported interface) with WAVE-encoded
                                  arguments (each --invoke in turn, in one store), prints each
                                  result in WAVE, and prints an audit line for each token handed
                                  to the agent and each call refused (default --allow: the six
                                  default resources). --inject: the host adds the token for
                                  <audience> to the agent's https requests to <host> (exact or
                                  *.domain; \"defaults\": Key Vault, Storage, OneLake, Fabric,
                                  Power BI, ARM), removing any Authorization the agent set, and
                                  prints an audit line per request (a rule opens nothing: allow
                                  the destinations with --egress); --reveal-tokens no: the
                                  agent's get-token calls are refused (it never holds a token);
                                  --trust: also trust this CA for the agent's https;
                                  --connect-to: send requests for <host>:<port> to that address
  vd-cred demo [scope] [--component <file.wasm>]
                                  mint a token through the component against a loopback mock
                                  broker, then run the test agent linked to it and with tokens
                                  injected (builds with the default feature demo)";
