//! In-process peers for the integration tests: a fake upstream SMTP server that checks XOAUTH2
//! tokens, scripted IMAP and POP3 servers ([`fake_imap`], [`fake_pop3`]), a fake OAuth token
//! endpoint, test certificates, and a raw line client. Everything listens on 127.0.0.1 with an
//! ephemeral port.
#![allow(dead_code)]

pub mod fake_imap;
pub mod fake_pop3;
mod fake_smtp;
pub mod full_relay;
pub mod haproxy;
pub mod hook;
pub mod maildir;
pub mod raw;
pub mod redis;
pub mod spool;
mod token_endpoint;

pub use fake_smtp::*;
pub use token_endpoint::*;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

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

/// The CSRF token an account page's forms carry.
pub fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no form with a CSRF token: {page}"))
        .to_owned()
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
