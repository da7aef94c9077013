//! After login, for accounts whose senders are checked: every transaction's `MAIL FROM`.
//!
//! Microsoft 365 accepts mail only from the signed-in mailbox (or addresses it has Send As
//! rights for) and refuses anything else with `5.7.60 SendAsDenied`, often only after the whole
//! message was sent; other servers, and client-credentials apps granted many mailboxes, check
//! nothing. So the relay stays command-aware after login: each command is passed on and its
//! reply passed back, every `MAIL FROM` is checked first (a second transaction, one after
//! `RSET`, one after a null sender alike), and messages are streamed through without being
//! parsed: `DATA` until its end line ([`DataScanner`]), `BDAT` by its announced size.

use super::Session;
use crate::codec::line::{next_line, sanitize_for_reply, LineTooLong};
use crate::codec::smtp::{parse_mail_command, MailCommand, MAX_COMMAND_LINE};
use crate::codec::smtp_data::{parse_bdat, DataScanner, Scan};
use crate::config::{AccountAuth, AccountConfig};
use crate::session::Outcome;

/// Room made in the client's buffer before each read of a message: a message streams through in
/// reads of up to this much (one socket call per 256 KiB, as the pipe's); the buffer shrinks
/// back when the message has passed.
const DATA_CHUNK: usize = crate::net::pool::BUFFER;

const REPLY_NEED_MAIL: &[u8] = b"503 5.5.1 Error: need MAIL command\r\n";
const REPLY_BAD_MAIL: &[u8] = b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n";
const REPLY_LINE_TOO_LONG: &[u8] = b"500 5.5.2 Line too long, closing connection\r\n";
const REPLY_BDAT_OUT_OF_ORDER: &[u8] = b"503 5.5.1 Error: BDAT before MAIL, closing connection\r\n";
const REPLY_BDAT_SYNTAX: &[u8] = b"501 5.5.4 Syntax: BDAT size [LAST], closing connection\r\n";
const REPLY_SHUTTING_DOWN: &[u8] = b"421 4.3.2 Service shutting down, closing connection\r\n";
const REPLY_IDLE: &[u8] = b"421 4.4.2 Idle timeout, closing connection\r\n";
const REPLY_UPSTREAM_LOST: &[u8] = b"421 4.4.2 Upstream connection lost, closing connection\r\n";

/// Whether the account's senders are checked at all.
pub fn checks_sender(account: &AccountConfig) -> bool {
    matches!(account.auth, AccountAuth::OAuth(_)) && !account.allowed_from.iter().any(|a| a == "*")
}

/// Why the transaction loop stopped.
type End = Outcome;

impl Session {
    /// Runs the authenticated session command by command until either side leaves.
    pub(super) async fn transactions(&mut self, account: &AccountConfig) -> End {
        let end = match self.transaction_loop(account).await {
            Ok(never) => match never {},
            Err(end) => end,
        };
        let moved = self.moved;
        self.ctx.shared.metrics.relayed(
            self.ctx.config.protocol,
            moved.client_to_upstream,
            moved.upstream_to_client,
        );
        tracing::info!(
            account = %account.id,
            bytes_up = moved.client_to_upstream,
            bytes_down = moved.upstream_to_client,
            "session relayed"
        );
        end
    }

    async fn transaction_loop(
        &mut self,
        account: &AccountConfig,
    ) -> Result<std::convert::Infallible, End> {
        // A MAIL FROM the upstream accepted opens a transaction; its end, RSET, EHLO/HELO close it.
        let mut open = false;
        loop {
            let (line, used) = self.next_command().await?;
            let reply: Vec<u8> = match parse_mail_command(&line) {
                MailCommand::MailFrom(address) => {
                    let address = String::from_utf8_lossy(address).into_owned();
                    if account.may_send_as(&address) {
                        self.client.conn.consume(used);
                        let reply = self.upstream_command(&line).await?;
                        open = reply.starts_with(b"2");
                        reply
                    } else {
                        self.client.conn.consume(used);
                        refuse_sender(account, &address)
                    }
                }
                MailCommand::BadMail => {
                    self.client.conn.consume(used);
                    REPLY_BAD_MAIL.to_vec()
                }
                MailCommand::NeedsMail { bdat: true } if !open => {
                    // The chunk that follows cannot be told from commands: close.
                    let _ = self.client.conn.send(REPLY_BDAT_OUT_OF_ORDER).await;
                    return Err(Outcome::Refused);
                }
                MailCommand::NeedsMail { .. } if !open => {
                    self.client.conn.consume(used);
                    REPLY_NEED_MAIL.to_vec()
                }
                MailCommand::NeedsMail { bdat: true } => {
                    self.client.conn.consume(used);
                    let Some((size, last)) = parse_bdat(&line) else {
                        let _ = self.client.conn.send(REPLY_BDAT_SYNTAX).await;
                        return Err(Outcome::Refused);
                    };
                    let reply = self.bdat(&line, size).await?;
                    open = !last && reply.starts_with(b"2");
                    reply
                }
                MailCommand::NeedsMail { bdat: false } if verb_is(&line, b"DATA") => {
                    self.client.conn.consume(used);
                    let reply = self.upstream_command(&line).await?;
                    if reply.starts_with(b"354") {
                        if self.client.conn.send(&reply).await.is_err() {
                            return Err(Outcome::ClientLeft);
                        }
                        open = false;
                        self.data().await?
                    } else {
                        reply
                    }
                }
                command => {
                    // RCPT, RSET, NOOP, EHLO, QUIT, …: passed on as they are.
                    self.client.conn.consume(used);
                    let reply = self.upstream_command(&line).await?;
                    if is_reset(&line) {
                        open = false;
                    }
                    if command == MailCommand::Quit {
                        let _ = self.client.conn.send(&reply).await;
                        return Err(Outcome::Relayed);
                    }
                    reply
                }
            };
            if self.client.conn.send(&reply).await.is_err() {
                return Err(Outcome::ClientLeft);
            }
        }
    }

    /// The next command line (without its end) and its length with the end, not yet consumed.
    async fn next_command(&mut self) -> Result<(Vec<u8>, usize), End> {
        let idle = self.ctx.config.idle_timeout;
        loop {
            match next_line(self.client.conn.buffered(), MAX_COMMAND_LINE) {
                Ok(Some((line, used))) => return Ok((line.to_vec(), used)),
                Ok(None) => {}
                Err(LineTooLong) => {
                    let _ = self.client.conn.send(REPLY_LINE_TOO_LONG).await;
                    return Err(Outcome::Refused);
                }
            }
            self.fill_client(idle).await?;
        }
    }

    /// Reads more from the client, within the idle timeout and until shutdown.
    async fn fill_client(&mut self, idle: std::time::Duration) -> Result<(), End> {
        let closing = self.ctx.shared.close_sessions.clone();
        let filled = tokio::select! {
            r = tokio::time::timeout(idle, self.client.conn.fill()) => r,
            _ = closing.cancelled() => {
                let _ = self.client.conn.send(REPLY_SHUTTING_DOWN).await;
                return Err(Outcome::Relayed);
            }
        };
        match filled {
            Ok(Ok(0)) | Ok(Err(_)) => Err(Outcome::ClientLeft),
            Ok(Ok(_)) => Ok(()),
            Err(_) => {
                let _ = self.client.conn.send(REPLY_IDLE).await;
                Err(Outcome::ClientLeft)
            }
        }
    }

    /// Passes one command line on and returns the upstream's reply.
    async fn upstream_command(&mut self, line: &[u8]) -> Result<Vec<u8>, End> {
        match self.upstream.command(&[line, b"\r\n"]).await {
            Ok(r) => {
                self.moved.client_to_upstream += line.len() as u64 + 2;
                self.moved.upstream_to_client += r.raw.len() as u64;
                Ok(r.raw)
            }
            Err(e) => Err(self.upstream_failed(&e.to_string()).await),
        }
    }

    async fn upstream_failed(&mut self, error: &str) -> End {
        tracing::warn!(error, "upstream failed after login");
        let _ = self.client.conn.send(REPLY_UPSTREAM_LOST).await;
        Outcome::UpstreamFailed
    }

    /// Streams one DATA message to the upstream and returns its final reply. Nothing is
    /// acknowledged to the client before the upstream's reply to the end line. Well-formed
    /// bytes go out as they came (no copy); only a bare CR or LF is rewritten, one at a time.
    async fn data(&mut self) -> Result<Vec<u8>, End> {
        let idle = self.ctx.config.idle_timeout;
        let mut scanner = DataScanner::default();
        let mut fixed = Vec::with_capacity(2);
        loop {
            let buffered = self.client.conn.buffered();
            let (send, used, done) = match scanner.scan(buffered) {
                Scan::Pass(n) => (&buffered[..n], n, false),
                Scan::End(n) => (&buffered[..n], n, true),
                Scan::Fix => {
                    fixed.clear();
                    let fed = scanner.feed(&buffered[..1], &mut fixed);
                    (&fixed[..], fed.consumed, fed.done)
                }
                Scan::NeedMore => {
                    self.client.conn.reserve(DATA_CHUNK);
                    self.fill_client(idle).await?;
                    continue;
                }
            };
            if done && scanner.ended_bare() {
                // The end line is not sent: the server discards the unfinished message when
                // the connection closes (RFC 5321 §4.1.1.4; as a spooled message is refused).
                tracing::warn!("message refused: DATA ended with a bare line end next to its dot (RFC 5321 4.1.1.4); closing");
                let _ = self.client.conn.send(super::REPLY_BARE_END).await;
                return Err(Outcome::Refused);
            }
            if !send.is_empty() {
                if let Err(e) = self.upstream.conn.send(send).await {
                    return Err(self.upstream_failed(&e.to_string()).await);
                }
                self.moved.client_to_upstream += send.len() as u64;
            }
            self.client.conn.consume(used);
            if done {
                self.client.conn.shrink();
                return self.final_reply(idle).await;
            }
        }
    }

    /// Streams a BDAT command and its `size` octets to the upstream, and returns its reply.
    async fn bdat(&mut self, line: &[u8], size: u64) -> Result<Vec<u8>, End> {
        let idle = self.ctx.config.idle_timeout;
        if let Err(e) = self.upstream.conn.send_parts(&[line, b"\r\n"]).await {
            return Err(self.upstream_failed(&e.to_string()).await);
        }
        self.moved.client_to_upstream += line.len() as u64 + 2;
        let mut left = size;
        while left > 0 {
            if self.client.conn.buffered().is_empty() {
                self.client.conn.reserve(DATA_CHUNK);
                self.fill_client(idle).await?;
            }
            let buffered = self.client.conn.buffered();
            let n = buffered
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            if let Err(e) = self.upstream.conn.send(&buffered[..n]).await {
                return Err(self.upstream_failed(&e.to_string()).await);
            }
            self.client.conn.consume(n);
            left -= n as u64;
            self.moved.client_to_upstream += n as u64;
        }
        self.client.conn.shrink();
        self.final_reply(idle).await
    }

    /// The upstream's reply to a message, which may take as long as the idle timeout.
    async fn final_reply(&mut self, idle: std::time::Duration) -> Result<Vec<u8>, End> {
        match tokio::time::timeout(idle, self.upstream.read_reply()).await {
            Ok(Ok(r)) => {
                self.moved.upstream_to_client += r.raw.len() as u64;
                Ok(r.raw)
            }
            Ok(Err(e)) => Err(self.upstream_failed(&e.to_string()).await),
            Err(_) => Err(self
                .upstream_failed("no reply to the message in time")
                .await),
        }
    }
}

fn verb_is(line: &[u8], verb: &[u8]) -> bool {
    line.split(|&b| b == b' ')
        .next()
        .is_some_and(|v| v.eq_ignore_ascii_case(verb))
}

/// RSET, EHLO and HELO end a mail transaction (RFC 5321 §4.1.1.5, §4.1.4).
fn is_reset(line: &[u8]) -> bool {
    [&b"RSET"[..], b"EHLO", b"HELO"]
        .iter()
        .any(|v| verb_is(line, v))
}

/// The reply to a sender the account may not use.
fn refuse_sender(account: &AccountConfig, address: &str) -> Vec<u8> {
    tracing::info!(sender = %sanitize_for_reply(address, 120), "MAIL FROM refused: not the signed-in mailbox");
    format!(
        "550 5.7.60 {}\r\n",
        sanitize_for_reply(
            &format!(
                "Sender <{address}> is not the signed-in mailbox <{}>; the provider would refuse it (SendAsDenied). Send as <{}>, or add the address to allowed_from if the mailbox may send as it",
                account.mailbox, account.mailbox
            ),
            480
        )
    )
    .into_bytes()
}
