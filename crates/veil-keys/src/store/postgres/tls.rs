//! TLS to PostgreSQL (KDS-PG-TLS-01/02, specs/key-service.md §5.3): rustls, as the gRPC and
//! web listeners use, with the server's certificate always verified against the system's
//! roots or the deployment's own CA.
//!
//! The URL's `sslmode` decides whether TLS is used: `disable` never, `prefer` (PostgreSQL's
//! default) when the server offers it, `require` always. Unlike libpq's `require`, which
//! accepts any certificate, a certificate that does not verify is always refused: a deployment
//! with a private CA names it (`--database-ca-file`). SCRAM channel binding is not offered
//! (`ChannelBinding::none`); the password exchange stays SCRAM-SHA-256 inside verified TLS.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

use crate::error::KdsError;

/// What makes TLS connections to PostgreSQL: a rustls client configuration.
#[derive(Clone)]
pub(super) struct PgTls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgTls")
    }
}

impl PgTls {
    /// Trust the certificates of `ca_pem` (PEM, one or more) if given, else the system's
    /// roots.
    ///
    /// # Errors
    /// [`KdsError::Storage`] if the PEM holds no certificate or the system has no roots.
    pub(super) fn new(ca_pem: Option<&[u8]>) -> Result<Self, KdsError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| {
                        KdsError::storage_by("the PostgreSQL CA file (expected PEM)", e)
                    })?;
                    roots.add(cert).map_err(|e| {
                        KdsError::storage_by("a certificate of the PostgreSQL CA file", e)
                    })?;
                }
                if roots.is_empty() {
                    return Err(KdsError::storage(
                        "the PostgreSQL CA file holds no certificate (expected PEM)",
                    ));
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(KdsError::storage(
                        "no system CA certificates to verify PostgreSQL with: install \
                         ca-certificates or give --database-ca-file",
                    ));
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| KdsError::storage_by("the TLS configuration for PostgreSQL", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = rustls_pki_types::InvalidDnsNameError;

    /// tokio-postgres asks for a connector for every host, a Unix socket directory too
    /// (which never speaks TLS): a host that is no DNS name or IP address fails only if TLS is
    /// attempted with it.
    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, Self::Error> {
        Ok(PgTlsConnect {
            config: self.config.clone(),
            name: ServerName::try_from(domain.to_owned()).map_err(|_| domain.to_owned()),
        })
    }
}

/// One connection's TLS handshake.
pub(super) struct PgTlsConnect {
    config: Arc<rustls::ClientConfig>,
    /// The host's name, or the host as given if it is none.
    name: Result<ServerName<'static>, String>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self.name.map_err(|host| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("TLS needs a host name or IP address, not {host:?}"),
                )
            })?;
            TlsConnector::from(self.config)
                .connect(name, stream)
                .await
                .map(PgTlsStream)
        })
    }
}

/// A TLS connection to PostgreSQL.
pub(super) struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
