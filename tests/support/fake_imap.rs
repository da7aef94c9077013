//! A scripted IMAP server for the session tests: what a real server never does (no SASL-IR, a
//! PREAUTH greeting, no STARTTLS, bytes injected after STARTTLS), XOAUTH2 checked against one
//! token with the error challenge first (RFC 7628 §3.2.3), and password logins for the
//! password modes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A scripted IMAP server: sends `greeting`, answers CAPABILITY with `caps`, STARTTLS with
/// `starttls_reply`, and AUTHENTICATE XOAUTH2 (without SASL-IR: via `+`) against `token`,
/// sending the error challenge first when the token does not match.
pub async fn fake_imap(
    greeting: &'static str,
    caps: &'static str,
    starttls_reply: &'static str,
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
                let mut pending_tag: Option<String> = None;
                let mut challenged = false;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end().to_string();
                    log.lock().unwrap().push(line.clone());
                    let reply = if let Some(tag) = pending_tag.clone() {
                        let raw = base64::Engine::decode(
                            &base64::engine::general_purpose::STANDARD,
                            &line,
                        )
                        .unwrap_or_default();
                        if String::from_utf8_lossy(&raw)
                            .contains(&format!("auth=Bearer {token}\u{1}"))
                        {
                            pending_tag = None;
                            format!("{tag} OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
                        } else if challenged {
                            pending_tag = None;
                            challenged = false;
                            format!("{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
                        } else {
                            challenged = true;
                            let json = base64::Engine::encode(
                                &base64::engine::general_purpose::STANDARD,
                                br#"{"status":"401"}"#,
                            );
                            format!("+ {json}\r\n")
                        }
                    } else {
                        let (tag, rest) = line.split_once(' ').unwrap_or((&line, ""));
                        match rest {
                            "CAPABILITY" => format!("* CAPABILITY {caps}\r\n{tag} OK done\r\n"),
                            "STARTTLS" => format!("{tag} {starttls_reply}"),
                            "AUTHENTICATE XOAUTH2" => {
                                pending_tag = Some(tag.to_string());
                                "+ \r\n".to_string()
                            }
                            "SELECT INBOX" => format!("* 0 EXISTS\r\n{tag} OK selected\r\n"),
                            r if r.starts_with("AUTHENTICATE PLAIN ")
                                || r.starts_with("LOGIN ") =>
                            {
                                if password_login_ok(r) {
                                    format!("{tag} OK Logged in\r\n")
                                } else {
                                    format!("{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
                                }
                            }
                            _ => format!("{tag} BAD what\r\n"),
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

/// Upstream accounts for the password modes (app password, pass-through).
pub const PASSWORD_ACCOUNTS: [(&str, &str); 2] = [
    ("shared@example.com", "app pass \"quoted\""),
    ("through@example.com", "their-own-password"),
];

/// Checks `AUTHENTICATE PLAIN <ir>` or `LOGIN "u" "p"` against [`PASSWORD_ACCOUNTS`].
fn password_login_ok(command: &str) -> bool {
    let (user, pass) = if let Some(ir) = command.strip_prefix("AUTHENTICATE PLAIN ") {
        let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ir)
            .unwrap_or_default();
        let parts: Vec<String> = raw
            .split(|&b| b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        if parts.len() != 3 {
            return false;
        }
        (parts[1].clone(), parts[2].clone())
    } else {
        let wire = format!("x {command}\r\n");
        let parsed = authrelay::codec::imap::parse_command(wire.as_bytes());
        match parsed.map(|t| t.command) {
            Ok(authrelay::codec::imap::Command::Login { user, password }) => (
                String::from_utf8_lossy(&user).into_owned(),
                String::from_utf8_lossy(password.expose()).into_owned(),
            ),
            _ => return false,
        }
    };
    PASSWORD_ACCOUNTS
        .iter()
        .any(|(u, p)| *u == user && *p == pass)
}
