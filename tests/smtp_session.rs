//! SMTP sessions end to end, in process: a raw client → authrelay → a fake upstream that checks
//! XOAUTH2, with a fake token endpoint. Replies are checked byte for byte (README: What a device may be told).

mod support;

use support::*;

async fn world() -> World {
    world_with(UpstreamOptions::default(), "none", "", "", None).await
}

async fn greeted(w: &World) -> Client {
    let mut c = Client::connect(w.relay.addr).await;
    assert_eq!(c.reply().await, "220 localhost ESMTP ready\r\n");
    c
}

async fn ehloed(w: &World) -> Client {
    let mut c = greeted(w).await;
    assert!(c.ehlo().await.starts_with("250-"));
    c
}

#[tokio::test]
async fn ehlo_is_rewritten() {
    let w = world().await;
    let mut c = greeted(&w).await;
    assert_eq!(
        c.ehlo().await,
        "250-localhost\r\n250-SIZE 35882577\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n"
    );
    c.send("HELO client.test\r\n").await;
    assert_eq!(c.reply().await, "250 localhost\r\n");
    // A bare HELO (old firmware, embedded SMTP libraries): taken.
    c.send("HELO\r\n").await;
    assert_eq!(c.reply().await, "250 localhost\r\n");
}

#[tokio::test]
async fn plain_with_initial_response_and_pipelined_mail_arrives_byte_for_byte() {
    let w = world().await;
    let mut c = ehloed(&w).await;
    let body = "Subject: t\r\n\r\n..leading dot stuffed\r\n8bit: \u{e9}t\u{e9}\r\n";
    // A client may put AUTH PLAIN <ir>, MAIL, RCPT and DATA in one segment (RFC 4954 §4).
    c.send(&format!(
        "AUTH PLAIN {}\r\nMAIL FROM:<mailbox@example.com>\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
    assert_eq!(c.reply().await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.reply().await, "250 2.1.0 Ok\r\n");
    assert!(c.reply().await.starts_with("354 "));
    c.send(&format!("{body}.\r\n")).await;
    assert_eq!(c.reply().await, "250 2.0.0 Ok: queued as FAKE\r\n");
    c.send("QUIT\r\n").await;
    assert_eq!(c.reply().await, "221 2.0.0 Bye\r\n");
    let log = w.upstream.log.lock().unwrap();
    assert_eq!(log.messages, vec![body.as_bytes().to_vec()]);
    // Two-step XOAUTH2: the AUTH line carries no initial response.
    assert!(
        log.commands.contains(&"AUTH XOAUTH2".to_string()),
        "{:?}",
        log.commands
    );
    assert_eq!(
        log.sasl,
        vec![b64(
            b"user=mailbox@example.com\x01auth=Bearer access-1\x01\x01"
        )]
    );
    assert_eq!(w.tokens.count(), 1);
    let body = &w.tokens.bodies.lock().unwrap()[0];
    assert!(body.contains("grant_type=refresh_token"), "{body}");
    assert!(
        body.contains("refresh_token=rt-initial-canary-55cd"),
        "{body}"
    );
}

#[tokio::test]
async fn plain_without_initial_response() {
    let w = world().await;
    let mut c = ehloed(&w).await;
    c.send("AUTH PLAIN\r\n").await;
    assert_eq!(c.reply().await, "334 \r\n");
    c.send(&format!("{}\r\n", plain("user@example.com", PASSWORD)))
        .await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
    // After the login everything goes upstream: a second AUTH gets upstream's own answer.
    c.send("AUTH PLAIN\r\n").await;
    assert_eq!(c.reply().await, "503 5.5.1 Already authenticated\r\n");
}

#[tokio::test]
async fn login_mechanism_with_and_without_initial_response() {
    let w = world().await;
    let mut c = ehloed(&w).await;
    c.send("AUTH LOGIN\r\n").await;
    assert_eq!(c.reply().await, "334 VXNlcm5hbWU6\r\n");
    c.send(&format!("{}\r\n", b64(b"user@example.com"))).await;
    assert_eq!(c.reply().await, "334 UGFzc3dvcmQ6\r\n");
    c.send(&format!("{}\r\n", b64(PASSWORD.as_bytes()))).await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");

    let mut c = ehloed(&w).await;
    c.send(&format!("auth login {}\r\n", b64(b"USER@example.com")))
        .await;
    assert_eq!(c.reply().await, "334 UGFzc3dvcmQ6\r\n");
    c.send(&format!("{}\r\n", b64(PASSWORD.as_bytes()))).await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
    // The cached token served the second login.
    assert_eq!(w.tokens.count(), 1);
}

#[tokio::test]
async fn local_auth_errors_are_exact() {
    let w = world().await;
    let mut c = greeted(&w).await;
    c.send("AUTH PLAIN\r\n").await;
    assert_eq!(c.reply().await, "503 5.5.1 Error: send HELO/EHLO first\r\n");
    c.send("MAIL FROM:<a@b>\r\n").await;
    assert_eq!(c.reply().await, "530 5.7.0 Authentication required\r\n");
    assert!(c.ehlo().await.starts_with("250-"));
    c.send("AUTH LOGIN\r\n").await;
    assert_eq!(c.reply().await, "334 VXNlcm5hbWU6\r\n");
    c.send("*\r\n").await;
    assert_eq!(c.reply().await, "501 5.7.0 Authentication cancelled\r\n");
    c.send("AUTH PLAIN ###\r\n").await;
    assert_eq!(c.reply().await, "501 5.5.2 Cannot decode base64\r\n");
    c.send("AUTH CRAM-MD5\r\n").await;
    assert_eq!(
        c.reply().await,
        "504 5.5.4 Unrecognized authentication type\r\n"
    );
    c.send("AUTH XOAUTH2 dXNlcj0=\r\n").await;
    assert_eq!(
        c.reply().await,
        "504 5.5.4 Unrecognized authentication type\r\n"
    );
    c.send("NOOP\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 OK\r\n");
    c.send("FOO bar\r\n").await;
    assert_eq!(
        c.reply().await,
        "500 5.5.2 Error: command not recognized\r\n"
    );
    c.send("NOOP\0\r\n").await;
    assert_eq!(
        c.reply().await,
        "500 5.5.2 Error: command contains invalid characters\r\n"
    );
    c.send("STARTTLS\r\n").await;
    assert_eq!(
        c.reply().await,
        "454 4.7.0 TLS not available due to temporary reason\r\n"
    );
    assert_eq!(
        w.tokens.count(),
        0,
        "no token request without a valid local login"
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_reply_and_nothing_reaches_upstream() {
    let w = world().await;
    let mut c = ehloed(&w).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", "wrong")
    ))
    .await;
    let wrong = c.reply().await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("nobody@example.com", PASSWORD)
    ))
    .await;
    let unknown = c.reply().await;
    assert_eq!(wrong, "535 5.7.8 Authentication credentials invalid\r\n");
    assert_eq!(unknown, wrong);
    c.send("AUTH PLAIN =\r\n").await;
    assert_eq!(
        c.reply().await,
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    // Third failure: the connection is closed.
    assert_eq!(
        c.reply().await,
        "421 4.7.0 Too many failed logins, closing connection\r\n"
    );
    assert!(c.closed().await);
    assert_eq!(w.tokens.count(), 0);
    assert!(!w
        .upstream
        .log
        .lock()
        .unwrap()
        .commands
        .iter()
        .any(|l| l.starts_with("AUTH")));
}

#[tokio::test]
async fn json_error_challenge_is_answered_by_the_relay_and_a_fresh_token_is_tried_once() {
    let w = world_with(
        UpstreamOptions {
            json_challenge: true,
            ..Default::default()
        },
        "none",
        "",
        "",
        None,
    )
    .await;
    // The first token the endpoint issues is refused upstream; the second is accepted.
    w.upstream.accepted.lock().unwrap().remove("access-1");
    let mut c = ehloed(&w).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
    let log = w.upstream.log.lock().unwrap();
    assert_eq!(log.sasl.len(), 3, "{:?}", log.sasl);
    assert_eq!(
        log.sasl[1], "\r\n",
        "the challenge must be answered with an empty line"
    );
    assert_eq!(w.tokens.count(), 2);
    // The second refresh used the rotated refresh token.
    assert!(w.tokens.bodies.lock().unwrap()[1].contains("refresh_token=rt-1"));
}

#[tokio::test]
async fn revoked_grant_gives_535_with_the_code_and_keeps_the_session_usable() {
    let w = world().await;
    w.tokens.set(TokenBehaviour::Error {
        error: "invalid_grant",
        description:
            "AADSTS700082: The refresh token has expired due to inactivity.\r\nTrace ID: abc",
    });
    let mut c = ehloed(&w).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    assert_eq!(
        c.reply().await,
        "535 5.7.8 Sign-in for mailbox@example.com failed (AADSTS700082): the refresh token expired or was revoked: re-authorize the account with `authrelay login user`\r\n"
    );
    w.tokens.set(TokenBehaviour::Issue);
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
}

#[tokio::test]
async fn token_endpoint_failures_are_temporary() {
    let w = world().await;
    let mut c = ehloed(&w).await;
    for (behaviour, expected) in [
        (TokenBehaviour::ServerError, "454 4.7.0 Temporary authentication failure (the identity provider sent no OAuth token response (an HTTP error or not JSON) at TOKEN_URL (check token_url); bad_response)\r\n"),
        (TokenBehaviour::Garbage, "454 4.7.0 Temporary authentication failure (the identity provider sent no OAuth token response (an HTTP error or not JSON) at TOKEN_URL (check token_url); bad_response)\r\n"),
        (TokenBehaviour::Hang, "454 4.7.0 Temporary authentication failure (the identity provider did not answer in time at TOKEN_URL (check token_url); timeout)\r\n"),
    ] {
        w.tokens.set(behaviour);
        c.send(&format!("AUTH PLAIN {}\r\n", plain("user@example.com", PASSWORD))).await;
        assert_eq!(c.reply().await.replace(&w.tokens.url(), "TOKEN_URL"), expected);
    }
    // The refresh token survived the failures.
    w.tokens.set(TokenBehaviour::Issue);
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
}

#[tokio::test]
async fn token_endpoint_down_is_temporary() {
    let upstream = FakeUpstream::start(UpstreamOptions::default(), None).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let relay = Relay::start(&relay_toml(
        upstream.addr,
        "none",
        &format!("http://{closed}/token"),
        "",
        "",
    ))
    .await;
    let mut c = Client::connect(relay.addr).await;
    c.reply().await;
    c.ehlo().await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    // A wrong endpoint is named, with the key that chose it.
    assert_eq!(c.reply().await, format!("454 4.7.0 Temporary authentication failure (the identity provider is unreachable at http://{closed}/token (check token_url); network)\r\n"));
}

#[tokio::test]
async fn upstream_rejection_is_reported_with_its_code() {
    let w = world().await;
    w.upstream.accepted.lock().unwrap().clear();
    let mut c = ehloed(&w).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    assert_eq!(c.reply().await, "535 5.7.8 Upstream server refused the login (535 5.7.3 Authentication unsuccessful [FAKE])\r\n");
    // A fresh token is not retried for a token that is minutes young and had no 401 challenge.
    assert_eq!(w.tokens.count(), 1);
}

#[tokio::test]
async fn upstream_unreachable_still_greets_and_the_login_is_told_to_retry() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let relay = Relay::start(&relay_toml(closed, "none", &tokens.url(), "", "")).await;
    // The greeting and EHLO are the relay's own; the login says the upstream is unreachable
    // and leaves the session open for another try.
    let mut c = Client::connect(relay.addr).await;
    assert_eq!(c.reply().await, "220 localhost ESMTP ready\r\n");
    assert!(c.ehlo().await.starts_with("250-localhost\r\n"));
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    let reply = c.reply().await;
    assert!(
        reply.starts_with("454 4.4.1 Upstream unreachable (cannot connect: ")
            && reply.ends_with("), try again later\r\n"),
        "{reply}"
    );
    c.send("NOOP\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 OK\r\n");
}

/// Logs in with the right local password and returns the reply: the upstream is dialled only
/// now, so its faults show here.
async fn login_reply(relay: std::net::SocketAddr) -> String {
    let mut c = Client::connect(relay).await;
    assert_eq!(c.reply().await, "220 localhost ESMTP ready\r\n");
    assert!(c.ehlo().await.starts_with("250-"));
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    c.reply().await
}

#[tokio::test]
async fn upstream_starttls_is_required_and_verified() {
    let cert = TestCert::new();
    let ca = format!(
        "upstream_ca = \"{}\"\nupstream_name = \"localhost\"",
        cert.cert.display()
    );
    let w = world_with(
        UpstreamOptions {
            starttls: true,
            ..Default::default()
        },
        "starttls",
        &ca,
        "",
        Some(&cert),
    )
    .await;
    let mut c = ehloed(&w).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");

    // Without STARTTLS on offer the relay does not continue in plaintext.
    let w = world_with(
        UpstreamOptions {
            starttls: true,
            hide_starttls: true,
            ..Default::default()
        },
        "starttls",
        &ca,
        "",
        Some(&cert),
    )
    .await;
    assert_eq!(login_reply(w.relay.addr).await, "454 4.4.1 Upstream unreachable (STARTTLS failed: the server does not offer STARTTLS; refusing to continue in plaintext), try again later\r\n");

    // Bytes injected after the 220 abort the connection.
    let w = world_with(
        UpstreamOptions {
            starttls: true,
            inject_after_starttls: true,
            ..Default::default()
        },
        "starttls",
        &ca,
        "",
        Some(&cert),
    )
    .await;
    assert_eq!(login_reply(w.relay.addr).await, "454 4.4.1 Upstream unreachable (sent data right after its STARTTLS reply (injection attempt)), try again later\r\n");

    // A certificate the relay does not trust fails the handshake.
    let w = world_with(
        UpstreamOptions {
            implicit_tls: true,
            ..Default::default()
        },
        "implicit",
        "upstream_name = \"localhost\"",
        "",
        Some(&cert),
    )
    .await;
    let reply = login_reply(w.relay.addr).await;
    assert!(
        reply.starts_with("454 4.4.1 Upstream unreachable (TLS handshake failed: "),
        "{reply}"
    );
}

#[tokio::test]
async fn local_starttls_and_injection_defence() {
    let cert = TestCert::new();
    let tls = format!(
        "tls = \"starttls\"\ncert = \"{}\"\nkey = \"{}\"",
        cert.cert.display(),
        cert.key.display()
    );
    let w = world_with(UpstreamOptions::default(), "none", &tls, "", None).await;
    let mut c = greeted(&w).await;
    assert!(c.ehlo().await.ends_with("250-SMTPUTF8\r\n250 STARTTLS\r\n"));
    c.send("STARTTLS\r\n").await;
    assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS\r\n");
    let mut c = c.starttls(&cert).await;
    let ehlo = c.ehlo().await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");

    let mut c = greeted(&w).await;
    c.ehlo().await;
    c.send("STARTTLS\r\nEHLO injected\r\n").await;
    assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS\r\n");
    assert!(
        c.closed().await,
        "plaintext after STARTTLS must close the connection"
    );
}

#[tokio::test]
async fn local_implicit_tls() {
    let cert = TestCert::new();
    let tls = format!(
        "tls = \"implicit\"\ncert = \"{}\"\nkey = \"{}\"",
        cert.cert.display(),
        cert.key.display()
    );
    let w = world_with(UpstreamOptions::default(), "none", &tls, "", None).await;
    let mut c = Client::connect_tls(w.relay.addr, &cert).await;
    assert_eq!(c.reply().await, "220 localhost ESMTP ready\r\n");
    assert!(!c.ehlo().await.contains("STARTTLS"));
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
}

#[tokio::test]
async fn app_password_and_passthrough_modes() {
    let extra = format!(
        r#"
[account.app]
login = "app@example.com"
password_hash = "{HASH_OF_PASSWORD}"
mailbox = "shared@example.com"
auth = "app_password"
app_password = "app-password-canary-0c1d"

[account.pass]
login = "through@example.com"
auth = "passthrough"
"#
    );
    let w = world_with(UpstreamOptions::default(), "none", "", &extra, None).await;
    w.upstream
        .accept_token("app-password-canary-0c1d", "shared@example.com");
    w.upstream
        .accept_token("their-own-password", "through@example.com");
    let mut c = ehloed(&w).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("app@example.com", PASSWORD)
    ))
    .await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
    let mut c = ehloed(&w).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("through@example.com", "their-own-password")
    ))
    .await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
    let mut c = ehloed(&w).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("through@example.com", "not-theirs")
    ))
    .await;
    assert_eq!(c.reply().await, "535 5.7.8 Upstream server refused the login (535 5.7.3 Authentication unsuccessful [FAKE])\r\n");
    let log = w.upstream.log.lock().unwrap();
    assert_eq!(
        log.sasl[0],
        plain("shared@example.com", "app-password-canary-0c1d")
    );
    assert_eq!(w.tokens.count(), 0);
}

#[tokio::test]
async fn concurrent_logins_on_a_cold_cache_make_one_token_request() {
    let w = world().await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let addr = w.relay.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            c.reply().await;
            c.ehlo().await;
            c.send(&format!(
                "AUTH PLAIN {}\r\n",
                plain("user@example.com", PASSWORD)
            ))
            .await;
            c.reply().await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "235 2.7.0 Authentication successful\r\n");
    }
    assert_eq!(w.tokens.count(), 1);
}

#[tokio::test]
async fn token_near_expiry_is_refreshed_ahead_of_time() {
    let w = world().await;
    // Tokens that live less than the 10-minute margin are never served from the cache.
    w.tokens
        .expires_in
        .store(300, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..2 {
        let mut c = ehloed(&w).await;
        c.send(&format!(
            "AUTH PLAIN {}\r\n",
            plain("user@example.com", PASSWORD)
        ))
        .await;
        assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
    }
    assert_eq!(w.tokens.count(), 2);
}

#[tokio::test]
async fn hostile_lines_are_bounded() {
    let w = world().await;
    let mut c = greeted(&w).await;
    c.send_bytes(&vec![b'A'; 5000]).await;
    assert_eq!(
        c.reply().await,
        "500 5.5.2 Line too long, closing connection\r\n"
    );
    assert!(c.closed().await);

    let mut c = greeted(&w).await;
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(c.closed().await, "an HTTP request is answered by closing");

    let mut c = ehloed(&w).await;
    c.send("AUTH PLAIN\r\n").await;
    assert_eq!(c.reply().await, "334 \r\n");
    c.send_bytes(&vec![b'A'; 13000]).await;
    assert_eq!(
        c.reply().await,
        "500 5.5.6 Authentication Exchange line is too long\r\n"
    );
}

#[tokio::test]
async fn app_password_uses_login_when_upstream_offers_only_login_and_xoauth2() {
    // Office 365 advertises `AUTH LOGIN XOAUTH2` only.
    let extra = format!(
        "[account.app]\nlogin = \"app@example.com\"\npassword_hash = \"{HASH_OF_PASSWORD}\"\nmailbox = \"shared@example.com\"\nauth = \"app_password\"\napp_password = \"app pass with spaces\"\n"
    );
    let w = world_with(
        UpstreamOptions {
            mechanisms: "LOGIN XOAUTH2",
            ..Default::default()
        },
        "none",
        "",
        &extra,
        None,
    )
    .await;
    w.upstream
        .accept_token("app pass with spaces", "shared@example.com");
    let mut c = ehloed(&w).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("app@example.com", PASSWORD)
    ))
    .await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
    let log = w.upstream.log.lock().unwrap();
    assert!(
        log.commands.contains(&"AUTH LOGIN".to_string()),
        "{:?}",
        log.commands
    );
    assert_eq!(
        log.sasl,
        vec![b64(b"shared@example.com"), b64(b"app pass with spaces")]
    );
}

#[tokio::test]
async fn shutdown_drains_then_says_goodbye_and_closes() {
    let w = world().await;
    let addr = w.relay.addr;
    let mut waiting = greeted(&w).await;
    let mut quick = ehloed(&w).await;
    let mut logged_in = ehloed(&w).await;
    logged_in
        .send(&format!(
            "AUTH PLAIN {}\r\n",
            plain("user@example.com", PASSWORD)
        ))
        .await;
    assert_eq!(
        logged_in.reply().await,
        "235 2.7.0 Authentication successful\r\n"
    );
    let World {
        relay,
        upstream: _upstream,
        tokens: _tokens,
    } = w;
    let stop = tokio::spawn(relay.running.stop(std::time::Duration::from_millis(800)));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // No new connections once the drain has begun.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // A session that finishes within the drain is not disturbed.
    quick.send("QUIT\r\n").await;
    assert_eq!(quick.reply().await, "221 2.0.0 Bye\r\n");
    // At the deadline: the goodbye before login, a closed pipe after it.
    assert_eq!(
        waiting.reply().await,
        "421 4.3.2 Service shutting down, closing connection\r\n"
    );
    // Logged in but no MAIL FROM yet (the sender check reads commands): a goodbye too.
    assert_eq!(
        logged_in.reply().await,
        "421 4.3.2 Service shutting down, closing connection\r\n"
    );
    assert!(logged_in.closed().await);
    tokio::time::timeout(std::time::Duration::from_secs(5), stop)
        .await
        .expect("stop returns after the drain")
        .unwrap();
}

#[tokio::test]
async fn a_sender_other_than_the_signed_in_mailbox_is_refused_before_upstream() {
    let w = world().await;
    let mut c = ehloed(&w).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
    // Commands before MAIL go upstream and come back unchanged.
    c.send("NOOP\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 Ok\r\n");
    // A pipelined transaction with the wrong sender: MAIL refused, RCPT and DATA out of order.
    c.send("MAIL FROM:<boss@example.com> SIZE=100\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n")
        .await;
    assert_eq!(
        c.reply().await,
        "550 5.7.60 Sender <boss@example.com> is not the signed-in mailbox <mailbox@example.com>; the provider would refuse it (SendAsDenied). Send as <mailbox@example.com>, or add the address to allowed_from if the mailbox may send as it\r\n"
    );
    assert_eq!(c.reply().await, "503 5.5.1 Error: need MAIL command\r\n");
    assert_eq!(c.reply().await, "503 5.5.1 Error: need MAIL command\r\n");
    c.send("MAIL FROM:<>\r\n").await;
    assert!(!c.reply().await.starts_with("550 5.7.60"));
    // The right sender (any case) goes through, and the rest is piped.
    let mut c = ehloed(&w).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    c.reply().await;
    c.send("MAIL FROM:<Mailbox@Example.com>\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.reply().await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.reply().await, "354 End data with <CR><LF>.<CR><LF>\r\n");
    c.send("Subject: ok\r\n\r\nbody\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 Ok: queued as FAKE\r\n");
    assert_eq!(w.upstream.log.lock().unwrap().messages.len(), 1);
}

#[tokio::test]
async fn allowed_from_lists_send_as_addresses_or_turns_the_check_off() {
    for (allowed, sender, expect) in [
        (
            r#"["shared@example.com"]"#,
            "shared@example.com",
            "250 2.1.0 Ok\r\n",
        ),
        (
            r#"["shared@example.com"]"#,
            "other@example.com",
            "550 5.7.60",
        ),
        (r#"["*"]"#, "anyone@example.com", "250 2.1.0 Ok\r\n"),
    ] {
        let w = world_with(
            UpstreamOptions::default(),
            "none",
            "",
            &format!("allowed_from = {allowed}"),
            None,
        )
        .await;
        let mut c = ehloed(&w).await;
        c.send(&format!(
            "AUTH PLAIN {}\r\n",
            plain("user@example.com", PASSWORD)
        ))
        .await;
        c.reply().await;
        c.send(&format!("MAIL FROM:<{sender}>\r\n")).await;
        assert!(c.reply().await.starts_with(expect), "{allowed} {sender}");
    }
}

#[tokio::test]
async fn upstream_refusals_come_with_what_to_do() {
    for (refusal, advice) in [
        (
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.",
            "SMTP AUTH is disabled for this tenant or mailbox: enable Authenticated SMTP for the mailbox (Set-CASMailbox -SmtpClientAuthenticationDisabled $false)",
        ),
        (
            "535 5.7.139 Authentication unsuccessful, user is locked by your organization's security defaults policy.",
            "the tenant's security defaults block basic authentication and app passwords: use auth = \"oauth\"",
        ),
    ] {
        let upstream = FakeUpstream::start(
            UpstreamOptions {
                auth_failure: Some(refusal),
                ..Default::default()
            },
            None,
        )
        .await;
        let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
        let relay = Relay::start(&relay_toml(upstream.addr, "none", &tokens.url(), "", "")).await;
        let mut c = Client::connect(relay.addr).await;
        c.reply().await;
        c.ehlo().await;
        c.send(&format!(
            "AUTH PLAIN {}\r\n",
            plain("user@example.com", PASSWORD)
        ))
        .await;
        assert_eq!(
            c.reply().await,
            format!("535 5.7.8 Upstream server refused the login ({refusal}): {advice}\r\n")
        );
    }
}

#[tokio::test]
async fn a_client_outside_the_allow_list_is_closed_without_a_greeting() {
    let w = world_with(
        UpstreamOptions::default(),
        "none",
        "allow = [\"127.0.0.2/32\", \"10.0.0.0/8\"]",
        "",
        None,
    )
    .await;
    // The probe at start is all the upstream has seen.
    let before = w.upstream.log.lock().unwrap().commands.clone();
    assert_eq!(before, ["EHLO localhost", "QUIT"]);
    let mut c = Client::connect(w.relay.addr).await;
    assert!(c.closed().await);
    assert_eq!(w.upstream.log.lock().unwrap().commands, before);
}

#[tokio::test]
async fn failed_logins_are_throttled_per_username_and_per_address() {
    let upstream = FakeUpstream::start(UpstreamOptions::default(), None).await;
    upstream.accept_token("access-1", "mailbox@example.com");
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let toml = relay_toml(upstream.addr, "none", &tokens.url(), "", "").replace(
        "token_timeout_secs = 2",
        "token_timeout_secs = 2\nmax_failures_per_username = 2\nmax_failures_per_address = 4",
    );
    let relay = Relay::start(&toml).await;
    let attempt = |user: &'static str, pass: &'static str| {
        let addr = relay.addr;
        async move {
            let mut c = Client::connect(addr).await;
            c.reply().await;
            c.ehlo().await;
            c.send(&format!("AUTH PLAIN {}\r\n", plain(user, pass)))
                .await;
            c.reply().await
        }
    };
    const BAD: &str = "535 5.7.8 Authentication credentials invalid\r\n";
    const THROTTLED: &str =
        "454 4.7.0 Too many failed logins from this address or for this user, try again later\r\n";
    assert_eq!(attempt("user@example.com", "wrong-1").await, BAD);
    assert_eq!(attempt("USER@example.com", "wrong-2").await, BAD);
    // Over the username's limit: even the right password is not tried.
    assert_eq!(attempt("user@example.com", PASSWORD).await, THROTTLED);
    assert_eq!(tokens.count(), 0);
    // Unknown usernames count the same way, and the address has its own limit.
    assert_eq!(attempt("nobody@example.com", "x").await, BAD);
    assert_eq!(attempt("nobody2@example.com", "x").await, BAD);
    assert_eq!(attempt("nobody3@example.com", "x").await, THROTTLED);
}
