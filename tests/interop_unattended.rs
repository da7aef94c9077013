//! The path a newcomer takes, end to end, against the harness (Dovecot and the fake identity
//! provider): the shipped example configuration with its defaults (SMTP spooling, the token
//! store with the key the relay makes itself), only endpoints and ports overridden through
//! `AUTHRELAY__...` variables. The relay runs from `/` (as under systemd), `authrelay login` from
//! another directory, everything under `umask 000`:
//!
//! 1. a device sends a message before anyone signed in: `250`, held in the spool;
//! 2. the relay restarts; the admin signs in (device code, or paste) while it runs;
//! 3. the held message is delivered with no device logging in since the restart;
//! 4. live IMAP and POP3 logins work, and another message goes out;
//! 5. after another restart, delivery and live logins still work;
//! 6. every file the relay wrote is private (0700 directories, 0600 files), and no secret is in
//!    the log or in what `authrelay login` printed.

mod support;

use std::io::{BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::hook::Hook;
use support::interop::*;

/// A relay started from the example configuration, as a newcomer would.
struct Newcomer {
    dir: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    smtp: u16,
    imap: u16,
    pop3: u16,
    log: PathBuf,
    user: String,
    /// `[store] seal = "password"`: `authrelay login` asks for the local password.
    password_sealed: bool,
}

impl Newcomer {
    fn new(tag: &str) -> Newcomer {
        stack();
        let user = unique_user(tag);
        let client_id = format!("{tag}-client-{}", free_port());
        register_client(&format!(r#"{{"client_id":"{client_id}"}}"#));
        let dir = tempfile::tempdir().unwrap();
        // The configuration in a directory of its own, as /etc/authrelay would be.
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let config = dir.path().join("etc/authrelay.toml");
        std::fs::copy(root().join("config/authrelay.example.toml"), &config).unwrap();
        let (smtp, imap, pop3, admin) = (free_port(), free_port(), free_port(), free_port());
        let ca = upstream_ca().display().to_string();
        let mut env: Vec<(String, String)> = vec![
            ("ADMIN__LISTEN".into(), format!("127.0.0.1:{admin}")),
            (
                "ADMIN__PUBLIC_URL".into(),
                format!("http://localhost:{admin}"),
            ),
            ("SPOOL__FIRST_RETRY_SECS".into(), "1".into()),
            (
                "ACCOUNT__SCANNER__PASSWORD_HASH".into(),
                hash_password(LOCAL_PASSWORD),
            ),
            ("ACCOUNT__SCANNER__MAILBOX".into(), user.clone()),
            (
                "ACCOUNT__SCANNER__AUTHORITY".into(),
                format!("http://{IDP}"),
            ),
            ("ACCOUNT__SCANNER__TENANT".into(), "contoso".into()),
            ("ACCOUNT__SCANNER__CLIENT_ID".into(), client_id),
        ];
        for (name, port, upstream) in [
            ("SMTP", smtp, SUBMISSION),
            ("IMAP", imap, IMAP),
            ("POP3", pop3, POP3),
        ] {
            let l = |key: &str| format!("LISTENER__{name}__{key}");
            env.extend([
                (l("PROTOCOL"), name.to_lowercase()),
                (l("LISTEN"), format!("127.0.0.1:{port}")),
                (l("UPSTREAM"), upstream.to_owned()),
                (l("UPSTREAM_TLS"), "starttls".to_owned()),
                (l("UPSTREAM_CA"), ca.clone()),
                (l("UPSTREAM_NAME"), "localhost".to_owned()),
            ]);
        }
        let env = env
            .into_iter()
            .map(|(k, v)| (format!("AUTHRELAY__{k}"), v))
            .collect();
        let log = dir.path().join("relay.log");
        Newcomer {
            dir,
            config,
            env,
            child: None,
            smtp,
            imap,
            pop3,
            log,
            user,
            password_sealed: false,
        }
    }

    /// The same with the token store sealed by each account's local password.
    fn password_sealed(tag: &str) -> Newcomer {
        let mut r = Newcomer::new(tag);
        r.env
            .push(("AUTHRELAY__STORE__SEAL".into(), "password".into()));
        r.password_sealed = true;
        r
    }

    /// `authrelay ARGS` under `umask 000`, from `cwd`, with the overrides.
    fn command(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("umask 000 && exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_authrelay"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .current_dir(cwd)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // From `/`, as systemd starts services.
        let child = self
            .command(Path::new("/"), &["run"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        for port in [self.smtp, self.imap, self.pop3] {
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "no listener on {port}: {}",
                    self.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("etc/state")
    }

    /// A message through the SMTP listener, as the device sends it.
    fn send(&self, marker: &str) -> String {
        let file = self.dir.path().join(format!("{marker}.eml"));
        let body = String::from_utf8(message(marker, 0)).unwrap();
        std::fs::write(&file, body.replace("alice@example.com", &self.user)).unwrap();
        let out = run(Command::new("python3")
            .arg(root().join("tests/interop/smtp_client.py"))
            .args([
                &self.smtp.to_string(),
                "plain",
                "PLAIN",
                "scanner@contoso.com",
                LOCAL_PASSWORD,
                &self.user,
                &self.user,
            ])
            .arg(&file));
        text(&out).trim().to_owned()
    }

    fn imap_count(&self) -> String {
        let out = run(Command::new("python3")
            .arg(root().join("tests/interop/imap_client.py"))
            .args([
                &self.imap.to_string(),
                "plain",
                "login",
                "scanner@contoso.com",
                LOCAL_PASSWORD,
            ])
            .arg(upstream_ca())
            .arg("count"));
        text(&out).trim().to_owned()
    }

    fn pop3_stat(&self) -> String {
        let out = run(Command::new("python3")
            .arg(root().join("tests/interop/pop3_client.py"))
            .args([
                &self.pop3.to_string(),
                "plain",
                "userpass",
                "scanner@contoso.com",
                LOCAL_PASSWORD,
            ])
            .arg(upstream_ca())
            .arg("stat"));
        text(&out).trim().to_owned()
    }

    /// `authrelay login scanner --device` or `--paste` from another directory, completed at the
    /// identity provider as the mailbox; what it printed.
    fn sign_in(&self, way: &str) -> String {
        let elsewhere = tempfile::tempdir().unwrap();
        let mut child = self
            .command(elsewhere.path(), &["login", "scanner", way])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if self.password_sealed {
            writeln!(stdin, "{LOCAL_PASSWORD}").unwrap();
        }
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut printed = Vec::new();
        if way == "--device" {
            let lines = read_until(&mut out, "enter the code");
            let (url, code) = device_prompt(lines.last().unwrap());
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains(&format!("Sign in as {}", self.user))),
                "the prompt names the mailbox: {lines:?}"
            );
            let page = run(Command::new("curl").args([
                "-s",
                "-d",
                &format!("user_code={code}&user={}", self.user),
                &url,
            ]));
            assert!(
                text(&page).contains("You have signed in"),
                "{}",
                text(&page)
            );
            printed.extend(lines);
        } else {
            let lines = read_until(&mut out, "/authorize?");
            let landed = consent_at_idp(lines.last().unwrap().trim(), &self.user);
            if self.running() {
                // The browser lands on the running relay's page, which sends the user back to
                // the terminal instead of calling the sign-in broken.
                let page = run(Command::new("curl").args(["-s", "-w", "%{http_code}", &landed]));
                let page = text(&page);
                assert!(
                    page.contains("Finish the sign-in in the terminal")
                        && page.contains("paste it there")
                        && page.ends_with("200"),
                    "{page}"
                );
            }
            printed.extend(lines);
            printed.extend(read_until(&mut out, "paste it here"));
            writeln!(stdin, "{landed}").unwrap();
        }
        drop(stdin);
        child.stdout = Some(out.into_inner());
        let (ok, output) = finish(child);
        let output = printed.concat() + &output;
        assert!(ok, "{output}");
        // Nothing was made where the command ran: it found the relay's store.
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        output
    }
}

impl Drop for Newcomer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every path under `dir` with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut found = vec![(
        dir.to_owned(),
        std::fs::metadata(dir).unwrap().mode() & 0o777,
    )];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = e.metadata().unwrap();
        if meta.is_dir() {
            found.extend(modes(&e.path()));
        } else {
            found.push((e.path(), meta.mode() & 0o777));
        }
    }
    found
}

fn newcomer_flow(way: &str) {
    let mut r = Newcomer::new(&format!("new{}", &way[2..]));
    r.start();
    // 1. Before anyone signed in, the scanner's test message is held, not lost.
    let early = format!("early-{}", free_port());
    assert_eq!(r.send(&early), "OK", "{}", r.log_text());
    // The held message and its delivery record, written under umask 000, are private.
    let spool = r.state().join("spool");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(spool.join("state")).unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "no deferral: {}", r.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let held = modes(&spool);
    for sub in ["queue", "state"] {
        assert!(
            held.iter()
                .any(|(p, m)| p.parent() == Some(&spool.join(sub)) && *m == 0o600),
            "{held:?}"
        );
    }
    assert!(
        held.iter().all(|(_, m)| *m == 0o600 || *m == 0o700),
        "{held:?}"
    );
    // Readiness tells the truth: up, but this account cannot send yet.
    let health = run(&mut r.command(Path::new("/"), &["health"]));
    assert!(health.status.success(), "{}", text(&health));
    assert!(
        text(&health).starts_with("ready, degraded: account scanner: not authorized yet"),
        "{}",
        text(&health)
    );
    // The live check meets what the device would: no token yet, said in the device's words.
    let live = run(&mut r.command(Path::new("/"), &["check", "--live"]));
    assert!(!live.status.success(), "{}", text(&live));
    assert!(
        text(&live).contains("live: account scanner via listener smtp (")
            && text(&live).contains(": FAILED: Sign-in for"),
        "{}",
        text(&live)
    );
    // 2. A restart, then the sign-in with the relay running, from another directory.
    r.stop();
    r.start();
    let output = r.sign_in(way);
    let signed_in_at = r.log_text().len();
    let store = r.state().join("tokens.json");
    assert!(
        output.contains(&format!("tokens stored in {}", store.display())),
        "the absolute store path: {output}"
    );
    // 3. Delivered with no device login since the restart.
    assert!(
        delivered(&r.user, &early, Duration::from_secs(60)).is_some(),
        "the held message was not delivered: {}",
        r.log_text()
    );
    let health = run(&mut r.command(Path::new("/"), &["health"]));
    assert!(
        health.status.success() && text(&health).starts_with("ready\n"),
        "{}",
        text(&health)
    );
    // The live check agrees: every listener's upstream takes the account's login.
    let live = run(&mut r.command(Path::new("/"), &["check", "--live"]));
    let said = text(&live);
    eprintln!("{said}");
    assert!(live.status.success(), "{said}");
    for login in [
        "SMTP AUTH accepted",
        "IMAP AUTHENTICATE accepted",
        "POP3 AUTH accepted",
    ] {
        assert!(said.contains(login), "{said}");
    }
    // 4. Live logins, and another message.
    assert_eq!(r.imap_count(), "COUNT 1", "{}", r.log_text());
    assert!(r.pop3_stat().starts_with("STAT 1 "), "{}", r.log_text());
    let second = format!("second-{}", free_port());
    assert_eq!(r.send(&second), "OK");
    assert!(delivered(&r.user, &second, Duration::from_secs(30)).is_some());
    // 5. Across another restart.
    r.stop();
    r.start();
    assert_eq!(r.imap_count(), "COUNT 2", "{}", r.log_text());
    let third = format!("third-{}", free_port());
    assert_eq!(r.send(&third), "OK");
    assert!(delivered(&r.user, &third, Duration::from_secs(30)).is_some());
    let log = r.log_text();
    // Once signed in, no delivery or login is told the account has no refresh token (the
    // deferrals before the sign-in rightly were).
    let after = &log[signed_in_at..];
    assert!(!after.contains("no_refresh_token"), "{after}");
    // 6. Private files, whatever the umask.
    let written = modes(&r.state());
    for (path, mode) in &written {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:o}", path.display());
    }
    assert!(written.iter().any(|(p, _)| p.ends_with("store.key")));
    assert!(written.iter().any(|(p, _)| p.ends_with("tokens.json")));
    let key = std::fs::read_to_string(r.state().join("store.key")).unwrap();
    let canaries = vec![LOCAL_PASSWORD.to_owned(), key.trim().to_owned()];
    for (what, text) in [("relay log", &log), ("login output", &output)] {
        if let Some(found) = find_secret(text, &canaries) {
            panic!("{found} is in the {what}");
        }
    }
}

#[test]
fn newcomer_with_the_device_code_flow() {
    newcomer_flow("--device");
}

#[test]
fn newcomer_with_the_paste_flow() {
    newcomer_flow("--paste");
}

/// The flow the defect report describes, with the store sealed by the local password: signed in
/// with `authrelay login --device` while the relay runs, then a spooled message, live IMAP and
/// POP3 logins, a restart, another message. Each device login gives the relay the key.
#[test]
fn a_password_sealed_store_serves_the_spool_and_live_logins() {
    let mut r = Newcomer::password_sealed("sealed");
    let check = run(&mut r.command(Path::new("/"), &["check"]));
    assert!(
        text(&check).contains("warning: store.seal: \"password\" with a spooling listener"),
        "{}",
        text(&check)
    );
    r.start();
    r.sign_in("--device");
    let first = format!("sealed-{}", free_port());
    assert_eq!(r.send(&first), "OK");
    assert!(
        delivered(&r.user, &first, Duration::from_secs(30)).is_some(),
        "{}",
        r.log_text()
    );
    assert_eq!(r.imap_count(), "COUNT 1", "{}", r.log_text());
    assert!(r.pop3_stat().starts_with("STAT 1 "), "{}", r.log_text());
    r.stop();
    r.start();
    let second = format!("sealed2-{}", free_port());
    assert_eq!(r.send(&second), "OK");
    assert!(
        delivered(&r.user, &second, Duration::from_secs(30)).is_some(),
        "{}",
        r.log_text()
    );
    assert_eq!(r.imap_count(), "COUNT 2", "{}", r.log_text());
    assert!(!r.log_text().contains("no_refresh_token"));
    assert!(!r.state().join("store.key").exists());
}

/// An account that delivered once loses its grant (revoked at the identity provider) while a
/// message waits: the relay keeps the message, calls for help on the webhook and by mail
/// through another account (a real Dovecot mailbox), says the spool is stuck, and once the
/// admin signs in again delivers it and says each event is over, once. No secret in any alert.
#[test]
fn an_unattended_relay_calls_for_help_and_says_when_it_is_over() {
    let mut r = Newcomer::new("alerts");
    let hook = Hook::start();
    let admin = unique_user("itadmin");
    let sender_box = unique_user("alertbox");
    let alerts_token = new_refresh_token(&sender_box);
    let webhook_secret = format!("T0/B0/hook-canary-{}", free_port());
    let client_id = r
        .env
        .iter()
        .find(|(k, _)| k == "AUTHRELAY__ACCOUNT__SCANNER__CLIENT_ID")
        .map(|(_, v)| v.clone())
        .unwrap();
    for (k, v) in [
        (
            "ALERTS__WEBHOOK_URL",
            format!("http://127.0.0.1:{}/{webhook_secret}", hook.port),
        ),
        ("ALERTS__EMAIL_TO", admin.clone()),
        ("ALERTS__EMAIL_ACCOUNT", "alerts".into()),
        ("ALERTS__SPOOL_STUCK_MINUTES", "1".into()),
        ("ACCOUNT__ALERTS__LOGIN", "alerts@contoso.com".into()),
        (
            "ACCOUNT__ALERTS__PASSWORD_HASH",
            hash_password(LOCAL_PASSWORD),
        ),
        ("ACCOUNT__ALERTS__MAILBOX", sender_box.clone()),
        ("ACCOUNT__ALERTS__PROVIDER", "microsoft".into()),
        ("ACCOUNT__ALERTS__AUTHORITY", format!("http://{IDP}")),
        ("ACCOUNT__ALERTS__TENANT", "contoso".into()),
        ("ACCOUNT__ALERTS__CLIENT_ID", client_id),
        ("ACCOUNT__ALERTS__REFRESH_TOKEN", alerts_token.clone()),
    ] {
        r.env.push((format!("AUTHRELAY__{k}"), v));
    }
    r.start();
    r.sign_in("--device");
    let first = format!("first-{}", free_port());
    assert_eq!(r.send(&first), "OK");
    assert!(
        delivered(&r.user, &first, Duration::from_secs(60)).is_some(),
        "{}",
        r.log_text()
    );
    // The grant is revoked (a password reset, an admin's "revoke sessions").
    idp_post("/admin/revoke", &format!(r#"{{"user":"{}"}}"#, r.user));
    let held = format!("held-{}", free_port());
    let t0 = Instant::now();
    assert_eq!(
        r.send(&held),
        "OK",
        "it delivered before: the message is held"
    );
    let grant = hook.wait_for("GrantRefused", "firing", t0, Duration::from_secs(60));
    let mail = delivered(
        &admin,
        "FIRING: GrantRefused for account scanner",
        Duration::from_secs(60),
    )
    .unwrap_or_else(|| panic!("no alert mail: {}", r.log_text()));
    let mail_latency = t0.elapsed();
    let stuck = hook.wait_for("SpoolStuck", "firing", t0, Duration::from_secs(120));
    // The admin signs in again; the held message goes out with the next try.
    r.sign_in("--device");
    let t1 = Instant::now();
    let flush = run(&mut r.command(Path::new("/"), &["queue", "flush"]));
    assert!(flush.status.success(), "{}", text(&flush));
    assert!(
        delivered(&r.user, &held, Duration::from_secs(90)).is_some(),
        "{}",
        r.log_text()
    );
    let grant_over = hook.wait_for("GrantRefused", "resolved", t1, Duration::from_secs(60));
    let stuck_over = hook.wait_for("SpoolStuck", "resolved", t1, Duration::from_secs(60));
    assert!(
        delivered(
            &admin,
            "RESOLVED: GrantRefused for account scanner",
            Duration::from_secs(60)
        )
        .is_some(),
        "{}",
        r.log_text()
    );
    // Each event once, and its resolution once.
    std::thread::sleep(Duration::from_secs(2));
    let events = hook.events();
    for (event, status) in [
        ("GrantRefused", "firing"),
        ("GrantRefused", "resolved"),
        ("SpoolStuck", "firing"),
        ("SpoolStuck", "resolved"),
    ] {
        let n = events
            .iter()
            .filter(|e| e["event"] == event && e["status"] == status)
            .count();
        assert_eq!(n, 1, "{event} {status}: {events:?}");
    }
    let fired = &events
        .iter()
        .find(|e| e["event"] == "GrantRefused")
        .unwrap();
    assert_eq!(fired["account"], "scanner");
    assert!(
        fired["action"].as_str().unwrap().contains("sign in again"),
        "{fired}"
    );
    // No secret in the alerts, the alert mail or the log.
    let key = std::fs::read_to_string(r.state().join("store.key")).unwrap();
    let canaries = [
        webhook_secret.clone(),
        LOCAL_PASSWORD.to_owned(),
        alerts_token,
        key.trim().to_owned(),
    ];
    let bodies: String = hook
        .posts
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    let mail = String::from_utf8_lossy(&mail).into_owned();
    for (what, text) in [
        ("webhook", &bodies),
        ("mail", &mail),
        ("log", &r.log_text()),
    ] {
        assert_eq!(find_secret(text, &canaries), None, "a secret in the {what}");
    }
    r.stop();
    eprintln!(
        "alert latencies: GrantRefused webhook {:.1} s and mail {:.1} s after the message; \
         SpoolStuck {:.1} s (threshold 60 s); resolved {:.1} s / {:.1} s after the new sign-in",
        grant.as_secs_f64(),
        mail_latency.as_secs_f64(),
        stuck.as_secs_f64(),
        grant_over.as_secs_f64(),
        stuck_over.as_secs_f64()
    );
}
