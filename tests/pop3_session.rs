//! POP3 sessions against small scripted upstreams, for what a real server never does: refuse
//! STLS, inject bytes after the STLS go-ahead, send an APOP timestamp or a Gmail-style error
//! challenge. Replies are checked byte for byte.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A scripted POP3 server: greets, answers CAPA with `capa`, STLS with `stls_reply`, and checks
/// XOAUTH2 logins two-step against `token` (the error challenge first when it does not match).
/// Every line it receives is logged.
async fn fake_pop3(
    greeting: &'static str,
    capa: &'static str,
    stls_reply: &'static str,
    token: &'static str,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let log = log2.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(tcp);
                r.get_mut()
                    .write_all(format!("{greeting}\r\n").as_bytes())
                    .await
                    .unwrap();
                let mut pending = PasswordState::Idle;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end().to_string();
                    log.lock().unwrap().push(line.clone());
                    if let Some(reply) = password_step(&line, &mut pending) {
                        if r.get_mut().write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let reply = match line.as_str() {
                        "CAPA" => format!("+OK\r\n{capa}.\r\n"),
                        "STLS" => stls_reply.to_string(),
                        "AUTH XOAUTH2" => "+ \r\n".to_string(),
                        "QUIT" => "+OK bye\r\n".to_string(),
                        "STAT" => "+OK 0 0\r\n".to_string(),
                        blob => {
                            let raw = base64::Engine::decode(
                                &base64::engine::general_purpose::STANDARD,
                                blob,
                            )
                            .unwrap_or_default();
                            if String::from_utf8_lossy(&raw)
                                .contains(&format!("auth=Bearer {token}\u{1}"))
                            {
                                "+OK Logged in.\r\n".to_string()
                            } else if blob.is_empty() {
                                "-ERR [AUTH] Authentication failed.\r\n".to_string()
                            } else {
                                let json = base64::Engine::encode(
                                    &base64::engine::general_purpose::STANDARD,
                                    br#"{"status":"401","schemes":"bearer"}"#,
                                );
                                format!("+ {json}\r\n")
                            }
                        }
                    };
                    if r.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, log)
}

/// Upstream accounts for the password modes.
const PASSWORD_ACCOUNTS: [(&str, &str); 2] = [
    ("shared@example.com", "app pass with spaces"),
    ("through@example.com", "their-own-password"),
];

enum PasswordState {
    Idle,
    PlainBlob,
    User(String),
}

/// AUTH PLAIN (two-step) and USER/PASS against [`PASSWORD_ACCOUNTS`]; `None` for other lines.
fn password_step(line: &str, state: &mut PasswordState) -> Option<String> {
    let ok = |u: &str, p: &str| {
        PASSWORD_ACCOUNTS
            .iter()
            .any(|(au, ap)| *au == u && *ap == p)
    };
    let verdict = |good: bool| {
        if good {
            "+OK Logged in.\r\n".to_string()
        } else {
            "-ERR [AUTH] Authentication failed.\r\n".to_string()
        }
    };
    match std::mem::replace(state, PasswordState::Idle) {
        PasswordState::PlainBlob => {
            let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, line)
                .unwrap_or_default();
            let parts: Vec<String> = raw
                .split(|&b| b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            Some(verdict(parts.len() == 3 && ok(&parts[1], &parts[2])))
        }
        PasswordState::User(u) => Some(verdict(
            line.strip_prefix("PASS ").is_some_and(|p| ok(&u, p)),
        )),
        PasswordState::Idle => {
            if line == "AUTH PLAIN" {
                *state = PasswordState::PlainBlob;
                Some("+ \r\n".into())
            } else if let Some(u) = line.strip_prefix("USER ") {
                *state = PasswordState::User(u.to_string());
                Some("+OK\r\n".into())
            } else {
                None
            }
        }
    }
}

fn pop3_toml(upstream: SocketAddr, upstream_tls: &str, token_url: &str) -> String {
    // No probe at start: the upstreams' logs hold the sessions' commands only.
    relay_toml(
        upstream,
        upstream_tls,
        token_url,
        "upstream_probe = false",
        "",
    )
    .replacen("protocol = \"smtp\"", "protocol = \"pop3\"", 1)
}

#[tokio::test]
async fn the_greeting_is_local_and_login_is_two_step_xoauth2() {
    let (addr, log) = fake_pop3(
        "+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>",
        "USER\r\nSASL XOAUTH2\r\n",
        "-ERR no\r\n",
        "access-1",
    )
    .await;
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let relay = Relay::start(&pop3_toml(addr, "none", &tokens.url())).await;
    let mut c = Client::connect(relay.addr).await;
    // The relay's own greeting: no upstream before login, so no APOP timestamp to leak.
    assert_eq!(c.reply().await, "+OK ready\r\n");
    c.send("USER user@example.com\r\n").await;
    assert_eq!(c.reply().await, "+OK\r\n");
    c.send(&format!("PASS {PASSWORD}\r\nSTAT\r\n")).await;
    assert_eq!(c.reply().await, "+OK Logged in.\r\n");
    assert_eq!(c.reply().await, "+OK 0 0\r\n");
    let log = log.lock().unwrap();
    assert_eq!(
        log[0], "AUTH XOAUTH2",
        "no initial response on the AUTH line: {log:?}"
    );
    assert_eq!(
        log[1],
        b64(b"user=mailbox@example.com\x01auth=Bearer access-1\x01\x01")
    );
    assert_eq!(log[2], "STAT");
}

#[tokio::test]
async fn error_challenge_is_answered_here_and_a_fresh_token_tried_once() {
    let (addr, log) = fake_pop3("+OK ready", "USER\r\n", "-ERR no\r\n", "access-2").await;
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let relay = Relay::start(&pop3_toml(addr, "none", &tokens.url())).await;
    let mut c = Client::connect(relay.addr).await;
    c.reply().await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    assert_eq!(c.reply().await, "+OK Logged in.\r\n");
    let log = log.lock().unwrap();
    // AUTH, blob(access-1), empty answer to the challenge, AUTH, blob(access-2).
    assert_eq!(log.len(), 5, "{log:?}");
    assert_eq!(
        log[2], "",
        "the error challenge must be answered with an empty line"
    );
    assert_eq!(tokens.count(), 2);
}

#[tokio::test]
async fn upstream_stls_is_required_and_injection_is_refused() {
    let cert = TestCert::new();
    let extra = format!(
        "upstream_ca = \"{}\"\nupstream_name = \"localhost\"",
        cert.cert.display()
    );
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;

    let (addr, _) = fake_pop3("+OK ready", "USER\r\nSASL XOAUTH2\r\n", "+OK go\r\n", "x").await;
    let relay = Relay::start(
        &relay_toml(addr, "starttls", &tokens.url(), &extra, "")
            .replacen("\"smtp\"", "\"pop3\"", 1),
    )
    .await;
    assert_eq!(
        login_reply(relay.addr).await,
        "-ERR [SYS/TEMP] Upstream unreachable (STARTTLS failed: the server does not offer STLS; refusing to continue in plaintext), try again later\r\n"
    );

    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let (addr, _) = fake_pop3("+OK ready", "STLS\r\n", "+OK go\r\n+OK injected\r\n", "x").await;
    let relay = Relay::start(
        &relay_toml(addr, "starttls", &tokens.url(), &extra, "")
            .replacen("\"smtp\"", "\"pop3\"", 1),
    )
    .await;
    assert_eq!(
        login_reply(relay.addr).await,
        "-ERR [SYS/TEMP] Upstream unreachable (sent data right after its STARTTLS reply (injection attempt)), try again later\r\n"
    );
}

/// Logs in with the right local password; the upstream is dialled only now, so its faults show
/// in the login's reply (the greeting is the relay's own).
async fn login_reply(relay: SocketAddr) -> String {
    let mut c = Client::connect(relay).await;
    assert_eq!(c.reply().await, "+OK ready\r\n");
    c.send("USER user@example.com\r\n").await;
    assert_eq!(c.reply().await, "+OK\r\n");
    c.send(&format!("PASS {PASSWORD}\r\n")).await;
    c.reply().await
}

#[tokio::test]
async fn local_stls_refuses_pipelined_plaintext() {
    let cert = TestCert::new();
    let (addr, _) = fake_pop3("+OK ready", "USER\r\n", "-ERR no\r\n", "x").await;
    let tokens = TokenEndpoint::start("rt").await;
    let tls = format!(
        "tls = \"starttls\"\ncert = \"{}\"\nkey = \"{}\"",
        cert.cert.display(),
        cert.key.display()
    );
    let relay = Relay::start(
        &relay_toml(addr, "none", &tokens.url(), &tls, "").replacen("\"smtp\"", "\"pop3\"", 1),
    )
    .await;
    let mut c = Client::connect(relay.addr).await;
    c.reply().await;
    c.send("STLS\r\nUSER injected\r\n").await;
    assert_eq!(c.reply().await, "+OK Begin TLS negotiation\r\n");
    assert!(c.closed().await);

    let mut c = Client::connect(relay.addr).await;
    c.reply().await;
    c.send("STLS\r\n").await;
    assert_eq!(c.reply().await, "+OK Begin TLS negotiation\r\n");
    let mut c = c.starttls(&cert).await;
    c.send("STLS\r\n").await;
    assert_eq!(
        c.reply().await,
        "-ERR Command not permitted when TLS active\r\n"
    );
}

#[tokio::test]
async fn app_password_and_passthrough_use_auth_plain_or_user_pass_upstream() {
    let tokens = TokenEndpoint::start("rt").await;
    let extra = format!(
        "[account.app]\nlogin = \"app@example.com\"\npassword_hash = \"{HASH_OF_PASSWORD}\"\nmailbox = \"shared@example.com\"\nauth = \"app_password\"\napp_password = \"app pass with spaces\"\n\n[account.pass]\nlogin = \"through@example.com\"\nauth = \"passthrough\"\n"
    );
    for (capa, expected) in [
        ("USER\r\nSASL PLAIN XOAUTH2\r\n", "AUTH PLAIN"),
        ("USER\r\nSASL XOAUTH2\r\n", "USER shared@example.com"),
    ] {
        let (addr, log) = fake_pop3("+OK ready", capa, "-ERR no\r\n", "x").await;
        let relay = Relay::start(
            &relay_toml(addr, "none", &tokens.url(), "", &extra).replacen(
                "protocol = \"smtp\"",
                "protocol = \"pop3\"",
                1,
            ),
        )
        .await;
        let mut c = Client::connect(relay.addr).await;
        c.reply().await;
        c.send(&format!("USER app@example.com\r\nPASS {PASSWORD}\r\n"))
            .await;
        assert_eq!(c.reply().await, "+OK\r\n");
        assert_eq!(c.reply().await, "+OK Logged in.\r\n", "{capa}");
        let mut c = Client::connect(relay.addr).await;
        c.reply().await;
        c.send(&format!(
            "AUTH PLAIN {}\r\n",
            plain("through@example.com", "their-own-password")
        ))
        .await;
        assert_eq!(c.reply().await, "+OK Logged in.\r\n", "{capa}");
        let mut c = Client::connect(relay.addr).await;
        c.reply().await;
        c.send(&format!(
            "AUTH PLAIN {}\r\n",
            plain("through@example.com", "not-theirs")
        ))
        .await;
        assert_eq!(
            c.reply().await,
            "-ERR [AUTH] Upstream server refused the login ([AUTH] Authentication failed.)\r\n"
        );
        assert!(
            log.lock().unwrap().iter().any(|l| l == expected),
            "{:?}",
            log.lock().unwrap()
        );
    }
    assert_eq!(tokens.count(), 0);
}
