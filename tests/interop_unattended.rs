//! The path a newcomer takes, end to end, against the harness (Dovecot and the fake identity
//! provider): the shipped example configuration with its defaults (SMTP spooling, the token
//! store with the key the relay makes itself), only endpoints and ports overridden through
//! `AUTHRELAY__...` variables. The relay runs from `/` (as under systemd), `authrelay login` from
//! another directory, everything under `umask 000`:
//!
//! 1. a device sends a message before anyone signed in: `250`, held in the spool;
//! 2. the relay restarts; the admin signs in (device code, or paste) while it runs;
//! 3. the held message is delivered with no device logging in since the restart;
//! 4. live IMAP and POP3 logins work, and another message goes out;
//! 5. after another restart, delivery and live logins still work;
//! 6. every file the relay wrote is private (0700 directories, 0600 files), and no secret is in
//!    the log or in what `authrelay login` printed.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};
use support::hook::Hook;
use support::interop::*;
use support::newcomer::{modes, Newcomer};

fn newcomer_flow(way: &str) {
    let mut r = Newcomer::new(&format!("new{}", way.trim_start_matches('-')));
    r.start();
    // 1. Before anyone signed in, the scanner's test message is held, not lost.
    let early = format!("early-{}", free_port());
    assert_eq!(r.send(&early), "OK", "{}", r.log_text());
    // The held message and its delivery record, written under umask 000, are private.
    let spool = r.state().join("spool");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(spool.join("state")).unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "no deferral: {}", r.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let held = modes(&spool);
    for sub in ["queue", "state"] {
        assert!(
            held.iter()
                .any(|(p, m)| p.parent() == Some(&spool.join(sub)) && *m == 0o600),
            "{held:?}"
        );
    }
    assert!(
        held.iter().all(|(_, m)| *m == 0o600 || *m == 0o700),
        "{held:?}"
    );
    // Readiness tells the truth: up, but this account cannot send yet.
    let health = run(&mut r.command(Path::new("/"), &["health"]));
    assert!(health.status.success(), "{}", text(&health));
    assert!(
        text(&health).starts_with("ready, degraded: account scanner: not authorized yet"),
        "{}",
        text(&health)
    );
    // The live check meets what the device would: no token yet, said in the device's words.
    let live = run(&mut r.command(Path::new("/"), &["check", "--live"]));
    assert!(!live.status.success(), "{}", text(&live));
    assert!(
        text(&live).contains("live: account scanner via listener smtp (")
            && text(&live).contains(": FAILED: Sign-in for"),
        "{}",
        text(&live)
    );
    // 2. A restart, then the sign-in with the relay running, from another directory.
    r.stop();
    r.start();
    let output = r.sign_in(way);
    let signed_in_at = r.log_text().len();
    let store = r.state().join("tokens.json");
    assert!(
        way == "page" || output.contains(&format!("tokens stored in {}", store.display())),
        "the absolute store path: {output}"
    );
    // 3. Delivered with no device login since the restart.
    assert!(
        delivered(&r.user, &early, Duration::from_secs(60)).is_some(),
        "the held message was not delivered: {}",
        r.log_text()
    );
    let health = run(&mut r.command(Path::new("/"), &["health"]));
    assert!(
        health.status.success() && text(&health).starts_with("ready\n"),
        "{}",
        text(&health)
    );
    // The live check agrees: every listener's upstream takes the account's login.
    let live = run(&mut r.command(Path::new("/"), &["check", "--live"]));
    let said = text(&live);
    eprintln!("{said}");
    assert!(live.status.success(), "{said}");
    for login in [
        "SMTP AUTH accepted",
        "IMAP AUTHENTICATE accepted",
        "POP3 AUTH accepted",
    ] {
        assert!(said.contains(login), "{said}");
    }
    // 4. Live logins, and another message.
    assert_eq!(r.imap_count(), "COUNT 1", "{}", r.log_text());
    assert!(r.pop3_stat().starts_with("STAT 1 "), "{}", r.log_text());
    let second = format!("second-{}", free_port());
    assert_eq!(r.send(&second), "OK");
    assert!(delivered(&r.user, &second, Duration::from_secs(30)).is_some());
    // 5. Across another restart.
    r.stop();
    r.start();
    assert_eq!(r.imap_count(), "COUNT 2", "{}", r.log_text());
    let third = format!("third-{}", free_port());
    assert_eq!(r.send(&third), "OK");
    assert!(delivered(&r.user, &third, Duration::from_secs(30)).is_some());
    let log = r.log_text();
    // Once signed in, no delivery or login is told the account has no refresh token (the
    // deferrals before the sign-in rightly were).
    let after = &log[signed_in_at..];
    assert!(!after.contains("no_refresh_token"), "{after}");
    // 6. Private files, whatever the umask.
    let written = modes(&r.state());
    for (path, mode) in &written {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:o}", path.display());
    }
    assert!(written.iter().any(|(p, _)| p.ends_with("store.key")));
    assert!(written.iter().any(|(p, _)| p.ends_with("tokens.json")));
    let key = std::fs::read_to_string(r.state().join("store.key")).unwrap();
    let canaries = vec![LOCAL_PASSWORD.to_owned(), key.trim().to_owned()];
    for (what, text) in [("relay log", &log), ("login output", &output)] {
        if let Some(found) = find_secret(text, &canaries) {
            panic!("{found} is in the {what}");
        }
    }
}

#[test]
fn newcomer_with_the_device_code_flow() {
    newcomer_flow("--device");
}

#[test]
fn newcomer_with_the_account_page() {
    newcomer_flow("page");
}

#[test]
fn newcomer_with_the_paste_flow() {
    newcomer_flow("--paste");
}

/// The flow the defect report describes, with the store sealed by the local password: signed in
/// with `authrelay login --device` while the relay runs, then a spooled message, live IMAP and
/// POP3 logins, a restart, another message. Each device login gives the relay the key.
#[test]
fn a_password_sealed_store_serves_the_spool_and_live_logins() {
    let mut r = Newcomer::password_sealed("sealed");
    let check = run(&mut r.command(Path::new("/"), &["check"]));
    assert!(
        text(&check).contains("warning: store.seal: \"password\" with a spooling listener"),
        "{}",
        text(&check)
    );
    r.start();
    r.sign_in("--device");
    let first = format!("sealed-{}", free_port());
    assert_eq!(r.send(&first), "OK");
    assert!(
        delivered(&r.user, &first, Duration::from_secs(30)).is_some(),
        "{}",
        r.log_text()
    );
    assert_eq!(r.imap_count(), "COUNT 1", "{}", r.log_text());
    assert!(r.pop3_stat().starts_with("STAT 1 "), "{}", r.log_text());
    r.stop();
    r.start();
    let second = format!("sealed2-{}", free_port());
    assert_eq!(r.send(&second), "OK");
    assert!(
        delivered(&r.user, &second, Duration::from_secs(30)).is_some(),
        "{}",
        r.log_text()
    );
    assert_eq!(r.imap_count(), "COUNT 2", "{}", r.log_text());
    assert!(!r.log_text().contains("no_refresh_token"));
    assert!(!r.state().join("store.key").exists());
}

/// An account that delivered once loses its grant (revoked at the identity provider) while a
/// message waits: the relay keeps the message, calls for help on the webhook and by mail
/// through another account (a real Dovecot mailbox), says the spool is stuck, and once the
/// admin signs in again delivers it and says each event is over, once. No secret in any alert.
#[test]
fn an_unattended_relay_calls_for_help_and_says_when_it_is_over() {
    let mut r = Newcomer::new("alerts");
    let hook = Hook::start();
    let admin = unique_user("itadmin");
    let sender_box = unique_user("alertbox");
    let alerts_token = new_refresh_token(&sender_box);
    let webhook_secret = format!("T0/B0/hook-canary-{}", free_port());
    let client_id = r
        .env
        .iter()
        .find(|(k, _)| k == "AUTHRELAY__ACCOUNT__SCANNER__CLIENT_ID")
        .map(|(_, v)| v.clone())
        .unwrap();
    for (k, v) in [
        (
            "ALERTS__WEBHOOK_URL",
            format!("http://127.0.0.1:{}/{webhook_secret}", hook.port),
        ),
        ("ALERTS__EMAIL_TO", admin.clone()),
        ("ALERTS__EMAIL_ACCOUNT", "alerts".into()),
        ("ALERTS__SPOOL_STUCK_MINUTES", "1".into()),
        ("ACCOUNT__ALERTS__LOGIN", "alerts@contoso.com".into()),
        (
            "ACCOUNT__ALERTS__PASSWORD_HASH",
            hash_password(LOCAL_PASSWORD),
        ),
        ("ACCOUNT__ALERTS__MAILBOX", sender_box.clone()),
        ("ACCOUNT__ALERTS__PROVIDER", "microsoft".into()),
        ("ACCOUNT__ALERTS__AUTHORITY", format!("http://{IDP}")),
        ("ACCOUNT__ALERTS__TENANT", "contoso".into()),
        ("ACCOUNT__ALERTS__CLIENT_ID", client_id),
        ("ACCOUNT__ALERTS__REFRESH_TOKEN", alerts_token.clone()),
    ] {
        r.env.push((format!("AUTHRELAY__{k}"), v));
    }
    r.start();
    r.sign_in("--device");
    let first = format!("first-{}", free_port());
    assert_eq!(r.send(&first), "OK");
    assert!(
        delivered(&r.user, &first, Duration::from_secs(60)).is_some(),
        "{}",
        r.log_text()
    );
    // The grant is revoked (a password reset, an admin's "revoke sessions").
    idp_post("/admin/revoke", &format!(r#"{{"user":"{}"}}"#, r.user));
    let held = format!("held-{}", free_port());
    let t0 = Instant::now();
    assert_eq!(
        r.send(&held),
        "OK",
        "it delivered before: the message is held"
    );
    let grant = hook.wait_for("GrantRefused", "firing", t0, Duration::from_secs(60));
    let mail = delivered(
        &admin,
        "FIRING: GrantRefused for account scanner",
        Duration::from_secs(60),
    )
    .unwrap_or_else(|| panic!("no alert mail: {}", r.log_text()));
    let mail_latency = t0.elapsed();
    let stuck = hook.wait_for("SpoolStuck", "firing", t0, Duration::from_secs(120));
    // The admin signs in again; the held message goes out with the next try.
    r.sign_in("--device");
    let t1 = Instant::now();
    let flush = run(&mut r.command(Path::new("/"), &["queue", "flush"]));
    assert!(flush.status.success(), "{}", text(&flush));
    assert!(
        delivered(&r.user, &held, Duration::from_secs(90)).is_some(),
        "{}",
        r.log_text()
    );
    let grant_over = hook.wait_for("GrantRefused", "resolved", t1, Duration::from_secs(60));
    let stuck_over = hook.wait_for("SpoolStuck", "resolved", t1, Duration::from_secs(60));
    assert!(
        delivered(
            &admin,
            "RESOLVED: GrantRefused for account scanner",
            Duration::from_secs(60)
        )
        .is_some(),
        "{}",
        r.log_text()
    );
    // Each event once, and its resolution once.
    std::thread::sleep(Duration::from_secs(2));
    let events = hook.events();
    for (event, status) in [
        ("GrantRefused", "firing"),
        ("GrantRefused", "resolved"),
        ("SpoolStuck", "firing"),
        ("SpoolStuck", "resolved"),
    ] {
        let n = events
            .iter()
            .filter(|e| e["event"] == event && e["status"] == status)
            .count();
        assert_eq!(n, 1, "{event} {status}: {events:?}");
    }
    let fired = &events
        .iter()
        .find(|e| e["event"] == "GrantRefused")
        .unwrap();
    assert_eq!(fired["account"], "scanner");
    assert!(
        fired["action"].as_str().unwrap().contains("sign in again"),
        "{fired}"
    );
    // No secret in the alerts, the alert mail or the log.
    let key = std::fs::read_to_string(r.state().join("store.key")).unwrap();
    let canaries = [
        webhook_secret.clone(),
        LOCAL_PASSWORD.to_owned(),
        alerts_token,
        key.trim().to_owned(),
    ];
    let bodies: String = hook
        .posts
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    let mail = String::from_utf8_lossy(&mail).into_owned();
    for (what, text) in [
        ("webhook", &bodies),
        ("mail", &mail),
        ("log", &r.log_text()),
    ] {
        assert_eq!(find_secret(text, &canaries), None, "a secret in the {what}");
    }
    r.stop();
    eprintln!(
        "alert latencies: GrantRefused webhook {:.1} s and mail {:.1} s after the message; \
         SpoolStuck {:.1} s (threshold 60 s); resolved {:.1} s / {:.1} s after the new sign-in",
        grant.as_secs_f64(),
        mail_latency.as_secs_f64(),
        stuck.as_secs_f64(),
        grant_over.as_secs_f64(),
        stuck_over.as_secs_f64()
    );
}
