//! Spool mode end to end, in process: devices → authrelay (spool listener) → the fake upstream.
//! A message is acknowledged only once it is in the spool, and then delivered within the
//! account's limits; the sender policy holds for every transaction and for the header From:.

mod support;

use std::time::Duration;
use support::spool::*;
use support::*;

#[tokio::test]
async fn a_message_is_queued_then_delivered_with_message_id_and_date_added() {
    let s = spool_world("").await;
    // No upstream connection while the device logs in and sends (the probe at start is one).
    let before =
        s.w.upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst);
    let mut c = logged_in(s.w.relay.addr).await;
    c.send("MAIL FROM:<mailbox@example.com> SIZE=100\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK\r\n");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK\r\n");
    assert_eq!(c.reply().await, "354 End data with <CR><LF>.<CR><LF>\r\n");
    c.send("From: <mailbox@example.com>\r\nSubject: scan\r\n\r\n..page 1\r\n.\r\n")
        .await;
    let reply = c.reply().await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let id = reply.trim_end().rsplit(' ').next().unwrap().to_owned();
    c.send("QUIT\r\n").await;
    assert_eq!(c.reply().await, "221 2.0.0 Bye\r\n");
    wait_for("delivery", || {
        !s.w.upstream.log.lock().unwrap().messages.is_empty()
    })
    .await;
    wait_for("the spool to empty", || queued(&s.spool) == 0).await;
    let log = s.w.upstream.log.lock().unwrap();
    let delivered = String::from_utf8(log.messages[0].clone()).unwrap();
    assert!(
        delivered.starts_with(&format!("Message-ID: <{id}@localhost>\r\nDate: ")),
        "{delivered}"
    );
    // The fake logs DATA as received: the line that starts with a dot is stuffed again.
    assert!(
        delivered.ends_with("From: <mailbox@example.com>\r\nSubject: scan\r\n\r\n..page 1\r\n"),
        "{delivered}"
    );
    let stored_unstuffed = delivered.replace("\r\n..", "\r\n.");
    assert!(stored_unstuffed.ends_with("\r\n.page 1\r\n"));
    assert!(
        log.commands
            .iter()
            .any(|c| c == "MAIL FROM:<mailbox@example.com>"),
        "{:?}",
        log.commands
    );
    assert!(log
        .commands
        .iter()
        .any(|c| c == "RCPT TO:<rcpt@example.com>"));
    let after =
        s.w.upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(after - before, 1, "one upstream connection: the delivery's");
}

/// Firmware that writes envelope addresses without brackets, with a space after the colon and
/// in lower case (Postfix accepts all of it with strict_rfc821_envelopes = no): queued, and
/// delivered with the addresses as RFC 5321 writes them.
#[tokio::test]
async fn envelope_addresses_without_brackets_are_taken_and_delivered_bracketed() {
    let s = spool_world("").await;
    let mut c = logged_in(s.w.relay.addr).await;
    c.send("mail from: mailbox@example.com\r\nrcpt to:rcpt@example.com\r\ndata\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK\r\n");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK\r\n");
    assert_eq!(c.reply().await, "354 End data with <CR><LF>.<CR><LF>\r\n");
    c.send("From: mailbox@example.com\r\nSubject: scan\r\n\r\npage\r\n.\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    wait_for("delivery", || {
        !s.w.upstream.log.lock().unwrap().messages.is_empty()
    })
    .await;
    let log = s.w.upstream.log.lock().unwrap();
    assert!(
        log.commands
            .iter()
            .any(|c| c == "RCPT TO:<rcpt@example.com>"),
        "{:?}",
        log.commands
    );
}

#[tokio::test]
async fn the_sender_policy_holds_for_every_transaction_and_the_header_from() {
    let s = spool_world("").await;
    let mut c = logged_in(s.w.relay.addr).await;
    c.send("MAIL FROM:<someone.else@example.com>\r\n").await;
    let refused = c.reply().await;
    assert!(refused.starts_with("550 5.7.60 Sender <someone.else@example.com> is not the signed-in mailbox <mailbox@example.com>"), "{refused}");
    c.send("MAIL FROM:<mailbox@example.com>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n")
        .await;
    c.reply().await;
    c.reply().await;
    c.reply().await;
    c.send("From: Boss <boss@example.com>\r\n\r\nhi\r\n.\r\n")
        .await;
    let refused = c.reply().await;
    assert!(
        refused
            .starts_with("550 5.7.60 Header From <boss@example.com> is not the signed-in mailbox"),
        "{refused}"
    );
    // The session goes on: a good second transaction is accepted.
    c.send("MAIL FROM:<mailbox@example.com>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n")
        .await;
    c.reply().await;
    c.reply().await;
    c.reply().await;
    c.send("From: mailbox@example.com\r\n\r\nok\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    wait_for("delivery", || {
        s.w.upstream.log.lock().unwrap().messages.len() == 1
    })
    .await;
}

#[tokio::test]
async fn limits_and_order_have_exact_replies() {
    let s = spool_world("").await;
    let mut c = logged_in(s.w.relay.addr).await;
    let cases = [
        (
            "RCPT TO:<r@example.com>\r\n",
            "503 5.5.1 Error: need MAIL command\r\n",
        ),
        ("DATA\r\n", "503 5.5.1 Error: need MAIL command\r\n"),
        (
            "MAIL FROM:<mailbox@example.com> SIZE=999999\r\n",
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n",
        ),
        (
            "MAIL FROM:<mailbox@example.com>\r\n",
            "250 2.1.0 Sender OK\r\n",
        ),
        (
            "MAIL FROM:<mailbox@example.com>\r\n",
            "503 5.5.1 Error: nested MAIL command\r\n",
        ),
        ("DATA\r\n", "503 5.5.1 Error: need RCPT command\r\n"),
        (
            "RCPT TO:<no-at-sign>\r\n",
            "501 5.1.3 Syntax: RCPT TO:<address>\r\n",
        ),
        (
            "AUTH PLAIN\r\n",
            "503 5.5.1 Error: already authenticated\r\n",
        ),
        ("RSET\r\n", "250 2.0.0 OK\r\n"),
        ("XYZZY\r\n", "500 5.5.2 Error: command not recognized\r\n"),
    ];
    for (command, expected) in cases {
        c.send(command).await;
        assert_eq!(c.reply().await, expected, "{command:?}");
    }
    // Too big: read to the end, refused, nothing queued.
    c.send("MAIL FROM:<mailbox@example.com>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n")
        .await;
    c.reply().await;
    c.reply().await;
    c.reply().await;
    let big = format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(250_000));
    c.send(&big).await;
    assert_eq!(
        c.reply().await,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert_eq!(queued(&s.spool), 0);
    // BDAT in two chunks.
    c.send("MAIL FROM:<mailbox@example.com>\r\nRCPT TO:<r@example.com>\r\n")
        .await;
    c.reply().await;
    c.reply().await;
    c.send("BDAT 20\r\nSubject: chunked\r\n\r\nBDAT 6 LAST\r\nhello\n")
        .await;
    assert_eq!(c.reply().await, "250 2.0.0 20 octets received\r\n");
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    wait_for("delivery", || {
        s.w.upstream.log.lock().unwrap().messages.len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_is_paced_within_the_account_limits_and_all_delivered() {
    // 40 devices at once; the account allows 2 sessions at a time and 1,000 messages a minute.
    let s = spool_world("concurrency = 2\nmessages_per_minute = 1000").await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let addr = s.w.relay.addr;
            tokio::spawn(async move {
                let mut c = logged_in(addr).await;
                c.send(&format!(
                    "MAIL FROM:<mailbox@example.com>\r\nRCPT TO:<r{i}@example.com>\r\nDATA\r\n"
                ))
                .await;
                c.reply().await;
                c.reply().await;
                c.reply().await;
                c.send(&format!("Subject: {i}\r\n\r\nscan {i}\r\n.\r\n"))
                    .await;
                c.reply().await
            })
        })
        .collect();
    for t in tasks {
        let reply = t.await.unwrap();
        assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    }
    wait_for("40 deliveries", || {
        s.w.upstream.log.lock().unwrap().messages.len() == 40
    })
    .await;
    wait_for("the spool to empty", || queued(&s.spool) == 0).await;
    let mut subjects: Vec<String> =
        s.w.upstream
            .log
            .lock()
            .unwrap()
            .messages
            .iter()
            .map(|m| {
                String::from_utf8_lossy(m)
                    .lines()
                    .find(|l| l.starts_with("Subject: "))
                    .unwrap()
                    .to_owned()
            })
            .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), 40, "each message exactly once");
    let most =
        s.w.upstream
            .max_open
            .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        most <= 2,
        "{most} upstream sessions at once; the account allows 2"
    );
    println!("40 messages from 40 devices at once: all delivered once, at most {most} upstream sessions at a time");
    // One session carries several messages (RSET between them): fewer logins than messages.
    let logins =
        s.w.upstream
            .log
            .lock()
            .unwrap()
            .commands
            .iter()
            .filter(|c| c.starts_with("AUTH "))
            .count();
    assert!(logins < 40, "{logins} logins for 40 messages");
    println!("{logins} upstream logins carried the 40 messages");
}

#[tokio::test]
async fn messages_accepted_while_the_upstream_is_down_are_delivered_when_it_returns() {
    // A port with nothing behind it: the upstream is down.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let extra = format!(
        "[spool]\npath = \"{}\"\nmin_free_mb = 1\nfirst_retry_secs = 1\n",
        spool.display()
    );
    let relay = Relay::start(&relay_toml(
        down,
        "none",
        &tokens.url(),
        "spool = true",
        &extra,
    ))
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut c = Client::connect(relay.addr).await;
        c.reply().await;
        c.ehlo().await;
        c.send(&format!(
            "AUTH PLAIN {}\r\n",
            plain("user@example.com", PASSWORD)
        ))
        .await;
        assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
        c.send("MAIL FROM:<mailbox@example.com>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n")
            .await;
        c.reply().await;
        c.reply().await;
        c.reply().await;
        c.send(&format!("Subject: while down {i}\r\n\r\nbody\r\n.\r\n"))
            .await;
        let reply = c.reply().await;
        assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
        ids.push(reply.trim_end().rsplit(' ').next().unwrap().to_owned());
    }
    // Deliveries fail and are deferred; the messages wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(queued(&spool), 5);
    let deferred = std::fs::read_to_string(spool.join("state").join(&ids[0])).unwrap();
    assert!(deferred.contains("upstream unreachable"), "{deferred}");
    // The upstream comes back on its port.
    let upstream = FakeUpstream::start_at(down, UpstreamOptions::default(), None).await;
    for n in 1..=20 {
        upstream.accept_token(&format!("access-{n}"), "mailbox@example.com");
    }
    wait_for("the five deliveries", || {
        upstream.log.lock().unwrap().messages.len() == 5
    })
    .await;
    wait_for("the spool to empty", || queued(&spool) == 0).await;
}

#[test]
fn the_queue_command_lists_shows_retries_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = rt.block_on(async {
        let spool = authrelay::spool::Spool::open(&spool_dir).unwrap();
        let mut ids = Vec::new();
        for subject in ["first", "second"] {
            let id = authrelay::spool::new_id();
            let envelope = authrelay::spool::Envelope {
                id: id.clone(),
                account: "scanner".into(),
                sender: "scanner@example.com".into(),
                recipients: vec!["r@example.com".into()],
                arrived: authrelay::store::unix_now(),
                client: "127.0.0.1".into(),
                bounce: false,
            };
            let mut m = spool.begin(&envelope).await.unwrap();
            m.write(format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes())
                .await
                .unwrap();
            m.commit().await.unwrap();
            ids.push(id);
        }
        spool
            .defer(
                &ids[1],
                &authrelay::spool::DeliveryState {
                    attempts: 2,
                    next_try: u64::MAX / 2,
                    last_reply: "451 4.3.0 try later".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        spool.fail(&ids[0]).unwrap();
        (ids[0].clone(), ids[1].clone())
    });
    let config = dir.path().join("authrelay.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[spool]\npath = \"{}\"\n",
            relay_toml(
                "127.0.0.1:1".parse().unwrap(),
                "none",
                "http://127.0.0.1:1/token",
                "spool = true",
                ""
            ),
            spool_dir.display()
        ),
    )
    .unwrap();
    let queue = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_authrelay"))
            .arg("queue")
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let list = queue(&["list"]);
    assert!(list.starts_with("1 queued, 1 failed\n"), "{list}");
    assert!(
        list.contains(&format!("{b} queued"))
            && list.contains("attempts=2 next try in ")
            && list.contains(" last=\"451 4.3.0 try later\""),
        "{list}"
    );
    assert!(list.contains(&format!("{a} failed")), "{list}");
    // Times as a person reads them: the queued one waits, the failed one will not be tried.
    let line = |id: &str| list.lines().find(|l| l.starts_with(id)).unwrap().to_owned();
    assert!(line(&b).contains(" arrived "), "{list}");
    assert!(line(&b).contains(" next try in "), "{list}");
    assert!(line(&a).contains(" next try never (failed) "), "{list}");
    // And for scripts: one JSON object per message, times in RFC 3339.
    let json: Vec<serde_json::Value> = queue(&["list", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json.len(), 2);
    let rfc3339 = |v: &serde_json::Value| {
        let t = v.as_str().unwrap().as_bytes().to_vec();
        t.len() == 20 && t[4] == b'-' && t[10] == b'T' && t[19] == b'Z'
    };
    for m in &json {
        assert!(rfc3339(&m["arrived"]) && rfc3339(&m["next_try"]), "{m}");
    }
    let queued = json.iter().find(|m| m["id"] == b.as_str()).unwrap();
    assert_eq!(queued["state"], "queued");
    assert_eq!(queued["attempts"], 2);
    assert_eq!(queued["last_reply"], "451 4.3.0 try later");
    let shown: serde_json::Value = serde_json::from_str(&queue(&["show", &b, "--json"])).unwrap();
    assert!(
        shown["header"]
            .as_str()
            .unwrap()
            .contains("Subject: second"),
        "{shown}"
    );
    let shown = queue(&["show", &b]);
    assert!(
        shown.contains("from: <scanner@example.com>\nto: <r@example.com>"),
        "{shown}"
    );
    assert!(shown.contains("Subject: second"), "{shown}");
    queue(&["retry", &a]);
    queue(&["flush"]);
    let list = queue(&["list"]);
    assert!(list.starts_with("2 queued, 0 failed\n"), "{list}");
    queue(&["delete", &a]);
    assert!(queue(&["list"]).starts_with("1 queued, 0 failed\n"));
    let spool = authrelay::spool::Spool::inspect(&spool_dir).unwrap();
    assert_eq!(
        spool.state(&b).unwrap().next_try,
        0,
        "flush makes it due now"
    );
}

#[tokio::test]
async fn a_permanent_failure_goes_to_failed_and_the_sender_gets_a_delivery_status_notification() {
    let s = spool_world("").await;
    let mut c = logged_in(s.w.relay.addr).await;
    c.send("MAIL FROM:<mailbox@example.com>\r\nRCPT TO:<nobody@example.com>\r\nDATA\r\n")
        .await;
    c.reply().await;
    c.reply().await;
    c.reply().await;
    c.send("From: mailbox@example.com\r\nSubject: to nobody\r\n\r\nbody\r\n.\r\n")
        .await;
    let reply = c.reply().await;
    let id = reply.trim_end().rsplit(' ').next().unwrap().to_owned();
    // The notification reaches the sender's mailbox through the same account.
    wait_for("the notification", || {
        s.w.upstream.log.lock().unwrap().messages.len() == 1
    })
    .await;
    let dsn = String::from_utf8(s.w.upstream.log.lock().unwrap().messages[0].clone()).unwrap();
    assert!(
        dsn.contains("Content-Type: multipart/report; report-type=delivery-status;"),
        "{dsn}"
    );
    assert!(dsn.contains("Final-Recipient: rfc822; nobody@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <nobody> User unknown"), "{dsn}");
    assert!(
        dsn.contains("Subject: to nobody"),
        "the original header section: {dsn}"
    );
    assert!(
        s.spool.join("failed").join(&id).exists(),
        "kept for inspection"
    );
    let log = s.w.upstream.log.lock().unwrap();
    assert!(
        log.commands
            .iter()
            .any(|c| c == "RCPT TO:<mailbox@example.com>"),
        "{:?}",
        log.commands
    );
}

#[tokio::test]
async fn recipients_refused_in_a_delivered_message_are_reported_to_the_sender() {
    let s = spool_world("").await;
    let mut c = logged_in(s.w.relay.addr).await;
    c.send("MAIL FROM:<mailbox@example.com>\r\nRCPT TO:<r@example.com>\r\nRCPT TO:<nobody@example.com>\r\nDATA\r\n").await;
    for _ in 0..4 {
        c.reply().await;
    }
    c.send("From: mailbox@example.com\r\nSubject: two recipients\r\n\r\nbody\r\n.\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    // The message itself, then the notification about the refused recipient.
    wait_for("message and notification", || {
        s.w.upstream.log.lock().unwrap().messages.len() == 2
    })
    .await;
    let dsn = String::from_utf8(s.w.upstream.log.lock().unwrap().messages[1].clone()).unwrap();
    assert!(
        dsn.contains("Final-Recipient: rfc822; nobody@example.com\r\n"),
        "{dsn}"
    );
    assert!(
        !dsn.contains("Final-Recipient: rfc822; r@example.com"),
        "{dsn}"
    );
    assert!(dsn.contains("Subject: two recipients"), "{dsn}");
    wait_for("the spool to empty", || queued(&s.spool) == 0).await;
}
