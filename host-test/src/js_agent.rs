//! The JavaScript agent (`examples/js-agent`, componentized with
//! componentize-js): plain `fetch` through wasi:http, no credential code
//! (its `mint` export, which uses the credential import, is exercised
//! through `vd-cred run-agent` in tests/end_to_end/agents_lang.rs).
//! Built by `examples/js-agent/build.sh` (scripts/test.sh builds it into
//! cargo's target directory), not by cargo: it needs Node.js.

use std::path::PathBuf;

use anyhow::{Context, Result};
use wasmtime::component::InstancePre;
use wasmtime::{Engine, Store};

use vd_cred_host::linked::LinkedCredential;
use vd_cred_host::runner::{AgentBuilder, AgentState, link};

mod bindings {
    wasmtime::component::bindgen!({
        world: "vibedata:js-agent/js-agent",
        path: ["../wit", "../examples/js-agent/wit"],
        exports: { default: async },
    });
}

/// Where the built agent is: `VD_JS_AGENT_WASM`, else `js-agent.wasm` in
/// cargo's target directory (where scripts/test.sh builds it).
pub fn wasm_path() -> PathBuf {
    match std::env::var_os("VD_JS_AGENT_WASM") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("VD_CARGO_TARGET_DIR")).join("js-agent.wasm"),
    }
}

/// The agent, compiled (or loaded from the precompiled cache) and linked for
/// `engine`.
pub fn load(engine: &Engine) -> Result<InstancePre<AgentState>> {
    let path = wasm_path();
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build it with examples/js-agent/build.sh {} (needs Node.js; \
         scripts/test.sh does this)",
        path.display(),
        path.display()
    );
    let (component, _) = vd_cred_host::precompiled::load(engine, &path)
        .with_context(|| format!("loading {}", path.display()))?;
    link(engine, &component)
}

/// One JavaScript agent in its store.
pub struct JsAgent {
    /// The agent's store (its state holds the linked credential, unused by
    /// the agent itself).
    pub store: Store<AgentState>,
    instance: bindings::JsAgent,
}

impl JsAgent {
    /// Instantiate the agent from `pre` in the store `builder` describes.
    pub async fn new(
        builder: AgentBuilder,
        engine: &Engine,
        pre: &InstancePre<AgentState>,
        linked: LinkedCredential,
    ) -> Result<Self> {
        let (mut store, instance) = builder.instantiate(engine, pre, linked).await?;
        let instance = bindings::JsAgent::new(&mut store, &instance)?;
        Ok(JsAgent { store, instance })
    }

    /// `read-secret(vault-url, name)`: the secret's value, or the agent's error.
    pub async fn read_secret(
        &mut self,
        vault_url: &str,
        name: &str,
    ) -> Result<Result<String, String>> {
        Ok(self
            .instance
            .call_read_secret(&mut self.store, vault_url, name)
            .await?)
    }

    /// `fetch-status(url)`: the status (no redirect followed), or the error.
    pub async fn fetch_status(&mut self, url: &str) -> Result<Result<u16, String>> {
        Ok(self
            .instance
            .call_fetch_status(&mut self.store, url)
            .await?)
    }
}
