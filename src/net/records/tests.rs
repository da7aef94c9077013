//! [`RecordStream`] against rustls' own server (tokio-rustls): every cipher suite of TLS 1.3
//! and 1.2, bulk data both ways, a server-initiated key update, session tickets, close_notify
//! both ways, a server that leaves without close_notify, a certificate that does not verify.

use super::*;
use rustls::crypto::ring::cipher_suite as suites;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, SupportedCipherSuite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

struct Pki {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

fn pki() -> Pki {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    Pki {
        cert: ck.cert.der().clone(),
        key: ck.key_pair.serialize_der(),
    }
}

fn server_config(pki: &Pki, suite: SupportedCipherSuite) -> Arc<ServerConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    let version: &'static rustls::SupportedProtocolVersion = match suite {
        SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
        SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
    };
    let config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.clone())),
        )
        .unwrap();
    Arc::new(config)
}

fn client_config(trusted: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.enable_secret_extraction = true;
    Arc::new(config)
}

fn pattern(len: usize, salt: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31) ^ salt) as u8)
        .collect()
}

const BULK: usize = 3 * 1024 * 1024 + 17;

/// The server: greets, echoes BULK bytes back while refreshing its keys in the middle (TLS
/// 1.3), sends its own BULK bytes, then close_notify; returns what it read after the echo.
async fn serve(listener: TcpListener, config: Arc<ServerConfig>) -> Vec<u8> {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut tls = TlsAcceptor::from(config).accept(tcp).await.unwrap();
    let tls13 = tls.get_ref().1.protocol_version() == Some(ProtocolVersion::TLSv1_3);
    tls.write_all(b"* OK greeting\r\n").await.unwrap();
    tls.flush().await.unwrap();
    let mut echoed = 0;
    let mut buf = vec![0u8; 20_000];
    while echoed < BULK {
        let n = tls
            .read(&mut buf[..(BULK - echoed).min(20_000)])
            .await
            .unwrap();
        assert!(n > 0, "the client's data ended early");
        if tls13 && echoed < BULK / 2 && echoed + n >= BULK / 2 {
            tls.get_mut().1.refresh_traffic_keys().unwrap();
        }
        tls.write_all(&buf[..n]).await.unwrap();
        echoed += n;
    }
    tls.write_all(&pattern(BULK, 7)).await.unwrap();
    tls.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).await.unwrap();
    rest
}

async fn exchange(suite: SupportedCipherSuite) {
    let pki = pki();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, server_config(&pki, suite)));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let (mut stream, early) = connect(client_config(&pki.cert), name, tcp).await.unwrap();
    let mut greeting = early;
    let mut read = false;
    while !greeting.ends_with(b"\r\n") {
        let mut b = [0u8; 64];
        let n = stream.read(&mut b).await.unwrap();
        greeting.extend_from_slice(&b[..n]);
        read = true;
    }
    assert_eq!(greeting, b"* OK greeting\r\n");
    // A read that consumed every byte received gave its buffer back.
    assert!(
        !read || stream.input.is_none(),
        "nothing unread, yet a buffer held"
    );
    let sent = pattern(BULK, 3);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let upload = async {
        for chunk in sent.chunks(70_000) {
            writer.write_all(chunk).await.unwrap();
        }
        writer.flush().await.unwrap();
        writer
    };
    let download = async {
        let mut got = vec![0u8; 2 * BULK];
        reader.read_exact(&mut got).await.unwrap();
        let mut after = [0u8; 1];
        // close_notify: a clean end of stream.
        assert_eq!(reader.read(&mut after).await.unwrap(), 0);
        got
    };
    let (mut writer, got) = tokio::join!(upload, download);
    assert!(got[..BULK] == sent[..], "{suite:?}: the echo differs");
    assert!(
        got[BULK..] == pattern(BULK, 7)[..],
        "{suite:?}: the download differs"
    );
    writer.write_all(b"a1 LOGOUT\r\n").await.unwrap();
    writer.shutdown().await.unwrap();
    // Read by the server under the keys that followed ours (TLS 1.3: it asked for the update).
    assert_eq!(server.await.unwrap(), b"a1 LOGOUT\r\n");
    let stream = reader.unsplit(writer);
    let tls13 = matches!(suite, SupportedCipherSuite::Tls13(_));
    assert_eq!(stream.key_updates, u32::from(tls13), "{suite:?}");
    // rustls' server asks for ours in return (update_requested): sent, and the LOGOUT above was
    // read under the new keys.
    assert_eq!(stream.keys_sent, u32::from(tls13), "{suite:?}");
}

#[tokio::test]
async fn every_tls13_suite_with_a_key_update_in_the_middle() {
    for suite in [
        suites::TLS13_AES_128_GCM_SHA256,
        suites::TLS13_AES_256_GCM_SHA384,
        suites::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        exchange(suite).await;
    }
}

#[tokio::test]
async fn every_tls12_suite() {
    for suite in [
        suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ] {
        exchange(suite).await;
    }
}

#[tokio::test]
async fn a_server_leaving_without_close_notify_is_an_unexpected_end() {
    let pki = pki();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = server_config(&pki, suites::TLS13_AES_128_GCM_SHA256);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsAcceptor::from(config).accept(tcp).await.unwrap();
        tls.write_all(b"bye").await.unwrap();
        tls.flush().await.unwrap();
        let (tcp, _) = tls.into_inner();
        drop(tcp);
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let (mut stream, early) = connect(client_config(&pki.cert), name, tcp).await.unwrap();
    server.await.unwrap();
    let mut got = early;
    let err = loop {
        let mut b = [0u8; 16];
        match stream.read(&mut b).await {
            Ok(0) => panic!("a clean end without close_notify"),
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(got, b"bye");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    let debug = format!("{stream:?}");
    assert!(
        debug.starts_with("RecordStream { version: Tls13"),
        "{debug}"
    );
    assert!(!debug.contains("Keys") && !debug.contains("iv") && !debug.contains("secret"));
}

#[tokio::test]
async fn a_certificate_that_does_not_verify_is_refused_as_tokio_rustls_would() {
    let (pki, other) = (pki(), pki());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = server_config(&pki, suites::TLS13_AES_128_GCM_SHA256);
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = TlsAcceptor::from(config).accept(tcp).await;
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let err = connect(client_config(&other.cert), name, tcp)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
}
