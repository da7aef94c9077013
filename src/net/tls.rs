//! rustls configurations.
//!
//! Local side: the listener's certificate and key, read from PEM files through
//! `rustls-pki-types` (`PemObject`). Upstream side: the Mozilla roots from `webpki-roots`, plus an
//! optional extra CA file; the host name is always verified, TLS 1.2 is the floor, and there is
//! no switch to turn verification off. Or, for an on-premises server with a self-signed
//! certificate, a pin ([`Pin`], `upstream_pin`): exactly that certificate or key is trusted, as
//! Postfix's `fingerprint` security level does, and nothing else.

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate file could not be read or holds no certificate.
    #[error("cannot read certificates from {path}: {reason}")]
    Certs {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A key file could not be read or holds no usable key.
    #[error("cannot read a private key from {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the combination.
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
    /// A name a certificate could never carry.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// A TLS protocol version a device-side listener accepts at the least.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
pub enum TlsVersion {
    /// TLS 1.0 (RFC 2246), for devices from before about 2016.
    #[serde(rename = "1.0")]
    V1_0,
    /// TLS 1.1 (RFC 4346).
    #[serde(rename = "1.1")]
    V1_1,
    /// TLS 1.2 (RFC 5246), the default: what rustls speaks.
    #[serde(rename = "1.2")]
    V1_2,
}

impl TlsVersion {
    /// True for the versions only the legacy (OpenSSL) listener speaks.
    pub fn is_legacy(self) -> bool {
        self < TlsVersion::V1_2
    }
}

/// How a listener terminates its devices' TLS: rustls, or OpenSSL for a listener that takes
/// TLS 1.0/1.1 ([`super::legacy_tls`]).
#[derive(Clone)]
pub enum Acceptor {
    /// rustls (TLS 1.2 and 1.3): every listener but a legacy one.
    Rustls(tokio_rustls::TlsAcceptor),
    /// OpenSSL, from `tls_min_version` up.
    #[cfg(feature = "legacy-tls")]
    Legacy(Arc<openssl::ssl::SslAcceptor>),
}

impl Acceptor {
    /// The acceptor of a listener with this certificate, key and oldest version.
    pub fn new(cert: &Path, key: &Path, min: TlsVersion) -> Result<Acceptor, TlsError> {
        if !min.is_legacy() {
            return Ok(Acceptor::Rustls(server_config(cert, key)?.into()));
        }
        #[cfg(feature = "legacy-tls")]
        return Ok(Acceptor::Legacy(Arc::new(super::legacy_tls::acceptor(
            cert, key, min,
        )?)));
        #[cfg(not(feature = "legacy-tls"))]
        Err(TlsError::Config(
            "this build has no TLS 1.0/1.1 (cargo feature legacy-tls)".into(),
        ))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Reads every certificate in a PEM file. A file with none is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Certs {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The configuration of a listener that terminates TLS (implicit or STARTTLS).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// A SHA-256 digest the upstream certificate must match: of its SubjectPublicKeyInfo (the key,
/// which survives a renewal with the same key) or of the whole certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pin(pub [u8; 32]);

impl Pin {
    /// `sha256/BASE64` (the form this relay prints), or 64 hex digits with or without colons
    /// (what `openssl x509 -noout -fingerprint -sha256` prints).
    pub fn parse(text: &str) -> Result<Pin, String> {
        use base64::Engine;
        let bytes = if let Some(b64) = text.strip_prefix("sha256/") {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| "the part after sha256/ is not base64".to_owned())?
        } else {
            let hex: String = text.chars().filter(|c| *c != ':').collect();
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err("a pin is sha256/BASE64 or 64 hex digits (colons allowed)".to_owned());
            }
            (0..32)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex digits"))
                .collect()
        };
        let digest: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "a SHA-256 pin has 32 bytes".to_owned())?;
        Ok(Pin(digest))
    }

    fn of(bytes: &[u8]) -> Pin {
        let d = ::ring::digest::digest(&::ring::digest::SHA256, bytes);
        Pin(d.as_ref().try_into().expect("SHA-256 has 32 bytes"))
    }
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use base64::Engine;
        write!(
            f,
            "sha256/{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }
}

/// Trusts exactly the pinned certificates: no CA chain, no host name, no expiry check (the pin
/// names the certificate or its key, like Postfix's `fingerprint` level). The handshake's
/// signatures are still verified, so only the key's holder can pass.
#[derive(Debug)]
struct PinnedVerifier {
    pins: Vec<Pin>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let whole = Pin::of(end_entity);
        let key = webpki::EndEntityCert::try_from(end_entity)
            .map(|c| Pin::of(c.subject_public_key_info().as_ref()))
            .map_err(|e| {
                rustls::Error::General(format!("the upstream certificate cannot be read: {e}"))
            })?;
        if self.pins.iter().any(|p| *p == whole || *p == key) {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        Err(rustls::Error::General(format!(
            "the upstream certificate matches no upstream_pin: its key is {key}, the certificate {whole}"
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The configuration used to reach an upstream server that is trusted by its pins alone.
pub fn pinned_client_config(pins: &[Pin]) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
            pins: pins.to_vec(),
            provider,
        }))
        .with_no_client_auth();
    Ok(Arc::new(upstream_ready(config)))
}

/// Lets rustls hand the traffic keys over after the handshake: the records that follow are
/// sealed and opened by `net::records` (see there why).
fn upstream_ready(mut config: ClientConfig) -> ClientConfig {
    config.enable_secret_extraction = true;
    config
}

/// The configuration used to reach an upstream server.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|e| TlsError::Certs {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(upstream_ready(config)))
}
