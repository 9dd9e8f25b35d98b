//! A request's origin as the host compares it ([`Origin`]): scheme, host
//! normalised, port made explicit. The agent's egress policy
//! ([`crate::egress`]) and the injection rules ([`crate::inject`]) both
//! match on it, so that a name spelled otherwise (upper case, a trailing
//! dot, an IPv4 literal in another form) is the same name to both.

use std::net::{Ipv4Addr, Ipv6Addr};

use hyper::Uri;

/// The longest host name: DNS's 253 characters (without the trailing dot).
pub(crate) const MAX_HOST_LEN: usize = 253;

/// A host as compared: lower-cased, without a trailing dot; an IP literal in
/// its canonical text (IPv6 in brackets). `None` for what is not a host: a
/// name longer than DNS allows ([`MAX_HOST_LEN`]) among them, so that no
/// longer one costs more to check.
pub(crate) fn normal_host(host: &str) -> Option<String> {
    if host.strip_suffix('.').unwrap_or(host).len() > MAX_HOST_LEN {
        return None;
    }
    let host = host.to_ascii_lowercase();
    if let Some(inner) = host.strip_prefix('[') {
        let ip: Ipv6Addr = inner.strip_suffix(']')?.parse().ok()?;
        return Some(format!("[{ip}]"));
    }
    let host = host.strip_suffix('.').unwrap_or(&host);
    if host.is_empty() || host.bytes().any(|b| matches!(b, b'/' | b'@' | b'[' | b']')) {
        return None;
    }
    Some(match host.parse::<Ipv4Addr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host.to_string(),
    })
}

/// The default port of `scheme` (`http`, `https`), `None` for any other.
#[cfg(feature = "agent")]
pub(crate) fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// The IP address a normalised host names literally, if it does.
#[cfg(feature = "agent")]
pub(crate) fn literal_ip(host: &str) -> Option<std::net::IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

/// A request's origin: scheme, normalised host, port (made explicit).
#[cfg(feature = "agent")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: String,
    /// Lower-cased, no trailing dot, IP literals canonical (IPv6 in brackets).
    pub host: String,
    /// The URI's port, or the scheme's default.
    pub port: u16,
}

#[cfg(feature = "agent")]
impl Origin {
    /// The origin of `uri`; `None` without an http(s) scheme and a usable host.
    pub fn of(uri: &Uri) -> Option<Origin> {
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let port = uri.port_u16().or(default_port(&scheme))?;
        default_port(&scheme)?;
        let host = normal_host(uri.host()?)?;
        Some(Origin { scheme, host, port })
    }
}

#[cfg(feature = "agent")]
impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// `scheme://host[:port]` of a request, as errors, the record of denied
/// requests and the logs show it: never the user-info, path or query.
pub(crate) fn shown(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("");
    let host = uri.host().unwrap_or("");
    match uri.port_u16() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalised_and_overlong_ones_are_not_hosts() {
        assert_eq!(normal_host("Example.COM.").as_deref(), Some("example.com"));
        assert_eq!(
            normal_host("[::FFFF:7f00:1]").as_deref(),
            Some("[::ffff:127.0.0.1]")
        );
        assert_eq!(normal_host("a@b"), None);
        assert_eq!(normal_host(""), None);
        let longest = vec!["a".repeat(63); 4].join(".")[..MAX_HOST_LEN].to_string();
        assert!(normal_host(&longest).is_some());
        assert!(
            normal_host(&format!("{longest}.")).is_some(),
            "a trailing dot"
        );
        assert_eq!(normal_host(&format!("{longest}a")), None);
        assert_eq!(normal_host(&"a".repeat(4096)), None);
    }
}
