//! The rustls client configuration for an `sslmode`: which certificates are trusted,
//! whether the host name is checked, and the client certificate.
//!
//! Built once, in [`PostgresPool::new`](super::PostgresPool::new), on the caller's
//! thread, so a missing or unreadable file is reported there rather than by the first
//! transaction. The verifiers then run inside rustls on Tokio workers.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::libpq::{RootCerts, SslMode, TlsOptions};

/// The client configuration for `options`, or `None` when TLS is never used
/// (`sslmode=disable`).
pub(crate) fn client_config(options: &TlsOptions) -> anyhow::Result<Option<rustls::ClientConfig>> {
    if options.mode == SslMode::Disable {
        return Ok(None);
    }
    // Our own provider, not the process default: another crate's choice of default
    // cannot change (or break) ours.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match &options.roots {
        RootCerts::None => Arc::new(AnyCertificate(provider.clone())),
        roots => {
            let store = Arc::new(root_store(roots)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                .build()
                .map_err(|e| anyhow::anyhow!("cannot use the root certificates: {e}"))?;
            if options.mode == SslMode::VerifyFull {
                webpki
            } else {
                // libpq checks the chain in every mode once roots are given, and the
                // host name only in verify-full.
                Arc::new(AnyName(webpki))
            }
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS setup failed: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &options.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    anyhow::anyhow!("cannot read the client certificate {cert:?} (sslcert): {e}")
                })?;
            if chain.is_empty() {
                anyhow::bail!(
                    "the client certificate file {cert:?} (sslcert) holds no certificate"
                );
            }
            check_key_permissions(key)?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| anyhow::anyhow!("cannot read the client key {key:?} (sslkey): {e}"))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                anyhow::anyhow!("the client key {key:?} does not fit the certificate {cert:?}: {e}")
            })?
        }
    };
    Ok(Some(config))
}

fn root_store(roots: &RootCerts) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match roots {
        RootCerts::None => {}
        RootCerts::File(file) => {
            let certs = CertificateDer::pem_file_iter(file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    anyhow::anyhow!("cannot read the root certificates {file:?} (sslrootcert): {e}")
                })?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                anyhow::bail!(
                    "the root certificate file {file:?} (sslrootcert) holds no usable certificate"
                );
            }
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                anyhow::bail!(
                    "sslrootcert=system, but no trusted root certificates were found on this \
                     system{}",
                    found
                        .errors
                        .first()
                        .map_or(String::new(), |e| format!(" ({e})"))
                );
            }
        }
    }
    Ok(store)
}

/// As libpq: a key file others can read is refused (unless root owns it and only its
/// group may read it).
fn check_key_permissions(key: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let metadata = std::fs::metadata(key)
        .map_err(|e| anyhow::anyhow!("cannot read the client key {key:?} (sslkey): {e}"))?;
    let mode = metadata.permissions().mode();
    let too_open = if metadata.uid() == 0 {
        mode & 0o037 != 0
    } else {
        mode & 0o077 != 0
    };
    if too_open {
        anyhow::bail!(
            "the client key {key:?} (sslkey) has group or world access; it must have \
             permissions u=rw (0600) or less"
        );
    }
    Ok(())
}

/// `prefer` and `require` without roots: encrypted, but any certificate will do, as
/// in libpq. The handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name may be anything.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
