//! The sandbox probe: a test component (`host-test/probe`) instantiated in the
//! same sandbox the credential gets, to show from the inside what it allows.

use std::sync::Mutex;

use anyhow::Result;
use vd_cred_host::{SandboxBuilder, State, link};
use wasmtime::{Engine, Store};

mod bindings {
    wasmtime::component::bindgen!({
        world: "sandbox-probe",
        path: "probe/wit",
        exports: { default: async },
    });
}

/// Path of the probe component built by this crate's build script.
pub const PROBE_WASM: &str = env!("VD_SANDBOX_PROBE_WASM");

/// The probe, compiled and linked for one engine.
#[derive(Clone)]
struct ProbePre {
    engine: Engine,
    pre: bindings::SandboxProbePre<State>,
}

impl ProbePre {
    /// The probe linked for `engine`, loaded on first use and kept.
    fn for_engine(engine: &Engine) -> Result<Self> {
        static LOADED: Mutex<Vec<ProbePre>> = Mutex::new(Vec::new());
        let mut loaded = LOADED.lock().unwrap();
        if let Some(pre) = loaded.iter().find(|p| Engine::same(&p.engine, engine)) {
            return Ok(pre.clone());
        }
        let (component, _) =
            vd_cred_host::precompiled::load(engine, std::path::Path::new(PROBE_WASM))?;
        let pre = ProbePre {
            engine: engine.clone(),
            pre: bindings::SandboxProbePre::new(link(engine, &component)?)?,
        };
        loaded.push(pre.clone());
        Ok(pre)
    }
}

/// Instantiate the probe (a test component that tries reading, writing,
/// listing the environment and reaching the network) in exactly the sandbox
/// `builder` would give the credential.
pub async fn build_probe(builder: SandboxBuilder<'_>) -> Result<Probe> {
    let pre = ProbePre::for_engine(builder.host().engine())?;
    let (mut store, instance) = builder.instantiate(pre.pre.instance_pre()).await?;
    let instance = bindings::SandboxProbe::new(&mut store, &instance)?;
    Ok(Probe { store, instance })
}

/// One probe instance in its sandbox.
pub struct Probe {
    store: Store<State>,
    instance: bindings::SandboxProbe,
}

impl Probe {
    fn iface(&self) -> bindings::exports::vibedata::sandbox_probe::probe::Guest {
        self.instance.vibedata_sandbox_probe_probe().clone()
    }

    /// Read a file from inside the sandbox.
    pub async fn read_file(&mut self, path: &str) -> Result<Result<String, String>> {
        Ok(self.iface().call_read_file(&mut self.store, path).await?)
    }

    /// Write a file from inside the sandbox.
    pub async fn write_file(&mut self, path: &str, contents: &str) -> Result<Result<(), String>> {
        Ok(self
            .iface()
            .call_write_file(&mut self.store, path, contents)
            .await?)
    }

    /// The environment as the component sees it.
    pub async fn environment(&mut self) -> Result<Vec<(String, String)>> {
        Ok(self.iface().call_environment(&mut self.store).await?)
    }

    /// The preopened directories as the component sees them.
    pub async fn preopens(&mut self) -> Result<Vec<String>> {
        Ok(self.iface().call_preopens(&mut self.store).await?)
    }

    /// A TCP connection to `address` from inside the sandbox.
    pub async fn tcp_connect(&mut self, address: &str) -> Result<Result<(), String>> {
        Ok(self
            .iface()
            .call_tcp_connect(&mut self.store, address)
            .await?)
    }

    /// A UDP datagram to `address` from inside the sandbox.
    pub async fn udp_send(&mut self, address: &str) -> Result<Result<(), String>> {
        Ok(self.iface().call_udp_send(&mut self.store, address).await?)
    }

    /// A name lookup from inside the sandbox.
    pub async fn resolve(&mut self, name: &str) -> Result<Result<Vec<String>, String>> {
        Ok(self.iface().call_resolve(&mut self.store, name).await?)
    }

    /// `GET url` from inside the sandbox: the status, or the wasi:http error code.
    pub async fn http_get(&mut self, url: &str) -> Result<Result<u16, String>> {
        Ok(self.iface().call_http_get(&mut self.store, url).await?)
    }

    /// `POST url` with `body` from inside the sandbox, the whole answer
    /// read: its body, or the wasi:http error code.
    pub async fn http_post(&mut self, url: &str, body: &str) -> Result<Result<String, String>> {
        Ok(self
            .iface()
            .call_http_post(&mut self.store, url, body)
            .await?)
    }
}
