//! The relay as an SMTP client of the upstream server: connect, secure, and log in.

use crate::auth::upstream::UpstreamCredential;
use crate::codec::sasl::{self, LOGIN_PASSWORD_CHALLENGE, LOGIN_USERNAME_CHALLENGE};
use crate::codec::smtp::{next_reply, Capabilities};
use crate::config::UpstreamTls;
use crate::net::conn::Conn;
use crate::session::login::{AuthResult, UpstreamLogin};
use crate::session::upstream::{self, Target, UpstreamError};
use std::time::Duration;
use tokio::time::timeout;

/// An upstream reply, copied out of the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedReply {
    /// The reply code.
    pub code: u16,
    /// The whole reply with CRLFs, to relay verbatim.
    pub raw: Vec<u8>,
    /// The text of each line.
    pub lines: Vec<Vec<u8>>,
}

impl OwnedReply {
    /// The first line's text, for messages.
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

/// The relay as an SMTP client of one upstream server.
pub struct SmtpUpstream {
    /// The connection.
    pub conn: Conn,
    /// What the last EHLO (after TLS) offered.
    pub caps: Capabilities,
    /// The keyword lines of the last accepted EHLO (its first line, the server's name, left out).
    keywords: Option<Vec<Vec<u8>>>,
    reply_timeout: Duration,
    /// The server's host and port, which OAUTHBEARER names (RFC 7628 §3.1).
    server: (String, u16),
}

impl SmtpUpstream {
    /// Connects, reads the greeting and finishes TLS (implicit, or STARTTLS that fails closed).
    pub async fn connect(target: &Target) -> Result<Self, UpstreamError> {
        let mut up = SmtpUpstream {
            conn: upstream::open(target).await?,
            caps: Capabilities::default(),
            keywords: None,
            reply_timeout: target.reply_timeout,
            server: target.server(),
        };
        let greeting = up
            .read_reply_within(target.connect_timeout, "greeting")
            .await?;
        if greeting.code != 220 {
            return Err(UpstreamError::Greeting(format!(
                "{} {}",
                greeting.code,
                greeting.first_text()
            )));
        }
        if target.spec.tls == UpstreamTls::Starttls {
            let ehlo = up
                .command(&[b"EHLO ", target.ehlo_name.as_bytes(), b"\r\n"])
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
            upstream::start_tls(&mut up.conn, target).await?;
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
        upstream::read_frame(&mut self.conn, |buf| {
            next_reply(buf).map(|found| {
                found.map(|(reply, used)| {
                    let owned = OwnedReply {
                        code: reply.code,
                        raw: reply.raw.to_vec(),
                        lines: reply.lines.iter().map(|l| l.to_vec()).collect(),
                    };
                    (owned, used)
                })
            })
        })
        .await
    }

    /// Sends one command (given in pieces, the last ending in CRLF) and reads its reply.
    pub async fn command(&mut self, parts: &[&[u8]]) -> Result<OwnedReply, UpstreamError> {
        self.conn
            .send_parts(parts)
            .await
            .map_err(UpstreamError::Io)?;
        self.read_reply_within(self.reply_timeout, "reply").await
    }

    /// Sends EHLO for `domain` and remembers what the server offers.
    pub async fn ehlo(&mut self, domain: &[u8]) -> Result<OwnedReply, UpstreamError> {
        let reply = self.command(&[b"EHLO ", domain, b"\r\n"]).await?;
        if reply.code == 250 {
            self.caps = Capabilities::from_ehlo(&reply.as_reply());
            self.keywords = Some(reply.lines.iter().skip(1).cloned().collect());
        }
        Ok(reply)
    }

    /// The keyword lines of the last accepted EHLO.
    pub fn keywords(&self) -> Option<Vec<Vec<u8>>> {
        self.keywords.clone()
    }

    /// Logs in with the account's credential. XOAUTH2 is always two-step (the initial response
    /// would not fit the 512-octet command line), and an error challenge is answered here.
    pub async fn login(
        &mut self,
        credential: &UpstreamCredential,
    ) -> Result<AuthResult<OwnedReply>, UpstreamError> {
        match credential {
            UpstreamCredential::Bearer { .. } => {
                let (mechanism, blob) = upstream::bearer_response(credential, &self.server)?;
                self.sasl_exchange(mechanism.name(), &[blob.expose()], Some(mechanism))
                    .await
            }
            UpstreamCredential::Password { user, password } => {
                if !self.caps.supports_auth("PLAIN") && self.caps.supports_auth("LOGIN") {
                    let u = sasl::encode_base64(user.as_bytes());
                    let p = crate::secret::SecretBytes::new(
                        sasl::encode_base64(password.expose().as_bytes()).into_bytes(),
                    );
                    self.sasl_exchange(b"LOGIN", &[u.as_bytes(), p.expose()], None)
                        .await
                } else {
                    let blob = sasl::plain_response(user, password);
                    self.sasl_exchange(b"PLAIN", &[blob.expose()], None).await
                }
            }
        }
    }

    /// `AUTH <mechanism>`, then one response per `334` challenge. A `334` beyond the responses
    /// is an error challenge: a bearer mechanism's is answered as it requires (XOAUTH2: an
    /// empty line; OAUTHBEARER: %x01), any other is cancelled.
    async fn sasl_exchange(
        &mut self,
        mechanism: &[u8],
        responses: &[&[u8]],
        bearer: Option<sasl::BearerMechanism>,
    ) -> Result<AuthResult<OwnedReply>, UpstreamError> {
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
            if let Some(bearer) = bearer {
                token_rejected =
                    sasl::parse_xoauth2_challenge(reply.first_text().as_bytes()).token_rejected();
                reply = self.command(&[bearer.error_answer(), b"\r\n"]).await?;
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

impl UpstreamLogin for SmtpUpstream {
    type Reply = OwnedReply;

    fn reply_code(reply: &OwnedReply) -> String {
        reply.code.to_string()
    }

    fn capabilities(&self) -> Option<Vec<Vec<u8>>> {
        self.keywords()
    }

    async fn authenticate(
        &mut self,
        credential: &UpstreamCredential,
    ) -> Result<AuthResult<OwnedReply>, UpstreamError> {
        self.login(credential).await
    }
}
