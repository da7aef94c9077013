//! TLS towards upstream with the records handled in place.
//!
//! rustls' buffered connection copies every record's plaintext into a fresh allocation before
//! the reader copies it out again (its unbuffered API too, as of 0.23); on a bulk transfer that
//! copy was the largest user-space cost in the relay's profile (BENCHMARKS.md, "Where the
//! relay's CPU goes"). So rustls runs the handshake (certificate checks, key schedule: all of
//! TLS that is hard), then hands the traffic keys over, as it does for kernel TLS
//! ([`rustls::kernel`]), and [`RecordStream`] does the rest: it reads the socket into a pooled
//! buffer up to 64 KiB at a time, opens each record where it lies and copies the content once,
//! into the reader's buffer; it seals writes into full 16 KiB records in one buffer and sends
//! them with one call. What rustls does after a handshake is done here too: TLS 1.3 key updates
//! in both directions (RFC 8446 §4.6.3), session tickets passed to rustls (§4.6.1), alerts
//! (§6), close_notify on shutdown, a key update before the cipher suite's confidentiality
//! limit; TLS 1.2 AES-GCM and ChaCha20-Poly1305 records. Idle connections hold no buffer.

mod cipher;
mod control;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
mod handshake;

use control::{fatal, Fatal, Idle, MAX_EMPTY_RECORDS};

use self::cipher::{Keys, Version, ALERT, APPLICATION_DATA, HANDSHAKE, HEADER, MAX_FRAGMENT};
use super::pool;
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ConnectionTrafficSecrets, ProtocolVersion, SupportedCipherSuite};
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use zeroize::Zeroize;

/// Handshake message types handled after the handshake (RFC 8446 §4).
const HELLO_REQUEST: u8 = 0;
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;
/// Alert descriptions (RFC 8446 §6).
const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const DECODE_ERROR: u8 = 50;
const USER_CANCELED: u8 = 90;
/// Alert levels (RFC 5246 §7.2).
const WARNING: u8 = 1;
const FATAL: u8 = 2;
/// What the record layer asks of the TLS library once the handshake is done: to take a session
/// ticket, and the next traffic keys each way (RFC 8446 §7.2). rustls' kernel connection in
/// the relay; a stand-in with a fixed key schedule in the fuzz target ([`fuzz`]).
pub trait Secrets: Unpin {
    /// Takes a TLS 1.3 NewSessionTicket's body (RFC 8446 §4.6.1).
    fn new_session_ticket(&mut self, body: &[u8]) -> Result<(), rustls::Error>;
    /// The server's next traffic keys, after its KeyUpdate, and their first sequence number.
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;
    /// Our next traffic keys, after our KeyUpdate.
    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;
}

impl Secrets for KernelConnection<ClientConnectionData> {
    fn new_session_ticket(&mut self, body: &[u8]) -> Result<(), rustls::Error> {
        self.handle_new_session_ticket(body)
    }
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.update_rx_secret()
    }
    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.update_tx_secret()
    }
}

/// A client TLS connection past its handshake. Its `Debug` shows no key material. Generic
/// over its socket and its [`Secrets`] only so that the fuzz target can run it in memory.
pub struct RecordStream<T = TcpStream, K = KernelConnection<ClientConnectionData>> {
    tcp: T,
    version: Version,
    rx: Keys,
    tx: Keys,
    kernel: K,
    /// Records sealed with one key at most, less a margin for the key update itself.
    tx_limit: u64,
    /// Received bytes: opened content not yet read at `plain`, unopened records at
    /// `next..end`.
    input: Option<Box<[u8]>>,
    plain: Range<usize>,
    next: usize,
    end: usize,
    /// How far `input` was ever filled: what the pool wipes when it comes back.
    input_used: usize,
    /// A handshake message split over records (rare): its first part.
    partial_handshake: Vec<u8>,
    peer_closed: bool,
    /// Sealed records not yet sent, at `sent..sealed`.
    output: Option<Box<[u8]>>,
    sent: usize,
    sealed: usize,
    close_sent: bool,
    /// Key updates the server made, and ours (TLS 1.3).
    key_updates: u32,
    keys_sent: u32,
    /// The server asked for our key update (§4.6.3): one reply, before our next data record,
    /// however many requests came.
    owe_key_update: bool,
    idle: Idle,
    /// A fatal error ended the connection (its alert was sent): no more reads or writes.
    dead: bool,
}

impl<T, K> std::fmt::Debug for RecordStream<T, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStream")
            .field("version", &self.version)
            .field("buffered_in", &(self.end - self.next + self.plain.len()))
            .field("buffered_out", &(self.sealed - self.sent))
            .field("key_updates", &self.key_updates)
            .field("keys_sent", &self.keys_sent)
            .finish_non_exhaustive()
    }
}

/// Runs the TLS handshake on `tcp` for `name`; the stream, and the application data the
/// server sent with its last handshake flight (an IMAP greeting may come that early).
pub async fn connect(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    mut tcp: TcpStream,
) -> io::Result<(RecordStream, Vec<u8>)> {
    let done = handshake::connect(config, name, &mut tcp).await?;
    let version = match done.kernel.protocol_version() {
        ProtocolVersion::TLSv1_3 => Version::Tls13,
        ProtocolVersion::TLSv1_2 => Version::Tls12,
        other => {
            return Err(io::Error::other(format!(
                "unsupported TLS version {other:?}"
            )))
        }
    };
    let limit = match done.kernel.negotiated_cipher_suite() {
        SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
    };
    let (tx_seq, tx) = done.secrets.tx;
    let (rx_seq, rx) = done.secrets.rx;
    let mut stream = RecordStream {
        tcp,
        version,
        rx: Keys::new(rx, rx_seq, version)?,
        tx: Keys::new(tx, tx_seq, version)?,
        kernel: done.kernel,
        tx_limit: limit.saturating_sub(16),
        input: None,
        plain: 0..0,
        next: 0,
        end: 0,
        input_used: 0,
        partial_handshake: Vec::new(),
        peer_closed: false,
        output: None,
        sent: 0,
        sealed: 0,
        close_sent: false,
        key_updates: 0,
        keys_sent: 0,
        owe_key_update: false,
        idle: Idle::default(),
        dead: false,
    };
    if !done.unread.is_empty() {
        let mut buf = pool::take();
        if done.unread.len() > buf.len() {
            return Err(io::Error::other("too much data after the TLS handshake"));
        }
        buf[..done.unread.len()].copy_from_slice(&done.unread);
        (stream.input, stream.end) = (Some(buf), done.unread.len());
        stream.input_used = stream.end;
    }
    Ok((stream, done.early_plaintext))
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl<T: AsyncRead + AsyncWrite + Unpin, K: Secrets> RecordStream<T, K> {
    /// The length of the complete record at `next`, if one is there.
    fn complete_record(&self) -> Result<Option<usize>, Fatal> {
        let Some(input) = &self.input else {
            return Ok(None);
        };
        let have = &input[self.next..self.end];
        if have.len() < HEADER {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([have[3], have[4]]));
        // RFC 8446 §5.2: at most 2^14 + 256 octets of ciphertext; RFC 5246 §6.2.3: 2^14 + 2048.
        let max = match self.version {
            Version::Tls13 => cipher::MAX_PLAINTEXT + 256,
            Version::Tls12 => MAX_FRAGMENT,
        };
        if len > max {
            return Err(fatal(
                RECORD_OVERFLOW,
                "TLS record too large (record_overflow)",
            ));
        }
        Ok((have.len() >= HEADER + len).then_some(HEADER + len))
    }

    /// Opens the complete record at `next`, if any: `true` if one was consumed. After the
    /// server's close_notify every record is discarded unread (RFC 8446 §6.1).
    fn open_next(&mut self) -> Result<bool, Fatal> {
        if self.peer_closed {
            (self.next, self.plain) = (self.end, 0..0);
            return Ok(false);
        }
        let Some(len) = self.complete_record()? else {
            return Ok(false);
        };
        let at = self.next;
        let input = self.input.as_mut().expect("a record is buffered");
        let (typ, content) = self
            .rx
            .open(&mut input[at..at + len])
            .map_err(|e| fatal(BAD_RECORD_MAC, e.to_string()))?;
        self.next += len;
        if content.len() > cipher::MAX_PLAINTEXT {
            return Err(fatal(
                RECORD_OVERFLOW,
                "TLS record content over 2^14 octets (record_overflow)",
            ));
        }
        if !self.partial_handshake.is_empty() && typ != HANDSHAKE {
            // RFC 8446 §5.1: a fragmented handshake message must not be interleaved.
            return Err(fatal(
                UNEXPECTED_MESSAGE,
                "a TLS record inside a fragmented handshake message",
            ));
        }
        let content = at + content.start..at + content.end;
        match typ {
            APPLICATION_DATA if content.is_empty() => {
                self.idle.empty += 1;
                if self.idle.empty > MAX_EMPTY_RECORDS {
                    return Err(fatal(UNEXPECTED_MESSAGE, "too many empty TLS records"));
                }
            }
            APPLICATION_DATA => {
                self.plain = content;
                self.idle = Idle::default();
            }
            ALERT => self.alert(content)?,
            HANDSHAKE if content.is_empty() => {
                // RFC 8446 §5.1: no zero-length fragments of handshake messages.
                return Err(fatal(UNEXPECTED_MESSAGE, "an empty TLS handshake record"));
            }
            HANDSHAKE => {
                let bytes = self.input.as_ref().expect("buffered")[content].to_vec();
                self.handshake(&bytes)?;
            }
            other => {
                return Err(fatal(
                    UNEXPECTED_MESSAGE,
                    format!("unexpected TLS record type {other}"),
                ))
            }
        }
        Ok(true)
    }

    /// Queues a KeyUpdate (update_not_requested) and switches to the next sending keys.
    fn send_key_update(&mut self) -> io::Result<()> {
        self.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0])?;
        let (seq, secrets) = self.kernel.next_tx().map_err(handshake::tls_error)?;
        self.tx = Keys::new(secrets, seq, self.version)?;
        self.keys_sent += 1;
        Ok(())
    }

    /// Seals one record into the output buffer (data leaves room for two small records).
    fn seal(&mut self, typ: u8, content: &[u8]) -> io::Result<()> {
        if pool::BUFFER - self.sealed < content.len() + self.tx.overhead() {
            return Err(io::Error::other(
                "TLS output full: the server asked for key updates faster than it reads",
            ));
        }
        let output = self.output.get_or_insert_with(pool::take);
        let n = self.tx.seal(typ, content, &mut output[self.sealed..])?;
        self.sealed += n;
        Ok(())
    }

    /// Seals as much of `data` as fits into the output buffer, in records of up to 16 KiB; the
    /// bytes taken (at least one when `data` is not empty).
    fn seal_data(&mut self, data: &[u8]) -> io::Result<usize> {
        self.pay_key_update()?;
        let overhead = self.tx.overhead();
        let mut taken = 0;
        // Room stays for a key update and a close_notify.
        let reserve = 2 * (overhead + 8);
        while taken < data.len() {
            if self.tx.seq >= self.tx_limit {
                if self.version == Version::Tls12 {
                    return Err(io::Error::other(
                        "TLS 1.2 connection reached its key's limit",
                    ));
                }
                self.send_key_update()?;
            }
            let room = pool::BUFFER - self.sealed;
            if room < overhead + reserve + 1 {
                break;
            }
            let n = (data.len() - taken)
                .min(cipher::MAX_PLAINTEXT)
                .min(room - overhead - reserve);
            self.seal(APPLICATION_DATA, &data[taken..taken + n])?;
            taken += n;
        }
        Ok(taken)
    }

    /// Sends the sealed records; gives the buffer back once they are out.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.sealed {
            let output = self.output.as_ref().expect("sealed records are buffered");
            let n =
                ready!(Pin::new(&mut self.tcp).poll_write(cx, &output[self.sent..self.sealed]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if let Some(buf) = self.output.take() {
            // Only sealed records were written into it (see `Keys::seal`): nothing to wipe, and
            // no memset of every byte sent (4-5 % of the relay's CPU towards the server).
            pool::give_back(buf, 0);
        }
        (self.sent, self.sealed) = (0, 0);
        Poll::Ready(Ok(()))
    }

    /// Reads more bytes from the socket after the unopened ones (moved to the front first).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let input = self.input.get_or_insert_with(pool::take);
        if self.next > 0 {
            input.copy_within(self.next..self.end, 0);
            (self.end, self.next) = (self.end - self.next, 0);
            self.plain = 0..0;
        }
        let mut read = ReadBuf::new(&mut input[self.end..]);
        let result = Pin::new(&mut self.tcp).poll_read(cx, &mut read);
        let n = read.filled().len();
        if !matches!(result, Poll::Ready(Ok(()))) && self.end == 0 {
            self.release_input();
        }
        ready!(result)?;
        self.end += n;
        self.input_used = self.input_used.max(self.end);
        Poll::Ready(Ok(n))
    }
}

impl<T, K> RecordStream<T, K> {
    fn release_input(&mut self) {
        if let Some(buf) = self.input.take() {
            pool::give_back(buf, self.input_used);
        }
        (self.next, self.end, self.plain, self.input_used) = (0, 0, 0..0, 0);
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin, K: Secrets> AsyncRead for RecordStream<T, K> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check_alive()?;
        let start = out.filled().len();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.plain.is_empty() {
                let input = this.input.as_ref().expect("content is buffered");
                let n = out.remaining().min(this.plain.len());
                out.put_slice(&input[this.plain.start..this.plain.start + n]);
                this.plain.start += n;
                if out.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            match this.open_next() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(f) => return Poll::Ready(Err(this.fail(f, cx))),
            }
            if this.next == this.end {
                // Every byte read is consumed: the buffer goes back now, not at the next read,
                // which may be long in coming (a login waiting for its token).
                this.release_input();
            }
            if out.filled().len() > start || this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            // A key update's reply, if one is owed or waits, goes out before we wait for more.
            this.pay_key_update()?;
            if this.sent < this.sealed {
                let _ = this.poll_send(cx)?;
            }
            if ready!(this.poll_fill(cx))? == 0 {
                let what = if this.end > this.next {
                    "the server closed the connection in the middle of a TLS record"
                } else {
                    "peer closed connection without sending TLS close_notify"
                };
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, what)));
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin, K: Secrets> AsyncWrite for RecordStream<T, K> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.check_alive()?;
        ready!(this.poll_send(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = this.seal_data(data)?;
        // Sent now if the socket takes it; otherwise by the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // After a fatal alert no close_notify follows (RFC 8446 §6.2).
        if !this.close_sent && !this.dead {
            ready!(this.poll_send(cx))?;
            this.pay_key_update()?;
            this.seal(ALERT, &[WARNING, CLOSE_NOTIFY])?;
            this.close_sent = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

impl<T, K> Drop for RecordStream<T, K> {
    fn drop(&mut self) {
        self.release_input();
        if let Some(buf) = self.output.take() {
            pool::give_back(buf, 0); // sealed records only
        }
        self.partial_handshake.zeroize();
    }
}

#[cfg(test)]
mod hostile;
#[cfg(test)]
mod tests;
