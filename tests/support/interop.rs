//! The real-server interop stack (tests/harness) and the authrelay binary run against it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// The helpers that grew beside the stack, for the test crates that `use support::interop::*`
// (each crate uses some of them).
#[allow(unused_imports)]
pub use super::{full_relay::*, maildir::*, raw::*};

pub const IDP: &str = "127.0.0.1:11080";
pub const SUBMISSION: &str = "127.0.0.1:11587";
pub const SUBMISSIONS: &str = "127.0.0.1:11465";
pub const IMAP: &str = "127.0.0.1:11143";
pub const IMAPS: &str = "127.0.0.1:11993";
pub const POP3: &str = "127.0.0.1:11110";
pub const POP3S: &str = "127.0.0.1:11995";
pub const LOCAL_PASSWORD: &str = "Local-Canary-Pass-3141 with spaces";
pub const CLIENT_SECRET: &str = "client-secret-canary-2718";
/// The store key of spool-mode relays (a canary too).
pub const STORE_KEY: &str = "interop-store-key-canary-0123456789abcdef";
/// Marks where a test's own `[store]` table starts in an account's extra text.
const SHARED_STORE_MARK: &str = "# shared store";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn run_dir() -> PathBuf {
    std::env::var_os("HARNESS_RUN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("tests/harness/run"))
}

/// Starts the stack once per test binary (start.sh is idempotent and locked across binaries).
pub fn stack() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let out = Command::new("bash").arg(root().join("tests/harness/start.sh")).output().expect("bash");
        assert!(
            out.status.success(),
            "the interop stack did not start (Dovecot/Postfix from Debian are needed; run tests/run-all.sh):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

pub fn upstream_ca() -> PathBuf {
    run_dir().join("tls/ca.pem")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A raw HTTP/1.1 POST to the fake identity provider.
pub fn idp_post(path: &str, json: &str) {
    let mut s = TcpStream::connect(IDP).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: idp\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}", json.len()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

/// Registers a fresh refresh token for `user` and returns it.
pub fn new_refresh_token(user: &str) -> String {
    let rt = format!("rt-canary-{}-{}", std::process::id(), free_port());
    idp_post(
        "/admin/refresh",
        &format!(r#"{{"token":"{rt}","user":"{user}"}}"#),
    );
    rt
}

pub struct RelayProcess {
    /// The account's upstream mailbox: the sender SMTP tests must use.
    pub mailbox: String,
    child: Child,
    config_path: PathBuf,
    pub plain: u16,
    pub starttls: u16,
    pub implicit: u16,
    pub log: PathBuf,
    pub cert: super::TestCert,
    /// Values that must never appear in the log.
    pub canaries: Vec<String>,
    _dir: tempfile::TempDir,
}

pub struct AccountSpec<'a> {
    pub mailbox: &'a str,
    pub refresh_token: Option<&'a str>,
    pub token_url: String,
}

impl RelayProcess {
    /// Runs `authrelay run` with three SMTP listeners (plaintext, STARTTLS, implicit TLS) in
    /// front of `upstream`, and one account `scanner@example.com`.
    pub fn start(account: AccountSpec<'_>, upstream: &str, upstream_tls: &str) -> Self {
        Self::start_protocol("smtp", account, upstream, upstream_tls)
    }

    /// The same with listeners of `protocol` (`smtp`, `imap` or `pop3`).
    pub fn start_protocol(
        protocol: &str,
        account: AccountSpec<'_>,
        upstream: &str,
        upstream_tls: &str,
    ) -> Self {
        Self::start_with(protocol, account, upstream, upstream_tls, "", "")
    }

    /// SMTP listeners in spool mode, the spool in the relay's own directory; `account_extra`
    /// goes into the account's table.
    pub fn start_spool(
        account: AccountSpec<'_>,
        upstream: &str,
        upstream_tls: &str,
        account_extra: &str,
    ) -> Self {
        Self::start_with(
            "smtp",
            account,
            upstream,
            upstream_tls,
            "spool = true\n",
            account_extra,
        )
    }

    /// Spool listeners with `listener_extra` in each of their tables (trusted networks, PROXY
    /// v2, ...).
    pub fn start_spool_with(
        account: AccountSpec<'_>,
        upstream: &str,
        upstream_tls: &str,
        listener_extra: &str,
        account_extra: &str,
    ) -> Self {
        let listener_extra = format!("spool = true\n{listener_extra}");
        Self::start_with(
            "smtp",
            account,
            upstream,
            upstream_tls,
            &listener_extra,
            account_extra,
        )
    }

    /// Spool listeners whose token store is the shared one `store_table` describes (a whole
    /// `[store]` table: replicas).
    pub fn start_spool_shared(
        account: AccountSpec<'_>,
        upstream: &str,
        upstream_tls: &str,
        account_extra: &str,
        store_table: &str,
    ) -> Self {
        let account_extra = format!("{account_extra}\n{SHARED_STORE_MARK}\n{store_table}");
        Self::start_with(
            "smtp",
            account,
            upstream,
            upstream_tls,
            "spool = true\n",
            &account_extra,
        )
    }

    fn start_with(
        protocol: &str,
        account: AccountSpec<'_>,
        upstream: &str,
        upstream_tls: &str,
        listener_extra: &str,
        account_extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cert = super::TestCert::new();
        let (plain, starttls, implicit) = (free_port(), free_port(), free_port());
        let hash = hash_password(LOCAL_PASSWORD);
        let rt_line = account
            .refresh_token
            .map(|rt| format!("refresh_token = \"{rt}\""))
            .unwrap_or_default();
        // The live pipe unless the test asks for the spool.
        let listener_extra = if listener_extra.contains("spool") {
            listener_extra.to_owned()
        } else {
            format!("spool = false\n{listener_extra}")
        };
        let listener = |name: &str, port: u16, tls: &str| {
            format!(
                "[listener.{name}]\nprotocol = \"{protocol}\"\nlisten = \"127.0.0.1:{port}\"\ntls = \"{tls}\"\ncert = \"{}\"\nkey = \"{}\"\nupstream = \"{upstream}\"\nupstream_tls = \"{upstream_tls}\"\nupstream_ca = \"{}\"\nupstream_name = \"localhost\"\n{listener_extra}\n",
                cert.cert.display(),
                cert.key.display(),
                upstream_ca().display()
            )
        };
        // Spool mode with a store key file, as the README recommends: the spool delivers after
        // a restart without waiting for a device's login.
        let key_line = if listener_extra.contains("spool = true") {
            let key_file = dir.path().join("store.key");
            std::fs::write(&key_file, STORE_KEY).unwrap();
            format!("key_file = \"{}\"\n", key_file.display())
        } else {
            String::new()
        };
        let (account_extra, store_table) = match account_extra.split_once(SHARED_STORE_MARK) {
            Some((account, store)) => (account, store.to_owned()),
            None => (
                account_extra,
                format!(
                    "[store]\npath = \"{}\"\n{key_line}",
                    dir.path().join("tokens.json").display()
                ),
            ),
        };
        let config = format!(
            "{}{}{}[spool]\npath = \"{}\"\nmin_free_mb = 1\nfirst_retry_secs = 1\n\n{store_table}\n[admin]\nenabled = false\n\n[security]\nfailure_delay_ms = 200\n\n[account.scanner]\nlogin = \"scanner@example.com\"\npassword_hash = \"{hash}\"\nmailbox = \"{}\"\nprovider = \"custom\"\nclient_id = \"interop-client\"\nclient_secret = \"{CLIENT_SECRET}\"\ntoken_url = \"{}\"\n{rt_line}\n{account_extra}\n",
            listener("plain", plain, "none"),
            listener("starttls", starttls, "starttls"),
            listener("implicit", implicit, "implicit"),
            dir.path().join("spool").display(),
            account.mailbox,
            account.token_url,
        );
        let config_path = dir.path().join("authrelay.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("authrelay.log");
        let child = Command::new(env!("CARGO_BIN_EXE_authrelay"))
            .args(["run", "--config"])
            .arg(&config_path)
            .args(["--log-level", "trace"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let relay = RelayProcess {
            mailbox: account.mailbox.to_owned(),
            child,
            config_path: config_path.clone(),
            plain,
            starttls,
            implicit,
            log,
            cert,
            canaries: vec![
                LOCAL_PASSWORD.into(),
                CLIENT_SECRET.into(),
                account.refresh_token.unwrap_or("rt-canary").into(),
                hash,
                STORE_KEY.into(),
            ],
            _dir: dir,
        };
        for port in [plain, starttls, implicit] {
            wait_for_port(port, &relay.log);
        }
        relay
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails when the log holds any secret (see [`find_secret`]).
    pub fn assert_no_secrets(&self) {
        let log = self.log_text();
        assert!(log.len() > 200, "the relay logged almost nothing: {log}");
        if let Some(found) = find_secret(&log, &self.canaries) {
            panic!("{found} is in the relay log");
        }
    }
}

/// Looks for a secret in `log`: one of the `canaries`, a token the fake identity provider issued
/// (`at-`/`rt-` and 32 hex digits), or a SASL blob (base64 of `user=`, which starts every
/// XOAUTH2 blob, or the start of the test's PLAIN and password responses).
pub fn find_secret(log: &str, canaries: &[String]) -> Option<String> {
    if let Some(c) = canaries.iter().find(|c| log.contains(c.as_str())) {
        return Some(format!("the canary {c:?}"));
    }
    for prefix in ["at-", "rt-"] {
        if let Some(token) = issued_token(log, prefix) {
            return Some(format!("an issued token ({token}…)"));
        }
    }
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
    let blobs = [
        "dXNlcj1".to_string(),
        b64(LOCAL_PASSWORD)[..16].to_string(),
        b64("\0scanner@example.com\0")[..16].to_string(),
    ];
    blobs
        .into_iter()
        .find(|b| log.contains(b.as_str()))
        .map(|b| format!("a SASL blob ({b}…)"))
}

impl RelayProcess {
    /// The spool directory of a spool-mode relay.
    pub fn spool_dir(&self) -> PathBuf {
        self._dir.path().join("spool")
    }

    /// SIGKILL: no drain, no flush, no goodbye.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the relay again with the same configuration (and spool, and store).
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Command::new(env!("CARGO_BIN_EXE_authrelay"))
            .args(["run", "--config"])
            .arg(&self.config_path)
            .args(["--log-level", "trace"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        for port in [self.plain, self.starttls, self.implicit] {
            wait_for_port(port, &self.log);
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first `prefix` + 32 hex digits in `log` (the shape of the fake provider's tokens).
fn issued_token<'a>(log: &'a str, prefix: &str) -> Option<&'a str> {
    log.match_indices(prefix)
        .map(|(i, _)| &log[i..])
        .find_map(|rest| {
            let hex = rest.get(prefix.len()..prefix.len() + 32)?;
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| &rest[..prefix.len() + 6])
        })
}

fn wait_for_port(port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "authrelay did not listen on {port}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

pub fn hash_password(password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_authrelay"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs a command with a time limit; returns its output.
pub fn run(cmd: &mut Command) -> Output {
    let mut timed = Command::new("timeout");
    timed.arg("180").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            timed.env(k, v);
        }
    }
    if let Some(d) = cmd.get_current_dir() {
        timed.current_dir(d);
    }
    timed.stdin(Stdio::null()).output().expect("spawn")
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A unique test mailbox.
pub fn unique_user(tag: &str) -> String {
    format!("{tag}-{}-{}@example.com", std::process::id(), free_port())
}

/// A relay with `protocol` listeners in front of `upstream`, for a fresh refresh token of `user`.
pub fn relay_for(protocol: &str, user: &str, upstream: &str, upstream_tls: &str) -> RelayProcess {
    stack();
    let rt = new_refresh_token(user);
    RelayProcess::start_protocol(
        protocol,
        AccountSpec {
            mailbox: user,
            refresh_token: Some(&rt),
            token_url: format!("http://{IDP}/token"),
        },
        upstream,
        upstream_tls,
    )
}

/// The relay's port for a local TLS mode: `plain`, `starttls`/`stls`, or `implicit`.
pub fn port(r: &RelayProcess, mode: &str) -> u16 {
    match mode {
        "plain" => r.plain,
        "starttls" | "stls" => r.starttls,
        _ => r.implicit,
    }
}

/// A child process killed (and reaped) however the test ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The sign-in address and user code in `authrelay login --device`'s prompt
/// ("... open URL and enter the code CODE").
pub fn device_prompt(prompt: &str) -> (String, String) {
    let url = prompt
        .split("open ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no address in {prompt:?}"))
        .to_owned();
    let code = prompt.trim().rsplit(' ').next().unwrap().to_owned();
    (url, code)
}

/// An `[account.NAME]` table for the harness identity provider's Microsoft-style endpoints.
pub fn microsoft_account(name: &str, mailbox: &str, client_id: &str, extra: &str) -> String {
    let hash = hash_password(LOCAL_PASSWORD);
    format!(
        "[account.{name}]\nlogin = \"{name}@device.local\"\npassword_hash = \"{hash}\"\nmailbox = \"{mailbox}\"\nprovider = \"microsoft\"\nauthority = \"http://{IDP}\"\ntenant = \"contoso\"\nclient_id = \"{client_id}\"\n{extra}\n"
    )
}

/// Registers an app at the harness identity provider (`client_id`, optional `secret`, ...).
pub fn register_client(json: &str) {
    idp_post("/admin/client", json);
}

/// Lines of `authrelay login`'s output up to the first that holds `needle`.
pub fn read_until(out: &mut BufReader<std::process::ChildStdout>, needle: &str) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "ended before {needle:?}: {lines:?}"
        );
        let done = line.contains(needle);
        lines.push(line);
        if done {
            return lines;
        }
    }
}

/// Waits for `authrelay login` to end: whether it succeeded, and all it printed.
pub fn finish(mut child: Child) -> (bool, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            if let Some(mut s) = child.stdout.take() {
                let _ = s.read_to_string(&mut out);
            }
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.success(), out + &err);
        }
        assert!(Instant::now() < deadline, "authrelay login did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The user signs in as `user` at the harness identity provider's authorization page and
/// consents; returns the redirect address the browser lands on (curl posts the consent form and
/// reads where it redirects).
pub fn consent_at_idp(authorize_url: &str, user: &str) -> String {
    let page = String::from_utf8_lossy(
        &run(Command::new("curl").args(["-s", "--max-time", "10", authorize_url])).stdout,
    )
    .into_owned();
    let field = |name: &str| {
        page.split(&format!("name=\"{name}\" value=\""))
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("no {name} in {page}"))
            .replace("&amp;", "&")
    };
    let form: Vec<String> = [
        "client_id",
        "redirect_uri",
        "state",
        "code_challenge",
        "scope",
    ]
    .iter()
    .flat_map(|n| ["--data-urlencode".to_owned(), format!("{n}={}", field(n))])
    .collect();
    let consent = run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{redirect_url}"])
        .args(&form)
        .args([
            "--data-urlencode",
            &format!("user={user}"),
            "--data-urlencode",
            "decision=accept",
            &format!("http://{IDP}/contoso/oauth2/v2.0/authorize"),
        ]));
    let landed = text(&consent);
    assert!(
        landed.contains("/register_microsoft_graph_api/?code="),
        "{landed}"
    );
    landed
}
