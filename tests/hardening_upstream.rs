//! A server that breaks a relayed session (issue 26, finding 10): after the login it answers a
//! device's command with a TLS record that does not open — what a tampering network or a
//! broken server gives. The relay must tell the device in its protocol's words (SMTP
//! `421 4.4.2`, IMAP `* BYE [UNAVAILABLE]`, POP3 `-ERR [SYS/TEMP]`) instead of a silent close,
//! and log the server's fault at WARN.
//!
//! The server here speaks just enough of each protocol for the relay's login (any XOAUTH2
//! token is taken), over TLS from tokio-rustls; its bad record is written to the socket under
//! the TLS stream.

mod support;

use std::net::SocketAddr;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A TLS 1.3 application-data record whose tag cannot be right.
const BAD_RECORD: [u8; 37] = {
    let mut r = [0x55u8; 37];
    (r[0], r[1], r[2], r[3], r[4]) = (0x17, 0x03, 0x03, 0x00, 0x20);
    r
};

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    Smtp,
    Imap,
    Pop3,
}

/// Starts the breaking server; its address.
async fn breaking_server(proto: Proto, cert: &TestCert) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = cert.acceptor();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = serve(proto, tcp, acceptor).await;
            });
        }
    });
    addr
}

async fn serve(
    proto: Proto,
    mut tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
) -> std::io::Result<()> {
    if proto == Proto::Smtp {
        // RFC 3207: plain greeting and EHLO, then STARTTLS.
        let mut plain = BufReader::new(&mut tcp);
        plain.get_mut().write_all(b"220 hostile ESMTP\r\n").await?;
        let mut line = String::new();
        loop {
            line.clear();
            if plain.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let upper = line.to_ascii_uppercase();
            if upper.starts_with("EHLO") {
                plain
                    .get_mut()
                    .write_all(b"250-hostile\r\n250 STARTTLS\r\n")
                    .await?;
            } else if upper.starts_with("STARTTLS") {
                plain.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
                break;
            }
        }
    }
    let tls = acceptor.accept(tcp).await?;
    let mut tls = BufReader::new(tls);
    let greeting: &[u8] = match proto {
        Proto::Smtp => b"",
        Proto::Imap => b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR] hostile\r\n",
        Proto::Pop3 => b"+OK hostile\r\n",
    };
    tls.get_mut().write_all(greeting).await?;
    let mut logged_in = false;
    let mut line = String::new();
    loop {
        line.clear();
        if tls.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let tag = line.split(' ').next().unwrap_or("").to_owned();
        if logged_in {
            // The device's first relayed command: answer with a record that does not open,
            // and keep the connection open (a close would be an ordinary end).
            tls.get_mut().get_mut().0.write_all(&BAD_RECORD).await?;
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            return Ok(());
        }
        let answer = match proto {
            Proto::Smtp if upper.starts_with("EHLO") => {
                "250-hostile\r\n250 AUTH XOAUTH2\r\n".into()
            }
            Proto::Smtp if upper.starts_with("AUTH") => {
                logged_in = true;
                "235 2.7.0 Authentication successful\r\n".into()
            }
            Proto::Imap if upper.contains(" CAPABILITY") => {
                format!("* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR\r\n{tag} OK done\r\n")
            }
            Proto::Imap if upper.contains(" AUTHENTICATE") => {
                logged_in = true;
                format!("{tag} OK authenticated\r\n")
            }
            Proto::Pop3 if upper.starts_with("CAPA") => {
                "+OK\r\nSASL XOAUTH2\r\nUSER\r\n.\r\n".into()
            }
            // RFC 5034: without an initial response the server asks for it with "+ ".
            Proto::Pop3 if upper.trim_end() == "AUTH XOAUTH2" => "+ \r\n".into(),
            Proto::Pop3 if upper.starts_with("AUTH") || !upper.starts_with("CAPA") => {
                logged_in = true;
                "+OK logged in\r\n".into()
            }
            _ => match proto {
                Proto::Smtp => "502 5.5.1 not here\r\n".into(),
                Proto::Imap => format!("{tag} BAD not here\r\n"),
                Proto::Pop3 => "-ERR not here\r\n".into(),
            },
        };
        tls.get_mut().write_all(answer.as_bytes()).await?;
    }
}

async fn relay(proto: Proto, cert: &TestCert) -> (TokenEndpoint, Relay) {
    let server = breaking_server(proto, cert).await;
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let (name, tls) = match proto {
        Proto::Smtp => ("smtp", "starttls"),
        Proto::Imap => ("imap", "implicit"),
        Proto::Pop3 => ("pop3", "implicit"),
    };
    let ca = format!("upstream_ca = \"{}\"", cert.cert.display());
    let toml = relay_toml(server, tls, &tokens.url(), &ca, "").replacen(
        "protocol = \"smtp\"",
        &format!("protocol = \"{name}\""),
        1,
    );
    (tokens, Relay::start(&toml).await)
}

/// Logs in through the relay as a device would, sends one command, and returns what the
/// device reads next.
async fn after_the_break(proto: Proto) -> String {
    let cert = TestCert::new();
    let (_tokens, r) = relay(proto, &cert).await;
    let mut c = Client::connect(r.addr).await;
    let greeting = c.reply().await;
    assert!(!greeting.is_empty());
    let login = match proto {
        Proto::Smtp => {
            c.ehlo().await;
            c.send(&format!(
                "AUTH PLAIN {}\r\n",
                plain("user@example.com", PASSWORD)
            ))
            .await;
            c.reply().await
        }
        Proto::Imap => {
            c.send(&format!("a1 LOGIN user@example.com {PASSWORD}\r\n"))
                .await;
            let mut reply = c.reply().await;
            while reply.starts_with('*') {
                reply = c.reply().await;
            }
            reply
        }
        Proto::Pop3 => {
            c.send("USER user@example.com\r\n").await;
            assert!(c.reply().await.starts_with("+OK"));
            c.send(&format!("PASS {PASSWORD}\r\n")).await;
            c.reply().await
        }
    };
    assert!(
        login.starts_with("235") || login.starts_with("a1 OK") || login.starts_with("+OK"),
        "login: {login}"
    );
    c.send(match proto {
        Proto::Smtp => "MAIL FROM:<mailbox@example.com>\r\n",
        Proto::Imap => "a2 NOOP\r\n",
        Proto::Pop3 => "STAT\r\n",
    })
    .await;
    let said = c.reply().await;
    assert!(
        c.closed().await,
        "the device's connection is closed after {said:?}"
    );
    let log = captured_log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("the server broke the session")
            && l.contains("user")),
        "a WARN line names the server's fault: {log}"
    );
    said
}

#[tokio::test]
async fn smtp_device_hears_421_4_4_2_when_the_server_breaks_the_session() {
    let said = after_the_break(Proto::Smtp).await;
    assert!(said.starts_with("421 4.4.2 "), "{said:?}");
}

#[tokio::test]
async fn imap_device_hears_bye_when_the_server_breaks_the_session() {
    let said = after_the_break(Proto::Imap).await;
    assert!(said.starts_with("* BYE [UNAVAILABLE] "), "{said:?}");
}

#[tokio::test]
async fn pop3_device_hears_err_sys_temp_when_the_server_breaks_the_session() {
    let said = after_the_break(Proto::Pop3).await;
    assert!(said.starts_with("-ERR [SYS/TEMP] "), "{said:?}");
}
