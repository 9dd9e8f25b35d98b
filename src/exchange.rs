//! The broker request, and the parsing of the broker's answer. Pure: no I/O.

use serde_json::Value;

use crate::{CredentialError, Protocol, Secret, excerpt, scope_class};

/// `expires_in` when the broker sends none (the original's default).
pub const DEFAULT_EXPIRES_IN: u64 = 3600;
/// Longest `expires_in` accepted: a week. Azure tokens live hours, not weeks.
pub const MAX_EXPIRES_IN: u64 = 7 * 24 * 3600;
/// Longest `access_token` accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 32 * 1024;

/// One mint request: `POST {url}` with `Content-Type: application/json`, a
/// `Content-Length`, [`BrokerRequest::body`], and `Authorization: Bearer`
/// when there is a bearer (not to the runtime-access helper).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerRequest {
    /// `{broker_url}/token` or `{helper_url}/v1/credentials`.
    pub url: String,
    /// The intent bearer, for the `Authorization` header; none for the helper.
    pub bearer: Option<Secret>,
    /// The JSON body, e.g. `{"audience":"vault"}`.
    pub body: Vec<u8>,
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

impl BrokerRequest {
    /// The broker request that mints a token for `audience`, in `protocol`'s
    /// shape: 0.1 `{"audience"}`; 0.2 adds the scope class, lane and revision
    /// (a JSON number), in the original's member order.
    ///
    /// ```
    /// use vd_cred_broker::{BrokerRequest, Protocol, Secret};
    /// let bearer = Secret::new("vd_iat_x".into());
    /// let req = BrokerRequest::mint("http://127.0.0.1:1/b/token".into(), bearer.clone(), "vault", &Protocol::V0_1);
    /// assert_eq!(req.body, br#"{"audience":"vault"}"#);
    /// let v2 = Protocol::V0_2 { lane: "user", revision: 7 };
    /// let req = BrokerRequest::mint("u".into(), bearer, "vault", &v2);
    /// assert_eq!(req.body, br#"{"audience":"vault","scope":"data_platform","lane":"user","configurationRevision":7}"#);
    /// ```
    pub fn mint(url: String, bearer: Secret, audience: &str, protocol: &Protocol) -> Self {
        let body = match protocol {
            Protocol::V0_1 => format!(r#"{{"audience":{}}}"#, json_string(audience)),
            Protocol::V0_2 { lane, revision } => format!(
                r#"{{"audience":{},"scope":{},"lane":{},"configurationRevision":{revision}}}"#,
                json_string(audience),
                json_string(scope_class(audience)),
                json_string(lane),
            ),
        };
        BrokerRequest {
            url,
            bearer: Some(bearer),
            body: body.into_bytes(),
        }
    }

    /// The audience a request's `body` asks for (either shape, the
    /// helper's too), as a host that counts the requests it lets through
    /// per audience reads it.
    ///
    /// ```
    /// use vd_cred_broker::BrokerRequest;
    /// assert_eq!(BrokerRequest::audience_of(br#"{"audience":"vault"}"#).as_deref(), Some("vault"));
    /// assert_eq!(BrokerRequest::audience_of(br#"{"scope":"data_platform","audience":"arm"}"#).as_deref(), Some("arm"));
    /// assert_eq!(BrokerRequest::audience_of(b"not json"), None);
    /// ```
    pub fn audience_of(body: &[u8]) -> Option<String> {
        match serde_json::from_slice::<Value>(body)
            .ok()?
            .get("audience")?
        {
            Value::String(audience) => Some(audience.clone()),
            _ => None,
        }
    }

    /// The runtime-access helper request: `{"scope":"<class>","audience":"<aud>"}`,
    /// no `Authorization` (the helper holds the bearer and adds lane and revision).
    pub fn helper(url: String, audience: &str) -> Self {
        let body = format!(
            r#"{{"scope":{},"audience":{}}}"#,
            json_string(scope_class(audience)),
            json_string(audience)
        );
        BrokerRequest {
            url,
            bearer: None,
            body: body.into_bytes(),
        }
    }

    /// The headers to send, in order. `authorization` holds the bearer: never log it.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::with_capacity(3);
        if let Some(bearer) = &self.bearer {
            headers.push(("authorization", format!("Bearer {}", bearer.expose())));
        }
        headers.push(("content-type", "application/json".to_string()));
        headers.push(("content-length", self.body.len().to_string()));
        headers
    }

    /// Secrets to scrub from anything quoted back: the bearer, if any.
    pub fn secrets(&self) -> Vec<&str> {
        self.bearer.iter().map(Secret::expose).collect()
    }
}

/// Turn the runtime-access helper's answer into a token or the matching
/// error. A refusal carries `x-runtime-access-error` and a JSON envelope
/// `{"code", "message"}`: 401/403 are `broker-rejected`, others
/// `broker-failed`, with `code: message` (scrubbed) as the detail.
pub fn parse_helper_answer(status: u16, body: &[u8]) -> Result<Minted, CredentialError> {
    if (200..300).contains(&status) {
        return parse_answer(status, body, &[]);
    }
    let envelope = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        let code = v
            .get("code")?
            .as_str()
            .map(str::to_string)
            .or_else(|| Some(v.get("code")?.to_string()))?;
        let message = v
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Some(format!("runtime access helper refused: {code}: {message}"))
    });
    let detail = match envelope {
        Some(text) => excerpt(text.as_bytes(), &[]),
        None => excerpt(body, &[]),
    };
    Err(match status {
        401 | 403 => CredentialError::BrokerRejected { status, detail },
        _ => CredentialError::BrokerFailed { status, detail },
    })
}

/// A usable answer: the token and how long it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    /// The minted access token.
    pub token: Secret,
    /// Seconds from now until it expires.
    pub expires_in: u64,
    /// Seconds from now until a refresh is due, when the broker says.
    pub refresh_in: Option<u64>,
}

/// Turn the broker's answer into a token or the matching error.
///
/// `secrets` (the bearer) are scrubbed from any excerpt of an error body.
pub fn parse_answer(status: u16, body: &[u8], secrets: &[&str]) -> Result<Minted, CredentialError> {
    if !(200..300).contains(&status) {
        let detail = excerpt(body, secrets);
        return Err(match status {
            401 | 403 => CredentialError::BrokerRejected { status, detail },
            _ => CredentialError::BrokerFailed { status, detail },
        });
    }
    let invalid =
        |why: &str| CredentialError::InvalidResponse(format!("HTTP {status} answer {why}"));
    let json: Value = serde_json::from_slice(body).map_err(|_| {
        invalid("is not JSON: is VD_CREDENTIAL_BROKER_URL the Studio credential broker's base URL?")
    })?;
    let Value::Object(answer) = json else {
        return Err(invalid("is JSON but not an object"));
    };
    let token = match answer.get("access_token") {
        None | Some(Value::Null) => return Err(invalid("is missing access_token")),
        Some(Value::String(t)) if t.is_empty() => {
            return Err(invalid("is missing access_token (it is empty)"));
        }
        Some(Value::String(t)) => t,
        Some(_) => return Err(invalid("has an access_token that is not a string")),
    };
    if token.len() > MAX_TOKEN_BYTES {
        return Err(invalid(&format!(
            "has an access_token of {} bytes, more than the {MAX_TOKEN_BYTES} accepted",
            token.len()
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "has an access_token with spaces, control or non-ASCII characters, which cannot be sent \
             as an Authorization header",
        ));
    }
    let expires_in = parse_seconds("expires_in", answer.get("expires_in"))
        .map_err(|why| invalid(&why))?
        .unwrap_or(DEFAULT_EXPIRES_IN);
    let refresh_in =
        parse_seconds("refresh_in", answer.get("refresh_in")).map_err(|why| invalid(&why))?;
    Ok(Minted {
        token: Secret::new(token.clone()),
        expires_in,
        refresh_in,
    })
}

/// A lifetime member (`expires_in`, `refresh_in`): absent or null is `None`;
/// else a positive integer, as a JSON number or a string of digits, at most
/// [`MAX_EXPIRES_IN`].
fn parse_seconds(name: &str, value: Option<&Value>) -> Result<Option<u64>, String> {
    let seconds = match value {
        None | Some(Value::Null) => return Ok(None),
        // Whole floats such as 3600.0 are accepted, as Python's int() does;
        // `as` saturates, so a huge number is caught as too large below.
        Some(Value::Number(n)) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            Some(s.parse().unwrap_or(u64::MAX))
        }
        Some(_) => None,
    };
    match seconds {
        None => Err(format!(
            "has a {name} that is not a positive whole number of seconds (a number or a string of digits)"
        )),
        Some(0) => Err(format!(
            "has {name} 0: a token must live a positive number of seconds"
        )),
        Some(s) if s > MAX_EXPIRES_IN => Err(format!(
            "has {name} {s}, above the {MAX_EXPIRES_IN} seconds accepted"
        )),
        Some(s) => Ok(Some(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Minted {
        parse_answer(200, body.as_bytes(), &[]).unwrap()
    }

    fn invalid(body: &str) -> String {
        match parse_answer(200, body.as_bytes(), &[]) {
            Err(CredentialError::InvalidResponse(m)) => m,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn request_shape() {
        let r = BrokerRequest::mint(
            "u".into(),
            Secret::new("vd_iat_b".into()),
            "fabric_cli",
            &Protocol::V0_1,
        );
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            r#"{"audience":"fabric_cli"}"#
        );
        let h = r.headers();
        assert_eq!(h[0], ("authorization", "Bearer vd_iat_b".into()));
        assert_eq!(h[2], ("content-length", r.body.len().to_string()));
        assert!(!format!("{r:?}").contains("vd_iat_b"));
        let r = BrokerRequest::helper("u".into(), "key_vault_data_plane");
        assert_eq!(
            r.body,
            br#"{"scope":"secret_store","audience":"key_vault_data_plane"}"#
        );
        assert_eq!(r.headers().len(), 2, "no authorization to the helper");
        assert!(r.secrets().is_empty());
        let v2 = Protocol::V0_2 {
            lane: "service",
            revision: 0,
        };
        let r = BrokerRequest::mint("u".into(), Secret::new("b".into()), "discovery", &v2);
        assert_eq!(r.body, br#"{"audience":"discovery","scope":"secret_store","lane":"service","configurationRevision":0}"#);
    }

    #[test]
    fn helper_answers() {
        assert_eq!(
            parse_helper_answer(200, br#"{"access_token":"t"}"#)
                .unwrap()
                .token
                .expose(),
            "t"
        );
        let err = parse_helper_answer(403, br#"{"code":"intent_denied","message":"no grant"}"#)
            .unwrap_err();
        assert!(
            matches!(err, CredentialError::BrokerRejected { status: 403, ref detail } if detail.contains("intent_denied: no grant")),
            "{err}"
        );
        let err = parse_helper_answer(503, br#"{"code":"upstream","message":"broker down"}"#)
            .unwrap_err();
        assert!(
            matches!(err, CredentialError::BrokerFailed { status: 503, ref detail } if detail.contains("upstream: broker down")),
            "{err}"
        );
        let err = parse_helper_answer(500, b"plain").unwrap_err();
        assert!(
            matches!(err, CredentialError::BrokerFailed { ref detail, .. } if detail == "plain"),
            "{err}"
        );
    }

    #[test]
    fn expires_in_forms() {
        assert_eq!(ok(r#"{"access_token":"t"}"#).expires_in, 3600);
        assert_eq!(
            ok(r#"{"access_token":"t","expires_in":null}"#).expires_in,
            3600
        );
        assert_eq!(
            ok(r#"{"access_token":"t","expires_in":1799}"#).expires_in,
            1799
        );
        assert_eq!(
            ok(r#"{"access_token":"t","expires_in":"3599"}"#).expires_in,
            3599
        );
        assert_eq!(
            ok(r#"{"access_token":"t","expires_in":120.0}"#).expires_in,
            120
        );
        assert_eq!(
            ok(r#"{"access_token":"t","extra":{"x":1},"token_type":"Bearer"}"#)
                .token
                .expose(),
            "t"
        );
        for bad in [
            "0",
            "-5",
            "\"\"",
            "\"-5\"",
            "\"3599.5\"",
            "\" 3599\"",
            "12.5",
            "true",
            "[1]",
            "\"1e3\"",
        ] {
            let m = invalid(&format!(r#"{{"access_token":"t","expires_in":{bad}}}"#));
            assert!(m.contains("expires_in"), "{bad}: {m}");
        }
        let m = invalid(r#"{"access_token":"t","expires_in":99999999999999999999}"#);
        assert!(m.contains("expires_in"), "{m}");
        let m = invalid(r#"{"access_token":"t","expires_in":604801}"#);
        assert!(m.contains("above"), "{m}");
    }

    #[test]
    fn access_token_rules() {
        assert!(invalid(r#"{}"#).contains("missing access_token"));
        assert!(invalid(r#"{"access_token":""}"#).contains("missing access_token"));
        assert!(invalid(r#"{"access_token":null}"#).contains("missing access_token"));
        assert!(invalid(r#"{"access_token":5}"#).contains("not a string"));
        assert!(invalid(r#"{"access_token":"a b"}"#).contains("Authorization"));
        assert!(invalid(r#"{"access_token":"a\nb"}"#).contains("Authorization"));
        assert!(
            invalid(&format!(
                r#"{{"access_token":"{}"}}"#,
                "a".repeat(MAX_TOKEN_BYTES + 1)
            ))
            .contains("bytes")
        );
        assert!(invalid("not json").contains("not JSON"));
        assert!(invalid("[1,2]").contains("not an object"));
        // The token never appears in an invalid-response message.
        assert!(!invalid(r#"{"access_token":"secret tok","expires_in":0}"#).contains("secret"));
    }

    #[test]
    fn statuses() {
        for s in [401, 403] {
            assert!(
                matches!(parse_answer(s, b"{}", &[]), Err(CredentialError::BrokerRejected { status, .. }) if status == s)
            );
        }
        for s in [400, 404, 429, 500, 502, 503, 301, 100] {
            assert!(
                matches!(parse_answer(s, b"", &[]), Err(CredentialError::BrokerFailed { status, .. }) if status == s)
            );
        }
        let err = parse_answer(
            500,
            br#"{"error":"boom","echo":"vd_iat_zzz"}"#,
            &["vd_iat_zzz"],
        )
        .unwrap_err();
        assert!(!err.to_string().contains("zzz"), "{err}");
        assert!(err.to_string().contains("boom"), "{err}");
        assert_eq!(ok(r#"{"access_token":"t"}"#).token.expose(), "t");
        assert!(parse_answer(204, br#"{"access_token":"t"}"#, &[]).is_ok());
    }
}
