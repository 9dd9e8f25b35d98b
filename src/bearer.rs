//! Reading and checking the intent bearer file.
//!
//! The file is read afresh on every call (Studio rotates it). Through `std::fs`
//! this is wasi:filesystem in the component and the real filesystem natively.

use std::cell::Cell;
use std::io::{ErrorKind, Read};
use std::rc::Rc;

use crate::{CredentialError, Secret};

/// `EPERM`, which a WASI host returns for a path that leaves every preopened
/// directory (wasi-libc's number for it; Linux's natively).
const EPERM: i32 = if cfg!(target_os = "wasi") { 63 } else { 1 };

/// Larger bearer files are refused unread.
pub const MAX_BEARER_BYTES: u64 = 64 * 1024;

/// Read the bearer from `path` and check it with [`parse_bearer`].
///
/// A missing file, a directory, a FIFO or other special file, a file outside
/// the component's preopened directories and an unreadable file each get
/// their own `bearer-unavailable` message; none of them blocks.
pub fn read_bearer(path: &str) -> Result<Secret, CredentialError> {
    let io = |e: std::io::Error| {
        let why = match e.kind() {
            ErrorKind::NotFound => BearerFileError::NotFound,
            ErrorKind::PermissionDenied if e.raw_os_error() == Some(EPERM) => {
                BearerFileError::OutsidePreopens
            }
            ErrorKind::PermissionDenied => BearerFileError::PermissionDenied(e.to_string()),
            _ => BearerFileError::Io(e.to_string()),
        };
        bearer_file_error(path, why)
    };
    // Check the type before opening: opening a FIFO for reading would block.
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_dir() {
        return Err(bearer_file_error(path, BearerFileError::IsDirectory));
    }
    if !meta.is_file() {
        return Err(bearer_file_error(path, BearerFileError::NotRegularFile));
    }
    if meta.len() > MAX_BEARER_BYTES {
        return Err(bearer_file_error(
            path,
            BearerFileError::TooLarge(meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_BEARER_BYTES + 1).read_to_end(&mut bytes))
        .map_err(io)?;
    parse_bearer(&bytes).map_err(|why| unavailable(path, &why))
}

/// Why a bearer file could not be read, as a filesystem reports it: each
/// build's reader maps its filesystem's errors to these, so that every
/// build says the same thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BearerFileError {
    /// The path does not exist (or is outside every preopened directory).
    NotFound,
    /// The path leads out of the preopened directories (`..`, a link).
    OutsidePreopens,
    /// Reading was refused; the filesystem's words.
    PermissionDenied(String),
    /// The path is a directory.
    IsDirectory,
    /// A FIFO, socket or device.
    NotRegularFile,
    /// The file's length, over [`MAX_BEARER_BYTES`].
    TooLarge(u64),
    /// Any other failure; the filesystem's words.
    Io(String),
    /// The content is not a usable bearer: [`parse_bearer`]'s reason.
    Content(String),
}

/// The `bearer-unavailable` error for the file at `path`, saying what to do.
pub fn bearer_file_error(path: &str, why: BearerFileError) -> CredentialError {
    let why = match why {
        BearerFileError::NotFound => {
            "does not exist, or is outside the directories the host shares with the component: \
             is the Studio intent session active, and is its directory preopened?"
                .to_string()
        }
        BearerFileError::OutsidePreopens => {
            "leads outside the directories the host shares with the component (a `..` or a \
             symbolic link out of the preopened directory), so the sandbox refused it: point \
             VD_CREDENTIAL_FILE at the link's target itself, or have the host share the \
             target's directory"
                .to_string()
        }
        BearerFileError::PermissionDenied(e) => {
            format!("cannot be read (permission denied: {e}): is the Studio intent session active?")
        }
        BearerFileError::IsDirectory => {
            "is a directory: point it at the bearer file itself".to_string()
        }
        BearerFileError::NotRegularFile => {
            "is not a regular file (a FIFO, socket or device?)".to_string()
        }
        BearerFileError::TooLarge(len) => format!(
            "is {len} bytes, more than the {MAX_BEARER_BYTES} a bearer can be: is it the right file?"
        ),
        BearerFileError::Io(e) => format!(
            "cannot be read ({e}): is the Studio intent session active, and is its directory \
             preopened for the component?"
        ),
        BearerFileError::Content(why) => why,
    };
    unavailable(path, &why)
}

/// The `bearer-unavailable` error for the file at `path`, `why` completing
/// the sentence.
pub(crate) fn unavailable(path: &str, why: &str) -> CredentialError {
    CredentialError::BearerUnavailable(format!(
        "the bearer file {path:?} (VD_CREDENTIAL_FILE) {why}"
    ))
}

/// Check a bearer file's content: at most [`MAX_BEARER_BYTES`], UTF-8,
/// surrounding whitespace trimmed, non-empty, and usable as an HTTP header
/// value. The error says what is wrong without echoing the content.
pub fn parse_bearer(bytes: &[u8]) -> Result<Secret, String> {
    if bytes.len() as u64 > MAX_BEARER_BYTES {
        return Err(format!(
            "is larger than {MAX_BEARER_BYTES} bytes: is it the right file?"
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "is not UTF-8 text: is it the right file?".to_string())?;
    let bearer = text.trim();
    if bearer.is_empty() {
        return Err(
            "is empty: the Studio intent session has not written a bearer yet, or has ended".into(),
        );
    }
    if bearer.chars().any(|c| c.is_control() && c != '\t') {
        return Err(
            "holds control characters (a line break inside the bearer?), so it cannot be sent \
             as an HTTP header: is it the right file?"
                .into(),
        );
    }
    Ok(Secret::new(bearer.to_string()))
}

/// A bearer file a build's reader keeps open after reading it, with where it
/// was found (`D`: the build's `wasi:filesystem` descriptor). A later call
/// reads it again only while the path's `metadata-hash-at` still matches
/// [`hash`](Self::hash).
pub struct KeptFile<D> {
    /// The preopen that holds the path.
    pub dir: D,
    /// The path, relative to [`dir`](Self::dir).
    pub relative: String,
    /// The open file.
    pub file: D,
    /// The open file's identity, as its `metadata-hash` reported it.
    pub hash: (u64, u64),
    /// The length read last time, to size the next read.
    pub len: Cell<u64>,
}

/// At most this many bearer paths are kept open by [`KeptFiles`].
pub const MAX_KEPT_FILES: usize = 8;

/// The bearer files a build's reader keeps open between calls, by path
/// (each build's `T` holds its own descriptors): one per path, at most
/// [`MAX_KEPT_FILES`], the oldest dropped first. Handed out as [`Rc`]s, so
/// that calls running at once (the WASI 0.3 build) read through the same
/// file, and one found stale is forgotten by identity, never a newer one
/// kept for the same path meanwhile.
pub struct KeptFiles<T> {
    kept: Vec<(String, Rc<T>)>,
}

impl<T> KeptFiles<T> {
    /// None kept.
    pub const fn new() -> Self {
        KeptFiles { kept: Vec::new() }
    }

    /// The file kept for `path`.
    pub fn get(&self, path: &str) -> Option<Rc<T>> {
        self.kept
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, file)| file.clone())
    }

    /// Keep `file` for `path`, unless one is kept for it already (a call
    /// that ran beside this one kept it first).
    pub fn keep(&mut self, path: &str, file: T) {
        if self.kept.iter().any(|(p, _)| p == path) {
            return;
        }
        if self.kept.len() >= MAX_KEPT_FILES {
            self.kept.remove(0);
        }
        self.kept.push((path.to_string(), Rc::new(file)));
    }

    /// Forget `file` (the path no longer names it, or its read failed).
    pub fn forget(&mut self, file: &Rc<T>) {
        self.kept.retain(|(_, kept)| !Rc::ptr_eq(kept, file));
    }
}

impl<T> Default for KeptFiles<T> {
    fn default() -> Self {
        KeptFiles::new()
    }
}

/// Which of the `preopens` (guest paths) holds the absolute `path`, and the
/// path relative to it: the longest matching preopen, compared by whole
/// components. `None` for a relative path, no match, or a `..` or `.`
/// component in the rest (left to the full read, which explains it).
pub fn preopen_relative<'a>(
    path: &str,
    preopens: impl IntoIterator<Item = &'a str>,
) -> Option<(usize, String)> {
    if !path.starts_with('/') {
        return None;
    }
    let mut best: Option<(usize, usize, &str)> = None;
    for (i, guest) in preopens.into_iter().enumerate() {
        let guest = guest.trim_end_matches('/');
        let Some(rest) = path.strip_prefix(guest) else {
            continue;
        };
        if !(rest.is_empty() || rest.starts_with('/')) {
            continue;
        }
        if best.is_none_or(|(_, len, _)| guest.len() > len) {
            best = Some((i, guest.len(), rest));
        }
    }
    let (i, _, rest) = best?;
    // The components joined by `/` (by hand: `[&str]::join` would be one
    // more copy of the join code in the component).
    let mut relative = String::new();
    for c in rest.split('/').filter(|c| !c.is_empty()) {
        if c == ".." || c == "." {
            return None;
        }
        if !relative.is_empty() {
            relative.push('/');
        }
        relative.push_str(c);
    }
    if relative.is_empty() {
        return None;
    }
    Some((i, relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_files_are_one_per_path_bounded_and_forgotten_by_identity() {
        let mut kept = KeptFiles::new();
        kept.keep("/run/vd/a", 1);
        kept.keep("/run/vd/a", 2); // kept already: the first stays
        assert_eq!(kept.get("/run/vd/a").as_deref(), Some(&1));
        let stale = kept.get("/run/vd/a").unwrap();
        kept.forget(&stale);
        assert_eq!(kept.get("/run/vd/a"), None);
        kept.keep("/run/vd/a", 3);
        kept.forget(&stale); // not the one kept now
        assert_eq!(kept.get("/run/vd/a").as_deref(), Some(&3));
        for i in 0..MAX_KEPT_FILES {
            kept.keep(&format!("/run/vd/{i}"), 10 + i);
        }
        assert_eq!(kept.get("/run/vd/a"), None, "the oldest went first");
        assert_eq!(kept.get("/run/vd/0").as_deref(), Some(&10));
        assert_eq!(kept.kept.len(), MAX_KEPT_FILES);
    }

    #[test]
    fn paths_are_matched_to_the_longest_preopen_by_component() {
        let preopens = ["/run", "/run/vd", "/", "/run/vdx/"];
        let m = |p: &str| preopen_relative(p, preopens);
        assert_eq!(m("/run/vd/credential"), Some((1, "credential".into())));
        assert_eq!(m("/run/vd//a/./b"), None);
        assert_eq!(m("/run/vd/a//b"), Some((1, "a/b".into())));
        assert_eq!(m("/run/vdx/credential"), Some((3, "credential".into())));
        assert_eq!(m("/run/vd/../etc/passwd"), None);
        assert_eq!(m("/run/other"), Some((0, "other".into())));
        assert_eq!(m("/etc/passwd"), Some((2, "etc/passwd".into())));
        assert_eq!(m("/run/vd"), None, "the directory itself");
        assert_eq!(m("credential"), None, "relative");
        assert_eq!(preopen_relative("/run/vd/credential", ["/tmp"]), None);
    }

    #[test]
    fn trims_and_accepts() {
        assert_eq!(
            parse_bearer(b"vd_iat_abc\n").unwrap().expose(),
            "vd_iat_abc"
        );
        assert_eq!(
            parse_bearer(b"  \tvd_iat_abc \r\n").unwrap().expose(),
            "vd_iat_abc"
        );
    }

    #[test]
    fn empty_bad_utf8_controls_and_size_are_told_apart() {
        let empty = parse_bearer(b" \n").unwrap_err();
        assert!(empty.contains("empty"));
        let utf8 = parse_bearer(b"vd_iat_\xff").unwrap_err();
        assert!(utf8.contains("UTF-8"));
        let ctl = parse_bearer(b"vd_iat_a\nb").unwrap_err();
        assert!(ctl.contains("control"));
        assert!(!ctl.contains("vd_iat"));
        let big = vec![b'a'; MAX_BEARER_BYTES as usize + 1];
        assert!(parse_bearer(&big).unwrap_err().contains("larger"));
    }

    #[test]
    fn file_errors_are_distinct_and_never_echo() {
        let dir = std::env::temp_dir().join(format!("vd-bearer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("credential");
        let path = file.to_str().unwrap();

        let missing = read_bearer(path).unwrap_err();
        assert!(
            matches!(missing, CredentialError::BearerUnavailable(ref m) if m.contains("does not exist"))
        );

        std::fs::write(&file, "").unwrap();
        let empty = read_bearer(path).unwrap_err();
        assert!(
            matches!(empty, CredentialError::BearerUnavailable(ref m) if m.contains("is empty"))
        );

        let as_dir = read_bearer(dir.to_str().unwrap()).unwrap_err();
        assert!(
            matches!(as_dir, CredentialError::BearerUnavailable(ref m) if m.contains("directory"))
        );

        std::fs::write(&file, "vd_iat_secret\n").unwrap();
        assert_eq!(read_bearer(path).unwrap().expose(), "vd_iat_secret");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
