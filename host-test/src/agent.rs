//! The test agents the tests and the demo run in
//! [`vd_cred_host::runner`]'s agent store: the test agent
//! (`host-test/agent`, typed calls for every attack the tests make) and the
//! wstd example agent's path.

use anyhow::Result;
use vd_cred_host::linked::LinkedCredential;
use vd_cred_host::runner::{AgentBuilder, AgentState, link};
use wasmtime::component::InstancePre;
use wasmtime::{Engine, Store};

/// The wstd example agent (`examples/wstd-agent`): `read-secret(vault, name)`
/// with a token from the guest crate.
pub mod wstd_agent {
    /// Path of the wstd agent built by this crate's build script.
    pub const WSTD_AGENT_WASM: &str = env!("VD_WSTD_AGENT_WASM");
}

/// The test agent (`host-test/agent`), for the tests and the demo.
pub mod test_agent {
    use super::*;

    mod bindings {
        wasmtime::component::bindgen!({
            world: "vibedata:test-agent/test-agent",
            path: ["../wit", "agent/wit"],
            exports: { default: async },
            with: {
                "vibedata:cred-broker/token-credential": vd_cred_host::linked::bindings::vibedata::cred_broker::token_credential,
            },
        });
    }

    pub use vd_cred_host::linked::bindings::vibedata::cred_broker::token_credential::{
        AccessToken, AccessTokenInfo, CredentialError, CredentialOptions, TokenRequestOptions,
    };

    /// What the agent's [`TestAgent::http_flood`] saw.
    pub use bindings::exports::vibedata::test_agent::agent::FloodReport;
    /// What the agent's [`TestAgent::http_request`] got back.
    pub use bindings::exports::vibedata::test_agent::agent::HttpAnswer;

    /// Path of the test agent built by this crate's build script.
    pub const TEST_AGENT_WASM: &str = env!("VD_TEST_AGENT_WASM");

    /// The test agent, compiled and linked for `engine`.
    pub fn load(engine: &Engine) -> Result<InstancePre<AgentState>> {
        let (component, _) =
            vd_cred_host::precompiled::load(engine, std::path::Path::new(TEST_AGENT_WASM))?;
        link(engine, &component)
    }

    /// Options with nothing set: what an agent passes to use the host's settings.
    pub fn no_options() -> CredentialOptions {
        CredentialOptions {
            broker_url: None,
            credential_file: None,
            timeout_ms: None,
            audience_map: Vec::new(),
            allow_insecure_http: false,
            disable_cache: false,
            lane: None,
            configuration_revision: None,
            runtime_access_url: None,
        }
    }

    /// One test agent in its store.
    pub struct TestAgent {
        /// The agent's store (its state holds the linked credential).
        pub store: Store<AgentState>,
        instance: bindings::TestAgent,
    }

    impl TestAgent {
        /// Instantiate the test agent from `pre` in the store `builder` describes.
        pub async fn new(
            builder: AgentBuilder,
            engine: &Engine,
            pre: &InstancePre<AgentState>,
            linked: LinkedCredential,
        ) -> Result<Self> {
            let (mut store, instance) = builder.instantiate(engine, pre, linked).await?;
            let instance = bindings::TestAgent::new(&mut store, &instance)?;
            Ok(TestAgent { store, instance })
        }

        fn iface(&self) -> bindings::exports::vibedata::test_agent::agent::Guest {
            self.instance.vibedata_test_agent_agent().clone()
        }

        /// `credential.open(options)`, then `get-token(scopes)` `calls` times.
        pub async fn token(
            &mut self,
            options: &CredentialOptions,
            scopes: &[&str],
            calls: u32,
        ) -> Result<Result<AccessToken, CredentialError>> {
            let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
            Ok(self
                .iface()
                .call_token(&mut self.store, options, &scopes, calls)
                .await?)
        }

        /// `credential.open(options)`, then `get-token-info`.
        pub async fn token_info(
            &mut self,
            options: &CredentialOptions,
            scopes: &[&str],
            request: &TokenRequestOptions,
        ) -> Result<Result<AccessTokenInfo, CredentialError>> {
            let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
            Ok(self
                .iface()
                .call_token_info(&mut self.store, options, &scopes, request)
                .await?)
        }

        /// The free `get-token`.
        pub async fn free_token(
            &mut self,
            scopes: &[&str],
        ) -> Result<Result<AccessToken, CredentialError>> {
            let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
            Ok(self
                .iface()
                .call_free_token(&mut self.store, &scopes)
                .await?)
        }

        /// The imported `describe-error`, called by the agent.
        pub async fn describe(&mut self, error: &CredentialError) -> Result<String> {
            Ok(self.iface().call_describe(&mut self.store, error).await?)
        }

        /// Read a file from inside the agent.
        pub async fn read_file(&mut self, path: &str) -> Result<Result<String, String>> {
            Ok(self.iface().call_read_file(&mut self.store, path).await?)
        }

        /// The agent's environment.
        pub async fn environment(&mut self) -> Result<Vec<(String, String)>> {
            Ok(self.iface().call_environment(&mut self.store).await?)
        }

        /// `GET url` from inside the agent.
        pub async fn http_get(&mut self, url: &str) -> Result<Result<u16, String>> {
            Ok(self.iface().call_http_get(&mut self.store, url).await?)
        }

        /// `method url` with `headers` and `body` from inside the agent (no
        /// redirect followed): the whole answer, or the error code.
        pub async fn http_request(
            &mut self,
            method: &str,
            url: &str,
            headers: &[(&str, &str)],
            body: &[u8],
        ) -> Result<Result<HttpAnswer, String>> {
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Ok(self
                .iface()
                .call_http_request(&mut self.store, method, url, &headers, body)
                .await?)
        }

        /// `GET url` `count` times from inside the agent: each outcome (a
        /// status, or an error code) and how often it came.
        pub async fn http_loop(&mut self, url: &str, count: u32) -> Result<Vec<(String, u32)>> {
            Ok(self
                .iface()
                .call_http_loop(&mut self.store, url, count)
                .await?)
        }

        /// `count` `POST url` requests with bodies of `body_bytes`, all held
        /// at once, then the free `get-token(scopes)` while they are held
        /// (see the agent's `http-flood`).
        pub async fn http_flood(
            &mut self,
            url: &str,
            body_bytes: u64,
            count: u32,
            scopes: &[&str],
        ) -> Result<FloodReport> {
            let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
            Ok(self
                .iface()
                .call_http_flood(&mut self.store, url, body_bytes, count, &scopes)
                .await?)
        }

        /// Start `GET url`, then `GET sync_url` and wait for it, then drop
        /// the first unanswered: the second's status, or its error code.
        pub async fn abandon(&mut self, url: &str, sync_url: &str) -> Result<Result<u16, String>> {
            Ok(self
                .iface()
                .call_abandon(&mut self.store, url, sync_url)
                .await?)
        }

        /// Open `count` credentials, all kept open until the end: how many
        /// opened, and the first refusal.
        pub async fn open_many(
            &mut self,
            options: &CredentialOptions,
            count: u32,
        ) -> Result<(u32, Option<CredentialError>)> {
            Ok(self
                .iface()
                .call_open_many(&mut self.store, options, count)
                .await?)
        }

        /// Open and drop a credential `count` times: how many opened, and
        /// the first refusal.
        pub async fn open_drop(
            &mut self,
            options: &CredentialOptions,
            count: u32,
        ) -> Result<(u32, Option<CredentialError>)> {
            Ok(self
                .iface()
                .call_open_drop(&mut self.store, options, count)
                .await?)
        }

        /// `get-token(scopes)` `count` times on one credential (or the free
        /// function): tokens, errors, the last error.
        pub async fn mint_loop(
            &mut self,
            options: &CredentialOptions,
            scopes: &[&str],
            count: u32,
            free: bool,
        ) -> Result<(u32, u32, Option<CredentialError>)> {
            let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
            Ok(self
                .iface()
                .call_mint_loop(&mut self.store, options, &scopes, count, free)
                .await?)
        }
    }
}
