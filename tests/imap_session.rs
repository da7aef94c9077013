//! IMAP sessions against small scripted upstreams, for what a real server never does: no
//! SASL-IR, a PREAUTH greeting, no STARTTLS, bytes injected after STARTTLS. Byte-exact replies.

mod support;

use std::net::SocketAddr;
use support::fake_imap::*;
use support::*;

fn imap_toml(
    upstream: SocketAddr,
    upstream_tls: &str,
    token_url: &str,
    listener_extra: &str,
) -> String {
    relay_toml(upstream, upstream_tls, token_url, listener_extra, "").replacen(
        "protocol = \"smtp\"",
        "protocol = \"imap\"",
        1,
    )
}

#[tokio::test]
async fn without_sasl_ir_upstream_the_blob_goes_after_the_continuation_and_the_challenge_is_answered(
) {
    let (addr, log) = fake_imap(
        "* OK ready",
        "IMAP4rev1 AUTH=XOAUTH2 LITERAL+",
        "OK go\r\n",
        "access-2",
    )
    .await;
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    // No probe at start: the upstream's log holds this session's commands only.
    let relay = Relay::start(&imap_toml(
        addr,
        "none",
        &tokens.url(),
        "upstream_probe = false",
    ))
    .await;
    let mut c = Client::connect(relay.addr).await;
    assert_eq!(
        c.reply().await,
        "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-] ready\r\n"
    );
    c.send(&format!(
        "t1 LOGIN user@example.com \"{PASSWORD}\"\r\nt2 SELECT INBOX\r\n"
    ))
    .await;
    assert_eq!(
        c.reply().await,
        "t1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"
    );
    assert_eq!(c.reply().await, "* 0 EXISTS\r\n");
    assert_eq!(c.reply().await, "t2 OK selected\r\n");
    let log = log.lock().unwrap();
    // CAPABILITY, t1 AUTHENTICATE, blob(access-1), "" (challenge answer), t1 AUTHENTICATE, blob(access-2), t2 SELECT
    assert_eq!(log[1], "t1 AUTHENTICATE XOAUTH2", "{log:?}");
    assert_eq!(
        log[3], "",
        "the error challenge must be answered with an empty line: {log:?}"
    );
    assert_eq!(log[4], "t1 AUTHENTICATE XOAUTH2");
    assert_eq!(log[6], "t2 SELECT INBOX");
    assert_eq!(tokens.count(), 2);
}

#[tokio::test]
async fn preauth_greeting_missing_starttls_and_injection_are_refused() {
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let (addr, _) = fake_imap("* PREAUTH welcome", "IMAP4rev1", "OK go\r\n", "x").await;
    let relay = Relay::start(&imap_toml(addr, "none", &tokens.url(), "")).await;
    assert_eq!(
        login_reply(relay.addr).await,
        "a NO [UNAVAILABLE] Upstream unreachable (refused the connection: PREAUTH welcome), try again later\r\n"
    );

    let cert = TestCert::new();
    let extra = format!(
        "upstream_ca = \"{}\"\nupstream_name = \"localhost\"",
        cert.cert.display()
    );
    let (addr, _) = fake_imap("* OK ready", "IMAP4rev1 AUTH=XOAUTH2", "OK go\r\n", "x").await;
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let relay = Relay::start(&imap_toml(addr, "starttls", &tokens.url(), &extra)).await;
    assert_eq!(
        login_reply(relay.addr).await,
        "a NO [UNAVAILABLE] Upstream unreachable (STARTTLS failed: the server does not offer STARTTLS; refusing to continue in plaintext), try again later\r\n"
    );

    let (addr, _) = fake_imap(
        "* OK ready",
        "IMAP4rev1 STARTTLS",
        "OK go\r\n* OK injected\r\n",
        "x",
    )
    .await;
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let relay = Relay::start(&imap_toml(addr, "starttls", &tokens.url(), &extra)).await;
    assert_eq!(
        login_reply(relay.addr).await,
        "a NO [UNAVAILABLE] Upstream unreachable (sent data right after its STARTTLS reply (injection attempt)), try again later\r\n"
    );
}

/// Logs in with the right local password; the upstream is dialled only now, so its faults show
/// in the login's reply (the greeting is the relay's own).
async fn login_reply(relay: SocketAddr) -> String {
    let mut c = Client::connect(relay).await;
    assert!(c.reply().await.starts_with("* OK [CAPABILITY "));
    c.send(&format!("a LOGIN user@example.com \"{PASSWORD}\"\r\n"))
        .await;
    c.reply().await
}

#[tokio::test]
async fn local_starttls_then_login_over_tls() {
    let cert = TestCert::new();
    let (addr, _) = fake_imap(
        "* OK ready",
        "IMAP4rev1 SASL-IR AUTH=XOAUTH2",
        "BAD no\r\n",
        "access-1",
    )
    .await;
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let tls = format!(
        "tls = \"starttls\"\ncert = \"{}\"\nkey = \"{}\"",
        cert.cert.display(),
        cert.key.display()
    );
    let relay = Relay::start(&imap_toml(addr, "none", &tokens.url(), &tls)).await;
    let mut c = Client::connect(relay.addr).await;
    assert!(c.reply().await.ends_with(" LITERAL- STARTTLS] ready\r\n"));
    c.send("s1 STARTTLS\r\n").await;
    assert_eq!(c.reply().await, "s1 OK Begin TLS negotiation now\r\n");
    let mut c = c.starttls(&cert).await;
    c.send("s2 CAPABILITY\r\n").await;
    assert_eq!(
        c.reply().await,
        "* CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-\r\n"
    );
    assert_eq!(c.reply().await, "s2 OK CAPABILITY completed\r\n");
    c.send("s3 STARTTLS\r\n").await;
    assert_eq!(c.reply().await, "s3 BAD TLS is already active\r\n");
}

fn password_accounts_toml() -> String {
    format!(
        "[account.app]\nlogin = \"app@example.com\"\npassword_hash = \"{HASH_OF_PASSWORD}\"\nmailbox = \"shared@example.com\"\nauth = \"app_password\"\napp_password = 'app pass \"quoted\"'\n\n[account.pass]\nlogin = \"through@example.com\"\nauth = \"passthrough\"\n"
    )
}

#[tokio::test]
async fn app_password_and_passthrough_use_plain_or_login_upstream() {
    let tokens = TokenEndpoint::start("rt").await;
    for (caps, expected) in [
        (
            "IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=XOAUTH2",
            "AUTHENTICATE PLAIN ",
        ),
        ("IMAP4rev1 AUTH=XOAUTH2", "LOGIN "),
    ] {
        let (addr, log) = fake_imap("* OK ready", caps, "BAD no\r\n", "x").await;
        let toml = relay_toml(addr, "none", &tokens.url(), "", &password_accounts_toml()).replacen(
            "protocol = \"smtp\"",
            "protocol = \"imap\"",
            1,
        );
        let relay = Relay::start(&toml).await;
        let mut c = Client::connect(relay.addr).await;
        c.reply().await;
        c.send(&format!("p1 LOGIN app@example.com \"{PASSWORD}\"\r\n"))
            .await;
        assert_eq!(c.reply().await, "p1 OK Logged in\r\n", "{caps}");
        let mut c = Client::connect(relay.addr).await;
        c.reply().await;
        c.send("p2 LOGIN through@example.com their-own-password\r\n")
            .await;
        assert_eq!(c.reply().await, "p2 OK Logged in\r\n", "{caps}");
        let mut c = Client::connect(relay.addr).await;
        c.reply().await;
        c.send("p3 LOGIN through@example.com not-theirs\r\n").await;
        assert_eq!(c.reply().await, "p3 NO [AUTHENTICATIONFAILED] Upstream server refused the login ([AUTHENTICATIONFAILED] Authentication failed.)\r\n");
        let log = log.lock().unwrap();
        assert!(
            log.iter()
                .filter(|l| l.starts_with("p1 "))
                .all(|l| l.starts_with(&format!("p1 {expected}"))),
            "{log:?}"
        );
    }
    assert_eq!(tokens.count(), 0);
}
