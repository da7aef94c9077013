//! Device-side TLS 1.0 and 1.1 (`tls_min_version = "1.0"` or `"1.1"`), through OpenSSL.
//!
//! Printers, copiers and alarm panels from before about 2016 speak TLS 1.0 or 1.1 only; RFC
//! 8996 deprecated both, and rustls will never speak them. A listener that opts in terminates
//! its devices' TLS with the system's OpenSSL instead, and only that listener: every other
//! listener, and every upstream connection, stays rustls with TLS 1.2 as the floor.
//!
//! What it offers: the versions from `tls_min_version` up to TLS 1.3 (so current clients keep
//! working on it) and, below TLS 1.3, [`CIPHERS`]: ECDHE or RSA key exchange with AES in GCM or
//! CBC mode, the server's order, ECDHE and GCM first. Never RC4, 3DES, DES, export, NULL or
//! anonymous suites, never SSLv2/SSLv3, no compression (CRIME) and no renegotiation. OpenSSL 3
//! refuses the MD5+SHA-1 handshake signatures of TLS 1.0/1.1 at its default security level, so
//! the level is 0 on this listener alone (`@SECLEVEL=0`). An RSA certificate is what such
//! devices know.

use super::tls::{TlsError, TlsVersion};
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslOptions, SslVersion};
use std::path::Path;

/// The cipher suites below TLS 1.3, in OpenSSL's syntax (`openssl ciphers -v` lists them).
pub const CIPHERS: &str = "ECDHE+AESGCM:ECDHE+AES:RSA+AESGCM:RSA+AES:!aNULL:!eNULL:!EXPORT:!RC4:!3DES:!DES:!MD5:!PSK:!SRP:!DSS:!CAMELLIA:!ARIA:!AESCCM:@SECLEVEL=0";

/// The OpenSSL acceptor of a listener whose devices may use TLS from `min` up.
pub fn acceptor(cert: &Path, key: &Path, min: TlsVersion) -> Result<SslAcceptor, TlsError> {
    let config = |e: openssl::error::ErrorStack| TlsError::Config(e.to_string());
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(config)?;
    let version = match min {
        TlsVersion::V1_0 => SslVersion::TLS1,
        TlsVersion::V1_1 => SslVersion::TLS1_1,
        TlsVersion::V1_2 => SslVersion::TLS1_2,
    };
    // Mozilla's intermediate profile switches the old versions off by option as well.
    b.clear_options(SslOptions::NO_TLSV1 | SslOptions::NO_TLSV1_1);
    b.set_min_proto_version(Some(version)).map_err(config)?;
    b.set_cipher_list(CIPHERS).map_err(config)?;
    b.set_options(
        SslOptions::NO_SSLV2
            | SslOptions::NO_SSLV3
            | SslOptions::NO_COMPRESSION
            | SslOptions::CIPHER_SERVER_PREFERENCE
            | SslOptions::NO_RENEGOTIATION,
    );
    b.set_certificate_chain_file(cert)
        .map_err(|e| TlsError::Certs {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    b.set_private_key_file(key, SslFiletype::PEM)
        .map_err(|e| TlsError::Key {
            path: key.display().to_string(),
            reason: e.to_string(),
        })?;
    b.check_private_key().map_err(config)?;
    Ok(b.build())
}
