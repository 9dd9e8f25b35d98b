//! Property tests for the pure core: no input makes it panic, and what should
//! round-trip does.

use proptest::prelude::*;
use vd_cred_broker::{
    AudienceMap, CredentialError, EXCERPT_CHARS, MAX_EXPIRES_IN, excerpt, normalize_scope,
    parse_answer, parse_bearer, validate_broker_url,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn scope_normalisation(scope in ".*", resource in "[a-z]{1,8}(://[a-z.]{1,12})?(/[a-z]{1,6}){0,3}") {
        let n = normalize_scope(&scope);
        prop_assert!(!n.ends_with('/'));
        prop_assert!(scope.starts_with(n));
        let with_default = format!("{resource}/.default");
        let with_slashes = format!("{resource}///");
        prop_assert_eq!(normalize_scope(&with_default), resource.as_str());
        prop_assert_eq!(normalize_scope(&with_slashes), resource.as_str());
        prop_assert_eq!(normalize_scope(&resource), resource.as_str());
        let _ = AudienceMap::default().audience_for(&[scope.clone(), resource.clone()]);
    }

    #[test]
    fn url_validation(raw in ".*", insecure in any::<bool>(), host in "[a-z]{1,10}(\\.[a-z]{2,5}){0,2}", port in 1u16.., path in "(/[a-zA-Z0-9_-]{1,8}){0,3}/?") {
        if let Ok(url) = validate_broker_url(&raw, insecure) {
            prop_assert!(!url.ends_with('/'));
            prop_assert!(!url.contains('#') && !url.contains('?'));
            prop_assert_eq!(validate_broker_url(&url, insecure), Ok(url.clone()));
        }
        let https = format!("https://{host}:{port}{path}");
        let ok = validate_broker_url(&https, false);
        prop_assert_eq!(ok, Ok(https.trim_end_matches('/').to_string()));
        let http = format!("http://{host}.example:{port}{path}");
        prop_assert!(matches!(validate_broker_url(&http, false), Err(CredentialError::Configuration(_))));
        prop_assert!(validate_broker_url(&http, true).is_ok());
    }

    #[test]
    fn answer_parsing_never_panics(status in any::<u16>(), body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_answer(status, &body, &["vd_iat_secret"]);
    }

    #[test]
    fn answers_round_trip(token in "[A-Za-z0-9._~+/=-]{1,200}", expires in 1..=MAX_EXPIRES_IN, as_string in any::<bool>(), status in 200u16..300) {
        let expires_json = if as_string { format!("\"{expires}\"") } else { expires.to_string() };
        let body = format!(r#"{{"access_token":{},"expires_in":{expires_json},"extra":[1,{{}}]}}"#, serde_json::Value::from(token.as_str()));
        let minted = parse_answer(status, body.as_bytes(), &[]).unwrap();
        prop_assert_eq!(minted.token.expose(), token.as_str());
        prop_assert_eq!(minted.expires_in, expires);
    }

    #[test]
    fn errors_never_carry_the_token(token in "[A-Za-z0-9]{8,40}", status in 200u16..600, junk in ".{0,40}") {
        let body = format!(r#"{{"access_token":"{token}","expires_in":"{junk}","note":"{token}"}}"#);
        if let Err(e) = parse_answer(status, body.as_bytes(), &[]) {
            prop_assert!(!e.to_string().contains(&token), "{}", e);
        }
    }

    #[test]
    fn excerpts_are_bounded_clean_and_scrubbed(
        prefix in proptest::collection::vec(any::<u8>(), 0..300),
        secret in "[A-Za-z0-9]{8,32}",
        suffix in ".{0,300}",
    ) {
        let mut body = prefix.clone();
        body.extend_from_slice(secret.as_bytes());
        body.extend_from_slice(suffix.as_bytes());
        let e = excerpt(&body, &[&secret]);
        prop_assert!(e.chars().count() <= EXCERPT_CHARS + 3);
        prop_assert!(!e.chars().any(char::is_control));
        prop_assert!(!e.contains(&secret), "{}", e);
        let _ = excerpt(&prefix, &[]);
    }

    #[test]
    fn bearer_checks(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(bearer) = parse_bearer(&bytes) {
            let b = bearer.expose();
            prop_assert!(!b.is_empty());
            prop_assert_eq!(b.trim(), b);
            prop_assert!(!b.chars().any(|c| c.is_control() && c != '\t'));
        }
    }
}
