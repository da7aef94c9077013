//! The relay as an SMTP client of the upstream server: connect, secure, and log in.

use crate::auth::upstream::UpstreamCredential;
use crate::codec::sasl::{self, LOGIN_PASSWORD_CHALLENGE, LOGIN_USERNAME_CHALLENGE};
use crate::codec::smtp::{next_reply, Capabilities, ReplyError};
use crate::config::UpstreamTls;
use crate::net::conn::Conn;
use crate::session::ListenerContext;
use std::fmt;
use std::io;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// An upstream reply, copied out of the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedReply {
    pub code: u16,
    /// The whole reply with CRLFs, to relay verbatim.
    pub raw: Vec<u8>,
    /// The text of each line.
    pub lines: Vec<Vec<u8>>,
}

impl OwnedReply {
    pub fn first_text(&self) -> String {
        String::from_utf8_lossy(self.lines.first().map(Vec::as_slice).unwrap_or_default())
            .into_owned()
    }

    /// The reply as a borrowed [`crate::codec::smtp::Reply`], for the codec's functions.
    pub fn as_reply(&self) -> crate::codec::smtp::Reply<'_> {
        crate::codec::smtp::Reply {
            code: self.code,
            lines: self.lines.iter().map(Vec::as_slice).collect(),
            raw: &self.raw,
        }
    }
}

/// Why the upstream connection cannot be used.
#[derive(Debug)]
pub enum UpstreamError {
    Connect(io::Error),
    Timeout(&'static str),
    Greeting(String),
    /// Upstream STARTTLS was required but not offered, or refused: never continue in plaintext.
    StartTls(String),
    /// Bytes followed the `220` to STARTTLS (response injection).
    Injection,
    Tls(io::Error),
    Io(io::Error),
    Reply(ReplyError),
    Closed,
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "cannot connect: {e}"),
            UpstreamError::Timeout(phase) => write!(f, "no answer in time ({phase})"),
            UpstreamError::Greeting(t) => write!(f, "refused the connection: {t}"),
            UpstreamError::StartTls(t) => write!(f, "STARTTLS failed: {t}"),
            UpstreamError::Injection => {
                f.write_str("sent data right after its STARTTLS reply (injection attempt)")
            }
            UpstreamError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            UpstreamError::Io(e) => write!(f, "connection error: {e}"),
            UpstreamError::Reply(e) => write!(f, "sent an invalid reply: {e}"),
            UpstreamError::Closed => f.write_str("closed the connection"),
        }
    }
}

/// How an upstream login ended.
#[derive(Debug)]
pub enum AuthResult {
    Accepted(OwnedReply),
    /// The server refused. `token_rejected` is true when its XOAUTH2 error challenge said the
    /// token was invalid (status 401), so a fresh token may succeed.
    Rejected {
        reply: OwnedReply,
        token_rejected: bool,
    },
}

pub struct SmtpUpstream {
    pub conn: Conn,
    /// The server's greeting, relayed to the client.
    pub greeting: Vec<u8>,
    /// What the last EHLO (after TLS) offered.
    pub caps: Capabilities,
    reply_timeout: Duration,
}

impl SmtpUpstream {
    /// Connects, reads the greeting and finishes TLS (implicit, or STARTTLS that fails closed).
    pub async fn connect(ctx: &ListenerContext) -> Result<Self, UpstreamError> {
        let cfg = &ctx.config;
        let phase_timeout = cfg.connect_timeout;
        let tcp = timeout(
            phase_timeout,
            TcpStream::connect((cfg.upstream_host.as_str(), cfg.upstream_port)),
        )
        .await
        .map_err(|_| UpstreamError::Timeout("connect"))?
        .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let mut up = SmtpUpstream {
            conn: Conn::new(tcp),
            greeting: Vec::new(),
            caps: Capabilities::default(),
            reply_timeout: cfg.upstream_timeout,
        };
        if cfg.upstream_tls == UpstreamTls::Implicit {
            timeout(
                phase_timeout,
                up.conn
                    .connect_tls(&ctx.connector, ctx.upstream_name.clone()),
            )
            .await
            .map_err(|_| UpstreamError::Timeout("TLS handshake"))?
            .map_err(UpstreamError::Tls)?;
        }
        let greeting = up.read_reply_within(phase_timeout, "greeting").await?;
        if greeting.code != 220 {
            return Err(UpstreamError::Greeting(format!(
                "{} {}",
                greeting.code,
                greeting.first_text()
            )));
        }
        up.greeting = greeting.raw;
        if cfg.upstream_tls == UpstreamTls::Starttls {
            let ehlo = up
                .command(&[b"EHLO ", cfg.ehlo_name.as_bytes(), b"\r\n"])
                .await?;
            if ehlo.code != 250 {
                return Err(UpstreamError::StartTls(format!(
                    "EHLO answered {} {}",
                    ehlo.code,
                    ehlo.first_text()
                )));
            }
            if !Capabilities::from_ehlo(&ehlo.as_reply()).starttls {
                return Err(UpstreamError::StartTls(
                    "the server does not offer STARTTLS; refusing to continue in plaintext".into(),
                ));
            }
            let r = up.command(&[b"STARTTLS\r\n"]).await?;
            if r.code != 220 {
                return Err(UpstreamError::StartTls(format!(
                    "answered {} {}",
                    r.code,
                    r.first_text()
                )));
            }
            if !up.conn.buffered().is_empty() {
                return Err(UpstreamError::Injection);
            }
            timeout(
                phase_timeout,
                up.conn
                    .connect_tls(&ctx.connector, ctx.upstream_name.clone()),
            )
            .await
            .map_err(|_| UpstreamError::Timeout("TLS handshake"))?
            .map_err(UpstreamError::Tls)?;
        }
        Ok(up)
    }

    async fn read_reply_within(
        &mut self,
        limit: Duration,
        phase: &'static str,
    ) -> Result<OwnedReply, UpstreamError> {
        timeout(limit, self.read_reply())
            .await
            .map_err(|_| UpstreamError::Timeout(phase))?
    }

    /// Reads one complete reply.
    pub async fn read_reply(&mut self) -> Result<OwnedReply, UpstreamError> {
        loop {
            match next_reply(self.conn.buffered()) {
                Ok(Some((reply, used))) => {
                    let owned = OwnedReply {
                        code: reply.code,
                        raw: reply.raw.to_vec(),
                        lines: reply.lines.iter().map(|l| l.to_vec()).collect(),
                    };
                    self.conn.consume(used);
                    return Ok(owned);
                }
                Ok(None) => {}
                Err(e) => return Err(UpstreamError::Reply(e)),
            }
            match self.conn.fill().await {
                Ok(0) => return Err(UpstreamError::Closed),
                Ok(_) => {}
                Err(e) => return Err(UpstreamError::Io(e)),
            }
        }
    }

    /// Sends one command (given in pieces, the last ending in CRLF) and reads its reply.
    pub async fn command(&mut self, parts: &[&[u8]]) -> Result<OwnedReply, UpstreamError> {
        self.conn
            .send_parts(parts)
            .await
            .map_err(UpstreamError::Io)?;
        self.read_reply_within(self.reply_timeout, "reply").await
    }

    /// Relays the client's EHLO (or HELO, sent as EHLO) and remembers what the server offers.
    pub async fn ehlo(&mut self, domain: &[u8]) -> Result<OwnedReply, UpstreamError> {
        let reply = self.command(&[b"EHLO ", domain, b"\r\n"]).await?;
        if reply.code == 250 {
            self.caps = Capabilities::from_ehlo(&reply.as_reply());
        }
        Ok(reply)
    }

    /// Logs in with the account's credential. XOAUTH2 is always two-step (the initial response
    /// would not fit the 512-octet command line), and an error challenge is answered here.
    pub async fn authenticate(
        &mut self,
        credential: &UpstreamCredential,
    ) -> Result<AuthResult, UpstreamError> {
        match credential {
            UpstreamCredential::XOAuth2 { user, token } => {
                let blob = sasl::xoauth2_response(user, &token.secret).map_err(|_| {
                    UpstreamError::Greeting("the mailbox name is not usable in XOAUTH2".into())
                })?;
                self.sasl_exchange(b"XOAUTH2", &[blob.expose()]).await
            }
            UpstreamCredential::Password { user, password } => {
                if !self.caps.supports_auth("PLAIN") && self.caps.supports_auth("LOGIN") {
                    let u = sasl::encode_base64(user.as_bytes());
                    let p = crate::secret::SecretBytes::new(
                        sasl::encode_base64(password.expose().as_bytes()).into_bytes(),
                    );
                    self.sasl_exchange(b"LOGIN", &[u.as_bytes(), p.expose()])
                        .await
                } else {
                    let blob = sasl::plain_response(user, password);
                    self.sasl_exchange(b"PLAIN", &[blob.expose()]).await
                }
            }
        }
    }

    /// `AUTH <mechanism>`, then one response per `334` challenge. A `334` beyond the responses
    /// is an error challenge: XOAUTH2's is answered with an empty line, any other is cancelled.
    async fn sasl_exchange(
        &mut self,
        mechanism: &[u8],
        responses: &[&[u8]],
    ) -> Result<AuthResult, UpstreamError> {
        let mut reply = self.command(&[b"AUTH ", mechanism, b"\r\n"]).await?;
        let mut token_rejected = false;
        for (i, response) in responses.iter().enumerate() {
            if reply.code != 334 {
                break;
            }
            if mechanism == b"LOGIN" {
                let expected = if i == 0 {
                    LOGIN_USERNAME_CHALLENGE
                } else {
                    LOGIN_PASSWORD_CHALLENGE
                };
                if reply.first_text().trim() != expected && !reply.first_text().trim().is_empty() {
                    tracing::debug!("unusual AUTH LOGIN challenge from upstream");
                }
            }
            reply = self.command(&[response, b"\r\n"]).await?;
        }
        if reply.code == 334 {
            if mechanism == b"XOAUTH2" {
                token_rejected =
                    sasl::parse_xoauth2_challenge(reply.first_text().as_bytes()).token_rejected();
                reply = self.command(&[b"\r\n"]).await?;
            } else {
                reply = self.command(&[b"*\r\n"]).await?;
            }
        }
        if reply.code == 235 {
            Ok(AuthResult::Accepted(reply))
        } else {
            Ok(AuthResult::Rejected {
                reply,
                token_rejected,
            })
        }
    }

    /// Says goodbye, best effort: the session is ending anyway.
    pub async fn quit(&mut self) -> Option<OwnedReply> {
        let fut = async {
            self.conn.send(b"QUIT\r\n").await.ok()?;
            self.read_reply().await.ok()
        };
        timeout(Duration::from_secs(5), fut).await.ok().flatten()
    }
}
