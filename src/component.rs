//! The wit-bindgen exports (WIT types <-> core types by `wit_conversions!`,
//! shared with the 0.3 build), and [`Platform`] over WASI.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{
    Answer, BrokerRequest, Credential, CredentialError, Options, Platform, Secret, SendError,
    TokenRequestOptions, ready, transport,
};

wit_bindgen::generate!({ world: "cred-broker", path: "wit" });

use exports::vibedata::cred_broker::token_credential as wit;

struct Component;
export!(Component);

/// The platform inside the component: std's clock and filesystem are
/// wasi:clocks and wasi:filesystem; requests go out through wasi:http. It
/// blocks in each method (a WASI 0.2 export runs one call at a time), so the
/// core's futures finish on their first poll ([`crate::ready`]).
struct Wasi;

impl Platform for Wasi {
    fn now_unix(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    async fn read_bearer(&mut self, path: &str) -> Result<Secret, CredentialError> {
        crate::bearer_wasi::read(path)
    }

    async fn send(
        &mut self,
        request: &BrokerRequest,
        timeout: Duration,
    ) -> Result<Answer, SendError> {
        transport::send(request, timeout)
    }

    async fn sleep(&mut self, duration: Duration) {
        wasi::clocks::monotonic_clock::subscribe_duration(duration.as_nanos() as u64).block();
    }

    fn random_unit(&mut self) -> f64 {
        // Jitter only: the monotonic clock's nanoseconds, mixed.
        let x = crate::retry::splitmix64(wasi::clocks::monotonic_clock::now());
        x as f64 / (u64::MAX as f64 + 1.0)
    }
}

fn from_env() -> Result<Credential, CredentialError> {
    Credential::open(&Options::default(), |name| std::env::var(name).ok())
}

fn get_token(
    credential: &Credential,
    scopes: Vec<String>,
) -> Result<wit::AccessToken, wit::CredentialError> {
    Ok(ready(credential.get_token(&scopes, &mut Wasi))?.into())
}

fn get_token_info(
    credential: &Credential,
    scopes: Vec<String>,
    options: wit::TokenRequestOptions,
) -> Result<wit::AccessTokenInfo, wit::CredentialError> {
    let options = TokenRequestOptions::from(options);
    Ok(ready(credential.get_token_info(&scopes, &options, &mut Wasi))?.into())
}

impl wit::Guest for Component {
    type Credential = Credential;

    fn get_token(scopes: Vec<String>) -> Result<wit::AccessToken, wit::CredentialError> {
        get_token(&from_env()?, scopes)
    }

    fn get_token_info(
        scopes: Vec<String>,
        options: wit::TokenRequestOptions,
    ) -> Result<wit::AccessTokenInfo, wit::CredentialError> {
        get_token_info(&from_env()?, scopes, options)
    }

    fn describe_error(error: wit::CredentialError) -> String {
        CredentialError::from(error).to_string()
    }
}

impl wit::GuestCredential for Credential {
    fn open(options: wit::CredentialOptions) -> Result<wit::Credential, wit::CredentialError> {
        let options = Options::from(options);
        let env = |name: &str| std::env::var(name).ok();
        Ok(wit::Credential::new(Credential::open(&options, env)?))
    }

    fn get_token(&self, scopes: Vec<String>) -> Result<wit::AccessToken, wit::CredentialError> {
        get_token(self, scopes)
    }

    fn get_token_info(
        &self,
        scopes: Vec<String>,
        options: wit::TokenRequestOptions,
    ) -> Result<wit::AccessTokenInfo, wit::CredentialError> {
        get_token_info(self, scopes, options)
    }
}

// The WIT records and error to and from the core's, as both builds convert
// them (`src/wasi_glue.rs`).
crate::wit_conversions!(crate::component::exports::vibedata::cred_broker::token_credential);
