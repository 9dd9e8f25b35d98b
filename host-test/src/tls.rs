//! Throw-away certificate authorities for TLS tests: a CA made in the test,
//! and server certificates it issues (valid, expired, or for other names);
//! with [`TestCa::broker`] and [`TestCa::roots`], the one https mock broker
//! set-up the tests share.

use std::sync::Arc;

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority that exists only in this process.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// Whether a server certificate is in its validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Valid from 1975 to 4096 (rcgen's defaults).
    Current,
    /// Valid only during 2020.
    Expired,
}

impl TestCa {
    /// A new CA with a fresh key.
    pub fn new() -> Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "vd-cred-broker throw-away test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// The CA certificate, PEM: what a host adds to its trusted roots.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The public roots and this CA: what a host that trusts the CA uses.
    pub fn roots(&self) -> vd_cred_host::TrustedRoots {
        let mut roots = vd_cred_host::TrustedRoots::public();
        roots
            .add_pem(self.pem.as_bytes())
            .expect("the CA's own PEM parses");
        roots
    }

    /// An https mock broker presenting a certificate for `names` from this
    /// CA ([`crate::MockBroker::start_tls`]).
    pub fn broker(&self, names: &[&str], validity: Validity) -> Result<crate::MockBroker> {
        crate::MockBroker::start_tls(self.server_config(names, validity)?)
    }

    /// A TLS server configuration presenting a certificate for `names`,
    /// issued by this CA.
    pub fn server_config(&self, names: &[&str], validity: Validity) -> Result<Arc<ServerConfig>> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "mock broker");
        if validity == Validity::Expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(Arc::new(
            ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(chain, key)?,
        ))
    }
}
