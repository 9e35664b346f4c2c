//! TLS on the gRPC and web listeners (SRV-TLS-01..05, specs/key-service.md §9.3).
//!
//! The server's own accept loop ([`crate::listen`]) runs the TLS handshake after a connection
//! is admitted under the caps and inside its handshake timeout, so a client that opens TCP and
//! never finishes TLS costs what a silent plaintext one does (SRV-TLS-03). The certificate
//! chain and key are PEM files (`--tls-cert`, `--tls-key`); both listeners use them, the gRPC
//! listener offering ALPN `h2` only, the web listener `h2` and `http/1.1` (a browser may speak
//! either). The crypto provider is rustls's `ring` one, named here rather than installed as the
//! process default: it is the provider webrtc-rs's DTLS already links.
//!
//! Plaintext is the zero-setup default only on loopback: [`check_plaintext`] refuses to start a
//! gRPC or web listener without TLS on any other address unless the operator opts out
//! (`--insecure-plaintext`, e.g. behind a TLS-terminating proxy), since every call carries an
//! access token (SRV-TLS-04).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::ServerError;

/// The PEM files of the server's certificate chain (its own certificate first) and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM (`-----BEGIN CERTIFICATE-----` blocks).
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The TLS acceptors of the two listeners, built once from [`TlsFiles`].
#[derive(Clone)]
pub struct Acceptors {
    /// The gRPC listener's: ALPN `h2`.
    pub grpc: TlsAcceptor,
    /// The web listener's: ALPN `h2`, `http/1.1`.
    pub web: TlsAcceptor,
}

impl std::fmt::Debug for Acceptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptors").finish_non_exhaustive()
    }
}

fn read(file: &'static str, path: &Path, flag: &str) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|e| ServerError::TlsFile {
        file,
        path: path.to_owned(),
        why: format!("cannot be read ({e}); check the path given to {flag}"),
    })
}

impl Acceptors {
    /// Read and check `files` (SRV-TLS-02): the chain must hold a certificate, the key file a
    /// private key, and the key must belong to the first certificate.
    ///
    /// # Errors
    /// [`ServerError::TlsFile`] for a file that cannot be read or holds no certificate or key;
    /// [`ServerError::TlsKeyMismatch`] for a key that rustls cannot use with the certificate.
    pub fn load(files: &TlsFiles) -> Result<Self, ServerError> {
        let cert_pem = read("certificate", &files.cert, "--tls-cert")?;
        let key_pem = read("key", &files.key, "--tls-key")?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ServerError::TlsFile {
                file: "certificate",
                path: files.cert.clone(),
                why: format!("is not valid PEM ({e})"),
            })?;
        if chain.is_empty() {
            return Err(ServerError::TlsFile {
                file: "certificate",
                path: files.cert.clone(),
                why: "holds no PEM certificate (`-----BEGIN CERTIFICATE-----`): give the \
                      server's certificate chain, its own certificate first"
                    .into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| ServerError::TlsFile {
            file: "key",
            path: files.key.clone(),
            why: match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "holds no PEM private key (`-----BEGIN PRIVATE KEY-----`, PKCS#8, PKCS#1 \
                     or SEC1): give the key the certificate was issued for"
                        .into()
                }
                e => format!("is not valid PEM ({e})"),
            },
        })?;
        let config = |alpn: &[&[u8]]| -> Result<Arc<rustls::ServerConfig>, ServerError> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut c = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|source| mismatch(files, source))?
                .with_no_client_auth()
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|source| mismatch(files, source))?;
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(c))
        };
        Ok(Self {
            grpc: TlsAcceptor::from(config(&[b"h2"])?),
            web: TlsAcceptor::from(config(&[b"h2", b"http/1.1"])?),
        })
    }
}

fn mismatch(files: &TlsFiles, source: rustls::Error) -> ServerError {
    ServerError::TlsKeyMismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    }
}

/// SRV-TLS-04: without TLS, a gRPC or web listener must be on loopback unless `insecure` (the
/// operator's explicit opt-out); the metrics listener carries no token and is not checked.
///
/// # Errors
/// [`ServerError::PlaintextNotLoopback`] naming the first listener that breaks the rule.
pub fn check_plaintext(
    tls: bool,
    insecure: bool,
    listeners: &[(&'static str, Option<SocketAddr>)],
) -> Result<(), ServerError> {
    if tls || insecure {
        return Ok(());
    }
    match listeners
        .iter()
        .find_map(|(name, a)| a.filter(|a| !a.ip().is_loopback()).map(|a| (*name, a)))
    {
        Some((listener, addr)) => Err(ServerError::PlaintextNotLoopback { listener, addr }),
        None => Ok(()),
    }
}

/// A connection's byte stream: the TCP socket, or TLS over it (SRV-TLS-01).
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.get_ref().0,
        }
    }
}

/// Both variants are `Unpin`: `Pin::new` on each.
macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => $e,
            Stream::Tls($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_refused_off_loopback_unless_opted_out() {
        let lo = Some(SocketAddr::from(([127, 0, 0, 1], 7443)));
        let any = Some(SocketAddr::from(([0, 0, 0, 0], 7480)));
        let v6 = Some("[::1]:7443".parse().unwrap());
        assert!(check_plaintext(false, false, &[("gRPC", lo), ("web", v6)]).is_ok());
        assert!(check_plaintext(false, false, &[("gRPC", lo), ("web", None)]).is_ok());
        let e = check_plaintext(false, false, &[("gRPC", lo), ("web", any)]).unwrap_err();
        assert!(
            matches!(
                e,
                ServerError::PlaintextNotLoopback {
                    listener: "web",
                    ..
                }
            ),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("0.0.0.0:7480") && msg.contains("--tls-cert"),
            "{msg}"
        );
        assert!(check_plaintext(true, false, &[("web", any)]).is_ok());
        assert!(check_plaintext(false, true, &[("web", any)]).is_ok());
    }
}
