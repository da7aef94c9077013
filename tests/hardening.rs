//! What a careful attacker tried, each as a test (the hardening round's findings, numbered as in
//! the README's security section). In process: a raw client → authrelay → the fake upstream and
//! token endpoint, on 127.0.0.0/8 (other loopback addresses play other clients).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

async fn world_with(listener_extra: &str, extra: &str) -> World {
    support::world_with(
        UpstreamOptions::default(),
        "none",
        listener_extra,
        extra,
        None,
    )
    .await
}

async fn world() -> World {
    world_with("", "").await
}

/// A client from `from` that has said EHLO.
async fn ehloed_from(addr: SocketAddr, from: &str) -> Client {
    let mut c = Client::connect_from(addr, from).await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.ehlo().await.starts_with("250-"));
    c
}

async fn auth(c: &mut Client, user: &str, password: &str) -> String {
    c.send(&format!("AUTH PLAIN {}\r\n", plain(user, password)))
        .await;
    c.reply().await
}

const OK: &str = "235 2.7.0 Authentication successful\r\n";
const BAD: &str = "535 5.7.8 Authentication credentials invalid\r\n";
const THROTTLED: &str =
    "454 4.7.0 Too many failed logins from this address or for this user, try again later\r\n";

// 1 --------------------------------------------------------------------------------------------

/// 150 connections guess one user's password at the same moment: however they race, no more
/// password checks run than the per-username limit (10) allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f01_racing_guesses_get_no_more_checks_than_the_limit() {
    let w = world().await;
    let directory = w.relay.running.shared.directory();
    let before = directory.hashes_computed();
    let mut clients = Vec::new();
    for _ in 0..150 {
        clients.push(ehloed_from(w.relay.addr, "127.0.0.1").await);
    }
    let guesses: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(
                async move { auth(&mut c, "user@example.com", &format!("guess-{i}")).await },
            )
        })
        .collect();
    let mut replies = Vec::new();
    for g in guesses {
        replies.push(g.await.unwrap());
    }
    let checks = directory.hashes_computed() - before;
    println!("password checks for 150 racing wrong passwords: {checks}");
    assert!(checks <= 10, "{checks} password checks");
    assert_eq!(replies.iter().filter(|r| *r == BAD).count() as u64, checks);
    assert!(
        replies.iter().all(|r| r == BAD || r == THROTTLED),
        "{replies:?}"
    );
}

// 2 --------------------------------------------------------------------------------------------

/// Every transaction's sender is checked, not only the first: a second transaction after DATA,
/// one after RSET, one after a null sender, and the `<@:>` path.
#[tokio::test]
async fn f02_every_transaction_has_its_sender_checked() {
    let w = world().await;
    let mut c = ehloed_from(w.relay.addr, "127.0.0.1").await;
    assert_eq!(auth(&mut c, "user@example.com", PASSWORD).await, OK);
    let refused = "550 5.7.60 Sender <bob@example.com> is not the signed-in mailbox <mailbox@example.com>; the provider would refuse it (SendAsDenied). Send as <mailbox@example.com>, or add the address to allowed_from if the mailbox may send as it\r\n";
    // A first, good transaction.
    c.send("MAIL FROM:<mailbox@example.com>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.reply().await, "250 2.1.0 Ok\r\n");
    assert!(c.reply().await.starts_with("354 "));
    // The message, with a line that looks like a command, then a second, foreign transaction
    // pipelined right behind the end.
    c.send("Subject: one\r\n\r\nMAIL FROM:<bob@example.com>\r\n.\r\nMAIL FROM:<bob@example.com>\r\nRCPT TO:<r@example.com>\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.0.0 Ok: queued as FAKE\r\n");
    assert_eq!(c.reply().await, refused);
    assert_eq!(c.reply().await, "503 5.5.1 Error: need MAIL command\r\n");
    // RSET, then a foreign sender.
    c.send("RSET\r\nMAIL FROM:<bob@example.com>\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 Ok\r\n");
    assert_eq!(c.reply().await, refused);
    // A null sender, RSET, then a foreign sender.
    c.send("MAIL FROM:<>\r\nRSET\r\nMAIL FROM:<bob@example.com>\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.reply().await, "250 2.0.0 Ok\r\n");
    assert_eq!(c.reply().await, refused);
    // `<@:>` is no null sender.
    c.send("MAIL FROM:<@:>\r\n").await;
    assert_eq!(c.reply().await, "501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
    // BDAT: a chunk whose bytes look like commands is passed on by its size.
    c.send("MAIL FROM:<mailbox@example.com>\r\nRCPT TO:<r@example.com>\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.reply().await, "250 2.1.0 Ok\r\n");
    let chunk = "Subject: two\r\n\r\nMAIL FROM:<bob@example.com>\r\n";
    c.send(&format!("BDAT {} LAST\r\n{chunk}", chunk.len()))
        .await;
    assert!(c.reply().await.starts_with("250 "));
    c.send("MAIL FROM:<bob@example.com>\r\nQUIT\r\n").await;
    assert_eq!(c.reply().await, refused);
    assert_eq!(c.reply().await, "221 2.0.0 Bye\r\n");
    let log = w.upstream.log.lock().unwrap();
    assert!(
        !log.commands
            .iter()
            .any(|c| c.eq_ignore_ascii_case("MAIL FROM:<bob@example.com>")),
        "{:?}",
        log.commands
    );
    assert_eq!(log.messages.len(), 2, "{:?}", log.commands);
}

/// A bare LF next to the end line cannot smuggle a second message past the check, and is not
/// taken as an end (RFC 5321 §4.1.1.4): the message is refused with 521 and the connection
/// closed, as a spooling listener does; the server never gets the end line, so it discards the
/// message, and nothing after it reaches the server. (Before: the relay ended the message there
/// and delivered it; the server saw the same end, so no second message passed.)
#[tokio::test]
async fn f02_a_smuggled_end_of_data_is_refused_and_reaches_no_one() {
    let w = world().await;
    let mut c = ehloed_from(w.relay.addr, "127.0.0.1").await;
    assert_eq!(auth(&mut c, "user@example.com", PASSWORD).await, OK);
    c.send("MAIL FROM:<mailbox@example.com>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n")
        .await;
    c.reply().await;
    c.reply().await;
    assert!(c.reply().await.starts_with("354 "));
    c.send("Subject: s\r\n\r\nbody\n.\nMAIL FROM:<bob@example.com>\r\n")
        .await;
    assert_eq!(
        c.reply().await,
        "521 5.5.2 Error: <LF>.<LF> does not end a message (RFC 5321 4.1.1.4); end lines with CRLF\r\n"
    );
    assert!(c.closed().await);
    // The server's session ends without the end line: no message, and no MAIL FROM after it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = w.upstream.log.lock().unwrap();
    assert!(log.messages.is_empty(), "{:?}", log.messages);
    assert!(
        !log.commands.iter().any(|c| c.contains("bob@")),
        "{:?}",
        log.commands
    );
}

// 5 --------------------------------------------------------------------------------------------

/// Ten wrong passwords from elsewhere cannot lock out the device's own address once it has
/// logged in; they still lock the user for every other address.
#[tokio::test]
async fn f05_guessing_from_elsewhere_does_not_lock_the_device_out() {
    let w = world().await;
    let mut device = ehloed_from(w.relay.addr, "127.0.0.1").await;
    assert_eq!(auth(&mut device, "user@example.com", PASSWORD).await, OK);
    let mut guesses = 0;
    while guesses < 12 {
        let mut attacker = ehloed_from(w.relay.addr, "127.0.0.2").await;
        for _ in 0..3 {
            let r = auth(&mut attacker, "user@example.com", "guess").await;
            guesses += 1;
            if r == THROTTLED {
                break;
            }
        }
    }
    let mut other = ehloed_from(w.relay.addr, "127.0.0.3").await;
    assert_eq!(
        auth(&mut other, "user@example.com", PASSWORD).await,
        THROTTLED
    );
    for _ in 0..3 {
        let mut device = ehloed_from(w.relay.addr, "127.0.0.1").await;
        assert_eq!(auth(&mut device, "user@example.com", PASSWORD).await, OK);
    }
}

// 6 --------------------------------------------------------------------------------------------

/// One address gets its share of a listener's connections; a full listener still greets with
/// the busy reply, after the TLS handshake on an implicit-TLS listener.
#[tokio::test]
async fn f06_one_address_cannot_take_every_slot() {
    let cert = TestCert::new();
    let listener = format!(
        "max_connections = 4\nmax_connections_per_address = 2\ntls = \"implicit\"\ncert = \"{}\"\nkey = \"{}\"",
        cert.cert.display(),
        cert.key.display()
    );
    let w = world_with(&listener, "").await;
    let busy = "421 4.7.0 Too many connections, try again later\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect_tls(w.relay.addr, &cert).await;
        assert_eq!(c.reply().await, "220 localhost ESMTP ready\r\n");
        held.push(c);
    }
    let mut third = Client::connect_tls(w.relay.addr, &cert).await;
    assert_eq!(third.reply().await, busy);
    // Other addresses still get in, until the listener is full.
    let mut c = tls_from(w.relay.addr, &cert, "127.0.0.2").await;
    assert_eq!(read_line(&mut c).await, "220 localhost ESMTP ready\r\n");
    let mut d = tls_from(w.relay.addr, &cert, "127.0.0.3").await;
    assert_eq!(read_line(&mut d).await, "220 localhost ESMTP ready\r\n");
    let mut full = tls_from(w.relay.addr, &cert, "127.0.0.4").await;
    assert_eq!(read_line(&mut full).await, busy);
    drop(held);
}

type TlsClient = BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn tls_from(addr: SocketAddr, cert: &TestCert, from: &str) -> TlsClient {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    BufReader::new(cert.connector().connect(name, tcp).await.unwrap())
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> String {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
        .await
        .expect("a line in time")
        .unwrap();
    line
}

// 7 --------------------------------------------------------------------------------------------

/// Wrong pass-through passwords and made-up `~` refresh tokens are counted like wrong local
/// passwords; a failed `~` login leaves nothing cached.
#[tokio::test]
async fn f07_passthrough_and_tilde_logins_are_throttled_and_leave_nothing() {
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let extra = format!(
        "[account.pass]\nlogin = \"through@example.com\"\nauth = \"passthrough\"\n\n[client.legacy]\nprovider = \"custom\"\nclient_id = \"legacy-app\"\ntoken_url = \"{}\"\n",
        tokens.url()
    );
    let w = world_with("tilde_login = true", &extra).await;
    let upstream_auths = || {
        w.upstream
            .log
            .lock()
            .unwrap()
            .commands
            .iter()
            .filter(|c| c.starts_with("AUTH"))
            .count()
    };
    let mut replies = Vec::new();
    for _ in 0..4 {
        let mut c = ehloed_from(w.relay.addr, "127.0.0.1").await;
        for _ in 0..3 {
            replies.push(auth(&mut c, "through@example.com", "wrong").await);
        }
    }
    assert_eq!(upstream_auths(), 10, "{replies:?}");
    assert_eq!(replies.iter().filter(|r| *r == THROTTLED).count(), 2);
    for _ in 0..4 {
        let mut c = ehloed_from(w.relay.addr, "127.0.0.2").await;
        for i in 0..3 {
            auth(
                &mut c,
                "boss@example.com~legacy-app",
                &format!("made-up-{i}"),
            )
            .await;
        }
    }
    assert_eq!(
        tokens.count(),
        10,
        "token requests for 12 made-up refresh tokens"
    );
    assert_eq!(w.relay.running.shared.tokens.cached_accounts(), 0);
}

/// 10,008 failed `~` logins (throttle off, to reach that many) leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f07_ten_thousand_failed_tilde_logins_leave_memory_flat() {
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let extra = format!(
        "[client.legacy]\nprovider = \"custom\"\nclient_id = \"legacy-app\"\ntoken_url = \"{}\"\n",
        tokens.url()
    );
    let w = world_with("tilde_login = true", &extra).await;
    let mut config = w.relay.config.clone();
    config.security.max_failures_per_address = 0;
    config.security.max_failures_per_username = 0;
    w.relay.running.reload(&config).await.unwrap();
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let addr = w.relay.addr;
            tokio::spawn(async move {
                for round in 0..417 {
                    let mut c = ehloed_from(addr, "127.0.0.6").await;
                    for i in 0..3 {
                        let token = format!("made-up-{worker}-{round}-{i}");
                        let r = auth(&mut c, "boss@example.com~legacy-app", &token).await;
                        assert!(
                            r.starts_with("535 5.7.8 Sign-in for boss@example.com failed"),
                            "{r}"
                        );
                    }
                }
            })
        })
        .collect();
    for t in workers {
        t.await.unwrap();
    }
    assert_eq!(tokens.count(), 8 * 417 * 3);
    // What each failed login used to leave for good (0.4-0.7 KB each) was its token-cache
    // entry; the process's RSS is no measure here, as this test binary keeps every log line.
    assert_eq!(w.relay.running.shared.tokens.cached_accounts(), 0);
}

// 8, 9, 10 -------------------------------------------------------------------------------------

/// Identity-provider text with CR LF stays inside one reply line.
#[tokio::test]
async fn f08_identity_provider_text_cannot_add_reply_lines() {
    let w = world().await;
    w.tokens.set(TokenBehaviour::Raw {
        status: 400,
        body: r#"{"error":"invalid_grant\r\n250 2.0.0 forged","error_description":"AADSTS999: x\r\n250 forged too\u2028y"}"#.into(),
    });
    let mut c = ehloed_from(w.relay.addr, "127.0.0.1").await;
    let reply = auth(&mut c, "user@example.com", PASSWORD).await;
    assert_eq!(reply.matches("\r\n").count(), 1, "{reply:?}");
    assert!(reply.starts_with("535 5.7.8 "), "{reply:?}");
    assert!(!reply.contains('\u{2028}'), "{reply:?}");
    assert!(!captured_log().contains("\n250 2.0.0 forged"));
}

/// `expires_in` of 2^64-1 is clamped: the login works and nothing panics.
#[tokio::test]
async fn f09_a_huge_expires_in_is_clamped() {
    let w = world().await;
    w.tokens.set(TokenBehaviour::Raw {
        status: 200,
        body:
            r#"{"token_type":"Bearer","access_token":"access-1","expires_in":18446744073709551615}"#
                .into(),
    });
    for _ in 0..2 {
        let mut c = ehloed_from(w.relay.addr, "127.0.0.1").await;
        assert_eq!(auth(&mut c, "user@example.com", PASSWORD).await, OK);
    }
    let left = w
        .relay
        .running
        .shared
        .tokens
        .remaining("user")
        .expect("cached");
    assert!(left <= Duration::from_secs(24 * 3600), "{left:?}");
}

/// An access token with a control character is refused at the door, not cached.
#[tokio::test]
async fn f10_an_access_token_with_a_control_character_is_refused() {
    let w = world().await;
    w.tokens.set(TokenBehaviour::Raw {
        status: 200,
        body: r#"{"token_type":"Bearer","access_token":"access-1\u0001x","expires_in":3600}"#
            .into(),
    });
    let mut c = ehloed_from(w.relay.addr, "127.0.0.1").await;
    assert_eq!(
        auth(&mut c, "user@example.com", PASSWORD).await,
        "454 4.7.0 Temporary authentication failure (the identity provider sent an access token with characters no token has; bad_response)\r\n"
    );
    assert!(w.relay.running.shared.tokens.remaining("user").is_none());
    w.tokens.set(TokenBehaviour::Issue);
    assert_eq!(auth(&mut c, "user@example.com", PASSWORD).await, OK);
}

// 11 -------------------------------------------------------------------------------------------

/// A username built to forge log fields is quoted and escaped in the text log.
#[tokio::test]
async fn f11_a_username_cannot_forge_log_fields() {
    let w = world().await;
    let forged = "x\" account=\"alice\" outcome=\"relayed\u{202E}";
    let mut c = ehloed_from(w.relay.addr, "127.0.0.1").await;
    assert_eq!(auth(&mut c, forged, "wrong").await, BAD);
    let log = captured_log();
    assert!(
        !log.contains("account=\"alice\" outcome"),
        "forged fields in the log"
    );
    assert!(
        log.contains(r#"user="x\" account=\"alice\" outcome=\"relayed?""#),
        "{log}"
    );
    drop(w);
}

// 12 -------------------------------------------------------------------------------------------

/// RFC 4954's 12,288-octet AUTH line: a 2.2 KB initial response reaches the password check.
#[tokio::test]
async fn f12_long_credentials_are_read_whole() {
    let w = world().await;
    let mut c = ehloed_from(w.relay.addr, "127.0.0.1").await;
    let long = "p".repeat(1700);
    let ir = plain("user@example.com", &long);
    assert!(ir.len() > 2200);
    assert_eq!(auth(&mut c, "user@example.com", &long).await, BAD);
    // Any other command of that length is still too long.
    c.send(&format!("NOOP {}\r\n", "x".repeat(3000))).await;
    assert_eq!(
        c.reply().await,
        "500 5.5.2 Line too long, closing connection\r\n"
    );
}

// 14 -------------------------------------------------------------------------------------------

/// SIGHUP's reload applies `[security]` (the throttle's limits among them) and says what needs
/// a restart.
#[tokio::test]
async fn f14_a_reload_applies_security_settings() {
    let w = world().await;
    let mut config = w.relay.config.clone();
    config.security.max_failures_per_username = 1;
    config.security.token_timeout = Duration::from_secs(9);
    let changes = w.relay.running.reload(&config).await.unwrap();
    assert!(
        changes.contains(&"[security] max_failures_per_username applied".to_owned()),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"[security] token_timeout_secs need a restart".to_owned()),
        "{changes:?}"
    );
    let mut c = ehloed_from(w.relay.addr, "127.0.0.5").await;
    assert_eq!(auth(&mut c, "user@example.com", "wrong").await, BAD);
    assert_eq!(auth(&mut c, "user@example.com", "wrong").await, THROTTLED);
    // Reloading the same file again applies nothing new; the restart is still pending.
    assert_eq!(
        w.relay.running.reload(&config).await.unwrap(),
        vec!["[security] token_timeout_secs need a restart".to_owned()]
    );
}

// 15 -------------------------------------------------------------------------------------------

/// Readiness details and per-account metrics only for the admin server's own Host.
#[tokio::test]
async fn f15_probes_name_accounts_only_to_their_own_host() {
    let upstream = FakeUpstream::start(UpstreamOptions::default(), None).await;
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let store = tempfile::tempdir().unwrap();
    let toml = relay_toml(
        upstream.addr,
        "none",
        &tokens.url(),
        "",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[store]\npath = \"{}\"",
            store.path().join("tokens.json").display()
        ),
    );
    let relay = Relay::start(&toml).await;
    let admin = relay.admin_addr();
    let get = |path: &'static str, host: String| async move {
        let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut body = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut body)
            .await
            .unwrap();
        body
    };
    let own = format!("localhost:{}", admin.port());
    let foreign = "rebound.example:9090".to_owned();
    assert!(get("/readyz", own.clone()).await.contains("account user:"));
    let r = get("/readyz", foreign.clone()).await;
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\nready\n"),
        "{r}"
    );
    assert!(get("/metrics", own).await.contains("account=\"user\""));
    let m = get("/metrics", foreign).await;
    assert!(
        m.contains("authrelay_sessions_active") && !m.contains("account=\"user\""),
        "{m}"
    );
}

// 16 -------------------------------------------------------------------------------------------

/// An IMAP server that answers the login with endless untagged responses is cut off, not
/// buffered without end.
#[tokio::test]
async fn f16_endless_untagged_responses_before_login_are_bounded() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent2 = sent.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut r = BufReader::new(tcp);
        r.get_mut()
            .write_all(b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR] ready\r\n")
            .await
            .unwrap();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let tag = line.split(' ').next().unwrap_or("*").to_owned();
            if line.contains("CAPABILITY") {
                let reply =
                    format!("* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR\r\n{tag} OK done\r\n");
                r.get_mut().write_all(reply.as_bytes()).await.unwrap();
            } else if line.contains("AUTHENTICATE") {
                let filler = format!("* OK {}\r\n", "x".repeat(1000));
                for _ in 0..10_000 {
                    if r.get_mut().write_all(filler.as_bytes()).await.is_err() {
                        return;
                    }
                    sent2.fetch_add(filler.len(), std::sync::atomic::Ordering::Relaxed);
                }
                return;
            }
        }
    });
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let toml = relay_toml(addr, "none", &tokens.url(), "", "")
        .replace("protocol = \"smtp\"", "protocol = \"imap\"");
    let relay = Relay::start(&toml).await;
    let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let mut c = BufReader::new(tcp);
    assert!(read_line(&mut c).await.starts_with("* OK"));
    c.get_mut()
        .write_all(format!("a1 LOGIN user@example.com {PASSWORD}\r\n").as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_line(&mut c).await;
    assert!(
        answer.starts_with("* BYE") || answer.starts_with("a1 NO"),
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent < 10_000 * 1000,
        "the relay stopped reading: {sent} bytes sent"
    );
}
