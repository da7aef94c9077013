//! The relay as a POP3 client of the upstream server: connect, secure, and log in.

use crate::auth::upstream::UpstreamCredential;
use crate::codec::pop3::{next_multiline, next_status, Capabilities, Status};
use crate::codec::sasl;
use crate::config::UpstreamTls;
use crate::net::conn::Conn;
use crate::session::login::{AuthResult, UpstreamLogin};
use crate::session::upstream::{self, Target, UpstreamError};
use std::time::Duration;
use tokio::time::timeout;

/// A status line from upstream, copied out of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// `+OK`.
    pub ok: bool,
    /// A `+` continuation.
    pub continuation: bool,
    /// The text after the status.
    pub text: Vec<u8>,
    /// The line as received, with its terminator, to relay verbatim.
    pub raw: Vec<u8>,
}

impl Line {
    /// The text, for messages.
    pub fn text_lossy(&self) -> String {
        String::from_utf8_lossy(&self.text).into_owned()
    }
}

/// The relay as a POP3 client of one upstream server.
pub struct Pop3Upstream {
    /// The connection.
    pub conn: Conn,
    caps: Option<Capabilities>,
    /// The CAPA lines, once asked for (after TLS).
    capa_lines: Option<Vec<Vec<u8>>>,
    reply_timeout: Duration,
    /// The server's host and port, which OAUTHBEARER names (RFC 7628 §3.1).
    server: (String, u16),
}

impl Pop3Upstream {
    /// Connects, reads the greeting and finishes TLS (implicit, or STLS that fails closed).
    pub async fn connect(target: &Target) -> Result<Self, UpstreamError> {
        let mut up = Pop3Upstream {
            conn: upstream::open(target).await?,
            caps: None,
            capa_lines: None,
            reply_timeout: target.reply_timeout,
            server: target.server(),
        };
        let greeting = timeout(target.connect_timeout, up.read_line())
            .await
            .map_err(|_| UpstreamError::Timeout("greeting"))??;
        if !greeting.ok {
            return Err(UpstreamError::Greeting(greeting.text_lossy()));
        }
        if target.spec.tls == UpstreamTls::Starttls {
            let caps = up.capa().await?.1;
            if !caps.stls {
                return Err(UpstreamError::StartTls(
                    "the server does not offer STLS; refusing to continue in plaintext".into(),
                ));
            }
            let r = up.command(&[b"STLS\r\n"]).await?;
            if !r.ok {
                return Err(UpstreamError::StartTls(format!(
                    "answered -ERR {}",
                    r.text_lossy()
                )));
            }
            upstream::start_tls(&mut up.conn, target).await?;
            // RFC 2595 §4: forget what was learned before TLS.
            up.caps = None;
            up.capa_lines = None;
        }
        Ok(up)
    }

    async fn read_line(&mut self) -> Result<Line, UpstreamError> {
        upstream::read_frame(&mut self.conn, |buf| {
            next_status(buf).map(|found| {
                found.map(|(status, used)| {
                    let (ok, continuation, text) = match status {
                        Status::Ok(t) => (true, false, t),
                        Status::Err(t) => (false, false, t),
                        Status::Continue(t) => (false, true, t),
                    };
                    let line = Line {
                        ok,
                        continuation,
                        text: text.to_vec(),
                        raw: buf[..used].to_vec(),
                    };
                    (line, used)
                })
            })
        })
        .await
    }

    /// Sends one command (in pieces, the last ending in CRLF) and reads its status line.
    pub async fn command(&mut self, parts: &[&[u8]]) -> Result<Line, UpstreamError> {
        self.conn
            .send_parts(parts)
            .await
            .map_err(UpstreamError::Io)?;
        timeout(self.reply_timeout, self.read_line())
            .await
            .map_err(|_| UpstreamError::Timeout("reply"))?
    }

    /// Asks for the capability list. Returns the status line (an `-ERR` is relayed as is), the
    /// capabilities, and the raw lines for the rewrite.
    pub async fn capa(&mut self) -> Result<(Line, Capabilities, Vec<Vec<u8>>), UpstreamError> {
        let status = self.command(&[b"CAPA\r\n"]).await?;
        if !status.ok {
            return Ok((status, Capabilities::default(), Vec::new()));
        }
        let read = upstream::read_frame(&mut self.conn, |buf| {
            next_multiline(buf).map(|found| {
                found.map(|(lines, used)| (lines.iter().map(|l| l.to_vec()).collect(), used))
            })
        });
        let lines: Vec<Vec<u8>> = timeout(self.reply_timeout, read)
            .await
            .map_err(|_| UpstreamError::Timeout("CAPA"))??;
        let views: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let caps = Capabilities::from_capa(&views);
        self.caps = Some(caps.clone());
        self.capa_lines = Some(lines.clone());
        Ok((status, caps, lines))
    }

    async fn learned_capabilities(&mut self) -> Result<Capabilities, UpstreamError> {
        match &self.caps {
            Some(c) => Ok(c.clone()),
            None => Ok(self.capa().await?.1),
        }
    }

    /// Logs in with the account's credential: XOAUTH2 always two-step (the blob exceeds the
    /// 255-octet command line), passwords with AUTH PLAIN when offered, else USER/PASS.
    pub async fn login(
        &mut self,
        credential: &UpstreamCredential,
    ) -> Result<AuthResult<Line>, UpstreamError> {
        match credential {
            UpstreamCredential::Bearer { .. } => {
                let (mechanism, blob) = upstream::bearer_response(credential, &self.server)?;
                let r = self.command(&[b"AUTH ", mechanism.name(), b"\r\n"]).await?;
                if !r.continuation {
                    return Ok(AuthResult::Rejected {
                        reply: r,
                        token_rejected: false,
                    });
                }
                let r = self.command(&[blob.expose(), b"\r\n"]).await?;
                if r.continuation {
                    // The error challenge: answer it here, never forward it (RFC 7628 §3.2.3; RFC 5034 §4).
                    let token_rejected = sasl::parse_xoauth2_challenge(&r.text).token_rejected();
                    let r = self.command(&[mechanism.error_answer(), b"\r\n"]).await?;
                    return Ok(AuthResult::Rejected {
                        reply: r,
                        token_rejected,
                    });
                }
                Ok(finish(r))
            }
            UpstreamCredential::Password { user, password } => {
                if self.learned_capabilities().await?.supports_sasl("PLAIN") {
                    let blob = sasl::plain_response(user, password);
                    let r = self.command(&[b"AUTH PLAIN\r\n"]).await?;
                    if !r.continuation {
                        return Ok(AuthResult::Rejected {
                            reply: r,
                            token_rejected: false,
                        });
                    }
                    let r = self.command(&[blob.expose(), b"\r\n"]).await?;
                    if r.continuation {
                        let r = self.command(&[b"*\r\n"]).await?;
                        return Ok(AuthResult::Rejected {
                            reply: r,
                            token_rejected: false,
                        });
                    }
                    Ok(finish(r))
                } else {
                    let r = self.command(&[b"USER ", user.as_bytes(), b"\r\n"]).await?;
                    if !r.ok {
                        return Ok(AuthResult::Rejected {
                            reply: r,
                            token_rejected: false,
                        });
                    }
                    Ok(finish(
                        self.command(&[b"PASS ", password.expose().as_bytes(), b"\r\n"])
                            .await?,
                    ))
                }
            }
        }
    }

    /// Says goodbye, best effort.
    pub async fn quit(&mut self) -> Option<Line> {
        timeout(Duration::from_secs(5), self.command(&[b"QUIT\r\n"]))
            .await
            .ok()?
            .ok()
    }
}

fn finish(r: Line) -> AuthResult<Line> {
    if r.ok {
        AuthResult::Accepted(r)
    } else {
        AuthResult::Rejected {
            reply: r,
            token_rejected: false,
        }
    }
}

impl UpstreamLogin for Pop3Upstream {
    type Reply = Line;

    fn reply_code(reply: &Line) -> String {
        if reply.ok { "+OK" } else { "-ERR" }.to_owned()
    }

    fn capabilities(&self) -> Option<Vec<Vec<u8>>> {
        self.capa_lines.clone()
    }

    async fn authenticate(
        &mut self,
        credential: &UpstreamCredential,
    ) -> Result<AuthResult<Line>, UpstreamError> {
        self.login(credential).await
    }
}
