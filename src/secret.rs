//! Secrets that cannot be printed by accident.
//!
//! Passwords, tokens, client secrets and SASL blobs live in [`Secret`] from the moment they are
//! decoded until they are written to a socket or an HTTP body. `Debug` and `Display` print
//! `[REDACTED]`, and the bytes are zeroed on drop. Redaction is done by the types, not by
//! filtering log lines: a value that is a secret is never formatted at all.

use std::fmt;
use zeroize::Zeroize;

/// A credential still inside the bytes it was parsed from (a codec's borrowed view): the
/// codecs hand passwords and SASL responses out in this, so that formatting a parsed command
/// (`{:?}` in a log or a test failure) never shows them. No copy and no zeroing: the bytes
/// belong to the connection's buffer.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Sensitive<T>(T);

impl<T> Sensitive<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Sensitive(value)
    }

    /// The value: only where it is decoded or checked, never to log or format it.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// The value, unwrapped (the caller takes care of it).
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// A secret string (password, token, client secret). Zeroed on drop, redacted when formatted.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret string.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Call this only where the value leaves the process (a socket, an HTTP
    /// body, a KDF); never to log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True for the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

/// Secret bytes (a decoded SASL response, an XOAUTH2 blob). Zeroed on drop, redacted.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Secret bytes.
    pub fn new(value: Vec<u8>) -> Self {
        SecretBytes(value)
    }

    /// The bytes, for the one place that must send them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_formats_the_value() {
        let s = Secret::new("hunter2-canary");
        assert_eq!(format!("{s:?} {s}"), "[REDACTED] [REDACTED]");
        let b = SecretBytes::new(b"canary".to_vec());
        assert_eq!(format!("{b:?}"), "[REDACTED]");
        assert_eq!(s.expose(), "hunter2-canary");
    }
}
