//! The credential's WASI 0.3 build (`p3/`): its bindings, how it is linked,
//! and its calls, whose results are converted to the types the 0.2 build's
//! calls return, so that a [`crate::Sandbox`] answers the same for both.
//!
//! Its exports are `async func`s: calls go through
//! [`wasmtime::Store::run_concurrent`], and any number of them may be in the
//! one instance at once ([`crate::shared`]).

use anyhow::Result;
use wasmtime::component::{Accessor, Component, Linker, ResourceAny};
use wasmtime::{Engine, Store};

use crate::bindings::exports::vibedata::cred_broker::token_credential as wit;
use crate::state::State;

/// Host bindings for the 0.3 build's `cred-broker` world.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "cred-broker",
        path: "../p3/wit",
        exports: { default: async | store },
    });
}

use bindings::exports::vibedata::cred_broker_async::token_credential as wit3;

/// The interface name the 0.3 build exports: how [`crate::Host::from_component`]
/// tells the builds apart.
pub const INTERFACE: &str = "vibedata:cred-broker-async/token-credential@0.1.0";

/// Whether `component` is the 0.3 build (it exports [`INTERFACE`]).
pub fn is_p3(engine: &Engine, component: &Component) -> bool {
    component
        .component_type()
        .exports(engine)
        .any(|(name, _)| name == INTERFACE)
}

/// Link WASI 0.3 and wasi:http 0.3 for `component`, and nothing of WASI
/// 0.2: the build imports only 0.3 (cli environment, clocks, filesystem,
/// http).
pub fn link(engine: &Engine, component: &Component) -> Result<bindings::CredBrokerPre<State>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    Ok(bindings::CredBrokerPre::new(
        linker.instantiate_pre(component)?,
    )?)
}

/// The result of a token call, as [`crate::TokenResult`].
type Core<T> = std::result::Result<T, vd_cred_broker::CredentialError>;

/// The 0.3 build's calls on an accessor of its store: each may run
/// alongside others in the same instance.
#[derive(Clone)]
pub struct Calls(pub(crate) wit3::Guest);

impl Calls {
    /// The free `get-token`.
    pub async fn get_token(
        &self,
        a: &Accessor<State>,
        scopes: Vec<String>,
    ) -> wasmtime::Result<Core<wit::AccessToken>> {
        Ok(self
            .0
            .call_get_token(a, scopes)
            .await?
            .map(token)
            .map_err(Into::into))
    }

    /// The free `get-token-info`.
    pub async fn get_token_info(
        &self,
        a: &Accessor<State>,
        scopes: Vec<String>,
        options: &wit::TokenRequestOptions,
    ) -> wasmtime::Result<Core<wit::AccessTokenInfo>> {
        Ok(self
            .0
            .call_get_token_info(a, scopes, request_options(options))
            .await?
            .map(token_info)
            .map_err(Into::into))
    }

    /// `credential.open`.
    pub async fn open(
        &self,
        a: &Accessor<State>,
        options: &wit::CredentialOptions,
    ) -> wasmtime::Result<Core<ResourceAny>> {
        Ok(self
            .0
            .credential()
            .call_open(a, credential_options(options))
            .await?
            .map_err(Into::into))
    }

    /// `credential.get-token`.
    pub async fn credential_get_token(
        &self,
        a: &Accessor<State>,
        credential: ResourceAny,
        scopes: Vec<String>,
    ) -> wasmtime::Result<Core<wit::AccessToken>> {
        Ok(self
            .0
            .credential()
            .call_get_token(a, credential, scopes)
            .await?
            .map(token)
            .map_err(Into::into))
    }

    /// `credential.get-token-info`.
    pub async fn credential_get_token_info(
        &self,
        a: &Accessor<State>,
        credential: ResourceAny,
        scopes: Vec<String>,
        options: &wit::TokenRequestOptions,
    ) -> wasmtime::Result<Core<wit::AccessTokenInfo>> {
        Ok(self
            .0
            .credential()
            .call_get_token_info(a, credential, scopes, request_options(options))
            .await?
            .map(token_info)
            .map_err(Into::into))
    }

    /// `describe-error`.
    pub async fn describe_error(
        &self,
        a: &Accessor<State>,
        error: &vd_cred_broker::CredentialError,
    ) -> wasmtime::Result<String> {
        self.0.call_describe_error(a, error.clone().into()).await
    }
}

/// One instance of the 0.3 build and its store.
pub struct Instance {
    pub(crate) calls: Calls,
    pub(crate) store: Store<State>,
}

impl Instance {
    /// Instantiate in `store`.
    pub async fn new(
        pre: &bindings::CredBrokerPre<State>,
        mut store: Store<State>,
    ) -> Result<Instance> {
        let broker = pre.instantiate_async(&mut store).await?;
        let calls = Calls(broker.vibedata_cred_broker_async_token_credential().clone());
        Ok(Instance { calls, store })
    }

    /// Run one call (alone) in the store's event loop.
    pub async fn run<R: Send + 'static>(
        &mut self,
        call: impl AsyncFnOnce(&Accessor<State>, Calls) -> wasmtime::Result<R>,
    ) -> wasmtime::Result<R> {
        let calls = self.calls.clone();
        self.store
            .run_concurrent(async move |a| call(a, calls).await)
            .await?
    }
}

fn token(t: wit3::AccessToken) -> wit::AccessToken {
    wit::AccessToken {
        token: t.token,
        expires_on: t.expires_on,
    }
}

fn token_info(t: wit3::AccessTokenInfo) -> wit::AccessTokenInfo {
    wit::AccessTokenInfo {
        token: t.token,
        expires_on: t.expires_on,
        token_type: t.token_type,
        refresh_on: t.refresh_on,
    }
}

fn request_options(o: &wit::TokenRequestOptions) -> wit3::TokenRequestOptions {
    wit3::TokenRequestOptions {
        claims: o.claims.clone(),
        tenant_id: o.tenant_id.clone(),
        enable_cae: o.enable_cae,
    }
}

fn credential_options(o: &wit::CredentialOptions) -> wit3::CredentialOptions {
    wit3::CredentialOptions {
        broker_url: o.broker_url.clone(),
        credential_file: o.credential_file.clone(),
        timeout_ms: o.timeout_ms,
        audience_map: o.audience_map.clone(),
        allow_insecure_http: o.allow_insecure_http,
        disable_cache: o.disable_cache,
        lane: o.lane.clone(),
        configuration_revision: o.configuration_revision,
        runtime_access_url: o.runtime_access_url.clone(),
    }
}
