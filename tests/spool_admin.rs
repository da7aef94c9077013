//! The spool as operations see it, in process: readiness, metrics and the account page (its
//! queue table, Retry and Delete), with the fake upstream and token endpoint.

mod support;

use support::spool::*;
use support::*;

/// A device's AUTH against an account whose grant the provider refuses.
async fn refused_auth(addr: std::net::SocketAddr) -> String {
    let mut d = Client::connect(addr).await;
    d.reply().await;
    d.ehlo().await;
    d.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    d.reply().await
}

/// Waits until the account's first delivery is in the store (from then on a refused grant
/// holds mail instead of refusing devices).
async fn on_record(w: &World) {
    wait_for("the first delivery on record", || {
        w.relay
            .running
            .shared
            .tokens
            .store()
            .entry("user")
            .is_some_and(|e| e.delivered_at.is_some())
    })
    .await;
}

/// One message through a logged-in spool session; the reply to its final dot.
async fn spool_one(addr: std::net::SocketAddr, subject: &str) -> String {
    let mut c = logged_in(addr).await;
    c.send("MAIL FROM:<mailbox@example.com>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n")
        .await;
    c.reply().await;
    c.reply().await;
    c.reply().await;
    c.send(&format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n"))
        .await;
    c.reply().await
}

/// Fail fast while setting up, hold once it worked: before the account's first delivery a
/// refused grant is told at AUTH; after it, messages are accepted and held until the account is
/// authorized again, and readiness names the held queue.
#[tokio::test]
async fn a_refused_grant_is_told_at_auth_until_the_first_delivery_then_mail_is_held() {
    let s = admin_world().await;
    let (w, admin, spool) = (&s.w, s.admin, &s.spool);
    let dead = TokenBehaviour::Error {
        error: "invalid_grant",
        description: "AADSTS700082: The refresh token has expired due to inactivity.",
    };
    // Setting up: the scanner's test message is refused at AUTH, with what to do.
    w.tokens.set(dead.clone());
    let refused = refused_auth(w.relay.addr).await;
    assert!(
        refused.starts_with("535 5.7.8 Sign-in for mailbox@example.com failed (AADSTS700082)"),
        "{refused}"
    );
    assert_eq!(queued(spool), 0);
    // It works, and a message goes out. Tokens last a second: every delivery asks again.
    w.tokens
        .expires_in
        .store(1, std::sync::atomic::Ordering::SeqCst);
    w.tokens.set(TokenBehaviour::Issue);
    assert!(spool_one(w.relay.addr, "first")
        .await
        .starts_with("250 2.0.0 Ok: queued as "));
    wait_for("the first delivery", || {
        w.upstream.log.lock().unwrap().messages.len() == 1
    })
    .await;
    on_record(w).await;
    // Then the grant is refused: devices are still accepted, and their mail is held.
    w.tokens.set(dead);
    let reply = spool_one(w.relay.addr, "held").await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let id = reply.trim_end().rsplit(' ').next().unwrap().to_owned();
    wait_for("the dead grant", || {
        w.relay.running.shared.tokens.dead_grant("user").is_some()
    })
    .await;
    assert_eq!(queued(spool), 1);
    assert!(spool_one(w.relay.addr, "held too")
        .await
        .starts_with("250 "));
    // Readiness names the held queue; metrics count it and the deferral.
    let ready = http_get(admin, "/readyz").await;
    assert!(ready.contains("ready, degraded: account user: "), "{ready}");
    assert!(ready.contains("spool: 2 queued, 0 failed"), "{ready}");
    assert!(
        ready.contains("spool held for account user: its grant was refused (AADSTS700082)"),
        "{ready}"
    );
    // The account page shows what waits and why.
    let page = http_get(admin, "/account/user").await;
    assert!(page.contains("<table id=\"spool\">"), "{page}");
    assert!(page.contains(&format!("<td>{id}</td>")), "{page}");
    assert!(page.contains("AADSTS700082"), "{page}");
    // Its age is counted from its arrival (seconds, not "20000 days"), its next try as a wait.
    assert!(page.contains(" s ago</td>"), "{page}");
    assert!(!page.contains("days ago"), "{page}");
    let metrics = http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("authrelay_spool_messages{account=\"user\",state=\"queued\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("authrelay_spool_deliveries_total{outcome=\"deferred\",code=\"error\"}"),
        "{metrics}"
    );
    // Metrics say what readiness says.
    assert!(
        metrics.contains("authrelay_account_usable{account=\"user\"} 0"),
        "{metrics}"
    );
    // Re-authorized: the held messages go out.
    w.tokens.set(TokenBehaviour::Issue);
    wait_for("the held deliveries", || {
        w.upstream.log.lock().unwrap().messages.len() == 3
    })
    .await;
    wait_for("the spool to empty", || queued(spool) == 0).await;
    let ready = http_get(admin, "/readyz").await;
    assert!(ready.contains("\r\n\r\nready\n"), "{ready}");
    let metrics = http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("authrelay_account_usable{account=\"user\"} 1"),
        "{metrics}"
    );
}

/// The account page's Retry and Delete: under the pages' CSRF token and the account's local
/// password; only the account's own messages; a retried failed message goes out again at once.
#[tokio::test]
async fn the_account_page_retries_and_deletes_under_its_rules() {
    let s = admin_world().await;
    let admin = s.admin;
    // Two messages the upstream refuses for good (unknown recipient): both end in failed/.
    let mut ids = Vec::new();
    for subject in ["first", "second"] {
        let mut c = logged_in(s.w.relay.addr).await;
        c.send("MAIL FROM:<mailbox@example.com>\r\nRCPT TO:<nobody@example.com>\r\nDATA\r\n")
            .await;
        for _ in 0..3 {
            c.reply().await;
        }
        c.send(&format!(
            "From: mailbox@example.com\r\nSubject: {subject}\r\n\r\nbody\r\n.\r\n"
        ))
        .await;
        let reply = c.reply().await;
        ids.push(reply.trim_end().rsplit(' ').next().unwrap().to_owned());
    }
    let failed = |id: &str| s.spool.join("failed").join(id).exists();
    wait_for("both failed", || ids.iter().all(|id| failed(id))).await;
    let page = http_get(admin, "/account/user").await;
    assert!(
        page.contains(&format!("name=\"retry\" value=\"{}\"", ids[0])),
        "{page}"
    );
    let csrf = csrf_of(&page);
    let post = |form: String| async move {
        http_post(admin, "/account/user/spool", &form.replace(' ', "+")).await
    };
    let rcpt_attempts = || {
        s.w.upstream
            .log
            .lock()
            .unwrap()
            .commands
            .iter()
            .filter(|c| *c == "RCPT TO:<nobody@example.com>")
            .count()
    };
    let before = rcpt_attempts();
    // Without the page's CSRF token, or without the right password: refused, nothing changes.
    let r = post(format!("csrf=forged&password={PASSWORD}&retry={}", ids[0])).await;
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("The form expired"),
        "{r}"
    );
    let r = post(format!("csrf={csrf}&password=wrong&retry={}", ids[0])).await;
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("Wrong local password"),
        "{r}"
    );
    let r = post(format!("csrf={csrf}&retry={}", ids[0])).await;
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("Enter the account"),
        "{r}"
    );
    // Another account's (or no) message: not found.
    let r = post(format!(
        "csrf={csrf}&password={PASSWORD}&delete=0000-not-here"
    ))
    .await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    assert!(failed(&ids[0]) && failed(&ids[1]));
    assert_eq!(rcpt_attempts(), before, "nothing was tried");
    // Retry: the failed message goes back to the queue and is tried at once.
    let r = post(format!("csrf={csrf}&password={PASSWORD}&retry={}", ids[0])).await;
    assert!(r.starts_with("HTTP/1.1 303"), "{r}");
    assert!(
        r.contains(&"location: /account/user?spool=retried".to_string()),
        "{r}"
    );
    wait_for("the retried delivery", || rcpt_attempts() > before).await;
    // Delete: gone for good.
    let r = post(format!("csrf={csrf}&password={PASSWORD}&delete={}", ids[1])).await;
    assert!(r.starts_with("HTTP/1.1 303"), "{r}");
    assert!(!failed(&ids[1]) && !s.spool.join("queue").join(&ids[1]).exists());
    let page = http_get(admin, "/account/user?spool=deleted").await;
    assert!(
        page.contains("The message was deleted from the spool."),
        "{page}"
    );
    assert!(!page.contains(&format!("<td>{}</td>", ids[1])), "{page}");
}

/// The account page as an admin sees it in a 900 px browser window (headless Chromium): a long
/// provider error and long addresses wrap; nothing is cut and nothing needs a horizontal scroll
/// bar. A screenshot is kept (AUTHRELAY_SHOTS=DIR keeps it there).
#[tokio::test]
async fn the_account_page_fits_a_900_px_window_and_wraps_long_errors() {
    const MFA: &str = "AADSTS50076: Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '00000003-0000-0ff1-ce00-000000000000'.";
    const RCPT: &str = "accounts-payable-invoices-from-the-erp-system-of-the-subsidiary@finance.subsidiary.example.com";
    let s = admin_world().await;
    let (w, admin) = (&s.w, s.admin);
    // Tokens last a second: the held deliveries ask again, and are refused.
    w.tokens
        .expires_in
        .store(1, std::sync::atomic::Ordering::SeqCst);
    w.tokens.set(TokenBehaviour::Issue);
    assert!(spool_one(w.relay.addr, "first").await.starts_with("250 "));
    on_record(w).await;
    w.tokens.set(TokenBehaviour::Error {
        error: "invalid_grant",
        description: MFA,
    });
    for _ in 0..3 {
        let mut c = logged_in(w.relay.addr).await;
        c.send(&format!(
            "MAIL FROM:<mailbox@example.com>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n"
        ))
        .await;
        for _ in 0..3 {
            c.reply().await;
        }
        c.send("Subject: held\r\n\r\nbody\r\n.\r\n").await;
        assert!(c.reply().await.starts_with("250 "));
    }
    wait_for("the refused grant", || {
        w.relay.running.shared.tokens.dead_grant("user").is_some()
    })
    .await;
    let shots = std::env::var_os("AUTHRELAY_SHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| s._dir.path().to_owned());
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("account-900px.png");
    let url = format!("http://{admin}/account/user");
    let script = support::interop::root().join("tests/interop/page_layout.py");
    let out = tokio::task::spawn_blocking({
        let png = png.clone();
        move || {
            std::process::Command::new("/usr/bin/python3")
                .arg(script)
                .args([&url, "900"])
                .arg(&png)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "browser: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layout: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let viewport = layout["viewport"].as_u64().unwrap();
    assert!((850..=900).contains(&viewport), "{layout}");
    assert_eq!(
        layout["scroll_width"].as_u64(),
        Some(viewport),
        "a horizontal scroll bar: {layout}"
    );
    assert_eq!(layout["overflowing"], serde_json::json!([]), "{layout}");
    // The provider's whole sentence is there, and the addresses, with human ages.
    let text = layout["text"].as_str().unwrap().replace('\n', " ");
    assert!(
        text.contains("'00000003-0000-0ff1-ce00-000000000000'"),
        "{text}"
    );
    assert!(text.contains(RCPT), "{text}");
    assert!(text.contains(" s ago"), "{text}");
    assert!(std::fs::metadata(&png).unwrap().len() > 10_000);
}
