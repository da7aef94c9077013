//! The POP3 session (RFC 1939, CAPA RFC 2449, AUTH RFC 5034): the relay is a POP3 server to the legacy client and a POP3
//! client of the upstream server until the login succeeds, then a byte pipe.
//!
//! Order of events: accept (and local implicit TLS) → connect upstream and finish upstream TLS →
//! greet with upstream's greeting (APOP timestamp removed) → answer the client's commands one at
//! a time (CAPA relayed and rewritten, USER/PASS and AUTH intercepted, STLS local, mailbox
//! commands refused until login) → on `+OK`, relay it, forward whatever the client pipelined
//! behind its login, and hand over to [`relay::pipe`].

pub mod upstream;

use crate::auth::oauth::TokenError;
use crate::codec::line::sanitize_for_reply;
use crate::codec::pop3::{self, CapaPolicy, Command, MAX_AUTH_LINE, MAX_COMMAND_LINE};
use crate::codec::sasl::{self, Credentials, Mechanism};
use crate::config::AccountConfig;
use crate::config::LocalTls;
use crate::net::conn::Conn;
use crate::secret::SecretBytes;
use crate::session::client::{
    accept_implicit_tls, read_sasl, refuse_upstream_unavailable, Challenge, ClientSide, Read, Sasl,
};
use crate::session::login::{explain_token_failure, login, Login};
use crate::session::relay;
use crate::session::{ListenerContext, Outcome};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::timeout_at;
use upstream::{Line, Pop3Upstream};

/// Failed logins allowed on one connection before it is closed.
pub const MAX_AUTH_FAILURES: u32 = 3;

const CHALLENGE: Challenge = Challenge {
    prefix: b"+ ",
    max_line: MAX_AUTH_LINE,
};
const REPLY_USER_OK: &[u8] = b"+OK\r\n";
const REPLY_NO_USER: &[u8] = b"-ERR No USER given\r\n";
const REPLY_AFTER_USER: &[u8] = b"-ERR Only PASS or QUIT may follow USER\r\n";
const REPLY_AUTH_LIST: &[u8] = b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n";
const REPLY_UNKNOWN_MECHANISM: &[u8] = b"-ERR Unsupported authentication mechanism\r\n";
const REPLY_CANCELLED: &[u8] = b"-ERR Authentication cancelled\r\n";
const REPLY_BAD_BASE64: &[u8] = b"-ERR Cannot decode base64\r\n";
const REPLY_MALFORMED_SASL: &[u8] = b"-ERR Malformed authentication response\r\n";
const REPLY_APOP: &[u8] = b"-ERR APOP is not supported; log in with USER/PASS or AUTH PLAIN\r\n";
pub const REPLY_AUTH_FAILED: &[u8] = b"-ERR [AUTH] Authentication failed\r\n";
const REPLY_NEEDS_AUTH: &[u8] = b"-ERR [AUTH] Authenticate first\r\n";
const REPLY_UNKNOWN: &[u8] = b"-ERR Unknown command\r\n";
const REPLY_MALFORMED: &[u8] = b"-ERR Invalid command\r\n";
const REPLY_LINE_TOO_LONG: &[u8] = b"-ERR Line too long, closing connection\r\n";
const REPLY_TOO_MUCH: &[u8] =
    b"-ERR [SYS/PERM] Too much data before authentication, closing connection\r\n";
const REPLY_TOO_MANY_FAILURES: &[u8] =
    b"-ERR [SYS/PERM] Too many failed logins, closing connection\r\n";
const REPLY_TIMEOUT: &[u8] =
    b"-ERR [SYS/TEMP] Timeout before authentication, closing connection\r\n";
const REPLY_UPSTREAM_LOST: &[u8] =
    b"-ERR [SYS/TEMP] Upstream connection lost, closing connection\r\n";
const REPLY_ENCRYPTION_REQUIRED: &[u8] = b"-ERR [AUTH] TLS is required before authentication\r\n";
const REPLY_TLS_READY: &[u8] = b"+OK Begin TLS negotiation\r\n";
const REPLY_TLS_ACTIVE: &[u8] = b"-ERR Command not permitted when TLS active\r\n";
const REPLY_TLS_UNAVAILABLE: &[u8] = b"-ERR STLS not available\r\n";
const REPLY_BYE: &[u8] = b"+OK Bye\r\n";

/// Runs one POP3 session to its end.
/// `conn` is the accepted connection (any PROXY header already read); `peer` the client.
pub async fn run(ctx: Arc<ListenerContext>, conn: Conn, peer: SocketAddr) -> Outcome {
    let deadline = tokio::time::Instant::now() + ctx.config.pre_auth_timeout;
    let mut client = conn;
    if !accept_implicit_tls(&ctx, &mut client, deadline).await {
        return Outcome::Refused;
    }
    let upstream = match Pop3Upstream::connect(&ctx).await {
        Ok(u) => u,
        Err(e) => {
            refuse_upstream_unavailable(&ctx, client, &e, |reason| {
                format!("-ERR [SYS/TEMP] Upstream unreachable ({reason}), closing connection\r\n")
            })
            .await;
            return Outcome::UpstreamFailed;
        }
    };
    let mut greeting = b"+OK ".to_vec();
    greeting.extend_from_slice(&pop3::strip_apop_timestamp(&upstream.greeting));
    greeting.extend_from_slice(b"\r\n");
    let mut session = Session {
        ctx,
        peer,
        client: ClientSide::new(client),
        upstream,
        user: None,
        failures: 0,
    };
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
        Ok(Step::Authenticated { account }) => session.relay(account).await,
        Ok(Step::Close(outcome)) => {
            session.close().await;
            outcome
        }
        Ok(Step::Closing) => {
            let _ = session
                .client
                .conn
                .send(b"-ERR [SYS/TEMP] Server shutting down, closing connection\r\n")
                .await;
            session.close().await;
            Outcome::Refused
        }
        Err(_) => {
            tracing::info!("pre-authentication timeout");
            let _ = session.client.conn.send(REPLY_TIMEOUT).await;
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
    upstream: Pop3Upstream,
    /// The name given with USER, waiting for PASS.
    user: Option<String>,
    failures: u32,
}

impl Session {
    async fn dialogue(&mut self) -> Step {
        loop {
            let line = match self
                .client
                .read_command(MAX_COMMAND_LINE, MAX_AUTH_LINE, pop3::may_be_long)
                .await
            {
                Read::Line(l) => l,
                Read::TooLong => {
                    let _ = self.client.conn.send(REPLY_LINE_TOO_LONG).await;
                    return Step::Close(Outcome::Refused);
                }
                Read::Eof => return Step::Close(Outcome::ClientLeft),
            };
            if self.client.over_budget() {
                let _ = self.client.conn.send(REPLY_TOO_MUCH).await;
                return Step::Close(Outcome::Refused);
            }
            if let Next::Done(step) = self.handle(&line).await {
                return step;
            }
        }
    }

    async fn handle(&mut self, line: &[u8]) -> Next {
        let command = pop3::parse_command(line);
        // RFC 1939 §7: after a positive USER only PASS or QUIT may follow.
        let pending_user = self.user.take();
        if pending_user.is_some() && !matches!(command, Command::Pass(_) | Command::Quit) {
            return self.reply(REPLY_AFTER_USER).await;
        }
        match command {
            Command::User(name) => {
                if !self.local_channel_acceptable() {
                    return self.reply(REPLY_ENCRYPTION_REQUIRED).await;
                }
                match sasl::parse_username(name) {
                    Ok(user) => {
                        self.user = Some(user);
                        self.reply(REPLY_USER_OK).await
                    }
                    Err(_) => self.reply(REPLY_MALFORMED).await,
                }
            }
            Command::Pass(password) => {
                let Some(username) = pending_user else {
                    return self.reply(REPLY_NO_USER).await;
                };
                match sasl::parse_password(password.expose()) {
                    Ok(password) => self.login(Credentials { username, password }).await,
                    Err(e) => {
                        tracing::info!(reason = %e, "login failed: unusable credentials");
                        self.fail_login(None, &e.to_string()).await
                    }
                }
            }
            Command::Auth {
                mechanism: None, ..
            } => self.reply(REPLY_AUTH_LIST).await,
            Command::Auth {
                mechanism: Some(m),
                initial_response,
            } => {
                let m = m.to_vec();
                let ir = initial_response.map(|r| SecretBytes::new(r.expose().to_vec()));
                self.auth(&m, ir.as_ref().map(SecretBytes::expose)).await
            }
            Command::Apop => self.reply(REPLY_APOP).await,
            Command::Capa => self.capa().await,
            Command::Stls => self.stls().await,
            Command::Quit => {
                let reply = self
                    .upstream
                    .quit()
                    .await
                    .map(|l| l.raw)
                    .unwrap_or_else(|| REPLY_BYE.to_vec());
                let _ = self.client.conn.send(&reply).await;
                Next::Done(Step::Close(Outcome::ClientLeft))
            }
            Command::NeedsAuth => self.reply(REPLY_NEEDS_AUTH).await,
            Command::Http => {
                tracing::info!("HTTP request on the POP3 port; closing");
                Next::Done(Step::Close(Outcome::Refused))
            }
            Command::Malformed => self.reply(REPLY_MALFORMED).await,
            Command::Unknown => self.reply(REPLY_UNKNOWN).await,
        }
    }

    async fn reply(&mut self, bytes: &[u8]) -> Next {
        match self.client.conn.send(bytes).await {
            Ok(()) => Next::Continue,
            Err(_) => Next::Done(Step::Close(Outcome::ClientLeft)),
        }
    }

    fn local_channel_acceptable(&self) -> bool {
        self.client.conn.is_tls()
            || self.peer.ip().is_loopback()
            || self.ctx.config.remote_plaintext_auth
    }

    async fn capa(&mut self) -> Next {
        let (status, _, lines) = match self.upstream.capa().await {
            Ok(r) => r,
            Err(e) => return self.upstream_lost(&e.to_string()).await,
        };
        if !status.ok {
            return self.reply(&status.raw).await;
        }
        let views: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let policy = CapaPolicy {
            offer_auth: self.local_channel_acceptable(),
            offer_stls: self.ctx.config.tls == LocalTls::Starttls && !self.client.conn.is_tls(),
        };
        self.reply(&pop3::rewrite_capa(&views, policy)).await
    }

    async fn stls(&mut self) -> Next {
        if self.client.conn.is_tls() {
            return self.reply(REPLY_TLS_ACTIVE).await;
        }
        let acceptor = match (&self.ctx.acceptor, self.ctx.config.tls) {
            (Some(a), LocalTls::Starttls) => a.clone(),
            _ => return self.reply(REPLY_TLS_UNAVAILABLE).await,
        };
        if let Next::Done(step) = self.reply(REPLY_TLS_READY).await {
            return Next::Done(step);
        }
        if !self.client.conn.buffered().is_empty() {
            tracing::warn!("client pipelined data after STLS (injection attempt); closing");
            return Next::Done(Step::Close(Outcome::Refused));
        }
        if let Err(e) = self.client.conn.accept_tls(&acceptor).await {
            tracing::info!(error = %e, "client STLS handshake failed");
            return Next::Done(Step::Close(Outcome::Refused));
        }
        Next::Continue
    }

    async fn auth(&mut self, mechanism: &[u8], initial_response: Option<&[u8]>) -> Next {
        if !self.local_channel_acceptable() {
            return self.reply(REPLY_ENCRYPTION_REQUIRED).await;
        }
        let Some(mechanism) = Mechanism::parse(mechanism) else {
            return self.reply(REPLY_UNKNOWN_MECHANISM).await;
        };
        match read_sasl(&mut self.client, &CHALLENGE, mechanism, initial_response).await {
            Sasl::Credentials(c) => self.login(c).await,
            Sasl::Cancelled => self.reply(REPLY_CANCELLED).await,
            Sasl::BadBase64 => self.reply(REPLY_BAD_BASE64).await,
            Sasl::Malformed => self.reply(REPLY_MALFORMED_SASL).await,
            Sasl::Invalid(e) => {
                tracing::info!(reason = %e, "login failed: unusable credentials");
                self.fail_login(None, &e.to_string()).await
            }
            Sasl::LineTooLong => {
                let _ = self.client.conn.send(REPLY_LINE_TOO_LONG).await;
                Next::Done(Step::Close(Outcome::Refused))
            }
            Sasl::Eof | Sasl::Gone => Next::Done(Step::Close(Outcome::ClientLeft)),
        }
    }

    async fn fail_login(&mut self, reply: Option<&[u8]>, reason: &str) -> Next {
        self.failures += 1;
        // The cause has its own log line (session::login, or the branch that called this).
        tracing::debug!(reason, failures = self.failures, "failed login counted");
        if let Next::Done(step) = self.reply(reply.unwrap_or(REPLY_AUTH_FAILED)).await {
            return Next::Done(step);
        }
        if self.failures >= MAX_AUTH_FAILURES {
            let _ = self.client.conn.send(REPLY_TOO_MANY_FAILURES).await;
            return Next::Done(Step::Close(Outcome::Refused));
        }
        Next::Continue
    }

    async fn login(&mut self, credentials: Credentials) -> Next {
        let ctx = self.ctx.clone();
        match login(&ctx, self.peer.ip(), &credentials, &mut self.upstream).await {
            Login::Accepted { account, reply } => {
                if self.client.conn.send(&reply.raw).await.is_err() {
                    return Next::Done(Step::Close(Outcome::ClientLeft));
                }
                Next::Done(Step::Authenticated {
                    account: account.id.clone(),
                })
            }
            Login::LocalRejected => {
                self.fail_login(None, "unknown user or wrong local password")
                    .await
            }
            Login::Throttled => {
                self.fail_login(
                    Some(b"-ERR [SYS/TEMP] Too many failed logins from this address or for this user, try again later\r\n"),
                    "too many failed logins",
                )
                .await
            }
            Login::TokenFailed { account, error } => self.token_failure(&account, &error).await,
            Login::UpstreamRejected { reply } => self.upstream_refused(&reply).await,
            Login::UpstreamLost(e) => self.upstream_lost(&e.to_string()).await,
        }
    }

    /// Answers a failed token request (README: What a device may be told).
    async fn token_failure(&mut self, account: &AccountConfig, e: &TokenError) -> Next {
        let explained = explain_token_failure(&self.ctx.shared, account, e);
        if explained.temporary {
            let line = format!("-ERR [SYS/TEMP] {}\r\n", explained.text);
            return self.reply(line.as_bytes()).await;
        }
        let line = format!("-ERR [AUTH] {}\r\n", explained.text);
        self.fail_login(
            Some(line.as_bytes()),
            &format!("token request failed: {}", e.code()),
        )
        .await
    }

    /// Answers an upstream refusal, keeping its response code: `[SYS/TEMP]` stays temporary.
    async fn upstream_refused(&mut self, reply: &Line) -> Next {
        let text = reply.text_lossy();
        let detail = sanitize_for_reply(&text, 300);
        tracing::warn!(upstream_reply = %detail, "upstream refused the login");
        if text.starts_with("[SYS/TEMP]")
            || text.starts_with("[IN-USE]")
            || text.starts_with("[LOGIN-DELAY]")
        {
            let line = format!(
                "-ERR [SYS/TEMP] Temporary authentication failure (upstream said: {detail})\r\n"
            );
            return self.reply(line.as_bytes()).await;
        }
        let line = format!("-ERR [AUTH] Upstream server refused the login ({detail})\r\n");
        self.fail_login(Some(line.as_bytes()), "upstream refused")
            .await
    }

    async fn upstream_lost(&mut self, reason: &str) -> Next {
        tracing::warn!(error = reason, "upstream failed during the dialogue");
        let _ = self.client.conn.send(REPLY_UPSTREAM_LOST).await;
        Next::Done(Step::Close(Outcome::UpstreamFailed))
    }

    async fn close(&mut self) {
        self.upstream.conn.shutdown().await;
        self.client.conn.shutdown().await;
    }

    async fn relay(self, account: String) -> Outcome {
        let ctx = self.ctx.clone();
        relay::run_authenticated(&ctx, self.client.conn, self.upstream.conn, &account).await
    }
}
