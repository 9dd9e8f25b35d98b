//! Which certificate authorities the host trusts for an https broker, and
//! how a failed TLS handshake is explained to the component.
//!
//! The public web roots (Mozilla's, as wasmtime's own client uses) are always
//! trusted; a company's private CA or a self-signed broker certificate is
//! added with [`TrustedRoots::add_pem`] or [`TrustedRoots::add_pem_file`]
//! (the CLI and the Python package read `SSL_CERT_FILE`). Extra roots add to
//! the public ones; they never replace them.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, ClientConfig, RootCertStore};

/// The roots a sandbox's https connections are verified against. Cheap to
/// clone; clones share the built client configuration.
#[derive(Clone, Default)]
pub struct TrustedRoots {
    extra: Arc<Vec<CertificateDer<'static>>>,
    config: Arc<OnceLock<Arc<ClientConfig>>>,
    /// Build `config` even for the public roots alone, rather than share the
    /// process's one ([`TrustedRoots::unshared`]).
    own: bool,
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
        let mut certs = Vec::new();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.context("a PEM certificate did not parse")?;
            RootCertStore::empty()
                .add(cert.clone())
                .context("a PEM certificate is not usable as a trusted root")?;
            certs.push(cert);
        }
        if certs.is_empty() {
            bail!("no PEM certificate (-----BEGIN CERTIFICATE-----) found");
        }
        let added = certs.len();
        Arc::make_mut(&mut self.extra).extend(certs);
        self.config = Arc::default();
        Ok(added)
    }

    /// [`TrustedRoots::add_pem`] with the contents of the file at `path`.
    pub fn add_pem_file(&mut self, path: impl AsRef<Path>) -> Result<usize> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .with_context(|| format!("reading CA certificates from {}", path.display()))?;
        self.add_pem(&pem)
            .with_context(|| format!("CA certificates in {}", path.display()))
    }

    /// The same roots with a client configuration (and TLS session cache) of
    /// their own, shared with nothing built before: for a process forked
    /// from the one that built the others, whose locks a parent thread may
    /// have held at the fork.
    pub fn unshared(&self) -> Self {
        TrustedRoots {
            extra: self.extra.clone(),
            config: Arc::default(),
            own: true,
        }
    }

    /// How many roots were added to the public ones.
    pub fn extra_count(&self) -> usize {
        self.extra.len()
    }

    /// A rustls client configuration trusting these roots, built once (once
    /// per process for the public roots alone).
    pub(crate) fn client_config(&self) -> Arc<ClientConfig> {
        static PUBLIC: OnceLock<Arc<ClientConfig>> = OnceLock::new();
        let cell = if self.extra.is_empty() && !self.own {
            &PUBLIC
        } else {
            &*self.config
        };
        cell.get_or_init(|| {
            let mut roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            for cert in self.extra.iter() {
                // Checked in `add_pem`.
                let _ = roots.add(cert.clone());
            }
            Arc::new(
                ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
    }
}

/// Why a TLS handshake failed, in words for the component's error message;
/// `None` when `error` is not a TLS error.
pub(crate) fn explain(error: &std::io::Error) -> Option<String> {
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
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
