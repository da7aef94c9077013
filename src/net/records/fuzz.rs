//! The record layer run in memory for its fuzz target (`fuzz/fuzz_targets/records.rs`): the
//! input is what a server sends after the handshake, as records the target seals with the
//! server's keys (so that the fuzzer gets past the AEAD and reaches the deframer, the size
//! limits, the alerts and the post-handshake messages) or as raw bytes, delivered to the
//! stream in reads of a size the input picks (down to one byte: a record split at every byte).
//!
//! What must hold, whatever the input: no panic, no hang (the stream is polled with a no-op
//! waker and must end or wait), the handshake buffer within its cap, and the plaintext the
//! stream hands out a prefix of the application data the server sealed before anything raw
//! and before its close_notify: nothing injected, reordered or read after the close.
//!
//! Input layout: one byte of setup (bits 0-1: the suite and version; bits 2-7: the read
//! size), then records, each `kind, length (2 bytes), content`. `kind` 0-3 seals a record of
//! type application data, handshake, alert or change_cipher_spec (any other value below 0x80:
//! that content type); 0x80 and above writes the content unsealed.

use super::cipher::{Keys, Version, ALERT, APPLICATION_DATA, HANDSHAKE, MAX_PLAINTEXT};
use super::control::{Idle, MAX_HANDSHAKE_MESSAGE};
use super::{RecordStream, Secrets, CLOSE_NOTIFY, KEY_UPDATE};
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::ConnectionTrafficSecrets;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Runs one input; panics when a property above does not hold.
pub fn records(data: &[u8]) {
    let (got, expected) = play(data);
    assert!(
        expected.starts_with(&got),
        "the stream handed out {} bytes that the server did not send in that order",
        got.len()
    );
}

/// Runs one input: what the stream handed out, and the application data it may hand out.
fn play(data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let Some((&setup, mut rest)) = data.split_first() else {
        return (Vec::new(), Vec::new());
    };
    let suite = Suite::from(setup & 3);
    let step = usize::from(setup >> 2) + 1;
    let mut server = Schedule::new(suite);
    let mut server_tx = suite.keys(server.next(), 0);
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let mut tracking = true;
    while let [kind, hi, lo, more @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(more.len());
        let (content, after) = more.split_at(len);
        rest = after;
        if *kind >= 0x80 {
            // Raw bytes end what the stream may hand out; none (an empty chunk) change nothing.
            wire.extend_from_slice(content);
            tracking &= content.is_empty();
            continue;
        }
        let typ = match kind {
            0 => APPLICATION_DATA,
            1 => HANDSHAKE,
            2 => ALERT,
            3 => 20,
            other => *other,
        };
        let start = wire.len();
        wire.resize(start + content.len() + server_tx.overhead() + 256, 0);
        let n = server_tx
            .seal_any(typ, content, &mut wire[start..])
            .expect("sealing");
        wire.truncate(start + n);
        if tracking && typ == APPLICATION_DATA && content.len() <= MAX_PLAINTEXT {
            expected.extend_from_slice(content);
        }
        if typ == ALERT && content.get(1) == Some(&CLOSE_NOTIFY) {
            tracking = false;
        }
        // The server's own key update: it seals what follows with its next key, as the stream
        // will open it (when the message stands alone in its record, as it must).
        if suite.version() == Version::Tls13
            && typ == HANDSHAKE
            && content.len() == 5
            && content[..4] == [KEY_UPDATE, 0, 0, 1]
        {
            server_tx = suite.keys(server.next(), 0);
        }
    }
    (run(suite, wire, step), expected)
}

/// Feeds `wire` to a stream in reads of `step` bytes; the plaintext it hands out.
fn run(suite: Suite, wire: Vec<u8>, step: usize) -> Vec<u8> {
    let mut client = Schedule::new(suite);
    let rx = suite.keys(client.next(), 0);
    let tx = suite.keys([0x42; 32], 0);
    let mut stream = RecordStream {
        tcp: Wire {
            input: wire,
            at: 0,
            step,
            written: 0,
        },
        version: suite.version(),
        rx,
        tx,
        kernel: client,
        tx_limit: 1 << 20,
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
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Every read makes progress on the input or ends the stream: a bound on the polls.
    for _ in 0..stream.tcp.input.len() + 16 {
        let mut read = ReadBuf::new(&mut buf[..(step * 7) % 4096 + 1]);
        match Pin::new(&mut stream).poll_read(&mut cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => break,
            Poll::Ready(Ok(())) => got.extend_from_slice(read.filled()),
            Poll::Ready(Err(_)) => break,
            Poll::Pending => unreachable!("the wire never waits"),
        }
        // The relay writes between reads: a key update owed goes out first.
        let _ = Pin::new(&mut stream).poll_write(&mut cx, b"a1 NOOP\r\n");
        assert!(stream.partial_handshake.capacity() <= 2 * (4 + MAX_HANDSHAKE_MESSAGE));
    }
    let _ = Pin::new(&mut stream).poll_shutdown(&mut cx);
    got
}

#[derive(Clone, Copy)]
enum Suite {
    Tls13Aes,
    Tls13Chacha,
    Tls12Aes,
    Tls12Chacha,
}

impl Suite {
    fn from(bits: u8) -> Suite {
        [
            Suite::Tls13Aes,
            Suite::Tls13Chacha,
            Suite::Tls12Aes,
            Suite::Tls12Chacha,
        ][usize::from(bits)]
    }

    fn version(self) -> Version {
        match self {
            Suite::Tls13Aes | Suite::Tls13Chacha => Version::Tls13,
            Suite::Tls12Aes | Suite::Tls12Chacha => Version::Tls12,
        }
    }

    fn secrets(self, key: [u8; 32]) -> ConnectionTrafficSecrets {
        let iv = Iv::new([key[0]; 12]);
        match self {
            Suite::Tls13Aes | Suite::Tls12Aes => ConnectionTrafficSecrets::Aes256Gcm {
                key: AeadKey::from(key),
                iv,
            },
            Suite::Tls13Chacha | Suite::Tls12Chacha => ConnectionTrafficSecrets::Chacha20Poly1305 {
                key: AeadKey::from(key),
                iv,
            },
        }
    }

    fn keys(self, key: [u8; 32], seq: u64) -> Keys {
        Keys::new(self.secrets(key), seq, self.version()).expect("keys")
    }
}

/// A stand-in key schedule: generation n's key is n in every byte. The server's sending side
/// and the stream's receiving side step through the same one.
struct Schedule {
    suite: Suite,
    generation: u8,
}

impl Schedule {
    fn new(suite: Suite) -> Schedule {
        Schedule {
            suite,
            generation: 0,
        }
    }

    fn next(&mut self) -> [u8; 32] {
        self.generation = self.generation.wrapping_add(1);
        [self.generation; 32]
    }
}

impl Secrets for Schedule {
    fn new_session_ticket(&mut self, body: &[u8]) -> Result<(), rustls::Error> {
        // rustls refuses a ticket too short for its fixed fields (RFC 8446 §4.6.1).
        match body.len() >= 9 {
            true => Ok(()),
            false => Err(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::MissingData("NewSessionTicketPayloadTls13"),
            )),
        }
    }
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        let key = self.next();
        Ok((0, self.suite.secrets(key)))
    }
    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        Ok((0, self.suite.secrets([0x43; 32])))
    }
}

/// The server's bytes, `step` at a time, then the end; takes whatever is written.
struct Wire {
    input: Vec<u8>,
    at: usize,
    step: usize,
    written: usize,
}

impl AsyncRead for Wire {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self
            .step
            .min(buf.remaining())
            .min(self.input.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.input[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written += buf.len();
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, content: &[u8]) -> Vec<u8> {
        let mut r = vec![kind];
        r.extend_from_slice(&(content.len() as u16).to_be_bytes());
        r.extend_from_slice(content);
        r
    }

    #[test]
    fn sealed_data_comes_out_whole_across_key_updates_split_at_every_byte() {
        for setup in [0u8, 1, 2, 3] {
            let mut input = vec![setup]; // one-byte reads
            input.extend(record(0, b"* OK first\r\n"));
            if setup < 2 {
                input.extend(record(1, &[KEY_UPDATE, 0, 0, 1, 1]));
            }
            input.extend(record(1, &[4, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 2, 0]));
            input.extend(record(0, b"* OK second\r\n"));
            let (got, expected) = play(&input);
            assert_eq!(expected, b"* OK first\r\n* OK second\r\n");
            let wanted: &[u8] = match setup {
                // TLS 1.2 has no session tickets after the handshake: a fatal error there.
                2 | 3 => b"* OK first\r\n",
                _ => &expected,
            };
            assert_eq!(got, wanted, "setup {setup}");
        }
    }

    #[test]
    fn nothing_after_close_notify_and_nothing_raw_comes_out() {
        let mut input = vec![4u8 << 2];
        input.extend(record(0, b"kept"));
        input.extend(record(2, &[1, CLOSE_NOTIFY]));
        input.extend(record(0, b"after the close"));
        input.extend(record(0x80, b"\x17\x03\x03\x00\x05hello"));
        assert_eq!(play(&input), (b"kept".to_vec(), b"kept".to_vec()));
    }

    /// The fuzzer's first finding, a fault in this harness: an empty raw chunk put nothing on
    /// the wire but stopped counting the data sealed after it.
    #[test]
    fn an_empty_raw_chunk_is_no_raw_byte() {
        let mut input = vec![0u8];
        input.extend(record(0x80, b""));
        input.extend(record(0, b"counted"));
        assert_eq!(play(&input), (b"counted".to_vec(), b"counted".to_vec()));
    }

    #[test]
    fn a_forged_record_ends_the_stream_without_output() {
        let mut input = vec![0u8];
        input.extend(record(
            0x80,
            &[
                0x17, 3, 3, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
                19, 20,
            ],
        ));
        input.extend(record(0, b"never"));
        assert_eq!(play(&input).0, b"");
    }
}
