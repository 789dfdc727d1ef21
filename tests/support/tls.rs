//! Test PKI: a throwaway CA made with rcgen, the fake upstream's server certificate, and
//! client/server rustls configs.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::RootCertStore;

/// The CA that signed the fake's certificate. `ca.pem` lives in `dir` (removed on drop).
pub struct TestCa {
    pub ca_pem: String,
    pub dir: tempfile::TempDir,
    pub ca_path: PathBuf,
    ca_der: CertificateDer<'static>,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TestCa {
    /// A root store holding only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("CA cert is valid");
        roots
    }

    /// A client config trusting only this CA (ALPN http/1.1).
    pub fn client_config(&self) -> rustls::ClientConfig {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(self.root_store())
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        cfg
    }

    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(Arc::new(self.client_config()))
    }

    /// The server name the fake's certificate is valid for.
    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from("localhost").expect("valid name")
    }
}

/// A fresh CA and a server config whose certificate covers `localhost` and `127.0.0.1`.
pub fn make_server() -> (TestCa, Arc<rustls::ServerConfig>) {
    make_server_with_alpn(&[b"http/1.1"])
}

/// As `make_server`, offering these ALPN protocols, in order of preference.
pub fn make_server_with_alpn(alpn: &[&[u8]]) -> (TestCa, Arc<rustls::ServerConfig>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("no SANs");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "chatcache test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");

    let mut leaf_params =
        CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("valid SANs");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).expect("leaf cert");

    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .expect("server cert and key match");
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();

    let dir = tempfile::tempdir().expect("temp dir");
    let ca_path = dir.path().join("ca.pem");
    let ca_pem = ca.pem();
    std::fs::write(&ca_path, &ca_pem).expect("write ca.pem");
    let test_ca = TestCa {
        ca_pem,
        dir,
        ca_path,
        ca_der: ca.der().clone(),
    };
    (test_ca, Arc::new(server))
}
