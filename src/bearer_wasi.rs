//! The bearer file over wasi:filesystem, cheaply on every call (wasm only).
//!
//! The first read of a path goes through [`read_bearer`] (every check, every
//! message). After it, the file stays open and a later call costs two host
//! calls: `metadata-hash-at` on the path, and one `read` of the kept file.
//!
//! - The path's hash (wasmtime: device and inode) tells whether the path
//!   still names the file that is open: a replace-by-rename, a swap of a
//!   link (Kubernetes' `..data`) or a removal changes it or fails, and the
//!   file is read anew from the path.
//! - The read of the open file sees any rewrite in place (the same length,
//!   within the same second, a truncation), which no metadata hash can be
//!   trusted to reveal: wasmtime's leaves size and times out, and file times
//!   can stand still between two writes.

use std::cell::{Cell, RefCell};

use wasi::filesystem::preopens::get_directories;
use wasi::filesystem::types::{Descriptor, DescriptorFlags, OpenFlags, PathFlags};

use crate::bearer::{preopen_relative, read_bearer, unavailable};
use crate::{CredentialError, KeptFile, KeptFiles, MAX_BEARER_BYTES, Secret, parse_bearer};

/// A bearer file kept open, with where it was found.
type Kept = KeptFile<Descriptor>;

thread_local! {
    static KEPT: RefCell<KeptFiles<Kept>> = const { RefCell::new(KeptFiles::new()) };
}

/// Read and check the bearer at `path`, as [`read_bearer`] does.
pub fn read(path: &str) -> Result<Secret, CredentialError> {
    if let Some(kept) = KEPT.with_borrow(|all| all.get(path)) {
        if let Some(result) = read_kept(&kept, path) {
            return result;
        }
        KEPT.with_borrow_mut(|all| all.forget(&kept));
    }
    let bearer = read_bearer(path)?;
    if let Some(kept) = keep(path) {
        KEPT.with_borrow_mut(|all| all.keep(path, kept));
    }
    Ok(bearer)
}

/// The bearer through the kept file, or `None` when the path no longer names
/// it (the caller forgets the file and reads from the path).
fn read_kept(k: &Kept, path: &str) -> Option<Result<Secret, CredentialError>> {
    let same = k
        .dir
        .metadata_hash_at(PathFlags::SYMLINK_FOLLOW, &k.relative)
        .is_ok_and(|h| (h.lower, h.upper) == k.hash);
    let bytes = same.then(|| read_all(&k.file, k.len.get())).flatten()?;
    k.len.set(bytes.len() as u64);
    Some(parse_bearer(&bytes).map_err(|why| unavailable(path, &why)))
}

/// The whole file (at most one byte over the bearer limit, so an oversized
/// file is still told apart), usually in one `read`: a read of a regular file
/// that returns less than asked for has reached its end.
fn read_all(file: &Descriptor, hint: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut ask = (hint + 64).min(MAX_BEARER_BYTES + 1);
    loop {
        let (chunk, eof) = file.read(ask, bytes.len() as u64).ok()?;
        let short = (chunk.len() as u64) < ask;
        bytes.extend_from_slice(&chunk);
        if eof || short || bytes.len() as u64 > MAX_BEARER_BYTES {
            return Some(bytes);
        }
        ask = (MAX_BEARER_BYTES + 1 - bytes.len() as u64).min(ask * 4);
    }
}

/// Open `path` to keep, through the preopen that holds it; `None` when that
/// is not possible (the next call then reads from the path again).
fn keep(path: &str) -> Option<Kept> {
    let mut preopens = get_directories();
    let (i, relative) = preopen_relative(path, preopens.iter().map(|(_, guest)| guest.as_str()))?;
    let (dir, _) = preopens.swap_remove(i);
    let file = dir
        .open_at(
            PathFlags::SYMLINK_FOLLOW,
            &relative,
            OpenFlags::empty(),
            DescriptorFlags::READ,
        )
        .ok()?;
    // The identity of the file that is open, not of what the path names now:
    // if it was replaced since the read above, the next call sees a
    // difference and reads from the path.
    let hash = file.metadata_hash().ok()?;
    Some(Kept {
        dir,
        relative,
        file,
        hash: (hash.lower, hash.upper),
        len: Cell::new(0),
    })
}
