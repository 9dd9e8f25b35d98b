//! The wit-bindgen exports: WIT types <-> core types (`wit_conversions!`,
//! as the 0.2 build's `component.rs`), with `async` token calls. Each call
//! runs as its own task: calls on one `credential` share it by `&` (the core
//! keeps its cache and shared mints behind its own locks), and nothing here
//! is held across an `await`.

use vd_cred_broker::{Credential, CredentialError, Options, TokenRequestOptions};
use wasip3::cli::environment::get_environment;

use crate::platform::Wasi;

wit_bindgen::generate!({ world: "cred-broker", path: "wit" });

use exports::vibedata::cred_broker_async::token_credential as wit;

struct Component;
export!(Component);

/// The environment's variable `name`, from one reading of it.
fn env() -> impl Fn(&str) -> Option<String> {
    let vars = get_environment();
    move |name| {
        vars.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    }
}

fn from_env() -> Result<Credential, CredentialError> {
    Credential::open(&Options::default(), env())
}

async fn get_token(
    credential: &Credential,
    scopes: Vec<String>,
) -> Result<wit::AccessToken, wit::CredentialError> {
    Ok(credential.get_token(&scopes, &mut Wasi).await?.into())
}

async fn get_token_info(
    credential: &Credential,
    scopes: Vec<String>,
    options: wit::TokenRequestOptions,
) -> Result<wit::AccessTokenInfo, wit::CredentialError> {
    let options = TokenRequestOptions::from(options);
    Ok(credential
        .get_token_info(&scopes, &options, &mut Wasi)
        .await?
        .into())
}

impl wit::Guest for Component {
    type Credential = Credential;

    async fn get_token(scopes: Vec<String>) -> Result<wit::AccessToken, wit::CredentialError> {
        get_token(&from_env()?, scopes).await
    }

    async fn get_token_info(
        scopes: Vec<String>,
        options: wit::TokenRequestOptions,
    ) -> Result<wit::AccessTokenInfo, wit::CredentialError> {
        get_token_info(&from_env()?, scopes, options).await
    }

    fn describe_error(error: wit::CredentialError) -> String {
        CredentialError::from(error).to_string()
    }
}

impl wit::GuestCredential for Credential {
    async fn open(
        options: wit::CredentialOptions,
    ) -> Result<wit::Credential, wit::CredentialError> {
        let options = Options::from(options);
        Ok(wit::Credential::new(Credential::open(&options, env())?))
    }

    async fn get_token(
        &self,
        scopes: Vec<String>,
    ) -> Result<wit::AccessToken, wit::CredentialError> {
        get_token(self, scopes).await
    }

    async fn get_token_info(
        &self,
        scopes: Vec<String>,
        options: wit::TokenRequestOptions,
    ) -> Result<wit::AccessTokenInfo, wit::CredentialError> {
        get_token_info(self, scopes, options).await
    }
}

// The WIT records and error to and from the core's, as both builds convert
// them (the core's `src/wasi_glue.rs`).
vd_cred_broker::wit_conversions!(
    crate::component::exports::vibedata::cred_broker_async::token_credential
);
