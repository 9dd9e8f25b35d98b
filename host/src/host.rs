//! [`Host`]: one engine and the credential component, compiled and linked
//! once, from which every sandbox is instantiated.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::CredBrokerPre;
use crate::precompiled::{self, Source};
use crate::state::{State, link};

/// The release credential component this crate was built with.
pub static COMPONENT: &[u8] = include_bytes!(env!("VD_CRED_BROKER_WASM"));

/// Where the build script put [`COMPONENT`] (for tools that want the file).
pub const COMPONENT_WASM: &str = env!("VD_CRED_BROKER_WASM");

/// How a [`Host`] is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostOptions {
    /// Use wasmtime's pooling allocator, sized for this many live instances
    /// (for a runtime hosting many agents). `None`: on-demand allocation.
    pub pooling: Option<u32>,
    /// Load from (and write) a precompiled cache: next to the `.wasm` for
    /// [`Host::load_with`], in [`HostOptions::cache_dir`] for
    /// [`Host::embedded_with`].
    pub precompiled_cache: bool,
    /// The cache directory for the embedded component; `None`:
    /// [`precompiled::user_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Compile on several threads (rayon's global pool) when the component
    /// is not in the cache. A process forked from one that compiled has that
    /// pool without its threads: it must compile on one.
    pub parallel_compilation: bool,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            pooling: None,
            precompiled_cache: true,
            cache_dir: None,
            parallel_compilation: true,
        }
    }
}

/// How often a [`Host`]'s engine ticks its epoch: the granularity at which a
/// call into the credential can be stopped, and at which an agent store set
/// up with [`yield_on_epoch`] gives its thread back.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engine configuration a [`Host`] uses: epoch interruption on (every
/// store of the engine needs a deadline; see [`yield_on_epoch`]).
pub fn engine_config(pooling: Option<u32>) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    if let Some(instances) = pooling {
        let mut pool = PoolingAllocationConfig::default();
        // A component instance of this crate holds a few core instances, one
        // or two memories and tables; room for all of them per instance.
        pool.total_component_instances(instances)
            .total_core_instances(instances * 8)
            .total_memories(instances * 2)
            .total_tables(instances * 4)
            .total_stacks(instances)
            .max_memory_size(64 << 20);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Tick `engine`'s epoch every [`EPOCH_TICK`] on a thread of its own, until
/// the engine is dropped.
fn tick(engine: &Engine) -> Result<()> {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("vd-cred-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })?;
    Ok(())
}

/// Let a store of `host`'s engine (an agent's, say) run without a deadline,
/// giving its thread back to the async runtime at every epoch tick. Every
/// store of a [`Host`]'s engine needs a deadline (the engine interrupts wasm
/// at epoch ticks, which bounds the credential's calls): call this on stores
/// you create yourself from [`Host::engine`].
pub fn yield_on_epoch<T>(store: &mut wasmtime::Store<T>) {
    store.epoch_deadline_async_yield_and_update(1);
}

/// An engine and the component, compiled and linked once; sandboxes are cheap.
pub struct Host {
    pub(crate) engine: Engine,
    pub(crate) pre: CredBrokerPre<State>,
    source: Source,
}

impl Host {
    /// The embedded component ([`COMPONENT`]), loaded once per process with
    /// default options: the host most embedders want.
    pub fn shared() -> &'static Host {
        static HOST: OnceLock<Host> = OnceLock::new();
        HOST.get_or_init(|| Host::embedded().expect("load the embedded credential component"))
    }

    /// Load the embedded component ([`COMPONENT`]), from the per-user
    /// precompiled cache when it holds a match.
    pub fn embedded() -> Result<Host> {
        Host::embedded_with(HostOptions::default())
    }

    /// [`Host::embedded`] with explicit options.
    pub fn embedded_with(options: HostOptions) -> Result<Host> {
        let engine = Engine::new(
            engine_config(options.pooling).parallel_compilation(options.parallel_compilation),
        )?;
        let cache_dir = match options.precompiled_cache {
            true => options.cache_dir.or_else(precompiled::user_cache_dir),
            false => None,
        };
        let (component, source) =
            precompiled::load_bytes(&engine, "vd_cred_broker", COMPONENT, cache_dir.as_deref())?;
        Host::from_component(engine, component, source)
    }

    /// Load the component at `wasm` (from the precompiled cache next to it
    /// when it matches) and link WASI p2 and wasi:http.
    pub fn load(wasm: impl AsRef<Path>) -> Result<Host> {
        Host::load_with(wasm, HostOptions::default())
    }

    /// [`Host::load`] with explicit options.
    pub fn load_with(wasm: impl AsRef<Path>, options: HostOptions) -> Result<Host> {
        let wasm = wasm.as_ref();
        let engine = Engine::new(
            engine_config(options.pooling).parallel_compilation(options.parallel_compilation),
        )?;
        let (component, source) = if options.precompiled_cache {
            precompiled::load(&engine, wasm)?
        } else {
            let component = Component::from_file(&engine, wasm).map_err(|e| {
                anyhow::Error::from(e).context(format!("compiling {}", wasm.display()))
            })?;
            (component, Source::Compiled)
        };
        Host::from_component(engine, component, source)
    }

    /// Link an already compiled component.
    /// Its engine must have epoch interruption on ([`engine_config`]).
    pub fn from_component(engine: Engine, component: Component, source: Source) -> Result<Host> {
        let pre = CredBrokerPre::new(link(&engine, &component)?)?;
        tick(&engine)?;
        Ok(Host {
            engine,
            pre,
            source,
        })
    }

    /// Whether the component was compiled or loaded precompiled.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The engine (for loading other components into it, precompiling, benchmarks).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}
