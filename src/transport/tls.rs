//! TLS client settings of the transports' connections (the MQTT broker's,
//! `[mqtt]`, and the polled controller's, `[poll]`): which CAs are trusted
//! (`tls_ca_cert`, or else the platform's trust store), the client
//! certificate for mutual TLS, and, for `poll.tls_insecure` only, a verifier
//! that accepts any server certificate. It reads the files and builds a
//! rustls client config on the `ring` provider; connecting is the clients'
//! business (rumqttc, reqwest).
//!
//! The platform's trust store comes from `rustls-native-certs`: on Linux the
//! distribution's bundle wherever it lives (Debian, Alpine, Fedora, ...), and
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` when set, so a container can point at its
//! own bundle without a config change.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::TlsConfig;

/// Why the TLS settings could not be built; `section` is the config table
/// whose keys are at fault (`mqtt`, `poll`).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A TLS file could not be read.
    #[error("cannot read {path}: {error}")]
    File {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// A TLS file holds no usable certificate or key.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The client certificate and key cannot be used together.
    #[error("{section}.tls_client_cert and {section}.tls_client_key: {reason}")]
    ClientCertificate {
        /// The config table.
        section: &'static str,
        /// What rustls said.
        reason: String,
    },
    /// Without `tls_ca_cert`, the platform's trust store is empty.
    #[error(
        "no trusted CA certificates for TLS: set {section}.tls_ca_cert, or SSL_CERT_FILE \
         or SSL_CERT_DIR to the platform's bundle ({reason})"
    )]
    NoTrustedCertificates {
        /// The config table.
        section: &'static str,
        /// What the platform's store said.
        reason: String,
    },
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCheck {
    /// Against `tls_ca_cert`, or the platform's trust store.
    Verify,
    /// Not at all (`poll.tls_insecure`): any certificate is accepted, only
    /// the handshake's signatures are checked.
    AcceptAny,
}

/// The rustls client settings for `tls` (keys of `section`), every file read
/// and checked now, so that a bad file stops the start instead of failing
/// each connection attempt.
pub fn client_config(
    tls: &TlsConfig,
    check: ServerCheck,
    section: &'static str,
) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = match check {
        ServerCheck::AcceptAny => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider))),
        ServerCheck::Verify => {
            let roots = match &tls.ca_cert {
                Some(path) => {
                    let mut roots = RootCertStore::empty();
                    let (added, _) = roots.add_parsable_certificates(certificates(path)?);
                    if added == 0 {
                        return Err(pem_error(path, "no usable CA certificate"));
                    }
                    roots
                }
                None => platform_roots(section)?,
            };
            builder.with_root_certificates(roots)
        }
    };
    match &tls.client_auth {
        Some((cert, key)) => {
            let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| pem_error(key, format!("no private key: {e}")))?;
            builder
                .with_client_auth_cert(certificates(cert)?, key)
                .map_err(|e| TlsError::ClientCertificate {
                    section,
                    reason: e.to_string(),
                })
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Client settings for a connection that never does TLS (a plain `http://`
/// controller, whose client follows no redirects): they trust no server, so
/// nothing depends on the platform's trust store being there.
pub fn plain_only() -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth()
}

/// The CA certificates the platform trusts.
fn platform_roots(section: &'static str) -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let reason = match found.errors.first() {
            Some(error) => error.to_string(),
            None => "none found".to_owned(),
        };
        return Err(TlsError::NoTrustedCertificates { section, reason });
    }
    for error in &found.errors {
        tracing::warn!("part of the platform's trust store could not be read: {error}");
    }
    Ok(roots)
}

/// Every certificate in the PEM file at `path` (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no PEM certificate"));
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::File {
        path: path.display().to_string(),
        error,
    })
}

fn pem_error(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Accepts any server certificate (`poll.tls_insecure`), for labs and
/// tests; the handshake's signatures are still checked, with the provider's
/// algorithms, so the session itself is sound.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_or_key_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let tls = TlsConfig {
            ca_cert: Some(empty.clone()),
            client_auth: None,
        };
        let error = client_config(&tls, ServerCheck::Verify, "mqtt")
            .unwrap_err()
            .to_string();
        assert!(error.contains("empty.pem"), "{error}");
        let missing = TlsConfig {
            ca_cert: Some(dir.path().join("missing.pem")),
            client_auth: None,
        };
        let error = client_config(&missing, ServerCheck::Verify, "poll")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("cannot read ") && error.contains("missing.pem"),
            "{error}"
        );
    }

    #[test]
    fn accepting_any_certificate_reads_no_ca_file() {
        // The CA file is not even read: nothing is checked against it.
        let tls = TlsConfig {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            client_auth: None,
        };
        client_config(&tls, ServerCheck::AcceptAny, "poll").unwrap();
    }
}
