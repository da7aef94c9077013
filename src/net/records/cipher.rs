//! Record protection once the handshake is done: sealing and opening TLS records with the
//! traffic keys rustls hands over (`ExtractedSecrets`), in place.
//!
//! - TLS 1.3 (RFC 8446 §5.2-5.3): every record is `application_data` on the outside; the real
//!   content type follows the content inside the encryption, then optional zero padding; the
//!   nonce is the IV XOR the record's sequence number; the additional data is the record header.
//! - TLS 1.2 AES-GCM (RFC 5288 §3, RFC 5246 §6.2.3.3): an 8-byte explicit nonce precedes the
//!   ciphertext (the nonce is the IV's 4-byte salt and that explicit part; we send the IV XOR
//!   the sequence number, as rustls does); the additional data is the sequence number, type,
//!   version and plaintext length.
//! - TLS 1.2 ChaCha20-Poly1305 (RFC 7905 §2): the nonce is the IV XOR the sequence number,
//!   no explicit part; the additional data as for AES-GCM.

use ring::aead;
use rustls::ConnectionTrafficSecrets;
use std::io;
use std::mem::ManuallyDrop;
use std::ops::Range;
use zeroize::Zeroize;

/// Record header: type, version, length (RFC 8446 §5.1).
pub const HEADER: usize = 5;
/// The AEAD tag every suite here appends.
pub const TAG: usize = 16;
/// Largest plaintext in one record (RFC 8446 §5.1).
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest ciphertext a record may carry (TLS 1.2's bound, RFC 5246 §6.2.3; TLS 1.3's is
/// smaller).
pub const MAX_FRAGMENT: usize = MAX_PLAINTEXT + 2048;
/// Largest record on the wire.
pub const MAX_RECORD: usize = HEADER + MAX_FRAGMENT;

/// Content types (RFC 8446 §5.1).
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

const EXPLICIT_NONCE: usize = 8;

/// The protocol version the handshake agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Tls12,
    Tls13,
}

/// One direction's key, IV and sequence number. Dropping it (a key update replaces it, the
/// stream ends) wipes the key schedule and the IV where they lay; rustls wipes the traffic
/// secrets they came from.
pub struct Keys {
    key: ManuallyDrop<aead::LessSafeKey>,
    iv: [u8; aead::NONCE_LEN],
    version: Version,
    /// TLS 1.2 AES-GCM: records carry an explicit nonce.
    explicit_nonce: bool,
    /// The next record's sequence number.
    pub seq: u64,
}

#[cfg(test)]
impl Keys {
    /// TLS 1.3 AES-128-GCM keys from a traffic secret (RFC 8446 §7.3: key and IV by
    /// HKDF-Expand-Label with SHA-256), for a test server sending a record before rustls hands
    /// over its keys.
    pub fn from_tls13_secret(secret: &[u8], seq: u64) -> io::Result<Keys> {
        struct Len(usize);
        impl ring::hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        let prk = ring::hkdf::Prk::new_less_safe(ring::hkdf::HKDF_SHA256, secret);
        let expand = |label: &[u8], out: &mut [u8]| {
            let length = (out.len() as u16).to_be_bytes();
            let label_len = [6 + label.len() as u8];
            let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
            prk.expand(&info, Len(out.len()))
                .and_then(|okm| okm.fill(out))
                .map_err(|_| io::Error::other("HKDF-Expand-Label"))
        };
        let (mut key, mut iv) = ([0u8; 16], [0u8; aead::NONCE_LEN]);
        expand(b"key", &mut key)?;
        expand(b"iv", &mut iv)?;
        Keys::with(&aead::AES_128_GCM, &key, iv, seq, Version::Tls13)
    }
}

impl Keys {
    /// Keys for one direction from rustls' secrets, starting at sequence number `seq`.
    pub fn new(secrets: ConnectionTrafficSecrets, seq: u64, version: Version) -> io::Result<Keys> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => {
                return Err(io::Error::other(
                    "the negotiated cipher suite is not supported",
                ))
            }
        };
        let iv: [u8; aead::NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| io::Error::other("the traffic IV has the wrong length"))?;
        Keys::with(algorithm, key.as_ref(), iv, seq, version)
    }

    fn with(
        algorithm: &'static aead::Algorithm,
        key: &[u8],
        iv: [u8; aead::NONCE_LEN],
        seq: u64,
        version: Version,
    ) -> io::Result<Keys> {
        let key = aead::UnboundKey::new(algorithm, key)
            .map_err(|_| io::Error::other("the traffic key has the wrong length"))?;
        Ok(Keys {
            key: ManuallyDrop::new(aead::LessSafeKey::new(key)),
            iv,
            version,
            explicit_nonce: algorithm != &aead::CHACHA20_POLY1305 && version == Version::Tls12,
            seq,
        })
    }

    fn nonce(&self, seq: u64) -> [u8; aead::NONCE_LEN] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    /// The bytes a record adds to `plaintext` bytes of content.
    pub fn overhead(&self) -> usize {
        match (self.version, self.explicit_nonce) {
            (Version::Tls13, _) => HEADER + 1 + TAG,
            (Version::Tls12, true) => HEADER + EXPLICIT_NONCE + TAG,
            (Version::Tls12, false) => HEADER + TAG,
        }
    }

    /// Writes one record of content type `typ` holding `plaintext` (at most
    /// [`MAX_PLAINTEXT`]) into `out`, which must hold `plaintext.len() + overhead()` bytes;
    /// returns the record's length. The plaintext is encrypted where it was copied, so `out`
    /// never keeps it, also when sealing fails.
    pub fn seal(&mut self, typ: u8, plaintext: &[u8], out: &mut [u8]) -> io::Result<usize> {
        debug_assert!(plaintext.len() <= MAX_PLAINTEXT);
        self.seal_any(typ, plaintext, out)
    }

    /// [`Self::seal`] without the size check: the hostile server's records in the tests.
    pub(super) fn seal_any(
        &mut self,
        typ: u8,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> io::Result<usize> {
        let total = plaintext.len() + self.overhead();
        let fragment = (total - HEADER) as u16;
        let nonce = self.nonce(self.seq);
        let (header, body) = out[..total].split_at_mut(HEADER);
        let outer = if self.version == Version::Tls13 {
            APPLICATION_DATA
        } else {
            typ
        };
        header.copy_from_slice(&[outer, 3, 3, (fragment >> 8) as u8, fragment as u8]);
        let (sealed_len, body) = match self.version {
            Version::Tls13 => {
                body[..plaintext.len()].copy_from_slice(plaintext);
                body[plaintext.len()] = typ;
                (plaintext.len() + 1, body)
            }
            Version::Tls12 => {
                let body = if self.explicit_nonce {
                    body[..EXPLICIT_NONCE].copy_from_slice(&nonce[4..]);
                    &mut body[EXPLICIT_NONCE..]
                } else {
                    body
                };
                body[..plaintext.len()].copy_from_slice(plaintext);
                (plaintext.len(), body)
            }
        };
        let aad = self.aad(header, typ, plaintext.len());
        let (data, tag_out) = body.split_at_mut(sealed_len);
        let sealed = self.key.seal_in_place_separate_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(&aad[..aad_len(self.version)]),
            data,
        );
        let Ok(tag) = sealed else {
            // What `out` holds is only ever sealed records: no plaintext stays behind.
            data.fill(0);
            return Err(io::Error::other("TLS record encryption failed"));
        };
        tag_out[..TAG].copy_from_slice(tag.as_ref());
        self.seq += 1;
        Ok(total)
    }

    /// Additional data: TLS 1.3 the record header, TLS 1.2 sequence number, type, version and
    /// plaintext length (13 bytes).
    fn aad(&self, header: &[u8], typ: u8, plaintext_len: usize) -> [u8; 13] {
        let mut aad = [0u8; 13];
        match self.version {
            Version::Tls13 => aad[..HEADER].copy_from_slice(header),
            Version::Tls12 => {
                aad[..8].copy_from_slice(&self.seq.to_be_bytes());
                aad[8..11].copy_from_slice(&[typ, 3, 3]);
                aad[11..].copy_from_slice(&(plaintext_len as u16).to_be_bytes());
            }
        }
        aad
    }

    /// Opens the whole record `record` (header and fragment) in place: its content type and
    /// where its content now lies in `record`.
    pub fn open(&mut self, record: &mut [u8]) -> io::Result<(u8, Range<usize>)> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let (header, fragment) = record.split_at_mut(HEADER);
        let outer = header[0];
        let (nonce, start) = match (self.version, self.explicit_nonce) {
            (Version::Tls12, true) => {
                if fragment.len() < EXPLICIT_NONCE + TAG {
                    return Err(bad("TLS record too short"));
                }
                let mut nonce = [0u8; aead::NONCE_LEN];
                nonce[..4].copy_from_slice(&self.iv[..4]);
                nonce[4..].copy_from_slice(&fragment[..EXPLICIT_NONCE]);
                (nonce, EXPLICIT_NONCE)
            }
            _ => (self.nonce(self.seq), 0),
        };
        let sealed = &mut fragment[start..];
        if sealed.len() < TAG + usize::from(self.version == Version::Tls13) {
            return Err(bad("TLS record too short"));
        }
        let aad = self.aad(header, outer, sealed.len() - TAG);
        let opened = self
            .key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(&aad[..aad_len(self.version)]),
                sealed,
            )
            .map_err(|_| bad("TLS record failed to decrypt (bad_record_mac)"))?;
        self.seq += 1;
        let begin = HEADER + start;
        match self.version {
            Version::Tls12 => Ok((outer, begin..begin + opened.len())),
            Version::Tls13 => {
                // The content type is the last non-zero byte (RFC 8446 §5.4).
                let Some(at) = opened.iter().rposition(|&b| b != 0) else {
                    return Err(bad("TLS record without a content type"));
                };
                Ok((opened[at], begin..begin + at))
            }
        }
    }
}

fn aad_len(version: Version) -> usize {
    match version {
        Version::Tls13 => HEADER,
        Version::Tls12 => 13,
    }
}

// ring's key owns no other memory and has no destructor: overwriting its bytes is all there is
// to erase, and nothing runs on it afterwards.
const _: () = assert!(!std::mem::needs_drop::<aead::LessSafeKey>());

impl Drop for Keys {
    fn drop(&mut self) {
        erase(&mut self.key);
        self.iv.zeroize();
    }
}

/// Overwrites the bytes of a value that is never used again with zeros, with volatile writes
/// the compiler cannot drop as dead stores (as `zeroize` does for types it knows).
fn erase<T>(value: &mut ManuallyDrop<T>) {
    let start = (value as *mut ManuallyDrop<T>).cast::<u8>();
    for i in 0..std::mem::size_of::<T>() {
        // SAFETY: `start + i` lies inside `value`, which is borrowed mutably, and writing u8s
        // asserts nothing about T. The value is in a ManuallyDrop its owner never reads or
        // drops again (it is only called from Keys' drop), so no invalid T is ever observed.
        unsafe { start.add(i).write_volatile(0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_key_leaves_no_key_schedule_behind() {
        let key = aead::UnboundKey::new(&aead::AES_128_GCM, &[7; 16]).unwrap();
        let mut key = ManuallyDrop::new(aead::LessSafeKey::new(key));
        erase(&mut key);
        let bytes = (&key as *const ManuallyDrop<aead::LessSafeKey>).cast::<u8>();
        let size = std::mem::size_of::<aead::LessSafeKey>();
        // SAFETY: every byte of `key` was just written by `erase`.
        let bytes = unsafe { std::slice::from_raw_parts(bytes, size) };
        assert!(size > 16 && bytes.iter().all(|&b| b == 0));
    }

    fn keys(suite: u8, version: Version, seq: u64) -> Keys {
        let (algorithm, len) = match suite {
            0 => (&aead::AES_128_GCM, 16),
            1 => (&aead::AES_256_GCM, 32),
            _ => (&aead::CHACHA20_POLY1305, 32),
        };
        Keys::with(algorithm, &[7u8; 32][..len], [0x5a; 12], seq, version).unwrap()
    }

    #[test]
    fn every_suite_and_version_opens_what_it_sealed_and_refuses_a_changed_byte() {
        for version in [Version::Tls12, Version::Tls13] {
            for suite in 0..3 {
                let (mut tx, mut rx) = (keys(suite, version, 5), keys(suite, version, 5));
                for len in [0, 1, 100, MAX_PLAINTEXT] {
                    let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                    let mut out = vec![0u8; len + tx.overhead()];
                    let n = tx.seal(APPLICATION_DATA, &plain, &mut out).unwrap();
                    assert_eq!(n, out.len());
                    let mut copy = out.clone();
                    let (typ, range) = rx.open(&mut copy).unwrap();
                    assert_eq!((typ, &copy[range]), (APPLICATION_DATA, &plain[..]));
                    // The same record again is out of sequence; a changed byte is refused.
                    let mut again = out.clone();
                    assert!(rx.open(&mut again).is_err(), "{version:?} {suite} replay");
                    let mut tampered = out.clone();
                    *tampered.last_mut().unwrap() ^= 1;
                    rx.seq -= 1;
                    assert!(
                        rx.open(&mut tampered).is_err(),
                        "{version:?} {suite} tamper"
                    );
                    rx.seq += 1;
                }
            }
        }
    }

    #[test]
    fn tls13_padding_and_inner_type_are_read_from_the_end() {
        let (mut tx, mut rx) = (keys(0, Version::Tls13, 0), keys(0, Version::Tls13, 0));
        // An alert, its inner type, then zero padding: sealed as content whose own type byte
        // (the record's last plaintext byte) is one more zero of padding.
        let inner = [1u8, 0, ALERT, 0, 0, 0];
        let mut out = vec![0u8; inner.len() + tx.overhead()];
        let n = tx.seal(0, &inner, &mut out).unwrap();
        let mut record = out[..n].to_vec();
        assert_eq!(
            record[0], APPLICATION_DATA,
            "the outer type hides the real one"
        );
        let (typ, range) = rx.open(&mut record).unwrap();
        assert_eq!((typ, &record[range]), (ALERT, &[1u8, 0][..]));
    }
}
