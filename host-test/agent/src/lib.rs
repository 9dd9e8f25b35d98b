//! A test-only agent component: it imports `token-credential` (met by the
//! host's linked credential, or by composition) and WASI, and exports probes
//! of what it can reach from inside its own sandbox.

#[cfg(target_arch = "wasm32")]
#[path = "../../probe/src/probes.rs"]
#[allow(dead_code)] // the agent uses only some of the probe's probes
mod probes;

#[cfg(target_arch = "wasm32")]
mod guest {
    wit_bindgen::generate!({
        world: "vibedata:test-agent/test-agent",
        path: ["../../wit", "wit"],
        generate_all,
    });

    use crate::probes;
    use exports::vibedata::test_agent::agent::Guest;
    use vibedata::cred_broker::token_credential::{
        self as credential, AccessToken, AccessTokenInfo, Credential, CredentialError,
        CredentialOptions, TokenRequestOptions,
    };

    struct Agent;
    export!(Agent);

    impl Guest for Agent {
        fn token(
            options: CredentialOptions,
            scopes: Vec<String>,
            calls: u32,
        ) -> Result<AccessToken, CredentialError> {
            let credential = Credential::open(&options)?;
            let mut token = credential.get_token(&scopes);
            for _ in 1..calls {
                token = credential.get_token(&scopes);
            }
            token
        }

        fn token_info(
            options: CredentialOptions,
            scopes: Vec<String>,
            request: TokenRequestOptions,
        ) -> Result<AccessTokenInfo, CredentialError> {
            Credential::open(&options)?.get_token_info(&scopes, &request)
        }

        fn free_token(scopes: Vec<String>) -> Result<AccessToken, CredentialError> {
            credential::get_token(&scopes)
        }

        fn describe(error: CredentialError) -> String {
            credential::describe_error(&error)
        }

        fn read_file(path: String) -> Result<String, String> {
            probes::read_file(path)
        }

        fn environment() -> Vec<(String, String)> {
            probes::environment()
        }

        fn http_get(url: String) -> Result<u16, String> {
            probes::http_get(url)
        }

        fn open_many(options: CredentialOptions, count: u32) -> (u32, Option<CredentialError>) {
            let mut open = Vec::new();
            let mut refused = None;
            for _ in 0..count {
                match Credential::open(&options) {
                    Ok(credential) => open.push(credential),
                    Err(e) => {
                        refused.get_or_insert(e);
                    }
                }
            }
            (open.len() as u32, refused)
        }

        fn open_drop(options: CredentialOptions, count: u32) -> (u32, Option<CredentialError>) {
            let mut opened = 0;
            let mut refused = None;
            for _ in 0..count {
                match Credential::open(&options) {
                    Ok(credential) => {
                        opened += 1;
                        drop(credential);
                    }
                    Err(e) => {
                        refused.get_or_insert(e);
                    }
                }
            }
            (opened, refused)
        }

        fn mint_loop(
            options: CredentialOptions,
            scopes: Vec<String>,
            count: u32,
            free: bool,
        ) -> (u32, u32, Option<CredentialError>) {
            let credential = match free {
                true => None,
                false => match Credential::open(&options) {
                    Ok(credential) => Some(credential),
                    Err(e) => return (0, count, Some(e)),
                },
            };
            let (mut tokens, mut errors, mut last) = (0, 0, None);
            for _ in 0..count {
                let result = match &credential {
                    Some(credential) => credential.get_token(&scopes),
                    None => credential::get_token(&scopes),
                };
                match result {
                    Ok(_) => tokens += 1,
                    Err(e) => {
                        errors += 1;
                        last = Some(e);
                    }
                }
            }
            (tokens, errors, last)
        }
    }
}
