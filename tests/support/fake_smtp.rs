//! A fake upstream SMTP server that checks XOAUTH2 tokens (and PLAIN passwords), logs what it
//! is sent, and breaks as [`UpstreamOptions`] asks.

use super::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Clone, Debug, Default)]
pub struct UpstreamOptions {
    /// Implicit TLS on connect.
    pub implicit_tls: bool,
    /// Offer STARTTLS (needs `tls`).
    pub starttls: bool,
    /// Omit STARTTLS from EHLO even though the relay requires it.
    pub hide_starttls: bool,
    /// Send extra bytes right after the 220 to STARTTLS.
    pub inject_after_starttls: bool,
    /// AUTH mechanisms to advertise.
    pub mechanisms: &'static str,
    /// Answer a bad XOAUTH2 token with a Gmail-style JSON challenge (else `535 5.7.3` directly).
    pub json_challenge: bool,
    /// Greeting to send (default `220 fake.upstream ESMTP`).
    pub greeting: Option<&'static str>,
    /// The reply to a refused AUTH (default `535 5.7.3 Authentication unsuccessful [FAKE]`).
    pub auth_failure: Option<&'static str>,
}

#[derive(Debug, Default)]
pub struct UpstreamLog {
    /// Every line received before DATA, except SASL responses, which go to `sasl`.
    pub commands: Vec<String>,
    pub sasl: Vec<String>,
    /// Complete DATA payloads (without the terminating dot line), as received.
    pub messages: Vec<Vec<u8>>,
    pub auth_ok: u32,
    pub auth_failed: u32,
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<UpstreamLog>>,
    /// XOAUTH2 tokens (and PLAIN passwords) accepted, with the user they belong to.
    pub accepted: Arc<Mutex<HashMap<String, String>>>,
    /// TCP connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// The most connections open at once so far.
    pub max_open: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeUpstream {
    pub async fn start(opts: UpstreamOptions, cert: Option<&TestCert>) -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), opts, cert).await
    }

    /// The same on a given address (an upstream that comes back on its old port).
    pub async fn start_at(
        addr: SocketAddr,
        opts: UpstreamOptions,
        cert: Option<&TestCert>,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let up = FakeUpstream {
            addr: listener.local_addr().unwrap(),
            log: Arc::default(),
            accepted: Arc::default(),
            connections: Arc::default(),
            max_open: Arc::default(),
        };
        let acceptor = cert.map(TestCert::acceptor);
        let (log, accepted) = (up.log.clone(), up.accepted.clone());
        let connections = up.connections.clone();
        let max_open = up.max_open.clone();
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let now_open = open.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                max_open.fetch_max(now_open, std::sync::atomic::Ordering::SeqCst);
                let open = open.clone();
                let (log, accepted, opts, acceptor) = (
                    log.clone(),
                    accepted.clone(),
                    opts.clone(),
                    acceptor.clone(),
                );
                tokio::spawn(async move {
                    let stream: Box<dyn Io> = if opts.implicit_tls {
                        Box::new(acceptor.as_ref().unwrap().accept(tcp).await.unwrap())
                    } else {
                        Box::new(tcp)
                    };
                    let _ = serve_smtp(stream, opts, log, accepted, acceptor).await;
                    open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        up
    }

    pub fn accept_token(&self, token: &str, user: &str) {
        self.accepted
            .lock()
            .unwrap()
            .insert(token.into(), user.into());
    }
}

async fn serve_smtp(
    mut stream: Box<dyn Io>,
    opts: UpstreamOptions,
    log: Arc<Mutex<UpstreamLog>>,
    accepted: Arc<Mutex<HashMap<String, String>>>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    let mut tls_active = opts.implicit_tls;
    let greeting = opts.greeting.unwrap_or("220 fake.upstream ESMTP");
    stream
        .write_all(format!("{greeting}\r\n").as_bytes())
        .await?;
    if !greeting.starts_with("220") {
        return Ok(());
    }
    let mut reader = BufReader::new(stream);
    let mut authed = false;
    let mut chunks = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        log.lock().unwrap().commands.push(cmd.clone());
        let upper = cmd.to_ascii_uppercase();
        let w = reader.get_mut();
        if upper.starts_with("EHLO") {
            let mut caps = vec![
                "fake.upstream Hello".to_string(),
                "SIZE 35882577".into(),
                "PIPELINING".into(),
                "8BITMIME".into(),
            ];
            if opts.starttls && !tls_active && !opts.hide_starttls {
                caps.push("STARTTLS".into());
            }
            if tls_active || !opts.starttls {
                caps.push(format!(
                    "AUTH {}",
                    if opts.mechanisms.is_empty() {
                        "PLAIN LOGIN XOAUTH2"
                    } else {
                        opts.mechanisms
                    }
                ));
                caps.push("AUTH=LOGIN XOAUTH2".into());
            }
            caps.push("ENHANCEDSTATUSCODES".into());
            caps.push("CHUNKING".into());
            caps.push("SMTPUTF8".into());
            let n = caps.len();
            let mut out = String::new();
            for (i, c) in caps.iter().enumerate() {
                out.push_str(&format!("250{}{c}\r\n", if i + 1 == n { ' ' } else { '-' }));
            }
            w.write_all(out.as_bytes()).await?;
        } else if upper == "STARTTLS" {
            let mut reply = b"220 2.0.0 Ready\r\n".to_vec();
            if opts.inject_after_starttls {
                reply.extend_from_slice(b"250 injected\r\n");
            }
            w.write_all(&reply).await?;
            let inner = reader.into_inner();
            let tls = acceptor.as_ref().unwrap().accept(inner).await?;
            tls_active = true;
            reader = BufReader::new(Box::new(tls) as Box<dyn Io>);
        } else if let Some(args) = upper.strip_prefix("AUTH ") {
            if authed {
                w.write_all(b"503 5.5.1 Already authenticated\r\n").await?;
                continue;
            }
            let mech = args.split(' ').next().unwrap_or("").to_string();
            if cmd.len() > 5 + mech.len() {
                w.write_all(b"501 5.5.2 test server: initial response not expected\r\n")
                    .await?;
                continue;
            }
            if mech == "LOGIN" {
                // Username and password in two steps, as RFC-less LOGIN does; stored as PLAIN.
                let mut parts = Vec::new();
                for challenge in ["334 VXNlcm5hbWU6\r\n", "334 UGFzc3dvcmQ6\r\n"] {
                    reader.get_mut().write_all(challenge.as_bytes()).await?;
                    let mut resp = String::new();
                    reader.read_line(&mut resp).await?;
                    log.lock().unwrap().sasl.push(resp.trim_end().to_string());
                    parts.push(
                        String::from_utf8(STANDARD.decode(resp.trim_end()).unwrap_or_default())
                            .unwrap_or_default(),
                    );
                }
                let ok = accepted
                    .lock()
                    .unwrap()
                    .get(&parts[1])
                    .is_some_and(|u| *u == parts[0]);
                let w = reader.get_mut();
                if ok {
                    authed = true;
                    w.write_all(b"235 2.7.0 Authentication successful\r\n")
                        .await?;
                } else {
                    let line = opts
                        .auth_failure
                        .unwrap_or("535 5.7.3 Authentication unsuccessful [FAKE]");
                    w.write_all(format!("{line}\r\n").as_bytes()).await?;
                }
                continue;
            }
            w.write_all(b"334 \r\n").await?;
            let mut resp = String::new();
            reader.read_line(&mut resp).await?;
            let resp = resp.trim_end().to_string();
            log.lock().unwrap().sasl.push(resp.clone());
            let decoded = STANDARD.decode(&resp).unwrap_or_default();
            let ok = match mech.as_str() {
                "XOAUTH2" => {
                    let s = String::from_utf8_lossy(&decoded).to_string();
                    let parts: Vec<&str> = s.split('\x01').collect();
                    let user = parts
                        .first()
                        .and_then(|p| p.strip_prefix("user="))
                        .unwrap_or("");
                    let token = parts
                        .get(1)
                        .and_then(|p| p.strip_prefix("auth=Bearer "))
                        .unwrap_or("");
                    parts.len() == 4
                        && accepted
                            .lock()
                            .unwrap()
                            .get(token)
                            .is_some_and(|u| u == user)
                }
                "PLAIN" => {
                    let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
                    parts.len() == 3 && {
                        let user = String::from_utf8_lossy(parts[1]).to_string();
                        let pw = String::from_utf8_lossy(parts[2]).to_string();
                        accepted
                            .lock()
                            .unwrap()
                            .get(&pw)
                            .is_some_and(|u| *u == user)
                    }
                }
                _ => false,
            };
            let w = reader.get_mut();
            if ok {
                authed = true;
                log.lock().unwrap().auth_ok += 1;
                w.write_all(b"235 2.7.0 Authentication successful\r\n")
                    .await?;
            } else {
                log.lock().unwrap().auth_failed += 1;
                if mech == "XOAUTH2" && opts.json_challenge {
                    let json = STANDARD.encode(
                        br#"{"status":"401","schemes":"bearer","scope":"https://mail.example/"}"#,
                    );
                    w.write_all(format!("334 {json}\r\n").as_bytes()).await?;
                    let mut empty = String::new();
                    reader.read_line(&mut empty).await?;
                    log.lock().unwrap().sasl.push(empty.clone());
                    let w = reader.get_mut();
                    if empty == "\r\n" {
                        w.write_all(b"535 5.7.8 Username and Password not accepted\r\n")
                            .await?;
                    } else {
                        w.write_all(b"501 5.5.2 expected an empty response to the challenge\r\n")
                            .await?;
                    }
                } else {
                    let line = opts
                        .auth_failure
                        .unwrap_or("535 5.7.3 Authentication unsuccessful [FAKE]");
                    w.write_all(format!("{line}\r\n").as_bytes()).await?;
                }
            }
        } else if upper.starts_with("RCPT TO:<SENDAS-DENIED") && authed {
            // Exchange Online's answer when the mailbox may not send as the sender
            // (learn.microsoft.com/exchange/mail-flow-best-practices/non-delivery-reports-in-exchange-online/fix-error-code-5-7-60-in-exchange-online);
            // Exchange gives it for the sender, here a recipient picks it so a test can ask for it.
            w.write_all(
                b"550 5.7.60 SMTP; Client does not have permissions to send as this sender\r\n",
            )
            .await?;
        } else if upper.starts_with("RCPT TO:<NOBODY") && authed {
            // An unknown recipient, refused for good (RFC 3463 X.1.1).
            w.write_all(b"550 5.1.1 <nobody> User unknown\r\n").await?;
        } else if upper.starts_with("MAIL FROM") || upper.starts_with("RCPT TO") {
            if authed {
                w.write_all(b"250 2.1.0 Ok\r\n").await?;
            } else {
                w.write_all(b"530 5.7.57 Client not authenticated\r\n")
                    .await?;
            }
        } else if upper == "DATA" {
            if !authed {
                w.write_all(b"530 5.7.57 Client not authenticated\r\n")
                    .await?;
                continue;
            }
            w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await?;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if reader.read_until(b'\n', &mut l).await? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                data.extend_from_slice(&l);
            }
            log.lock().unwrap().messages.push(data);
            reader
                .get_mut()
                .write_all(b"250 2.0.0 Ok: queued as FAKE\r\n")
                .await?;
        } else if let Some(args) = upper.strip_prefix("BDAT ") {
            // RFC 3030: the chunk's octets follow the command line, counted, never scanned.
            let mut args = args.split_whitespace();
            let size: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let last = args.next() == Some("LAST");
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk).await?;
            chunks.extend_from_slice(&chunk);
            let w = reader.get_mut();
            if last {
                log.lock()
                    .unwrap()
                    .messages
                    .push(std::mem::take(&mut chunks));
                w.write_all(b"250 2.0.0 Ok: queued as FAKE\r\n").await?;
            } else {
                w.write_all(format!("250 2.0.0 Ok: {size} octets\r\n").as_bytes())
                    .await?;
            }
        } else if upper == "QUIT" {
            w.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            w.write_all(b"250 2.0.0 Ok\r\n").await?;
        } else {
            w.write_all(b"502 5.5.2 Error: command not recognized\r\n")
                .await?;
        }
    }
}
