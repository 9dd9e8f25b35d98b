//! Options + environment -> validated settings.

use std::time::Duration;

use crate::{AudienceMap, CredentialError};

/// Environment variable naming the broker's base URL.
pub const ENV_BROKER_URL: &str = "VD_CREDENTIAL_BROKER_URL";
/// Environment variable naming the bearer file.
pub const ENV_CREDENTIAL_FILE: &str = "VD_CREDENTIAL_FILE";
/// Environment variable naming the lane (0.2 protocol): `user` or `service`.
pub const ENV_LANE: &str = "VD_CREDENTIAL_LANE";
/// Environment variable naming the configuration revision (0.2 protocol).
pub const ENV_CONFIGURATION_REVISION: &str = "VD_CREDENTIAL_CONFIGURATION_REVISION";
/// Environment variable naming the runtime-access helper's URL, as the host
/// exposes it to the component (the host routes it to the helper's socket).
pub const ENV_RUNTIME_ACCESS_URL: &str = "VD_RUNTIME_ACCESS_URL";
/// The original's timeout: 10 seconds.
pub const DEFAULT_TIMEOUT_MS: u32 = 10_000;

/// What the caller may set; `None` falls back to the environment, then the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Broker base URL (env `VD_CREDENTIAL_BROKER_URL`).
    pub broker_url: Option<String>,
    /// Bearer file path (env `VD_CREDENTIAL_FILE`).
    pub credential_file: Option<String>,
    /// Bound on a whole call in ms (default 10000).
    pub timeout_ms: Option<u32>,
    /// `(resource, audience)` pairs merged over the defaults.
    pub audience_map: Vec<(String, String)>,
    /// Allow plain http to a non-loopback host.
    pub allow_insecure_http: bool,
    /// Mint on every call, as the original does (no token cache).
    pub disable_cache: bool,
    /// Lane, `user` or `service` (env `VD_CREDENTIAL_LANE`); with a revision, selects protocol 0.2.
    pub lane: Option<String>,
    /// Configuration revision (env `VD_CREDENTIAL_CONFIGURATION_REVISION`).
    pub configuration_revision: Option<u64>,
    /// Runtime-access helper URL (env `VD_RUNTIME_ACCESS_URL`); selects helper mode.
    pub runtime_access_url: Option<String>,
}

/// Where tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The bearer file, exchanged at `POST {broker_url}/token`.
    Broker {
        /// Broker base URL, trailing `/` removed.
        broker_url: String,
        /// Bearer file path, as the component sees it.
        credential_file: String,
    },
    /// The runtime-access helper, `POST {helper_url}/v1/credentials`; it holds
    /// the bearer, so the component never reads one.
    Helper {
        /// Helper base URL, trailing `/` removed.
        helper_url: String,
    },
}

/// The broker protocol version, decided at token time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// 0.1: the body is `{"audience"}` only.
    V0_1,
    /// 0.2: the body also carries the scope class, lane and revision.
    V0_2 {
        /// `user` or `service`.
        lane: &'static str,
        /// The configuration revision.
        revision: u64,
    },
}

/// Everything a credential needs, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Broker or helper.
    pub mode: Mode,
    /// Bound on one whole `get-token` call.
    pub timeout: Duration,
    /// Resource -> audience.
    pub audiences: AudienceMap,
    /// The lane as given (checked at token time).
    pub lane: Option<String>,
    /// The configuration revision as given (checked at token time).
    pub configuration_revision: Option<String>,
}

impl Settings {
    /// Resolve `options` over the environment (`env` looks a variable up) and
    /// validate the result. With a runtime-access helper URL the credential is
    /// in helper mode and needs nothing else; otherwise both the broker URL and
    /// the bearer file are required.
    pub fn resolve(
        options: &Options,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, CredentialError> {
        let helper = options
            .runtime_access_url
            .clone()
            .or_else(|| env(ENV_RUNTIME_ACCESS_URL));
        let mode = match helper {
            Some(_) => {
                let url = required(
                    &options.runtime_access_url,
                    "runtime-access-url",
                    ENV_RUNTIME_ACCESS_URL,
                    &env,
                )?;
                Mode::Helper {
                    helper_url: validate_helper_url(&url, options.allow_insecure_http)?,
                }
            }
            None => {
                let broker_url = required(&options.broker_url, "broker-url", ENV_BROKER_URL, &env)?;
                Mode::Broker {
                    broker_url: validate_broker_url(&broker_url, options.allow_insecure_http)?,
                    credential_file: required(
                        &options.credential_file,
                        "credential-file",
                        ENV_CREDENTIAL_FILE,
                        &env,
                    )?,
                }
            }
        };
        let timeout_ms = options.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if timeout_ms == 0 {
            return Err(CredentialError::Configuration(
                "the timeout-ms option is 0: give a positive number of milliseconds, or leave it unset for 10000"
                    .into(),
            ));
        }
        Ok(Settings {
            mode,
            timeout: Duration::from_millis(timeout_ms.into()),
            audiences: AudienceMap::with_overrides(&options.audience_map)?,
            lane: options.lane.clone().or_else(|| env(ENV_LANE)),
            configuration_revision: options
                .configuration_revision
                .map(|r| r.to_string())
                .or_else(|| env(ENV_CONFIGURATION_REVISION)),
        })
    }

    /// The mint request's URL: `{broker}/token` or `{helper}/v1/credentials`.
    pub fn token_url(&self) -> String {
        match &self.mode {
            Mode::Broker { broker_url, .. } => format!("{broker_url}/token"),
            Mode::Helper { helper_url } => format!("{helper_url}/v1/credentials"),
        }
    }

    /// The broker protocol: 0.1 when neither lane nor revision is set, else
    /// 0.2 with both required and valid. Checked at token time, before any
    /// request, so a bad value names its variable.
    pub fn protocol(&self) -> Result<Protocol, CredentialError> {
        let (lane, revision) = match (&self.lane, &self.configuration_revision) {
            (None, None) => return Ok(Protocol::V0_1),
            (lane, revision) => (
                lane.as_deref().map(str::trim),
                revision.as_deref().map(str::trim),
            ),
        };
        let lane = match lane {
            Some("user") => "user",
            Some("service") => "service",
            Some(other) => {
                return Err(CredentialError::Configuration(format!(
                    "{ENV_LANE} (or the lane option) is {other:?}: it must be \"user\" or \"service\""
                )));
            }
            None => {
                return Err(CredentialError::Configuration(format!(
                    "{ENV_CONFIGURATION_REVISION} is set but {ENV_LANE} is not: set {ENV_LANE} to \"user\" \
                     or \"service\" (or unset both to speak protocol 0.1)"
                )));
            }
        };
        let revision = match revision {
            Some(r) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()) => {
                r.parse().map_err(|_| {
                    CredentialError::Configuration(format!(
                        "{ENV_CONFIGURATION_REVISION} {r:?} is too large"
                    ))
                })?
            }
            Some(r) => {
                return Err(CredentialError::Configuration(format!(
                    "{ENV_CONFIGURATION_REVISION} (or the configuration-revision option) is {r:?}: it must be \
                     a non-negative whole number such as \"7\""
                )));
            }
            None => {
                return Err(CredentialError::Configuration(format!(
                    "{ENV_LANE} is set but {ENV_CONFIGURATION_REVISION} is not: set it to a non-negative whole \
                     number such as \"7\" (or unset both to speak protocol 0.1)"
                )));
            }
        };
        Ok(Protocol::V0_2 { lane, revision })
    }
}

/// The option if given, else the environment variable; trimmed, non-empty.
fn required(
    option: &Option<String>,
    option_name: &str,
    var: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, CredentialError> {
    let (value, source) = match option {
        Some(v) => (v.clone(), format!("the {option_name} option")),
        None => match env(var) {
            Some(v) => (v, format!("the environment variable {var}")),
            None => {
                return Err(CredentialError::Configuration(format!(
                    "{var} is not set and no {option_name} option was given: set {var} in the \
                     component's environment (Studio sets it in agent containers) or pass {option_name}"
                )));
            }
        },
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(CredentialError::Configuration(format!(
            "{source} is empty: set it to a non-empty value ({var})"
        )));
    }
    Ok(value.to_string())
}

/// Hosts that may be reached over plain http: the bearer never leaves the machine
/// (or, for `host.docker.internal`, the container host Studio runs on).
fn is_local_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.eq_ignore_ascii_case("host.docker.internal")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Check a broker base URL and strip its trailing `/`.
///
/// It must be an absolute `http` or `https` URL with a host and no user-info,
/// query or fragment; plain `http` only to a local host unless
/// `allow_insecure_http`.
pub fn validate_broker_url(
    raw: &str,
    allow_insecure_http: bool,
) -> Result<String, CredentialError> {
    validate_url(
        raw,
        &UrlRules {
            what: "the broker URL",
            names: "VD_CREDENTIAL_BROKER_URL or broker-url",
            example: "http://host.docker.internal:8080/api/v1/credential-broker",
            exposes: "the bearer",
            local_http: is_local_host,
            allow_insecure_http,
        },
    )
}

/// Check a runtime-access helper URL and strip its trailing `/`: the origin
/// the host routes to the helper's socket (`http://runtime-access`), a
/// loopback `http` URL, or `https`; another plain `http` host only with
/// `allow_insecure_http` (the minted token would come back in clear text).
pub fn validate_helper_url(
    raw: &str,
    allow_insecure_http: bool,
) -> Result<String, CredentialError> {
    validate_url(
        raw,
        &UrlRules {
            what: "the runtime-access helper URL",
            names: "VD_RUNTIME_ACCESS_URL or runtime-access-url",
            example: "http://runtime-access",
            exposes: "the minted token",
            local_http: |host| {
                host.eq_ignore_ascii_case("runtime-access")
                    || host.eq_ignore_ascii_case("localhost")
                    || host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            },
            allow_insecure_http,
        },
    )
}

/// What a URL setting is called, and where plain `http` may go.
struct UrlRules {
    what: &'static str,
    names: &'static str,
    example: &'static str,
    /// What plain http would expose.
    exposes: &'static str,
    local_http: fn(&str) -> bool,
    allow_insecure_http: bool,
}

/// `raw` as an error quotes it: a user-info, query or fragment (where
/// credentials and signatures go) replaced by `...`, so that the message can
/// be logged. Everything up to the last `@` before the query is user-info
/// (a password may hold a `/`).
fn shown_url(raw: &str) -> String {
    let (head, tail) = match raw.find(['?', '#']) {
        Some(i) => (&raw[..i], &raw[i..=i]),
        None => (raw, ""),
    };
    let start = head.find("://").map_or(0, |i| i + 3);
    let mut shown = match head[start..].rfind('@') {
        Some(at) => format!("{}...{}", &head[..start], &head[start + at..]),
        None => head.to_string(),
    };
    if !tail.is_empty() {
        shown.push_str(tail);
        shown.push_str("...");
    }
    shown
}

fn validate_url(raw: &str, rules: &UrlRules) -> Result<String, CredentialError> {
    let bad = |why: &str| {
        CredentialError::Configuration(format!(
            "{} {:?} ({}) {why}; expected e.g. \"{}\"",
            rules.what,
            shown_url(raw),
            rules.names,
            rules.example
        ))
    };
    let url = raw.trim().trim_end_matches('/');
    if url.contains('#') {
        return Err(bad("has a fragment (#...)"));
    }
    if url.contains('?') {
        return Err(bad("has a query (?...)"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains whitespace or control characters"));
    }
    if !raw.contains("://") {
        return Err(bad("is not absolute (no http:// or https://)"));
    }
    let uri: http::Uri = url.parse().map_err(|_| bad("is not a valid URL"))?;
    // With "://" present, a URL without a scheme once parsed had nothing
    // after it ("https://" trims to "https:").
    let scheme = uri.scheme_str().ok_or_else(|| bad("has no host"))?;
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "has user-info (user@host); put no credentials in the URL",
        ));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "https" => {}
        "http" if rules.allow_insecure_http || (rules.local_http)(host) => {}
        "http" => {
            return Err(bad(&format!(
                "uses plain http to a non-local host, so {} would cross the network in clear \
                 text; use https, or set allow-insecure-http if the network is trusted",
                rules.exposes
            )));
        }
        _ => return Err(bad("must use http or https")),
    }
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const URL: &str = "http://127.0.0.1:9/api/v1/credential-broker";

    #[test]
    fn a_quoted_url_shows_no_user_info_query_or_fragment() {
        for (raw, shown) in [
            ("https://b.example/api", "https://b.example/api"),
            ("https://user:pw@b.example/api", "https://...@b.example/api"),
            (
                "https://user:pa/ss@b.example/api",
                "https://...@b.example/api",
            ),
            ("user:pw@b.example/api", "...@b.example/api"),
            (
                "https://b.example/api?sig=AAA BBB",
                "https://b.example/api?...",
            ),
            (
                "https://u:p@b.example/api#frag?x",
                "https://...@b.example/api#...",
            ),
        ] {
            assert_eq!(shown_url(raw), shown, "{raw}");
        }
        let e = validate_broker_url("https://user:s3cr3t@b.example/x?sig=SIG", false).unwrap_err();
        for secret in ["user", "s3cr3t", "SIG"] {
            assert!(!e.to_string().contains(secret), "{e}");
        }
    }

    #[test]
    fn environment_then_options_win() {
        let e = env(&[
            (ENV_BROKER_URL, "http://localhost:1/b/"),
            (ENV_CREDENTIAL_FILE, "/run/vd/credential"),
        ]);
        let s = Settings::resolve(&Options::default(), &e).unwrap();
        assert_eq!(
            s.mode,
            Mode::Broker {
                broker_url: "http://localhost:1/b".into(),
                credential_file: "/run/vd/credential".into()
            }
        );
        assert_eq!(s.token_url(), "http://localhost:1/b/token");
        assert_eq!(s.timeout, Duration::from_secs(10));

        let o = Options {
            broker_url: Some(URL.into()),
            credential_file: Some("/other".into()),
            timeout_ms: Some(250),
            ..Default::default()
        };
        let s = Settings::resolve(&o, &e).unwrap();
        assert_eq!(
            s.mode,
            Mode::Broker {
                broker_url: URL.into(),
                credential_file: "/other".into()
            }
        );
        assert_eq!(s.timeout, Duration::from_millis(250));
    }

    #[test]
    fn missing_settings_name_the_variable() {
        let err = Settings::resolve(&Options::default(), env(&[(ENV_CREDENTIAL_FILE, "/f")]))
            .unwrap_err();
        assert!(
            matches!(err, CredentialError::Configuration(ref m) if m.contains(ENV_BROKER_URL)),
            "{err}"
        );
        let err =
            Settings::resolve(&Options::default(), env(&[(ENV_BROKER_URL, URL)])).unwrap_err();
        assert!(
            matches!(err, CredentialError::Configuration(ref m) if m.contains(ENV_CREDENTIAL_FILE)),
            "{err}"
        );
        let err = Settings::resolve(
            &Options::default(),
            env(&[(ENV_BROKER_URL, URL), (ENV_CREDENTIAL_FILE, "  ")]),
        )
        .unwrap_err();
        assert!(
            matches!(err, CredentialError::Configuration(ref m) if m.contains(ENV_CREDENTIAL_FILE) && m.contains("empty")),
            "{err}"
        );
    }

    #[test]
    fn zero_timeout_is_refused() {
        let o = Options {
            timeout_ms: Some(0),
            ..Default::default()
        };
        let err = Settings::resolve(
            &o,
            env(&[(ENV_BROKER_URL, URL), (ENV_CREDENTIAL_FILE, "/f")]),
        )
        .unwrap_err();
        assert!(matches!(err, CredentialError::Configuration(ref m) if m.contains("timeout-ms")));
    }

    #[test]
    fn helper_urls_are_the_routed_origin_loopback_or_https() {
        for ok in [
            "http://runtime-access",
            "http://runtime-access/base/",
            "http://127.0.0.1:9000",
            "http://[::1]:9000",
            "http://localhost:9000",
            "https://helper.example.com",
        ] {
            assert!(validate_helper_url(ok, false).is_ok(), "{ok}");
        }
        assert_eq!(
            validate_helper_url("http://10.0.0.5:8080", false),
            Err(CredentialError::Configuration(
                "the runtime-access helper URL \"http://10.0.0.5:8080\" (VD_RUNTIME_ACCESS_URL or \
                 runtime-access-url) uses plain http to a non-local host, so the minted token would \
                 cross the network in clear text; use https, or set allow-insecure-http if the \
                 network is trusted; expected e.g. \"http://runtime-access\""
                    .into()
            ))
        );
        // host.docker.internal is local for the broker, not for the helper.
        assert!(validate_helper_url("http://host.docker.internal:1", false).is_err());
        assert!(validate_helper_url("http://10.0.0.5:8080", true).is_ok());
        let e = env(&[(ENV_RUNTIME_ACCESS_URL, "http://helper.example.com")]);
        let err = Settings::resolve(&Options::default(), &e).unwrap_err();
        assert!(err.to_string().contains("VD_RUNTIME_ACCESS_URL"), "{err}");
        let opted_in = Options {
            allow_insecure_http: true,
            ..Options::default()
        };
        assert!(Settings::resolve(&opted_in, &e).is_ok());
    }

    #[test]
    fn helper_mode_needs_nothing_else() {
        let s = Settings::resolve(
            &Options::default(),
            env(&[(ENV_RUNTIME_ACCESS_URL, "http://runtime-access/")]),
        )
        .unwrap();
        assert_eq!(
            s.mode,
            Mode::Helper {
                helper_url: "http://runtime-access".into()
            }
        );
        assert_eq!(s.token_url(), "http://runtime-access/v1/credentials");
        let o = Options {
            runtime_access_url: Some("https://helper.example.com".into()),
            ..Default::default()
        };
        let s = Settings::resolve(
            &o,
            env(&[(ENV_BROKER_URL, URL), (ENV_CREDENTIAL_FILE, "/f")]),
        )
        .unwrap();
        assert!(
            matches!(s.mode, Mode::Helper { .. }),
            "the helper wins when configured"
        );
    }

    #[test]
    fn protocol_version_from_lane_and_revision() {
        let base = [(ENV_BROKER_URL, URL), (ENV_CREDENTIAL_FILE, "/f")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let all: Vec<(&str, &str)> = base.iter().chain(extra).copied().collect();
            Settings::resolve(&Options::default(), env(&all))
                .unwrap()
                .protocol()
        };
        assert_eq!(with(&[]), Ok(Protocol::V0_1));
        assert_eq!(
            with(&[(ENV_LANE, "service"), (ENV_CONFIGURATION_REVISION, "7")]),
            Ok(Protocol::V0_2 {
                lane: "service",
                revision: 7
            })
        );
        for (extra, names) in [
            (vec![(ENV_LANE, "user")], ENV_CONFIGURATION_REVISION),
            (vec![(ENV_CONFIGURATION_REVISION, "7")], ENV_LANE),
            (
                vec![(ENV_LANE, "admin"), (ENV_CONFIGURATION_REVISION, "7")],
                ENV_LANE,
            ),
            (
                vec![(ENV_LANE, "User"), (ENV_CONFIGURATION_REVISION, "7")],
                ENV_LANE,
            ),
            (
                vec![(ENV_LANE, "user"), (ENV_CONFIGURATION_REVISION, "-1")],
                ENV_CONFIGURATION_REVISION,
            ),
            (
                vec![(ENV_LANE, "user"), (ENV_CONFIGURATION_REVISION, "7.0")],
                ENV_CONFIGURATION_REVISION,
            ),
            (
                vec![(ENV_LANE, "user"), (ENV_CONFIGURATION_REVISION, "")],
                ENV_CONFIGURATION_REVISION,
            ),
            (
                vec![
                    (ENV_LANE, "user"),
                    (ENV_CONFIGURATION_REVISION, "99999999999999999999999"),
                ],
                ENV_CONFIGURATION_REVISION,
            ),
        ] {
            let err = with(&extra).unwrap_err();
            assert!(
                matches!(err, CredentialError::Configuration(ref m) if m.contains(names)),
                "{extra:?}: {err}"
            );
        }
        let o = Options {
            lane: Some("user".into()),
            configuration_revision: Some(0),
            ..Default::default()
        };
        let s = Settings::resolve(&o, env(&base)).unwrap();
        assert_eq!(
            s.protocol(),
            Ok(Protocol::V0_2 {
                lane: "user",
                revision: 0
            })
        );
    }

    #[test]
    fn broker_url_rules() {
        for ok in [
            "http://127.0.0.1:8080/api",
            "http://127.1.2.3/",
            "http://localhost:1",
            "http://LOCALHOST:1",
            "http://host.docker.internal:5000/api/v1/credential-broker",
            "http://[::1]:80/x",
            "https://broker.example.com/api",
            "HTTPS://broker.example.com",
        ] {
            assert!(validate_broker_url(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "broker.example.com",
            "/api/v1",
            "ftp://localhost/x",
            "http://broker.example.com/api",
            "http://10.0.0.1/api",
            "https://user:pw@broker.example.com",
            "https://broker.example.com/api?x=1",
            "https://broker.example.com/api#frag",
            "https:///nohost",
            "http://local host/",
            "",
        ] {
            assert!(
                matches!(
                    validate_broker_url(bad, false),
                    Err(CredentialError::Configuration(_))
                ),
                "{bad}"
            );
        }
        assert!(validate_broker_url("http://broker.example.com/api", true).is_ok());
    }
}
