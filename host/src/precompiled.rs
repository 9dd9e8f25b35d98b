//! Loading a component fast: compile once, cache the machine code, and
//! deserialize it on later loads.
//!
//! A cache file is `<name>.<key>.cwasm`, where the key hashes the component's
//! bytes together with the engine's precompile-compatibility hash (wasmtime
//! version, target, and every setting that affects code). A changed component
//! or a differently configured engine therefore misses and recompiles; stale
//! files are left for the user to delete. A cache that cannot be read or
//! written only means compiling in memory: loading never fails because of it.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasmtime::component::Component;
use wasmtime::{Engine, Precompiled};

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Compiled from the `.wasm` by Cranelift (and cached when possible).
    Compiled,
    /// Deserialized from a matching precompiled file.
    Cached,
}

/// The environment variable that overrides [`user_cache_dir`].
pub const ENV_CACHE_DIR: &str = "VD_CRED_BROKER_CACHE_DIR";

/// The per-user cache directory: `$VD_CRED_BROKER_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/vd-cred-broker`, else `$HOME/.cache/vd-cred-broker`.
pub fn user_cache_dir() -> Option<PathBuf> {
    user_cache_dir_in(|name| std::env::var(name).ok())
}

/// [`user_cache_dir`] from `env` rather than the process's environment (the
/// Python package passes what it read from `os.environ`); it reads
/// [`CACHE_ENV_VARS`].
pub fn user_cache_dir_in(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let var = |name| env(name).filter(|v| !v.is_empty());
    var(ENV_CACHE_DIR).map(PathBuf::from).or_else(|| {
        var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|home| Path::new(&home).join(".cache")))
            .map(|dir| dir.join("vd-cred-broker"))
    })
}

/// The environment variables [`user_cache_dir`] reads.
pub const CACHE_ENV_VARS: [&str; 3] = [ENV_CACHE_DIR, "XDG_CACHE_HOME", "HOME"];

/// The cache file name for a component called `name` with these bytes under `engine`.
pub fn cache_file_name(engine: &Engine, name: &str, wasm_bytes: &[u8]) -> String {
    let mut hasher = DefaultHasher::new();
    wasm_bytes.hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{name}.{:016x}.cwasm", hasher.finish())
}

/// The cache path for the file `wasm` under `engine`: beside it.
pub fn cache_path(engine: &Engine, wasm: &Path, wasm_bytes: &[u8]) -> PathBuf {
    let name = wasm.file_name().unwrap_or_default().to_string_lossy();
    wasm.with_file_name(cache_file_name(engine, &name, wasm_bytes))
}

/// Load `wasm`, from its precompiled cache beside it when one matches this
/// engine, else compile it and write the cache.
pub fn load(engine: &Engine, wasm: &Path) -> Result<(Component, Source)> {
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let cached = cache_path(engine, wasm, &bytes);
    load_cached(engine, &bytes, Some(&cached))
        .with_context(|| format!("compiling {}", wasm.display()))
}

/// Load the component `bytes` (called `name`), from `cache_dir` when it
/// holds a match, else compile it and write the cache there (creating the
/// directory). No `cache_dir`: compile in memory.
pub fn load_bytes(
    engine: &Engine,
    name: &str,
    bytes: &[u8],
    cache_dir: Option<&Path>,
) -> Result<(Component, Source)> {
    let cached = cache_dir.map(|dir| {
        let _ = std::fs::create_dir_all(dir);
        dir.join(cache_file_name(engine, name, bytes))
    });
    load_cached(engine, bytes, cached.as_deref()).with_context(|| format!("compiling {name}"))
}

fn load_cached(
    engine: &Engine,
    bytes: &[u8],
    cached: Option<&Path>,
) -> Result<(Component, Source)> {
    if let Some(cached) = cached
        && matches!(
            Engine::detect_precompiled_file(cached),
            Ok(Some(Precompiled::Component))
        )
    {
        // SAFETY: the file's name binds it to this exact component and engine
        // configuration, and only this function writes such files, in a
        // directory of the user's own (or one the embedder chose);
        // deserializing trusts its contents.
        if let Ok(component) = unsafe { Component::deserialize_file(engine, cached) } {
            return Ok((component, Source::Cached));
        }
    }
    let code = engine
        .precompile_component(bytes)
        .map_err(anyhow::Error::from)?;
    if let Some(cached) = cached {
        // Best effort, atomically: a read-only or missing directory just means
        // compiling every time.
        let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &code).is_ok() && std::fs::rename(&tmp, cached).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    // SAFETY: `code` was produced just now by this engine.
    let component =
        unsafe { Component::deserialize(engine, &code) }.map_err(anyhow::Error::from)?;
    Ok((component, Source::Compiled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_load_uses_the_cache_and_a_read_only_cache_still_loads() {
        let engine = Engine::default();
        let wasm = wat_component();
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("nested/cache");
        let (_, first) = load_bytes(&engine, "c", &wasm, Some(&cache)).unwrap();
        let (_, second) = load_bytes(&engine, "c", &wasm, Some(&cache)).unwrap();
        assert_eq!((first, second), (Source::Compiled, Source::Cached));

        // A cache directory that cannot be created (under a regular file).
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let (_, source) = load_bytes(&engine, "c", &wasm, Some(&file.join("cache"))).unwrap();
        assert_eq!(source, Source::Compiled);

        // A corrupt cache file is recompiled over.
        let name = cache_file_name(&engine, "c", &wasm);
        std::fs::write(cache.join(&name), "not machine code").unwrap();
        let (_, source) = load_bytes(&engine, "c", &wasm, Some(&cache)).unwrap();
        assert_eq!(source, Source::Compiled);
        let (_, source) = load_bytes(&engine, "c", &wasm, Some(&cache)).unwrap();
        assert_eq!(source, Source::Cached);
    }

    /// The smallest valid component, `(component)`: the binary preamble alone.
    fn wat_component() -> Vec<u8> {
        vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]
    }
}
