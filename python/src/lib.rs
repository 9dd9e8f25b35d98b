//! `vd_cred_broker._native`: the credential component in `vd-cred-host`'s
//! sandbox, for the Python package around it (`vd_cred_broker/`).
//!
//! A [`credential::Credential`] holds its configuration and, per process,
//! its sandboxes: one per audience ([`sandboxes`]), each an instance of the
//! component from the process's [`Host`]. The host, the tokio runtime and
//! the sandboxes are built again in a forked child ([`fork`]).

mod credential;
mod fork;
mod sandboxes;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use vd_cred_broker::CredentialError;
use vd_cred_host::precompiled::user_cache_dir_in;
use vd_cred_host::{Host, HostOptions};

use crate::fork::PerProcess;

create_exception!(
    _native,
    NativeError,
    PyException,
    "A credential error: args are (kind, status or None, message, scope, known resources)."
);

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
        other => (other.kind(), None, None, vec![]),
    };
    NativeError::new_err((kind, status, error.to_string(), scope, known))
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
/// from the per-user cache in `env`'s directory) and shared by every
/// credential; a forked child loads its own rather than use an engine whose
/// locks a parent thread may have held at the fork.
fn host(env: &HashMap<String, String>) -> anyhow::Result<&'static Host> {
    static BUILDING: PerProcess<Mutex<()>> = PerProcess::new();
    if let Some(host) = built_host() {
        return Ok(host);
    }
    // One thread builds; the others wait for it rather than build their own.
    let building = BUILDING.get_or_try_init(|_| Ok::<_, Infallible>(Mutex::new(())));
    let _one = building.map(|m| m.lock().unwrap_or_else(|e| e.into_inner()));
    HOST.get_or_try_init(|inherited| {
        Host::embedded_with(HostOptions {
            cache_dir: user_cache_dir_in(|name| env.get(name).cloned()),
            // rayon's pool, if an ancestor compiled, came without its threads.
            parallel_compilation: !inherited,
            ..HostOptions::default()
        })
    })
}

static HOST: PerProcess<Host> = PerProcess::new();

/// The process's host, if it has been loaded.
fn built_host() -> Option<&'static Host> {
    HOST.get()
}

/// Compile (or load from the per-user cache named by `env`, read from
/// `os.environ`) the embedded component now, rather than on the first
/// credential; returns whether it came from the cache.
#[pyfunction]
fn preload(py: Python<'_>, env: HashMap<String, String>) -> PyResult<bool> {
    py.detach(|| {
        let host = host(&env).map_err(host_failure)?;
        Ok(host.source() == vd_cred_host::precompiled::Source::Cached)
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<credential::Credential>()?;
    m.add_class::<credential::PendingCall>()?;
    m.add_function(wrap_pyfunction!(preload, m)?)?;
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    m.add("COMPONENT_BYTES", vd_cred_host::COMPONENT.len())?;
    let env_vars = [
        &vd_cred_host::from_env::ENV_VARS[..],
        &vd_cred_host::precompiled::CACHE_ENV_VARS[..],
    ];
    m.add("ENV_VARS", env_vars.concat())?;
    fork::count_forks();
    Ok(())
}
