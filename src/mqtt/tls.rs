//! TLS client settings of the broker connections: which CAs are trusted
//! (`mqtt.tls_ca_cert`, or else the platform's trust store) and the client
//! certificate for mutual TLS. It reads the files and builds a rustls client
//! config; connecting is rumqttc's business.
//!
//! The platform's trust store comes from `rustls-native-certs`: on Linux the
//! distribution's bundle wherever it lives (Debian, Alpine, Fedora, ...), and
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` when set, so a container can point at its
//! own bundle without a config change.

use std::path::Path;
use std::sync::Arc;

use rumqttc::TlsConfiguration;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::options::ClientError;
use crate::config::TlsConfig;

/// The rustls settings for `tls`, every file read and checked now, so that a
/// bad file stops the start instead of failing each connection attempt.
pub fn tls_configuration(tls: &TlsConfig) -> Result<TlsConfiguration, ClientError> {
    let roots = match &tls.ca_cert {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certificates(path)?);
            if added == 0 {
                return Err(pem_error(path, "no usable CA certificate"));
            }
            roots
        }
        None => platform_roots()?,
    };
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let config = match &tls.client_auth {
        Some((cert, key)) => {
            let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| pem_error(key, format!("no private key: {e}")))?;
            builder
                .with_client_auth_cert(certificates(cert)?, key)
                .map_err(|e| ClientError::ClientCertificate(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// The CA certificates the platform trusts.
fn platform_roots() -> Result<RootCertStore, ClientError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = match found.errors.first() {
            Some(error) => error.to_string(),
            None => "none found".to_owned(),
        };
        return Err(ClientError::NoTrustedCertificates(why));
    }
    for error in &found.errors {
        tracing::warn!("part of the platform's trust store could not be read: {error}");
    }
    Ok(roots)
}

/// Every certificate in the PEM file at `path` (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no PEM certificate"));
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|error| ClientError::TlsFile {
        path: path.display().to_string(),
        error,
    })
}

fn pem_error(path: &Path, reason: impl Into<String>) -> ClientError {
    ClientError::TlsPem {
        path: path.display().to_string(),
        reason: reason.into(),
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
        let error = tls_configuration(&tls).unwrap_err().to_string();
        assert!(error.contains("empty.pem"), "{error}");
        let missing = TlsConfig {
            ca_cert: Some(dir.path().join("missing.pem")),
            client_auth: None,
        };
        let error = tls_configuration(&missing).unwrap_err().to_string();
        assert!(
            error.starts_with("cannot read ") && error.contains("missing.pem"),
            "{error}"
        );
    }
}
