//! An agent on [`wstd`](https://docs.rs/wstd): it gets a Key Vault token
//! through `vd-cred-guest` and reads a secret with wstd's async HTTP client.
//! See README.md to build it and run it against the mocks.

#[cfg(target_arch = "wasm32")]
mod agent {
    wit_bindgen::generate!({
        world: "vibedata:wstd-agent/wstd-agent",
        path: ["../../wit", "wit"],
        // The credential's types come from the guest crate, not a second copy.
        with: {
            "vibedata:cred-broker/token-credential@0.1.0": vd_cred_guest::bindings::vibedata::cred_broker::token_credential,
        },
    });

    use exports::vibedata::wstd_agent::secrets::Guest;
    use vd_cred_guest::Credential;
    use wstd::http::{Body, Client, Error, Request, StatusCode};

    /// The scope of a Key Vault token.
    const VAULT_SCOPE: &str = "https://vault.azure.net/.default";

    struct Agent;
    export!(Agent);

    impl Guest for Agent {
        fn read_secret(vault: String, name: String) -> Result<String, String> {
            // The credential's error, as its own sentence (`Display`).
            let token = Credential::new()
                .and_then(|credential| credential.token(&[VAULT_SCOPE]))
                .map_err(|e| e.to_string())?;
            let url = format!(
                "{}/secrets/{name}?api-version=7.4",
                vault.trim_end_matches('/')
            );
            // An export is synchronous: run the async request to completion.
            wstd::runtime::block_on(get_secret(&url, &token.authorization()))
                .map_err(|e| format!("reading secret {name:?} from {vault}: {e:#}"))
        }
    }

    /// `GET url` with `Authorization: authorization`: the JSON answer's `value`.
    async fn get_secret(url: &str, authorization: &str) -> Result<String, Error> {
        let request = Request::get(url)
            .header("authorization", authorization)
            .body(Body::empty())?;
        let response = Client::new().send(request).await?;
        let status = response.status();
        let mut body = response.into_body();
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(body.contents().await?).into_owned();
            return Err(Error::msg(format!("Key Vault answered {status}: {text}")));
        }
        let answer: serde_json::Value = body.json().await?;
        answer["value"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::msg("Key Vault's answer has no string \"value\""))
    }
}
