//! The sandbox a process builds from its own environment, the way the
//! original credential finds its inputs: `vd-cred get-token` and the Python
//! package both use it.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::engine::Host;
use crate::outbound::TrustedRoots;
use crate::outbound::broker_only::BrokerOnly;
use crate::outbound::proxy::{ENV_PROXY_VARS, Proxies};
use crate::sandboxes::sandbox::SandboxBuilder;

/// The environment variables naming a PEM file of CA certificates to trust
/// for an https broker, on top of the public web roots: OpenSSL's and
/// Python's `ssl`'s, and the two `requests` (so the original credential)
/// reads. Here they add to the public roots, never replace them.
pub const ENV_CA_FILES: [&str; 3] = ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"];

/// Where the runtime-access helper listens unless `VD_RUNTIME_ACCESS_SOCKET` says otherwise.
pub const DEFAULT_RUNTIME_ACCESS_SOCKET: &str = "/run/vd-access/program.sock";
/// The environment variable naming the helper's socket.
pub const ENV_RUNTIME_ACCESS_SOCKET: &str = "VD_RUNTIME_ACCESS_SOCKET";

/// The helper's socket, if it exists: `VD_RUNTIME_ACCESS_SOCKET` (an empty
/// value means the default), else the default path.
pub fn runtime_access_socket(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let path = env(ENV_RUNTIME_ACCESS_SOCKET)
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_RUNTIME_ACCESS_SOCKET.into());
    let path = PathBuf::from(path);
    path.exists().then_some(path)
}

/// Every environment variable [`Setup::from_env`] reads: a host that reads
/// the environment itself (the Python package reads `os.environ`, as the
/// original does) passes these on.
pub const ENV_VARS: [&str; 17] = [
    vd_cred_broker::ENV_BROKER_URL,
    vd_cred_broker::ENV_CREDENTIAL_FILE,
    vd_cred_broker::ENV_LANE,
    vd_cred_broker::ENV_CONFIGURATION_REVISION,
    ENV_RUNTIME_ACCESS_SOCKET,
    ENV_CA_FILES[0],
    ENV_CA_FILES[1],
    ENV_CA_FILES[2],
    ENV_PROXY_VARS[0],
    ENV_PROXY_VARS[1],
    ENV_PROXY_VARS[2],
    ENV_PROXY_VARS[3],
    ENV_PROXY_VARS[4],
    ENV_PROXY_VARS[5],
    ENV_PROXY_VARS[6],
    ENV_PROXY_VARS[7],
    ENV_PROXY_VARS[8],
];

/// The credential's inputs as a process sees them, before the component
/// checks them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Setup {
    /// `VD_CREDENTIAL_BROKER_URL`.
    pub broker_url: Option<String>,
    /// `VD_CREDENTIAL_FILE`, made absolute against the working directory (as
    /// the original opens it): the guest sees the file at this same path.
    pub credential_file: Option<String>,
    /// `VD_CREDENTIAL_LANE`.
    pub lane: Option<String>,
    /// `VD_CREDENTIAL_CONFIGURATION_REVISION`, as written.
    pub configuration_revision: Option<String>,
    /// The runtime-access helper's socket when it exists: helper mode.
    pub runtime_access_socket: Option<PathBuf>,
    /// Extra CA certificates for an https broker: each of [`ENV_CA_FILES`]
    /// that is set, with its variable.
    pub ca_files: Vec<(&'static str, PathBuf)>,
    /// The HTTP proxies for the broker, from `HTTPS_PROXY`, `HTTP_PROXY`,
    /// `ALL_PROXY` and `NO_PROXY` (either case), read as `requests` reads
    /// them ([`crate::proxy`]).
    pub proxies: Proxies,
}

/// `path` made absolute against the working directory, without resolving
/// links (a bare file name included, as Python's `open` takes it).
pub fn absolute_path(path: &str) -> String {
    std::path::absolute(path)
        .ok()
        .and_then(|p| p.to_str().map(str::to_string))
        .unwrap_or_else(|| path.to_string())
}

impl Setup {
    /// Read the inputs from `env` (the process's own environment in the CLI).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Setup {
        Setup {
            broker_url: env(vd_cred_broker::ENV_BROKER_URL),
            credential_file: env(vd_cred_broker::ENV_CREDENTIAL_FILE).map(|f| match f.is_empty() {
                true => f,
                false => absolute_path(&f),
            }),
            lane: env(vd_cred_broker::ENV_LANE),
            configuration_revision: env(vd_cred_broker::ENV_CONFIGURATION_REVISION),
            runtime_access_socket: runtime_access_socket(&env),
            ca_files: ENV_CA_FILES
                .into_iter()
                .filter_map(|var| Some((var, PathBuf::from(env(var).filter(|f| !f.is_empty())?))))
                .collect(),
            proxies: Proxies::from_env(&env),
        }
    }

    /// Where the bearer file is: the host directory to share read-only, and
    /// the path the component is given (under that same path in the guest).
    ///
    /// Normally the file's own directory and the path as written, so Studio's
    /// rotations (a rewrite, a rename into the directory, a swap of a link
    /// inside it such as Kubernetes' `credential -> ..data/credential`) are
    /// all seen on the next call. When the path is a symbolic link whose
    /// target is outside that directory (an absolute link, or `..` out of
    /// it), the sandbox could not follow it: then the target's directory is
    /// shared instead and the component is given the resolved path. The link
    /// is resolved once, here: rewrites and renames of the target file are
    /// still seen, but a later swap of the link itself to another directory
    /// is not (build a new sandbox, or in Python a new credential).
    pub fn bearer_location(&self) -> Option<(PathBuf, String)> {
        let file = Path::new(self.credential_file.as_deref()?);
        let dir = file.parent().filter(|dir| dir.is_dir())?;
        if let (Ok(target), Ok(real_dir)) = (file.canonicalize(), dir.canonicalize())
            && !target.starts_with(&real_dir)
            && let Some(target_dir) = target.parent()
            && let Some(guest) = target.to_str()
        {
            return Some((target_dir.to_path_buf(), guest.to_string()));
        }
        Some((dir.to_path_buf(), file.to_str()?.to_string()))
    }

    /// The roots an https broker is verified against: the public web roots,
    /// plus the certificates in each of [`ENV_CA_FILES`] that is set. The
    /// files are read when the first https connection needs them, each file
    /// once however many of the variables name it; a missing or unusable one
    /// fails that connection with a message naming the variable and the file.
    pub fn trusted_roots(&self) -> TrustedRoots {
        let mut roots = TrustedRoots::public();
        for (var, file) in &self.ca_files {
            roots.add_pem_file_on_use(file, *var);
        }
        roots
    }

    /// A sandbox for these inputs:
    ///
    /// - **helper mode** when the runtime-access socket exists: requests to
    ///   the helper origin go over the socket; no directory is preopened and
    ///   no bearer path or broker URL is passed in;
    /// - **broker mode** otherwise: the broker URL, bearer file, lane and
    ///   revision are passed in as their variables, the bearer file's
    ///   directory is preopened read-only at the same path, and HTTP is
    ///   allowed only to the broker's origin (verified against
    ///   [`Setup::trusted_roots`] when https), through [`Setup::proxies`]
    ///   when they say so. Missing or bad values are
    ///   left to the component to report, and a bad `SSL_CERT_FILE` to the
    ///   first https request. See [`Setup::bearer_location`] for a bearer path that is a
    ///   symbolic link.
    pub fn sandbox<'h>(&self, host: &'h Host) -> Result<SandboxBuilder<'h>> {
        Ok(self.sandbox_trusting(host, self.trusted_roots()))
    }

    /// [`Setup::sandbox`] with `roots` from [`Setup::trusted_roots`]: for a
    /// host that builds many sandboxes from one setup, whose clones of the
    /// roots share the CA files read.
    pub fn sandbox_trusting<'h>(&self, host: &'h Host, roots: TrustedRoots) -> SandboxBuilder<'h> {
        let builder = host.sandbox();
        if let Some(socket) = &self.runtime_access_socket {
            return builder.runtime_access(socket);
        }
        let location = self.bearer_location();
        let guest_file = location
            .as_ref()
            .map(|(_, file)| file.clone())
            .or(self.credential_file.clone());
        let vars = [
            (vd_cred_broker::ENV_BROKER_URL, &self.broker_url),
            (vd_cred_broker::ENV_CREDENTIAL_FILE, &guest_file),
            (vd_cred_broker::ENV_LANE, &self.lane),
            (
                vd_cred_broker::ENV_CONFIGURATION_REVISION,
                &self.configuration_revision,
            ),
        ];
        let mut builder = vars
            .into_iter()
            .filter_map(|(var, value)| Some((var, value.as_ref()?)))
            .fold(builder, |b, (var, value)| b.env(var, value));
        if let Some(url) = &self.broker_url
            && BrokerOnly::for_url(url).is_ok()
        {
            builder = builder.broker_url(url);
        }
        if let Some((dir, guest)) = location.as_ref().and_then(|(d, _)| Some((d, d.to_str()?))) {
            builder = builder.bearer_dir(dir, guest);
        }
        builder.trusted_roots(roots).proxies(self.proxies.clone())
    }
}

/// [`Setup::from_env`] then [`Setup::sandbox`].
pub fn sandbox_from_env(
    host: &Host,
    env: impl Fn(&str) -> Option<String>,
) -> Result<SandboxBuilder<'_>> {
    Setup::from_env(env).sandbox(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn env_vars_lists_exactly_what_from_env_reads() {
        let read = std::cell::RefCell::new(Vec::new());
        Setup::from_env(|name| {
            read.borrow_mut().push(name.to_string());
            None
        });
        let mut read = read.into_inner();
        let mut listed: Vec<String> = ENV_VARS.iter().map(|v| v.to_string()).collect();
        read.sort();
        listed.sort();
        assert_eq!(read, listed);
    }

    #[test]
    fn a_relative_bearer_file_is_relative_to_the_working_directory() {
        let cwd = std::env::current_dir().unwrap();
        for relative in ["credential", "./credential"] {
            let setup = Setup::from_env(env(&[
                (ENV_RUNTIME_ACCESS_SOCKET, "/nonexistent/helper.sock"),
                ("VD_CREDENTIAL_FILE", relative),
                ("VD_CREDENTIAL_BROKER_URL", "http://127.0.0.1:9/api"),
            ]));
            let expected = std::path::absolute(relative).unwrap();
            assert!(expected.starts_with(&cwd), "{relative}");
            assert_eq!(
                setup.credential_file.as_deref(),
                expected.to_str(),
                "{relative}"
            );
            let host = Host::shared();
            let builder = setup.sandbox(host).unwrap();
            let dir = expected.parent().unwrap();
            assert_eq!(
                builder.preopen(),
                Some(&(dir.to_path_buf(), dir.to_str().unwrap().to_string())),
                "{relative}: the working directory is preopened at its own path"
            );
            assert!(
                builder.env_vars().contains(&(
                    "VD_CREDENTIAL_FILE".into(),
                    expected.to_str().unwrap().into()
                )),
                "{relative}: the component gets the absolute path"
            );
        }
    }
}
