//! A test-only agent component: it imports `token-credential` (met by the
//! host's linked credential, or by composition) and WASI, and exports probes
//! of what it can reach from inside its own sandbox.

#[cfg(target_arch = "wasm32")]
#[path = "../../probe/src/probes.rs"]
#[allow(dead_code)] // the agent uses only some of the probe's probes
mod probes;

/// Any HTTP request through the raw wasi:http calls, as the `http_get` probe
/// makes its GET, with headers and a body, reading the whole answer.
#[cfg(target_arch = "wasm32")]
mod http {
    use wasi::http::types::{Fields, IncomingBody, Method, OutgoingBody};

    use crate::guest::exports::vibedata::test_agent::agent::HttpAnswer;
    use crate::probes::{read_body, write_body};

    /// Status, headers and body of `method url`, or why there is none.
    pub fn request(
        method: &str,
        url: &str,
        headers: Vec<(String, String)>,
        body: &[u8],
    ) -> Result<HttpAnswer, String> {
        let method = match method {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "CONNECT" => Method::Connect,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_string()),
        };
        let fields: Vec<(String, Vec<u8>)> = headers
            .into_iter()
            .map(|(name, value)| (name, value.into_bytes()))
            .collect();
        let fields = Fields::from_list(&fields).map_err(|e| format!("headers: {e:?}"))?;
        let (outgoing, pending) = crate::probes::start(method, url, fields)?;
        // A write that fails (the server answered early, say) is reported
        // only when no answer comes.
        let written = write_body(&outgoing, body)
            .and_then(|()| OutgoingBody::finish(outgoing, None).map_err(|e| format!("{e:?}")));
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(format!("{code:?}")),
            _ => return Err(written.err().unwrap_or_else(|| "no response".into())),
        };
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect();
        let incoming = response.consume().map_err(|()| "response body")?;
        let body = read_body(&incoming)?;
        drop(IncomingBody::finish(incoming));
        Ok(HttpAnswer {
            status,
            headers,
            body,
        })
    }

    /// Write `bytes` zero bytes into `outgoing` and finish it, as fast as
    /// the host takes them: `false` when the host stopped taking them.
    pub fn fill(outgoing: OutgoingBody, bytes: u64) -> bool {
        static ZEROES: [u8; 1 << 20] = [0; 1 << 20];
        let Ok(stream) = outgoing.write() else {
            return false;
        };
        let mut left = bytes;
        while left > 0 {
            let room = match stream.check_write() {
                Ok(0) => {
                    stream.subscribe().block();
                    continue;
                }
                Ok(room) => room,
                Err(_) => return false,
            };
            let n = room.min(left).min(ZEROES.len() as u64) as usize;
            if stream.write(&ZEROES[..n]).is_err() {
                return false;
            }
            left -= n as u64;
        }
        if stream.blocking_flush().is_err() {
            return false;
        }
        drop(stream);
        OutgoingBody::finish(outgoing, None).is_ok()
    }

    /// What a pending answer came to, if it has come: the status or the
    /// error code.
    pub fn settled(pending: &wasi::http::types::FutureIncomingResponse) -> Option<String> {
        if !pending.subscribe().ready() {
            return None;
        }
        match pending.get()? {
            Ok(Ok(response)) => Some(response.status().to_string()),
            Ok(Err(code)) => Some(format!("{code:?}")),
            Err(()) => Some("taken".into()),
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod guest {
    wit_bindgen::generate!({
        world: "vibedata:test-agent/test-agent",
        path: ["../../wit", "wit"],
        // The credential's types are the guest crate's, so its values cross
        // this agent's exports unchanged.
        with: {
            "vibedata:cred-broker/token-credential@0.1.0": vd_cred_guest::bindings::vibedata::cred_broker::token_credential,
        },
        generate_all,
    });

    use crate::{http, probes};
    use exports::vibedata::test_agent::agent::{FloodReport, Guest, HttpAnswer};
    use vd_cred_guest::bindings::vibedata::cred_broker::token_credential::{
        AccessToken, AccessTokenInfo, CredentialError, CredentialOptions, TokenRequestOptions,
    };
    use vd_cred_guest::{Credential, Error};

    struct Agent;
    export!(Agent);

    /// A guest-crate result as the WIT result this agent exports.
    fn raw<T, R: From<T>>(result: Result<T, Error>) -> Result<R, CredentialError> {
        result.map(R::from).map_err(CredentialError::from)
    }

    /// Add one to `key`'s count.
    fn tally(counts: &mut Vec<(String, u32)>, key: String) {
        match counts.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => counts.push((key, 1)),
        }
    }

    impl Guest for Agent {
        fn http_loop(url: String, count: u32) -> Vec<(String, u32)> {
            let mut outcomes = Vec::new();
            for _ in 0..count {
                let outcome = match probes::http_get(url.clone()) {
                    Ok(status) => status.to_string(),
                    Err(code) => code,
                };
                tally(&mut outcomes, outcome);
            }
            outcomes
        }

        fn http_flood(
            url: String,
            body_bytes: u64,
            count: u32,
            scopes: Vec<String>,
        ) -> FloodReport {
            use wasi::http::types::{Fields, Method};
            let (mut started, mut cut_short) = (0, 0);
            let (mut refused, mut held) = (Vec::new(), Vec::new());
            for _ in 0..count {
                match probes::start(Method::Post, &url, Fields::new()) {
                    Ok((body, pending)) => {
                        started += 1;
                        if !http::fill(body, body_bytes) {
                            cut_short += 1;
                        }
                        held.push(pending);
                    }
                    Err(code) => tally(&mut refused, code),
                }
            }
            let token = raw(vd_cred_guest::token(&scopes));
            let mut settled = Vec::new();
            for pending in &held {
                if let Some(outcome) = http::settled(pending) {
                    tally(&mut settled, outcome);
                }
            }
            drop(held);
            FloodReport {
                started,
                cut_short,
                refused,
                token,
                settled,
            }
        }

        fn abandon(url: String, sync_url: String) -> Result<u16, String> {
            use wasi::http::types::{Fields, Method};
            let (body, pending) = probes::start(Method::Get, &url, Fields::new())?;
            drop(wasi::http::types::OutgoingBody::finish(body, None));
            let synced = probes::http_get(sync_url);
            drop(pending);
            synced
        }

        fn token(
            options: CredentialOptions,
            scopes: Vec<String>,
            calls: u32,
        ) -> Result<AccessToken, CredentialError> {
            let credential = Credential::open(&options)?;
            let mut token = credential.token(&scopes);
            for _ in 1..calls {
                token = credential.token(&scopes);
            }
            raw(token)
        }

        fn token_info(
            options: CredentialOptions,
            scopes: Vec<String>,
            request: TokenRequestOptions,
        ) -> Result<AccessTokenInfo, CredentialError> {
            raw(Credential::open(&options).and_then(|c| c.token_info(&scopes, &request)))
        }

        fn free_token(scopes: Vec<String>) -> Result<AccessToken, CredentialError> {
            raw(vd_cred_guest::token(&scopes))
        }

        fn describe(error: CredentialError) -> String {
            // The guest crate's Display is the imported `describe-error`.
            Error::from(error).to_string()
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

        fn http_request(
            method: String,
            url: String,
            headers: Vec<(String, String)>,
            body: Vec<u8>,
        ) -> Result<HttpAnswer, String> {
            http::request(&method, &url, headers, &body)
        }

        fn open_many(options: CredentialOptions, count: u32) -> (u32, Option<CredentialError>) {
            let mut open = Vec::new();
            let mut refused = None;
            for _ in 0..count {
                match Credential::open(&options) {
                    Ok(credential) => open.push(credential),
                    Err(e) => {
                        refused.get_or_insert(e.into());
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
                        refused.get_or_insert(e.into());
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
                    Err(e) => return (0, count, Some(e.into())),
                },
            };
            let (mut tokens, mut errors, mut last) = (0, 0, None);
            for _ in 0..count {
                let result = match &credential {
                    Some(credential) => credential.token(&scopes),
                    None => vd_cred_guest::token(&scopes),
                };
                match result {
                    Ok(_) => tokens += 1,
                    Err(e) => {
                        errors += 1;
                        last = Some(e.into());
                    }
                }
            }
            (tokens, errors, last)
        }
    }
}
