//! What a store holds for one sandboxed instance, and the linker every
//! sandbox shares.

use std::time::Instant;

use anyhow::Result;
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::outbound::broker_only::BrokerOnly;

/// The per-instance state: WASI, wasi:http, the broker-only HTTP policy,
/// the store's limits and the running call's deadline.
pub struct State {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) hooks: BrokerOnly,
    pub(crate) limits: StoreLimits,
    pub(crate) deadline: Option<Instant>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Link WASI p2 (filesystem, clocks, environment, stdio) and wasi:http for
/// `component`: what every sandbox offers, before its per-instance policy.
/// Any component linked this way can be instantiated in a sandbox with
/// [`crate::SandboxBuilder::instantiate`].
pub fn link(engine: &Engine, component: &Component) -> Result<InstancePre<State>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker.instantiate_pre(component)?)
}
