//! Loading a component fast: compile once, cache the machine code, and
//! deserialize it on later loads.
//!
//! A cache file is `<name>.<key>.cwasm`, where the key hashes the component's
//! bytes together with the engine's precompile-compatibility hash (wasmtime
//! version, target, and every setting that affects code). A changed component
//! or a differently configured engine therefore misses and recompiles; stale
//! files are left for the user to delete.
//!
//! Deserializing a cache file runs its contents as native code, so on Unix a
//! cache file is used only when nobody but the effective user (or root) can
//! have put it there:
//!
//! - its directory (the one the path leads to) belongs to the effective user
//!   and is not writable by group or others, and
//! - the file itself is a regular file, not a symlink, that belongs to the
//!   effective user and is not writable by group or others.
//!
//! Both are checked on open handles: the directory is opened once, the file is
//! opened relative to that handle with `O_NOFOLLOW`, each is `fstat`ed, and the
//! bytes deserialized are the ones read from that very handle into memory, so
//! nothing can be swapped in between the check and the use. Anything else is
//! ignored and the component compiled afresh.
//!
//! The cache is written only into a directory that passes the same check (a
//! cache directory this module creates gets mode 0700), through a randomly
//! named temporary file created exclusively (`O_CREAT | O_EXCL`, mode 0600,
//! so never through a link) in that directory, synced, and renamed over the
//! final name: a reader sees the old file or the whole new one, and a link
//! planted at any name is replaced, never followed.
//!
//! On other platforms nothing checks ownership (ACLs are not inspected): a
//! cache file is loaded wherever the path leads, so the cache directory must
//! be one only the user can write, as the default under the user's profile
//! is. Writing uses the same exclusive temporary file and rename.
//!
//! A cache that cannot be read or written, or fails these checks, only means
//! compiling in memory: loading never fails because of it.

use std::ffi::{OsStr, OsString};
#[cfg(unix)]
use std::fs::File;
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
/// engine and can be trusted (see the module docs), else compile it and write
/// the cache when the directory can be trusted.
pub fn load(engine: &Engine, wasm: &Path) -> Result<(Component, Source)> {
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let cached = cache_path(engine, wasm, &bytes);
    load_cached(engine, &bytes, Some(&cached))
        .with_context(|| format!("compiling {}", wasm.display()))
}

/// Load the component `bytes` (called `name`), from `cache_dir` when it
/// holds a match, else compile it and write the cache there (creating the
/// directory, mode 0700 on Unix). No `cache_dir`: compile in memory.
pub fn load_bytes(
    engine: &Engine,
    name: &str,
    bytes: &[u8],
    cache_dir: Option<&Path>,
) -> Result<(Component, Source)> {
    let cached = cache_dir.map(|dir| {
        create_private_dir(dir);
        dir.join(cache_file_name(engine, name, bytes))
    });
    load_cached(engine, bytes, cached.as_deref()).with_context(|| format!("compiling {name}"))
}

/// Create `dir` and any missing parents, private to the user on Unix. An
/// existing directory is left as it is (if another user can write it, the
/// cache is neither read nor written there).
fn create_private_dir(dir: &Path) {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    let _ = builder.create(dir);
}

fn load_cached(
    engine: &Engine,
    bytes: &[u8],
    cached: Option<&Path>,
) -> Result<(Component, Source)> {
    let dir = cached.and_then(CacheDir::of);
    if let Some(dir) = &dir
        && let Some(code) = dir.read()
        && Engine::detect_precompiled(&code) == Some(Precompiled::Component)
    {
        // SAFETY: deserializing trusts the contents. They were read from a
        // regular file of the effective user's, not writable by anyone else,
        // in a directory of the same kind (see `CacheDir`), so only this user
        // (or root) can have put them there, and such files are written only
        // by this function; the name binds them to this exact component and
        // engine configuration. They were read into memory, so later changes
        // to the file cannot reach the loaded code.
        if let Ok(component) = unsafe { Component::deserialize(engine, &code) } {
            return Ok((component, Source::Cached));
        }
    }
    let code = engine
        .precompile_component(bytes)
        .map_err(anyhow::Error::from)?;
    if let Some(dir) = &dir {
        // Best effort: a read-only directory just means compiling every time.
        dir.write(&code);
    }
    // SAFETY: `code` was produced just now by this engine.
    let component =
        unsafe { Component::deserialize(engine, &code) }.map_err(anyhow::Error::from)?;
    Ok((component, Source::Compiled))
}

/// The directory of a cache file, once it has passed the check that lets its
/// files be trusted (on Unix: it belongs to the effective user and is not
/// writable by group or others), held open so that the file is opened in the
/// very directory that was checked.
struct CacheDir<'a> {
    path: &'a Path,
    /// The cache file's name in it.
    name: &'a OsStr,
    #[cfg(unix)]
    handle: File,
}

impl<'a> CacheDir<'a> {
    /// The directory of the cache file `cached`, if it can be trusted.
    fn of(cached: &'a Path) -> Option<Self> {
        let name = cached.file_name()?;
        let path = match cached.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        #[cfg(unix)]
        {
            use rustix::fs::{Mode, OFlags};
            // Links in the directory's own path are followed: what is checked
            // is the directory opened, and every later read goes through this
            // handle.
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let handle = File::from(rustix::fs::open(path, flags, Mode::empty()).ok()?);
            let meta = handle.metadata().ok()?;
            (meta.is_dir() && unix::only_ours(&meta)).then_some(Self { path, name, handle })
        }
        #[cfg(not(unix))]
        Some(Self { path, name })
    }

    /// The cache file's contents, if it can be trusted (on Unix: a regular
    /// file, not a link, that belongs to the effective user and is not
    /// writable by group or others).
    #[cfg(unix)]
    fn read(&self) -> Option<Vec<u8>> {
        use rustix::fs::{Mode, OFlags};
        use std::io::Read;
        // `NOFOLLOW`: a link at the name fails to open. `NONBLOCK`: a FIFO at
        // the name cannot hang the open; it is then refused as not a regular
        // file (the flag does not affect reading a regular file).
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let mut file =
            File::from(rustix::fs::openat(&self.handle, self.name, flags, Mode::empty()).ok()?);
        // The checks are on the handle read below, not on the name.
        let meta = file.metadata().ok()?;
        if !(meta.is_file() && unix::only_ours(&meta)) {
            return None;
        }
        let mut code = Vec::new();
        file.read_to_end(&mut code).ok()?;
        Some(code)
    }

    /// The cache file's contents (no ownership check off Unix).
    #[cfg(not(unix))]
    fn read(&self) -> Option<Vec<u8>> {
        std::fs::read(self.path.join(self.name)).ok()
    }

    /// Write `code` as the cache file, best effort: into a randomly named
    /// temporary file created exclusively with mode 0600 (so never through a
    /// link or into an existing file), synced, then renamed over the final
    /// name (replacing whatever is there, a link included, without following
    /// it). On failure the temporary file is removed.
    ///
    /// The temporary file is created and renamed by path, not relative to
    /// the checked handle (`tempfile` has no `openat`). Only someone who can
    /// rename a directory above this one could make the path lead elsewhere
    /// between the check and the write. That sends our own code into their
    /// directory, or makes the rename fail or move a file of theirs here;
    /// a file keeps its owner when renamed, and every load checks the file
    /// and its directory afresh on the handles, so none of it is loaded.
    fn write(&self, code: &[u8]) {
        use std::io::Write;
        let mut prefix = OsString::from(".");
        prefix.push(self.name);
        prefix.push(".");
        let Ok(mut tmp) = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".tmp")
            .tempfile_in(self.path)
        else {
            return;
        };
        if tmp
            .write_all(code)
            .and_then(|()| tmp.as_file().sync_all())
            .is_ok()
        {
            // An `Err` holds the temporary file and removes it when dropped.
            let _ = tmp.persist(self.path.join(self.name));
        }
    }
}

#[cfg(unix)]
mod unix {
    use std::fs::Metadata;
    use std::os::unix::fs::MetadataExt;

    /// Whether `meta` belongs to the effective user and is not writable by
    /// group or others: nobody else (but root) can have written or replaced
    /// it. As root, that is root's own files.
    pub(super) fn only_ours(meta: &Metadata) -> bool {
        meta.uid() == rustix::process::geteuid().as_raw() && meta.mode() & 0o022 == 0
    }
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

    #[cfg(unix)]
    mod unix {
        use std::collections::BTreeSet;
        use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

        use super::super::*;
        use super::wat_component;

        fn chmod(path: &Path, mode: u32) {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }

        fn mode(path: &Path) -> u32 {
            std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
        }

        fn listing(dir: &Path) -> BTreeSet<String> {
            std::fs::read_dir(dir)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .collect()
        }

        /// The engine, the component, its cache file name, and valid machine
        /// code for it: a file holding it would load if nothing were checked.
        fn fixture() -> (Engine, Vec<u8>, String, Vec<u8>) {
            let engine = Engine::default();
            let wasm = wat_component();
            let name = cache_file_name(&engine, "c", &wasm);
            let code = engine.precompile_component(&wasm).unwrap();
            (engine, wasm, name, code)
        }

        fn source(engine: &Engine, wasm: &[u8], dir: &Path) -> Source {
            load_bytes(engine, "c", wasm, Some(dir)).unwrap().1
        }

        #[test]
        fn a_created_cache_dir_is_private_and_holds_only_the_cache_file() {
            let (engine, wasm, name, _) = fixture();
            let dir = tempfile::tempdir().unwrap();
            let cache = dir.path().join("nested/cache");
            assert_eq!(source(&engine, &wasm, &cache), Source::Compiled);
            assert_eq!(mode(&dir.path().join("nested")), 0o700);
            assert_eq!(mode(&cache), 0o700);
            assert_eq!(listing(&cache), BTreeSet::from([name.clone()]));
            assert_eq!(mode(&cache.join(&name)), 0o600);
            assert_eq!(source(&engine, &wasm, &cache), Source::Cached);
        }

        #[test]
        fn a_planted_file_in_a_directory_others_can_write_is_ignored() {
            let (engine, wasm, name, code) = fixture();
            for dir_mode in [0o775, 0o777, 0o757, 0o1777] {
                let dir = tempfile::tempdir().unwrap();
                let planted = dir.path().join(&name);
                std::fs::write(&planted, &code).unwrap();
                chmod(&planted, 0o600);
                // In a private directory the plant would load.
                assert_eq!(source(&engine, &wasm, dir.path()), Source::Cached);

                chmod(dir.path(), dir_mode);
                let before = std::fs::metadata(&planted).unwrap().ino();
                for _ in 0..2 {
                    let source = source(&engine, &wasm, dir.path());
                    assert_eq!(source, Source::Compiled, "{dir_mode:o}");
                }
                // Nor is anything written there: the plant is the same file.
                assert_eq!(std::fs::metadata(&planted).unwrap().ino(), before);
                assert_eq!(listing(dir.path()), BTreeSet::from([name.clone()]));
            }
        }

        #[test]
        fn a_planted_file_beside_a_wasm_others_can_write_beside_is_ignored() {
            let (engine, wasm, _, code) = fixture();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.wasm");
            std::fs::write(&path, &wasm).unwrap();
            let planted = cache_path(&engine, &path, &wasm);
            std::fs::write(&planted, &code).unwrap();
            chmod(&planted, 0o600);
            assert_eq!(load(&engine, &path).unwrap().1, Source::Cached);
            chmod(dir.path(), 0o775);
            assert_eq!(load(&engine, &path).unwrap().1, Source::Compiled);
        }

        #[test]
        fn a_cache_file_others_can_write_is_ignored_and_replaced() {
            let (engine, wasm, name, code) = fixture();
            for file_mode in [0o666, 0o620, 0o602] {
                let dir = tempfile::tempdir().unwrap();
                let planted = dir.path().join(&name);
                std::fs::write(&planted, &code).unwrap();
                chmod(&planted, file_mode);
                assert_eq!(source(&engine, &wasm, dir.path()), Source::Compiled);
                // Replaced by a file of our own, which then loads.
                assert_eq!(mode(&planted), 0o600);
                assert_eq!(listing(dir.path()), BTreeSet::from([name.clone()]));
                assert_eq!(source(&engine, &wasm, dir.path()), Source::Cached);
            }
        }

        #[test]
        fn a_link_at_the_cache_name_is_not_followed() {
            let (engine, wasm, name, code) = fixture();
            let dir = tempfile::tempdir().unwrap();
            let elsewhere = tempfile::tempdir().unwrap();
            let target = elsewhere.path().join("code.cwasm");
            std::fs::write(&target, &code).unwrap();
            chmod(&target, 0o600);
            let link = dir.path().join(&name);
            symlink(&target, &link).unwrap();

            assert_eq!(source(&engine, &wasm, dir.path()), Source::Compiled);
            // The link was replaced by a file (the rename does not follow
            // it), and its target is untouched.
            assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
            assert_eq!(std::fs::read(&target).unwrap(), code);
            assert_eq!(source(&engine, &wasm, dir.path()), Source::Cached);
        }

        #[test]
        fn a_link_at_the_old_temporary_name_is_not_followed() {
            let (engine, wasm, name, _) = fixture();
            let dir = tempfile::tempdir().unwrap();
            let elsewhere = tempfile::tempdir().unwrap();
            let victim = elsewhere.path().join("victim");
            std::fs::write(&victim, "victim").unwrap();
            // The name this module used to write through: predictable.
            let old_tmp = dir
                .path()
                .join(&name)
                .with_extension(format!("tmp{}", std::process::id()));
            symlink(&victim, &old_tmp).unwrap();

            assert_eq!(source(&engine, &wasm, dir.path()), Source::Compiled);
            assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim");
            assert!(std::fs::symlink_metadata(&old_tmp).unwrap().is_symlink());
            let old_tmp = old_tmp.file_name().unwrap().to_str().unwrap().to_owned();
            assert_eq!(listing(dir.path()), BTreeSet::from([name.clone(), old_tmp]));
            assert_eq!(source(&engine, &wasm, dir.path()), Source::Cached);
        }

        /// Files and directories of another user (only root can make them, so
        /// elsewhere this test checks nothing).
        #[test]
        fn a_cache_file_or_directory_of_another_user_is_ignored() {
            let (engine, wasm, name, code) = fixture();
            let other = rustix::process::geteuid().as_raw().wrapping_add(4242);
            let dir = tempfile::tempdir().unwrap();
            let planted = dir.path().join(&name);
            std::fs::write(&planted, &code).unwrap();
            chmod(&planted, 0o600);
            if std::os::unix::fs::chown(&planted, Some(other), None).is_err() {
                return; // not root
            }
            assert_eq!(source(&engine, &wasm, dir.path()), Source::Compiled);
            // Replaced by our own file.
            assert_eq!(source(&engine, &wasm, dir.path()), Source::Cached);

            std::fs::write(&planted, &code).unwrap();
            std::os::unix::fs::chown(dir.path(), Some(other), None).unwrap();
            let before = std::fs::metadata(&planted).unwrap().ino();
            assert_eq!(source(&engine, &wasm, dir.path()), Source::Compiled);
            assert_eq!(std::fs::metadata(&planted).unwrap().ino(), before);
        }
    }

    /// The smallest valid component, `(component)`: the binary preamble alone.
    fn wat_component() -> Vec<u8> {
        vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]
    }
}
