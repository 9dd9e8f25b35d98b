//! The sandbox a process builds from its own environment, the way the
//! original credential finds its inputs: `host-test get-token` and the Python
//! package both use it.

use std::path::{Path, PathBuf};

use crate::host::Host;
use crate::policy::BrokerOnly;
use crate::sandbox::SandboxBuilder;

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
        }
    }

    /// A sandbox for these inputs:
    ///
    /// - **helper mode** when the runtime-access socket exists: requests to
    ///   the helper origin go over the socket; no directory is preopened and
    ///   no bearer path or broker URL is passed in;
    /// - **broker mode** otherwise: the broker URL, bearer file, lane and
    ///   revision are passed in as their variables, the bearer file's
    ///   directory is preopened read-only at the same path, and HTTP is
    ///   allowed only to the broker's origin. Missing or bad values are left
    ///   to the component to report.
    pub fn sandbox<'h>(&self, host: &'h Host) -> SandboxBuilder<'h> {
        let builder = host.sandbox();
        if let Some(socket) = &self.runtime_access_socket {
            return builder.runtime_access(socket);
        }
        let vars = [
            (vd_cred_broker::ENV_BROKER_URL, &self.broker_url),
            (vd_cred_broker::ENV_CREDENTIAL_FILE, &self.credential_file),
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
        let dir = self
            .credential_file
            .as_deref()
            .and_then(|file| Path::new(file).parent())
            .filter(|dir| dir.is_dir());
        if let Some((dir, guest)) = dir.and_then(|d| Some((d, d.to_str()?))) {
            builder = builder.bearer_dir(dir, guest);
        }
        builder
    }
}

/// [`Setup::from_env`] then [`Setup::sandbox`].
pub fn sandbox_from_env(host: &Host, env: impl Fn(&str) -> Option<String>) -> SandboxBuilder<'_> {
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
            let builder = setup.sandbox(host);
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
