//! What a [`crate::linked::LinkedCredential`] forwards an agent's calls to:
//! a credential instance of the agent's own (a [`Sandbox`], either build),
//! or one instance of the WASI 0.3 build shared by every agent of a bearer
//! (a [`SharedCredential`]).

use anyhow::Result;
use vd_cred_broker::CredentialError;
use wasmtime::component::ResourceAny;

use crate::outbound::broker_only::Traffic;
use crate::sandboxes::Sandbox;
use crate::sandboxes::Withheld;
use crate::sandboxes::shared::{SharedCredential, SharedHandle};
use crate::sandboxes::{CredentialOptions, TokenInfoResult, TokenRequestOptions};

/// The credential behind a linked agent.
pub(crate) enum Backend {
    /// An instance of the agent's own: its calls take turns.
    Own(Box<Sandbox>),
    /// One instance shared with other agents: calls run concurrently, and
    /// agents opening a credential with the same options share it (its
    /// cache, its mints).
    Shared(SharedCredential),
}

/// A credential opened in the backend.
#[derive(Clone, Copy)]
pub(crate) enum Opened {
    Own(ResourceAny),
    Shared(SharedHandle),
}

impl Backend {
    /// Replace the instance if the last call trapped (a shared instance
    /// replaces itself).
    pub(crate) async fn renew(&mut self) -> Result<()> {
        match self {
            Backend::Own(sandbox) => sandbox.renew().await,
            Backend::Shared(_) => Ok(()),
        }
    }

    /// How often the instance was replaced.
    pub(crate) fn generation(&self) -> u64 {
        match self {
            Backend::Own(sandbox) => sandbox.generation(),
            Backend::Shared(shared) => shared.generation(),
        }
    }

    /// Open a credential: the agent's own, or for a shared instance the one
    /// every agent with these options shares (`fresh`: a new one, with an
    /// empty cache, replacing none).
    pub(crate) async fn open(
        &mut self,
        options: &CredentialOptions,
        fresh: bool,
    ) -> Result<Result<Opened, CredentialError>> {
        Ok(match self {
            Backend::Own(sandbox) => sandbox.open(options).await?.map(Opened::Own),
            Backend::Shared(shared) if fresh => shared.open(options).await?.map(Opened::Shared),
            Backend::Shared(shared) => {
                let options = shared_options(options);
                shared.open_shared(&options).await?.map(Opened::Shared)
            }
        })
    }

    /// The instance generation `opened` belongs to.
    pub(crate) fn generation_of(&self, opened: &Opened) -> u64 {
        match opened {
            Opened::Shared(handle) => handle.generation(),
            Opened::Own(_) => self.generation(),
        }
    }

    /// Drop an agent's credential (a shared one stays: others use it).
    pub(crate) async fn drop_credential(&mut self, opened: Opened) -> Result<()> {
        match (self, opened) {
            (Backend::Own(sandbox), Opened::Own(resource)) => {
                sandbox.drop_credential(resource).await
            }
            (Backend::Shared(shared), Opened::Shared(handle)) => {
                shared.drop_credential(handle);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// `get-token-info` on `opened`, or the free function.
    pub(crate) async fn get_token_info(
        &mut self,
        opened: Option<Opened>,
        scopes: &[&str],
        options: &TokenRequestOptions,
    ) -> Result<TokenInfoResult> {
        match (self, opened) {
            (Backend::Own(sandbox), Some(Opened::Own(resource))) => {
                sandbox
                    .credential_get_token_info(resource, scopes, options)
                    .await
            }
            (Backend::Own(sandbox), None) => sandbox.get_token_info(scopes, options).await,
            (Backend::Shared(shared), Some(Opened::Shared(handle))) => {
                shared.get_token_info(&handle, scopes, options).await
            }
            (Backend::Shared(shared), None) => shared.free_get_token_info(scopes, options).await,
            _ => anyhow::bail!("a credential of one backend was used with another"),
        }
    }

    /// The requests the policy let through, and its hold switch (the
    /// instance's: shared by every agent of a shared instance).
    pub(crate) fn traffic(&self) -> &Traffic {
        match self {
            Backend::Own(sandbox) => sandbox.traffic(),
            Backend::Shared(shared) => shared.traffic(),
        }
    }

    /// What messages to the agent withhold.
    pub(crate) fn withheld(&self) -> &Withheld {
        match self {
            Backend::Own(sandbox) => sandbox.withheld(),
            Backend::Shared(shared) => shared.withheld(),
        }
    }

    /// How the credential's host names are looked up.
    pub(crate) fn resolver(&self) -> crate::outbound::Resolver {
        match self {
            Backend::Own(sandbox) => sandbox.resolver(),
            Backend::Shared(shared) => shared.resolver(),
        }
    }

    /// The credential's broker URLs.
    pub(crate) fn broker_urls(&self) -> Vec<String> {
        match self {
            Backend::Own(sandbox) => sandbox.broker_urls(),
            Backend::Shared(shared) => shared.broker_urls().to_vec(),
        }
    }
}

/// The `timeout-ms` values agents' shared credentials are opened with, in
/// ms: an agent's is rounded up to the next (past the last, to whole
/// minutes). Agents with the same settings share a credential, so the
/// settings they can ask for are kept few: an agent cannot fill the shared
/// instance with credentials by asking for every timeout in turn.
const SHARED_TIMEOUTS_MS: [u32; 7] = [1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 60_000];

/// `options` as an agent's shared credential is opened with them.
fn shared_options(options: &CredentialOptions) -> CredentialOptions {
    let mut options = options.clone();
    options.timeout_ms = options.timeout_ms.map(|ms| {
        SHARED_TIMEOUTS_MS
            .into_iter()
            .find(|&bucket| ms <= bucket)
            .unwrap_or_else(|| ms.div_ceil(60_000).saturating_mul(60_000))
    });
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_timeouts_fall_into_few_buckets() {
        let timeout = |ms| {
            let mut options = crate::sandboxes::default_options();
            options.timeout_ms = ms;
            shared_options(&options).timeout_ms
        };
        assert_eq!(timeout(None), None);
        assert_eq!(timeout(Some(1)), Some(1_000));
        assert_eq!(timeout(Some(1_000)), Some(1_000));
        assert_eq!(timeout(Some(1_001)), Some(2_000));
        assert_eq!(timeout(Some(59_999)), Some(60_000));
        assert_eq!(timeout(Some(60_001)), Some(120_000));
        let distinct: std::collections::BTreeSet<_> =
            (1..=120_000).map(|ms| timeout(Some(ms))).collect();
        assert_eq!(distinct.len(), 8);
    }
}
