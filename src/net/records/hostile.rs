//! A hostile upstream (issue 26, findings 1-10): a TLS 1.3 server whose handshake is rustls'
//! (unbuffered, then handed over with `dangerous_into_kernel_connection`, as the relay's own
//! client side does) and which then writes every record itself, so it can send what no
//! well-behaved server sends. Each scenario says what [`RecordStream`] must do, as rustls' own
//! connection would (RFC 8446 §4.6.3, §5.1, §5.2, §5.4, §6).

use super::cipher::{Keys, Version, ALERT, APPLICATION_DATA, HANDSHAKE, MAX_PLAINTEXT};
use super::*;
use rustls::crypto::ring::cipher_suite as suites;
use rustls::kernel::KernelConnection;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError};
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Hostile {
    tcp: TcpStream,
    tx: Keys,
    rx: Keys,
    kernel: KernelConnection<ServerConnectionData>,
    /// Client records read but not yet opened.
    pending: Vec<u8>,
    /// Key updates the client sent.
    client_key_updates: u32,
}

fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suites::TLS13_AES_128_GCM_SHA256];
    let mut server = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server.enable_secret_extraction = true;
    server.send_tls13_tickets = 0;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    client.enable_secret_extraction = true;
    (Arc::new(server), Arc::new(client))
}

/// Catches the server's first application traffic secret as rustls derives it (right after
/// its Finished), so a record can follow the handshake flight in the same write.
#[derive(Debug, Default)]
struct ServerSecret(std::sync::Mutex<Option<Vec<u8>>>);

impl rustls::KeyLog for ServerSecret {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if label == "SERVER_TRAFFIC_SECRET_0" {
            *self.0.lock().unwrap() = Some(secret.to_vec());
        }
    }
}

/// The server's side of the handshake, by rustls' unbuffered API. With
/// `key_update_in_flight`, a KeyUpdate(update_requested) follows the server's Finished in the
/// same flight and write (legal, RFC 8446 §4.6.3), which rustls itself never sends.
async fn accept(
    config: Arc<ServerConfig>,
    mut tcp: TcpStream,
    key_update_in_flight: bool,
) -> Hostile {
    let secret = Arc::new(ServerSecret::default());
    let config = if key_update_in_flight {
        let mut c = (*config).clone();
        c.key_log = secret.clone();
        Arc::new(c)
    } else {
        config
    };
    let mut updated = false;
    let mut conn = UnbufferedServerConnection::new(config).unwrap();
    let (mut incoming, mut used) = (vec![0u8; 64 * 1024], 0usize);
    let mut outgoing = Vec::new();
    loop {
        let status = conn.process_tls_records(&mut incoming[..used]);
        let discard = status.discard;
        let mut read = false;
        let mut done = false;
        match status.state.unwrap() {
            ConnectionState::EncodeTlsData(mut e) => {
                let at = outgoing.len();
                outgoing.resize(at + 20_000, 0);
                let n = match e.encode(&mut outgoing[at..]) {
                    Ok(n) => n,
                    Err(EncodeError::InsufficientSize(s)) => panic!("needs {}", s.required_size),
                    Err(e) => panic!("{e}"),
                };
                outgoing.truncate(at + n);
            }
            ConnectionState::TransmitTlsData(t) => {
                t.done();
                if let Some(secret) = secret.0.lock().unwrap().take() {
                    let mut keys = Keys::from_tls13_secret(&secret, 0).unwrap();
                    let mut record = vec![0u8; 64];
                    let update = [KEY_UPDATE, 0, 0, 1, 1];
                    let n = keys.seal_any(HANDSHAKE, &update, &mut record).unwrap();
                    outgoing.extend_from_slice(&record[..n]);
                    updated = true;
                }
                tcp.write_all(&outgoing).await.unwrap();
                outgoing.clear();
            }
            ConnectionState::BlockedHandshake => read = true,
            ConnectionState::WriteTraffic(_) => done = true,
            other => panic!("server handshake: {other:?}"),
        }
        if discard > 0 {
            incoming.copy_within(discard..used, 0);
            used -= discard;
        }
        if done {
            break;
        }
        if read {
            let n = tcp.read(&mut incoming[used..]).await.unwrap();
            assert!(n > 0, "the client left during the handshake");
            used += n;
        }
    }
    let (secrets, mut kernel) = conn.dangerous_into_kernel_connection().unwrap();
    let (mut tx_seq, mut tx) = secrets.tx;
    if updated {
        // rustls does not know of the KeyUpdate this side sent: move on to the next secret.
        (tx_seq, tx) = kernel.update_tx_secret().unwrap();
    }
    let (rx_seq, rx) = secrets.rx;
    Hostile {
        tcp,
        tx: Keys::new(tx, tx_seq, Version::Tls13).unwrap(),
        rx: Keys::new(rx, rx_seq, Version::Tls13).unwrap(),
        kernel,
        pending: incoming[..used].to_vec(),
        client_key_updates: 0,
    }
}

impl Hostile {
    /// One record of `typ` with `content`, sealed under the current keys.
    fn record(&mut self, typ: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; content.len() + 64];
        let n = self.tx.seal_any(typ, content, &mut out).unwrap();
        out.truncate(n);
        out
    }

    /// A KeyUpdate record, after which this side sends under its next keys.
    fn key_update(&mut self, requested: bool) -> Vec<u8> {
        let r = self.record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, u8::from(requested)]);
        let (seq, secrets) = self.kernel.update_tx_secret().unwrap();
        self.tx = Keys::new(secrets, seq, Version::Tls13).unwrap();
        r
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// The client's next record, opened (its key updates applied): type and content, or None
    /// at the end of the stream.
    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.pending.len() >= 5 {
                let len = usize::from(u16::from_be_bytes([self.pending[3], self.pending[4]]));
                if self.pending.len() >= 5 + len {
                    let mut record: Vec<u8> = self.pending.drain(..5 + len).collect();
                    let (typ, range) = self.rx.open(&mut record).unwrap();
                    let content = record[range].to_vec();
                    if typ == HANDSHAKE && content.first() == Some(&KEY_UPDATE) {
                        let (seq, secrets) = self.kernel.update_rx_secret().unwrap();
                        self.rx = Keys::new(secrets, seq, Version::Tls13).unwrap();
                        self.client_key_updates += 1;
                    }
                    return Some((typ, content));
                }
            }
            let mut buf = vec![0u8; 64 * 1024];
            let n = self.tcp.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// Application data from the client until `want` bytes came.
    async fn data(&mut self, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < want {
            match self.next().await {
                Some((APPLICATION_DATA, c)) => got.extend_from_slice(&c),
                Some(_) => {}
                None => break,
            }
        }
        got
    }
}

/// A hostile server listening on loopback, and the client configuration that trusts it.
async fn listen(
    key_update_in_flight: bool,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Hostile>,
    Arc<ClientConfig>,
) {
    let (server_config, client_config) = configs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(server_config, tcp, key_update_in_flight).await
    });
    (addr, server, client_config)
}

/// A connected pair: the relay's stream and the hostile server.
async fn pair() -> (RecordStream, Hostile) {
    pair_with(false).await
}

async fn pair_with(key_update_in_flight: bool) -> (RecordStream, Hostile) {
    let (addr, server, client_config) = listen(key_update_in_flight).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let (stream, early) = connect(client_config, name, tcp).await.unwrap();
    assert!(early.is_empty());
    (stream, server.await.unwrap())
}

/// Reads until an error or the end; what was read and the error, if any.
async fn read_all(stream: &mut RecordStream) -> (Vec<u8>, Option<io::Error>) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Some(e)),
        }
    }
}

/// The relay refused what the server sent: the error names it, and the server got a fatal
/// alert with `alert` (RFC 8446 §6.2) as the relay's last record.
async fn refused(stream: &mut RecordStream, server: &mut Hostile, what: &str, alert: u8) {
    let (_, err) = read_all(stream).await;
    let err = err.expect("refused with an error");
    assert!(err.to_string().contains(what), "{err}");
    // The relay's next record is the alert (it had nothing else to send).
    let record = tokio::time::timeout(std::time::Duration::from_secs(10), server.next())
        .await
        .expect("an alert within 10 s");
    assert_eq!(record, Some((ALERT, vec![2, alert])), "{what}");
    assert!(stream.dead);
    // The stream is dead: writes fail, and no close_notify follows the fatal alert.
    assert!(stream.write_all(b"x").await.is_err());
}

#[tokio::test]
async fn endless_key_updates_without_data_are_refused_after_32() {
    let (mut stream, mut server) = pair().await;
    let mut flood = Vec::new();
    for _ in 0..100_000 {
        flood.extend(server.key_update(false));
    }
    server.send(&flood).await;
    refused(
        &mut stream,
        &mut server,
        "too many TLS key updates without data",
        10,
    )
    .await;
}

#[tokio::test]
async fn key_updates_with_data_between_them_are_taken() {
    let (mut stream, mut server) = pair().await;
    let mut wire = Vec::new();
    for i in 0..100u8 {
        wire.extend(server.key_update(false));
        wire.extend(server.record(APPLICATION_DATA, &[b'a' + i % 26]));
    }
    wire.extend(server.record(ALERT, &[1, 0]));
    server.send(&wire).await;
    let (got, err) = read_all(&mut stream).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got.len(), 100);
    assert_eq!(stream.key_updates, 100);
}

#[tokio::test]
async fn a_key_update_must_end_its_record() {
    for tail in [&[KEY_UPDATE, 0, 0, 1, 0][..], &[KEY_UPDATE, 0][..]] {
        let (mut stream, mut server) = pair().await;
        let mut content = vec![KEY_UPDATE, 0, 0, 1, 0];
        content.extend_from_slice(tail);
        let r = server.record(HANDSHAKE, &content);
        server.send(&r).await;
        refused(
            &mut stream,
            &mut server,
            "more TLS handshake data after a key update",
            10,
        )
        .await;
    }
}

/// Three requests while the relay is busy uploading: one reply (what rustls sends), before
/// the next data record, and no "TLS output full".
#[tokio::test]
async fn requested_key_updates_get_one_reply_before_the_next_data() {
    let (mut stream, mut server) = pair().await;
    let mut wire = Vec::new();
    for _ in 0..3 {
        wire.extend(server.key_update(true));
    }
    wire.extend(server.record(APPLICATION_DATA, b"go"));
    server.send(&wire).await;
    let mut go = [0u8; 2];
    stream.read_exact(&mut go).await.unwrap();
    let upload = vec![7u8; 1024 * 1024];
    let (written, got) = tokio::join!(
        async {
            stream.write_all(&upload).await.unwrap();
            stream.flush().await.unwrap();
            stream
        },
        server.data(upload.len())
    );
    assert_eq!(got.len(), upload.len());
    assert_eq!(server.client_key_updates, 1, "one reply for three requests");
    assert_eq!(written.keys_sent, 1);
}

#[tokio::test]
async fn nothing_after_close_notify_reaches_the_device() {
    let (mut stream, mut server) = pair().await;
    let mut wire = server.record(APPLICATION_DATA, b"good");
    wire.extend(server.record(ALERT, &[1, 0]));
    wire.extend(server.record(APPLICATION_DATA, b"INJECTED"));
    server.send(&wire).await;
    let (got, err) = read_all(&mut stream).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, b"good");
}

#[tokio::test]
async fn records_that_make_no_progress_are_counted() {
    // 32 empty records, 4 user_canceled: taken; one more of either: refused.
    let (mut stream, mut server) = pair().await;
    let mut wire = Vec::new();
    for _ in 0..32 {
        wire.extend(server.record(APPLICATION_DATA, b""));
    }
    for _ in 0..4 {
        wire.extend(server.record(ALERT, &[1, USER_CANCELED]));
    }
    wire.extend(server.record(APPLICATION_DATA, b"ok"));
    server.send(&wire).await;
    let mut ok = [0u8; 2];
    stream.read_exact(&mut ok).await.unwrap();
    let mut wire = Vec::new();
    for _ in 0..33 {
        wire.extend(server.record(APPLICATION_DATA, b""));
    }
    server.send(&wire).await;
    refused(&mut stream, &mut server, "too many empty TLS records", 10).await;

    let (mut stream, mut server) = pair().await;
    let mut wire = Vec::new();
    for _ in 0..5 {
        wire.extend(server.record(ALERT, &[1, USER_CANCELED]));
    }
    server.send(&wire).await;
    refused(&mut stream, &mut server, "too many TLS warning alerts", 10).await;
}

#[tokio::test]
async fn record_size_limits_hold() {
    // TLS 1.3 ciphertext over 2^14 + 256 octets: record_overflow before it is opened.
    let (mut stream, mut server) = pair().await;
    let mut big = vec![23u8, 3, 3];
    big.extend_from_slice(&((MAX_PLAINTEXT + 257) as u16).to_be_bytes());
    big.resize(5 + MAX_PLAINTEXT + 257, 0);
    server.send(&big).await;
    refused(&mut stream, &mut server, "record_overflow", 22).await;
    // Plaintext over 2^14 (its ciphertext within the limit): record_overflow too.
    let (mut stream, mut server) = pair().await;
    let r = server.record(APPLICATION_DATA, &vec![b'x'; MAX_PLAINTEXT + 1]);
    server.send(&r).await;
    refused(&mut stream, &mut server, "content over 2^14", 22).await;
}

#[tokio::test]
async fn empty_and_interleaved_handshake_records_are_refused() {
    let (mut stream, mut server) = pair().await;
    let r = server.record(HANDSHAKE, b"");
    server.send(&r).await;
    refused(
        &mut stream,
        &mut server,
        "an empty TLS handshake record",
        10,
    )
    .await;

    let (mut stream, mut server) = pair().await;
    let mut wire = server.record(HANDSHAKE, &[NEW_SESSION_TICKET, 0, 0]);
    wire.extend(server.record(APPLICATION_DATA, b"inside"));
    server.send(&wire).await;
    refused(
        &mut stream,
        &mut server,
        "inside a fragmented handshake message",
        10,
    )
    .await;
}

/// A key update split over two records is taken, and the buffer of the split message is given
/// back once it is whole; a 70 KB handshake message is refused as it arrives.
#[tokio::test]
async fn split_messages_are_joined_bounded_and_not_kept() {
    let (mut stream, mut server) = pair().await;
    let mut wire = server.record(HANDSHAKE, &[KEY_UPDATE, 0]);
    wire.extend(server.record(HANDSHAKE, &[0, 1, 0]));
    let (seq, secrets) = server.kernel.update_tx_secret().unwrap();
    server.tx = Keys::new(secrets, seq, Version::Tls13).unwrap();
    wire.extend(server.record(APPLICATION_DATA, b"after"));
    server.send(&wire).await;
    let mut after = [0u8; 5];
    stream.read_exact(&mut after).await.unwrap();
    assert_eq!(&after, b"after");
    assert_eq!(stream.partial_handshake.capacity(), 0);

    let (mut stream, mut server) = pair().await;
    let len = 70_000u32.to_be_bytes();
    let mut wire = server.record(HANDSHAKE, &[NEW_SESSION_TICKET, len[1], len[2], len[3]]);
    for _ in 0..10 {
        wire.extend(server.record(HANDSHAKE, &[0u8; 1]));
    }
    server.send(&wire).await;
    refused(
        &mut stream,
        &mut server,
        "TLS handshake message too large",
        10,
    )
    .await;
}

/// What must keep working: 100,000 session tickets (in records packed with them, and in tiny
/// records of a few bytes each).
#[tokio::test]
async fn a_hundred_thousand_session_tickets_and_tiny_records_are_taken() {
    let (mut stream, mut server) = pair().await;
    // lifetime, age_add, nonce <0>, ticket <1>, extensions <0> (RFC 8446 §4.6.1).
    let body = [0, 0, 0, 60, 1, 2, 3, 4, 0, 0, 1, 9, 0, 0];
    let mut ticket = vec![NEW_SESSION_TICKET, 0, 0, body.len() as u8];
    ticket.extend_from_slice(&body);
    let per_record = MAX_PLAINTEXT / ticket.len();
    let mut wire = Vec::new();
    for _ in 0..100_000 / per_record + 1 {
        wire.extend(server.record(HANDSHAKE, &ticket.repeat(per_record)));
    }
    for piece in ticket.chunks(3) {
        wire.extend(server.record(HANDSHAKE, piece));
    }
    for b in b"tiny" {
        wire.extend(server.record(APPLICATION_DATA, &[*b]));
    }
    server.send(&wire).await;
    let mut tiny = [0u8; 4];
    stream.read_exact(&mut tiny).await.unwrap();
    assert_eq!(&tiny, b"tiny");
}

/// Finding 3: a KeyUpdate(update_requested) in the server's last handshake flight, in the same
/// write as its Finished (legal, RFC 8446 §4.6.3: the receiver MUST answer it before its next
/// application data). Before the fix rustls took it inside the handshake and queued the reply,
/// which was lost on the way to the record layer while the key had moved on: the server could
/// not read the relay's first record. Now the handshake hands the record to the record layer
/// unread, which answers it once it reads it. tokio-rustls, in the same conversation, is the
/// reference: it too reads the request with the server's first data and answers before its
/// next record. Both: the server reads everything, one reply.
#[tokio::test]
async fn a_key_update_in_the_last_handshake_flight_is_answered_as_tokio_rustls_does() {
    async fn converse<S: AsyncReadExt + AsyncWriteExt + Unpin>(
        mut client: S,
        server: &mut Hostile,
    ) {
        for (ask, answer) in [
            (&b"a001 CAPABILITY\r\n"[..], &b"a001 OK\r\n"[..]),
            (b"a002 NOOP\r\n", b"a002 OK\r\n"),
        ] {
            client.write_all(ask).await.unwrap();
            client.flush().await.unwrap();
            let got =
                tokio::time::timeout(std::time::Duration::from_secs(10), server.data(ask.len()))
                    .await
                    .expect("the server reads the client's data within 10 s");
            assert_eq!(got, ask);
            let wire = server.record(APPLICATION_DATA, answer);
            server.send(&wire).await;
            let mut read = vec![0u8; answer.len()];
            client.read_exact(&mut read).await.unwrap();
            assert_eq!(read, answer);
        }
        assert_eq!(server.client_key_updates, 1, "one reply");
    }
    let (stream, mut server) = pair_with(true).await;
    converse(stream, &mut server).await;

    let (addr, server, client_config) = listen(true).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let reference = tokio_rustls::TlsConnector::from(client_config)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut server = server.await.unwrap();
    converse(reference, &mut server).await;
}

/// Finding 10's pooled buffers: after a session that sent and received plaintext, no buffer in
/// the pool holds either. The output buffer is given back unwiped (it only ever holds sealed
/// records); the input buffer, where records are opened in place, is wiped.
#[tokio::test]
async fn no_pooled_buffer_keeps_a_sessions_plaintext() {
    let (mut stream, mut server) = pair().await;
    let (up, down) = (b"a001 LOGIN canary-up-7f3e1d", b"* canary-down-2b9c4a");
    stream.write_all(up).await.unwrap();
    stream.flush().await.unwrap();
    assert_eq!(server.data(up.len()).await, up);
    let wire = server.record(APPLICATION_DATA, down);
    server.send(&wire).await;
    let mut got = vec![0u8; down.len()];
    stream.read_exact(&mut got).await.unwrap();
    drop(stream);
    assert!(!crate::net::pool::any_holds(up) && !crate::net::pool::any_holds(down));
}
