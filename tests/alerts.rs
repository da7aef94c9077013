//! The alerts a spooling relay sends, in process, to a real HTTP receiver on loopback: each
//! event once, then once resolved, with no secret in any of them. The events a token
//! endpoint and an upstream can cause without the harness: a refused app registration during
//! setup, a message given up, an answer only an admin can fix, and a sign-in about to lapse.
//! (The GrantRefused and SpoolStuck events, by webhook and by mail into Dovecot, are in
//! interop_unattended.rs.)

mod support;

use support::hook::Hook;
use support::spool::*;
use support::*;

/// One message through a logged-in spool session to `rcpt`; the reply to its final dot.
async fn send_to(addr: std::net::SocketAddr, rcpt: &str) -> String {
    let mut c = logged_in(addr).await;
    c.send(&format!(
        "MAIL FROM:<mailbox@example.com>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n"
    ))
    .await;
    for _ in 0..3 {
        c.reply().await;
    }
    c.send("From: mailbox@example.com\r\nSubject: alerts\r\n\r\nbody\r\n.\r\n")
        .await;
    c.reply().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_refusals_failed_messages_and_admin_answers_are_told_once_and_resolved() {
    let hook = Hook::start();
    let hook_secret = format!("T0/B0/alert-hook-canary-{}", hook.port);
    // A warning window longer than Microsoft's 90-day refresh-token inactivity limit: the
    // sign-in is "about to lapse" from the first token on, which shows GrantExpiring.
    let tail = format!(
        "first_retry_secs = 1\n\n[alerts]\nwebhook_url = \"http://127.0.0.1:{}/{hook_secret}\"\nexpiry_warning_days = 100\n",
        hook.port
    );
    let SpoolWorld { w, _dir, spool } = spool_world_with("", &tail).await;

    // Setting up with the wrong client secret: the device is refused, the admin is told.
    w.tokens.set(TokenBehaviour::Error {
        error: "invalid_client",
        description: "AADSTS7000215: Invalid client secret provided.",
    });
    let mut d = Client::connect(w.relay.addr).await;
    d.reply().await;
    d.ehlo().await;
    d.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    let refused = d.reply().await;
    assert!(refused.contains("AADSTS7000215"), "{refused}");
    wait_for("SetupRefused", || hook.count("SetupRefused", "firing") == 1).await;

    // Fixed: the next login gets a token, which is the end of SetupRefused.
    w.tokens.set(TokenBehaviour::Issue);
    // A message to an unknown recipient is given up: MessagesFailed.
    assert!(send_to(w.relay.addr, "nobody@example.com")
        .await
        .starts_with("250 "));
    wait_for("SetupRefused resolved", || {
        hook.count("SetupRefused", "resolved") == 1
    })
    .await;
    wait_for("MessagesFailed", || {
        hook.count("MessagesFailed", "firing") == 1
    })
    .await;
    // The sender's delivery-status notification goes out through the same account; a message
    // the relay made proves nothing about the devices' mail and resolves nothing.
    wait_for("the notification", || {
        w.upstream.log.lock().unwrap().messages.len() == 1
    })
    .await;
    // Exchange's send-as refusal: only an admin can fix it. The message fails too, but
    // MessagesFailed is already firing and is not told again.
    assert!(send_to(w.relay.addr, "sendas-denied@example.com")
        .await
        .starts_with("250 "));
    wait_for("AdminActionNeeded", || {
        hook.count("AdminActionNeeded", "firing") == 1
    })
    .await;
    // A delivery that works ends both.
    assert!(send_to(w.relay.addr, "r@example.com")
        .await
        .starts_with("250 "));
    wait_for("the resolutions", || {
        hook.count("MessagesFailed", "resolved") == 1
            && hook.count("AdminActionNeeded", "resolved") == 1
    })
    .await;
    // The watcher (every 10 s) sees the sign-in's refresh token lapsing within the window.
    let started = std::time::Instant::now();
    while hook.count("GrantExpiring", "firing") == 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "no GrantExpiring: {:?}",
            hook.events()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(queued(&spool), 0);

    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    for (event, status) in [
        ("SetupRefused", "firing"),
        ("SetupRefused", "resolved"),
        ("MessagesFailed", "firing"),
        ("MessagesFailed", "resolved"),
        ("AdminActionNeeded", "firing"),
        ("AdminActionNeeded", "resolved"),
        ("GrantExpiring", "firing"),
    ] {
        assert_eq!(
            hook.count(event, status),
            1,
            "{event} {status}: {:?}",
            hook.events()
        );
    }
    let events = hook.events();
    let find = |event: &str| {
        events
            .iter()
            .find(|e| e["event"] == event && e["status"] == "firing")
            .unwrap()
            .clone()
    };
    let setup = find("SetupRefused");
    assert_eq!(setup["account"], "user");
    assert!(
        setup["summary"].as_str().unwrap().contains("AADSTS7000215"),
        "{setup}"
    );
    let admin = find("AdminActionNeeded");
    assert!(
        admin["summary"].as_str().unwrap().contains("5.7.60"),
        "{admin}"
    );
    assert!(
        admin["action"].as_str().unwrap().contains("Send As"),
        "{admin}"
    );
    let lapsing = find("GrantExpiring");
    assert!(
        lapsing["summary"]
            .as_str()
            .unwrap()
            .contains("90 days unused"),
        "{lapsing}"
    );
    // Every body is the documented JSON, and none holds a secret.
    for e in &events {
        for key in [
            "source", "relay", "event", "status", "summary", "action", "since", "at", "text",
        ] {
            assert!(e.get(key).is_some(), "{key} missing: {e}");
        }
    }
    let bodies: String = hook
        .posts
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    let canaries = [
        hook_secret.as_str(),
        PASSWORD,
        "client-secret-canary-91ab",
        "rt-initial-canary-55cd",
        "access-",
    ];
    for c in canaries {
        assert!(!bodies.contains(c), "a secret in the alerts: {c}");
    }
}
