//! The composed Key Vault example (`examples/keyvault-reader` plugged with the
//! credential by this crate's build script, as `wac plug` would), for tests.

use std::path::Path;

use anyhow::Result;
use wasmtime::Store;
use wasmtime::component::{Component, InstancePre};

use vd_cred_host::{Host, SandboxBuilder, State, link};

mod bindings {
    wasmtime::component::bindgen!({
        world: "vibedata:keyvault-reader/keyvault-reader",
        path: ["../wit", "../examples/keyvault-reader/wit"],
        exports: { default: async },
    });
}

/// The composed component: the reader with the credential plugged in.
pub const COMPOSED_WASM: &str = env!("VD_KEYVAULT_COMPOSED_WASM");

/// The composed component, compiled and linked (WASI only) for a host's engine.
pub fn load(host: &Host) -> Result<(Component, InstancePre<State>)> {
    let (component, _) = vd_cred_host::precompiled::load(host.engine(), Path::new(COMPOSED_WASM))?;
    let pre = link(host.engine(), &component)?;
    Ok((component, pre))
}

/// One instance of the composed reader in a sandbox.
pub struct KeyVaultReader {
    store: Store<State>,
    instance: bindings::KeyvaultReader,
}

impl KeyVaultReader {
    /// Instantiate `pre` in the sandbox `builder` describes.
    pub async fn instantiate(
        builder: SandboxBuilder<'_>,
        pre: &InstancePre<State>,
    ) -> Result<Self> {
        let (mut store, instance) = builder.instantiate(pre).await?;
        let instance = bindings::KeyvaultReader::new(&mut store, &instance)?;
        Ok(KeyVaultReader { store, instance })
    }

    /// `read-secret(vault, name)`.
    pub async fn read_secret(&mut self, vault: &str, name: &str) -> Result<Result<String, String>> {
        let reader = self.instance.vibedata_keyvault_reader_reader().clone();
        Ok(reader
            .call_read_secret(&mut self.store, vault, name)
            .await?)
    }
}
