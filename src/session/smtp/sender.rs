//! After login and until the first MAIL FROM it lets through: the sender check.
//!
//! Microsoft 365 accepts mail only from the signed-in mailbox (or addresses it has Send As
//! rights for) and refuses anything else with `5.7.60 SendAsDenied`, often only after the whole
//! message was sent. The relay checks MAIL FROM first and answers a mismatch itself, saying
//! what is wrong. Commands before MAIL go upstream and their replies come back unchanged; the
//! accepted MAIL FROM stays in the buffer and is the first thing the pipe delivers.

use super::Session;
use crate::codec::line::{next_line, sanitize_for_reply, LineTooLong};
use crate::codec::smtp::{parse_mail_command, MailCommand, MAX_COMMAND_LINE};
use crate::config::{AccountAuth, AccountConfig};
use crate::session::Outcome;

const REPLY_NEED_MAIL: &[u8] = b"503 5.5.1 Error: need MAIL command\r\n";
const REPLY_BAD_MAIL: &[u8] = b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n";
const REPLY_LINE_TOO_LONG: &[u8] = b"500 5.5.2 Line too long, closing connection\r\n";
const REPLY_BDAT_OUT_OF_ORDER: &[u8] = b"503 5.5.1 Error: BDAT before MAIL, closing connection\r\n";
const REPLY_SHUTTING_DOWN: &[u8] = b"421 4.3.2 Service shutting down, closing connection\r\n";
const REPLY_IDLE: &[u8] = b"421 4.4.2 Idle timeout, closing connection\r\n";

/// Whether the account's senders are checked at all.
pub fn checks_sender(account: &AccountConfig) -> bool {
    matches!(account.auth, AccountAuth::OAuth(_)) && !account.allowed_from.iter().any(|a| a == "*")
}

impl Session {
    /// Reads commands until a MAIL FROM the account may use. `Ok` leaves that command buffered
    /// for the pipe; `Err` is how the session ended instead.
    pub(super) async fn await_sender(&mut self, account: &AccountConfig) -> Result<(), Outcome> {
        let idle = self.ctx.config.idle_timeout;
        loop {
            let (line, used) = loop {
                match next_line(self.client.conn.buffered(), MAX_COMMAND_LINE) {
                    Ok(Some((line, used))) => break (line.to_vec(), used),
                    Ok(None) => {}
                    Err(LineTooLong) => {
                        let _ = self.client.conn.send(REPLY_LINE_TOO_LONG).await;
                        return Err(Outcome::Refused);
                    }
                }
                let closing = self.ctx.shared.close_sessions.clone();
                let filled = tokio::select! {
                    r = tokio::time::timeout(idle, self.client.conn.fill()) => r,
                    _ = closing.cancelled() => {
                        let _ = self.client.conn.send(REPLY_SHUTTING_DOWN).await;
                        return Err(Outcome::Relayed);
                    }
                };
                match filled {
                    Ok(Ok(0)) | Ok(Err(_)) => return Err(Outcome::ClientLeft),
                    Ok(Ok(_)) => {}
                    Err(_) => {
                        let _ = self.client.conn.send(REPLY_IDLE).await;
                        return Err(Outcome::ClientLeft);
                    }
                }
            };
            let reply: Vec<u8> = match parse_mail_command(&line) {
                MailCommand::MailFrom(address) => {
                    let address = String::from_utf8_lossy(address);
                    if account.may_send_as(&address) {
                        return Ok(());
                    }
                    tracing::info!(sender = %sanitize_for_reply(&address, 120), "MAIL FROM refused: not the signed-in mailbox");
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
                MailCommand::BadMail => REPLY_BAD_MAIL.to_vec(),
                MailCommand::NeedsMail { bdat: true } => {
                    // The chunk that follows cannot be told from commands: close.
                    let _ = self.client.conn.send(REPLY_BDAT_OUT_OF_ORDER).await;
                    return Err(Outcome::Refused);
                }
                MailCommand::NeedsMail { bdat: false } => REPLY_NEED_MAIL.to_vec(),
                command @ (MailCommand::Quit | MailCommand::Other) => {
                    let reply = match self.upstream.command(&[&line, b"\r\n"]).await {
                        Ok(r) => r.raw,
                        Err(e) => {
                            tracing::warn!(error = %e, "upstream failed after login");
                            let _ = self
                                .client
                                .conn
                                .send(b"421 4.4.2 Upstream connection lost, closing connection\r\n")
                                .await;
                            return Err(Outcome::UpstreamFailed);
                        }
                    };
                    self.client.conn.consume(used);
                    if self.client.conn.send(&reply).await.is_err() || command == MailCommand::Quit
                    {
                        return Err(Outcome::Relayed);
                    }
                    continue;
                }
            };
            self.client.conn.consume(used);
            if self.client.conn.send(&reply).await.is_err() {
                return Err(Outcome::ClientLeft);
            }
        }
    }
}
