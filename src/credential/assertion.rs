//! Certificate credentials for the client-credentials grant: a JWT client assertion (RFC 7523)
//! signed with RS256, naming the certificate by its SHA-1 (`x5t`) and SHA-256 (`x5t#S256`)
//! thumbprints, as Microsoft Entra ID expects.

use crate::secret::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// An RSA private key and the thumbprints of its certificate.
pub struct CertificateSigner {
    key: RsaKeyPair,
    x5t: String,
    x5t_s256: String,
    not_after: SystemTime,
}

impl std::fmt::Debug for CertificateSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateSigner")
            .field("x5t", &self.x5t)
            .finish_non_exhaustive()
    }
}

impl CertificateSigner {
    /// Loads a PEM certificate and its PEM RSA private key (PKCS#8 or PKCS#1).
    pub fn load(cert: &Path, key: &Path) -> Result<CertificateSigner, String> {
        let cert_der = CertificateDer::from_pem_file(cert)
            .map_err(|e| format!("{}: no PEM certificate ({e})", cert.display()))?;
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("{}: no PEM private key ({e})", key.display()))?;
        let key = match &key_der {
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => {
                return Err(format!(
                    "{}: the certificate key must be an RSA key (PKCS#8 or PKCS#1)",
                    key.display()
                ))
            }
        }
        .map_err(|e| format!("{}: not a usable RSA key ({e})", key.display()))?;
        let not_after = not_after(&cert_der)
            .map_err(|e| format!("{}: not an X.509 certificate ({e})", cert.display()))?;
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &cert_der);
        let sha256 = ring::digest::digest(&ring::digest::SHA256, &cert_der);
        Ok(CertificateSigner {
            key,
            x5t: B64URL.encode(sha1),
            x5t_s256: B64URL.encode(sha256),
            not_after,
        })
    }

    /// When the certificate stops being valid (its `notAfter`, RFC 5280 §4.1.2.5): Entra ID
    /// refuses assertions signed for it after that, so alerts warn ahead of it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// A fresh assertion for `client_id` at `token_url`, valid for ten minutes.
    pub fn assertion(&self, client_id: &str, token_url: &str) -> Result<Secret, String> {
        let rng = SystemRandom::new();
        let mut jti = [0u8; 16];
        rng.fill(&mut jti)
            .map_err(|_| "no randomness".to_string())?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let header = serde_json::json!({
            "alg": "RS256", "typ": "JWT", "x5t": self.x5t, "x5t#S256": self.x5t_s256,
        });
        let claims = serde_json::json!({
            "aud": token_url, "iss": client_id, "sub": client_id,
            "jti": B64URL.encode(jti), "nbf": now, "iat": now, "exp": now + 600,
        });
        let signing_input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &rng,
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "signing the client assertion failed".to_string())?;
        Ok(Secret::new(format!(
            "{signing_input}.{}",
            B64URL.encode(signature)
        )))
    }
}
/// The `notAfter` of the PEM certificate at `path`.
pub fn certificate_not_after(path: &Path) -> Result<SystemTime, String> {
    let der = CertificateDer::from_pem_file(path)
        .map_err(|e| format!("{}: no PEM certificate ({e})", path.display()))?;
    not_after(&der).map_err(|e| format!("{}: not an X.509 certificate ({e})", path.display()))
}

/// A DER certificate's `notAfter`.
fn not_after(der: &[u8]) -> Result<SystemTime, String> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| e.to_string())?;
    Ok(cert.tbs_certificate().validity().not_after.to_system_time())
}
