//! [`Host`]: one engine and the credential component, compiled and linked
//! once, from which every sandbox is instantiated.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Result;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::engine::bindings::CredBrokerPre;
use crate::engine::precompiled::{self, CodeMemory, Source};
use crate::engine::state::{State, link};

/// The release credential component this crate was built with (the WASI
/// 0.2 build).
pub static COMPONENT: &[u8] = include_bytes!(env!("VD_CRED_BROKER_WASM"));

/// Where the build script put [`COMPONENT`] (for tools that want the file).
pub const COMPONENT_WASM: &str = env!("VD_CRED_BROKER_WASM");

/// The release WASI 0.3 build of the credential (`p3/`: `async` exports,
/// wasi:http@0.3.0), which one instance serves many callers at once with.
pub static COMPONENT_P3: &[u8] = include_bytes!(env!("VD_CRED_BROKER_P3_WASM"));

/// Where the build script put [`COMPONENT_P3`].
pub const COMPONENT_P3_WASM: &str = env!("VD_CRED_BROKER_P3_WASM");

/// Which build of the credential a [`Host`] runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Build {
    /// WASI 0.2 (`wasm32-wasip2`, synchronous exports): one call at a time
    /// per instance. Every WASI 0.2 runtime runs it. The default.
    #[default]
    P2,
    /// WASI 0.3 (`async func` exports, wasi:http@0.3.0): concurrent calls in
    /// one instance, sharing mints ([`crate::shared`]). Needs a runtime with
    /// WASI 0.3 (wasmtime 48 with `-S p3`, or this crate).
    P3,
}

// COMPONENT_DIGEST and COMPONENT_P3_DIGEST: the build script's
// `precompiled::component_digest` of each.
include!(concat!(env!("OUT_DIR"), "/digests.rs"));

impl Build {
    /// The embedded component of this build, its cache name and its digest.
    pub(crate) fn embedded(self) -> (&'static [u8], &'static str, &'static [u8; 32]) {
        match self {
            Build::P2 => (COMPONENT, "vd_cred_broker", &COMPONENT_DIGEST),
            Build::P3 => (COMPONENT_P3, "vd_cred_broker_p3", &COMPONENT_P3_DIGEST),
        }
    }
}

/// A build's instance pre-linked: what sandboxes are instantiated from.
#[derive(Clone)]
pub(crate) enum Pre {
    P2(CredBrokerPre<State>),
    P3(crate::engine::p3::bindings::CredBrokerPre<State>),
}

/// How a [`Host`] is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostOptions {
    /// Use wasmtime's pooling allocator, sized for this many live instances
    /// (for a runtime hosting many agents). `None`: on-demand allocation.
    pub pooling: Option<u32>,
    /// Load from (and write) a precompiled cache, in
    /// [`HostOptions::cache_dir`] (never next to a `.wasm`: see
    /// [`precompiled`] for why, and which directories an agent must never
    /// be given).
    pub precompiled_cache: bool,
    /// The cache directory; `None`: [`precompiled::user_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Compile on several threads (rayon's global pool) when the component
    /// is not in the cache. A process forked from one that compiled has that
    /// pool without its threads: it must compile on one.
    pub parallel_compilation: bool,
    /// Which embedded build [`Host::embedded_with`] loads ([`Build::P2`]
    /// unless set). [`Host::load`] tells the build from the file.
    pub build: Build,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            pooling: None,
            precompiled_cache: true,
            cache_dir: None,
            parallel_compilation: true,
            build: Build::P2,
        }
    }
}

/// How often a [`Host`]'s engine ticks its epoch: the granularity at which a
/// call into the credential can be stopped, and at which an agent store set
/// up with [`yield_on_epoch`] gives its thread back.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engine configuration a [`Host`] of the 0.2 build uses: epoch
/// interruption on (every store of the engine needs a deadline; see
/// [`yield_on_epoch`]), and the component model's async off: with it on,
/// wasmtime sets up every store for concurrent calls, which a 0.2 instance
/// never makes (about 15 KiB more per sandbox, by the shared benchmark).
pub fn engine_config(pooling: Option<u32>) -> Config {
    engine_config_for(Build::P2, pooling)
}

/// The engine configuration a [`Host`] of `build` uses: the 0.3 build's
/// needs the component model's async (its `async func` exports) and stores
/// set up for concurrent calls.
pub fn engine_config_for(build: Build, pooling: Option<u32>) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let concurrent = build == Build::P3;
    config.concurrency_support(concurrent);
    config.wasm_component_model_async(concurrent);
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

/// A [`Host`]'s engine for `build` and `options`, and, where cached code can
/// be run where it was read, the memory that publishes its code.
pub(crate) fn host_engine(
    build: Build,
    options: &HostOptions,
) -> Result<(Engine, Option<Arc<CodeMemory>>)> {
    let mut config = engine_config_for(build, options.pooling);
    config.parallel_compilation(options.parallel_compilation);
    #[cfg(unix)]
    let code = CodeMemory::new();
    #[cfg(not(unix))]
    let code = None;
    if let Some(code) = &code {
        config.with_custom_code_memory(Some(code.clone()));
    }
    Ok((Engine::new(&config)?, code))
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
    pub(crate) pre: Pre,
    source: Source,
}

impl Host {
    /// The embedded component ([`COMPONENT`]), loaded once per process with
    /// default options: the host most embedders want.
    pub fn shared() -> &'static Host {
        static HOST: OnceLock<Host> = OnceLock::new();
        HOST.get_or_init(|| Host::embedded().expect("load the embedded credential component"))
    }

    /// The embedded WASI 0.3 build ([`COMPONENT_P3`]), loaded once per
    /// process with default options.
    pub fn shared_p3() -> &'static Host {
        static HOST: OnceLock<Host> = OnceLock::new();
        HOST.get_or_init(|| {
            let options = HostOptions {
                build: Build::P3,
                ..HostOptions::default()
            };
            Host::embedded_with(options).expect("load the embedded WASI 0.3 credential component")
        })
    }

    /// Load the embedded component ([`COMPONENT`]), from the per-user
    /// precompiled cache when it holds a match.
    pub fn embedded() -> Result<Host> {
        Host::embedded_with(HostOptions::default())
    }

    /// [`Host::embedded`] with explicit options.
    pub fn embedded_with(options: HostOptions) -> Result<Host> {
        let (engine, code) = host_engine(options.build, &options)?;
        let cache_dir = match options.precompiled_cache {
            true => options.cache_dir.or_else(precompiled::user_cache_dir),
            false => None,
        };
        let (bytes, name, digest) = options.build.embedded();
        let (component, source) = precompiled::load_digested(
            &engine,
            name,
            bytes,
            Some(digest),
            cache_dir.as_deref(),
            code.as_deref(),
        )?;
        Host::from_component(engine, component, source)
    }

    /// Load the component at `wasm` (from the per-user precompiled cache
    /// when it holds a match, never from beside the file) and link WASI and wasi:http: 0.2 for the 0.2 build,
    /// 0.3 for the 0.3 build (told apart by its exports).
    pub fn load(wasm: impl AsRef<Path>) -> Result<Host> {
        Host::load_with(wasm, HostOptions::default())
    }

    /// [`Host::load`] with explicit options.
    pub fn load_with(wasm: impl AsRef<Path>, options: HostOptions) -> Result<Host> {
        let wasm = wasm.as_ref();
        // Which build: the 0.3 build's exports are `async func`s, which only
        // an engine with the component model's async compiles (it refuses
        // them at once, before compiling anything).
        let compile = |build: Build| -> Result<(Engine, Component, Source)> {
            let (engine, code) = host_engine(build, &options)?;
            let (component, source) = if options.precompiled_cache {
                let cache_dir = options
                    .cache_dir
                    .clone()
                    .or_else(precompiled::user_cache_dir);
                precompiled::load_file_into(&engine, wasm, cache_dir.as_deref(), code.as_deref())?
            } else {
                let component = Component::from_file(&engine, wasm).map_err(|e| {
                    anyhow::Error::from(e).context(format!("compiling {}", wasm.display()))
                })?;
                (component, Source::Compiled)
            };
            Ok((engine, component, source))
        };
        let (engine, component, source) = match compile(Build::P2) {
            Ok(compiled) => compiled,
            Err(p2) => compile(Build::P3).map_err(|_| p2)?,
        };
        Host::from_component(engine, component, source)
    }

    /// Link an already compiled component.
    /// Its engine must have epoch interruption on ([`engine_config`]).
    pub fn from_component(engine: Engine, component: Component, source: Source) -> Result<Host> {
        let pre = match crate::engine::p3::is_p3(&engine, &component) {
            true => Pre::P3(crate::engine::p3::link(&engine, &component)?),
            false => Pre::P2(CredBrokerPre::new(link(&engine, &component)?)?),
        };
        tick(&engine)?;
        Ok(Host {
            engine,
            pre,
            source,
        })
    }

    /// Which build of the credential this host runs.
    pub fn build(&self) -> Build {
        match self.pre {
            Pre::P2(_) => Build::P2,
            Pre::P3(_) => Build::P3,
        }
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
