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
    let t = std::time::Instant::now();
    let refused = d.reply().await;
    assert!(refused.contains("AADSTS7000215"), "{refused}");
    wait_for("SetupRefused", || hook.count("SetupRefused", "firing") == 1).await;
    let mut latencies = vec![("SetupRefused firing, from AUTH", t.elapsed())];

    // Fixed: the next login gets a token, which is the end of SetupRefused.
    w.tokens.set(TokenBehaviour::Issue);
    // A message to an unknown recipient is given up: MessagesFailed.
    let t = std::time::Instant::now();
    assert!(send_to(w.relay.addr, "nobody@example.com")
        .await
        .starts_with("250 "));
    wait_for("SetupRefused resolved", || {
        hook.count("SetupRefused", "resolved") == 1
    })
    .await;
    latencies.push(("SetupRefused resolved, from the next login", t.elapsed()));
    wait_for("MessagesFailed", || {
        hook.count("MessagesFailed", "firing") == 1
    })
    .await;
    latencies.push(("MessagesFailed firing, from the message", t.elapsed()));
    // The sender's delivery-status notification goes out through the same account; a message
    // the relay made proves nothing about the devices' mail and resolves nothing.
    wait_for("the notification", || {
        w.upstream.log.lock().unwrap().messages.len() == 1
    })
    .await;
    // Exchange's send-as refusal: only an admin can fix it. The message fails too, but
    // MessagesFailed is already firing and is not told again.
    let t = std::time::Instant::now();
    assert!(send_to(w.relay.addr, "sendas-denied@example.com")
        .await
        .starts_with("250 "));
    wait_for("AdminActionNeeded", || {
        hook.count("AdminActionNeeded", "firing") == 1
    })
    .await;
    latencies.push(("AdminActionNeeded firing, from the message", t.elapsed()));
    // A delivery that works ends both.
    let t = std::time::Instant::now();
    assert!(send_to(w.relay.addr, "r@example.com")
        .await
        .starts_with("250 "));
    wait_for("the resolutions", || {
        hook.count("MessagesFailed", "resolved") == 1
            && hook.count("AdminActionNeeded", "resolved") == 1
    })
    .await;
    latencies.push(("both resolved, from a delivered message", t.elapsed()));
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
    latencies.push(("GrantExpiring firing, from here", started.elapsed()));
    for (what, took) in &latencies {
        eprintln!("alert latency: {what}: {:.2} s", took.as_secs_f64());
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

/// A client secret and a certificate close to their expiry are told ahead of it, each once,
/// with the date; the relay still works meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_and_a_certificate_near_expiry_are_told_ahead() {
    let hook = Hook::start();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("app.pem"), dir.path().join("app.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "5",
        ])
        .args(["-subj", "/CN=authrelay-test-app", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success());
    let in_ten_days = std::time::SystemTime::now() + std::time::Duration::from_secs(10 * 86400);
    let date = authrelay::civil::rfc3339(in_ten_days)[..10].to_owned();
    let extra = format!(
        "client_secret_expires = \"{date}\"\n\n[account.app]\nlogin = \"app@example.com\"\npassword_hash = \"{HASH_OF_PASSWORD}\"\nprovider = \"custom\"\nauth = \"client_credentials\"\nclient_id = \"app\"\ntoken_url = \"http://127.0.0.1:9/token\"\nscopes = [\"https://mail.example/.default\"]\ncertificate = \"{}\"\ncertificate_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let tail = format!(
        "first_retry_secs = 1\n\n[alerts]\nwebhook_url = \"http://127.0.0.1:{}/hook\"\n",
        hook.port
    );
    let started = std::time::Instant::now();
    let SpoolWorld { w, _dir, .. } = spool_world_with(&extra, &tail).await;
    while hook.count("SecretExpiring", "firing") == 0
        || hook.count("CertificateExpiring", "firing") == 0
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{:?}",
            hook.events()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eprintln!(
        "expiry alerts {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    // The watcher looks again every 10 s: still once each.
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    let events = hook.events();
    let one = |event: &str| {
        let found: Vec<_> = events.iter().filter(|e| e["event"] == event).collect();
        assert_eq!(found.len(), 1, "{event}: {events:?}");
        found[0].clone()
    };
    let secret = one("SecretExpiring");
    assert_eq!(secret["account"], "user");
    let summary = secret["summary"].as_str().unwrap();
    assert!(
        summary.contains(&date) && summary.contains("in 9 days"),
        "{summary}"
    );
    let certificate = one("CertificateExpiring");
    assert_eq!(certificate["account"], "app");
    assert!(
        certificate["summary"]
            .as_str()
            .unwrap()
            .contains("in 4 days"),
        "{certificate}"
    );
    // The relay still serves the account.
    assert!(send_to(w.relay.addr, "r@example.com")
        .await
        .starts_with("250 "));
}
