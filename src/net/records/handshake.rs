//! The client handshake, driven through rustls' unbuffered API so that, once it is done, rustls
//! can hand the traffic keys over (`dangerous_into_kernel_connection`) and the records that
//! follow are sealed and opened in place by [`super::RecordStream`].

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ClientConfig, ExtractedSecrets};
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a finished handshake leaves: the keys, rustls' post-handshake state, the bytes read
/// past the handshake (the start of the first records) and any application data the server
/// sent with its last flight, already decrypted by rustls.
pub struct Finished {
    pub secrets: ExtractedSecrets,
    pub kernel: KernelConnection<ClientConnectionData>,
    pub unread: Vec<u8>,
    pub early_plaintext: Vec<u8>,
}

/// What to do after handling one state (the state borrows the buffers, so the I/O it asks for
/// happens once it is gone).
enum Step {
    Again,
    Transmit,
    Read,
    Done,
}

/// A TLS error as tokio-rustls reports it (same kind, same text).
pub fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Runs the handshake on `tcp` for `name` with `config` (which must allow secret extraction).
pub async fn connect(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    tcp: &mut TcpStream,
) -> io::Result<Finished> {
    let mut conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
    let (mut incoming, mut used) = (vec![0u8; 16 * 1024], 0usize);
    // rustls sees one record more at a time, only when it asks: records after the handshake's
    // end are left to [`super::RecordStream`]. (rustls would take a key update that came with
    // the server's last flight, queue its reply, and the hand-over would lose it: RFC 8446
    // §4.6.3 allows one there.)
    let mut window = 0usize;
    let mut outgoing = Vec::new();
    let mut early_plaintext = Vec::new();
    loop {
        let (discard, step) = handle(
            conn.process_tls_records(&mut incoming[..window]),
            &mut outgoing,
            &mut early_plaintext,
        )?;
        if discard > 0 {
            incoming.copy_within(discard..used, 0);
            used -= discard;
            window -= discard;
        }
        match step {
            Step::Again => {}
            Step::Transmit => {
                tcp.write_all(&outgoing).await?;
                outgoing.clear();
            }
            Step::Read if window < used && record_end(&incoming[window..used]).is_some() => {
                window += record_end(&incoming[window..used]).expect("checked");
            }
            Step::Read => {
                if used == incoming.len() {
                    incoming.resize(incoming.len() * 2, 0);
                }
                let n = tcp.read(&mut incoming[used..]).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection during the TLS handshake",
                    ));
                }
                used += n;
                if let Some(n) = record_end(&incoming[window..used]) {
                    window += n;
                }
            }
            Step::Done => break,
        }
    }
    if !outgoing.is_empty() {
        tcp.write_all(&outgoing).await?;
    }
    let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(tls_error)?;
    incoming.truncate(used);
    Ok(Finished {
        secrets,
        kernel,
        unread: incoming,
        early_plaintext,
    })
}

/// The length of the first complete TLS record in `buf` (RFC 8446 §5.1: a 5-byte header with
/// the length last), if it is all there.
fn record_end(buf: &[u8]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([*buf.get(3)?, *buf.get(4)?]));
    (buf.len() >= 5 + len).then_some(5 + len)
}

/// Handles one state: encodes what rustls has to send into `outgoing`, collects application
/// data into `early`; the bytes to discard from the front of the input and what to do next.
fn handle(
    status: UnbufferedStatus<'_, '_, ClientConnectionData>,
    outgoing: &mut Vec<u8>,
    early: &mut Vec<u8>,
) -> io::Result<(usize, Step)> {
    let UnbufferedStatus { mut discard, state } = status;
    let step = match state.map_err(tls_error)? {
        ConnectionState::EncodeTlsData(mut e) => {
            let sending = outgoing.len();
            outgoing.resize(sending + super::cipher::MAX_RECORD, 0);
            let n = loop {
                match e.encode(&mut outgoing[sending..]) {
                    Ok(n) => break n,
                    Err(EncodeError::InsufficientSize(s)) => {
                        outgoing.resize(sending + s.required_size, 0)
                    }
                    Err(e) => return Err(io::Error::other(e.to_string())),
                }
            };
            outgoing.truncate(sending + n);
            Step::Again
        }
        ConnectionState::TransmitTlsData(t) => {
            t.done();
            Step::Transmit
        }
        ConnectionState::BlockedHandshake => Step::Read,
        ConnectionState::ReadTraffic(mut r) => {
            while let Some(record) = r.next_record() {
                let record = record.map_err(tls_error)?;
                discard += record.discard;
                early.extend_from_slice(record.payload);
            }
            Step::Again
        }
        ConnectionState::WriteTraffic(_) => Step::Done,
        ConnectionState::PeerClosed | ConnectionState::Closed => {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed TLS during the handshake",
            ))
        }
        other => {
            return Err(io::Error::other(format!(
                "unexpected TLS state during the handshake: {other:?}"
            )))
        }
    };
    Ok((discard, step))
}
