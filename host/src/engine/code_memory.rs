//! Machine code run where it was read: a cache file's code is read into a
//! private anonymous mapping of the host's own, its tag checked there, and
//! wasmtime runs it in place (`Component::deserialize_raw`) instead of
//! copying it into a second mapping. A new process loads the credential
//! about 0.5 ms sooner (the copy's fresh pages and their faults), which is
//! a tenth of what the Python package adds to a new process.
//!
//! **Threat model.** The mapping is private and anonymous: nothing outside
//! this process can write it, and the bytes wasmtime runs are the very bytes
//! whose tag was checked. When wasmtime publishes the code, the whole image
//! becomes read-only and its text read-and-execute, as wasmtime does with
//! the mappings it owns; nothing maps it writable again but wasmtime's own
//! unpublishing. Each mapping lives as long as [`CodeMemory`], which the
//! engine's configuration and every piece of code loaded into it hold: it
//! is unmapped only after the last component of the engine is gone.
//!
//! Linux on x86-64 only, where making memory executable needs no cache
//! maintenance: elsewhere there is no [`CodeMemory`] ([`CodeMemory::new`]),
//! and the cache file is read into the heap and wasmtime copies it, as
//! before.

use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use rustix::mm::{self, MapFlags, MprotectFlags, ProtFlags};
use wasmtime::CustomCodeMemory;

/// The engine-wide publisher of code, and the owner of the mappings code
/// was read into.
#[derive(Default)]
pub(crate) struct CodeMemory {
    mappings: Mutex<Vec<Mapping>>,
}

impl CodeMemory {
    /// A new one, for an engine's configuration
    /// (`Config::with_custom_code_memory`), where code can be read into a
    /// mapping and run in place: Linux on x86-64. Elsewhere `None`.
    pub(crate) fn new() -> Option<Arc<CodeMemory>> {
        cfg!(all(target_os = "linux", target_arch = "x86_64"))
            .then(|| Arc::new(CodeMemory::default()))
    }

    /// Keep `mapping` for as long as this lives, and the first `len` bytes
    /// of it, for `Component::deserialize_raw`.
    pub(crate) fn adopt(&self, mapping: Mapping, len: usize) -> NonNull<[u8]> {
        assert!(len <= mapping.len);
        let code = NonNull::slice_from_raw_parts(mapping.ptr, len);
        self.mappings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(mapping);
        code
    }
}

impl CustomCodeMemory for CodeMemory {
    fn required_alignment(&self) -> usize {
        rustix::param::page_size()
    }

    fn publish_executable(&self, ptr: *const u8, len: usize) -> wasmtime::Result<()> {
        // One of ours: the whole image read-only first (wasmtime does so
        // itself for the mappings it owns, before calling this).
        let mappings = self.mappings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mapping) = mappings.iter().find(|m| m.holds(ptr, len)) {
            // SAFETY: the mapping is ours and alive; wasmtime writes to
            // the image only before publishing it.
            unsafe {
                mm::mprotect(
                    mapping.ptr.as_ptr().cast(),
                    mapping.len,
                    MprotectFlags::READ,
                )
            }?;
        }
        // SAFETY: `ptr..ptr + len` is the text of an image wasmtime is
        // publishing, page-aligned (`required_alignment`); x86-64 needs no
        // instruction cache maintenance.
        unsafe {
            mm::mprotect(
                ptr as *mut _,
                len,
                MprotectFlags::READ | MprotectFlags::EXEC,
            )
        }?;
        Ok(())
    }

    fn unpublish_executable(&self, ptr: *const u8, len: usize) -> wasmtime::Result<()> {
        // SAFETY: wasmtime runs no code from `ptr..ptr + len` any more.
        unsafe {
            mm::mprotect(
                ptr as *mut _,
                len,
                MprotectFlags::READ | MprotectFlags::WRITE,
            )
        }?;
        Ok(())
    }
}

/// A private anonymous mapping, page-aligned, unmapped when dropped.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a mapping is plain memory; who may touch it when is `CodeMemory`'s
// and wasmtime's business.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `len` zeroed bytes, readable and writable (`None` for an empty one,
    /// or when the system has no memory to give).
    pub(crate) fn new(len: usize) -> Option<Mapping> {
        if len == 0 {
            return None;
        }
        // SAFETY: a new anonymous mapping, at an address the system picks.
        let ptr = unsafe {
            mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .ok()?;
        Some(Mapping {
            ptr: NonNull::new(ptr.cast())?,
            len,
        })
    }

    /// Its bytes, to fill.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes mapped readable and writable, not yet adopted.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Its bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes mapped readable.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn holds(&self, ptr: *const u8, len: usize) -> bool {
        let start = self.ptr.as_ptr() as usize;
        let at = ptr as usize;
        at >= start && at.saturating_add(len) <= start + self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped by `new`; once adopted, dropped only with the
        // `CodeMemory` that every loaded piece of code holds.
        let _ = unsafe { mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::host::{Build, Host, HostOptions, host_engine};
    use crate::engine::precompiled::{Source, load_digested};

    /// `start..end` as `/proc/self/maps` lists it: each piece's permissions.
    fn protections(start: usize, end: usize) -> Vec<String> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .filter_map(|line| {
                let (range, rest) = line.split_once(' ')?;
                let (a, b) = range.split_once('-')?;
                let (a, b) = (
                    usize::from_str_radix(a, 16).ok()?,
                    usize::from_str_radix(b, 16).ok()?,
                );
                (a < end && b > start).then(|| rest[..4].to_string())
            })
            .collect()
    }

    #[test]
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    fn cached_code_runs_where_it_was_read_never_writable() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let options = HostOptions {
            cache_dir: Some(cache.clone()),
            ..HostOptions::default()
        };
        let load = || {
            let (engine, code) = host_engine(Build::P2, &options).unwrap();
            let code = code.expect("run in place on Linux x86-64");
            let (bytes, name, digest) = Build::P2.embedded();
            let (component, source) = load_digested(
                &engine,
                name,
                bytes,
                Some(digest),
                Some(&cache),
                Some(&code),
            )
            .unwrap();
            (engine, component, source, code)
        };
        let (_, _, source, code) = load();
        assert_eq!(source, Source::Compiled);
        assert!(
            code.mappings.lock().unwrap().is_empty(),
            "compiled code is wasmtime's"
        );

        let (engine, component, source, code) = load();
        assert_eq!(source, Source::Cached);
        let (start, end) = {
            let mappings = code.mappings.lock().unwrap();
            assert_eq!(mappings.len(), 1, "the cache file's mapping, adopted");
            let start = mappings[0].ptr.as_ptr() as usize;
            (start, start + mappings[0].len)
        };
        let pieces = protections(start, end);
        assert!(pieces.iter().any(|p| p.starts_with("r-x")), "{pieces:?}");
        assert!(pieces.iter().all(|p| !p.contains('w')), "{pieces:?}");

        // The code runs: a call into the credential that fails in the guest.
        let host = Host::from_component(engine, component, source).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let refused = runtime.block_on(async {
            let mut sandbox = host.sandbox().build().await.unwrap();
            sandbox.get_token(&["https://nope"]).await.unwrap()
        });
        assert!(refused.is_err(), "{refused:?}");
        drop(host);
        assert_eq!(
            Arc::strong_count(&code),
            1,
            "released with the engine's last code"
        );
    }

    #[test]
    fn a_mapping_holds_only_ranges_inside_it() {
        let mapping = Mapping::new(3 * rustix::param::page_size()).unwrap();
        let start = mapping.bytes().as_ptr();
        assert!(mapping.holds(start, mapping.len));
        assert!(mapping.holds(start.wrapping_add(1), mapping.len - 1));
        assert!(!mapping.holds(start.wrapping_add(1), mapping.len));
        assert!(!mapping.holds(start.wrapping_sub(1), 2));
        assert!(Mapping::new(0).is_none());
    }
}
