//! A scripted POP3 server for the session tests: what a real server never does (no STLS, bytes
//! injected after STLS, an APOP timestamp), XOAUTH2 checked against one token with the error
//! challenge first (RFC 7628 §3.2.3; RFC 5034 §4), and USER/PASS and AUTH PLAIN for the
//! password modes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A scripted POP3 server: greets, answers CAPA with `capa`, STLS with `stls_reply`, and checks
/// XOAUTH2 logins two-step against `token` (the error challenge first when it does not match).
/// Every line it receives is logged.
pub async fn fake_pop3(
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
pub const PASSWORD_ACCOUNTS: [(&str, &str); 2] = [
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
