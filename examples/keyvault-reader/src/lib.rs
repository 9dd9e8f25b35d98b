//! An example consumer of `vibedata:cred-broker/token-credential`: a Key
//! Vault secret reader. Build it, then plug the credential in:
//!
//! ```sh
//! cargo build -p keyvault-reader --target wasm32-wasip2 --release
//! wac plug target/wasm32-wasip2/release/keyvault_reader.wasm \
//!     --plug target/wasm32-wasip2/release/vd_cred_broker.wasm -o keyvault-composed.wasm
//! ```

#[cfg(target_arch = "wasm32")]
mod guest {
    wit_bindgen::generate!({
        world: "vibedata:keyvault-reader/keyvault-reader",
        path: ["../../wit", "wit"],
        // The credential import is the guest crate's.
        with: {
            "vibedata:cred-broker/token-credential@0.1.0": vd_cred_guest::bindings::vibedata::cred_broker::token_credential,
        },
        generate_all,
    });

    use exports::vibedata::keyvault_reader::reader::Guest;
    use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

    const SCOPE: &str = "https://vault.azure.net/.default";

    struct Reader;
    export!(Reader);

    impl Guest for Reader {
        fn read_secret(vault: String, name: String) -> Result<String, String> {
            // The credential's error as its own sentence (`Display`).
            let token = vd_cred_guest::token(&[SCOPE]).map_err(|e| e.to_string())?;
            let (status, body) = get(
                &format!(
                    "{}/secrets/{name}?api-version=7.4",
                    vault.trim_end_matches('/')
                ),
                &token.authorization(),
            )?;
            if status != 200 {
                return Err(format!(
                    "Key Vault answered HTTP {status} for secret {name:?}"
                ));
            }
            let json: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|_| "Key Vault's answer is not JSON".to_string())?;
            json.get("value")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| "Key Vault's answer has no value".into())
        }
    }

    /// `GET url` with `Authorization: authorization`; the status and body.
    fn get(url: &str, authorization: &str) -> Result<(u16, Vec<u8>), String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("the vault URL is not absolute")?;
        let (authority, path) = rest
            .split_once('/')
            .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
        let headers =
            Fields::from_list(&[("authorization".into(), authorization.as_bytes().to_vec())])
                .map_err(|e| format!("{e:?}"))?;
        let request = OutgoingRequest::new(headers);
        request
            .set_method(&Method::Get)
            .map_err(|()| "method refused")?;
        let scheme = if scheme.eq_ignore_ascii_case("https") {
            Scheme::Https
        } else {
            Scheme::Http
        };
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| "scheme refused")?;
        request
            .set_authority(Some(authority))
            .map_err(|()| "authority refused")?;
        request
            .set_path_with_query(Some(&path))
            .map_err(|()| "path refused")?;
        let body = request.body().map_err(|()| "body taken")?;
        let pending = wasi::http::outgoing_handler::handle(request, None)
            .map_err(|e| format!("Key Vault: {e:?}"))?;
        OutgoingBody::finish(body, None).map_err(|e| format!("Key Vault: {e:?}"))?;
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(format!("Key Vault: {code:?}")),
            _ => return Err("Key Vault: no response".into()),
        };
        let status = response.status();
        let incoming = response.consume().map_err(|()| "body taken")?;
        let mut bytes = Vec::new();
        {
            let stream = incoming.stream().map_err(|()| "stream taken")?;
            while let Ok(chunk) = stream.blocking_read(64 * 1024) {
                bytes.extend_from_slice(&chunk);
            }
        }
        Ok((status, bytes))
    }
}
