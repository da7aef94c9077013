//! Keys and sealing for the token store: Argon2id or HKDF-SHA256 key derivation, and
//! XChaCha20-Poly1305 with the account and field as associated data.

use super::Sealed;
use crate::secret::Secret;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const AAD_PREFIX: &[u8] = b"authrelay-store-v1";

/// How an entry's secrets are sealed. Stored with the entry, so the right key can be derived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Seal {
    /// A key derived from the account's local password with Argon2id.
    Password {
        /// 16 random bytes, base64.
        salt: String,
        /// Argon2 memory cost in KiB.
        m_cost: u32,
        /// Argon2 iterations.
        t_cost: u32,
        /// Argon2 parallelism.
        p_cost: u32,
    },
    /// The store key from `[store] key_file`.
    StoreKey,
}

impl Seal {
    /// A password seal with a new random salt and the Argon2 crate's recommended parameters.
    pub fn new_password() -> Seal {
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let p = argon2::Params::default();
        Seal::Password {
            salt: B64.encode(salt),
            m_cost: p.m_cost(),
            t_cost: p.t_cost(),
            p_cost: p.p_cost(),
        }
    }
}

/// A 256-bit store key and the seal it belongs to. Zeroed on drop; never formatted.
#[derive(Clone)]
pub struct Key {
    bytes: Zeroizing<[u8; 32]>,
    /// How the key was made.
    pub seal: Seal,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key([REDACTED])")
    }
}

impl Key {
    /// Derives the store key from a key file's content (at least 32 bytes, for example
    /// `head -c 32 /dev/urandom | base64`) with HKDF-SHA256.
    pub fn from_key_file(material: &Secret) -> Result<Key, String> {
        let m = material.expose().trim();
        if m.len() < 32 {
            return Err(
                "the store key must hold at least 32 characters (make one with: head -c 32 /dev/urandom | base64)"
                    .into(),
            );
        }
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"authrelay-store");
        let prk = salt.extract(m.as_bytes());
        let info: [&[u8]; 1] = [b"authrelay store key v1"];
        let okm = prk
            .expand(&info, ring::hkdf::HKDF_SHA256)
            .map_err(|_| "key derivation failed".to_string())?;
        let mut bytes = Zeroizing::new([0u8; 32]);
        okm.fill(&mut bytes[..])
            .map_err(|_| "key derivation failed".to_string())?;
        Ok(Key {
            bytes,
            seal: Seal::StoreKey,
        })
    }

    /// Derives a key from a local password with the seal's Argon2id parameters (CPU- and
    /// memory-heavy: call it on a blocking thread).
    pub fn from_password(password: &Secret, seal: Seal) -> Option<Key> {
        let Seal::Password {
            salt,
            m_cost,
            t_cost,
            p_cost,
        } = &seal
        else {
            return None;
        };
        let salt = B64.decode(salt).ok()?;
        let params = argon2::Params::new(*m_cost, *t_cost, *p_cost, Some(32)).ok()?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut bytes = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(password.expose().as_bytes(), &salt, &mut bytes[..])
            .ok()?;
        Some(Key { bytes, seal })
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.bytes).into())
    }

    fn aad(account: &str, field: &str) -> Vec<u8> {
        let mut aad = AAD_PREFIX.to_vec();
        aad.push(0);
        aad.extend_from_slice(account.as_bytes());
        aad.push(0);
        aad.extend_from_slice(field.as_bytes());
        aad
    }

    pub(super) fn seal_value(&self, account: &str, field: &str, value: &Secret) -> Sealed {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = Self::aad(account, field);
        let ct = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value.expose().as_bytes(),
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption of a short value cannot fail");
        Sealed {
            nonce: B64.encode(nonce),
            ct: B64.encode(ct),
        }
    }

    pub(super) fn open(&self, account: &str, field: &str, sealed: &Sealed) -> Option<Secret> {
        let nonce = B64.decode(&sealed.nonce).ok()?;
        if nonce.len() != 24 {
            return None;
        }
        let ct = B64.decode(&sealed.ct).ok()?;
        let aad = Self::aad(account, field);
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &ct,
                        aad: &aad,
                    },
                )
                .ok()?,
        );
        std::str::from_utf8(&plain).ok().map(Secret::new)
    }
}
