//! Property tests for the pure core: no input makes it panic, and what should
//! round-trip does.
//!
//! The cases are drawn from a pinned seed ([`SEED`]), so every run (CI's
//! included) tries the same 2,000 cases per property and a failure seen once
//! is seen again. To try more, or others, locally, proptest's variables
//! override both:
//!
//! ```text
//! PROPTEST_CASES=100000 PROPTEST_RNG_SEED=$RANDOM cargo test --test properties
//! ```
//!
//! A failing case is saved in `tests/properties.proptest-regressions` and
//! tried first on every later run, whatever the seed.

use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError};
use serde_json::Value;
use vd_cred_broker::{
    AudienceMap, CredentialError, EXCERPT_CHARS, MAX_EXPIRES_IN, MAX_TOKEN_BYTES, excerpt,
    normalize_scope, parse_answer, parse_bearer, validate_broker_url,
};

/// The seed every run starts from unless `PROPTEST_RNG_SEED` says otherwise.
const SEED: u64 = 0x7d_c4ed_b40c_e12a;

/// 2,000 cases from [`SEED`]; `PROPTEST_CASES` and `PROPTEST_RNG_SEED`, when
/// set, win (the `proptest!` macro applies them over this).
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2000,
        rng_seed: RngSeed::Fixed(SEED),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

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

    /// Any bytes, and (as often) JSON-shaped answers that get past the JSON
    /// parser to the members' checks, which random bytes almost never do;
    /// mostly under a 2xx status, which is what reads the members.
    #[test]
    fn answer_parsing_never_panics(
        status in prop_oneof![3 => 200u16..300, 1 => any::<u16>()],
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..512),
            json_shaped_answer(),
        ],
    ) {
        let _ = parse_answer(status, &body, &["vd_iat_secret"]);
    }

    /// Structured answers: a JSON object whose `access_token`, `expires_in` and
    /// `refresh_in` are each drawn from a known kind (valid or one specific
    /// flaw), with random extra members, sometimes truncated, under a random
    /// status. The generator's kinds say what the parser must decide.
    #[test]
    fn structured_answers_are_decided_by_their_members(
        token in token_member(),
        expires in seconds_member(),
        refresh in seconds_member(),
        extra in proptest::collection::vec(("[a-z_]{1,12}", json_value()), 0..4),
        status in prop_oneof![4 => 200u16..300, 1 => 100u16..600],
        cut in proptest::option::weighted(0.2, any::<prop::sample::Index>()),
    ) {
        let mut answer = serde_json::Map::new();
        for (name, value) in extra {
            if !["access_token", "expires_in", "refresh_in"].contains(&name.as_str()) {
                answer.insert(name, value);
            }
        }
        for (name, member) in [("access_token", &token.1), ("expires_in", &expires.1), ("refresh_in", &refresh.1)] {
            if let Some(value) = member {
                answer.insert(name.into(), value.clone());
            }
        }
        let mut body = serde_json::to_vec(&Value::Object(answer)).unwrap();
        let truncated = cut.map(|i| body.truncate(i.index(body.len())));
        let result = parse_answer(status, &body, &[]);
        match result {
            _ if !(200..300).contains(&status) => {
                let rejected = matches!(result, Err(CredentialError::BrokerRejected { status: s, .. }) if s == status);
                let failed = matches!(result, Err(CredentialError::BrokerFailed { status: s, .. }) if s == status);
                prop_assert!(if matches!(status, 401 | 403) { rejected } else { failed }, "{result:?}");
            }
            Err(CredentialError::InvalidResponse(ref m)) if truncated.is_some() => {
                prop_assert!(m.contains("is not JSON"), "{m}");
            }
            Ok(minted) => {
                prop_assert!(truncated.is_none());
                let Token::Valid(t) = &token.0 else { return Err(TestCaseError::fail(format!("accepted {token:?}"))) };
                prop_assert_eq!(minted.token.expose(), t.as_str());
                prop_assert_eq!(Some(minted.expires_in), expires.0.accepted().unwrap_or(None).or(Some(3600)));
                prop_assert_eq!(Ok(minted.refresh_in), refresh.0.accepted());
            }
            Err(CredentialError::InvalidResponse(m)) => {
                let token_ok = matches!(token.0, Token::Valid(_));
                let seconds_ok = expires.0.accepted().is_ok() && refresh.0.accepted().is_ok();
                prop_assert!(!(token_ok && seconds_ok), "refused a good answer: {m}");
                // The message names the first member at fault, in the parser's order.
                let named = if !token_ok { "access_token" } else if expires.0.accepted().is_err() { "expires_in" } else { "refresh_in" };
                prop_assert!(m.contains(named), "{named}: {m}");
            }
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
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
        prop_assert!(e.chars().count() <= EXCERPT_CHARS);
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

/// How an `access_token` member was made (the flaw's name shows in
/// proptest's report of a failing case).
#[derive(Debug, Clone)]
#[allow(dead_code)]
enum Token {
    Valid(String),
    Flawed(&'static str),
}

fn token_member() -> impl Strategy<Value = (Token, Option<Value>)> {
    prop_oneof![
        6 => "[A-Za-z0-9._~+/=-]{1,300}".prop_map(|t| (Token::Valid(t.clone()), Some(Value::from(t)))),
        1 => Just((Token::Flawed("absent"), None)),
        1 => Just((Token::Flawed("null"), Some(Value::Null))),
        1 => Just((Token::Flawed("empty"), Some(Value::from("")))),
        1 => "[a-z]{1,8} [a-z]{1,8}".prop_map(|t| (Token::Flawed("space"), Some(Value::from(t)))),
        1 => "[a-z]{1,8}[\\x00-\\x1f\\x7f\u{e9}\u{2028}][a-z]{0,8}".prop_map(|t| (Token::Flawed("control or non-ASCII"), Some(Value::from(t)))),
        1 => Just((Token::Flawed("too long"), Some(Value::from("a".repeat(MAX_TOKEN_BYTES + 1))))),
        1 => json_value().prop_filter("not a string or null", |v| !v.is_string() && !v.is_null())
            .prop_map(|v| (Token::Flawed("not a string"), Some(v))),
    ]
}

/// How a lifetime member (`expires_in`, `refresh_in`) was made (the flaw's
/// name shows in proptest's report of a failing case).
#[derive(Debug, Clone, PartialEq)]
#[allow(dead_code)]
enum Seconds {
    Absent,
    Valid(u64),
    Flawed(&'static str),
}

impl Seconds {
    /// What the parser must make of it: `Ok(None)` absent, `Ok(Some(n))`, or refused.
    fn accepted(&self) -> Result<Option<u64>, ()> {
        match self {
            Seconds::Absent => Ok(None),
            Seconds::Valid(n) => Ok(Some(*n)),
            Seconds::Flawed(_) => Err(()),
        }
    }
}

fn seconds_member() -> impl Strategy<Value = (Seconds, Option<Value>)> {
    prop_oneof![
        2 => Just((Seconds::Absent, None)),
        1 => Just((Seconds::Absent, Some(Value::Null))),
        3 => (1..=MAX_EXPIRES_IN).prop_map(|n| (Seconds::Valid(n), Some(Value::from(n)))),
        2 => (1..=MAX_EXPIRES_IN).prop_map(|n| (Seconds::Valid(n), Some(Value::from(n.to_string())))),
        1 => (1..=MAX_EXPIRES_IN).prop_map(|n| (Seconds::Valid(n), Some(Value::from(n as f64)))),
        1 => Just((Seconds::Flawed("zero"), Some(Value::from(0)))),
        1 => Just((Seconds::Flawed("zero string"), Some(Value::from("0")))),
        1 => (MAX_EXPIRES_IN + 1..u64::MAX).prop_map(|n| (Seconds::Flawed("too large"), Some(Value::from(n)))),
        1 => (i64::MIN..0).prop_map(|n| (Seconds::Flawed("negative"), Some(Value::from(n)))),
        1 => (1.0e-3f64..1.0e6).prop_filter("fractional", |f| f.fract() != 0.0)
            .prop_map(|f| (Seconds::Flawed("fractional"), Some(Value::from(f)))),
        1 => "[0-9]{0,3}[^0-9][0-9a-z ]{0,4}".prop_map(|s| (Seconds::Flawed("not digits"), Some(Value::from(s)))),
        1 => prop_oneof![Just(Value::from(true)), Just(Value::Array(vec![])), Just(serde_json::json!({"s": 1}))]
            .prop_map(|v| (Seconds::Flawed("not a number"), Some(v))),
    ]
}

/// What is done to a JSON-shaped answer's text once written.
#[derive(Debug, Clone)]
enum Damage {
    None,
    /// Cut short at a point.
    Truncated(prop::sample::Index),
    /// One byte replaced.
    Replaced(prop::sample::Index, u8),
}

/// Text shaped like a broker's answer: a JSON object whose members are
/// mostly `access_token`, `expires_in` and `refresh_in` (sometimes twice,
/// or absent), each of any JSON type (nested arrays and objects among them,
/// numbers and numeric strings of every size), with other members around;
/// written compactly or spaced out, sometimes wrapped in an array, and at
/// times cut short or with one byte changed. Keys are written by hand, so a
/// repeated member reaches the parser as the broker would send it.
fn json_shaped_answer() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        3 => Just("access_token".to_string()),
        3 => Just("expires_in".to_string()),
        2 => Just("refresh_in".to_string()),
        1 => Just("token_type".to_string()),
        1 => Just("Access_Token".to_string()),
        1 => "[a-z_]{1,12}",
    ];
    let value = prop_oneof![
        3 => json_value(),
        2 => "[A-Za-z0-9._~+/=-]{0,64}".prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<i64>().prop_map(|n| Value::from(n.to_string())),
        1 => "[0-9]{1,30}".prop_map(Value::from),
        1 => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Value::from(f.to_string())),
    ];
    let damage = prop_oneof![
        6 => Just(Damage::None),
        2 => any::<prop::sample::Index>().prop_map(Damage::Truncated),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Replaced(i, b)),
    ];
    (
        proptest::collection::vec((name, value), 0..6),
        any::<bool>(),
        proptest::bool::weighted(0.1),
        damage,
    )
        .prop_map(|(members, spaced, wrapped, damage)| {
            let (sep, colon) = if spaced { (",\n  ", " : ") } else { (",", ":") };
            let members: Vec<String> = members
                .iter()
                .map(|(name, value)| {
                    let value = match spaced {
                        true => serde_json::to_string_pretty(value).unwrap(),
                        false => value.to_string(),
                    };
                    format!("{}{colon}{value}", Value::from(name.as_str()))
                })
                .collect();
            let object = format!("{{{}}}", members.join(sep));
            let mut text = match wrapped {
                true => format!("[{object}]").into_bytes(),
                false => object.into_bytes(),
            };
            match damage {
                Damage::None => {}
                Damage::Truncated(at) => text.truncate(at.index(text.len())),
                Damage::Replaced(at, byte) => {
                    let at = at.index(text.len());
                    text[at] = byte;
                }
            }
            text
        })
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
