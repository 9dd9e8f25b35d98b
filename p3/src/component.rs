//! The wit-bindgen exports: WIT types <-> core types, as the 0.2 build's
//! `component.rs`, with `async` token calls. Each call runs as its own task:
//! calls on one `credential` share it by `&` (the core keeps its cache and
//! shared mints behind its own locks), and nothing here is held across an
//! `await`.

use vd_cred_broker::{Credential, CredentialError, Options, TokenInfo, TokenRequestOptions};
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
    let token = credential.get_token(&scopes, &mut Wasi).await?;
    Ok(wit::AccessToken {
        token: token.token.into_inner(),
        expires_on: token.expires_on,
    })
}

async fn get_token_info(
    credential: &Credential,
    scopes: Vec<String>,
    options: wit::TokenRequestOptions,
) -> Result<wit::AccessTokenInfo, wit::CredentialError> {
    let options = TokenRequestOptions {
        claims: options.claims,
        tenant_id: options.tenant_id,
        enable_cae: options.enable_cae,
    };
    let TokenInfo {
        token,
        expires_on,
        refresh_on,
    } = credential
        .get_token_info(&scopes, &options, &mut Wasi)
        .await?;
    Ok(wit::AccessTokenInfo {
        token: token.into_inner(),
        expires_on,
        token_type: "Bearer".into(),
        refresh_on,
    })
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
        let options = Options {
            broker_url: options.broker_url,
            credential_file: options.credential_file,
            timeout_ms: options.timeout_ms,
            audience_map: options.audience_map,
            allow_insecure_http: options.allow_insecure_http,
            disable_cache: options.disable_cache,
            lane: options.lane,
            configuration_revision: options.configuration_revision,
            runtime_access_url: options.runtime_access_url,
        };
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

// The WIT error both ways, as every build and host maps it.
vd_cred_broker::wit_error_conversions!(
    crate::component::exports::vibedata::cred_broker_async::token_credential
);
