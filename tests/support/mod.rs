//! In-process peers for the integration tests: a fake upstream SMTP server that checks XOAUTH2
//! tokens, scripted IMAP and POP3 servers ([`fake_imap`], [`fake_pop3`]), a fake OAuth token
//! endpoint, test certificates, and a raw line client. Everything listens on 127.0.0.1 with an
//! ephemeral port.
#![allow(dead_code)]

pub mod fake_imap;
pub mod fake_pop3;
pub mod full_relay;
pub mod haproxy;
pub mod hook;
pub mod maildir;
pub mod raw;
pub mod redis;
pub mod spool;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub const PASSWORD: &str = "local-password-canary-7f3e";
pub const HASH_OF_PASSWORD: &str = "$argon2id$v=19$m=19456,t=2,p=1$B4rerc+owRWnclVGCT9cjw$SLto+lNnxNskib1Ja9AQf2xzJEDgu1+dAEz1kb2dpLY";

// ------------------------------------------------------------------ every log line, scanned

/// Everything the relays of this test binary logged, at trace level.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends every relay log line of this test binary, at trace level, to a buffer that
/// [`assert_logs_clean`] scans.
fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .fmt_fields(authrelay::logging::SafeFields)
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| Capture)
            .try_init();
    });
}

/// What the relays of this test binary have logged so far.
pub fn captured_log() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned()
}

/// The first secret found in `log`: the secrets the in-process tests use, the password's
/// base64 (a SASL blob), and the shapes of the tokens the fake endpoint issues (access-N, rt-N).
pub fn find_secret_in(log: &str) -> Option<String> {
    let canaries = [
        PASSWORD,
        "client-secret-canary-91ab",
        "rt-initial-canary-55cd",
        "app-password-canary-0c1d",
    ];
    let password_b64 = STANDARD.encode(PASSWORD);
    if let Some(c) = canaries
        .iter()
        .copied()
        .chain([&password_b64[..16]])
        .find(|c| log.contains(c))
    {
        return Some(c.to_owned());
    }
    for prefix in ["access-", " rt-", "=rt-", "\"rt-"] {
        for (i, _) in log.match_indices(prefix) {
            if log[i + prefix.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
            {
                return Some(log[i..(i + 20).min(log.len())].to_owned());
            }
        }
    }
    None
}

/// Fails when anything logged so far holds a secret.
pub fn assert_logs_clean() {
    if let Some(found) = find_secret_in(&captured_log()) {
        panic!("{found} is in the relay log");
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, written to a temporary directory.
pub struct TestCert {
    pub dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCert {
    pub fn new() -> Self {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        TestCert { dir, cert, key }
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(
            authrelay::net::tls::server_config(&self.cert, &self.key).unwrap(),
        )
    }

    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

/// A free TCP port on 127.0.0.1 (for servers the tests start as processes).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ------------------------------------------------------------------ fake token endpoint

#[derive(Clone, Debug)]
pub enum TokenBehaviour {
    /// Issue `access-N` tokens and rotate refresh tokens `rt-N`.
    Issue,
    /// Answer with an OAuth error (HTTP 400).
    Error {
        error: &'static str,
        description: &'static str,
    },
    /// HTTP 500 with an HTML body.
    ServerError,
    /// Never answer within the relay's timeout.
    Hang,
    /// HTTP 200 with a body that is not JSON.
    Garbage,
    /// This status and JSON body, whatever was asked (hostile or broken endpoints).
    Raw { status: u16, body: String },
}

pub struct TokenEndpoint {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    pub behaviour: Arc<Mutex<TokenBehaviour>>,
    /// Refresh tokens the endpoint accepts.
    pub valid_refresh: Arc<Mutex<Vec<String>>>,
    /// Request bodies received, in order.
    pub bodies: Arc<Mutex<Vec<String>>>,
    /// Access tokens issued, in order.
    pub issued: Arc<Mutex<Vec<String>>>,
    pub expires_in: Arc<AtomicU64>,
}

impl TokenEndpoint {
    pub async fn start(initial_refresh: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ep = TokenEndpoint {
            addr: listener.local_addr().unwrap(),
            requests: Arc::default(),
            behaviour: Arc::new(Mutex::new(TokenBehaviour::Issue)),
            valid_refresh: Arc::new(Mutex::new(vec![initial_refresh.to_owned()])),
            bodies: Arc::default(),
            issued: Arc::default(),
            expires_in: Arc::new(AtomicU64::new(3600)),
        };
        let (requests, behaviour, valid, bodies, issued, expires_in) = (
            ep.requests.clone(),
            ep.behaviour.clone(),
            ep.valid_refresh.clone(),
            ep.bodies.clone(),
            ep.issued.clone(),
            ep.expires_in.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (requests, behaviour, valid, bodies, issued, expires_in) = (
                    requests.clone(),
                    behaviour.clone(),
                    valid.clone(),
                    bodies.clone(),
                    issued.clone(),
                    expires_in.clone(),
                );
                tokio::spawn(async move {
                    let mut reader = BufReader::new(tcp);
                    loop {
                        let mut len = 0usize;
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if h == "\r\n" {
                                break;
                            }
                            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; len];
                        reader.read_exact(&mut body).await.unwrap();
                        let body = String::from_utf8(body).unwrap();
                        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
                        bodies.lock().unwrap().push(body.clone());
                        let form: HashMap<String, String> = url_form(&body);
                        let b = behaviour.lock().unwrap().clone();
                        let (status, json) = match b {
                            TokenBehaviour::Hang => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                            TokenBehaviour::ServerError => (500, "<html>oops</html>".to_string()),
                            TokenBehaviour::Garbage => (200, "{not json".to_string()),
                            TokenBehaviour::Raw { status, body } => (status, body),
                            TokenBehaviour::Error { error, description } => (
                                400,
                                serde_json::json!({"error": error, "error_description": description}).to_string(),
                            ),
                            TokenBehaviour::Issue => {
                                let rt = form.get("refresh_token").cloned().unwrap_or_default();
                                let ok = valid.lock().unwrap().contains(&rt);
                                if !ok {
                                    (400, serde_json::json!({"error": "invalid_grant", "error_description": "AADSTS70000: The provided grant is invalid."}).to_string())
                                } else {
                                    let at = format!("access-{n}");
                                    let new_rt = format!("rt-{n}");
                                    *valid.lock().unwrap() = vec![new_rt.clone()];
                                    issued.lock().unwrap().push(at.clone());
                                    (200, serde_json::json!({"token_type": "Bearer", "access_token": at, "refresh_token": new_rt, "expires_in": expires_in.load(Ordering::SeqCst), "scope": "x"}).to_string())
                                }
                            }
                        };
                        let reason = if status == 200 { "OK" } else { "Error" };
                        let resp = format!(
                            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                            json.len()
                        );
                        if reader.get_mut().write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        ep
    }

    pub fn url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn set(&self, b: TokenBehaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    pub fn count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

fn url_form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode_pct(k), decode_pct(v)))
        .collect()
}

fn decode_pct(s: &str) -> String {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ------------------------------------------------------------------ fake upstream SMTP server

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

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

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

// ------------------------------------------------------------------ the relay under test

pub struct Relay {
    pub addr: SocketAddr,
    pub running: authrelay::app::Running,
    pub config: authrelay::config::Config,
    pub store_dir: tempfile::TempDir,
    pub log_scan: LogScan,
}

impl Relay {
    /// Starts a relay with `toml`. Unless the text has its own `[store]` and `[admin]`
    /// tables, the token store goes to a fresh temporary directory and the admin server is off.
    pub async fn start(toml: &str) -> Self {
        capture_logs();
        let mut config = authrelay::config::from_toml_str(toml)
            .unwrap_or_else(|p| panic!("config problems: {p:?}"));
        let store_dir = tempfile::tempdir().unwrap();
        if !toml.contains("[store]") {
            // Sealed with the local passwords, so that no token is fetched in the background
            // and each test counts only the token requests its logins make.
            config.store.path = store_dir.path().join("tokens.json");
            config.store.auto_key = false;
        }
        if !toml.contains("[admin]") {
            config.admin.listen = None;
        }
        let running = authrelay::app::start(&config).await.unwrap();
        let addr = running.addresses[0].1;
        Relay {
            addr,
            running,
            config,
            store_dir,
            log_scan: LogScan,
        }
    }

    pub fn token_requests(&self) -> u64 {
        self.running.shared.tokens.requests_made()
    }

    /// The admin server's address (the configuration must enable it).
    pub fn admin_addr(&self) -> SocketAddr {
        self.running
            .addresses
            .iter()
            .find(|(n, _)| n == "admin")
            .expect("the admin server is enabled")
            .1
    }
}

/// A relay configuration: one SMTP listener on an ephemeral port, one OAuth account
/// `user@example.com` (password [`PASSWORD`]), plus `extra` appended verbatim.
pub fn relay_toml(
    upstream: SocketAddr,
    upstream_tls: &str,
    token_url: &str,
    listener_extra: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[listener.smtp]
protocol = "smtp"
listen = "127.0.0.1:0"
upstream = "{upstream}"
upstream_tls = "{upstream_tls}"
connect_timeout_secs = 5
upstream_timeout_secs = 5
{spool}
{listener_extra}

[security]
failure_delay_ms = 0
token_timeout_secs = 2

[account.user]
login = "user@example.com"
password_hash = "{HASH_OF_PASSWORD}"
mailbox = "mailbox@example.com"
provider = "custom"
client_id = "client-id"
client_secret = "client-secret-canary-91ab"
token_url = "{token_url}"
refresh_token = "rt-initial-canary-55cd"
scopes = ["https://mail.example/.default", "offline_access"]
{extra}
"#,
        // These tests drive the live pipe unless they ask for the spool.
        spool = if listener_extra.contains("spool") {
            ""
        } else {
            "spool = false"
        },
    )
}

/// A relay with its fake upstream (which accepts the tokens `access-1` … `access-200` for
/// `mailbox@example.com`) and its fake token endpoint.
pub struct World {
    pub upstream: FakeUpstream,
    pub tokens: TokenEndpoint,
    pub relay: Relay,
}

/// A [`World`] with these upstream options and TLS, and `listener_extra` / `extra` added to the
/// configuration as in [`relay_toml`].
pub async fn world_with(
    opts: UpstreamOptions,
    upstream_tls: &str,
    listener_extra: &str,
    extra: &str,
    cert: Option<&TestCert>,
) -> World {
    let upstream = FakeUpstream::start(opts, cert).await;
    for n in 1..=200 {
        upstream.accept_token(&format!("access-{n}"), "mailbox@example.com");
    }
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let relay = Relay::start(&relay_toml(
        upstream.addr,
        upstream_tls,
        &tokens.url(),
        listener_extra,
        extra,
    ))
    .await;
    World {
        upstream,
        tokens,
        relay,
    }
}

// ------------------------------------------------------------------ a raw client

pub struct Client {
    reader: BufReader<Box<dyn Io>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Client {
            reader: BufReader::new(Box::new(tcp)),
        }
    }

    /// Connects from another loopback address (`127.0.0.2`, …): another client, as the relay
    /// sees it.
    pub async fn connect_from(addr: SocketAddr, from: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(from.parse().unwrap(), 0))
            .unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        Client {
            reader: BufReader::new(Box::new(tcp)),
        }
    }

    pub async fn connect_tls(addr: SocketAddr, cert: &TestCert) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = cert
            .connector()
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        Client {
            reader: BufReader::new(Box::new(tls)),
        }
    }

    /// Upgrades to TLS after a `220` to STARTTLS.
    pub async fn starttls(self, cert: &TestCert) -> Self {
        let inner = self.reader.into_inner();
        let tls = cert
            .connector()
            .connect(ServerName::try_from("localhost").unwrap(), inner)
            .await
            .unwrap();
        Client {
            reader: BufReader::new(Box::new(tls)),
        }
    }

    pub async fn send(&mut self, bytes: &str) {
        self.send_bytes(bytes.as_bytes()).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let w = self.reader.get_mut();
        w.write_all(bytes).await.unwrap();
        w.flush().await.unwrap();
    }

    /// Reads one complete SMTP reply (all its lines), or "" at end of stream.
    pub async fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(15), self.reader.read_line(&mut line))
                .await
                .expect("reply timed out")
                .unwrap_or(0);
            if n == 0 {
                return out;
            }
            out.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return out;
            }
        }
    }

    /// True when the server closed the connection (EOF) within a few seconds.
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.reader.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// EHLO, then the reply.
    pub async fn ehlo(&mut self) -> String {
        self.send("EHLO client.test\r\n").await;
        self.reply().await
    }
}

pub fn b64(s: &[u8]) -> String {
    STANDARD.encode(s)
}

pub fn plain(user: &str, pass: &str) -> String {
    b64(format!("\0{user}\0{pass}").as_bytes())
}
pub mod interop;
pub mod newcomer;

/// Held by every [`Relay`]: when the test is done with it, everything logged so far is scanned.
pub struct LogScan;

impl Drop for LogScan {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_logs_clean();
        }
    }
}
