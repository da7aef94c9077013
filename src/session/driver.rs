//! The pre-login driver: one dialogue for SMTP, IMAP and POP3.
//!
//! A protocol is described by a [`Protocol`]: its greeting, how its commands are framed, what
//! each command asks for ([`Action`]), and its words for every outcome ([`Say`]). The
//! description holds the session's state (SMTP's EHLO, POP3's USER, IMAP's tag) and does no I/O,
//! so the dialogue is unit-tested without sockets. This driver does the rest, once for all:
//! reading with limits, STARTTLS, the PLAIN/LOGIN exchange, the login ([`login::log_in`]: local
//! check first, upstream only after it passed), failure counting, the timeout, the goodbye on
//! shutdown, and the hand-off to the protocol's after-login part.
//!
//! Nothing here opens an upstream connection before a local login succeeded: greetings and
//! capability answers come from the listener's configuration and its capability cache.

use crate::auth::oauth::ErrorClass;
use crate::codec::sasl::{Credentials, Mechanism};
use crate::config::{AccountConfig, LocalTls};
use crate::net::conn::Conn;
use crate::secret::SecretBytes;
use crate::session::client::{accept_implicit_tls, read_sasl, Challenge, ClientSide, Sasl};
use crate::session::login::{self, explain_token_failure, Dial, LoginOutcome, UpstreamLogin};
use crate::session::{ListenerContext, Outcome};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::timeout_at;

/// Failed logins allowed on one connection before it is closed (RFC 4954 §9: at least 3).
pub const MAX_AUTH_FAILURES: u32 = 3;

/// What a protocol description may know about the connection when it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// The client connection is TLS.
    pub tls_active: bool,
    /// Passwords may be sent now: TLS, a loopback client, or `remote_plaintext_auth`.
    pub auth_allowed: bool,
    /// The listener can start TLS on this connection (STARTTLS configured, not yet active).
    pub offer_starttls: bool,
}

/// How the next command sits in the client's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    /// More bytes are needed.
    Incomplete,
    /// A command.
    Command {
        /// Its first `body` bytes are the command (without the line end for line protocols).
        body: usize,
        /// The bytes it takes.
        used: usize,
    },
    /// Send this and go on framing (IMAP's go-ahead for a synchronizing literal).
    Send(&'static [u8]),
    /// The command cannot be framed within the limits: send the reply and close.
    TooLong(Vec<u8>),
}

/// What a command asks the driver to do.
#[derive(Debug)]
pub enum Action {
    /// Answer and go on.
    Reply(Vec<u8>),
    /// Answer (when not empty) and close.
    Close(Vec<u8>, Outcome),
    /// Send the go-ahead, then the TLS handshake (the description checked it is possible).
    StartTls(Vec<u8>),
    /// Run the SASL exchange for `mechanism`, then log in.
    Authenticate {
        /// PLAIN or LOGIN.
        mechanism: Mechanism,
        /// The response sent on the command line, if any.
        initial_response: Option<SecretBytes>,
    },
    /// Log in with these credentials.
    Login(Credentials),
    /// Spool mode: a client of the listener's trusted networks goes on without a login; the
    /// command (MAIL) is the first of the session after the dialogue.
    WithoutLogin(Vec<u8>),
    /// The credentials cannot be used at all: a failed login.
    Unusable,
}

/// The outcomes a protocol puts in its own words.
#[derive(Debug, Clone, Copy)]
pub enum Say<'a> {
    /// The pre-login time ran out (the connection closes).
    Timeout,
    /// More than the pre-login byte budget (the connection closes).
    TooMuch,
    /// The relay is shutting down (the connection closes).
    ShuttingDown,
    /// Too many failed logins on this connection (the connection closes).
    TooManyFailures,
    /// A SASL response line over the limit (the connection closes).
    LineTooLong,
    /// Unknown user, wrong password, or unusable credentials.
    BadCredentials,
    /// Too many failed logins from this address or for this user.
    Throttled,
    /// The client cancelled the SASL exchange (`*`).
    Cancelled,
    /// A SASL response that is not base64.
    BadBase64,
    /// A PLAIN response without its two NULs.
    Malformed,
    /// No token could be had; `text` explains it (README: What a device may be told).
    Token {
        /// Whether it may heal by itself, needs a new sign-in, or the administrator.
        class: ErrorClass,
        /// The explanation, free of secrets and control characters.
        text: &'a str,
    },
    /// The upstream cannot be reached or failed during the login: try again later.
    UpstreamUnavailable {
        /// Why, sanitized for a reply.
        reason: &'a str,
    },
}

/// A protocol's refusal of an upstream login reply, in its own words.
pub struct Refusal {
    /// The whole reply.
    pub reply: Vec<u8>,
    /// The refusal may heal by itself (not counted as a failed login).
    pub temporary: bool,
}

/// The upstream reply type of a protocol.
pub type UpstreamReply<P> = <<P as Dial>::Upstream as UpstreamLogin>::Reply;

/// One protocol, as the driver sees it. Implementations hold the session's pre-login state.
pub trait Protocol: Dial + Send + Sync + Sized + 'static {
    /// How SASL challenges are written.
    const CHALLENGE: Challenge;
    /// Capabilities assumed of an upstream never seen (a conservative set).
    fn default_capabilities() -> Vec<Vec<u8>>;
    /// The greeting, sent first.
    fn greeting(&self, view: &View, caps: &[Vec<u8>]) -> Vec<u8>;
    /// Finds the next command in `buffered`.
    fn frame(&mut self, buffered: &[u8]) -> Framing;
    /// Decides what one framed command asks for.
    fn command(&mut self, command: &[u8], view: &View, caps: &[Vec<u8>]) -> Action;
    /// TLS is now active: forget what was learned before it (RFC 3207 §4.2).
    fn tls_started(&mut self) {}
    /// The reply for an outcome.
    fn say(&self, what: Say<'_>) -> Vec<u8>;
    /// The reply relayed when upstream accepted the login.
    fn accepted(&self, reply: &UpstreamReply<Self>) -> Vec<u8>;
    /// The reply when upstream refused the login.
    fn refused(&self, reply: &UpstreamReply<Self>) -> Refusal;
    /// Dials the listener's upstream, learns its capabilities and says goodbye (the probe at
    /// start).
    fn probe(
        target: &crate::session::upstream::Target,
    ) -> impl Future<Output = Result<Vec<Vec<u8>>, crate::session::upstream::UpstreamError>> + Send;
    /// Spool mode: a login is the local check alone and no upstream belongs to the session;
    /// this is the reply to a login that passed it. `None` (the default): log in upstream.
    fn accepted_locally(&self) -> Option<Vec<u8>> {
        None
    }
    /// Runs the session after a local login or none (spool mode) until it ends.
    fn after_local_login(
        self,
        ctx: Arc<ListenerContext>,
        client: ClientSide,
        sender: LocalSender,
    ) -> impl Future<Output = Outcome> + Send {
        let _ = (ctx, client, sender);
        async { Outcome::Refused }
    }
    /// Runs the session after login until it ends.
    fn after_login(
        self,
        ctx: Arc<ListenerContext>,
        client: ClientSide,
        upstream: Self::Upstream,
        account: Arc<AccountConfig>,
    ) -> impl Future<Output = Outcome> + Send;
}

/// Who sends in a spool session once the pre-login dialogue is over.
pub enum LocalSender {
    /// A device logged in as this account.
    Account(Arc<AccountConfig>),
    /// A client of the listener's `trusted_networks`, without a login: each transaction's
    /// account is chosen by its sender. `first` is the command that ended the dialogue.
    Trusted {
        /// The command (MAIL) the session begins with.
        first: Vec<u8>,
    },
}

/// How the pre-login dialogue ended.
enum End<U> {
    Authenticated {
        upstream: U,
        account: Arc<AccountConfig>,
        /// Held until the session ends (see [`crate::session::slot`]).
        slot: Option<crate::session::slot::SessionSlot>,
    },
    /// Logged in locally, or trusted without a login (spool mode): no upstream.
    Local(LocalSender),
    Close(Outcome),
}

/// What handling one step decided.
enum Next<U> {
    Continue,
    Done(End<U>),
}

/// Runs one session of protocol `P` to its end. `conn` is the accepted connection (any PROXY
/// header already read); `peer` the client.
pub async fn run<P: Protocol>(
    ctx: Arc<ListenerContext>,
    conn: Conn,
    peer: SocketAddr,
    protocol: P,
) -> Outcome {
    let deadline = tokio::time::Instant::now() + ctx.config.pre_auth_timeout;
    let mut conn = conn;
    if !accept_implicit_tls(&ctx, &mut conn, deadline).await {
        return Outcome::Refused;
    }
    let mut driver = Driver {
        ctx,
        peer,
        client: ClientSide::new(conn),
        protocol,
        failures: 0,
    };
    let greeting = driver.protocol.greeting(&driver.view(), &driver.caps());
    if driver.client.conn.send(&greeting).await.is_err() {
        return Outcome::ClientLeft;
    }
    let close = driver.ctx.shared.close_sessions.clone();
    let end = tokio::select! {
        r = timeout_at(deadline, driver.dialogue()) => r,
        _ = close.cancelled() => {
            let bye = driver.protocol.say(Say::ShuttingDown);
            Ok(driver.close(&bye, Outcome::Refused).await)
        }
    };
    let end = match end {
        Ok(end) => end,
        Err(_) => {
            tracing::info!("pre-authentication timeout");
            let bye = driver.protocol.say(Say::Timeout);
            driver.close(&bye, Outcome::Refused).await
        }
    };
    match end {
        End::Authenticated {
            upstream,
            account,
            slot,
        } => {
            let Driver {
                ctx,
                client,
                protocol,
                ..
            } = driver;
            let outcome = protocol.after_login(ctx, client, upstream, account).await;
            drop(slot);
            outcome
        }
        End::Local(sender) => {
            let Driver {
                ctx,
                client,
                protocol,
                ..
            } = driver;
            protocol.after_local_login(ctx, client, sender).await
        }
        End::Close(outcome) => {
            driver.client.conn.shutdown().await;
            outcome
        }
    }
}

struct Driver<P: Protocol> {
    ctx: Arc<ListenerContext>,
    peer: SocketAddr,
    client: ClientSide,
    protocol: P,
    failures: u32,
}

impl<P: Protocol> Driver<P> {
    fn view(&self) -> View {
        let tls_active = self.client.conn.is_tls();
        View {
            tls_active,
            auth_allowed: tls_active
                || self.peer.ip().is_loopback()
                || self.ctx.config.remote_plaintext_auth,
            offer_starttls: self.ctx.config.tls == LocalTls::Starttls
                && self.ctx.acceptor.is_some()
                && !tls_active,
        }
    }

    fn caps(&self) -> Arc<Vec<Vec<u8>>> {
        self.ctx
            .capabilities
            .get()
            .unwrap_or_else(|| Arc::new(P::default_capabilities()))
    }

    async fn dialogue(&mut self) -> End<P::Upstream> {
        loop {
            if self.client.over_budget() {
                let reply = self.protocol.say(Say::TooMuch);
                return self.close(&reply, Outcome::Refused).await;
            }
            match self.protocol.frame(self.client.conn.buffered()) {
                Framing::Incomplete => match self.client.conn.fill().await {
                    Ok(0) | Err(_) => return End::Close(Outcome::ClientLeft),
                    Ok(_) => {}
                },
                Framing::Send(bytes) => {
                    if self.client.conn.send(bytes).await.is_err() {
                        return End::Close(Outcome::ClientLeft);
                    }
                }
                Framing::TooLong(reply) => return self.close(&reply, Outcome::Refused).await,
                Framing::Command { body, used } => {
                    let command = self.client.take(used);
                    let (view, caps) = (self.view(), self.caps());
                    let action = self.protocol.command(&command[..body], &view, &caps);
                    if let Next::Done(end) = self.act(action).await {
                        return end;
                    }
                }
            }
        }
    }

    async fn act(&mut self, action: Action) -> Next<P::Upstream> {
        match action {
            Action::Reply(bytes) => self.reply(&bytes).await,
            Action::Close(bytes, outcome) => Next::Done(self.close(&bytes, outcome).await),
            Action::StartTls(go_ahead) => self.start_tls(&go_ahead).await,
            Action::Authenticate {
                mechanism,
                initial_response,
            } => self.authenticate(mechanism, initial_response).await,
            Action::Login(credentials) => self.login(credentials).await,
            Action::WithoutLogin(first) => Next::Done(End::Local(LocalSender::Trusted { first })),
            Action::Unusable => {
                tracing::info!("login failed: unusable username or password");
                self.fail(Say::BadCredentials).await
            }
        }
    }

    async fn reply(&mut self, bytes: &[u8]) -> Next<P::Upstream> {
        match self.client.conn.send(bytes).await {
            Ok(()) => Next::Continue,
            Err(_) => Next::Done(End::Close(Outcome::ClientLeft)),
        }
    }

    /// Sends `bytes` (when any) and ends the dialogue with `outcome`.
    async fn close(&mut self, bytes: &[u8], outcome: Outcome) -> End<P::Upstream> {
        if !bytes.is_empty() {
            let _ = self.client.conn.send(bytes).await;
        }
        End::Close(outcome)
    }

    async fn start_tls(&mut self, go_ahead: &[u8]) -> Next<P::Upstream> {
        let Some(acceptor) = self.ctx.acceptor.clone() else {
            return Next::Done(End::Close(Outcome::Refused));
        };
        if let Next::Done(end) = self.reply(go_ahead).await {
            return Next::Done(end);
        }
        if !self.client.conn.buffered().is_empty() {
            tracing::warn!("client pipelined data after STARTTLS (injection attempt); closing");
            return Next::Done(End::Close(Outcome::Refused));
        }
        if let Err(e) = self.client.conn.accept_tls(&acceptor).await {
            tracing::info!(error = %e, "client STARTTLS handshake failed");
            return Next::Done(End::Close(Outcome::Refused));
        }
        self.protocol.tls_started();
        Next::Continue
    }

    async fn authenticate(
        &mut self,
        mechanism: Mechanism,
        initial_response: Option<SecretBytes>,
    ) -> Next<P::Upstream> {
        let ir = initial_response.as_ref().map(SecretBytes::expose);
        let say = match read_sasl(&mut self.client, &P::CHALLENGE, mechanism, ir).await {
            Sasl::Credentials(c) => return self.login(c).await,
            Sasl::Cancelled => Say::Cancelled,
            Sasl::BadBase64 => Say::BadBase64,
            Sasl::Malformed => Say::Malformed,
            Sasl::Invalid(e) => {
                tracing::info!(reason = %e, "login failed: unusable credentials");
                return self.fail(Say::BadCredentials).await;
            }
            Sasl::LineTooLong => {
                let reply = self.protocol.say(Say::LineTooLong);
                return Next::Done(self.close(&reply, Outcome::Refused).await);
            }
            Sasl::Eof | Sasl::Gone => return Next::Done(End::Close(Outcome::ClientLeft)),
        };
        let reply = self.protocol.say(say);
        self.reply(&reply).await
    }

    /// Counts a failed login, answers it, and closes the connection after too many.
    async fn fail(&mut self, what: Say<'_>) -> Next<P::Upstream> {
        let reply = self.protocol.say(what);
        self.fail_with(&reply).await
    }

    async fn fail_with(&mut self, reply: &[u8]) -> Next<P::Upstream> {
        self.failures += 1;
        tracing::debug!(failures = self.failures, "failed login counted");
        if let Next::Done(end) = self.reply(reply).await {
            return Next::Done(end);
        }
        if self.failures >= MAX_AUTH_FAILURES {
            let bye = self.protocol.say(Say::TooManyFailures);
            return Next::Done(self.close(&bye, Outcome::Refused).await);
        }
        Next::Continue
    }

    /// Logs in ([`login::log_in`]) and answers the outcome.
    async fn login(&mut self, credentials: Credentials) -> Next<P::Upstream> {
        let ctx = self.ctx.clone();
        if let Some(reply) = self.protocol.accepted_locally() {
            return match login::log_in_locally(&ctx, self.peer.ip(), &credentials).await {
                Ok(account) => match self.client.conn.send(&reply).await {
                    Ok(()) => Next::Done(End::Local(LocalSender::Account(account))),
                    Err(_) => Next::Done(End::Close(Outcome::ClientLeft)),
                },
                Err(refused) => self.answer(refused).await,
            };
        }
        let outcome = login::log_in(&ctx, self.peer.ip(), &credentials, &self.protocol).await;
        self.answer(outcome).await
    }

    /// Answers how a login ended.
    async fn answer(&mut self, outcome: LoginOutcome<P::Upstream>) -> Next<P::Upstream> {
        let ctx = self.ctx.clone();
        match outcome {
            LoginOutcome::Accepted {
                account,
                upstream,
                reply,
                slot,
            } => {
                let answer = self.protocol.accepted(&reply);
                if self.client.conn.send(&answer).await.is_err() {
                    return Next::Done(End::Close(Outcome::ClientLeft));
                }
                Next::Done(End::Authenticated {
                    upstream,
                    account,
                    slot,
                })
            }
            LoginOutcome::LocalRejected => self.fail(Say::BadCredentials).await,
            LoginOutcome::Throttled => self.fail(Say::Throttled).await,
            LoginOutcome::TokenFailed { account, error } => {
                let text = explain_token_failure(&ctx.shared, &account, &error).text;
                let say = Say::Token {
                    class: error.class,
                    text: &text,
                };
                if error.class == ErrorClass::Temporary {
                    let reply = self.protocol.say(say);
                    return self.reply(&reply).await;
                }
                self.fail(say).await
            }
            LoginOutcome::UpstreamRejected { reply } => {
                let refusal = self.protocol.refused(&reply);
                if refusal.temporary {
                    return self.reply(&refusal.reply).await;
                }
                self.fail_with(&refusal.reply).await
            }
            LoginOutcome::UpstreamUnavailable(e) => {
                let reason = crate::codec::line::sanitize_for_reply(&e.to_string(), 300);
                let reply = self
                    .protocol
                    .say(Say::UpstreamUnavailable { reason: &reason });
                self.reply(&reply).await
            }
        }
    }
}

/// Learns the listener's upstream capabilities once at start, so that devices see what it
/// offers before any of them logged in. A failure is logged; devices then see conservative
/// defaults until the first login reaches the upstream.
pub async fn probe<P: Protocol>(ctx: Arc<ListenerContext>) {
    let target = ctx.upstream.clone();
    match P::probe(&target).await {
        Ok(caps) => {
            tracing::info!(listener = %ctx.config.name, upstream = %target.spec.address(), "upstream probed");
            ctx.learned(&target, Some(caps));
        }
        Err(e) => {
            tracing::warn!(listener = %ctx.config.name, upstream = %target.spec.address(), error = %e, "upstream probe failed; offering conservative capabilities until a login reaches it");
        }
    }
}

/// Helpers for the protocols' unit tests: the dialogue without sockets.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A plaintext loopback connection on a listener with STARTTLS.
    pub const LOOPBACK: View = View {
        tls_active: false,
        auth_allowed: true,
        offer_starttls: true,
    };

    /// A plaintext connection from another host: no passwords before TLS.
    pub const REMOTE: View = View {
        tls_active: false,
        auth_allowed: false,
        offer_starttls: true,
    };

    /// After STARTTLS.
    pub const TLS: View = View {
        tls_active: true,
        auth_allowed: true,
        offer_starttls: false,
    };

    /// Frames `input` (one command, with any literals) and returns what it asks for, with the
    /// bytes the framer asked to send on the way (IMAP's `+` go-ahead).
    pub fn step<P: Protocol>(p: &mut P, view: &View, input: &[u8]) -> (Vec<u8>, Action) {
        let caps = P::default_capabilities();
        let mut sent = Vec::new();
        for end in 1..=input.len() {
            match p.frame(&input[..end]) {
                Framing::Incomplete => {}
                Framing::Send(bytes) => sent.extend_from_slice(bytes),
                Framing::TooLong(reply) => return (sent, Action::Close(reply, Outcome::Refused)),
                Framing::Command { body, used } => {
                    assert_eq!(used, input.len(), "one command per step");
                    return (sent, p.command(&input[..body], view, &caps));
                }
            }
        }
        panic!("incomplete command: {:?}", String::from_utf8_lossy(input));
    }

    /// The reply `input` gets, as text; panics when it asks for something else.
    pub fn reply<P: Protocol>(p: &mut P, view: &View, input: &str) -> String {
        match step(p, view, input.as_bytes()).1 {
            Action::Reply(bytes) => String::from_utf8(bytes).unwrap(),
            other => panic!("{input:?} asked for {other:?}"),
        }
    }

    /// `what` in the protocol's words, as text.
    pub fn said<P: Protocol>(p: &P, what: Say<'_>) -> String {
        String::from_utf8(p.say(what)).unwrap()
    }
}
