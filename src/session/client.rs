//! The legacy client's side of a session before login, the same in every protocol: bounded
//! line reading with a pre-authentication byte budget, and the local SASL exchange (PLAIN and
//! LOGIN, with or without an initial response, `*` to cancel). The sessions turn the outcomes
//! into their protocol's replies.

use crate::codec::line::{next_command, LineTooLong};
use crate::codec::sasl::{self, Credentials, Mechanism, SaslError};
use crate::config::LocalTls;
use crate::net::conn::Conn;
use crate::session::ListenerContext;
use tokio::time::{timeout_at, Instant};

/// Most bytes a client may send before it has logged in.
pub const MAX_PRE_AUTH_BYTES: usize = 256 * 1024;

/// A line read from the client, or why there is none.
pub enum Read {
    /// A line without its terminator.
    Line(Vec<u8>),
    /// Over the limit.
    TooLong,
    /// The client closed.
    Eof,
}

/// The device's connection before login, with its pre-login byte count.
pub struct ClientSide {
    /// The connection.
    pub conn: Conn,
    pre_auth_bytes: usize,
}

impl ClientSide {
    /// A fresh connection, nothing counted yet.
    pub fn new(conn: Conn) -> Self {
        ClientSide {
            conn,
            pre_auth_bytes: 0,
        }
    }

    /// Reads one line of at most `max` bytes (terminator included), counting it against the
    /// pre-authentication budget.
    pub async fn read_line(&mut self, max: usize) -> Read {
        loop {
            match next_command(self.conn.buffered(), max, max, |_| false) {
                Ok(Some((len, used))) => {
                    let line = self.take(used);
                    return Read::Line(line[..len].to_vec());
                }
                Ok(None) => {}
                Err(LineTooLong) => return Read::TooLong,
            }
            match self.conn.fill().await {
                Ok(0) | Err(_) => return Read::Eof,
                Ok(_) => {}
            }
        }
    }

    /// Takes `n` buffered bytes (a whole framed command), counting them against the budget.
    pub fn take(&mut self, n: usize) -> Vec<u8> {
        let bytes = self.conn.buffered()[..n].to_vec();
        self.conn.consume(n);
        self.pre_auth_bytes += n;
        bytes
    }

    /// True once the client has sent more than [`MAX_PRE_AUTH_BYTES`] before logging in.
    pub fn over_budget(&self) -> bool {
        self.pre_auth_bytes + self.conn.buffered().len() > MAX_PRE_AUTH_BYTES
    }
}

/// How a local SASL exchange ended.
pub enum Sasl {
    /// The username and password.
    Credentials(Credentials),
    /// The client sent `*`.
    Cancelled,
    /// A response that is not base64.
    BadBase64,
    /// A PLAIN message without its two NULs.
    Malformed,
    /// Decoded, but not usable credentials (empty or bad username, authzid mismatch, non-UTF-8
    /// password): answered like a wrong password.
    Invalid(SaslError),
    /// A response line over the limit.
    LineTooLong,
    /// The client closed.
    Eof,
    /// Writing a challenge failed.
    Gone,
}

/// How a protocol writes a SASL challenge: `334 <b64>` in SMTP, `+ <b64>` in POP3 and IMAP.
pub struct Challenge {
    /// `334 ` or `+ `.
    pub prefix: &'static [u8],
    /// The longest response line accepted.
    pub max_line: usize,
}

/// Runs the local exchange for `mechanism`. Responses are secrets: never logged.
pub async fn read_sasl(
    client: &mut ClientSide,
    challenge: &Challenge,
    mechanism: Mechanism,
    initial_response: Option<&[u8]>,
) -> Sasl {
    match mechanism {
        Mechanism::Plain => {
            let response = match initial_response {
                Some(ir) => ir.to_vec(),
                None => match ask(client, challenge, "").await {
                    Ok(r) => r,
                    Err(end) => return end,
                },
            };
            if response == b"=" {
                return Sasl::Invalid(SaslError::BadUsername);
            }
            let Ok(decoded) = sasl::decode_base64(&response) else {
                return Sasl::BadBase64;
            };
            match sasl::parse_plain(decoded.expose()) {
                Ok(c) => Sasl::Credentials(c),
                Err(SaslError::MalformedPlain) => Sasl::Malformed,
                Err(e) => Sasl::Invalid(e),
            }
        }
        Mechanism::Login => {
            let user = match initial_response {
                Some(ir) => ir.to_vec(),
                None => match ask(client, challenge, sasl::LOGIN_USERNAME_CHALLENGE).await {
                    Ok(r) => r,
                    Err(end) => return end,
                },
            };
            let Ok(user) = sasl::decode_base64(&user) else {
                return Sasl::BadBase64;
            };
            let password = match ask(client, challenge, sasl::LOGIN_PASSWORD_CHALLENGE).await {
                Ok(r) => r,
                Err(end) => return end,
            };
            let Ok(password) = sasl::decode_base64(&password) else {
                return Sasl::BadBase64;
            };
            let username = match sasl::parse_username(user.expose()) {
                Ok(u) => u,
                Err(e) => return Sasl::Invalid(e),
            };
            match sasl::parse_password(password.expose()) {
                Ok(password) => Sasl::Credentials(Credentials { username, password }),
                Err(e) => Sasl::Invalid(e),
            }
        }
    }
}

/// Sends one challenge and reads the response line; `*` cancels.
async fn ask(
    client: &mut ClientSide,
    challenge: &Challenge,
    payload: &str,
) -> Result<Vec<u8>, Sasl> {
    if client
        .conn
        .send_parts(&[challenge.prefix, payload.as_bytes(), b"\r\n"])
        .await
        .is_err()
    {
        return Err(Sasl::Gone);
    }
    match client.read_line(challenge.max_line).await {
        Read::Line(l) if l == b"*" => Err(Sasl::Cancelled),
        Read::Line(l) => Ok(l),
        Read::TooLong => Err(Sasl::LineTooLong),
        Read::Eof => Err(Sasl::Eof),
    }
}

/// Runs the TLS handshake of an implicit-TLS listener before anything else is said. False when
/// the connection is to be dropped (handshake failed or took past `deadline`).
pub async fn accept_implicit_tls(
    ctx: &ListenerContext,
    conn: &mut Conn,
    deadline: Instant,
) -> bool {
    if ctx.config.tls != LocalTls::Implicit {
        return true;
    }
    let Some(acceptor) = &ctx.acceptor else {
        return false;
    };
    match timeout_at(deadline, conn.accept_tls(acceptor)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "client TLS handshake failed");
            false
        }
        Err(_) => false,
    }
}
