//! How the SDK opens its gRPC channels to the key service and the SFU (SRV-TLS-05,
//! specs/key-service.md §9.3): an `https://` URL gets TLS that verifies the server against the
//! system's roots or a private CA ([`Security::ca_pem`]); an `http://` URL is plaintext, and
//! since every call carries the access token, plaintext is refused to any host but loopback
//! unless [`Security::insecure_plaintext`] says otherwise.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::error::ClientError;

/// How the client trusts the server and whether it may talk to it in plaintext.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// PEM certificates of the CAs that issue the server's certificate (a private
    /// deployment's CA). `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Send the access token over `http://` to a host that is not loopback (only where the
    /// network itself is trusted).
    pub insecure_plaintext: bool,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field(
                "ca_pem",
                &self.ca_pem.as_ref().map(|p| format!("{} bytes", p.len())),
            )
            .field("insecure_plaintext", &self.insecure_plaintext)
            .finish()
    }
}

impl Security {
    /// Trust the CA certificates of the PEM file at `path` instead of the system's roots.
    ///
    /// # Errors
    /// [`ClientError::Config`] if the file cannot be read or holds no PEM certificate.
    pub fn with_ca_file(mut self, path: &Path) -> Result<Self, ClientError> {
        let pem = std::fs::read(path).map_err(|e| {
            ClientError::config_by(format!("cannot read the CA file {}", path.display()), e)
        })?;
        if !has_certificate(&pem) {
            return Err(ClientError::config(format!(
                "the CA file {} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`): give the certificate of the CA that issued the server's",
                path.display()
            )));
        }
        self.ca_pem = Some(pem);
        Ok(self)
    }
}

fn has_certificate(pem: &[u8]) -> bool {
    String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----")
}

/// The endpoint of the server at `url` (`http://` or `https://`), with TLS for `https://`.
///
/// # Errors
/// [`ClientError::Config`] for a bad URL, an unknown scheme, plaintext to a host that is not
/// loopback without [`Security::insecure_plaintext`], a CA without a certificate, or no system
/// roots.
pub fn endpoint(url: &str, security: &Security) -> Result<Endpoint, ClientError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| ClientError::config_by(format!("service URL {url:?}"), e))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let uri = endpoint.uri().clone();
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") => {
            let tls = ClientTlsConfig::new();
            let tls = match &security.ca_pem {
                Some(pem) if has_certificate(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                Some(_) => {
                    return Err(ClientError::config(
                        "the CA certificates hold no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
                    ));
                }
                None => tls.with_native_roots(),
            };
            endpoint.tls_config(tls).map_err(|e| {
                ClientError::config_by(
                    format!("TLS for {url} (without a CA file the system's roots are used)"),
                    e,
                )
            })
        }
        Some("http") if veil_auth::is_loopback_host(host) || security.insecure_plaintext => {
            Ok(endpoint)
        }
        Some("http") => Err(ClientError::config(format!(
            "refusing to send the access token in plaintext to {host}: use an https:// URL (with a CA file if the server's certificate comes from a private CA), or opt out with insecure_plaintext (`--insecure-plaintext`) on a network you trust"
        ))),
        _ => Err(ClientError::config(format!(
            "service URL {url:?}: use http:// (loopback) or https://"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_goes_to_loopback_only_unless_opted_out() {
        let strict = Security::default();
        for url in [
            "http://127.0.0.1:7443",
            "http://localhost:7443",
            "http://[::1]:7443",
            "http://127.1.2.3:1",
        ] {
            assert!(endpoint(url, &strict).is_ok(), "{url}");
        }
        for url in [
            "http://192.0.2.1:7443",
            "http://veil.example:7443",
            "http://[2001:db8::1]:1",
        ] {
            let e = endpoint(url, &strict).unwrap_err();
            assert!(
                matches!(e, ClientError::Config { .. }) && e.to_string().contains("plaintext"),
                "{url}: {e}"
            );
        }
        let opted_out = Security {
            insecure_plaintext: true,
            ..Security::default()
        };
        assert!(endpoint("http://192.0.2.1:7443", &opted_out).is_ok());
        let e = endpoint("ftp://192.0.2.1:7443", &opted_out).unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
    }

    #[test]
    fn a_ca_without_a_certificate_is_refused() {
        let dir = std::env::temp_dir().join(format!("veil-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate").unwrap();
        let e = Security::default().with_ca_file(&dir).unwrap_err();
        std::fs::remove_file(&dir).unwrap();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = Security::default()
            .with_ca_file(Path::new("/nonexistent/ca.pem"))
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
