//! Which preopened directory holds a path (target-independent, so that it
//! is tested natively).

use vd_cred_broker::preopen_relative;

/// Which preopen (by index) holds `path`, and the path relative to it.
///
/// The usual case is the core's [`preopen_relative`]. What it leaves to a
/// full read is resolved here as wasi-libc resolves it for `std::fs`: the
/// longest preopen holding the path, by whole components, and the rest as
/// it is (the preopen itself is `.`; a `.` or `..` is left to the host,
/// which refuses a way out of the preopen). A relative path is looked for
/// under a relative preopen (`.`), else under the root, as wasi-libc's
/// working directory is `/`.
pub fn locate(path: &str, guests: &[&str]) -> Option<(usize, String)> {
    if let Some(found) = preopen_relative(path, guests.iter().copied()) {
        return Some(found);
    }
    let names: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let longest = |absolute: bool| {
        let mut best: Option<(usize, usize)> = None;
        for (i, guest) in guests.iter().enumerate() {
            if guest.starts_with('/') != absolute {
                continue;
            }
            let prefix: Vec<&str> = guest
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect();
            if names.starts_with(&prefix) && best.is_none_or(|(_, len)| prefix.len() > len) {
                best = Some((i, prefix.len()));
            }
        }
        best
    };
    let (i, skip) = if path.starts_with('/') {
        longest(true)?
    } else {
        longest(false).or_else(|| longest(true))?
    };
    let rest = names[skip..].join("/");
    Some((i, if rest.is_empty() { ".".into() } else { rest }))
}

#[cfg(test)]
mod tests {
    use super::locate;

    fn at(i: usize, rest: &str) -> Option<(usize, String)> {
        Some((i, rest.to_string()))
    }

    #[test]
    fn clean_paths_are_the_cores() {
        let guests = ["/", "/run", "/run/vd"];
        assert_eq!(locate("/run/vd/credential", &guests), at(2, "credential"));
        assert_eq!(locate("/run/vd//a/b", &guests), at(2, "a/b"));
        assert_eq!(
            locate("/run/vdx/credential", &guests),
            at(1, "vdx/credential")
        );
        assert_eq!(locate("/run/vd/credential", &["/tmp"]), None);
        assert_eq!(locate("/etc/passwd", &["/run/vd"]), None);
    }

    #[test]
    fn what_the_core_leaves_goes_to_the_host() {
        let guests = ["/", "/run", "/run/vd/"];
        assert_eq!(locate("/run/vd", &guests), at(2, "."));
        assert_eq!(locate("/run/vd/", &guests), at(2, "."));
        assert_eq!(
            locate("/run/vd/../etc/passwd", &guests),
            at(2, "../etc/passwd")
        );
        assert_eq!(
            locate("/run/vd/./credential", &guests),
            at(2, "./credential")
        );
        assert_eq!(locate("/run/vd/..", &["/run/vd"]), at(0, ".."));
    }

    #[test]
    fn relative_paths_use_a_relative_preopen_else_the_root() {
        assert_eq!(locate("credential", &["/run/vd", "/"]), at(1, "credential"));
        assert_eq!(locate("credential", &["/", "."]), at(1, "credential"));
        assert_eq!(locate("vd/credential", &["./vd", "."]), at(0, "credential"));
        assert_eq!(locate("credential", &["/run/vd"]), None);
    }
}
