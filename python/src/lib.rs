//! `vd_cred_broker._native`: the credential component in `vd-cred-host`'s
//! sandbox, for the Python package around it (`vd_cred_broker/`).
//!
//! One [`Credential`] is one sandbox (a store with the credential component
//! instantiated from the process-wide [`Host::shared`]) and one `credential`
//! resource opened in it. Calls release the GIL and take the sandbox's lock:
//! threads share one credential, and concurrent callers for one audience
//! cause one mint (the first mints; the others find it in the cache).

use std::sync::{Mutex, OnceLock};

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use tokio::runtime::Runtime;
use vd_cred_broker::CredentialError;
use vd_cred_host::from_env::{Setup, absolute_path};
use vd_cred_host::{Host, Sandbox, TokenRequestOptions, default_options};
use wasmtime::component::ResourceAny;

create_exception!(
    _native,
    NativeError,
    PyException,
    "A credential error: args are (kind, status or None, message, scope, known resources)."
);

/// A sandbox, the `credential` opened in it, and the runtime that drives both.
struct Open {
    runtime: Runtime,
    sandbox: Sandbox,
    credential: ResourceAny,
}

/// One credential in its own sandbox.
#[pyclass(frozen)]
struct Credential {
    open: Mutex<Option<Open>>,
    mode: &'static str,
}

/// The Python exception for a component error.
fn raise(error: CredentialError) -> PyErr {
    let (kind, status, scope, known) = match &error {
        CredentialError::ScopeNotAllowed {
            scope,
            known_resources,
        } => (
            "scope-not-allowed",
            None,
            Some(scope.clone()),
            known_resources.clone(),
        ),
        CredentialError::BrokerRejected { status, .. } => {
            ("broker-rejected", Some(*status), None, vec![])
        }
        CredentialError::BrokerFailed { status, .. } => {
            ("broker-failed", Some(*status), None, vec![])
        }
        other => (kind(other), None, None, vec![]),
    };
    NativeError::new_err((kind, status, error.to_string(), scope, known))
}

/// The WIT case name of an error without a payload of its own.
fn kind(error: &CredentialError) -> &'static str {
    match error {
        CredentialError::Configuration(_) => "configuration",
        CredentialError::InvalidScopes(_) => "invalid-scopes",
        CredentialError::ScopeNotAllowed { .. } => "scope-not-allowed",
        CredentialError::BearerUnavailable(_) => "bearer-unavailable",
        CredentialError::BrokerUnreachable(_) => "broker-unreachable",
        CredentialError::BrokerRejected { .. } => "broker-rejected",
        CredentialError::BrokerFailed { .. } => "broker-failed",
        CredentialError::InvalidResponse(_) => "invalid-response",
        CredentialError::Unsupported(_) => "unsupported",
    }
}

/// A host failure (not the component's): a trap, a failed instantiation.
fn host_failure(error: anyhow::Error) -> PyErr {
    NativeError::new_err((
        "host",
        None::<u16>,
        format!("the credential's wasm host failed: {error:#}"),
        None::<String>,
        Vec::<String>::new(),
    ))
}

/// The process's host: the embedded component, compiled once (or loaded
/// from the per-user cache) and shared by every credential.
fn host() -> PyResult<&'static Host> {
    static HOST: OnceLock<Host> = OnceLock::new();
    if let Some(host) = HOST.get() {
        return Ok(host);
    }
    let host = Host::embedded().map_err(host_failure)?;
    Ok(HOST.get_or_init(|| host))
}

#[pymethods]
impl Credential {
    /// Build the sandbox from the environment (as the original finds its
    /// inputs) and these overrides, and open the credential in it.
    #[new]
    #[pyo3(signature = (
        broker_url=None, credential_file=None, lane=None, configuration_revision=None,
        timeout_ms=10_000, audience_map=Vec::new(), allow_insecure_http=false, cache=true
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        broker_url: Option<String>,
        credential_file: Option<String>,
        lane: Option<String>,
        configuration_revision: Option<u64>,
        timeout_ms: u32,
        audience_map: Vec<(String, String)>,
        allow_insecure_http: bool,
        cache: bool,
    ) -> PyResult<Self> {
        py.detach(|| {
            let mut setup = Setup::from_env(|name| std::env::var(name).ok());
            let credential_file = credential_file.map(|f| absolute_path(&f));
            if broker_url.is_some() {
                setup.broker_url.clone_from(&broker_url);
            }
            if credential_file.is_some() {
                setup.credential_file.clone_from(&credential_file);
            }
            let helper = setup.runtime_access_socket.is_some();
            let mut options = default_options();
            if !helper {
                options.broker_url = broker_url;
                // The path the sandbox shows the component (a link out of
                // its directory is resolved, as the environment's is).
                options.credential_file = credential_file.map(|file| {
                    setup
                        .bearer_location()
                        .map_or(file, |(_, guest_file)| guest_file)
                });
            }
            let builder = setup.sandbox(host()?).map_err(|e| {
                NativeError::new_err((
                    "configuration",
                    None::<u16>,
                    format!("{e:#}"),
                    None::<String>,
                    Vec::<String>::new(),
                ))
            })?;
            options.lane = lane;
            options.configuration_revision = configuration_revision;
            options.timeout_ms = Some(timeout_ms);
            options.audience_map = audience_map;
            options.allow_insecure_http = allow_insecure_http;
            options.disable_cache = !cache;

            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| host_failure(e.into()))?;
            let (sandbox, credential) = runtime
                .block_on(async {
                    let mut sandbox = builder.build().await?;
                    let credential = sandbox.open(&options).await?;
                    anyhow::Ok((sandbox, credential))
                })
                .map_err(host_failure)?;
            let credential = credential.map_err(raise)?;
            Ok(Credential {
                open: Mutex::new(Some(Open {
                    runtime,
                    sandbox,
                    credential,
                })),
                mode: if helper { "helper" } else { "broker" },
            })
        })
    }

    /// `broker` or `helper` (the runtime-access socket existed at construction).
    #[getter]
    fn mode(&self) -> &'static str {
        self.mode
    }

    /// `credential.get-token-info`: `(token, expires_on, refresh_on)`.
    #[pyo3(signature = (scopes, claims=None, tenant_id=None, enable_cae=false))]
    fn get_token_info(
        &self,
        py: Python<'_>,
        scopes: Vec<String>,
        claims: Option<String>,
        tenant_id: Option<String>,
        enable_cae: bool,
    ) -> PyResult<(String, u64, Option<u64>)> {
        let options = TokenRequestOptions {
            claims,
            tenant_id,
            enable_cae,
        };
        py.detach(|| {
            let mut guard = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let Some(open) = guard.as_mut() else {
                return Err(raise(CredentialError::Configuration(
                    "this credential was closed: create a new StudioAzureCredBroker".into(),
                )));
            };
            let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
            let result = open
                .runtime
                .block_on(open.sandbox.credential_get_token_info(
                    open.credential,
                    &scopes,
                    &options,
                ))
                .map_err(host_failure)?;
            let info = result.map_err(raise)?;
            Ok((info.token, info.expires_on, info.refresh_on))
        })
    }

    /// Drop the sandbox. Later calls fail; closing twice is harmless.
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            let open = self.open.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(mut open) = open {
                let _ = open
                    .runtime
                    .block_on(open.sandbox.drop_credential(open.credential));
            }
        })
    }
}

/// Compile (or load from the per-user cache) the embedded component now,
/// rather than on the first credential; returns whether it came from the cache.
#[pyfunction]
fn preload(py: Python<'_>) -> PyResult<bool> {
    py.detach(|| Ok(host()?.source() == vd_cred_host::precompiled::Source::Cached))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Credential>()?;
    m.add_function(wrap_pyfunction!(preload, m)?)?;
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    m.add("COMPONENT_BYTES", vd_cred_host::COMPONENT.len())?;
    Ok(())
}
