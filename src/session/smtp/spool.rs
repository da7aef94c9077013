//! SMTP in spool mode (`[listener.N] spool = true`): towards the device authrelay is a complete
//! submission server (RFC 5321, RFC 6409). Before login it is the same dialogue as [`Smtp`],
//! with the relay's own EHLO keywords; the login is the local check alone; after it, each
//! transaction is received into the spool and answered `250 … queued as ID` only once the
//! message is durably there ([`crate::spool::Incoming::commit`]). No upstream connection belongs
//! to the device's session: the delivery workers send the message later. A client of the
//! listener's `trusted_networks` may skip the login: its MAIL begins the session, and each
//! transaction's account is chosen by its sender ([`trusted`]).

use super::trusted;
use super::{Smtp, REPLY_HELO_FIRST, REPLY_INVALID_CREDENTIALS};
use crate::codec::line::next_line;
use crate::codec::smtp::{self, parse_mail_command, MailCommand, MAX_COMMAND_LINE};
use crate::codec::smtp_data::parse_bdat;
use crate::config::AccountConfig;
use crate::net::conn::Conn;
use crate::session::client::{Challenge, ClientSide};
use crate::session::driver::{self, Action, Framing, LocalSender, Protocol, Refusal, Say, View};
use crate::session::login::{AuthResult, Dial, UpstreamLogin};
use crate::session::upstream::{Target, UpstreamError};
use crate::session::{ListenerContext, Outcome};
use crate::spool::message::{Authorship, MessageSink, Verdict};
use crate::spool::{Envelope, Incoming};
use std::net::SocketAddr;
use std::sync::Arc;

const REPLY_OK: &[u8] = b"250 2.0.0 OK\r\n";
const REPLY_SENDER_OK: &[u8] = b"250 2.1.0 Sender OK\r\n";
const REPLY_RCPT_OK: &[u8] = b"250 2.1.5 Recipient OK\r\n";
const REPLY_GO_AHEAD: &[u8] = b"354 End data with <CR><LF>.<CR><LF>\r\n";
const REPLY_BYE: &[u8] = b"221 2.0.0 Bye\r\n";
const REPLY_NESTED_MAIL: &[u8] = b"503 5.5.1 Error: nested MAIL command\r\n";
const REPLY_NEED_MAIL: &[u8] = b"503 5.5.1 Error: need MAIL command\r\n";
const REPLY_NEED_RCPT: &[u8] = b"503 5.5.1 Error: need RCPT command\r\n";
const REPLY_BAD_MAIL: &[u8] = b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n";
const REPLY_BAD_RCPT: &[u8] = b"501 5.1.3 Syntax: RCPT TO:<address>\r\n";
const REPLY_TOO_MANY_RCPT: &[u8] = b"452 4.5.3 Too many recipients\r\n";
const REPLY_TOO_BIG: &[u8] = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n";
const REPLY_NO_SPACE: &[u8] = b"452 4.3.1 Insufficient system storage, try again later\r\n";
const REPLY_SPOOL_FAILED: &[u8] = b"451 4.3.0 The message could not be stored, try again later\r\n";
const REPLY_ALREADY_AUTH: &[u8] = b"503 5.5.1 Error: already authenticated\r\n";
const REPLY_BDAT_SYNTAX: &[u8] = b"501 5.5.4 Syntax: BDAT size [LAST]\r\n";
const REPLY_UNRECOGNIZED: &[u8] = b"500 5.5.2 Error: command not recognized\r\n";
const REPLY_LINE_TOO_LONG: &[u8] = b"500 5.5.2 Line too long, closing connection\r\n";
const REPLY_IDLE: &[u8] = b"421 4.4.2 Idle timeout, closing connection\r\n";
const REPLY_SHUTTING_DOWN: &[u8] = b"421 4.3.2 Service shutting down, closing connection\r\n";
const REPLY_ACCEPTED: &[u8] = b"235 2.7.0 Authentication successful\r\n";
const REPLY_AUTH_FIRST: &[u8] = b"503 5.5.1 Error: AUTH comes before the first MAIL\r\n";

/// Runs one SMTP session of a spool listener to its end.
pub async fn run(ctx: Arc<ListenerContext>, conn: Conn, peer: SocketAddr) -> Outcome {
    let trusted = ctx
        .config
        .trusted_networks
        .iter()
        .any(|n| n.contains(peer.ip()));
    let protocol = SpoolSmtp {
        inner: Smtp::new(&ctx.config.ehlo_name),
        keywords: keywords(ctx.spool_limits().map_or(0, |l| l.max_message_bytes)),
        peer,
        trusted,
    };
    driver::run(ctx, conn, peer, protocol).await
}

/// What the relay offers in spool mode (RFC 1870 SIZE, RFC 3030 CHUNKING, RFC 6531 SMTPUTF8).
fn keywords(max: u64) -> Vec<Vec<u8>> {
    [
        format!("SIZE {max}"),
        "PIPELINING".into(),
        "8BITMIME".into(),
        "SMTPUTF8".into(),
        "ENHANCEDSTATUSCODES".into(),
        "CHUNKING".into(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// The spool listener's pre-login dialogue: SMTP's, with the relay's own keywords.
pub struct SpoolSmtp {
    inner: Smtp,
    keywords: Vec<Vec<u8>>,
    peer: SocketAddr,
    /// The client is in the listener's `trusted_networks`: MAIL without a login is taken.
    trusted: bool,
}

/// A spool session has no upstream; this type only completes the driver's contract.
pub struct NoUpstream;

impl UpstreamLogin for NoUpstream {
    type Reply = ();
    fn reply_code(_: &()) -> String {
        "local".into()
    }
    fn capabilities(&self) -> Option<Vec<Vec<u8>>> {
        None
    }
    async fn authenticate(
        &mut self,
        _: &crate::auth::upstream::UpstreamCredential,
    ) -> Result<AuthResult<()>, UpstreamError> {
        Err(UpstreamError::Protocol(
            "a spool session has no upstream".into(),
        ))
    }
}

impl Dial for SpoolSmtp {
    type Upstream = NoUpstream;
    async fn dial(&self, _: &Target) -> Result<NoUpstream, UpstreamError> {
        Err(UpstreamError::Protocol(
            "a spool session has no upstream".into(),
        ))
    }
}

impl Protocol for SpoolSmtp {
    const CHALLENGE: Challenge = <Smtp as Protocol>::CHALLENGE;

    fn default_capabilities() -> Vec<Vec<u8>> {
        Smtp::default_capabilities()
    }
    fn greeting(&self, view: &View, caps: &[Vec<u8>]) -> Vec<u8> {
        self.inner.greeting(view, caps)
    }
    fn frame(&mut self, buffered: &[u8]) -> Framing {
        self.inner.frame(buffered)
    }
    fn command(&mut self, command: &[u8], view: &View, _caps: &[Vec<u8>]) -> Action {
        let verb = command.split(|&b| b == b' ').next().unwrap_or_default();
        let mail = verb.eq_ignore_ascii_case(b"MAIL");
        match (self.trusted && mail, &self.inner.helo) {
            (true, None) => Action::Reply(REPLY_HELO_FIRST.to_vec()),
            (true, Some(_)) => Action::WithoutLogin(command.to_vec()),
            (false, _) => self.inner.command(command, view, &self.keywords),
        }
    }
    fn tls_started(&mut self) {
        self.inner.tls_started();
    }
    fn say(&self, what: Say<'_>) -> Vec<u8> {
        self.inner.say(what)
    }
    fn accepted(&self, _: &()) -> Vec<u8> {
        REPLY_ACCEPTED.to_vec()
    }
    fn refused(&self, _: &()) -> Refusal {
        Refusal {
            reply: REPLY_INVALID_CREDENTIALS.to_vec(),
            temporary: false,
        }
    }
    async fn probe(target: &Target) -> Result<Vec<Vec<u8>>, UpstreamError> {
        Smtp::probe(target).await
    }
    fn accepted_locally(&self) -> Option<Vec<u8>> {
        Some(REPLY_ACCEPTED.to_vec())
    }
    async fn after_local_login(
        self,
        ctx: Arc<ListenerContext>,
        client: ClientSide,
        sender: LocalSender,
    ) -> Outcome {
        let (login, first) = match sender {
            LocalSender::Account(account) => (Some(account), None),
            LocalSender::Trusted { first } => (None, Some(first)),
        };
        let mut session = Receiving {
            ctx,
            conn: client.conn,
            login,
            account: None,
            rewrite: false,
            peer: self.peer,
            keywords: self.keywords,
            name: self.inner.name.clone(),
            mail: None,
            recipients: Vec::new(),
        };
        let outcome = match first {
            Some(first) => match session.command(&first).await {
                Ok(()) => session.transactions().await,
                Err(end) => end,
            },
            None => session.transactions().await,
        };
        session.conn.shutdown().await;
        outcome
    }
    async fn after_login(
        self,
        _: Arc<ListenerContext>,
        _: ClientSide,
        _: NoUpstream,
        _: Arc<AccountConfig>,
    ) -> Outcome {
        Outcome::Refused
    }
}

/// The session after login: transactions received into the spool.
struct Receiving {
    ctx: Arc<ListenerContext>,
    conn: Conn,
    /// The account logged in as; none for a trusted client without a login.
    login: Option<Arc<AccountConfig>>,
    /// The transaction's account, once MAIL was accepted.
    account: Option<Arc<AccountConfig>>,
    /// The transaction goes out as the account's mailbox (`rewrite_sender`).
    rewrite: bool,
    peer: SocketAddr,
    keywords: Vec<Vec<u8>>,
    name: String,
    /// The transaction's sender, once MAIL was accepted.
    mail: Option<String>,
    recipients: Vec<String>,
}

/// Why the session ended.
type End = Outcome;

impl Receiving {
    async fn transactions(&mut self) -> Outcome {
        loop {
            let line = match self.next_line().await {
                Ok(l) => l,
                Err(end) => return end,
            };
            if let Err(end) = self.command(&line).await {
                return end;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), End> {
        self.conn.send(bytes).await.map_err(|_| Outcome::ClientLeft)
    }

    async fn command(&mut self, line: &[u8]) -> Result<(), End> {
        let verb = line
            .split(|&b| b == b' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        match verb.as_slice() {
            b"MAIL" => self.mail(line).await,
            b"RCPT" => self.rcpt(line).await,
            b"DATA" => self.data().await,
            b"BDAT" => self.bdat(line).await,
            b"RSET" => {
                self.reset();
                self.send(REPLY_OK).await
            }
            b"NOOP" => self.send(REPLY_OK).await,
            b"QUIT" => {
                let _ = self.send(REPLY_BYE).await;
                Err(Outcome::Relayed)
            }
            b"EHLO" | b"HELO" => {
                self.reset();
                let mut lines: Vec<&[u8]> = vec![self.name.as_bytes()];
                if verb == b"EHLO" {
                    lines.extend(self.keywords.iter().map(Vec::as_slice));
                }
                let reply = smtp::format_reply_bytes(250, &lines);
                self.send(&reply).await
            }
            b"AUTH" | b"STARTTLS" if self.login.is_none() => self.send(REPLY_AUTH_FIRST).await,
            b"AUTH" | b"STARTTLS" => self.send(REPLY_ALREADY_AUTH).await,
            _ => self.send(REPLY_UNRECOGNIZED).await,
        }
    }

    fn reset(&mut self) {
        self.mail = None;
        self.account = None;
        self.rewrite = false;
        self.recipients.clear();
    }

    async fn mail(&mut self, line: &[u8]) -> Result<(), End> {
        if self.mail.is_some() {
            return self.send(REPLY_NESTED_MAIL).await;
        }
        let MailCommand::MailFrom(address) = parse_mail_command(line) else {
            return self.send(REPLY_BAD_MAIL).await;
        };
        let address = String::from_utf8_lossy(address).into_owned();
        let (account, rewrite) = match &self.login {
            Some(account) => (Arc::clone(account), false),
            None => match trusted::account_for(&self.ctx, self.peer.ip(), &address) {
                Ok(choice) => (choice.account, choice.rewrite),
                Err(refusal) => return self.send(refusal.as_bytes()).await,
            },
        };
        let refusal = (!rewrite)
            .then(|| self.sender_refusal(&account, &address, "Sender"))
            .flatten();
        if let Some(refusal) = refusal {
            return self.send(refusal.as_bytes()).await;
        }
        let limits = self.ctx.spool_limits().cloned();
        let max = limits.as_ref().map_or(u64::MAX, |l| l.max_message_bytes);
        if smtp::mail_size(line).is_some_and(|n| n > max) {
            return self.send(REPLY_TOO_BIG).await;
        }
        if !self.has_space(max) {
            tracing::warn!("MAIL FROM refused: the spool is full (less free than max_message_bytes plus min_free_mb)");
            return self.send(REPLY_NO_SPACE).await;
        }
        self.mail = Some(address);
        self.account = Some(account);
        self.rewrite = rewrite;
        self.send(REPLY_SENDER_OK).await
    }

    /// The refusal of `address` as the message's sender or author, if `account` may not use
    /// it (README: the sender policy).
    fn sender_refusal(&self, account: &AccountConfig, address: &str, what: &str) -> Option<String> {
        let checked = super::sender::checks_sender(account);
        if !checked || account.may_send_as(address) {
            return None;
        }
        let address = crate::codec::line::sanitize_for_reply(address, 200);
        tracing::warn!(sender = %address, "message refused: not a sender this account may use");
        Some(format!(
            "550 5.7.60 {what} <{address}> is not the signed-in mailbox <{}>; change the device's address or add it to allowed_from\r\n",
            account.mailbox
        ))
    }

    /// True when the spool's file system has room for a message of `max` bytes and its margin.
    fn has_space(&self, max: u64) -> bool {
        let (Some(spool), Some(limits)) = (self.ctx.spool.as_ref(), self.ctx.spool_limits()) else {
            return false;
        };
        match spool.spool.free_bytes() {
            Ok(free) => free >= limits.min_free_bytes.saturating_add(max.min(free)),
            Err(_) => false,
        }
    }

    async fn rcpt(&mut self, line: &[u8]) -> Result<(), End> {
        if self.mail.is_none() {
            return self.send(REPLY_NEED_MAIL).await;
        }
        let Some(address) = smtp::rcpt_to(line) else {
            return self.send(REPLY_BAD_RCPT).await;
        };
        let max = self.ctx.spool_limits().map_or(1, |l| l.max_recipients);
        if self.recipients.len() >= max {
            return self.send(REPLY_TOO_MANY_RCPT).await;
        }
        let capped = self.account.as_ref().filter(|_| self.login.is_none());
        if let Some(reply) =
            capped.and_then(|a| trusted::over_cap(&self.ctx, a, self.recipients.len()))
        {
            return self.send(reply.as_bytes()).await;
        }
        self.recipients
            .push(String::from_utf8_lossy(address).into_owned());
        self.send(REPLY_RCPT_OK).await
    }

    /// A new spool file for the current transaction.
    async fn begin(&self) -> Option<(Incoming, MessageSink)> {
        let spool = self.ctx.spool.as_ref()?;
        let account = self.account.as_ref()?;
        let sender = self.mail.clone().unwrap_or_default();
        let rewrite = self
            .rewrite
            .then(|| trusted::trace(&sender, self.peer.ip(), account));
        let envelope = Envelope {
            id: crate::spool::new_id(),
            account: account.id.clone(),
            sender: if self.rewrite && !sender.is_empty() {
                account.mailbox.clone()
            } else {
                sender
            },
            recipients: self.recipients.clone(),
            arrived: crate::store::unix_now(),
            client: self.peer.ip().to_string(),
            bounce: false,
        };
        let incoming = spool.spool.begin(&envelope).await.ok()?;
        let incoming = incoming.keeping_free(spool.config.min_free_bytes);
        let max = spool.config.max_message_bytes;
        let authorship = Authorship {
            mailbox: account.mailbox.clone(),
            rewrite,
        };
        let sink = MessageSink::new(max, &envelope.id, &self.name).with_authorship(authorship);
        Some((incoming, sink))
    }

    async fn data(&mut self) -> Result<(), End> {
        if self.mail.is_none() {
            return self.send(REPLY_NEED_MAIL).await;
        }
        if self.recipients.is_empty() {
            return self.send(REPLY_NEED_RCPT).await;
        }
        let Some((mut incoming, mut sink)) = self.begin().await else {
            return self.send(REPLY_SPOOL_FAILED).await;
        };
        self.send(REPLY_GO_AHEAD).await?;
        let mut body: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut stored = Ok(());
        loop {
            let buffered = self.conn.buffered();
            let full = buffered.len() >= 1024 * 1024;
            let (used, end) = sink.feed_data(buffered, full, &mut body);
            self.conn.consume(used);
            if end {
                break;
            }
            if body.len() >= 256 * 1024 && stored.is_ok() {
                stored = incoming.write(&body).await;
                body.clear();
            }
            self.fill().await?;
        }
        self.finish(incoming, sink, body, stored).await
    }

    async fn bdat(&mut self, line: &[u8]) -> Result<(), End> {
        let Some((size, last)) = parse_bdat(line) else {
            return self.send(REPLY_BDAT_SYNTAX).await;
        };
        if self.mail.is_none() || self.recipients.is_empty() {
            // The chunk's bytes follow the command whatever the reply: skip them.
            self.skip(size).await?;
            let reply = if self.mail.is_none() {
                REPLY_NEED_MAIL
            } else {
                REPLY_NEED_RCPT
            };
            return self.send(reply).await;
        }
        let Some((mut incoming, mut sink)) = self.begin().await else {
            self.skip(size).await?;
            return self.send(REPLY_SPOOL_FAILED).await;
        };
        let mut remaining = size;
        let mut last = last;
        let mut out = Vec::new();
        let mut stored = Ok(());
        loop {
            while remaining > 0 {
                if self.conn.buffered().is_empty() {
                    self.fill().await?;
                }
                let n = (remaining as usize).min(self.conn.buffered().len());
                sink.feed_chunk(&self.conn.buffered()[..n], &mut out);
                self.conn.consume(n);
                remaining -= n as u64;
                if out.len() >= 256 * 1024 && stored.is_ok() {
                    stored = incoming.write(&out).await;
                    out.clear();
                }
            }
            if last {
                break;
            }
            let reply = format!("250 2.0.0 {} octets received\r\n", sink.size());
            self.send(reply.as_bytes()).await?;
            let next = self.next_line().await?;
            let Some((size, is_last)) = parse_bdat(&next) else {
                return self.send(REPLY_BDAT_SYNTAX).await;
            };
            remaining = size;
            last = is_last;
        }
        self.finish(incoming, sink, out, stored).await
    }

    /// The end of a message: checks, the added fields, the commit, and the reply.
    async fn finish(
        &mut self,
        mut incoming: Incoming,
        mut sink: MessageSink,
        mut body_tail: Vec<u8>,
        written: Result<(), crate::spool::SpoolError>,
    ) -> Result<(), End> {
        let verdict = sink.finish(&mut body_tail);
        let authors = match verdict {
            Verdict::Ready { authors } => authors,
            Verdict::BareLfEnd => {
                self.reset();
                tracing::warn!("message refused: DATA ended with a bare LF next to its dot (RFC 5321 4.1.1.4); closing");
                let _ = self.send(super::REPLY_BARE_END).await;
                return Err(Outcome::Refused);
            }
            Verdict::TooBig | Verdict::HeaderTooBig => {
                self.reset();
                return self.send(REPLY_TOO_BIG).await;
            }
        };
        let Some(account) = self.account.clone() else {
            self.reset();
            return self.send(REPLY_SPOOL_FAILED).await;
        };
        if let Some(refusal) = authors
            .iter()
            .find_map(|a| self.sender_refusal(&account, a, "Header From"))
        {
            self.reset();
            return self.send(refusal.as_bytes()).await;
        }
        let id = incoming.id().to_owned();
        let stored = async {
            written?;
            incoming.write(&body_tail).await?;
            incoming.commit().await
        }
        .await;
        let recipients = self.recipients.len() as u32;
        self.reset();
        match stored {
            Ok(()) => {
                if self.login.is_none() {
                    self.ctx.shared.quota.record(&account.id, recipients);
                    self.ctx.shared.metrics.no_login(&account.id);
                    tracing::info!(queue_id = %id, account = %account.id, client = %self.peer.ip(), "message spooled without login");
                } else {
                    tracing::info!(queue_id = %id, "message spooled");
                }
                let reply = format!("250 2.0.0 Ok: queued as {id}\r\n");
                self.send(reply.as_bytes()).await
            }
            Err(e @ crate::spool::SpoolError::Full { .. }) => {
                tracing::error!(error = %e, "message refused: the spool is full");
                self.send(REPLY_NO_SPACE).await
            }
            Err(e) => {
                tracing::error!(error = %e, "message could not be spooled");
                self.send(REPLY_SPOOL_FAILED).await
            }
        }
    }

    async fn skip(&mut self, mut n: u64) -> Result<(), End> {
        while n > 0 {
            if self.conn.buffered().is_empty() {
                self.fill().await?;
            }
            let take = (n as usize).min(self.conn.buffered().len());
            self.conn.consume(take);
            n -= take as u64;
        }
        Ok(())
    }

    async fn next_line(&mut self) -> Result<Vec<u8>, End> {
        loop {
            match next_line(self.conn.buffered(), MAX_COMMAND_LINE) {
                Ok(Some((line, used))) => {
                    let line = line.to_vec();
                    self.conn.consume(used);
                    return Ok(line);
                }
                Ok(None) => self.fill().await?,
                Err(_) => {
                    let _ = self.send(REPLY_LINE_TOO_LONG).await;
                    return Err(Outcome::Refused);
                }
            }
        }
    }

    /// Reads more from the device, within the idle time; the drain's end closes the session
    /// between commands only (a message being received is finished or lost, never half-stored).
    async fn fill(&mut self) -> Result<(), End> {
        let idle = self.ctx.config.idle_timeout;
        let closing = self.ctx.shared.close_sessions.clone();
        let filled = tokio::select! {
            r = tokio::time::timeout(idle, self.conn.fill()) => r,
            _ = closing.cancelled() => {
                let _ = self.send(REPLY_SHUTTING_DOWN).await;
                return Err(Outcome::Refused);
            }
        };
        match filled {
            Ok(Ok(0)) | Ok(Err(_)) => Err(Outcome::ClientLeft),
            Ok(Ok(_)) => Ok(()),
            Err(_) => {
                let _ = self.send(REPLY_IDLE).await;
                Err(Outcome::ClientLeft)
            }
        }
    }
}
