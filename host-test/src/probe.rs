//! The sandbox probe: a test component (`host-test/probe`) instantiated in the
//! same sandbox the credential gets, to show from the inside what it allows.

use anyhow::Result;
use wasmtime::Engine;
use wasmtime::Store;

use crate::sandbox::State;

mod bindings {
    wasmtime::component::bindgen!({
        world: "sandbox-probe",
        path: "probe/wit",
        exports: { default: async },
    });
}

/// Path of the probe component built by this crate's build script.
pub const PROBE_WASM: &str = env!("VD_SANDBOX_PROBE_WASM");

/// The probe, compiled and linked for an engine.
#[derive(Clone)]
pub struct ProbePre(bindings::SandboxProbePre<State>);

impl ProbePre {
    /// Load the probe into `engine`, linked like the credential.
    pub fn load(engine: &Engine) -> Result<Self> {
        let (component, _) = crate::precompiled::load(engine, std::path::Path::new(PROBE_WASM))?;
        Ok(ProbePre(bindings::SandboxProbePre::new(
            crate::sandbox::link(engine, &component)?,
        )?))
    }

    pub(crate) async fn instantiate_async(
        &self,
        store: &mut Store<State>,
    ) -> Result<bindings::SandboxProbe> {
        Ok(self.0.instantiate_async(store).await?)
    }
}

/// One probe instance in its sandbox.
pub struct Probe {
    store: Store<State>,
    instance: bindings::SandboxProbe,
}

impl Probe {
    pub(crate) fn new(store: Store<State>, instance: bindings::SandboxProbe) -> Self {
        Probe { store, instance }
    }

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

    /// `GET url` from inside the sandbox: the status, or the wasi:http error code.
    pub async fn http_get(&mut self, url: &str) -> Result<Result<u16, String>> {
        Ok(self.iface().call_http_get(&mut self.store, url).await?)
    }
}
