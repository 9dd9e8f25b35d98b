//! The credential: [`Credential`] (opened once, caching), and the free
//! [`token`] and [`token_info`] (settings from the environment, no cache).

use crate::{AccessToken, AccessTokenInfo, Error, TokenRequestOptions, raw};

/// How to open a [`Credential`]: the WIT `credential-options` record. Every
/// field is optional; [`Default`] sets none, so the host's settings (or the
/// environment's) apply. A host-linked agent may set only `timeout_ms` and
/// `disable_cache`.
///
/// ```no_run
/// use vd_cred_guest::{Credential, Options};
/// let options = Options { timeout_ms: Some(5_000), ..Options::default() };
/// let credential = Credential::open(&options)?;
/// # Ok::<(), vd_cred_guest::Error>(())
/// ```
pub type Options = raw::CredentialOptions;

/// A credential: open it once and ask it for tokens as often as needed. It
/// caches a token per audience and refreshes it when due.
///
/// ```no_run
/// use vd_cred_guest::Credential;
/// let credential = Credential::new()?;
/// let vault = credential.token(&["https://vault.azure.net/.default"])?;
/// let again = credential.token(&["https://vault.azure.net"])?; // from the cache
/// # Ok::<(), vd_cred_guest::Error>(())
/// ```
#[derive(Debug)]
pub struct Credential(raw::Credential);

impl Credential {
    /// A credential with the default [`Options`].
    pub fn new() -> Result<Credential, Error> {
        Credential::open(&Options::default())
    }

    /// A credential with `options`. Settings are checked now (a bad one is
    /// [`Error::Configuration`]); nothing is read or sent until a token is
    /// asked for.
    pub fn open(options: &Options) -> Result<Credential, Error> {
        Ok(Credential(raw::Credential::open(options)?))
    }

    /// A token for `scopes` (e.g. `https://vault.azure.net/.default`; several
    /// only when they map to one audience).
    pub fn token<S: AsRef<str>>(&self, scopes: &[S]) -> Result<AccessToken, Error> {
        Ok(self.0.get_token(&owned(scopes))?.into())
    }

    /// As [`Credential::token`], with the refresh time (azure-core's
    /// `get_token_info`).
    pub fn token_info<S: AsRef<str>>(
        &self,
        scopes: &[S],
        options: &TokenRequestOptions,
    ) -> Result<AccessTokenInfo, Error> {
        Ok(self.0.get_token_info(&owned(scopes), options)?.into())
    }

    /// The raw resource handle.
    pub fn as_raw(&self) -> &raw::Credential {
        &self.0
    }
}

impl From<raw::Credential> for Credential {
    fn from(raw: raw::Credential) -> Self {
        Credential(raw)
    }
}

/// One token for `scopes` from a credential with the default settings,
/// opened for this call alone: nothing is cached. Keep a [`Credential`] to
/// ask more than once.
///
/// ```no_run
/// let token = vd_cred_guest::token(&["https://storage.azure.com/.default"])?;
/// # Ok::<(), vd_cred_guest::Error>(())
/// ```
pub fn token<S: AsRef<str>>(scopes: &[S]) -> Result<AccessToken, Error> {
    Ok(raw::get_token(&owned(scopes))?.into())
}

/// As [`token`], with the refresh time.
pub fn token_info<S: AsRef<str>>(
    scopes: &[S],
    options: &TokenRequestOptions,
) -> Result<AccessTokenInfo, Error> {
    Ok(raw::get_token_info(&owned(scopes), options)?.into())
}

fn owned<S: AsRef<str>>(scopes: &[S]) -> Vec<String> {
    scopes.iter().map(|s| s.as_ref().to_string()).collect()
}
