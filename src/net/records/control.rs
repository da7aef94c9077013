//! The records that carry no data: alerts (RFC 8446 §6), and the handshake messages that come
//! after the handshake (§4.6: session tickets, key updates; a TLS 1.2 HelloRequest), with the
//! limits rustls keeps on those that make no progress.

use super::cipher::Version;
use super::*;

/// Records that make no progress, as rustls counts them: key updates without data between
/// them, empty application data records, `user_canceled` and TLS 1.2 warning alerts, and
/// TLS 1.2 HelloRequests. One more is a fatal `unexpected_message`: a server sending them
/// endlessly would burn CPU with no data moving, unseen by the idle timeout.
pub(super) const MAX_KEY_UPDATES_IN_A_ROW: u32 = 32;
pub(super) const MAX_EMPTY_RECORDS: u32 = 32;
pub(super) const MAX_WARNINGS: u32 = 4;
pub(super) const MAX_HELLO_REQUESTS: u32 = 1;
/// The largest post-handshake message taken (a session ticket is far smaller).
pub(super) const MAX_HANDSHAKE_MESSAGE: usize = 64 * 1024;

/// A fatal TLS error: the alert that says so (RFC 8446 §6.2) and the text for the log.
pub(super) struct Fatal(pub(super) u8, pub(super) String);

pub(super) fn fatal(alert: u8, what: impl Into<String>) -> Fatal {
    Fatal(alert, what.into())
}

/// Counts of records that made no progress (see [`MAX_KEY_UPDATES_IN_A_ROW`]).
#[derive(Debug, Default)]
pub(super) struct Idle {
    pub(super) key_updates: u32,
    pub(super) empty: u32,
    pub(super) warnings: u32,
    pub(super) hello_requests: u32,
}

impl<T: AsyncRead + AsyncWrite + Unpin, K: Secrets> RecordStream<T, K> {
    pub(super) fn alert(&mut self, content: Range<usize>) -> Result<(), Fatal> {
        let input = self.input.as_ref().expect("buffered");
        let [level, description] = input[content] else {
            return Err(fatal(DECODE_ERROR, "malformed TLS alert"));
        };
        let warning =
            description == USER_CANCELED || (level == WARNING && self.version == Version::Tls12);
        match description {
            CLOSE_NOTIFY => {
                self.peer_closed = true;
                Ok(())
            }
            // user_canceled, and TLS 1.2 warnings (such as no_renegotiation), may be ignored
            // (RFC 8446 §6.1, RFC 5246 §7.2), a few times.
            _ if warning => {
                self.idle.warnings += 1;
                match self.idle.warnings > MAX_WARNINGS {
                    true => Err(fatal(UNEXPECTED_MESSAGE, "too many TLS warning alerts")),
                    false => Ok(()),
                }
            }
            d => Err(Fatal(
                0,
                format!(
                    "received fatal alert: {:?}",
                    rustls::AlertDescription::from(d)
                ),
            )),
        }
    }

    /// Handshake messages after the handshake: session tickets, key updates (TLS 1.3) and a
    /// TLS 1.2 server's request to renegotiate, which is ignored (RFC 5246 §7.4.1.1).
    pub(super) fn handshake(&mut self, bytes: &[u8]) -> Result<(), Fatal> {
        if self.partial_handshake.len() + bytes.len() > 4 + MAX_HANDSHAKE_MESSAGE {
            return Err(fatal(UNEXPECTED_MESSAGE, "TLS handshake message too large"));
        }
        self.partial_handshake.extend_from_slice(bytes);
        loop {
            let m = &self.partial_handshake;
            if m.len() < 4 {
                break;
            }
            let len = u32::from_be_bytes([0, m[1], m[2], m[3]]) as usize;
            if len > MAX_HANDSHAKE_MESSAGE {
                return Err(fatal(UNEXPECTED_MESSAGE, "TLS handshake message too large"));
            }
            if m.len() < 4 + len {
                break;
            }
            let message: Vec<u8> = self.partial_handshake.drain(..4 + len).collect();
            let (typ, body) = (message[0], &message[4..]);
            match (self.version, typ) {
                (Version::Tls13, NEW_SESSION_TICKET) => self
                    .kernel
                    .new_session_ticket(body)
                    .map_err(|e| fatal(DECODE_ERROR, e.to_string()))?,
                (Version::Tls13, KEY_UPDATE) => {
                    // RFC 8446 §5.1: a key change must fall on a record boundary.
                    if !self.partial_handshake.is_empty() {
                        return Err(fatal(
                            UNEXPECTED_MESSAGE,
                            "more TLS handshake data after a key update in its record",
                        ));
                    }
                    self.key_update(body)?;
                }
                (Version::Tls12, HELLO_REQUEST) if body.is_empty() => {
                    self.idle.hello_requests += 1;
                    if self.idle.hello_requests > MAX_HELLO_REQUESTS {
                        return Err(fatal(UNEXPECTED_MESSAGE, "repeated TLS HelloRequests"));
                    }
                }
                _ => {
                    return Err(fatal(
                        UNEXPECTED_MESSAGE,
                        format!("unexpected TLS handshake message {typ}"),
                    ))
                }
            }
        }
        if self.partial_handshake.is_empty() && self.partial_handshake.capacity() > 0 {
            // A large message's buffer is not kept by an idle session.
            self.partial_handshake = Vec::new();
        }
        Ok(())
    }

    /// The server's key update: new receive keys; if it asks, ours is owed (one reply however
    /// many requests, sent before our next data record: [`Self::pay_key_update`]).
    fn key_update(&mut self, body: &[u8]) -> Result<(), Fatal> {
        let requested = match body {
            [0] => false,
            [1] => true,
            _ => return Err(fatal(DECODE_ERROR, "malformed TLS key_update")),
        };
        self.idle.key_updates += 1;
        if self.idle.key_updates > MAX_KEY_UPDATES_IN_A_ROW {
            return Err(fatal(
                UNEXPECTED_MESSAGE,
                "too many TLS key updates without data",
            ));
        }
        let (seq, secrets) = self
            .kernel
            .next_rx()
            .map_err(|e| fatal(UNEXPECTED_MESSAGE, e.to_string()))?;
        self.rx = Keys::new(secrets, seq, self.version).map_err(|e| Fatal(0, e.to_string()))?;
        self.key_updates += 1;
        self.owe_key_update |= requested;
        Ok(())
    }

    /// Sends the key update the server asked for, if one is owed.
    pub(super) fn pay_key_update(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.owe_key_update) {
            self.send_key_update()?;
        }
        Ok(())
    }

    /// A fatal error: its alert sealed (sent with what is pending, best effort), the stream
    /// dead from now on; the error to return.
    pub(super) fn fail(&mut self, Fatal(alert, what): Fatal, cx: &mut Context<'_>) -> io::Error {
        if alert != 0 && !self.dead && self.seal(ALERT, &[FATAL, alert]).is_ok() {
            let _ = self.poll_send(cx);
        }
        self.dead = true;
        self.release_input();
        invalid(format!("upstream TLS: {what}"))
    }

    pub(super) fn check_alive(&self) -> io::Result<()> {
        match self.dead {
            true => Err(invalid("upstream TLS failed earlier")),
            false => Ok(()),
        }
    }
}
