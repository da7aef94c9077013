//! SASL messages: what legacy clients send (PLAIN, LOGIN) and what the relay sends upstream
//! (XOAUTH2). Protocol-neutral: SMTP, IMAP and POP3 carry the same base64 payloads.

use crate::secret::{Secret, SecretBytes};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::Zeroize;

/// The LOGIN mechanism's first challenge, `base64("Username:")`.
pub const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
/// The LOGIN mechanism's second challenge, `base64("Password:")`.
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// Longest username accepted from a client, in bytes.
pub const MAX_USERNAME: usize = 320;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
/// Why SASL credentials cannot be used.
pub enum SaslError {
    #[error("the response is not valid base64")]
    /// Not valid base64.
    BadBase64,
    #[error("the PLAIN message is malformed")]
    /// A PLAIN message without its two NULs (RFC 4616 §2).
    MalformedPlain,
    #[error("the username is empty, too long, not UTF-8 or contains control characters")]
    /// An empty, overlong or control-character username.
    BadUsername,
    #[error("the password is not UTF-8")]
    /// An empty, overlong or non-UTF-8 password.
    BadPassword,
    #[error("the client asked to act as another user")]
    /// An authorization identity other than the username.
    AuthzidMismatch,
}

/// The mechanisms a legacy client may use with the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// PLAIN (RFC 4616).
    Plain,
    /// LOGIN (draft-murchison-sasl-login).
    Login,
}

impl Mechanism {
    /// Recognizes a mechanism name, case-insensitively. Anything else (XOAUTH2, CRAM-MD5, …) is
    /// not offered to legacy clients.
    pub fn parse(name: &[u8]) -> Option<Self> {
        if name.eq_ignore_ascii_case(b"PLAIN") {
            Some(Mechanism::Plain)
        } else if name.eq_ignore_ascii_case(b"LOGIN") {
            Some(Mechanism::Login)
        } else {
            None
        }
    }
}

/// A username and password as the legacy client sent them.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The username, as sent.
    pub username: String,
    /// The password (never logged).
    pub password: Secret,
}

/// Strict base64 (RFC 4648 alphabet, padding only at the end, no white space), as RFC 4954 §4
/// requires. The result is a secret: it usually holds a password.
pub fn decode_base64(input: &[u8]) -> Result<SecretBytes, SaslError> {
    STANDARD
        .decode(input)
        .map(SecretBytes::new)
        .map_err(|_| SaslError::BadBase64)
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn encode_base64(input: &[u8]) -> String {
    STANDARD.encode(input)
}

/// Parses a PLAIN message (RFC 4616 §2): `[authzid] NUL authcid NUL passwd`.
///
/// An authorization identity is accepted only when it names the same user: the relay never lets
/// one local user act as another.
pub fn parse_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::MalformedPlain);
    };
    if passwd.contains(&0) {
        return Err(SaslError::MalformedPlain);
    }
    let username = parse_username(authcid)?;
    if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(username.as_bytes()) {
        return Err(SaslError::AuthzidMismatch);
    }
    Ok(Credentials {
        username,
        password: parse_password(passwd)?,
    })
}

/// Checks a username: UTF-8, 1..=320 bytes, no control characters. A username with %x01, CR or
/// LF would otherwise corrupt an XOAUTH2 blob or a reply line.
pub fn parse_username(raw: &[u8]) -> Result<String, SaslError> {
    let s = std::str::from_utf8(raw).map_err(|_| SaslError::BadUsername)?;
    if s.is_empty() || s.len() > MAX_USERNAME || s.chars().any(char::is_control) {
        return Err(SaslError::BadUsername);
    }
    Ok(s.to_owned())
}

/// Checks a password as sent: UTF-8, not empty, not overlong.
pub fn parse_password(raw: &[u8]) -> Result<Secret, SaslError> {
    std::str::from_utf8(raw)
        .map(Secret::from)
        .map_err(|_| SaslError::BadPassword)
}

/// Builds the XOAUTH2 initial client response, base64-encoded and ready to send:
/// `base64("user=" user %x01 "auth=Bearer " token %x01 %x01)`.
///
/// The caller has validated `user` with [`parse_username`] or the configuration; a control
/// character in it is a bug and yields `BadUsername` rather than a corrupt blob.
pub fn xoauth2_response(user: &str, token: &Secret) -> Result<SecretBytes, SaslError> {
    if user.chars().any(char::is_control) || token.expose().chars().any(char::is_control) {
        return Err(SaslError::BadUsername);
    }
    let mut raw = Vec::with_capacity(user.len() + token.expose().len() + 20);
    raw.extend_from_slice(b"user=");
    raw.extend_from_slice(user.as_bytes());
    raw.extend_from_slice(b"\x01auth=Bearer ");
    raw.extend_from_slice(token.expose().as_bytes());
    raw.extend_from_slice(b"\x01\x01");
    let encoded = STANDARD.encode(&raw).into_bytes();
    raw.zeroize();
    Ok(SecretBytes::new(encoded))
}

/// The bearer-token mechanism an account logs in upstream with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BearerMechanism {
    /// `XOAUTH2` (Google's and Microsoft's): what Microsoft 365 and Gmail speak.
    #[default]
    XOAuth2,
    /// `OAUTHBEARER` (RFC 7628): the standard one, for servers that speak only it.
    OAuthBearer,
}

impl BearerMechanism {
    /// The SASL mechanism name.
    pub fn name(self) -> &'static [u8] {
        match self {
            BearerMechanism::XOAuth2 => b"XOAUTH2",
            BearerMechanism::OAuthBearer => b"OAUTHBEARER",
        }
    }

    /// The initial client response, base64-encoded. OAUTHBEARER carries the server's host and
    /// port (RFC 7628 §3.1).
    pub fn response(
        self,
        user: &str,
        token: &Secret,
        host: &str,
        port: u16,
    ) -> Result<SecretBytes, SaslError> {
        match self {
            BearerMechanism::XOAuth2 => xoauth2_response(user, token),
            BearerMechanism::OAuthBearer => oauthbearer_response(user, token, host, port),
        }
    }

    /// What the client answers to an error challenge before the server's final failure: an
    /// empty response for XOAUTH2, the single octet %x01 for OAUTHBEARER (RFC 7628 §3.2.3).
    pub fn error_answer(self) -> &'static [u8] {
        match self {
            BearerMechanism::XOAuth2 => b"",
            BearerMechanism::OAuthBearer => b"AQ==",
        }
    }
}

/// Builds the OAUTHBEARER initial client response (RFC 7628 §3.1), base64-encoded:
/// `n,a=USER,` %x01 `host=HOST` %x01 `port=PORT` %x01 `auth=Bearer TOKEN` %x01 %x01, with `,`
/// and `=` in the authorization identity escaped as `=2C` and `=3D` (RFC 5801 §5).
pub fn oauthbearer_response(
    user: &str,
    token: &Secret,
    host: &str,
    port: u16,
) -> Result<SecretBytes, SaslError> {
    let controls = |s: &str| s.chars().any(char::is_control);
    if controls(user) || controls(token.expose()) || controls(host) {
        return Err(SaslError::BadUsername);
    }
    let user = user.replace('=', "=3D").replace(',', "=2C");
    let mut raw = format!("n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer ").into_bytes();
    raw.extend_from_slice(token.expose().as_bytes());
    raw.extend_from_slice(b"\x01\x01");
    let encoded = STANDARD.encode(&raw).into_bytes();
    raw.zeroize();
    Ok(SecretBytes::new(encoded))
}

/// Builds a PLAIN response for an upstream login (app passwords, pass-through), base64-encoded.
pub fn plain_response(user: &str, password: &Secret) -> SecretBytes {
    let mut raw = Vec::with_capacity(user.len() + password.expose().len() + 2);
    raw.push(0);
    raw.extend_from_slice(user.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.expose().as_bytes());
    let encoded = STANDARD.encode(&raw).into_bytes();
    raw.zeroize();
    SecretBytes::new(encoded)
}

/// What an XOAUTH2 error challenge says (Google and Dovecot send `base64(JSON)` before failing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XoauthChallenge {
    /// The `status` member: "401" means the token was rejected and a fresh one may succeed.
    pub status: Option<String>,
}

impl XoauthChallenge {
    /// True when the server said the token was refused (status 401), so a fresh one may work.
    pub fn token_rejected(&self) -> bool {
        matches!(self.status.as_deref(), Some("401") | Some("invalid_token"))
    }
}

/// Decodes an XOAUTH2 error challenge leniently: bad base64 or JSON yields an empty status.
pub fn parse_xoauth2_challenge(payload: &[u8]) -> XoauthChallenge {
    let payload = payload.trim_ascii();
    let status = STANDARD
        .decode(payload)
        .ok()
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .and_then(|v| match v.get("status")? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    XoauthChallenge { status }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoauth2_matches_microsoft_vector() {
        let blob = xoauth2_response(
            "test@contoso.onmicrosoft.com",
            &Secret::new("EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA"),
        )
        .unwrap();
        assert_eq!(
            blob.expose(),
            b"dXNlcj10ZXN0QGNvbnRvc28ub25taWNyb3NvZnQuY29tAWF1dGg9QmVhcmVyIEV3QkFBbDNCQUFVRkZwVUFvN0ozVmUwYmpMQldaV0NjbFJDM0VvQUEBAQ=="
        );
    }

    #[test]
    fn xoauth2_matches_google_vector() {
        let blob = xoauth2_response(
            "someuser@example.com",
            &Secret::new("ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"),
        )
        .unwrap();
        assert_eq!(
            blob.expose(),
            b"dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
    }

    #[test]
    fn oauthbearer_follows_rfc_7628() {
        let blob = oauthbearer_response(
            "user,x=y@example.com",
            &Secret::new("vF9dft4qmT"),
            "server.example.com",
            143,
        )
        .unwrap();
        let raw = STANDARD.decode(blob.expose()).unwrap();
        assert_eq!(
            raw,
            b"n,a=user=2Cx=3Dy@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmT\x01\x01"
        );
        assert_eq!(BearerMechanism::OAuthBearer.error_answer(), b"AQ==");
        assert_eq!(STANDARD.decode("AQ==").unwrap(), b"\x01");
    }

    #[test]
    fn xoauth2_refuses_control_characters() {
        let t = Secret::new("tok");
        assert_eq!(xoauth2_response("a\x01b", &t), Err(SaslError::BadUsername));
        assert_eq!(xoauth2_response("a\r\nb", &t), Err(SaslError::BadUsername));
    }

    #[test]
    fn plain_decodes_rfc_example() {
        let raw = decode_base64(b"AGFsaWNlQGV4YW1wbGUuY29tAHMzY3IzdCBwYXNz").unwrap();
        let c = parse_plain(raw.expose()).unwrap();
        assert_eq!(c.username, "alice@example.com");
        assert_eq!(c.password.expose(), "s3cr3t pass");
    }

    #[test]
    fn plain_authzid_rules() {
        assert!(parse_plain(b"alice\0alice\0pw").is_ok());
        assert!(parse_plain(b"ALICE\0alice\0pw").is_ok());
        assert_eq!(
            parse_plain(b"bob\0alice\0pw").unwrap_err(),
            SaslError::AuthzidMismatch
        );
        assert_eq!(
            parse_plain(b"alice\0pw").unwrap_err(),
            SaslError::MalformedPlain
        );
        assert_eq!(parse_plain(b"\0\0pw").unwrap_err(), SaslError::BadUsername);
        assert_eq!(
            parse_plain(b"\0a\x01b\0pw").unwrap_err(),
            SaslError::BadUsername
        );
        // An empty password is a credential that will simply not verify.
        assert_eq!(parse_plain(b"\0alice\0").unwrap().password.expose(), "");
    }

    #[test]
    fn base64_is_strict() {
        assert_eq!(decode_base64(b"###").unwrap_err(), SaslError::BadBase64);
        assert_eq!(decode_base64(b"YQ").unwrap_err(), SaslError::BadBase64);
        assert_eq!(
            decode_base64(b"YQ==YQ==").unwrap_err(),
            SaslError::BadBase64
        );
        assert_eq!(decode_base64(b"Y Q==").unwrap_err(), SaslError::BadBase64);
        assert_eq!(decode_base64(b"YQ==").unwrap().expose(), b"a");
        assert_eq!(decode_base64(b"").unwrap().expose(), b"");
    }

    #[test]
    fn login_challenges_decode() {
        assert_eq!(
            decode_base64(LOGIN_USERNAME_CHALLENGE.as_bytes())
                .unwrap()
                .expose(),
            b"Username:"
        );
        assert_eq!(
            decode_base64(LOGIN_PASSWORD_CHALLENGE.as_bytes())
                .unwrap()
                .expose(),
            b"Password:"
        );
    }

    #[test]
    fn challenge_status() {
        let g = parse_xoauth2_challenge(
            b"eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIG1hYyIsInNjb3BlIjoiaHR0cHM6Ly9tYWlsLmdvb2dsZS5jb20vIn0K",
        );
        assert!(g.token_rejected());
        let other = parse_xoauth2_challenge(encode_base64(br#"{"status":"400"}"#).as_bytes());
        assert!(!other.token_rejected());
        assert_eq!(parse_xoauth2_challenge(b"not base64!").status, None);
    }

    #[test]
    fn plain_response_round_trips() {
        let r = plain_response("u@x", &Secret::new("p w"));
        let c = parse_plain(decode_base64(r.expose()).unwrap().expose()).unwrap();
        assert_eq!((c.username.as_str(), c.password.expose()), ("u@x", "p w"));
    }
}
