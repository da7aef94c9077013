//! Getting tokens the four ways a user would, end to end: the account page in headless
//! Chromium, `authrelay login --device`, `authrelay login --paste`, and client credentials (secret
//! and certificate), each against the fake identity provider and proved by a login through a
//! running authrelay that Dovecot accepts (it introspects every token at the same provider).
//! Also the `mailbox~client_id` convention for IMAP and SMTP. Every log and page is scanned for
//! the secrets, tokens, codes, states and PKCE verifiers the provider handled.

mod support;

use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::csrf_of;
use support::interop::FullRelay;
use support::interop::*;

/// Debian's Python, which has Debian's selenium (another python3 may come first in PATH).
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

fn http_get(url: &str) -> String {
    let out = run(Command::new("curl").args(["-s", "--max-time", "10", url]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything the fake provider saw that must stay secret.
fn provider_secrets() -> Vec<String> {
    let seen: Vec<String> = serde_json::from_str(&http_get(&format!("http://{IDP}/seen"))).unwrap();
    seen.into_iter().filter(|s| s.len() >= 8).collect()
}

fn assert_clean(what: &str, text: &str, canaries: &[String]) {
    let mut all = canaries.to_vec();
    all.extend(provider_secrets());
    if let Some(found) = find_secret(text, &all) {
        panic!("{found} is in the {what}");
    }
    for prefix in ["code-", "dc-"] {
        if let Some(i) = text.find(prefix) {
            let hex = text
                .get(i + prefix.len()..i + prefix.len() + 32)
                .unwrap_or("");
            assert!(
                !hex.bytes().all(|b| b.is_ascii_hexdigit()) || hex.len() < 32,
                "a provider {prefix} value is in the {what}"
            );
        }
    }
}

#[test]
fn consent_page_in_headless_chromium_then_an_imap_login() {
    stack();
    let user = unique_user("page");
    let client_id = format!("page-client-{}", free_port());
    let secret = format!("page-secret-canary-{}", free_port());
    register_client(&format!(
        r#"{{"client_id":"{client_id}","secret":"{secret}"}}"#
    ));
    // The configuration leaves the client secret open: it is entered on the page.
    let r = FullRelay::start(&microsoft_account("scanner", &user, &client_id, ""), "");
    let before = r.imap_count("scanner@device.local", LOCAL_PASSWORD);
    assert!(before.starts_with("ERR"), "no token yet: {before}");

    let shots = std::env::var_os("AUTHRELAY_SHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| r.dir.path().join("shots"));
    std::fs::create_dir_all(&shots).unwrap();
    let out = run(Command::new(DEBIAN_PYTHON)
        .arg(root().join("tests/interop/consent_browser.py"))
        .args([&r.admin_url(), "scanner", LOCAL_PASSWORD, &secret])
        .arg(&shots));
    assert!(out.status.success(), "browser: {}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["saved"], "App registration saved.");
    assert_eq!(
        result["login_hint"],
        user.as_str(),
        "the mailbox is the login hint"
    );
    assert_eq!(
        result["url"],
        format!("{}/account/scanner?authorized=1", r.admin_url()).as_str()
    );
    assert_eq!(result["notice"], "Authorized: the refresh token is stored.");
    let state = result["state"].as_str().unwrap();
    assert!(state.starts_with("valid until "), "{state}");

    // The running relay logs in with the new token; Dovecot checks it at the provider.
    assert_eq!(
        r.imap_count("scanner@device.local", LOCAL_PASSWORD),
        "COUNT 0"
    );
    // The store holds no token in the clear.
    let stored = std::fs::read_to_string(&r.store).unwrap();
    let pages = std::fs::read_to_string(shots.join("pages.html")).unwrap();
    let canaries = vec![secret.clone(), LOCAL_PASSWORD.to_owned()];
    assert_clean("token store", &stored, &canaries);
    assert_clean("pages", &pages, &canaries);
    assert_clean("relay log", &r.log_text(), &canaries);
    assert!(r
        .log_text()
        .contains("account authorized on the account page"));
}

#[test]
fn a_declined_consent_is_explained_on_the_page() {
    stack();
    let client_id = format!("decline-client-{}", free_port());
    register_client(&format!(
        r#"{{"client_id":"{client_id}","secret":"s-{client_id}"}}"#
    ));
    let r = FullRelay::start(
        &microsoft_account(
            "scanner",
            &unique_user("decline"),
            &client_id,
            &format!("client_secret = \"s-{client_id}\""),
        ),
        "",
    );
    let shots = r.dir.path().join("shots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = run(Command::new(DEBIAN_PYTHON)
        .arg(root().join("tests/interop/consent_browser.py"))
        .args([&r.admin_url(), "scanner", LOCAL_PASSWORD, "-"])
        .arg(&shots)
        .arg("decline"));
    assert!(out.status.success(), "browser: {}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result["error"],
        "The identity provider refused the sign-in (AADSTS65004): User declined to consent to access the app."
    );
    assert!(result["state"]
        .as_str()
        .unwrap()
        .contains("not authorized yet"));
}

#[test]
fn the_admin_pages_refuse_other_hosts_and_forged_forms() {
    stack();
    let r = FullRelay::start(
        &microsoft_account("scanner", &unique_user("guard"), "guard-client", ""),
        "",
    );
    // DNS rebinding: a page on another name that resolves to 127.0.0.1.
    let out = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: attacker.example",
        &format!("http://127.0.0.1:{}/", r.admin),
    ]));
    assert_eq!(text(&out), "421");
    // A cross-site form post without the CSRF token.
    let out = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-d",
        &format!("csrf=forged&password={LOCAL_PASSWORD}"),
        &format!("{}/account/scanner/authorize", r.admin_url()),
    ]));
    assert_eq!(text(&out), "403");
    // A wrong local password on the page: refused, nothing stored.
    let page = http_get(&format!("{}/account/scanner", r.admin_url()));
    let csrf = csrf_of(&page);
    let out = run(Command::new("curl").args([
        "-s",
        "-d",
        &format!("csrf={csrf}&password=wrong"),
        &format!("{}/account/scanner/authorize", r.admin_url()),
    ]));
    assert!(text(&out).contains("Wrong local password for this account. Nothing was changed."));
    assert!(!r.store.exists());
    // Security headers.
    let out = run(Command::new("curl").args([
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("{}/", r.admin_url()),
    ]));
    let headers = text(&out).to_ascii_lowercase();
    assert!(headers.contains("cache-control: no-store"));
    assert!(headers.contains("content-security-policy: default-src 'none'"));
}

/// The account pages ask for the local password for every change and every sign-in, also with
/// a store key file, and count wrong passwords like mail logins do (plain HTTP, curl).
#[test]
fn the_account_pages_need_the_local_password_and_are_throttled() {
    stack();
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("store.key");
    std::fs::write(&key_file, "0123456789abcdef0123456789abcdef-page-key").unwrap();
    let r = FullRelay::start(
        &microsoft_account("scanner", &unique_user("pages"), "pages-client", ""),
        &format!(
            "[store]\npath = \"{}\"\nkey_file = \"{}\"",
            keys.path().join("state/tokens.json").display(),
            key_file.display()
        ),
    );
    let page = http_get(&format!("{}/account/scanner", r.admin_url()));
    assert!(
        page.contains("name=\"password\""),
        "the page asks for the password"
    );
    let csrf = csrf_of(&page);
    let post = |path: &str, form: &str| {
        let out = run(Command::new("curl").args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-d",
            form,
            &format!("{}/account/scanner/{path}", r.admin_url()),
        ]));
        text(&out)
    };
    // A change with the CSRF token alone (what any local process can read off the page).
    let out = post("app", &format!("csrf={csrf}&client_id=attacker-app"));
    assert!(out.ends_with("\n403"), "{out}");
    assert!(
        out.contains("local password: every change on this page needs it"),
        "{out}"
    );
    let out = post("authorize", &format!("csrf={csrf}"));
    assert!(out.ends_with("\n403"), "{out}");
    assert!(!http_get(&format!("{}/account/scanner", r.admin_url())).contains("attacker-app"));
    // Guessing on the page: ten checks, then refused unchecked.
    let mut wrong = 0;
    let mut throttled = 0;
    for i in 0..14 {
        let out = post("authorize", &format!("csrf={csrf}&password=guess-{i}"));
        if out.contains("Wrong local password") {
            wrong += 1;
        } else if out.contains("Too many failed logins") {
            throttled += 1;
        }
    }
    assert_eq!((wrong, throttled), (10, 4));
    let log = r.log_text();
    assert_eq!(
        log.matches("account page: wrong local password").count(),
        10,
        "{log}"
    );
    assert_eq!(
        log.matches("account page: refused, too many failed logins")
            .count(),
        4
    );
}

/// Reads the child's stdout until a line contains `needle`; returns the lines read.
#[test]
fn device_code_login_while_the_relay_runs() {
    stack();
    let user = unique_user("device");
    let client_id = format!("device-client-{}", free_port());
    // The provider asks to slow down once: the poll interval grows by 5 s.
    register_client(&format!(r#"{{"client_id":"{client_id}","slow_down":1}}"#));
    let r = FullRelay::start(&microsoft_account("scanner", &user, &client_id, ""), "");
    assert!(r
        .imap_count("scanner@device.local", LOCAL_PASSWORD)
        .starts_with("ERR"));

    let mut child = r.login_command("scanner", &["--device"]);
    writeln!(child.stdin.take().unwrap(), "{LOCAL_PASSWORD}").unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let lines = read_until(&mut out, "enter the code");
    let prompt = lines.last().unwrap();
    let (url, code) = device_prompt(prompt);
    assert_eq!(url, format!("http://{IDP}/devicelogin"));
    // The user enters the code on the provider's page (any browser).
    let started = Instant::now();
    let page = run(Command::new("curl").args([
        "-s",
        "-d",
        &format!("user_code={code}&user={user}"),
        &url,
    ]));
    assert!(
        text(&page).contains("You have signed in"),
        "{}",
        text(&page)
    );
    child.stdout = Some(out.into_inner());
    let (ok, output) = finish(child);
    assert!(ok, "{output}");
    assert!(output.contains("account scanner: authorized"), "{output}");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "slow_down was honoured"
    );

    // No restart: the running relay uses the stored token at the next login.
    assert_eq!(
        r.imap_count("scanner@device.local", LOCAL_PASSWORD),
        "COUNT 0"
    );
    assert_clean("login output", &output, &[LOCAL_PASSWORD.to_owned()]);
    assert_clean("relay log", &r.log_text(), &[LOCAL_PASSWORD.to_owned()]);
}

#[test]
fn device_code_with_a_wrong_local_password_changes_nothing() {
    stack();
    let client_id = format!("device-wrong-{}", free_port());
    register_client(&format!(r#"{{"client_id":"{client_id}"}}"#));
    // A store sealed with the local passwords: `authrelay login` asks for one.
    let r = FullRelay::start(
        &microsoft_account("scanner", &unique_user("dw"), &client_id, ""),
        "[store]\nseal = \"password\"",
    );
    let mut child = r.login_command("scanner", &["--device"]);
    writeln!(child.stdin.take().unwrap(), "not the password").unwrap();
    let (ok, output) = finish(child);
    assert!(!ok);
    assert!(
        output.contains("error: wrong local password for this account; nothing was changed"),
        "{output}"
    );
    assert!(!r.store.exists());
}

#[test]
fn paste_the_redirect_address_then_send_mail() {
    stack();
    let user = unique_user("paste");
    let client_id = format!("paste-client-{}", free_port());
    let secret = format!("paste-secret-canary-{}", free_port());
    register_client(&format!(
        r#"{{"client_id":"{client_id}","secret":"{secret}"}}"#
    ));
    let r = FullRelay::start(
        &microsoft_account(
            "scanner",
            &user,
            &client_id,
            &format!("client_secret = \"{secret}\""),
        ),
        "",
    );
    // The store key is made beside the store: no local password is asked for.
    let mut child = r.login_command("scanner", &["--paste"]);
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let lines = read_until(&mut out, "/authorize?");
    let authorize_url = lines.last().unwrap().trim().to_owned();
    assert!(authorize_url.contains("code_challenge_method=S256"));
    assert!(authorize_url.contains(&format!(
        "redirect_uri=http%3A%2F%2Flocalhost%3A{}%2Fregister_microsoft_graph_api%2F",
        r.admin
    )));
    let landed = consent_at_idp(&authorize_url, &user);
    let _ = read_until(&mut out, "paste it here");
    writeln!(stdin, "{landed}").unwrap();
    drop(stdin);
    child.stdout = Some(out.into_inner());
    let (ok, output) = finish(child);
    assert!(ok, "{output}");

    // Mail through the running relay, sent as the signed-in mailbox, reaches Dovecot.
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("paste-{}", free_port());
    let file = dir.path().join("m.eml");
    std::fs::write(&file, message(&marker, 0)).unwrap();
    assert_eq!(
        r.smtp_send("scanner@device.local", LOCAL_PASSWORD, &user, &user, &file),
        "OK"
    );
    assert!(delivered(&user, &marker, Duration::from_secs(30)).is_some());
    // A wrong sender is refused by the relay with a reply that says why.
    let refused = r.smtp_send(
        "scanner@device.local",
        LOCAL_PASSWORD,
        "boss@example.com",
        &user,
        &file,
    );
    assert!(
        refused
            .starts_with("ERR 550 5.7.60 Sender <boss@example.com> is not the signed-in mailbox"),
        "{refused}"
    );
    let canaries = vec![secret, LOCAL_PASSWORD.to_owned()];
    assert_clean("login output", &output, &canaries);
    assert_clean("relay log", &r.log_text(), &canaries);
}

#[test]
fn client_credentials_with_a_secret_and_with_a_certificate() {
    stack();
    let (secret_user, cert_user) = (unique_user("app-secret"), unique_user("app-cert"));
    let secret_client = format!("app-secret-client-{}", free_port());
    let cert_client = format!("app-cert-client-{}", free_port());
    let secret = format!("app-secret-canary-{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("app.pem"), dir.path().join("app.key"));
    let made = run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=authrelay-test-app",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    assert!(made.status.success(), "{}", text(&made));
    let cert_pem = std::fs::read_to_string(&cert).unwrap();
    register_client(&format!(
        r#"{{"client_id":"{secret_client}","secret":"{secret}","mailbox":"{secret_user}"}}"#
    ));
    register_client(
        &serde_json::json!({"client_id": cert_client, "cert_pem": cert_pem, "mailbox": cert_user})
            .to_string(),
    );
    let accounts = microsoft_account(
        "appsecret",
        &secret_user,
        &secret_client,
        &format!("auth = \"client_credentials\"\nclient_secret = \"{secret}\""),
    ) + &microsoft_account(
        "appcert",
        &cert_user,
        &cert_client,
        &format!(
            "auth = \"client_credentials\"\ncertificate = \"{}\"\ncertificate_key = \"{}\"",
            cert.display(),
            key.display()
        ),
    );
    let r = FullRelay::start(&accounts, "");
    // `authrelay login` proves the app registration works.
    let mut child = r.login_command("appcert", &[]);
    writeln!(child.stdin.take().unwrap(), "{LOCAL_PASSWORD}").unwrap();
    let (ok, output) = finish(child);
    assert!(ok, "{output}");
    assert!(output.contains("app-only token obtained"), "{output}");
    // Both log in through the relay; Dovecot accepts the app-only tokens.
    assert_eq!(
        r.imap_count("appsecret@device.local", LOCAL_PASSWORD),
        "COUNT 0"
    );
    assert_eq!(
        r.imap_count("appcert@device.local", LOCAL_PASSWORD),
        "COUNT 0"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&http_get(&format!("http://{IDP}/stats"))).unwrap();
    // The token `authrelay login` stored was used by the relay: one assertion in all.
    assert!(stats["assertions_verified"].as_u64().unwrap() >= 1);
    let canaries = vec![secret, LOCAL_PASSWORD.to_owned()];
    assert_clean("relay log", &r.log_text(), &canaries);
    assert_clean(
        "token store",
        &std::fs::read_to_string(&r.store).unwrap(),
        &canaries,
    );
}

#[test]
fn the_tilde_convention_for_imap_and_smtp() {
    stack();
    let user = unique_user("tilde");
    let client_id = format!("tilde-client-{}", free_port());
    let secret = format!("tilde-secret-canary-{}", free_port());
    register_client(&format!(
        r#"{{"client_id":"{client_id}","secret":"{secret}"}}"#
    ));
    let clients = format!(
        "[client.legacyapp]\nprovider = \"microsoft\"\nauthority = \"http://{IDP}\"\ntenant = \"contoso\"\nclient_id = \"{client_id}\"\nclient_secret = \"{secret}\"\n"
    );
    let r = FullRelay::start("", &clients);
    let login = format!("{user}~{client_id}");
    let rt = new_refresh_token(&user);
    assert_eq!(r.imap_count(&login, &rt), "COUNT 0");
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("tilde-{}", free_port());
    let file = dir.path().join("m.eml");
    std::fs::write(&file, message(&marker, 0)).unwrap();
    assert_eq!(r.smtp_send(&login, &rt, &user, &user, &file), "OK");
    assert!(delivered(&user, &marker, Duration::from_secs(30)).is_some());
    // Another client id is not configured: an ordinary failed login.
    let other = r.imap_count(&format!("{user}~unknown-client"), &rt);
    assert_eq!(other, "ERR [AUTHENTICATIONFAILED] Invalid credentials");
    assert_clean("relay log", &r.log_text(), &[secret, rt]);
    assert!(!r.store.exists(), "nothing of a ~ login is stored");
}

/// README.md, "Try it locally", step by step: the same commands, the same configuration file
/// (only the store goes to a temporary directory).
#[test]
fn the_readme_walkthrough_sets_up_three_accounts_three_ways() {
    stack();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("try-tokens.json");
    for body in [
        r#"{"client_id":"demo-client","secret":"demo-secret"}"#,
        r#"{"client_id":"demo-app","secret":"demo-app-secret","mailbox":"app@example.com"}"#,
    ] {
        let out = run(Command::new("curl").args([
            "-s",
            "-d",
            body,
            &format!("http://{IDP}/admin/client"),
        ]));
        assert_eq!(text(&out).trim(), r#"{"ok": true}"#);
    }
    let authrelay = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_authrelay"));
        c.current_dir(root())
            .args(args)
            .args(["--config", "config/authrelay.try.toml"])
            .env("AUTHRELAY__STORE__PATH", &store);
        c
    };
    let log = dir.path().join("authrelay.log");
    let relay = authrelay(&["run", "--log-level", "trace"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Killed however the test ends: it holds the walk-through's fixed ports.
    let _relay = KillOnDrop(relay);
    let deadline = Instant::now() + Duration::from_secs(20);
    for port in [1143, 2525, 9090] {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let status = |user: &str| {
        let out = run(Command::new("curl").args([
            "-s",
            "--max-time",
            "20",
            "--url",
            "imap://127.0.0.1:1143/INBOX",
            "--user",
            &format!("{user}:demo-password"),
            "-X",
            "STATUS INBOX (MESSAGES)",
        ]));
        text(&out).trim().to_owned()
    };
    assert_eq!(
        status("demo@device.local"),
        "",
        "not authorized yet: no answer"
    );

    // The page.
    let shots = dir.path().join("shots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = run(Command::new(DEBIAN_PYTHON)
        .arg(root().join("tests/interop/consent_browser.py"))
        .args([
            "http://localhost:9090",
            "demo",
            "demo-password",
            "demo-secret",
        ])
        .arg(&shots));
    assert!(out.status.success(), "browser: {}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        result["state"]
            .as_str()
            .unwrap()
            .starts_with("valid until "),
        "{result}"
    );

    // Device code.
    let mut child = authrelay(&["login", "device", "--device"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "demo-password").unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let lines = read_until(&mut out, "enter the code");
    let prompt = lines.last().unwrap();
    let (url, code) = device_prompt(prompt);
    let page = run(Command::new("curl").args([
        "-s",
        "-d",
        &format!("user_code={code}&user=device@example.com"),
        &url,
    ]));
    assert!(text(&page).contains("You have signed in"));
    child.stdout = Some(out.into_inner());
    let (ok, output) = finish(child);
    assert!(
        ok && output.contains("account device: authorized"),
        "{output}"
    );

    // Client credentials.
    let mut child = authrelay(&["login", "app"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "demo-password").unwrap();
    let (ok, output) = finish(child);
    assert!(ok && output.contains("app-only token obtained"), "{output}");

    // All three log in through the relay that kept running.
    for user in [
        "demo@device.local",
        "device@device.local",
        "app@device.local",
    ] {
        assert!(
            status(user).starts_with("* STATUS INBOX (MESSAGES "),
            "{user}: {}",
            status(user)
        );
    }
    let log = std::fs::read_to_string(&log).unwrap();
    assert_clean(
        "relay log",
        &log,
        &[
            "demo-secret".into(),
            "demo-app-secret".into(),
            "demo-password".into(),
        ],
    );
}
