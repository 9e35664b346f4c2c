//! Test certificates made with rcgen: a CA and a server certificate it issued for
//! `localhost` and `127.0.0.1` (the SRV-TLS tests, PostgreSQL over TLS).

use std::path::PathBuf;

/// A test CA and a server certificate it issued for `localhost` and `127.0.0.1`, made with
/// rcgen, as PEM files in a temporary directory (SRV-TLS tests).
#[derive(Debug)]
pub struct TestPki {
    /// The CA's certificate (PEM): what a client is told to trust.
    pub ca_pem: String,
    /// The file holding [`ca_pem`](Self::ca_pem).
    pub ca: PathBuf,
    /// The server's certificate chain (its certificate, then the CA's).
    pub cert: PathBuf,
    /// The server's private key (PKCS#8).
    pub key: PathBuf,
    /// The directory of the files, removed on drop.
    pub dir: tempfile::TempDir,
}

impl TestPki {
    /// A fresh CA named `name` and a server certificate from it.
    ///
    /// # Panics
    /// If rcgen or the file system fails.
    #[must_use]
    pub fn new(name: &str) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &ca).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, text: &str| {
            let p = dir.path().join(file);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_pem = ca.pem();
        Self {
            ca: write("ca.pem", &ca_pem),
            cert: write("server.pem", &format!("{}{}", server_cert.pem(), ca_pem)),
            key: write("server.key", &server_key.serialize_pem()),
            ca_pem,
            dir,
        }
    }
}

#[cfg(feature = "server")]
impl TestPki {
    /// The server's TLS files, for `ServerConfig::tls`.
    #[must_use]
    pub fn files(&self) -> veil_server::tls::TlsFiles {
        veil_server::tls::TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}
