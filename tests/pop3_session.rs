//! POP3 sessions against small scripted upstreams, for what a real server never does: refuse
//! STLS, inject bytes after the STLS go-ahead, send an APOP timestamp or a Gmail-style error
//! challenge. Replies are checked byte for byte.

mod support;

use std::net::SocketAddr;
use support::fake_pop3::*;
use support::*;

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
