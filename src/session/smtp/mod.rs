//! The SMTP session (RFC 5321, AUTH RFC 4954, STARTTLS RFC 3207): the relay is an SMTP server to the legacy client and an
//! SMTP client of the upstream server until the login succeeds, then a byte pipe.
//!
//! Order of events: accept (and local implicit TLS) → connect upstream and finish upstream TLS →
//! relay the greeting → answer the client's commands one at a time (EHLO relayed and rewritten,
//! AUTH intercepted, STARTTLS local, mail commands refused until login) → on `235`, relay it,
//! forward whatever the client pipelined behind its AUTH, and hand over to [`relay::pipe`].

pub mod upstream;

use crate::auth::advice::upstream_advice;
use crate::auth::oauth::TokenError;
use crate::codec::line::sanitize_for_reply;
use crate::codec::sasl::{Credentials, Mechanism};
use crate::codec::smtp::{
    self, enhanced_code, Command, EhloPolicy, MAX_AUTH_LINE, MAX_COMMAND_LINE,
};
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
use upstream::SmtpUpstream;

mod sender;

/// Failed logins allowed on one connection before it is closed (RFC 4954 §9: at least 3).
pub const MAX_AUTH_FAILURES: u32 = 3;

pub const REPLY_UPSTREAM_UNREACHABLE: &[u8] =
    b"421 4.4.1 Upstream unreachable, closing connection\r\n";
const REPLY_TIMEOUT: &[u8] = b"421 4.4.2 Timeout before authentication, closing connection\r\n";
const REPLY_UPSTREAM_LOST: &[u8] = b"421 4.4.2 Upstream connection lost, closing connection\r\n";
const REPLY_TOO_MUCH: &[u8] =
    b"421 4.7.0 Too much data before authentication, closing connection\r\n";
const REPLY_TOO_MANY_FAILURES: &[u8] = b"421 4.7.0 Too many failed logins, closing connection\r\n";
const REPLY_LINE_TOO_LONG: &[u8] = b"500 5.5.2 Line too long, closing connection\r\n";
const REPLY_AUTH_LINE_TOO_LONG: &[u8] = b"500 5.5.6 Authentication Exchange line is too long\r\n";
const REPLY_BAD_CHARACTERS: &[u8] = b"500 5.5.2 Error: command contains invalid characters\r\n";
const REPLY_UNRECOGNIZED: &[u8] = b"500 5.5.2 Error: command not recognized\r\n";
const REPLY_EHLO_SYNTAX: &[u8] = b"501 5.5.4 Syntax: EHLO hostname\r\n";
const REPLY_HELO_SYNTAX: &[u8] = b"501 5.5.4 Syntax: HELO hostname\r\n";
const REPLY_HELO_FIRST: &[u8] = b"503 5.5.1 Error: send HELO/EHLO first\r\n";
const REPLY_AUTH_REQUIRED: &[u8] = b"530 5.7.0 Authentication required\r\n";
const REPLY_ENCRYPTION_REQUIRED: &[u8] =
    b"538 5.7.11 Encryption required for requested authentication mechanism\r\n";
const REPLY_AUTH_SYNTAX: &[u8] = b"501 5.5.4 Syntax: AUTH mechanism\r\n";
const REPLY_UNKNOWN_MECHANISM: &[u8] = b"504 5.5.4 Unrecognized authentication type\r\n";
const REPLY_CANCELLED: &[u8] = b"501 5.7.0 Authentication cancelled\r\n";
const REPLY_BAD_BASE64: &[u8] = b"501 5.5.2 Cannot decode base64\r\n";
const REPLY_MALFORMED_SASL: &[u8] = b"501 5.5.2 Malformed authentication response\r\n";
pub const REPLY_INVALID_CREDENTIALS: &[u8] = b"535 5.7.8 Authentication credentials invalid\r\n";
const REPLY_OK: &[u8] = b"250 2.0.0 OK\r\n";
const REPLY_THROTTLED: &[u8] =
    b"454 4.7.0 Too many failed logins from this address or for this user, try again later\r\n";
const REPLY_BYE: &[u8] = b"221 2.0.0 Bye\r\n";
const REPLY_TLS_READY: &[u8] = b"220 2.0.0 Ready to start TLS\r\n";
const CHALLENGE: Challenge = Challenge {
    prefix: b"334 ",
    max_line: MAX_AUTH_LINE,
};
const REPLY_TLS_UNAVAILABLE: &[u8] = b"454 4.7.0 TLS not available due to temporary reason\r\n";
const REPLY_TLS_ACTIVE: &[u8] = b"503 5.5.1 Error: TLS already active\r\n";
const REPLY_STARTTLS_SYNTAX: &[u8] = b"501 5.5.4 Syntax: STARTTLS takes no parameters\r\n";

/// Runs one SMTP session to its end.
/// `conn` is the accepted connection (any PROXY header already read); `peer` the client.
pub async fn run(ctx: Arc<ListenerContext>, conn: Conn, peer: SocketAddr) -> Outcome {
    let deadline = tokio::time::Instant::now() + ctx.config.pre_auth_timeout;
    let mut client = conn;
    if !accept_implicit_tls(&ctx, &mut client, deadline).await {
        return Outcome::Refused;
    }
    let upstream = match SmtpUpstream::connect(&ctx).await {
        Ok(u) => u,
        Err(e) => {
            refuse_upstream_unavailable(&ctx, client, &e, |reason| {
                format!("421 4.4.1 Upstream unreachable ({reason}), closing connection\r\n")
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
        helo: None,
        failures: 0,
        moved: relay::Transferred::default(),
    };
    if session
        .client
        .conn
        .send(&session.upstream.greeting.clone())
        .await
        .is_err()
    {
        return Outcome::ClientLeft;
    }
    let result = {
        let close = session.ctx.shared.close_sessions.clone();
        tokio::select! {
            r = timeout_at(deadline, session.dialogue()) => r,
            _ = close.cancelled() => Ok(Step::Closing),
        }
    };
    match result {
        Ok(Step::Authenticated { account }) => {
            if sender::checks_sender(&account) {
                let outcome = session.transactions(&account).await;
                session.close().await;
                return outcome;
            }
            session.relay(account.id.clone()).await
        }
        Ok(Step::Close(outcome)) => {
            session.close().await;
            outcome
        }
        Ok(Step::Closing) => {
            let _ = session
                .client
                .conn
                .send(b"421 4.3.2 Service shutting down, closing connection\r\n")
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

/// What the dialogue loop decided.
enum Step {
    Authenticated {
        account: Arc<AccountConfig>,
    },
    Close(Outcome),
    /// The relay is shutting down.
    Closing,
}

/// What one command handler decided.
enum Next {
    Continue,
    Done(Step),
}

struct Session {
    ctx: Arc<ListenerContext>,
    peer: SocketAddr,
    client: ClientSide,
    upstream: SmtpUpstream,
    /// The client's EHLO/HELO domain, once it has sent one.
    helo: Option<Vec<u8>>,
    failures: u32,
    /// Bytes passed on after login (the transaction loop's count, for metrics and the log).
    moved: relay::Transferred,
}

impl Session {
    async fn dialogue(&mut self) -> Step {
        loop {
            let line = match self
                .client
                .read_command(MAX_COMMAND_LINE, MAX_AUTH_LINE, smtp::is_auth_line)
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
            match self.handle(&line).await {
                Next::Continue => {}
                Next::Done(step) => return step,
            }
        }
    }

    async fn handle(&mut self, line: &[u8]) -> Next {
        let command = smtp::parse_command(line);
        let reply: &[u8] = match command {
            Command::Ehlo(domain) | Command::Helo(domain) if domain.is_empty() => {
                if matches!(command, Command::Ehlo(_)) {
                    REPLY_EHLO_SYNTAX
                } else {
                    REPLY_HELO_SYNTAX
                }
            }
            Command::Ehlo(domain) => return self.ehlo(domain, true).await,
            Command::Helo(domain) => return self.ehlo(domain, false).await,
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                let mechanism = mechanism.to_vec();
                let initial_response =
                    initial_response.map(|r| SecretBytes::new(r.expose().to_vec()));
                return self
                    .auth(
                        &mechanism,
                        initial_response.as_ref().map(SecretBytes::expose),
                    )
                    .await;
            }
            Command::StartTls { has_args } => return self.starttls(has_args).await,
            Command::Quit => {
                let reply = self
                    .upstream
                    .quit()
                    .await
                    .map(|r| r.raw)
                    .unwrap_or_else(|| REPLY_BYE.to_vec());
                let _ = self.client.conn.send(&reply).await;
                return Next::Done(Step::Close(Outcome::ClientLeft));
            }
            Command::Noop | Command::Rset => REPLY_OK,
            Command::NeedsAuth => REPLY_AUTH_REQUIRED,
            Command::Http => {
                tracing::info!("HTTP request on the SMTP port; closing");
                return Next::Done(Step::Close(Outcome::Refused));
            }
            Command::Malformed => REPLY_BAD_CHARACTERS,
            Command::Unknown => REPLY_UNRECOGNIZED,
        };
        self.reply(reply).await
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

    async fn ehlo(&mut self, domain: &[u8], extended: bool) -> Next {
        let reply = match self.upstream.ehlo(domain).await {
            Ok(r) => r,
            Err(e) => return self.upstream_lost(&e.to_string()).await,
        };
        if reply.code != 250 {
            return self.reply(&reply.raw.clone()).await;
        }
        self.helo = Some(domain.to_vec());
        let answer = if extended {
            let policy = EhloPolicy {
                offer_auth: self.local_channel_acceptable(),
                offer_starttls: self.ctx.config.tls == LocalTls::Starttls
                    && !self.client.conn.is_tls(),
            };
            smtp::rewrite_ehlo(&reply.as_reply(), policy)
        } else {
            smtp::helo_reply(&reply.as_reply())
        };
        self.reply(&answer).await
    }

    async fn starttls(&mut self, has_args: bool) -> Next {
        if has_args {
            return self.reply(REPLY_STARTTLS_SYNTAX).await;
        }
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
            tracing::warn!("client pipelined data after STARTTLS (injection attempt); closing");
            return Next::Done(Step::Close(Outcome::Refused));
        }
        if let Err(e) = self.client.conn.accept_tls(&acceptor).await {
            tracing::info!(error = %e, "client STARTTLS handshake failed");
            return Next::Done(Step::Close(Outcome::Refused));
        }
        // RFC 3207 §4.2: forget everything learned before TLS; the client must EHLO again.
        self.helo = None;
        Next::Continue
    }

    async fn auth(&mut self, mechanism: &[u8], initial_response: Option<&[u8]>) -> Next {
        if self.helo.is_none() {
            return self.reply(REPLY_HELO_FIRST).await;
        }
        if !self.local_channel_acceptable() {
            return self.reply(REPLY_ENCRYPTION_REQUIRED).await;
        }
        if mechanism.is_empty() {
            return self.reply(REPLY_AUTH_SYNTAX).await;
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
                let _ = self.client.conn.send(REPLY_AUTH_LINE_TOO_LONG).await;
                Next::Done(Step::Close(Outcome::Refused))
            }
            Sasl::Eof | Sasl::Gone => Next::Done(Step::Close(Outcome::ClientLeft)),
        }
    }

    /// Counts a failed login, answers it, and closes the connection after too many.
    async fn fail_login(&mut self, reply: Option<&[u8]>, reason: &str) -> Next {
        self.failures += 1;
        // The cause has its own log line (session::login, or the branch that called this).
        tracing::debug!(reason, failures = self.failures, "failed login counted");
        if let Next::Done(step) = self.reply(reply.unwrap_or(REPLY_INVALID_CREDENTIALS)).await {
            return Next::Done(step);
        }
        if self.failures >= MAX_AUTH_FAILURES {
            let _ = self.client.conn.send(REPLY_TOO_MANY_FAILURES).await;
            return Next::Done(Step::Close(Outcome::Refused));
        }
        Next::Continue
    }

    /// Logs in (session::login) and answers the outcome.
    async fn login(&mut self, credentials: Credentials) -> Next {
        let ctx = self.ctx.clone();
        match login(&ctx, self.peer.ip(), &credentials, &mut self.upstream).await {
            Login::Accepted { account, reply } => {
                if self.client.conn.send(&reply.raw).await.is_err() {
                    return Next::Done(Step::Close(Outcome::ClientLeft));
                }
                Next::Done(Step::Authenticated { account })
            }
            Login::LocalRejected => {
                self.fail_login(None, "unknown user or wrong local password")
                    .await
            }
            Login::Throttled => {
                self.fail_login(Some(REPLY_THROTTLED), "too many failed logins")
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
            let line = format!("454 4.7.0 {}\r\n", explained.text);
            return self.reply(line.as_bytes()).await;
        }
        let line = format!("535 5.7.8 {}\r\n", explained.text);
        self.fail_login(
            Some(line.as_bytes()),
            &format!("token request failed: {}", e.code()),
        )
        .await
    }

    /// Answers an upstream refusal: 4xx stays temporary, 5xx becomes `535 5.7.8` with upstream's
    /// own code and text so that e.g. `5.7.139` (SMTP AUTH disabled) reaches the user.
    async fn upstream_refused(&mut self, reply: &upstream::OwnedReply) -> Next {
        let text = reply.first_text();
        let detail = sanitize_for_reply(&text, 300);
        tracing::warn!(code = reply.code, enhanced = enhanced_code(text.as_bytes()).unwrap_or(""), upstream_reply = %detail, "upstream refused the login");
        if (400..500).contains(&reply.code) {
            let line = format!(
                "454 4.7.0 Temporary authentication failure (upstream said: {} {detail})\r\n",
                reply.code
            );
            return self.reply(line.as_bytes()).await;
        }
        let advice = upstream_advice(&text)
            .map(|a| format!(": {a}"))
            .unwrap_or_default();
        let line = format!(
            "535 5.7.8 {}\r\n",
            sanitize_for_reply(
                &format!(
                    "Upstream server refused the login ({} {detail}){advice}",
                    reply.code
                ),
                480
            )
        );
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
