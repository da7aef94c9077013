//! The session driver's promises, end to end in process: devices that never log in cost no
//! upstream connection (scans, idle connections, wrong passwords, in every protocol), and one
//! listener fronts accounts whose upstreams differ.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::net::TcpListener;

/// A TCP listener that counts the connections it accepts and closes each at once: an upstream
/// that is reached only to be counted.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(tcp);
        }
    });
    (addr, count)
}

/// How each protocol's device says hello, and logs in with `password`.
fn dialogue(protocol: &str, password: &str) -> (&'static str, String) {
    match protocol {
        "smtp" => (
            "EHLO device\r\n",
            format!("AUTH PLAIN {}\r\n", plain("user@example.com", password)),
        ),
        "imap" => (
            "a1 CAPABILITY\r\n",
            format!("a2 LOGIN user@example.com \"{password}\"\r\n"),
        ),
        _ => (
            "CAPA\r\n",
            format!("USER user@example.com\r\nPASS {password}\r\n"),
        ),
    }
}

/// Reads the whole answer to the hello: IMAP's untagged line and tagged OK, POP3's CAPA list.
async fn hello_answer(c: &mut Client, protocol: &str) {
    loop {
        let line = c.reply().await;
        let done = match protocol {
            "imap" => line.starts_with("a1 "),
            "pop3" => line == ".\r\n",
            _ => true,
        };
        if done || line.is_empty() {
            return;
        }
    }
}

/// One device that never logs in: `kind` 0 scans (connects and closes), 1 idles after its
/// hello, 2 sends a wrong password.
async fn unauthenticated(relay: SocketAddr, protocol: &'static str, kind: usize) {
    let mut c = Client::connect(relay).await;
    if kind == 0 {
        return;
    }
    c.reply().await;
    let (hello, login) = dialogue(protocol, "wrong-password");
    c.send(hello).await;
    hello_answer(&mut c, protocol).await;
    if kind == 1 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        return;
    }
    c.send(&login).await;
    let mut reply = c.reply().await;
    if protocol == "pop3" {
        reply = c.reply().await; // USER's +OK came first
    }
    assert!(
        reply.starts_with("535 ") || reply.contains(" NO ") || reply.starts_with("-ERR"),
        "{protocol}: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_unauthenticated_connections_cost_no_upstream_connection() {
    for protocol in ["smtp", "imap", "pop3"] {
        let (upstream, count) = counting_upstream().await;
        let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
        let toml = relay_toml(upstream, "none", &tokens.url(), "", "")
            .replacen("protocol = \"smtp\"", &format!("protocol = \"{protocol}\""), 1)
            .replace(
                "token_timeout_secs = 2",
                "token_timeout_secs = 2\nmax_failures_per_address = 0\nmax_failures_per_username = 0",
            );
        let relay = Relay::start(&toml).await;
        // The probe at start is the one connection so far.
        let at_start = count.load(Ordering::SeqCst);
        assert_eq!(at_start, 1, "{protocol}: the probe");
        let tasks: Vec<_> = (0..200)
            .map(|i| tokio::spawn(unauthenticated(relay.addr, protocol, i % 3)))
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let after = count.load(Ordering::SeqCst) - at_start;
        println!("{protocol}: 200 unauthenticated connections (67 scans, 67 idle, 66 wrong passwords): {after} upstream connections");
        assert_eq!(after, 0, "{protocol}");
        // The counter does count: a right password reaches the upstream (which hangs up, so
        // the device is told to try again later).
        let mut c = Client::connect(relay.addr).await;
        c.reply().await;
        let (hello, login) = dialogue(protocol, PASSWORD);
        c.send(hello).await;
        hello_answer(&mut c, protocol).await;
        c.send(&login).await;
        let mut reply = c.reply().await;
        if protocol == "pop3" {
            reply = c.reply().await;
        }
        assert!(
            reply.contains("Upstream unreachable"),
            "{protocol}: {reply}"
        );
        assert_eq!(count.load(Ordering::SeqCst) - at_start, 1, "{protocol}");
    }
}

#[tokio::test]
async fn one_listener_fronts_accounts_with_different_upstreams() {
    // The listener's upstream serves `user@example.com` (XOAUTH2); `other@example.com` has an
    // upstream of its own (an app password), as a Gmail account beside a Microsoft 365 one.
    let second = FakeUpstream::start(UpstreamOptions::default(), None).await;
    second.accept_token("app-password-canary-b2", "other@example.com");
    let extra = format!(
        r#"
[account.other]
login = "other@example.com"
password_hash = "{HASH_OF_PASSWORD}"
auth = "app_password"
app_password = "app-password-canary-b2"
allowed_from = ["*"]
upstream.smtp = {{ address = "{}", tls = "none" }}
"#,
        second.addr
    );
    let w = world_with(UpstreamOptions::default(), "none", "", &extra, None).await;
    for (login, from) in [
        ("user@example.com", "mailbox@example.com"),
        ("other@example.com", "other@example.com"),
    ] {
        let mut c = Client::connect(w.relay.addr).await;
        c.reply().await;
        c.ehlo().await;
        c.send(&format!("AUTH PLAIN {}\r\n", plain(login, PASSWORD)))
            .await;
        assert_eq!(
            c.reply().await,
            "235 2.7.0 Authentication successful\r\n",
            "{login}"
        );
        c.send(&format!(
            "MAIL FROM:<{from}>\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n"
        ))
        .await;
        assert_eq!(c.reply().await, "250 2.1.0 Ok\r\n");
        assert_eq!(c.reply().await, "250 2.1.0 Ok\r\n");
        assert!(c.reply().await.starts_with("354 "));
        c.send(&format!("Subject: from {login}\r\n\r\nbody\r\n.\r\n"))
            .await;
        assert_eq!(c.reply().await, "250 2.0.0 Ok: queued as FAKE\r\n");
    }
    let first = w.upstream.log.lock().unwrap();
    let second_log = second.log.lock().unwrap();
    assert_eq!(
        first.messages,
        vec![b"Subject: from user@example.com\r\n\r\nbody\r\n".to_vec()]
    );
    assert_eq!(
        second_log.messages,
        vec![b"Subject: from other@example.com\r\n\r\nbody\r\n".to_vec()]
    );
    // Each server saw only its own account's login.
    assert_eq!(
        second_log.sasl,
        vec![plain("other@example.com", "app-password-canary-b2")]
    );
    assert!(first
        .sasl
        .iter()
        .all(|s| !s.contains(&plain("other@example.com", "app-password-canary-b2"))));
}
