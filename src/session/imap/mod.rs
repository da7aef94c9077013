//! The IMAP session (RFC 9051, SASL-IR RFC 4959): the relay is an IMAP server to the legacy client and an
//! IMAP client of the upstream server until the login succeeds, then a byte pipe.
//!
//! Order of events: accept (and local implicit TLS) → connect upstream, finish upstream TLS and
//! learn its capabilities → greet with the rewritten capabilities → frame the client's commands
//! with the literal-aware framer (sending `+` for synchronizing literals) and answer them:
//! CAPABILITY, NOOP, ID, LOGOUT and STARTTLS locally, LOGIN and AUTHENTICATE PLAIN/LOGIN by
//! logging in upstream with XOAUTH2 under the client's tag, anything else `BAD` until login →
//! on the tagged OK, relay it, forward what the client pipelined, and hand over to the pipe.

pub mod upstream;

use crate::auth::oauth::{ErrorClass, TokenError};
use crate::codec::imap::{self, CapabilityPolicy, Command, Frame, FrameError, Framer, Response};
use crate::codec::line::sanitize_for_reply;
use crate::codec::sasl::{self, Credentials, Mechanism};
use crate::config::{AccountConfig, LocalTls};
use crate::net::conn::Conn;
use crate::secret::SecretBytes;
use crate::session::client::{
    accept_implicit_tls, read_sasl, refuse_upstream_unavailable, Challenge, ClientSide, Sasl,
};
use crate::session::login::{explain_token_failure, login, Login};
use crate::session::relay;
use crate::session::{ListenerContext, Outcome};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::timeout_at;
use upstream::{ImapUpstream, LoginReply};

/// Failed logins allowed on one connection before it is closed.
pub const MAX_AUTH_FAILURES: u32 = 3;

const CHALLENGE: Challenge = Challenge {
    prefix: b"+ ",
    max_line: 12288,
};
const CONTINUE: &[u8] = b"+ Ready for literal data\r\n";
const BYE_TIMEOUT: &[u8] = b"* BYE [UNAVAILABLE] Timeout before authentication\r\n";
const BYE_TOO_MUCH: &[u8] = b"* BYE [TOOBIG] Too much data before authentication\r\n";
const BYE_TOO_MANY_FAILURES: &[u8] = b"* BYE Too many failed logins\r\n";
const BYE_UPSTREAM_LOST: &[u8] = b"* BYE [UNAVAILABLE] Upstream connection lost\r\n";
const BYE_LINE_TOO_LONG: &[u8] = b"* BYE [TOOBIG] Line too long\r\n";
const BAD_NO_TAG: &[u8] = b"* BAD Invalid tag\r\n";

/// Runs one IMAP session to its end.
/// `conn` is the accepted connection (any PROXY header already read); `peer` the client.
pub async fn run(ctx: Arc<ListenerContext>, conn: Conn, peer: SocketAddr) -> Outcome {
    let deadline = tokio::time::Instant::now() + ctx.config.pre_auth_timeout;
    let mut client = conn;
    if !accept_implicit_tls(&ctx, &mut client, deadline).await {
        return Outcome::Refused;
    }
    let upstream = match ImapUpstream::connect(&ctx).await {
        Ok(u) => u,
        Err(e) => {
            refuse_upstream_unavailable(&ctx, client, &e, |reason| {
                format!("* BYE [UNAVAILABLE] Upstream unreachable ({reason})\r\n")
            })
            .await;
            return Outcome::UpstreamFailed;
        }
    };
    let mut session = Session {
        ctx,
        peer,
        client: ClientSide::new(client),
        upstream,
        failures: 0,
    };
    let mut greeting = b"* OK [CAPABILITY ".to_vec();
    greeting.extend_from_slice(&session.capabilities());
    greeting.extend_from_slice(b"] ");
    greeting.extend_from_slice(
        &sanitize_for_reply(
            &String::from_utf8_lossy(&session.upstream.greeting_text),
            300,
        )
        .into_bytes(),
    );
    greeting.extend_from_slice(b"\r\n");
    if session.client.conn.send(&greeting).await.is_err() {
        return Outcome::ClientLeft;
    }
    match {
        let close = session.ctx.shared.close_sessions.clone();
        tokio::select! {
            r = timeout_at(deadline, session.dialogue()) => r,
            _ = close.cancelled() => Ok(Step::Closing),
        }
    } {
        Ok(Step::Authenticated { account }) => {
            let ctx = session.ctx.clone();
            relay::run_authenticated(&ctx, session.client.conn, session.upstream.conn, &account)
                .await
        }
        Ok(Step::Close(outcome)) => {
            session.close().await;
            outcome
        }
        Ok(Step::Closing) => {
            let _ = session
                .client
                .conn
                .send(b"* BYE [UNAVAILABLE] Server shutting down\r\n")
                .await;
            session.close().await;
            Outcome::Refused
        }
        Err(_) => {
            tracing::info!("pre-authentication timeout");
            let _ = session.client.conn.send(BYE_TIMEOUT).await;
            session.close().await;
            Outcome::Refused
        }
    }
}

enum Step {
    Authenticated {
        account: String,
    },
    Close(Outcome),
    /// The relay is shutting down.
    Closing,
}

enum Next {
    Continue,
    Done(Step),
}

struct Session {
    ctx: Arc<ListenerContext>,
    peer: SocketAddr,
    client: ClientSide,
    upstream: ImapUpstream,
    failures: u32,
}

impl Session {
    fn local_channel_acceptable(&self) -> bool {
        self.client.conn.is_tls()
            || self.peer.ip().is_loopback()
            || self.ctx.config.remote_plaintext_auth
    }

    /// The capability list shown to the client now.
    fn capabilities(&self) -> Vec<u8> {
        let policy = CapabilityPolicy {
            offer_auth: self.local_channel_acceptable(),
            offer_starttls: self.ctx.config.tls == LocalTls::Starttls && !self.client.conn.is_tls(),
        };
        imap::rewrite_capabilities(&self.upstream.capabilities, policy)
    }

    async fn dialogue(&mut self) -> Step {
        let mut framer = Framer::new();
        loop {
            if self.client.over_budget() {
                let _ = self.client.conn.send(BYE_TOO_MUCH).await;
                return Step::Close(Outcome::Refused);
            }
            match framer.scan(self.client.conn.buffered(), imap::MAX_PRE_AUTH_LITERAL) {
                Ok(Frame::Incomplete) => match self.client.conn.fill().await {
                    Ok(0) | Err(_) => return Step::Close(Outcome::ClientLeft),
                    Ok(_) => {}
                },
                Ok(Frame::Literal { sync: true, .. }) => {
                    if self.client.conn.send(CONTINUE).await.is_err() {
                        return Step::Close(Outcome::ClientLeft);
                    }
                }
                Ok(Frame::Literal { sync: false, .. }) => {}
                Ok(Frame::Complete { len }) => {
                    let command = self.client.take(len);
                    if let Next::Done(step) = self.handle(&command).await {
                        return step;
                    }
                }
                Err(e) => {
                    let tag = imap::tag_of(self.client.conn.buffered()).map(<[u8]>::to_vec);
                    let reply = match (e, tag) {
                        (FrameError::LiteralTooBig { .. }, Some(tag)) => {
                            [tag.as_slice(), b" BAD [TOOBIG] Literal too big\r\n"].concat()
                        }
                        _ => BYE_LINE_TOO_LONG.to_vec(),
                    };
                    let _ = self.client.conn.send(&reply).await;
                    return Step::Close(Outcome::Refused);
                }
            }
        }
    }

    async fn reply(&mut self, bytes: &[u8]) -> Next {
        match self.client.conn.send(bytes).await {
            Ok(()) => Next::Continue,
            Err(_) => Next::Done(Step::Close(Outcome::ClientLeft)),
        }
    }

    async fn tagged(&mut self, tag: &[u8], rest: &str) -> Next {
        let line = [tag, b" ", rest.as_bytes(), b"\r\n"].concat();
        self.reply(&line).await
    }

    async fn handle(&mut self, command: &[u8]) -> Next {
        if crate::codec::line::is_http_request_line(command) {
            tracing::info!("HTTP request on the IMAP port; closing");
            return Next::Done(Step::Close(Outcome::Refused));
        }
        let parsed = match imap::parse_command(command) {
            Ok(p) => p,
            Err(imap::ParseError::NoTag) => return self.reply(BAD_NO_TAG).await,
            Err(imap::ParseError::Syntax) => {
                let tag = imap::tag_of(command).unwrap_or(b"*").to_vec();
                return self.tagged(&tag, "BAD Syntax error in command").await;
            }
        };
        let tag = parsed.tag.to_vec();
        match parsed.command {
            Command::Capability => {
                let line = [&b"* CAPABILITY "[..], &self.capabilities(), b"\r\n"].concat();
                if let Next::Done(s) = self.reply(&line).await {
                    return Next::Done(s);
                }
                self.tagged(&tag, "OK CAPABILITY completed").await
            }
            Command::Noop => self.tagged(&tag, "OK NOOP completed").await,
            Command::Id => {
                if let Next::Done(s) = self.reply(b"* ID NIL\r\n").await {
                    return Next::Done(s);
                }
                self.tagged(&tag, "OK ID completed").await
            }
            Command::Logout => {
                let _ = self.reply(b"* BYE Logging out\r\n").await;
                let _ = self.tagged(&tag, "OK LOGOUT completed").await;
                self.upstream.logout().await;
                Next::Done(Step::Close(Outcome::ClientLeft))
            }
            Command::StartTls => self.starttls(&tag).await,
            Command::Other => self.tagged(&tag, "BAD Log in first").await,
            Command::Login { user, password } => {
                if !self.local_channel_acceptable() {
                    return self
                        .tagged(
                            &tag,
                            "NO [PRIVACYREQUIRED] LOGIN is disabled until TLS is active",
                        )
                        .await;
                }
                let credentials = match (
                    sasl::parse_username(&user),
                    sasl::parse_password(password.expose()),
                ) {
                    (Ok(username), Ok(password)) => Credentials { username, password },
                    _ => {
                        tracing::info!("login failed: unusable credentials");
                        return self
                            .fail_login(&tag, None, "unusable username or password")
                            .await;
                    }
                };
                self.login(&tag, credentials).await
            }
            Command::Authenticate {
                mechanism,
                initial_response,
            } => {
                let initial_response =
                    initial_response.map(|r| SecretBytes::new(r.expose().to_vec()));
                let mechanism = mechanism.to_vec();
                self.authenticate(
                    &tag,
                    &mechanism,
                    initial_response.as_ref().map(SecretBytes::expose),
                )
                .await
            }
        }
    }

    async fn starttls(&mut self, tag: &[u8]) -> Next {
        if self.client.conn.is_tls() {
            return self.tagged(tag, "BAD TLS is already active").await;
        }
        let acceptor = match (&self.ctx.acceptor, self.ctx.config.tls) {
            (Some(a), LocalTls::Starttls) => a.clone(),
            _ => return self.tagged(tag, "BAD STARTTLS not supported").await,
        };
        if let Next::Done(step) = self.tagged(tag, "OK Begin TLS negotiation now").await {
            return Next::Done(step);
        }
        if !self.client.conn.buffered().is_empty() {
            tracing::warn!("client pipelined data after STARTTLS (injection attempt); closing");
            return Next::Done(Step::Close(Outcome::Refused));
        }
        if let Err(e) = self.client.conn.accept_tls(&acceptor).await {
            tracing::info!(error = %e, "client STARTTLS handshake failed");
            return Next::Done(Step::Close(Outcome::Refused));
        }
        Next::Continue
    }

    async fn authenticate(
        &mut self,
        tag: &[u8],
        mechanism: &[u8],
        initial_response: Option<&[u8]>,
    ) -> Next {
        if !self.local_channel_acceptable() {
            return self
                .tagged(
                    tag,
                    "NO [PRIVACYREQUIRED] Authentication is disabled until TLS is active",
                )
                .await;
        }
        let Some(mechanism) = Mechanism::parse(mechanism) else {
            return self
                .tagged(tag, "NO Unsupported authentication mechanism")
                .await;
        };
        match read_sasl(&mut self.client, &CHALLENGE, mechanism, initial_response).await {
            Sasl::Credentials(c) => self.login(tag, c).await,
            Sasl::Cancelled => self.tagged(tag, "BAD AUTHENTICATE cancelled").await,
            Sasl::BadBase64 => self.tagged(tag, "BAD Invalid base64").await,
            Sasl::Malformed => {
                self.tagged(tag, "BAD Malformed authentication response")
                    .await
            }
            Sasl::Invalid(e) => {
                tracing::info!(reason = %e, "login failed: unusable credentials");
                self.fail_login(tag, None, &e.to_string()).await
            }
            Sasl::LineTooLong => {
                let _ = self.client.conn.send(BYE_LINE_TOO_LONG).await;
                Next::Done(Step::Close(Outcome::Refused))
            }
            Sasl::Eof | Sasl::Gone => Next::Done(Step::Close(Outcome::ClientLeft)),
        }
    }

    async fn fail_login(&mut self, tag: &[u8], reply: Option<Vec<u8>>, reason: &str) -> Next {
        self.failures += 1;
        // The cause has its own log line (session::login, or the branch that called this).
        tracing::debug!(reason, failures = self.failures, "failed login counted");
        let reply = reply.unwrap_or_else(|| {
            [tag, b" NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"].concat()
        });
        if let Next::Done(step) = self.reply(&reply).await {
            return Next::Done(step);
        }
        if self.failures >= MAX_AUTH_FAILURES {
            let _ = self.client.conn.send(BYE_TOO_MANY_FAILURES).await;
            return Next::Done(Step::Close(Outcome::Refused));
        }
        Next::Continue
    }

    async fn login(&mut self, tag: &[u8], credentials: Credentials) -> Next {
        let ctx = self.ctx.clone();
        self.upstream.login_tag = tag.to_vec();
        match login(&ctx, self.peer.ip(), &credentials, &mut self.upstream).await {
            Login::Accepted { account, reply } => {
                if self
                    .client
                    .conn
                    .send(&imap::rewrite_login_result(&reply.raw))
                    .await
                    .is_err()
                {
                    return Next::Done(Step::Close(Outcome::ClientLeft));
                }
                Next::Done(Step::Authenticated {
                    account: account.id.clone(),
                })
            }
            Login::LocalRejected => {
                self.fail_login(tag, None, "unknown user or wrong local password")
                    .await
            }
            Login::Throttled => {
                let reply = [
                    tag,
                    b" NO [UNAVAILABLE] Too many failed logins from this address or for this user, try again later\r\n",
                ]
                .concat();
                self.fail_login(tag, Some(reply), "too many failed logins")
                    .await
            }
            Login::TokenFailed { account, error } => {
                self.token_failure(tag, &account, &error).await
            }
            Login::UpstreamRejected { reply } => self.upstream_refused(tag, &reply).await,
            Login::UpstreamLost(e) => {
                tracing::warn!(error = %e, "upstream failed during the dialogue");
                let _ = self.client.conn.send(BYE_UPSTREAM_LOST).await;
                Next::Done(Step::Close(Outcome::UpstreamFailed))
            }
        }
    }

    /// Answers a failed token request with RFC 5530 codes (README: What a device may be told).
    async fn token_failure(&mut self, tag: &[u8], account: &AccountConfig, e: &TokenError) -> Next {
        let text = explain_token_failure(&self.ctx.shared, account, e).text;
        let reply = match e.class {
            ErrorClass::Temporary => {
                return self.tagged(tag, &format!("NO [UNAVAILABLE] {text}")).await
            }
            ErrorClass::Reauthorize => format!(
                "* OK [ALERT] {text}\r\n{} NO [AUTHENTICATIONFAILED] {text}\r\n",
                String::from_utf8_lossy(tag)
            ),
            ErrorClass::Configuration => format!(
                "{} NO [CONTACTADMIN] {text}\r\n",
                String::from_utf8_lossy(tag)
            ),
        };
        self.fail_login(
            tag,
            Some(reply.into_bytes()),
            &format!("token request failed: {}", e.code()),
        )
        .await
    }

    /// Answers an upstream refusal, keeping `[UNAVAILABLE]` temporary.
    async fn upstream_refused(&mut self, tag: &[u8], reply: &LoginReply) -> Next {
        let text = reply.tagged.text_lossy();
        let detail = sanitize_for_reply(&text, 300);
        tracing::warn!(upstream_reply = %detail, "upstream refused the login");
        if matches!(reply.tagged.parsed(), Some(Response::Tagged { .. }))
            && text.starts_with("[UNAVAILABLE]")
        {
            return self.tagged(tag, &format!("NO [UNAVAILABLE] Temporary authentication failure (upstream said: {detail})")).await;
        }
        let line = format!(
            "{} NO [AUTHENTICATIONFAILED] Upstream server refused the login ({detail})\r\n",
            String::from_utf8_lossy(tag)
        );
        self.fail_login(tag, Some(line.into_bytes()), "upstream refused")
            .await
    }

    async fn close(&mut self) {
        self.upstream.conn.shutdown().await;
        self.client.conn.shutdown().await;
    }
}
