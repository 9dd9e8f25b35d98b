//! Loading a component fast: compile once, cache the machine code next to the
//! `.wasm`, and deserialize it on later loads.
//!
//! The cache file is `<name>.wasm.<key>.cwasm`, where the key hashes the
//! component's bytes together with the engine's precompile-compatibility
//! hash (wasmtime version, target, and every setting that affects code). A
//! changed component or a differently configured engine therefore misses and
//! recompiles; stale files are left for the user to delete.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasmtime::component::Component;
use wasmtime::{Engine, Precompiled};

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Compiled from the `.wasm` by Cranelift (and cached).
    Compiled,
    /// Deserialized from a matching precompiled file.
    Cached,
}

/// The cache path for `wasm` under `engine`.
pub fn cache_path(engine: &Engine, wasm: &Path, wasm_bytes: &[u8]) -> PathBuf {
    let mut hasher = DefaultHasher::new();
    wasm_bytes.hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let mut name = wasm.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{:016x}.cwasm", hasher.finish()));
    wasm.with_file_name(name)
}

/// Load `wasm`, from its precompiled cache when one matches this engine,
/// else compile it and write the cache (best effort: a read-only directory
/// just means compiling every time).
pub fn load(engine: &Engine, wasm: &Path) -> Result<(Component, Source)> {
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let cached = cache_path(engine, wasm, &bytes);
    if matches!(
        Engine::detect_precompiled_file(&cached),
        Ok(Some(Precompiled::Component))
    ) {
        // SAFETY: the file is one this function wrote for this exact engine
        // configuration and component (the key says so), in the component's
        // own directory; deserializing trusts its contents.
        if let Ok(component) = unsafe { Component::deserialize_file(engine, &cached) } {
            return Ok((component, Source::Cached));
        }
    }
    let code = engine
        .precompile_component(&bytes)
        .map_err(|e| anyhow::Error::from(e).context(format!("compiling {}", wasm.display())))?;
    let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, &code).is_ok() {
        let _ = std::fs::rename(&tmp, &cached);
    }
    // SAFETY: `code` was produced just now by this engine.
    let component =
        unsafe { Component::deserialize(engine, &code) }.map_err(anyhow::Error::from)?;
    Ok((component, Source::Compiled))
}
