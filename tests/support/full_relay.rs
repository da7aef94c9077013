//! A whole authrelay process in front of the interop stack: IMAP, SMTP and POP3 listeners,
//! the admin server, and the accounts a test gives.

use super::interop::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An authrelay process with an IMAP and an SMTP listener (plaintext towards the client),
/// Dovecot and Postfix submission upstream, the admin server, and `accounts` (TOML).
pub struct FullRelay {
    pub child: Child,
    pub config: PathBuf,
    /// The configuration as written, for tests that change it and send SIGHUP.
    pub config_text: String,
    pub imap: u16,
    pub smtp: u16,
    pub pop3: u16,
    pub admin: u16,
    pub log: PathBuf,
    pub store: PathBuf,
    pub dir: tempfile::TempDir,
}

impl FullRelay {
    pub fn start(accounts: &str, extra: &str) -> FullRelay {
        Self::start_with(accounts, extra, "")
    }

    /// With `listener_extra` added to every listener table.
    pub fn start_with(accounts: &str, extra: &str, listener_extra: &str) -> FullRelay {
        Self::start_opts(accounts, extra, listener_extra, "trace")
    }

    /// With a log level of its own (a long soak at trace level would fill the disk).
    pub fn start_opts(
        accounts: &str,
        extra: &str,
        listener_extra: &str,
        log_level: &str,
    ) -> FullRelay {
        stack();
        let dir = tempfile::tempdir().unwrap();
        let (imap, smtp, pop3, admin) = (free_port(), free_port(), free_port(), free_port());
        let store = dir.path().join("state/tokens.json");
        let ca = upstream_ca();
        let config = format!(
            r#"[listener.imap]
protocol = "imap"
listen = "127.0.0.1:{imap}"
upstream = "{IMAP}"
upstream_tls = "starttls"
upstream_ca = "{ca}"
upstream_name = "localhost"
tilde_login = true
{listener_extra}

[listener.smtp]
protocol = "smtp"
listen = "127.0.0.1:{smtp}"
upstream = "{SUBMISSION}"
upstream_tls = "starttls"
upstream_ca = "{ca}"
upstream_name = "localhost"
tilde_login = true
{listener_extra}

[listener.pop3]
protocol = "pop3"
listen = "127.0.0.1:{pop3}"
upstream = "{POP3}"
upstream_tls = "starttls"
upstream_ca = "{ca}"
upstream_name = "localhost"
{listener_extra}

[admin]
listen = "127.0.0.1:{admin}"
public_url = "http://localhost:{admin}"

{store_table}

{security_table}

{extra}

{accounts}
"#,
            ca = ca.display(),
            security_table = if extra.contains("[security]") {
                String::new()
            } else {
                "[security]\nfailure_delay_ms = 100\ntoken_timeout_secs = 10".to_owned()
            },
            store_table = if extra.contains("[store]") {
                String::new()
            } else {
                format!("[store]\npath = \"{}\"", store.display())
            },
        );
        let path = dir.path().join("authrelay.toml");
        std::fs::write(&path, &config).unwrap();
        let log = dir.path().join("authrelay.log");
        let child = Command::new(env!("CARGO_BIN_EXE_authrelay"))
            .args(["run", "--log-level", log_level, "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let r = FullRelay {
            child,
            config: path,
            config_text: config,
            imap,
            smtp,
            pop3,
            admin,
            log,
            store,
            dir,
        };
        wait_for_listeners(&[imap, smtp, pop3, admin], || r.log_text());
        r
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn admin_url(&self) -> String {
        format!("http://localhost:{}", self.admin)
    }

    /// `authrelay login ACCOUNT ARGS` against this relay's configuration.
    pub fn login_command(&self, account: &str, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_authrelay"))
            .args(["login", account, "--config"])
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn imap_count(&self, user: &str, password: &str) -> String {
        let out = run(Command::new("python3")
            .arg(root().join("tests/interop/imap_client.py"))
            .args([&self.imap.to_string(), "plain", "login", user, password])
            .arg(upstream_ca())
            .arg("count"));
        text(&out).trim().to_owned()
    }

    pub fn smtp_send(
        &self,
        user: &str,
        password: &str,
        from: &str,
        to: &str,
        file: &Path,
    ) -> String {
        let out = run(Command::new("python3")
            .arg(root().join("tests/interop/smtp_client.py"))
            .args([
                &self.smtp.to_string(),
                "plain",
                "PLAIN",
                user,
                password,
                from,
                to,
            ])
            .arg(file));
        text(&out).trim().to_owned()
    }
}

impl Drop for FullRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `toml` to `dir/authrelay.toml` and runs `authrelay run --log-level debug` with it,
/// its log in `dir/authrelay.log`; returns once each of `ports` accepts: the child, the
/// configuration's path and the log's.
pub fn spawn_relay(dir: &Path, toml: &str, ports: &[u16]) -> (Child, PathBuf, PathBuf) {
    let config = dir.join("authrelay.toml");
    std::fs::write(&config, toml).unwrap();
    let log = dir.join("authrelay.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_authrelay"))
        .args(["run", "--log-level", "debug", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // A relay that never listens is stopped before the panic goes on.
    let ready = std::panic::catch_unwind(|| {
        wait_for_listeners(ports, || std::fs::read_to_string(&log).unwrap_or_default())
    });
    if let Err(e) = ready {
        let _ = child.kill();
        let _ = child.wait();
        std::panic::resume_unwind(e);
    }
    (child, config, log)
}

/// Waits up to 20 s until each of `ports` on 127.0.0.1 accepts; `log` says why not.
pub fn wait_for_listeners(ports: &[u16], log: impl Fn() -> String) {
    for &port in ports {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "no listener on {port}: {}",
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
