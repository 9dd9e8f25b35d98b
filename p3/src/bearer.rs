//! The bearer file over `wasi:filesystem@0.3.0`, read afresh on every call
//! with the checks and messages of the core's `read_bearer` (which goes
//! through `std::fs`: WASI 0.2 under `wasm32-wasip2`, nothing at all under
//! `wasm32-unknown-unknown`).
//!
//! The path is resolved as wasi-libc resolves it for `std::fs`: through the
//! preopen that holds it (the longest, by whole components), the rest handed
//! to the host, which follows symbolic links and `..` inside the preopen and
//! refuses a way out (`not-permitted`). The type is checked before the file
//! is opened, so a FIFO never blocks.
//!
//! After a first read the file stays open, as the WASI 0.2 build keeps it
//! (`src/bearer_wasi.rs`), and a later call costs `metadata-hash-at` on the
//! path (device and inode: a rename, a link swap or a removal changes it or
//! fails) and one read of the kept file from its start (which sees a rewrite
//! in place). Anything else (a changed hash, a failed read, content that
//! does not parse) drops the kept file and reads from the path again, with
//! every check and message of the first read. Calls running at once share
//! the kept file (the core's `KeptFiles`): its reads each start at offset 0.

use std::cell::{Cell, RefCell};

use vd_cred_broker::{
    BearerFileError, CredentialError, KeptFile, KeptFiles, MAX_BEARER_BYTES, Secret,
    bearer_file_error, parse_bearer,
};
use wasip3::filesystem::preopens::get_directories;
use wasip3::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, ErrorCode, OpenFlags, PathFlags,
};
use wasip3::wit_bindgen::StreamResult;

use crate::preopen::locate;

/// A bearer file kept open after a read, with where it was found.
type Kept = KeptFile<Descriptor>;

thread_local! {
    static KEPT: RefCell<KeptFiles<Kept>> = const { RefCell::new(KeptFiles::new()) };
}

/// Read and check the bearer at `path`, as the core's `read_bearer` does.
pub async fn read(path: &str) -> Result<Secret, CredentialError> {
    if let Some(kept) = KEPT.with_borrow(|all| all.get(path)) {
        if let Some(bearer) = read_kept(&kept).await {
            return Ok(bearer);
        }
        KEPT.with_borrow_mut(|all| all.forget(&kept));
    }
    read_path(path).await
}

/// The bearer through the kept file, or `None` when the path no longer names
/// it or anything about the read is off (the caller reads from the path).
async fn read_kept(kept: &Kept) -> Option<Secret> {
    let hash = kept
        .dir
        .metadata_hash_at(PathFlags::SYMLINK_FOLLOW, kept.relative.clone())
        .await
        .ok()?;
    if (hash.lower, hash.upper) != kept.hash {
        return None;
    }
    let bytes = read_all(&kept.file, kept.len.get()).await.ok()?;
    kept.len.set(bytes.len() as u64);
    parse_bearer(&bytes).ok()
}

/// Keep `file`, just read from `relative` in `dir`, open for `path`'s later
/// reads; nothing when its identity cannot be had.
async fn keep(path: &str, dir: Descriptor, relative: String, file: Descriptor, len: usize) {
    let Ok(hash) = file.metadata_hash().await else {
        return;
    };
    let kept = Kept {
        dir,
        relative,
        file,
        hash: (hash.lower, hash.upper),
        len: Cell::new(len as u64),
    };
    KEPT.with_borrow_mut(|all| all.keep(path, kept));
}

/// Read and check the bearer at `path` through its preopen, every check
/// made; keep the file open for the next call.
async fn read_path(path: &str) -> Result<Secret, CredentialError> {
    let fail = |why| bearer_file_error(path, why);
    let mut preopens = get_directories();
    let guests: Vec<&str> = preopens.iter().map(|(_, guest)| guest.as_str()).collect();
    let Some((i, relative)) = locate(path, &guests) else {
        // wasi-libc's answer for a path under no preopen: ENOENT.
        return Err(fail(BearerFileError::NotFound));
    };
    let (dir, _) = preopens.swap_remove(i);
    drop(preopens);

    // Check the type before opening: opening a FIFO for reading would block.
    let stat = dir
        .stat_at(PathFlags::SYMLINK_FOLLOW, relative.clone())
        .await
        .map_err(|e| fail(file_error(e)))?;
    match stat.type_ {
        DescriptorType::RegularFile => {}
        DescriptorType::Directory => return Err(fail(BearerFileError::IsDirectory)),
        _ => return Err(fail(BearerFileError::NotRegularFile)),
    }
    if stat.size > MAX_BEARER_BYTES {
        return Err(fail(BearerFileError::TooLarge(stat.size)));
    }
    let file = dir
        .open_at(
            PathFlags::SYMLINK_FOLLOW,
            relative.clone(),
            OpenFlags::empty(),
            DescriptorFlags::READ,
        )
        .await
        .map_err(|e| fail(file_error(e)))?;
    let bytes = read_all(&file, stat.size)
        .await
        .map_err(|e| fail(file_error(e)))?;
    let bearer = parse_bearer(&bytes).map_err(|why| fail(BearerFileError::Content(why)))?;
    keep(path, dir, relative, file, bytes.len()).await;
    Ok(bearer)
}

/// A filesystem error as the core's reader classifies the same `errno`
/// (wasi-libc maps `no-entry` to `ENOENT`, `not-permitted` to `EPERM`, ...).
fn file_error(code: ErrorCode) -> BearerFileError {
    match code {
        ErrorCode::NoEntry => BearerFileError::NotFound,
        // What a WASI host answers for a way out of the preopen.
        ErrorCode::NotPermitted => BearerFileError::OutsidePreopens,
        ErrorCode::Access => BearerFileError::PermissionDenied(words(&code)),
        other => BearerFileError::Io(words(&other)),
    }
}

/// The filesystem's words for `code` (its WIT documentation's, as POSIX's
/// `strerror` says them).
fn words(code: &ErrorCode) -> String {
    let text = match code {
        ErrorCode::Access => "permission denied",
        ErrorCode::Already => "connection already in progress",
        ErrorCode::BadDescriptor => "bad descriptor",
        ErrorCode::Busy => "device or resource busy",
        ErrorCode::Deadlock => "resource deadlock would occur",
        ErrorCode::Quota => "storage quota exceeded",
        ErrorCode::Exist => "file exists",
        ErrorCode::FileTooLarge => "file too large",
        ErrorCode::IllegalByteSequence => "illegal byte sequence",
        ErrorCode::InProgress => "operation in progress",
        ErrorCode::Interrupted => "interrupted",
        ErrorCode::Invalid => "invalid argument",
        ErrorCode::Io => "I/O error",
        ErrorCode::IsDirectory => "is a directory",
        ErrorCode::Loop => "too many levels of symbolic links",
        ErrorCode::TooManyLinks => "too many links",
        ErrorCode::MessageSize => "message too large",
        ErrorCode::NameTooLong => "file name too long",
        ErrorCode::NoDevice => "no such device",
        ErrorCode::NoEntry => "no such file or directory",
        ErrorCode::NoLock => "no locks available",
        ErrorCode::InsufficientMemory => "not enough memory",
        ErrorCode::InsufficientSpace => "no space left on device",
        ErrorCode::NotDirectory => "not a directory",
        ErrorCode::NotEmpty => "directory not empty",
        ErrorCode::NotRecoverable => "state not recoverable",
        ErrorCode::Unsupported => "not supported",
        ErrorCode::NoTty => "inappropriate I/O control operation",
        ErrorCode::NoSuchDevice => "no such device or address",
        ErrorCode::Overflow => "value too large for its data type",
        ErrorCode::NotPermitted => "operation not permitted",
        ErrorCode::Pipe => "broken pipe",
        ErrorCode::ReadOnly => "read-only file system",
        ErrorCode::InvalidSeek => "invalid seek",
        ErrorCode::TextFileBusy => "text file busy",
        ErrorCode::CrossDevice => "cross-device link",
        ErrorCode::Other(Some(why)) => return why.clone(),
        ErrorCode::Other(None) => "unspecified error",
    };
    text.to_string()
}

/// The whole file, or its first `MAX_BEARER_BYTES + 1` bytes (enough for
/// [`parse_bearer`] to tell an oversized file apart). `size` is a hint.
async fn read_all(file: &Descriptor, size: u64) -> Result<Vec<u8>, ErrorCode> {
    let cap = MAX_BEARER_BYTES as usize + 1;
    let (mut stream, done) = file.read_via_stream(0);
    let mut bytes = Vec::with_capacity((size as usize + 64).min(cap));
    loop {
        if bytes.len() == bytes.capacity() {
            let room = cap - bytes.len();
            bytes.reserve_exact(room.min(bytes.len().max(256)));
        }
        let (result, buf) = stream.read(bytes).await;
        bytes = buf;
        if bytes.len() >= cap {
            return Ok(bytes);
        }
        match result {
            StreamResult::Complete(_) => {}
            StreamResult::Dropped | StreamResult::Cancelled => break,
        }
    }
    drop(stream);
    // The end of the stream is the end of the file only if this says so.
    done.await.map(|()| bytes)
}
