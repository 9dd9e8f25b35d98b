//! Which certificate authorities the host trusts for an https broker, and
//! how a failed TLS handshake is explained to the component.
//!
//! The public web roots (Mozilla's, as wasmtime's own client uses) are always
//! trusted; a company's private CA or a self-signed broker certificate is
//! added with [`TrustedRoots::add_pem`] or [`TrustedRoots::add_pem_file`], or
//! named with [`TrustedRoots::add_pem_file_on_use`] to be read only when the
//! first https connection needs it (the CLI and the Python package do that
//! for `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE` and `CURL_CA_BUNDLE`). Extra
//! roots add to the public ones; they never replace them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, TrustAnchor};
use rustls::{CertificateError, ClientConfig, RootCertStore};

/// The roots a sandbox's https connections are verified against. Cheap to
/// clone; clones share the built client configuration and the files read.
#[derive(Clone, Default)]
pub struct TrustedRoots {
    /// Roots added with `add_pem` (parsed once, there).
    extra: Arc<Vec<TrustAnchor<'static>>>,
    /// Files named with `add_pem_file_on_use`, each once, read together by
    /// the first connection that needs them.
    on_use: Arc<Vec<OnUse>>,
    read: Arc<OnceLock<Result<Arc<Vec<TrustAnchor<'static>>>, RootsError>>>,
    config: Arc<OnceLock<Result<Arc<ClientConfig>, RootsError>>>,
    /// Build `config` even for the public roots alone, rather than share the
    /// process's one ([`TrustedRoots::unshared`]).
    own: bool,
}

/// A PEM file to read when first needed, and who named it.
#[derive(Clone)]
struct OnUse {
    path: PathBuf,
    /// The same file, by its real path (to read each file once).
    real: PathBuf,
    named_by: String,
}

/// Why the trusted roots could not be built: a file named with
/// [`TrustedRoots::add_pem_file_on_use`] was missing or held no usable
/// certificate. The message names the file, who named it and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootsError(String);

impl std::fmt::Display for RootsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RootsError {}

/// The certificates in PEM text, each checked as a trust anchor (parsed once).
fn anchors(pem: &[u8]) -> Result<Vec<TrustAnchor<'static>>> {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.context("a PEM certificate did not parse")?;
        store
            .add(cert)
            .context("a PEM certificate is not usable as a trusted root")?;
    }
    if store.is_empty() {
        bail!("no PEM certificate (-----BEGIN CERTIFICATE-----) found");
    }
    Ok(store.roots)
}

fn read_anchors(path: &Path) -> Result<Vec<TrustAnchor<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading CA certificates from {}", path.display()))?;
    anchors(&pem).with_context(|| format!("CA certificates in {}", path.display()))
}

impl TrustedRoots {
    /// Only the public web roots.
    pub fn public() -> Self {
        Self::default()
    }

    /// Also trust every certificate in the PEM text `pem`; returns how many
    /// it held. Text with no certificate, or a certificate that cannot be a
    /// trust anchor, is an error, so a wrong file is noticed.
    pub fn add_pem(&mut self, pem: &[u8]) -> Result<usize> {
        let added = anchors(pem)?;
        let count = added.len();
        Arc::make_mut(&mut self.extra).extend(added);
        self.config = Arc::default();
        Ok(count)
    }

    /// [`TrustedRoots::add_pem`] with the contents of the file at `path`,
    /// read now.
    pub fn add_pem_file(&mut self, path: impl AsRef<Path>) -> Result<usize> {
        let added = read_anchors(path.as_ref())?;
        let count = added.len();
        Arc::make_mut(&mut self.extra).extend(added);
        self.config = Arc::default();
        Ok(count)
    }

    /// Also trust the certificates in the PEM file at `path`, read when the
    /// first https connection needs them (never, for a plain-http broker or a
    /// configuration that fails before any request), and read once: a file
    /// already named (by the same or another path to it) is not read again.
    /// `named_by` says where the path came from (`SSL_CERT_FILE`, say): when
    /// the file is missing or holds no usable certificate, that connection
    /// fails with a message naming it and the file, and so does every later
    /// one.
    ///
    /// ```
    /// # use vd_cred_host::TrustedRoots;
    /// let mut roots = TrustedRoots::public();
    /// roots.add_pem_file_on_use("/etc/ssl/certs/ca-certificates.crt", "SSL_CERT_FILE");
    /// // The same bundle named again is read once.
    /// roots.add_pem_file_on_use("/etc/ssl/certs/ca-certificates.crt", "REQUESTS_CA_BUNDLE");
    /// ```
    pub fn add_pem_file_on_use(&mut self, path: impl Into<PathBuf>, named_by: impl Into<String>) {
        let path = path.into();
        let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if self.on_use.iter().any(|f| f.real == real) {
            return;
        }
        Arc::make_mut(&mut self.on_use).push(OnUse {
            path,
            real,
            named_by: named_by.into(),
        });
        self.read = Arc::default();
        self.config = Arc::default();
    }

    /// The same roots with a client configuration (and TLS session cache) of
    /// their own, shared with nothing built before: for a process forked
    /// from the one that built the others, whose locks a parent thread may
    /// have held at the fork. Files already read are not read again.
    pub fn unshared(&self) -> Self {
        let read = match self.read.get() {
            Some(done) => Arc::new(OnceLock::from(done.clone())),
            None => Arc::default(),
        };
        TrustedRoots {
            extra: self.extra.clone(),
            on_use: self.on_use.clone(),
            read,
            config: Arc::default(),
            own: true,
        }
    }

    /// How many roots were added to the public ones, not counting files not
    /// read yet.
    pub fn extra_count(&self) -> usize {
        let read = match self.read.get() {
            Some(Ok(anchors)) => anchors.len(),
            _ => 0,
        };
        self.extra.len() + read
    }

    /// The files named with [`TrustedRoots::add_pem_file_on_use`], read now
    /// (once for all clones).
    fn files(&self) -> Result<Arc<Vec<TrustAnchor<'static>>>, RootsError> {
        self.read
            .get_or_init(|| {
                let mut all = Vec::new();
                for file in self.on_use.iter() {
                    let read = read_anchors(&file.path).map_err(|e| {
                        RootsError(format!(
                            "{} names {}, which does not hold usable CA certificates: fix or \
                             unset it: {e:#}",
                            file.named_by,
                            file.path.display()
                        ))
                    })?;
                    all.extend(read);
                }
                Ok(Arc::new(all))
            })
            .clone()
    }

    /// A rustls client configuration trusting these roots, built once (once
    /// per process for the public roots alone), reading the files named
    /// with [`TrustedRoots::add_pem_file_on_use`] first.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, RootsError> {
        static PUBLIC: OnceLock<Result<Arc<ClientConfig>, RootsError>> = OnceLock::new();
        let cell = if self.extra.is_empty() && self.on_use.is_empty() && !self.own {
            &PUBLIC
        } else {
            &*self.config
        };
        cell.get_or_init(|| {
            let mut roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            roots.roots.extend(self.extra.iter().cloned());
            roots.roots.extend(self.files()?.iter().cloned());
            Ok(Arc::new(
                ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            ))
        })
        .clone()
    }
}

/// Why a TLS handshake failed, in words for the component's error message;
/// `None` when `error` is not a TLS error.
pub(crate) fn explain(error: &std::io::Error) -> Option<String> {
    let inner = error.get_ref()?;
    if let Some(roots) = inner.downcast_ref::<RootsError>() {
        return Some(format!("{}: {roots}", vd_cred_broker::TLS_HANDSHAKE_FAILED));
    }
    let tls = inner.downcast_ref::<rustls::Error>()?;
    const TRUST: &str = "give the host its CA (SSL_CERT_FILE, or TrustedRoots::add_pem)";
    let why = match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => {
                format!(
                    "the broker's certificate is not trusted (its issuer is not among the host's \
                     trusted roots): {TRUST}"
                )
            }
            CertificateError::BadSignature => {
                format!(
                    "the broker's certificate is not trusted (its signature does not verify \
                     against the host's trusted roots): {TRUST}"
                )
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the broker's certificate is for another host name: use the name on the \
                 certificate in the broker URL"
                    .to_string()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the broker's certificate has expired: renew it on the broker".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the broker's certificate is not valid yet: check the clocks".to_string()
            }
            CertificateError::Revoked => "the broker's certificate was revoked".to_string(),
            other => format!("the broker's certificate was refused ({other:?})"),
        },
        rustls::Error::AlertReceived(alert) => format!("the broker sent the TLS alert {alert:?}"),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the broker did not answer in TLS: does it serve https on this port?".to_string()
        }
        other => other.to_string(),
    };
    Some(format!("{}: {why}", vd_cred_broker::TLS_HANDSHAKE_FAILED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_a_certificate_is_refused() {
        let mut roots = TrustedRoots::public();
        let e = roots.add_pem(b"not a certificate").unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        assert_eq!(roots.extra_count(), 0);
        let e = TrustedRoots::public()
            .add_pem_file("/nonexistent/ca.pem")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("reading CA certificates from /nonexistent/ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn files_are_read_on_first_use_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, "not a certificate").unwrap();
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(&bundle, &link).unwrap();

        let mut roots = TrustedRoots::public();
        roots.add_pem_file_on_use(&bundle, "SSL_CERT_FILE");
        roots.add_pem_file_on_use(&bundle, "REQUESTS_CA_BUNDLE");
        roots.add_pem_file_on_use(&link, "CURL_CA_BUNDLE");
        // Named three times, one file: read once, under its first name.
        assert_eq!(roots.on_use.len(), 1);
        // Nothing is read until a connection needs the roots.
        assert!(roots.read.get().is_none());
        let clone = roots.clone();
        let e = roots.client_config().err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "SSL_CERT_FILE names {0}, which does not hold usable CA certificates: fix or \
                 unset it: CA certificates in {0}: no PEM certificate (-----BEGIN \
                 CERTIFICATE-----) found",
                bundle.display()
            )
        );
        // Clones share what was read: fixing the file later changes nothing
        // for them (a new credential reads it again).
        std::fs::write(&bundle, CA).unwrap();
        assert!(clone.client_config().is_err());
        let fresh = {
            let mut roots = TrustedRoots::public();
            roots.add_pem_file_on_use(&link, "SSL_CERT_FILE");
            roots
        };
        assert!(fresh.client_config().is_ok());
        assert_eq!(fresh.extra_count(), 1);
        // An unshared copy made after the read keeps it; before, reads anew.
        assert!(roots.unshared().client_config().is_err());
    }

    /// A self-signed CA certificate (any usable trust anchor will do).
    const CA: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBlTCCATugAwIBAgIUBTDv/tu8z+9wgvK0ID4BR6vSsGswCgYIKoZIzj0EAwIw\n\
HzEdMBsGA1UEAwwUdmQtY3JlZC1ob3N0IHRlc3QgQ0EwIBcNMjYxMjAxMjA0MDM3\n\
WhgPMjEyNjExMDcyMDQwMzdaMB8xHTAbBgNVBAMMFHZkLWNyZWQtaG9zdCB0ZXN0\n\
IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZk8A2HuTphwUlG3NOxZco6zR\n\
aHMWu+YBEZGgSyzdENcSkvyRq/e5XMdXPvWHRd0WGTw8PLDzgILWI9cd6xtcU6NT\n\
MFEwHQYDVR0OBBYEFIb7HzT5hceq63B2zwicckXId0yKMB8GA1UdIwQYMBaAFIb7\n\
HzT5hceq63B2zwicckXId0yKMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwID\n\
SAAwRQIgYyYL72CxrlB+sn9Gq5r7Hj3EEKsn37GNRcW/f9MTpxcCIQC7ojbZa3We\n\
i9IMDcLTlt6zxanu0KuVfrb4cByiApStCg==\n\
-----END CERTIFICATE-----\n\
";

    #[test]
    fn tls_errors_are_explained() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let expired = io(rustls::Error::InvalidCertificate(CertificateError::Expired));
        assert_eq!(
            explain(&expired).unwrap(),
            "TLS handshake failed: the broker's certificate has expired: renew it on the broker"
        );
        let unknown = io(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert!(
            explain(&unknown)
                .unwrap()
                .contains("not trusted (its issuer is not among the host's trusted roots)")
        );
        let other = std::io::Error::other("plain");
        assert_eq!(explain(&other), None);
    }
}
