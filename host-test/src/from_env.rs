//! The sandbox the `get-token` command builds from its own environment, the
//! way the original credential finds its inputs.

use std::path::{Path, PathBuf};

use crate::{Host, SandboxBuilder};

/// Where the runtime-access helper listens unless `VD_RUNTIME_ACCESS_SOCKET` says otherwise.
pub const DEFAULT_RUNTIME_ACCESS_SOCKET: &str = "/run/vd-access/program.sock";
/// The environment variable naming the helper's socket.
pub const ENV_RUNTIME_ACCESS_SOCKET: &str = "VD_RUNTIME_ACCESS_SOCKET";

/// Variables passed through to the component in broker mode, when set.
const BROKER_VARS: [&str; 4] = [
    vd_cred_broker::ENV_BROKER_URL,
    vd_cred_broker::ENV_CREDENTIAL_FILE,
    vd_cred_broker::ENV_LANE,
    vd_cred_broker::ENV_CONFIGURATION_REVISION,
];

/// The helper's socket, if it exists: `VD_RUNTIME_ACCESS_SOCKET`, else the default path.
pub fn runtime_access_socket(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let path = PathBuf::from(
        env(ENV_RUNTIME_ACCESS_SOCKET).unwrap_or_else(|| DEFAULT_RUNTIME_ACCESS_SOCKET.into()),
    );
    path.exists().then_some(path)
}

/// A sandbox configured from `env` (the host's own environment in the CLI):
///
/// - **helper mode** when the runtime-access socket exists: requests to the
///   helper origin go over the socket; no directory is preopened and no
///   bearer path or broker URL is passed in;
/// - **broker mode** otherwise: the broker URL, bearer file, lane and
///   revision variables are passed through, the bearer file's directory is
///   preopened read-only at the same path, and HTTP is allowed only to the
///   broker's origin. Missing or bad values are left to the component to
///   report.
pub fn sandbox_from_env(host: &Host, env: impl Fn(&str) -> Option<String>) -> SandboxBuilder<'_> {
    let builder = host.sandbox();
    if let Some(socket) = runtime_access_socket(&env) {
        return builder.runtime_access(socket);
    }
    let mut builder = BROKER_VARS
        .iter()
        .filter_map(|var| env(var).map(|value| (var, value)))
        .fold(builder, |b, (var, value)| b.env(*var, value));
    if let Some(url) = env(vd_cred_broker::ENV_BROKER_URL)
        && crate::policy::BrokerOnly::for_url(&url).is_ok()
    {
        builder = builder.broker_url(url);
    }
    if let Some(file) = env(vd_cred_broker::ENV_CREDENTIAL_FILE) {
        let dir = Path::new(&file).parent().filter(|d| d.is_dir());
        if let Some((dir, guest)) = dir.and_then(|d| Some((d, d.to_str()?))) {
            builder = builder.bearer_dir(dir, guest.to_string());
        }
    }
    builder
}
