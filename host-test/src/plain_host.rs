//! The credential in a wasmtime host configured the way most embedders leave
//! it: `WasiCtx` defaults (filesystem calls on tokio's blocking pool),
//! wasi:http's default `send_request` (a new connection per request, public
//! web roots), no egress policy. For the benchmarks' "default host" rows: what
//! a runtime author gets before any of `vd-cred-host`'s tuning.

use anyhow::Result;
use wasmtime::Store;
use wasmtime::component::{Component, Linker, ResourceAny, ResourceTable};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use vd_cred_host::bindings::CredBroker;
use vd_cred_host::{CredentialOptions, Host, TokenResult};

struct Plain {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl WasiView for Plain {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Plain {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

/// The component compiled for, and linked in, a plain host.
pub struct PlainHost {
    component: Component,
    linker: Linker<Plain>,
    engine: wasmtime::Engine,
}

impl PlainHost {
    /// Link the embedded component on `host`'s engine (compiled anew).
    pub fn new(host: &Host) -> Result<PlainHost> {
        let engine = host.engine().clone();
        let component = Component::new(&engine, vd_cred_host::COMPONENT)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        Ok(PlainHost {
            component,
            linker,
            engine,
        })
    }

    /// An instance with `env` and `dir` preopened at `guest` (WASI defaults
    /// otherwise).
    pub async fn instance(
        &self,
        env: &[(&str, &str)],
        dir: &std::path::Path,
        guest: &str,
    ) -> Result<PlainInstance> {
        let mut wasi = WasiCtx::builder();
        wasi.envs(env)
            .preopened_dir(dir, guest, FsPerms::ReadOnly)?;
        let state = Plain {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, state);
        vd_cred_host::yield_on_epoch(&mut store);
        let instance =
            CredBroker::instantiate_async(&mut store, &self.component, &self.linker).await?;
        Ok(PlainInstance { store, instance })
    }
}

/// One instance in the plain host.
pub struct PlainInstance {
    store: Store<Plain>,
    instance: CredBroker,
}

impl PlainInstance {
    /// `credential.open(options)`.
    pub async fn open(
        &mut self,
        options: &CredentialOptions,
    ) -> Result<std::result::Result<ResourceAny, vd_cred_broker::CredentialError>> {
        let iface = self
            .instance
            .vibedata_cred_broker_token_credential()
            .clone();
        let result = iface
            .credential()
            .call_open(&mut self.store, options)
            .await?;
        Ok(result.map_err(Into::into))
    }

    /// `credential.get-token(scopes)`.
    pub async fn get_token(
        &mut self,
        credential: ResourceAny,
        scopes: &[&str],
    ) -> Result<TokenResult> {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let iface = self
            .instance
            .vibedata_cred_broker_token_credential()
            .clone();
        let result = iface
            .credential()
            .call_get_token(&mut self.store, credential, &scopes)
            .await?;
        Ok(result.map_err(Into::into))
    }
}
