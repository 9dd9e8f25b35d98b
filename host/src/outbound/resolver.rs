//! How the host turns a host name into addresses: [`Resolver`].

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Result, bail};

use crate::outbound::origin::normal_host;
use crate::outbound::proxy::inet_aton;

/// What a [`Resolver::from_fn`] function returns.
type Lookup = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Turns a host name and port into the addresses to connect to. Cheap to
/// clone (clones share the table or function).
///
/// Every host name the host looks up for a sandbox goes through one
/// resolver: the broker's (and any [`crate::SandboxBuilder::also_allow`]
/// origin's) for the credential, each destination and the credential's
/// broker for an agent's egress ([`crate::egress::AgentEgress::resolver`]),
/// and an HTTP proxy's host name for either. The system's resolver
/// (`getaddrinfo`, through tokio) unless one is set:
/// [`crate::SandboxBuilder::resolver`],
/// [`crate::egress::AgentEgress::resolver`] (which
/// [`crate::egress::AgentEgress::for_agent_of`] starts with the credential's),
/// [`crate::broker_only::BrokerOnly::resolver`].
///
/// An IP address is never looked up, in any form the system's resolver
/// takes for one (`127.0.0.1`, `[::1]`, and the forms `inet_aton` takes:
/// `127.1`, `2130706433`, `0x7f.0.0.1`): it is its own answer, whichever
/// resolver is set. A `connect_to` override ([`crate::egress::AgentEgress::connect_to`])
/// wins over the resolver for its host and port.
///
/// For tests, and for hosts that must not depend on the machine's DNS,
/// [`Resolver::table`] answers from a fixed table and fails every other
/// name as the system's resolver fails a name that does not exist, with
/// the same message.
#[derive(Clone, Default)]
pub struct Resolver(Kind);

#[derive(Clone, Default)]
enum Kind {
    /// `getaddrinfo`, through tokio's `lookup_host`.
    #[default]
    System,
    /// Normalised name to its addresses, in the order given.
    Table(Arc<HashMap<String, Vec<IpAddr>>>),
    /// The embedder's own.
    Function(Arc<dyn Fn(String, u16) -> Lookup + Send + Sync>),
}

impl Resolver {
    /// The system's resolver (`getaddrinfo`, on tokio's blocking pool): the
    /// machine's `/etc/hosts`, DNS and search domains. The default.
    pub fn system() -> Self {
        Resolver(Kind::System)
    }

    /// A fixed table: each host name resolves to the addresses given for
    /// it (a name given twice, to both, in the order given), any port;
    /// every other name fails as a name that does not exist fails with
    /// [`Resolver::system`] (the same message). Names are compared as
    /// hosts are: case ignored, a trailing dot ignored (`localhost.` is
    /// `localhost`). Nothing is asked of the machine.
    ///
    /// Fails when an entry is not a host name, has a port, or is an IP
    /// address (which is never looked up).
    ///
    /// ```
    /// # async fn demo(host: &vd_cred_host::Host) -> anyhow::Result<()> {
    /// use std::net::{Ipv4Addr, SocketAddr};
    /// use vd_cred_host::Resolver;
    /// let names = Resolver::table([("localhost.", Ipv4Addr::LOCALHOST.into())])?;
    /// let at: SocketAddr = ([127, 0, 0, 1], 8080).into();
    /// assert_eq!(names.lookup("localhost", 8080).await?, [at]);
    /// // Off the table: "failed to lookup address information: Name or
    /// // service not known" (glibc's words), as the system would say.
    /// assert!(names.lookup("broker.invalid", 443).await.is_err());
    /// let builder = host
    ///     .sandbox()
    ///     .broker_url("https://broker.invalid:8443/api/v1/credential-broker")
    ///     .resolver(names);
    /// # Ok(()) }
    /// ```
    pub fn table<N: AsRef<str>>(entries: impl IntoIterator<Item = (N, IpAddr)>) -> Result<Self> {
        let mut table: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, ip) in entries {
            let name = name.as_ref();
            let bare = name.trim_start_matches('[').trim_end_matches(']');
            let key = normal_host(name);
            if literal(bare).or(key.as_deref().and_then(literal)).is_some() {
                bail!(
                    "resolver table entry {name:?} is an IP address, which is never looked up: \
                     give a host name"
                );
            }
            let Some(key) = key.filter(|h| !h.contains(':')) else {
                bail!(
                    "resolver table entry {name:?} is not a host name: give the name alone, \
                     without a scheme, port or path"
                );
            };
            table.entry(key).or_default().push(ip);
        }
        Ok(Resolver(Kind::Table(Arc::new(table))))
    }

    /// Resolve with `lookup`, called with the host name (as the request
    /// spells it, IPv6 brackets removed; never an IP address) and the port,
    /// and returning the addresses to connect to, tried in order. An empty
    /// answer fails the lookup.
    ///
    /// ```
    /// # use vd_cred_host::Resolver;
    /// let resolver = Resolver::from_fn(|host, port| async move {
    ///     // Ask the system with a search domain of our own.
    ///     let found = tokio::net::lookup_host((format!("{host}.corp.example"), port)).await?;
    ///     Ok(found.collect())
    /// });
    /// ```
    pub fn from_fn<F, Fut>(lookup: F) -> Self
    where
        F: Fn(String, u16) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'static,
    {
        Resolver(Kind::Function(Arc::new(move |host, port| {
            Box::pin(lookup(host, port)) as Lookup
        })))
    }

    /// The addresses to connect to for `host` (IPv6 in brackets or not)
    /// and `port`: an IP address is its own answer; a name is asked of the
    /// resolver. Fails when the name does not resolve, or resolves to no
    /// address; the error is what the host reports (`the host name did not
    /// resolve: ...`).
    pub async fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Some(ip) = literal(bare) {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let found: Vec<SocketAddr> = match &self.0 {
            Kind::System => tokio::net::lookup_host((bare, port)).await?.collect(),
            Kind::Table(table) => {
                let addrs = normal_host(bare).and_then(|name| table.get(&name));
                let Some(addrs) = addrs else {
                    return Err(does_not_exist());
                };
                addrs.iter().map(|ip| SocketAddr::new(*ip, port)).collect()
            }
            Kind::Function(lookup) => lookup(bare.to_string(), port).await?,
        };
        if found.is_empty() {
            return Err(io::Error::other("no address found"));
        }
        Ok(found)
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::System => f.write_str("Resolver::system()"),
            Kind::Table(table) => {
                let mut names: Vec<_> = table.iter().collect();
                names.sort();
                f.debug_map().entries(names).finish()
            }
            Kind::Function(_) => f.write_str("Resolver::from_fn(..)"),
        }
    }
}

/// `host` (no brackets) as an IP address, in any form `getaddrinfo` takes
/// numerically without asking anyone: an IPv6 or IPv4 address, or an IPv4
/// one as `inet_aton` reads it (`127.1`, `2130706433`, `0x7f.0.0.1`).
fn literal(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip);
    }
    // `inet_aton` ignores what follows white space; `getaddrinfo` does not
    // take such a host as an address.
    if host.contains(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    inet_aton(host).map(|ip| IpAddr::V4(Ipv4Addr::from(ip)))
}

/// The error the system's resolver gives for a name that does not exist
/// (`EAI_NONAME`), as std words it: `failed to lookup address information:`
/// and the C library's `gai_strerror` text.
fn does_not_exist() -> io::Error {
    #[cfg(all(target_os = "linux", target_env = "musl"))]
    const TEXT: &str = "Name does not resolve";
    #[cfg(any(
        target_vendor = "apple",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "dragonfly"
    ))]
    const TEXT: &str = "nodename nor servname provided, or not known";
    #[cfg(not(any(
        all(target_os = "linux", target_env = "musl"),
        target_vendor = "apple",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "dragonfly"
    )))]
    const TEXT: &str = "Name or service not known";
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("failed to lookup address information: {TEXT}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn table() -> Resolver {
        Resolver::table([
            ("localhost.", IpAddr::from([127, 0, 0, 1])),
            ("Metadata.Example", IpAddr::from([169, 254, 169, 254])),
            ("two.example", IpAddr::from([192, 0, 2, 1])),
            ("two.example.", "2001:db8::1".parse().unwrap()),
        ])
        .unwrap()
    }

    #[tokio::test]
    async fn a_table_answers_its_names_in_any_case_with_or_without_the_dot_on_any_port() {
        let r = table();
        for name in ["localhost", "localhost.", "LocalHost", "LOCALHOST."] {
            assert_eq!(
                r.lookup(name, 8080).await.unwrap(),
                [addr("127.0.0.1:8080")],
                "{name}"
            );
        }
        assert_eq!(
            r.lookup("metadata.example", 80).await.unwrap(),
            [addr("169.254.169.254:80")]
        );
        // A name given twice resolves to both, in the order given.
        assert_eq!(
            r.lookup("two.example", 443).await.unwrap(),
            [addr("192.0.2.1:443"), addr("[2001:db8::1]:443")]
        );
    }

    #[tokio::test]
    async fn a_name_off_the_table_does_not_resolve_as_the_systems_would_say() {
        let r = table();
        for name in ["broker.invalid", "localhost.localdomain", "example", "two"] {
            let e = r.lookup(name, 443).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound, "{name}");
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            assert_eq!(
                e.to_string(),
                "failed to lookup address information: Name or service not known",
                "{name}"
            );
        }
        // An empty table resolves nothing.
        let none = Resolver::table(std::iter::empty::<(&str, IpAddr)>()).unwrap();
        assert!(none.lookup("localhost", 80).await.is_err());
    }

    #[tokio::test]
    async fn an_ip_address_in_any_form_is_its_own_answer_whatever_the_resolver() {
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = asked.clone();
        let refusing = Resolver::from_fn(move |host, _| {
            record.lock().unwrap().push(host);
            async { Err(does_not_exist()) }
        });
        for resolver in [table(), refusing.clone(), Resolver::system()] {
            for (host, answer) in [
                ("127.0.0.1", "127.0.0.1:80"),
                ("[::1]", "[::1]:80"),
                ("::1", "[::1]:80"),
                ("[::ffff:127.0.0.1]", "[::ffff:127.0.0.1]:80"),
                ("2130706433", "127.0.0.1:80"),
                ("0x7f.0.0.1", "127.0.0.1:80"),
                ("0177.0.0.1", "127.0.0.1:80"),
                ("127.1", "127.0.0.1:80"),
            ] {
                assert_eq!(
                    resolver.lookup(host, 80).await.unwrap(),
                    [addr(answer)],
                    "{host} by {resolver:?}"
                );
            }
        }
        assert!(asked.lock().unwrap().is_empty(), "{asked:?}");
        // A name goes to the function, brackets and all else as spelt.
        assert!(refusing.lookup("Broker.Example.", 80).await.is_err());
        assert_eq!(*asked.lock().unwrap(), ["Broker.Example."]);
    }

    #[tokio::test]
    async fn a_function_answers_its_names_and_an_empty_answer_fails() {
        let r = Resolver::from_fn(|host, port| async move {
            match host.as_str() {
                "empty.example" => Ok(Vec::new()),
                _ => Ok(vec![SocketAddr::from(([192, 0, 2, 7], port))]),
            }
        });
        assert_eq!(
            r.lookup("any.example", 8443).await.unwrap(),
            [addr("192.0.2.7:8443")]
        );
        let e = r.lookup("empty.example", 80).await.unwrap_err();
        assert_eq!(e.to_string(), "no address found");
    }

    #[test]
    fn a_table_takes_host_names_only() {
        for bad in [
            "127.0.0.1",
            "[::1]",
            "127.1",
            "host:8080",
            "http://host",
            "",
            ".",
            "user@host",
        ] {
            let e = Resolver::table([(bad, IpAddr::from([127, 0, 0, 1]))]).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("resolver table entry {bad:?}")),
                "{e}"
            );
        }
        let shown = format!("{:?}", table());
        assert!(shown.contains("\"localhost\": [127.0.0.1]"), "{shown}");
        assert_eq!(format!("{:?}", Resolver::default()), "Resolver::system()");
    }
}
