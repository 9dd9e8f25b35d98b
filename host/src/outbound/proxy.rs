//! Which requests go through an HTTP proxy, decided as `requests` (2.34,
//! over Python's `urllib`) decides it, so the host goes out the way the
//! original credential did: [`Proxies`].
//!
//! The proxy for a request is the one for its scheme (`https_proxy` for
//! https, `http_proxy` for http), else `all_proxy`, unless `no_proxy` says
//! to connect directly. From the environment ([`Proxies::from_env`]), each
//! of `http_proxy`, `https_proxy`, `all_proxy` and `no_proxy` is read as
//! `urllib.request.getproxies_environment` reads it: the lower-case
//! variable wins when it is set (an empty one means none, even with the
//! upper-case one set), else the upper-case one when not empty; with
//! `REQUEST_METHOD` set (a CGI script), upper-case `HTTP_PROXY` is ignored.
//!
//! `no_proxy` is a comma-separated list, matched against the destination's
//! host name twice, as `requests.utils.should_bypass_proxies` does (a match
//! in either connects directly):
//!
//! - `requests`' own check, on `no_proxy` (else `NO_PROXY`) with spaces
//!   removed: for an IPv4 host (any form `inet_aton` takes, `127.1` too),
//!   an entry equal to it or a CIDR (`10.0.0.0/8`, mask 1 to 32) holding
//!   it; for any other host, an entry (leading dots removed) equal to the
//!   host or to `host:port` (the port only when the URL writes one), or a
//!   domain suffix of either (`example.com` and `.example.com` both match
//!   `a.example.com`, not `badexample.com`). Entries are compared as
//!   written here (the next check ignores case).
//! - `urllib`'s `proxy_bypass_environment`, on its `no` value: exactly `*`
//!   bypasses everything (`*` in a list does not); otherwise each entry,
//!   stripped, leading dots removed, lower-cased, equal to the host or a
//!   domain suffix of it (so `0.1` matches `127.0.0.1`, as in Python).
//!
//! Nothing else is special: loopback and `localhost` go through the proxy
//! unless listed, as with `requests`.
//!
//! A proxy URL without a scheme is read as `http://` when it does not start
//! with something `urllib3` takes for a scheme (`127.0.0.1:3128` does;
//! `proxy:3128` is read as the scheme `proxy` and fails, as in `requests`).
//! The port defaults to 80. `user:password@` in it gives a
//! `Proxy-Authorization: Basic` header (percent-decoded, sent only when both
//! are present, as `requests` does); the credentials are never shown: a
//! proxy is displayed as `scheme://host:port`. Nothing before an `@` is
//! ever shown: a URL with an `@` past its authority (`http://user:pa/ss@host`,
//! where urllib3 ends the authority at the `/` and reads the host `user`,
//! the port `pa`) or an `@` without `scheme://` in front (`user:pw@host`,
//! whose scheme urllib3 reads as `user`) is refused, shown as
//! `<unparsable proxy URL>` (`requests` refuses most of these too; it
//! would read `http://user:1234/x@host` as the host `user`, port 1234).
//! Only `http://` proxies are
//! supported; an `https://` or `socks*://` proxy (which `requests` can use
//! with urllib3 / PySocks) fails the requests it would carry, with an error
//! saying so. A bad proxy URL read from the environment fails only the
//! requests that would use it, as in `requests`.

use std::sync::Arc;

use anyhow::{Result, bail};

/// How a proxy URL that cannot be read safely is shown: never any of it,
/// since a password may be anywhere in it.
const UNPARSABLE: &str = "<unparsable proxy URL>";

/// The environment variables [`Proxies::from_env`] reads.
pub const ENV_PROXY_VARS: [&str; 9] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "REQUEST_METHOD",
];

/// Proxy credentials: the `Proxy-Authorization` value. Never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyCredentials(Arc<str>);

impl ProxyCredentials {
    /// The header value, `Basic <base64(user:password)>`.
    pub fn header_value(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ProxyCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyCredentials(<redacted>)")
    }
}

/// One proxy, as configured: where it is, or why it cannot be used.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// `http://host:port` (or the URL as written, without user-info, when
    /// it did not parse).
    shown: String,
    /// The environment variable it came from, if it did.
    source: Option<&'static str>,
    /// Host (IPv6 in brackets, lower-cased) and port, or why not usable.
    target: std::result::Result<(String, u16), String>,
    credentials: Option<ProxyCredentials>,
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyUrl")
            .field("url", &self.shown)
            .field("source", &self.source)
            .field("usable", &self.target.as_ref().map(|_| ()))
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl std::fmt::Display for ProxyUrl {
    /// `http://host:port`, never the credentials; `(HTTPS_PROXY)` after it
    /// when it came from the environment.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)?;
        if let Some(var) = self.source {
            write!(f, " ({var})")?;
        }
        Ok(())
    }
}

impl ProxyUrl {
    /// Read `value` as `requests` reads a proxy URL; problems are kept, to
    /// fail the requests that would use it.
    pub(crate) fn read(value: &str, source: Option<&'static str>) -> ProxyUrl {
        let value = value.trim();
        let what = match source {
            Some(var) => var.to_string(),
            None => "the proxy URL".to_string(),
        };
        let mut proxy = ProxyUrl {
            shown: UNPARSABLE.to_string(),
            source,
            target: Err(String::new()),
            credentials: None,
        };
        // urllib3's `_SCHEME_RE`: otherwise `//` is put in front.
        let scheme_end = value.find(':').filter(|&i| {
            let s = &value[..i];
            s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-')
        });
        let (scheme, slashes, rest) = match scheme_end {
            Some(i) => {
                let after = &value[i + 1..];
                let rest = after.strip_prefix("//");
                (
                    value[..i].to_ascii_lowercase(),
                    rest.is_some(),
                    rest.unwrap_or(after),
                )
            }
            None => (
                "http".to_string(),
                true,
                value.strip_prefix("//").unwrap_or(value),
            ),
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        // With an `@` anywhere, nothing before the last `@` is ever shown
        // (it may be a password): only a URL whose user-info is all in its
        // authority is shown, as `scheme://host[:port]`.
        if value.contains('@') {
            if !slashes && scheme != "http" {
                // `user:password@host`: urllib3 takes the user name for
                // the scheme.
                proxy.target = Err(format!(
                    "it has an `@` (a user name or password) but does not start with http:// \
                     (without it, Python's requests reads the text before the first `:` as the \
                     scheme): write http://user:password@host:port in {what}"
                ));
                return proxy;
            }
            if rest[authority_end..].contains('@') {
                // urllib3 ends the authority at the first `/`, `?` or `#`,
                // so the password's end is read as a path (and what is
                // before it as the host): refused rather than guessed.
                proxy.target = Err(format!(
                    "an `@` comes after a `/`, `?` or `#`, so the user name or password cannot \
                     be told apart from the host: percent-encode `/`, `?`, `#` and `@` in them \
                     (%2F, %3F, %23, %40) in {what}"
                ));
                return proxy;
            }
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        proxy.shown = format!("{scheme}://{}", hostport.to_ascii_lowercase());
        if scheme != "http" {
            let why = match scheme.as_str() {
                "https" => "an https:// proxy (TLS to the proxy) is not supported by this host: \
                            use the proxy's http:// address"
                    .to_string(),
                s if s.starts_with("socks") => "a SOCKS proxy is not supported by this host: \
                                                use an http:// (CONNECT) proxy"
                    .to_string(),
                s => format!(
                    "the scheme {s:?} is not a proxy scheme (a host:port without http:// in \
                     front is read this way, as Python's requests reads it): write \
                     http://host:port in {what}"
                ),
            };
            proxy.target = Err(why);
            return proxy;
        }
        proxy.target = parse_host_port(hostport)
            .map(|(host, port)| {
                proxy.shown = format!("http://{host}:{port}");
                (host, port)
            })
            .ok_or_else(|| format!("it has no usable host[:port]: fix {what}"));
        if let Some(userinfo) = userinfo
            && let Some((user, password)) = userinfo.split_once(':')
        {
            let (user, password) = (percent_decode(user), percent_decode(password));
            if !user.is_empty() {
                match basic(&user, &password) {
                    Some(value) => proxy.credentials = Some(ProxyCredentials(value.into())),
                    None => {
                        proxy.target = Err(format!(
                            "its user name or password is not Latin-1 text once \
                             percent-decoded: fix {what}"
                        ))
                    }
                }
            }
        }
        proxy
    }

    /// Where to connect: host (IPv6 in brackets) and port, or why this
    /// proxy cannot be used (the message names it, never its credentials).
    pub fn address(&self) -> std::result::Result<(&str, u16), String> {
        match &self.target {
            Ok((host, port)) => Ok((host, *port)),
            Err(why) => Err(format!("the proxy {self} cannot be used: {why}")),
        }
    }

    /// The `Proxy-Authorization` value, when the URL carries credentials.
    pub fn credentials(&self) -> Option<&ProxyCredentials> {
        self.credentials.as_ref()
    }

    /// The environment variable it was read from.
    pub fn source(&self) -> Option<&'static str> {
        self.source
    }

    /// Where it is configured, for messages: `HTTPS_PROXY`, or "the host's
    /// proxy settings".
    pub fn configured_in(&self) -> &'static str {
        self.source.unwrap_or("the host's proxy settings")
    }
}

/// The proxies a host sends through, and the hosts it does not send
/// through them. See the [module documentation](self).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Proxies {
    http: Option<ProxyUrl>,
    https: Option<ProxyUrl>,
    all: Option<ProxyUrl>,
    /// The list `requests` checks itself (`no_proxy` or `NO_PROXY`).
    no_proxy_requests: Option<String>,
    /// `urllib`'s `no` proxy value, checked by `proxy_bypass_environment`.
    no_proxy_urllib: Option<String>,
}

impl Proxies {
    /// No proxy: every request goes directly.
    pub fn none() -> Self {
        Self::default()
    }

    /// The proxies the environment `env` names, as `requests` reads them
    /// (see the [module documentation](self)); reads [`ENV_PROXY_VARS`].
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Self {
        // Each variable read once.
        let read: Vec<(&str, Option<String>)> =
            ENV_PROXY_VARS.iter().map(|&var| (var, env(var))).collect();
        let env = |name: &str| {
            read.iter()
                .find(|(var, _)| *var == name)
                .and_then(|(_, v)| v.clone())
        };
        let cgi = env("REQUEST_METHOD").is_some();
        // urllib's two passes: upper case (not HTTP_PROXY in a CGI script),
        // then lower case, whose empty value removes the entry.
        let value = |lower: &'static str, upper: &'static str| {
            let upper_value = env(upper)
                .filter(|v| !v.is_empty())
                .filter(|_| !(cgi && upper == "HTTP_PROXY"));
            match env(lower) {
                Some(v) if v.is_empty() => None,
                Some(v) => Some((lower, v)),
                None => upper_value.map(|v| (upper, v)),
            }
        };
        let proxy =
            |lower, upper| value(lower, upper).map(|(var, v)| ProxyUrl::read(&v, Some(var)));
        Proxies {
            http: proxy("http_proxy", "HTTP_PROXY"),
            https: proxy("https_proxy", "HTTPS_PROXY"),
            all: proxy("all_proxy", "ALL_PROXY"),
            no_proxy_requests: env("no_proxy")
                .filter(|v| !v.is_empty())
                .or_else(|| env("NO_PROXY"))
                .filter(|v| !v.is_empty()),
            no_proxy_urllib: value("no_proxy", "NO_PROXY").map(|(_, v)| v),
        }
    }

    fn checked(url: &str) -> Result<ProxyUrl> {
        let proxy = ProxyUrl::read(url, None);
        if let Err(why) = proxy.address() {
            bail!("{why}");
        }
        Ok(proxy)
    }

    /// Send http requests through the proxy at `url` (`http://[user:password@]host[:port]`).
    pub fn http(mut self, url: &str) -> Result<Self> {
        self.http = Some(Self::checked(url)?);
        Ok(self)
    }

    /// Tunnel https requests through the proxy at `url` (HTTP CONNECT).
    pub fn https(mut self, url: &str) -> Result<Self> {
        self.https = Some(Self::checked(url)?);
        Ok(self)
    }

    /// Use the proxy at `url` for any scheme without a proxy of its own.
    pub fn all(mut self, url: &str) -> Result<Self> {
        self.all = Some(Self::checked(url)?);
        Ok(self)
    }

    /// Connect directly to the hosts `list` names (comma-separated, as
    /// `NO_PROXY`).
    pub fn no_proxy(mut self, list: &str) -> Self {
        self.no_proxy_requests = Some(list.to_string()).filter(|l| !l.is_empty());
        self.no_proxy_urllib = self.no_proxy_requests.clone();
        self
    }

    /// Whether no proxy is configured at all.
    pub fn is_empty(&self) -> bool {
        self.http.is_none() && self.https.is_none() && self.all.is_none()
    }

    /// The proxy a request to `scheme://host[:port]` goes through, `None`
    /// to connect directly. `host` as in a URI (IPv6 in brackets); `port`
    /// only when the URL writes one.
    pub fn proxy_for(&self, scheme: &str, host: &str, port: Option<u16>) -> Option<&ProxyUrl> {
        if self.is_empty() || self.bypass(host, port) {
            return None;
        }
        let own = match scheme.to_ascii_lowercase().as_str() {
            "http" => self.http.as_ref(),
            "https" => self.https.as_ref(),
            _ => None,
        };
        own.or(self.all.as_ref())
    }

    /// `requests.utils.should_bypass_proxies` for this host.
    fn bypass(&self, host: &str, port: Option<u16>) -> bool {
        let hostname = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_lowercase();
        if let Some(list) = &self.no_proxy_requests {
            let list = list.replace(' ', "");
            let entries = list.split(',').filter(|e| !e.is_empty());
            if let Some(ip) = inet_aton(&hostname) {
                for entry in entries {
                    if is_valid_cidr(entry) {
                        if in_network(ip, entry) {
                            return true;
                        }
                    } else if hostname == entry {
                        return true;
                    }
                }
            } else {
                let with_port = match port {
                    Some(p) if p != 0 => format!("{hostname}:{p}"),
                    _ => hostname.clone(),
                };
                for entry in entries {
                    let entry = entry.trim_start_matches('.');
                    if hostname == entry || with_port == entry {
                        return true;
                    }
                    let dotted = format!(".{entry}");
                    if hostname.ends_with(&dotted) || with_port.ends_with(&dotted) {
                        return true;
                    }
                }
            }
        }
        if let Some(no) = &self.no_proxy_urllib {
            if no == "*" {
                return true;
            }
            let (hostonly, _) = split_port(&hostname);
            for name in no.split(',') {
                let name = name.trim();
                if name.is_empty() {
                    continue;
                }
                let name = name.trim_start_matches('.').to_lowercase();
                if hostonly == name || hostname == name {
                    return true;
                }
                let dotted = format!(".{name}");
                if hostonly.ends_with(&dotted) || hostname.ends_with(&dotted) {
                    return true;
                }
            }
        }
        false
    }
}

/// urllib's `_splitport`: `host:digits` split at the last colon.
fn split_port(host: &str) -> (&str, Option<&str>) {
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            let port = &host[i + 1..];
            (&host[..i], (!port.is_empty()).then_some(port))
        }
        _ => (host, None),
    }
}

/// An IPv4 address in any form glibc's `inet_aton` (so Python's
/// `socket.inet_aton`) accepts: one to four parts, decimal, octal (`0`) or
/// hex (`0x`); anything after ASCII white space is ignored.
pub(crate) fn inet_aton(text: &str) -> Option<u32> {
    let text = text.split(|c: char| c.is_ascii_whitespace()).next()?;
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(4);
    for part in &parts {
        let (digits, radix) =
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                (hex, 16)
            } else if part.len() > 1 && part.starts_with('0') {
                (&part[1..], 8)
            } else {
                (*part, 10)
            };
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        values.push(u64::from_str_radix(digits, radix).ok()?);
    }
    let (last, leading) = values.split_last()?;
    if leading.iter().any(|&v| v > 0xff) {
        return None;
    }
    let bits = 8 * (4 - leading.len() as u32);
    if *last >= 1u64 << bits {
        return None;
    }
    let mut ip = *last as u32;
    for (i, &v) in leading.iter().enumerate() {
        ip |= (v as u32) << (24 - 8 * i as u32);
    }
    Some(ip)
}

/// `requests.utils.is_valid_cidr`: `address/mask`, mask 1 to 32.
fn is_valid_cidr(entry: &str) -> bool {
    let Some((address, mask)) = entry.split_once('/') else {
        return false;
    };
    if mask.contains('/') {
        return false;
    }
    let Some(mask) = python_int(mask) else {
        return false;
    };
    (1..=32).contains(&mask) && inet_aton(address).is_some()
}

/// `int(text)` for the texts a mask may be: optional sign, digits,
/// underscores between digits.
fn python_int(text: &str) -> Option<i64> {
    let text = text.trim();
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    if unsigned.starts_with('_') || unsigned.ends_with('_') || unsigned.contains("__") {
        return None;
    }
    text.replace('_', "").parse().ok()
}

/// `requests.utils.address_in_network`.
fn in_network(ip: u32, cidr: &str) -> bool {
    let (address, mask) = cidr.split_once('/').expect("a valid CIDR");
    let (Some(network), Some(bits)) = (inet_aton(address), python_int(mask)) else {
        return false;
    };
    let netmask = u32::MAX << (32 - bits as u32);
    ip & netmask == network & netmask
}

/// Host and port (80 unless given) of a proxy URL's `host[:port]`.
fn parse_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = match text.strip_prefix('[') {
        Some(inner) => {
            let (ip, after) = inner.split_once(']')?;
            ip.parse::<std::net::Ipv6Addr>().ok()?;
            (format!("[{ip}]"), after.strip_prefix(':'))
        }
        None => match text.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (text.to_string(), None),
        },
    };
    if host.is_empty() || host.contains(['[', ']', ':', ' ']) && !host.starts_with('[') {
        return None;
    }
    let port = match port {
        None | Some("") => 80,
        Some(p) => p.parse().ok()?,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// Python's `unquote`: `%XX` decoded, the bytes read as UTF-8 (invalid
/// sequences replaced).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
            && hex.bytes().all(|c| c.is_ascii_hexdigit())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `requests.auth._basic_auth_str`: `Basic base64(latin1(user:password))`;
/// `None` when either is not Latin-1.
fn basic(user: &str, password: &str) -> Option<String> {
    let latin1: Option<Vec<u8>> = format!("{user}:{password}")
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect();
    Some(format!("Basic {}", base64(&latin1?)))
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn via(p: &Proxies, url: &str) -> Option<String> {
        let uri: hyper::Uri = url.parse().unwrap();
        p.proxy_for(
            uri.scheme_str().unwrap(),
            uri.host().unwrap(),
            uri.port_u16(),
        )
        .map(|p| p.to_string())
    }

    #[test]
    fn the_scheme_s_proxy_else_all_proxy() {
        let p = Proxies::from_env(env(&[
            ("HTTPS_PROXY", "http://s:1"),
            ("ALL_PROXY", "http://a:2"),
        ]));
        assert_eq!(
            via(&p, "https://b/x").as_deref(),
            Some("http://s:1 (HTTPS_PROXY)")
        );
        assert_eq!(
            via(&p, "http://b/x").as_deref(),
            Some("http://a:2 (ALL_PROXY)")
        );
        let p = Proxies::from_env(env(&[("http_proxy", "127.0.0.1:3128")]));
        assert_eq!(
            via(&p, "http://b").as_deref(),
            Some("http://127.0.0.1:3128 (http_proxy)")
        );
        assert_eq!(via(&p, "https://b"), None);
        assert!(Proxies::from_env(env(&[])).is_empty());
    }

    #[test]
    fn lower_case_wins_an_empty_one_removes_and_cgi_ignores_http_proxy() {
        let p = Proxies::from_env(env(&[
            ("https_proxy", "http://lower:1"),
            ("HTTPS_PROXY", "http://upper:2"),
            ("http_proxy", ""),
            ("HTTP_PROXY", "http://upper:3"),
        ]));
        assert_eq!(
            via(&p, "https://b").as_deref(),
            Some("http://lower:1 (https_proxy)")
        );
        assert_eq!(
            via(&p, "http://b"),
            None,
            "an empty http_proxy removes HTTP_PROXY"
        );
        let p = Proxies::from_env(env(&[
            ("HTTP_PROXY", "http://u:3"),
            ("REQUEST_METHOD", "GET"),
        ]));
        assert_eq!(via(&p, "http://b"), None);
        let p = Proxies::from_env(env(&[("http_proxy", "http://l:3"), ("REQUEST_METHOD", "")]));
        assert_eq!(
            via(&p, "http://b").as_deref(),
            Some("http://l:3 (http_proxy)")
        );
        let p = Proxies::from_env(env(&[("ALL_PROXY", "http://a:1"), ("all_proxy", "")]));
        assert!(p.is_empty());
    }

    /// (NO_PROXY, URL, bypassed), each checked against requests 2.34 in
    /// python/tests/test_proxy.py too.
    pub(crate) const NO_PROXY_TABLE: &[(&str, &str, bool)] = &[
        ("broker.invalid", "http://broker.invalid:8080/", true),
        ("BROKER.invalid", "http://broker.invalid/", true),
        ("invalid", "http://broker.invalid/", true),
        (".invalid", "http://broker.invalid/", true),
        ("..invalid", "http://broker.invalid/", true),
        ("roker.invalid", "http://broker.invalid/", false),
        ("other, broker.invalid", "http://broker.invalid/", true),
        ("broker.invalid:8080", "http://broker.invalid:8080/", true),
        ("broker.invalid:8081", "http://broker.invalid:8080/", false),
        ("broker.invalid:443", "https://broker.invalid/", false),
        ("broker.invalid:443", "https://broker.invalid:443/", true),
        ("invalid:8080", "http://broker.invalid:8080/", true),
        ("*", "http://broker.invalid/", true),
        ("*,other", "http://broker.invalid/", false),
        (" *", "http://broker.invalid/", false),
        ("*.invalid", "http://broker.invalid/", false),
        ("127.0.0.1", "http://127.0.0.1:9/", true),
        ("127.0.0.0/8", "http://127.0.0.1:9/", true),
        ("10.0.0.0/8", "http://127.0.0.1:9/", false),
        ("127.0.0.1/33", "http://127.0.0.1:9/", false),
        ("0.1", "http://127.0.0.1:9/", true),
        ("127.0.0.1:9", "http://127.0.0.1:9/", false),
        ("localhost", "http://127.0.0.1:9/", false),
        ("localhost", "http://localhost:9/", true),
        ("127.0.0.0/8", "http://127.1:9/", true),
        ("::1", "http://[::1]:9/", true),
        ("[::1]", "http://[::1]:9/", false),
        ("", "http://broker.invalid/", false),
        (",,", "http://broker.invalid/", false),
    ];

    #[test]
    fn no_proxy_matches_as_requests_does() {
        for (no_proxy, url, bypassed) in NO_PROXY_TABLE {
            let p = Proxies::from_env(env(&[
                ("HTTP_PROXY", "http://p:1"),
                ("HTTPS_PROXY", "http://p:1"),
                ("NO_PROXY", no_proxy),
            ]));
            assert_eq!(
                via(&p, url).is_none(),
                *bypassed,
                "NO_PROXY={no_proxy:?} {url}"
            );
            let explicit = Proxies::none()
                .all("http://p:1")
                .unwrap()
                .no_proxy(no_proxy);
            assert_eq!(
                via(&explicit, url).is_none(),
                *bypassed,
                "explicit {no_proxy:?} {url}"
            );
        }
    }

    #[test]
    fn requests_and_urllib_read_no_proxy_differently() {
        // requests' own check: no_proxy or NO_PROXY; urllib's: none when
        // no_proxy is set but empty.
        let p = Proxies::from_env(env(&[
            ("HTTP_PROXY", "http://p:1"),
            ("no_proxy", ""),
            ("NO_PROXY", "broker.invalid"),
        ]));
        assert_eq!(via(&p, "http://broker.invalid/"), None);
        let p = Proxies::from_env(env(&[
            ("HTTP_PROXY", "http://p:1"),
            ("no_proxy", ""),
            ("NO_PROXY", "*"),
        ]));
        assert!(
            via(&p, "http://broker.invalid/").is_some(),
            "urllib's `*` is gone, requests' `*` matches nothing"
        );
    }

    #[test]
    fn inet_aton_takes_what_glibc_takes() {
        assert_eq!(inet_aton("127.0.0.1"), Some(0x7f000001));
        assert_eq!(inet_aton("127.1"), Some(0x7f000001));
        assert_eq!(inet_aton("0x7f.1"), Some(0x7f000001));
        assert_eq!(inet_aton("10"), Some(10));
        assert_eq!(inet_aton("1.2.3.4\tx"), Some(0x01020304));
        assert_eq!(inet_aton("017.0.0.1"), Some(0x0f000001));
        for bad in [
            "08",
            "1.2.3.",
            "0x",
            "a.b",
            "256.0.0.1",
            "1.2.3.4.5",
            "",
            "::1",
            "broker.invalid",
        ] {
            assert_eq!(inet_aton(bad), None, "{bad}");
        }
    }

    #[test]
    fn credentials_give_basic_auth_and_are_never_shown() {
        let p = Proxies::none()
            .http("http://us%40er:p%3Ass@Proxy.example:3128/")
            .unwrap();
        let proxy = via(&p, "http://b/").unwrap();
        assert_eq!(proxy, "http://proxy.example:3128");
        let url = p.http.as_ref().unwrap();
        assert_eq!(
            url.credentials().unwrap().header_value(),
            format!("Basic {}", base64(b"us@er:p:ss"))
        );
        assert_eq!(base64(b"us@er:p:ss"), "dXNAZXI6cDpzcw==");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        for shown in [format!("{p:?}"), format!("{url}"), format!("{url:?}")] {
            assert!(
                !shown.contains("p:ss")
                    && !shown.contains("p%3Ass")
                    && !shown.contains("us@er")
                    && !shown.contains("us%40er"),
                "{shown}"
            );
        }
        // A user without a password, or an empty user: no header (requests).
        for url in ["http://user@p:1", "http://:pw@p:1"] {
            let p = Proxies::none().http(url).unwrap();
            assert_eq!(p.http.unwrap().credentials(), None, "{url}");
        }
        let p = Proxies::none().http("http://user:@p:1").unwrap();
        assert_eq!(
            p.http.unwrap().credentials().unwrap().header_value(),
            "Basic dXNlcjo="
        );
    }

    #[test]
    fn proxy_urls_are_read_as_requests_reads_them() {
        let address = |v: &str| {
            ProxyUrl::read(v, Some("HTTPS_PROXY"))
                .address()
                .map(|(h, p)| format!("{h}:{p}"))
        };
        assert_eq!(address("http://p"), Ok("p:80".into()));
        assert_eq!(address("HTTP://P:3128/"), Ok("p:3128".into()));
        assert_eq!(address("127.0.0.1:3128"), Ok("127.0.0.1:3128".into()));
        assert_eq!(address("//p:3"), Ok("p:3".into()));
        assert_eq!(address("http://[::1]:3128"), Ok("[::1]:3128".into()));
        for (bad, says) in [
            ("https://p:3128", "https:// proxy"),
            ("socks5://p:1080", "SOCKS"),
            ("proxy:3128", "\"proxy\" is not a proxy scheme"),
            ("http://", "no usable host"),
            ("http://p:port", "no usable host"),
        ] {
            let e = address(bad).unwrap_err();
            assert!(
                e.contains(says) && e.contains("(HTTPS_PROXY)"),
                "{bad}: {e}"
            );
        }
        let e = ProxyUrl::read("https://user:secret@p:1", None)
            .address()
            .unwrap_err();
        assert!(!e.contains("secret") && !e.contains("user"), "{e}");
        assert!(Proxies::none().https("socks5://p:1").is_err());
    }

    #[test]
    fn nothing_before_an_at_is_ever_shown_even_when_the_url_does_not_parse() {
        // (value, usable, shown): the user name and password are made of
        // `uSeRnAmE7`, `s3cr3t`, `PW9` and `1234`, none of which may show.
        const CASES: &[(&str, bool, &str)] = &[
            (
                "http://uSeRnAmE7:s3cr3t/PW9@proxy:3128",
                false,
                "<unparsable proxy URL>",
            ),
            (
                "socks5://uSeRnAmE7:s3cr3t/PW9@h:1",
                false,
                "<unparsable proxy URL>",
            ),
            (
                "http://uSeRnAmE7:s3cr3t#PW9@proxy:3128",
                false,
                "<unparsable proxy URL>",
            ),
            (
                "http://uSeRnAmE7:s3cr3t?PW9@proxy:3128",
                false,
                "<unparsable proxy URL>",
            ),
            // urllib3 reads the host `uSeRnAmE7`, port 1234: refused here.
            (
                "http://uSeRnAmE7:1234/PW9s3cr3t@proxy:3128",
                false,
                "<unparsable proxy URL>",
            ),
            (
                "//uSeRnAmE7:s3cr3t/PW9@proxy:3128",
                false,
                "<unparsable proxy URL>",
            ),
            // No scheme: urllib3 reads `uSeRnAmE7` as the scheme.
            (
                "uSeRnAmE7:s3cr3tPW9@proxy:3128",
                false,
                "<unparsable proxy URL>",
            ),
            (
                "uSeRnAmE7:1234/s3cr3tPW9@proxy:3128",
                false,
                "<unparsable proxy URL>",
            ),
            (
                "https://uSeRnAmE7:s3cr3tPW9@proxy:3128",
                false,
                "https://proxy:3128",
            ),
            (
                "socks5h://uSeRnAmE7:s3cr3tPW9@Proxy:1",
                false,
                "socks5h://proxy:1",
            ),
            (
                "http://uSeRnAmE7:s3cr3tPW9@proxy:port",
                false,
                "http://proxy:port",
            ),
            (
                "http://uSeRnAmE7:s3cr3t@PW9@proxy:3128/",
                true,
                "http://proxy:3128",
            ),
            (
                "http:uSeRnAmE7:s3cr3tPW9@proxy:3128",
                true,
                "http://proxy:3128",
            ),
            ("uSeR.nAmE7:s3cr3tPW9@proxy:3128", true, "http://proxy:3128"),
            (
                "//uSeRnAmE7:s3cr3tPW9@proxy:3128",
                true,
                "http://proxy:3128",
            ),
        ];
        let secrets = ["uSeR", "nAmE7", "s3cr3t", "PW9", "1234"];
        for (value, usable, expected) in CASES {
            let proxies = Proxies::from_env(env(&[("HTTPS_PROXY", value)]));
            let url = proxies.https.clone().unwrap();
            assert_eq!(url.address().is_ok(), *usable, "{value}");
            assert_eq!(
                url.to_string(),
                format!("{expected} (HTTPS_PROXY)"),
                "{value}"
            );
            let mut shown = vec![
                url.to_string(),
                format!("{url:?}"),
                format!("{proxies:?}"),
                url.address().err().unwrap_or_default(),
            ];
            match Proxies::none().https(value) {
                Ok(p) => shown.push(format!("{p:?}")),
                Err(e) => shown.push(format!("{e:#} {e:?}")),
            }
            for shown in shown {
                for secret in secrets {
                    assert!(!shown.contains(secret), "{value}: {shown}");
                }
            }
        }
        // The credentials of those that parse are still sent.
        let url = ProxyUrl::read("http://uSeRnAmE7:s3cr3t@PW9@proxy:3128/", None);
        assert_eq!(
            url.credentials().unwrap().header_value(),
            format!("Basic {}", base64(b"uSeRnAmE7:s3cr3t@PW9"))
        );
        let e = ProxyUrl::read("uSeRnAmE7:s3cr3tPW9@proxy:3128", Some("HTTPS_PROXY"))
            .address()
            .unwrap_err();
        assert!(e.contains("does not start with http://"), "{e}");
        let e = ProxyUrl::read("http://u:p/w@proxy:3128", None)
            .address()
            .unwrap_err();
        assert!(e.contains("percent-encode"), "{e}");
    }
}
