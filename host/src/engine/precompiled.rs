//! Loading a component fast: compile once, cache the machine code, and
//! deserialize it on later loads.
//!
//! A cache file is `<name>.<key>.cwasm`, where the key hashes the component's
//! bytes together with the engine's precompile-compatibility hash (wasmtime
//! version, target, and every setting that affects code). A changed component
//! or a differently configured engine therefore misses and recompiles; stale
//! files are left for the user to delete.
//!
//! Deserializing a cache file runs its contents as native code, so a cache
//! file is used only when this host wrote it, and nobody but the effective
//! user (or root) can have put it there.
//!
//! **Written by this host.** Every cache file ends with a 32-byte tag (BLAKE3
//! in its keyed mode, a MAC)
//! over its name and its code, made with a key of 32 random bytes the host
//! keeps beside the cache directory, not in it (`<cache dir>.key`:
//! `~/.cache/vd-cred-broker.key` by default; created mode 0600, and used
//! only if it is a regular file of the effective user's that nobody else
//! can read or write). A file without a valid tag is never deserialized:
//! an agent that can write into the cache directory (a preopen an embedder
//! gave it over the directory, or over one that holds it) cannot plant
//! code the next process runs natively, unless it can also read the key.
//! So never preopen, for any agent, the cache directory, its key, or a
//! directory that holds either (the user's home, `~/.cache`):
//! [`check_agent_preopen`] refuses such a directory, and the CLI's and the
//! test agents' stores call it for each one. Components named by a path
//! ([`load`]) are cached in the same directory, never beside the `.wasm`
//! (which an agent may well be able to write to).
//!
//! **Nobody else's.** On Unix a cache file is used only when nobody but the
//! effective user (or root) can have put it there:
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
//! ignored and the component compiled afresh. A [`crate::Host`]'s engine on
//! Linux x86-64 reads the file into a private mapping of its own, checks the
//! tag there and runs the code in place, where wasmtime would copy it into a
//! second mapping (`code_memory.rs`).
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
//! A cache that cannot be read or written, a key that cannot be had, or a
//! file that fails these checks, only means compiling in memory: loading
//! never fails because of it.

use std::ffi::{OsStr, OsString};
#[cfg(unix)]
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasmtime::component::Component;
use wasmtime::{Engine, Precompiled};

#[cfg(unix)]
pub(crate) use super::code_memory::CodeMemory;
#[cfg(unix)]
use super::code_memory::Mapping;

/// Off Unix no engine runs cached code in place: there is no such memory.
#[cfg(not(unix))]
pub(crate) enum CodeMemory {}

/// A component's digest, from which its cache file is named. The build
/// script works it out for the embedded components, so loading one hashes
/// only the engine's compatibility hash.
pub use super::digest::component_digest;

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

/// The cache file name for a component called `name` with these bytes under
/// `engine`: `<name>.<digest>.cwasm`, the digest the first 128 bits of a
/// BLAKE3 digest over the bytes' [`component_digest`] and the engine's
/// compatibility hash, so that no other component (an agent's, made to
/// collide) can have the credential's name, and with it the credential's
/// sealed file.
pub fn cache_file_name(engine: &Engine, name: &str, wasm_bytes: &[u8]) -> String {
    cache_file_name_for(engine, name, &component_digest(wasm_bytes))
}

/// [`cache_file_name`] from the component's [`component_digest`].
fn cache_file_name_for(engine: &Engine, name: &str, component: &[u8; 32]) -> String {
    let mut digest = blake3::Hasher::new();
    digest.update(component);
    engine
        .precompile_compatibility_hash()
        .hash(&mut HashInto(&mut digest));
    let digest = digest.finalize();
    let hex: String = digest.as_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{name}.{hex}.cwasm")
}

/// A [`Hasher`] that feeds what is hashed into a BLAKE3 digest (the
/// engine's compatibility hash is only `Hash`).
struct HashInto<'a>(&'a mut blake3::Hasher);

impl Hasher for HashInto<'_> {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        0
    }
}

/// Load `wasm`, from the per-user cache ([`user_cache_dir`]) when it holds
/// a match this host wrote, else compile it and cache it there.
pub fn load(engine: &Engine, wasm: &Path) -> Result<(Component, Source)> {
    load_file(engine, wasm, user_cache_dir().as_deref())
}

/// [`load`] with `cache_dir` as the cache (`None`: compile in memory).
/// Never beside the `.wasm`.
pub fn load_file(
    engine: &Engine,
    wasm: &Path,
    cache_dir: Option<&Path>,
) -> Result<(Component, Source)> {
    load_file_into(engine, wasm, cache_dir, None)
}

/// [`load_file`] into an engine whose code `code` publishes: a cache file
/// is read into a mapping of `code`'s and run in place.
pub(crate) fn load_file_into(
    engine: &Engine,
    wasm: &Path,
    cache_dir: Option<&Path>,
    code: Option<&CodeMemory>,
) -> Result<(Component, Source)> {
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let name = wasm.file_stem().unwrap_or_default().to_string_lossy();
    let digest = cache_dir.map(|_| component_digest(&bytes));
    load_digested(engine, &name, &bytes, digest.as_ref(), cache_dir, code)
        .with_context(|| format!("compiling {}", wasm.display()))
}

/// Load the component `bytes` (called `name`), from `cache_dir` when it
/// holds a match this host wrote, else compile it and write the cache there
/// (creating the directory, mode 0700 on Unix, and its key). No
/// `cache_dir`: compile in memory.
pub fn load_bytes(
    engine: &Engine,
    name: &str,
    bytes: &[u8],
    cache_dir: Option<&Path>,
) -> Result<(Component, Source)> {
    let digest = cache_dir.map(|_| component_digest(bytes));
    load_digested(engine, name, bytes, digest.as_ref(), cache_dir, None)
}

/// [`load_bytes`] with the bytes' [`component_digest`] already known (an
/// embedded component's, from the build script), into an engine whose code
/// `code` publishes, if it is one of [`CodeMemory`]'s.
pub(crate) fn load_digested(
    engine: &Engine,
    name: &str,
    bytes: &[u8],
    digest: Option<&[u8; 32]>,
    cache_dir: Option<&Path>,
    code: Option<&CodeMemory>,
) -> Result<(Component, Source)> {
    let cached = cache_dir.zip(digest).and_then(|(dir, digest)| {
        note_cache_dir(dir);
        create_private_dir(dir);
        let key = Key::beside(dir)?;
        Some((dir.join(cache_file_name_for(engine, name, digest)), key))
    });
    let cached = cached.as_ref().map(|(path, key)| (path.as_path(), key));
    load_cached(engine, bytes, cached, code).with_context(|| format!("compiling {name}"))
}

/// Where the key of the cache directory `dir` is kept: `<dir>.key`, beside
/// it (so that a preopen of the directory does not reach it).
pub fn key_path(dir: &Path) -> Option<PathBuf> {
    let mut name = dir.file_name()?.to_os_string();
    name.push(".key");
    Some(dir.with_file_name(name))
}

/// Refuse `host_dir` as a preopen for an agent if it is, holds, or lies
/// inside a precompiled cache (the per-user one, [`user_cache_dir`], and
/// every cache directory this process has loaded from or written to, a
/// [`crate::HostOptions::cache_dir`] or the Python package's included) or
/// its key: an agent that could write there could plant machine code the
/// host runs, and one that could read the key could make it pass as the
/// host's. On Unix the directories are also compared by device and inode,
/// so another name for one (a bind mount, a hard-linked path) is refused
/// too.
pub fn check_agent_preopen(host_dir: &Path) -> Result<()> {
    let in_use = CACHE_DIRS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for cache in user_cache_dir().into_iter().chain(in_use) {
        check_preopen_against(host_dir, &cache)?;
    }
    Ok(())
}

/// The cache directories this process has used, for [`check_agent_preopen`].
static CACHE_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn note_cache_dir(dir: &Path) {
    let mut dirs = CACHE_DIRS.lock().unwrap_or_else(|e| e.into_inner());
    if !dirs.iter().any(|d| d == dir) {
        dirs.push(dir.to_path_buf());
    }
}

/// [`check_agent_preopen`] against the cache directory `cache`.
pub fn check_preopen_against(host_dir: &Path, cache: &Path) -> Result<()> {
    let dir = resolved(host_dir);
    let guarded = [Some(cache.to_path_buf()), key_path(cache)];
    let by_name = guarded.iter().flatten().any(|guarded| {
        let guarded = resolved(guarded);
        dir.starts_with(&guarded) || guarded.starts_with(&dir)
    });
    if by_name || same_file_in_chain(&dir, &resolved(cache)) {
        anyhow::bail!(
            "{} may not be preopened for an agent: it holds or lies in the host's precompiled \
                 cache ({}) or its key, where an agent could plant machine code the host runs; \
                 give the agent a directory of its own",
            host_dir.display(),
            cache.display()
        );
    }
    Ok(())
}

/// Whether `dir` is (by device and inode) `cache` or one of its ancestors,
/// or `cache` is one of `dir`'s ancestors.
#[cfg(unix)]
fn same_file_in_chain(dir: &Path, cache: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let ancestors = |p: &Path| p.ancestors().filter_map(id).collect::<Vec<_>>();
    match (id(dir), id(cache)) {
        (Some(dir_id), cache_id) => {
            ancestors(cache).contains(&dir_id)
                || cache_id.is_some_and(|c| ancestors(dir).contains(&c))
        }
        (None, _) => false,
    }
}

#[cfg(not(unix))]
fn same_file_in_chain(_: &Path, _: &Path) -> bool {
    false
}

/// `path` made absolute, with links and `..` resolved as the system would
/// as far as it exists, and `..` taken lexically past that (the part not
/// yet created).
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut resolved = PathBuf::new();
    let mut exists = true;
    for part in absolute.components() {
        use std::path::Component;
        match part {
            Component::CurDir => {}
            Component::ParentDir if !exists => {
                resolved.pop();
            }
            _ => {
                resolved.push(part);
                if exists {
                    match std::fs::canonicalize(&resolved) {
                        Ok(real) => resolved = real,
                        Err(_) => exists = false,
                    }
                }
            }
        }
    }
    resolved
}

/// The key that authenticates a cache directory's files.
struct Key([u8; 32]);

/// How long a cache file's tag is.
const TAG_BYTES: usize = 32;

impl Key {
    /// The key of the cache directory `dir` ([`key_path`]), made if there
    /// is none yet; `None` if it cannot be had or trusted (then nothing is
    /// cached).
    fn beside(dir: &Path) -> Option<Key> {
        let path = key_path(dir)?;
        if let Some(key) = Key::read(&path) {
            return Some(key);
        }
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).ok()?;
        let parent = path.parent()?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".vd-cred-key.")
            .tempfile_in(parent)
            .ok()?;
        use std::io::Write;
        tmp.write_all(&bytes).ok()?;
        tmp.as_file().sync_all().ok()?;
        // Never over a key that is there (another process's, made since):
        // then that one is read.
        let _ = tmp.persist_noclobber(&path);
        Key::read(&path)
    }

    /// The key at `path`, if it is one only this user can read or write.
    fn read(path: &Path) -> Option<Key> {
        #[cfg(unix)]
        let bytes = {
            use std::io::Read;
            let file = unix::open_ours(rustix::fs::CWD, path, unix::PRIVATE)?;
            let mut bytes = Vec::new();
            file.take(64).read_to_end(&mut bytes).ok()?;
            bytes
        };
        #[cfg(not(unix))]
        let bytes = std::fs::read(path).ok()?;
        Some(Key(bytes.try_into().ok()?))
    }

    /// BLAKE3 in its keyed mode (a MAC) over the name and the code.
    fn mac(&self, name: &OsStr, code: &[u8]) -> blake3::Hash {
        let mut mac = blake3::Hasher::new_keyed(&self.0);
        mac.update(name.as_encoded_bytes());
        mac.update(&[0]);
        mac.update(code);
        mac.finalize()
    }

    /// `code` with its tag, as a cache file called `name` holds it.
    fn seal(&self, name: &OsStr, code: &[u8]) -> Vec<u8> {
        let tag = self.mac(name, code);
        let mut file = Vec::with_capacity(code.len() + TAG_BYTES);
        file.extend_from_slice(code);
        file.extend_from_slice(tag.as_bytes());
        file
    }

    /// How much of the cache file `name` holding `file` is code (the rest
    /// is its tag), if its tag is this key's (checked in constant time).
    fn open(&self, name: &OsStr, file: &[u8]) -> Option<usize> {
        let at = file.len().checked_sub(TAG_BYTES)?;
        let (code, tag) = file.split_at(at);
        let tag: [u8; TAG_BYTES] = tag.try_into().ok()?;
        // `blake3::Hash`'s equality is constant-time.
        (self.mac(name, code) == blake3::Hash::from_bytes(tag)).then_some(at)
    }
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
    cached: Option<(&Path, &Key)>,
    memory: Option<&CodeMemory>,
) -> Result<(Component, Source)> {
    let dir = cached.and_then(|(path, key)| Some((CacheDir::of(path)?, key)));
    if let Some((dir, key)) = &dir
        && let Some(file) = dir.read(memory.is_some())
        && let Some(len) = key.open(dir.name, file.bytes())
        && Engine::detect_precompiled(&file.bytes()[..len]) == Some(Precompiled::Component)
    {
        // SAFETY: deserializing trusts the contents. They carry a tag made
        // with this cache's key over their name and code, and only this
        // function makes such tags (the key is kept outside the cache
        // directory, readable by this user only), so this host wrote them
        // for this name; they were read from a regular file of the
        // effective user's, not writable by anyone else, in a directory of
        // the same kind (see `CacheDir`); the name binds them to this exact
        // component and engine configuration. They were read into memory
        // of this process's own, so later changes to the file cannot reach
        // the loaded code; a mapping is run in place only once adopted by
        // the engine's `CodeMemory`, which keeps it while any code of the
        // engine lives and nothing writes it but wasmtime before publishing.
        let component = match (file, memory) {
            #[cfg(unix)]
            (CacheFile::Mapped(mapping), Some(memory)) => unsafe {
                Component::deserialize_raw(engine, memory.adopt(mapping, len))
            },
            (file, _) => unsafe { Component::deserialize(engine, &file.bytes()[..len]) },
        };
        if let Ok(component) = component {
            return Ok((component, Source::Cached));
        }
    }
    let code = engine
        .precompile_component(bytes)
        .map_err(anyhow::Error::from)?;
    if let Some((dir, key)) = &dir {
        // Best effort: a read-only directory just means compiling every time.
        dir.write(&key.seal(dir.name, &code));
    }
    // SAFETY: `code` was produced just now by this engine.
    let component =
        unsafe { Component::deserialize(engine, &code) }.map_err(anyhow::Error::from)?;
    Ok((component, Source::Compiled))
}

/// A cache file's contents in memory: the heap's, or a mapping of the
/// host's own, to be run in place.
enum CacheFile {
    Heap(Vec<u8>),
    #[cfg(unix)]
    Mapped(Mapping),
}

impl CacheFile {
    fn bytes(&self) -> &[u8] {
        match self {
            CacheFile::Heap(bytes) => bytes,
            #[cfg(unix)]
            CacheFile::Mapped(mapping) => mapping.bytes(),
        }
    }
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
            (meta.is_dir() && unix::ours(&meta, unix::NOT_WRITABLE_BY_OTHERS)).then_some(Self {
                path,
                name,
                handle,
            })
        }
        #[cfg(not(unix))]
        Some(Self { path, name })
    }

    /// The cache file's contents, if it can be trusted (on Unix: a regular
    /// file, not a link, that belongs to the effective user and is not
    /// writable by group or others): into a mapping of its own if `mapped`
    /// (for an engine with a [`CodeMemory`]), else into the heap.
    #[cfg(unix)]
    fn read(&self, mapped: bool) -> Option<CacheFile> {
        use std::io::Read;
        let mut file = unix::open_ours(&self.handle, self.name, unix::NOT_WRITABLE_BY_OTHERS)?;
        if mapped {
            // The length from the handle read: a file that grows meanwhile
            // fails the check for its end below, one that shrinks the read.
            let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
            let mut mapping = Mapping::new(len)?;
            file.read_exact(mapping.bytes_mut()).ok()?;
            let mut more = [0u8; 1];
            return matches!(file.read(&mut more), Ok(0)).then_some(CacheFile::Mapped(mapping));
        }
        let mut code = Vec::new();
        file.read_to_end(&mut code).ok()?;
        Some(CacheFile::Heap(code))
    }

    /// The cache file's contents (no ownership check off Unix).
    #[cfg(not(unix))]
    fn read(&self, _mapped: bool) -> Option<CacheFile> {
        std::fs::read(self.path.join(self.name))
            .ok()
            .map(CacheFile::Heap)
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
    use std::fs::{File, Metadata};
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    use rustix::fs::{Mode, OFlags};

    /// Mode bits a cache file or directory may not have: writable by group
    /// or others.
    pub(super) const NOT_WRITABLE_BY_OTHERS: u32 = 0o022;
    /// Mode bits the key may not have: any access by group or others.
    pub(super) const PRIVATE: u32 = 0o077;

    /// Whether `meta` belongs to the effective user and has none of the
    /// mode bits `forbidden`: nobody else (but root) can have written or
    /// replaced it. As root, that is root's own files.
    pub(super) fn ours(meta: &Metadata, forbidden: u32) -> bool {
        meta.uid() == rustix::process::geteuid().as_raw() && meta.mode() & forbidden == 0
    }

    /// The regular file `name` in the directory `dir` (a handle, or
    /// `rustix::fs::CWD` for a path), opened for reading if it is
    /// [`ours`]. `NOFOLLOW`: a link at the name fails to open. `NONBLOCK`: a
    /// FIFO at the name cannot hang the open; it is then refused as not a
    /// regular file (the flag does not affect reading a regular file). The
    /// checks are on the handle returned, not on the name.
    pub(super) fn open_ours(
        dir: impl AsFd,
        name: impl rustix::path::Arg,
        forbidden: u32,
    ) -> Option<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let file = File::from(rustix::fs::openat(dir, name, flags, Mode::empty()).ok()?);
        let meta = file.metadata().ok()?;
        (meta.is_file() && ours(&meta, forbidden)).then_some(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_scripts_digest_of_each_embedded_component_is_its_own() {
        use crate::engine::host::Build;
        for build in [Build::P2, Build::P3] {
            let (bytes, _, digest) = build.embedded();
            assert_eq!(&component_digest(bytes), digest, "{build:?}");
        }
        let (p2, _, _) = Build::P2.embedded();
        assert_ne!(component_digest(p2), component_digest(&p2[1..]));
    }

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

    #[test]
    fn a_component_named_by_path_is_cached_in_the_cache_never_beside_it() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let (home, cache) = (dir.path().join("agents"), dir.path().join("cache"));
        std::fs::create_dir(&home).unwrap();
        let wasm = home.join("agent.wasm");
        std::fs::write(&wasm, wat_component()).unwrap();
        assert_eq!(
            load_file(&engine, &wasm, Some(&cache)).unwrap().1,
            Source::Compiled
        );
        assert_eq!(
            load_file(&engine, &wasm, Some(&cache)).unwrap().1,
            Source::Cached
        );
        let beside: Vec<_> = std::fs::read_dir(&home).unwrap().collect();
        assert_eq!(beside.len(), 1, "only the .wasm beside it");
        let name = cache_file_name(&engine, "agent", &wat_component());
        assert!(cache.join(name).is_file());
        // No cache: compiled in memory, nothing written.
        assert_eq!(load_file(&engine, &wasm, None).unwrap().1, Source::Compiled);
    }

    #[test]
    fn a_preopen_over_the_cache_or_its_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("home/.cache/vd-cred-broker");
        std::fs::create_dir_all(&cache).unwrap();
        let refused = |d: &Path| check_preopen_against(d, &cache).is_err();
        for d in [
            cache.clone(),
            cache.join("sub"),
            dir.path().join("home/.cache"),
            dir.path().join("home"),
            dir.path().to_path_buf(),
            // Spelled otherwise: `..`, and a directory not yet made.
            dir.path().join("home/.cache/x/../vd-cred-broker"),
            dir.path().join("home/.cache/vd-cred-broker/not/yet"),
        ] {
            assert!(refused(&d), "{}", d.display());
        }
        #[cfg(unix)]
        {
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(dir.path().join("home/.cache"), &link).unwrap();
            assert!(refused(&link), "a link to a directory above it");
        }
        let mine = dir.path().join("home/work");
        std::fs::create_dir_all(&mine).unwrap();
        assert!(!refused(&mine));
        assert!(!refused(&dir.path().join("home/.cache/other")));
        let why = check_preopen_against(&cache, &cache)
            .unwrap_err()
            .to_string();
        assert!(why.contains("plant machine code"), "{why}");
    }

    #[test]
    fn a_cache_directory_in_use_is_guarded_too() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("host-cache");
        assert!(check_agent_preopen(&cache).is_ok(), "not in use yet");
        load_bytes(&Engine::default(), "c", &wat_component(), Some(&cache)).unwrap();
        assert!(check_agent_preopen(&cache).is_err());
        assert!(
            check_agent_preopen(dir.path()).is_err(),
            "it holds the cache"
        );
        let other = tempfile::tempdir().unwrap();
        assert!(check_agent_preopen(other.path()).is_ok());
    }

    /// Another name for a directory (here a link, not resolved first; a
    /// bind mount is another) is the same directory by device and inode.
    #[cfg(unix)]
    #[test]
    fn another_name_for_the_cache_or_a_directory_above_it_is_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("a/b/cache");
        std::fs::create_dir_all(&cache).unwrap();
        let alias = dir.path().join("alias");
        std::os::unix::fs::symlink(dir.path().join("a"), &alias).unwrap();
        assert!(
            same_file_in_chain(&alias, &cache),
            "an ancestor, by another name"
        );
        let inside = cache.join("inside");
        std::fs::create_dir(&inside).unwrap();
        assert!(
            same_file_in_chain(&alias.join("b/cache/inside"), &cache),
            "inside it"
        );
        let beside = dir.path().join("beside");
        std::fs::create_dir(&beside).unwrap();
        assert!(!same_file_in_chain(&beside, &cache));
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

        /// A component and a cache for it: the engine (a [`crate::Host`]'s,
        /// which reads a cache file into a mapping to run in place where it
        /// can), the component, its
        /// cache file name, a cache directory (private, its key beside it in
        /// the temporary directory), and valid machine code for the component
        /// sealed with that key: a file holding it passes the tag check, so
        /// these tests see each other check on its own.
        struct Fixture {
            engine: Engine,
            memory: Option<std::sync::Arc<CodeMemory>>,
            wasm: Vec<u8>,
            name: String,
            sealed: Vec<u8>,
            code: Vec<u8>,
            cache: PathBuf,
            _dir: tempfile::TempDir,
        }

        fn fixture() -> Fixture {
            let options = crate::HostOptions::default();
            let (engine, memory) =
                crate::engine::host::host_engine(crate::Build::P2, &options).unwrap();
            let wasm = wat_component();
            let name = cache_file_name(&engine, "c", &wasm);
            let code = engine.precompile_component(&wasm).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let cache = dir.path().join("cache");
            create_private_dir(&cache);
            let key = Key::beside(&cache).unwrap();
            let sealed = key.seal(OsStr::new(&name), &code);
            Fixture {
                engine,
                memory,
                wasm,
                name,
                sealed,
                code,
                cache,
                _dir: dir,
            }
        }

        impl Fixture {
            fn source(&self) -> Source {
                let digest = component_digest(&self.wasm);
                let memory = self.memory.as_deref();
                load_digested(
                    &self.engine,
                    "c",
                    &self.wasm,
                    Some(&digest),
                    Some(&self.cache),
                    memory,
                )
                .unwrap()
                .1
            }

            fn plant(&self, bytes: &[u8], file_mode: u32) -> PathBuf {
                let planted = self.cache.join(&self.name);
                std::fs::write(&planted, bytes).unwrap();
                chmod(&planted, file_mode);
                planted
            }
        }

        #[test]
        fn a_created_cache_dir_is_private_and_holds_only_the_cache_file() {
            let f = fixture();
            let cache = f.cache.join("nested/cache");
            let source = load_bytes(&f.engine, "c", &f.wasm, Some(&cache)).unwrap().1;
            assert_eq!(source, Source::Compiled);
            assert_eq!(mode(&f.cache.join("nested")), 0o700);
            assert_eq!(mode(&cache), 0o700);
            assert_eq!(listing(&cache), BTreeSet::from([f.name.clone()]));
            assert_eq!(mode(&cache.join(&f.name)), 0o600);
            // Its key beside it, readable by this user only.
            assert_eq!(mode(&key_path(&cache).unwrap()), 0o600);
            let source = load_bytes(&f.engine, "c", &f.wasm, Some(&cache)).unwrap().1;
            assert_eq!(source, Source::Cached);
        }

        /// What an agent with a preopen over the cache can write: machine
        /// code for the component, without the host's tag (or with a tag of
        /// another key). Never loaded; replaced by the host's own file.
        #[test]
        fn machine_code_the_host_did_not_write_is_never_loaded() {
            let f = fixture();
            let planted = f.plant(&f.code, 0o600);
            assert_eq!(f.source(), Source::Compiled);
            assert_ne!(std::fs::read(&planted).unwrap(), f.code, "replaced");
            assert_eq!(f.source(), Source::Cached);

            let other = tempfile::tempdir().unwrap();
            let elsewhere = other.path().join("cache");
            create_private_dir(&elsewhere);
            let foreign = Key::beside(&elsewhere)
                .unwrap()
                .seal(OsStr::new(&f.name), &f.code);
            f.plant(&foreign, 0o600);
            assert_eq!(f.source(), Source::Compiled);
            // Sealed for another name (another component's file, moved).
            let key = Key::beside(&f.cache).unwrap();
            f.plant(&key.seal(OsStr::new("other.cwasm"), &f.code), 0o600);
            assert_eq!(f.source(), Source::Compiled);
            // One byte of the code changed, its tag kept.
            let mut changed = f.sealed.to_vec();
            changed[f.sealed.len() / 2] ^= 1;
            f.plant(&changed, 0o600);
            assert_eq!(f.source(), Source::Compiled);
            // Truncated.
            f.plant(&f.sealed[..f.sealed.len() - 1], 0o600);
            assert_eq!(f.source(), Source::Compiled);
            assert_eq!(f.source(), Source::Cached);
        }

        #[test]
        fn a_key_others_can_read_or_write_caches_nothing() {
            let f = fixture();
            let key = key_path(&f.cache).unwrap();
            for key_mode in [0o644, 0o640, 0o604, 0o622] {
                chmod(&key, key_mode);
                f.plant(&f.sealed, 0o600);
                assert_eq!(f.source(), Source::Compiled, "{key_mode:o}");
            }
            // A link at the key's name is not followed.
            let elsewhere = tempfile::tempdir().unwrap();
            let target = elsewhere.path().join("key");
            std::fs::copy(&key, &target).unwrap();
            chmod(&target, 0o600);
            std::fs::remove_file(&key).unwrap();
            symlink(&target, &key).unwrap();
            f.plant(&f.sealed, 0o600);
            assert_eq!(f.source(), Source::Compiled);
            assert_eq!(f.source(), Source::Compiled, "nothing cached meanwhile");
        }

        #[test]
        fn a_planted_file_in_a_directory_others_can_write_is_ignored() {
            let f = fixture();
            for dir_mode in [0o775, 0o777, 0o757, 0o1777] {
                chmod(&f.cache, 0o700);
                let planted = f.plant(&f.sealed, 0o600);
                // In a private directory the plant would load.
                assert_eq!(f.source(), Source::Cached);

                chmod(&f.cache, dir_mode);
                let before = std::fs::metadata(&planted).unwrap().ino();
                for _ in 0..2 {
                    assert_eq!(f.source(), Source::Compiled, "{dir_mode:o}");
                }
                // Nor is anything written there: the plant is the same file.
                assert_eq!(std::fs::metadata(&planted).unwrap().ino(), before);
                assert_eq!(listing(&f.cache), BTreeSet::from([f.name.clone()]));
            }
        }

        #[test]
        fn a_cache_file_others_can_write_is_ignored_and_replaced() {
            let f = fixture();
            for file_mode in [0o666, 0o620, 0o602] {
                let planted = f.plant(&f.sealed, file_mode);
                assert_eq!(f.source(), Source::Compiled);
                // Replaced by a file of our own, which then loads.
                assert_eq!(mode(&planted), 0o600);
                assert_eq!(listing(&f.cache), BTreeSet::from([f.name.clone()]));
                assert_eq!(f.source(), Source::Cached);
            }
        }

        #[test]
        fn a_link_at_the_cache_name_is_not_followed() {
            let f = fixture();
            let elsewhere = tempfile::tempdir().unwrap();
            let target = elsewhere.path().join("code.cwasm");
            std::fs::write(&target, &f.sealed).unwrap();
            chmod(&target, 0o600);
            let link = f.cache.join(&f.name);
            symlink(&target, &link).unwrap();

            assert_eq!(f.source(), Source::Compiled);
            // The link was replaced by a file (the rename does not follow
            // it), and its target is untouched.
            assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
            assert_eq!(std::fs::read(&target).unwrap(), f.sealed);
            assert_eq!(f.source(), Source::Cached);
        }

        #[test]
        fn a_link_at_the_old_temporary_name_is_not_followed() {
            let f = fixture();
            let elsewhere = tempfile::tempdir().unwrap();
            let victim = elsewhere.path().join("victim");
            std::fs::write(&victim, "victim").unwrap();
            // The name this module used to write through: predictable.
            let old_tmp = f
                .cache
                .join(&f.name)
                .with_extension(format!("tmp{}", std::process::id()));
            symlink(&victim, &old_tmp).unwrap();

            assert_eq!(f.source(), Source::Compiled);
            assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim");
            assert!(std::fs::symlink_metadata(&old_tmp).unwrap().is_symlink());
            let old_tmp = old_tmp.file_name().unwrap().to_str().unwrap().to_owned();
            assert_eq!(listing(&f.cache), BTreeSet::from([f.name.clone(), old_tmp]));
            assert_eq!(f.source(), Source::Cached);
        }

        /// Files and directories of another user (only root can make them, so
        /// elsewhere this test checks nothing).
        #[test]
        fn a_cache_file_or_directory_of_another_user_is_ignored() {
            let f = fixture();
            let other = rustix::process::geteuid().as_raw().wrapping_add(4242);
            let planted = f.plant(&f.sealed, 0o600);
            if std::os::unix::fs::chown(&planted, Some(other), None).is_err() {
                return; // not root
            }
            assert_eq!(f.source(), Source::Compiled);
            // Replaced by our own file.
            assert_eq!(f.source(), Source::Cached);

            std::fs::write(&planted, &f.sealed).unwrap();
            std::os::unix::fs::chown(&f.cache, Some(other), None).unwrap();
            let before = std::fs::metadata(&planted).unwrap().ino();
            assert_eq!(f.source(), Source::Compiled);
            assert_eq!(std::fs::metadata(&planted).unwrap().ino(), before);
            // A key of another user's: nothing cached.
            std::os::unix::fs::chown(&f.cache, Some(0), None).unwrap();
            let key = key_path(&f.cache).unwrap();
            std::os::unix::fs::chown(&key, Some(other), None).unwrap();
            f.plant(&f.sealed, 0o600);
            assert_eq!(f.source(), Source::Compiled);
        }
    }

    /// The smallest valid component, `(component)`: the binary preamble alone.
    fn wat_component() -> Vec<u8> {
        vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]
    }
}
