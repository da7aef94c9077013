//! Sending through Microsoft Graph from the spool, against the harness's fake Graph
//! (tests/harness/fake_graph.py: it checks each bearer token with the fake identity provider,
//! audience included, and submits what it accepts to Postfix, so messages land in Dovecot's
//! maildirs). Devices submit with Python's smtplib to a spool listener; each account has
//! `send = "graph"`. Every control of the fake is per mailbox, so each test has its own.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::interop::*;

const GRAPH: &str = "127.0.0.1:11081";

/// A raw HTTP/1.1 request to the fake Graph; the status and the JSON body.
fn graph(method: &str, path: &str, json: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(GRAPH).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: graph\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}", json.len()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or_default())
}

fn stats() -> serde_json::Value {
    graph("GET", "/stats", "").1
}

/// How many times the fake Graph sent the message with this Message-ID.
fn sends(message_id: &str) -> u64 {
    stats()["sends"][message_id].as_u64().unwrap_or(0)
}

/// The fake's answers to `mailbox` by HTTP status.
fn answered(mailbox: &str, status: u16) -> u64 {
    stats()["statuses"][mailbox][status.to_string()]
        .as_u64()
        .unwrap_or(0)
}

struct GraphRelay {
    child: Child,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    mailbox: String,
    canaries: Vec<String>,
    _dir: tempfile::TempDir,
}

/// How the account gets its Graph token.
enum Grant {
    /// A user's refresh token (delegated).
    Delegated,
    /// Client credentials of an app registered for the mailbox.
    AppOnly,
}

impl GraphRelay {
    fn start(tag: &str, grant: Grant, account_extra: &str) -> GraphRelay {
        stack();
        let mailbox = unique_user(tag);
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let hash = hash_password(LOCAL_PASSWORD);
        let mut canaries = vec![
            LOCAL_PASSWORD.to_owned(),
            CLIENT_SECRET.to_owned(),
            STORE_KEY.to_owned(),
            hash.clone(),
        ];
        let auth = match grant {
            Grant::Delegated => {
                let rt = new_refresh_token(&mailbox);
                canaries.push(rt.clone());
                format!("client_id = \"interop-client\"\nclient_secret = \"{CLIENT_SECRET}\"\nrefresh_token = \"{rt}\"\n")
            }
            Grant::AppOnly => {
                let client = format!("graph-app-{}", free_port());
                idp_post(
                    "/admin/client",
                    &format!(
                        r#"{{"client_id":"{client}","secret":"{CLIENT_SECRET}","mailbox":"{mailbox}"}}"#
                    ),
                );
                format!("auth = \"client_credentials\"\nclient_id = \"{client}\"\nclient_secret = \"{CLIENT_SECRET}\"\n")
            }
        };
        std::fs::write(dir.path().join("store.key"), STORE_KEY).unwrap();
        let config = format!(
            "[listener.smtp]\nprotocol = \"smtp\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"{SUBMISSION}\"\nupstream_tls = \"starttls\"\nupstream_ca = \"{ca}\"\nupstream_name = \"localhost\"\nspool = true\n\n\
             [spool]\npath = \"{d}/spool\"\nmin_free_mb = 1\nfirst_retry_secs = 1\n\n\
             [store]\npath = \"{d}/tokens.json\"\nkey_file = \"{d}/store.key\"\n\n[admin]\nenabled = false\n\n\
             [security]\nfailure_delay_ms = 100\n\n\
             [account.device]\nlogin = \"device@example.com\"\npassword_hash = \"{hash}\"\nmailbox = \"{mailbox}\"\n\
             provider = \"custom\"\ntoken_url = \"http://{IDP}/token\"\n{auth}\
             send = \"graph\"\ngraph_url = \"http://{GRAPH}\"\nmessages_per_minute = 6000\n{account_extra}\n",
            ca = upstream_ca().display(),
            d = dir.path().display(),
        );
        let config_path = dir.path().join("authrelay.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("authrelay.log");
        let child = Command::new(env!("CARGO_BIN_EXE_authrelay"))
            .args(["run", "--log-level", "debug", "--config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "no listener: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        GraphRelay {
            child,
            port,
            config: config_path,
            log,
            mailbox,
            canaries,
            _dir: dir,
        }
    }

    /// Submits `message` with smtplib (envelope from the mailbox to `to`): "ok" or the refusal.
    fn submit(&self, to: &[&str], message: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.eml");
        std::fs::write(&file, message).unwrap();
        let rcpts: Vec<String> = to.iter().map(|r| format!("'{r}'")).collect();
        let script = format!(
            "import smtplib,sys\ns=smtplib.SMTP('127.0.0.1',{})\ns.login('device@example.com',sys.argv[1])\ntry:\n  s.sendmail('{}',[{}],open(sys.argv[2],'rb').read())\n  print('ok')\nexcept smtplib.SMTPException as e:\n  print('refused',e)\ns.quit()\n",
            self.port,
            self.mailbox,
            rcpts.join(",")
        );
        text(&run(Command::new("python3")
            .args(["-c", &script, LOCAL_PASSWORD])
            .arg(&file)))
    }

    fn queue(&self, args: &[&str]) -> String {
        text(&run(Command::new(env!("CARGO_BIN_EXE_authrelay"))
            .arg("queue")
            .args(args)
            .arg("--config")
            .arg(&self.config)))
    }

    /// Waits until the spool holds nothing queued.
    fn drained(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let list = self.queue(&["list"]);
            if list.starts_with("0 queued") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still queued: {list}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9, then the same configuration started again (its log appended).
    fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Command::new(env!("CARGO_BIN_EXE_authrelay"))
            .args(["run", "--log-level", "debug", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_listeners(&[self.port], || self.log_text());
    }

    fn assert_no_secrets(&self) {
        let log = self.log_text();
        if let Some(found) = find_secret(&log, &self.canaries) {
            panic!("a secret is in the log: {found}");
        }
    }
}

impl Drop for GraphRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mail(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@graph.test>\r\n\r\n{body}\r\n").into_bytes()
}

/// A delegated account (the user's refresh token redeemed for the Graph audience) and an
/// app-only account (client credentials, `/.default`) both send through Graph; a blind copy
/// (an envelope recipient no header names) reaches its mailbox without the Bcc showing.
#[test]
fn delegated_and_app_only_accounts_send_through_graph_with_blind_copies() {
    for (tag, grant) in [("gdeleg", Grant::Delegated), ("gapp", Grant::AppOnly)] {
        let r = GraphRelay::start(tag, grant, "");
        let blind = unique_user(&format!("{tag}-bcc"));
        let subject = format!("{tag}-{}", free_port());
        let message = mail(&r.mailbox, &r.mailbox, &subject, "a scan, through Graph");
        assert_eq!(r.submit(&[&r.mailbox, &blind], &message).trim(), "ok");
        for user in [&r.mailbox, &blind] {
            let got = delivered(user, &subject, Duration::from_secs(30))
                .unwrap_or_else(|| panic!("{tag}: not delivered to {user}\n{}", r.log_text()));
            let got = String::from_utf8_lossy(&got);
            assert!(got.contains("a scan, through Graph"), "{got}");
            assert!(!got.contains("Bcc:"), "the blind copy shows: {got}");
        }
        assert_eq!(sends(&format!("<{subject}@graph.test>")), 1);
        r.drained(Duration::from_secs(10));
        let log = r.log_text();
        assert!(log.contains("audience=Graph"), "{log}");
        r.assert_no_secrets();
        println!("{tag}: delivered through Graph to the mailbox and the blind copy, once");
    }
}

/// 429 with Retry-After, an outage (503) in the middle of a burst, and Graph's limit of four
/// requests per mailbox at once: every message is delivered once, the relay never sends a
/// fifth request at once, and waits as long as Graph asks.
#[test]
fn throttling_outages_and_the_concurrency_limit_are_absorbed() {
    let r = GraphRelay::start("gthrottle", Grant::Delegated, "");
    let mb = r.mailbox.clone();
    graph(
        "POST",
        "/admin/delay",
        &format!(r#"{{"mailbox":"{mb}","seconds":0.3}}"#),
    );
    let run = format!("burst-{}", free_port());
    let burst = |from: usize, n: usize| {
        std::thread::scope(|s| {
            let handles: Vec<_> = (from..from + n)
                .map(|i| {
                    let (r, run) = (&r, &run);
                    s.spawn(move || {
                        r.submit(
                            &[&r.mailbox],
                            &mail(&r.mailbox, &r.mailbox, &format!("{run}-{i}"), "x"),
                        )
                    })
                })
                .collect();
            for h in handles {
                assert_eq!(h.join().unwrap().trim(), "ok");
            }
        })
    };
    // Twenty at once: at most four Graph requests at a time, none refused for concurrency.
    burst(0, 20);
    r.drained(Duration::from_secs(60));
    let most = stats()["max_concurrent"][&mb].as_u64().unwrap();
    assert!(most <= 4, "{most} requests at once");
    assert_eq!(
        answered(&mb, 429),
        0,
        "the relay went over Graph's concurrency limit"
    );
    // Throttled: the next three requests get 429 with Retry-After: 2.
    graph(
        "POST",
        "/admin/mode",
        &format!(r#"{{"mailbox":"{mb}","status":429,"count":3,"retry_after":2}}"#),
    );
    burst(20, 5);
    r.drained(Duration::from_secs(60));
    assert_eq!(answered(&mb, 429), 3);
    // Down for five seconds in the middle of a burst.
    graph(
        "POST",
        "/admin/down",
        &format!(r#"{{"mailbox":"{mb}","seconds":5}}"#),
    );
    burst(25, 10);
    r.drained(Duration::from_secs(90));
    assert!(answered(&mb, 503) >= 1);
    for i in 0..35 {
        assert_eq!(sends(&format!("<{run}-{i}@graph.test>")), 1, "message {i}");
        assert!(
            delivered(
                &mb,
                &format!("Subject: {run}-{i}\n"),
                Duration::from_secs(30)
            )
            .is_some(),
            "message {i} not in the maildir"
        );
    }
    let log = r.log_text();
    assert!(
        log.contains("retry_in_secs=2"),
        "Retry-After not honoured: {log}"
    );
    println!(
        "graph: 35 messages, at most {most} requests at once, 3 answered 429 and {} answered 503, all delivered once",
        answered(&mb, 503)
    );
    r.assert_no_secrets();
}

/// Graph answers 504 after sending (the outcome unknown to the relay): the relay looks the
/// message up in Sent Items before trying again, finds it, and does not send it twice.
#[test]
fn an_unanswered_send_is_looked_up_in_sent_items_and_not_sent_twice() {
    let r = GraphRelay::start("g504", Grant::Delegated, "");
    let mb = r.mailbox.clone();
    graph(
        "POST",
        "/admin/mode",
        &format!(r#"{{"mailbox":"{mb}","status":504,"count":1}}"#),
    );
    let subject = format!("g504-{}", free_port());
    assert_eq!(
        r.submit(&[&mb], &mail(&mb, &mb, &subject, "once")).trim(),
        "ok"
    );
    r.drained(Duration::from_secs(30));
    assert_eq!(answered(&mb, 504), 1);
    assert_eq!(
        stats()["lookups"][&mb].as_u64(),
        Some(1),
        "no Sent Items lookup"
    );
    assert_eq!(sends(&format!("<{subject}@graph.test>")), 1, "sent twice");
    assert!(delivered(&mb, &subject, Duration::from_secs(30)).is_some());
    assert!(
        r.log_text().contains("found in Sent Items"),
        "{}",
        r.log_text()
    );
    println!("graph: 504 after sending, found in Sent Items, sent once");
}

/// Permanent refusals: 403 (the app may not send as the mailbox), and messages too large for
/// Graph's 4 MB request: refused before any upload with the default limit, and by Graph's 413
/// when the limit is raised. Each fails at once and the sender gets a delivery-status
/// notification naming the reason.
#[test]
fn refusals_and_oversized_messages_fail_with_a_notification() {
    let r = GraphRelay::start("gdeny", Grant::Delegated, "");
    let mb = r.mailbox.clone();
    graph(
        "POST",
        "/admin/mode",
        &format!(r#"{{"mailbox":"{mb}","status":403,"count":1}}"#),
    );
    let denied = format!("gdeny-{}", free_port());
    assert_eq!(
        r.submit(&[&mb], &mail(&mb, &mb, &denied, "no")).trim(),
        "ok"
    );
    let dsn = wait_for_dsn(&mb, &denied);
    assert!(dsn.contains("403") && dsn.contains("Mail.Send"), "{dsn}");
    assert_eq!(sends(&format!("<{denied}@graph.test>")), 0);

    // 25 MB with the default limit: refused without an upload.
    let big = format!("gbig-{}", free_port());
    let mut message = mail(&mb, &mb, &big, "big");
    message.extend_from_slice(&support::interop::message(&big, 25_000_000));
    assert_eq!(r.submit(&[&mb], &message).trim(), "ok");
    let dsn = wait_for_dsn(&mb, &big);
    assert!(
        dsn.contains("4 MB request limit") && dsn.contains("send = \"smtp\""),
        "{dsn}"
    );
    assert_eq!(answered(&mb, 413), 0, "uploaded although over the limit");
    assert!(
        r.queue(&["list"]).contains("2 failed"),
        "{}",
        r.queue(&["list"])
    );
    drop(r);

    // The same message with the limit raised to 40 MB: Graph itself answers 413.
    let r = GraphRelay::start("gbig", Grant::Delegated, "graph_max_mb = 40");
    let mb = r.mailbox.clone();
    let mut message = mail(&mb, &mb, &big, "big");
    message.extend_from_slice(&support::interop::message(&big, 25_000_000));
    assert_eq!(r.submit(&[&mb], &message).trim(), "ok");
    let dsn = wait_for_dsn(&mb, &big);
    assert!(
        dsn.contains("413") && dsn.contains("40 MB request limit"),
        "{dsn}"
    );
    assert_eq!(answered(&mb, 413), 1);
    println!(
        "graph: 403 and 25 MB (before upload, and by Graph's 413) failed with a notification each"
    );
    r.assert_no_secrets();
}

/// The notification about `subject` in `mailbox`.
fn wait_for_dsn(mailbox: &str, subject: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for f in maildir_files(mailbox) {
            let mut head = vec![0u8; 64 * 1024];
            let n = std::fs::File::open(&f)
                .and_then(|mut h| h.read(&mut head))
                .unwrap_or(0);
            let t = String::from_utf8_lossy(&head[..n]).into_owned();
            if t.contains("multipart/report") && t.contains(subject) {
                return t;
            }
        }
        assert!(Instant::now() < deadline, "no notification for {subject}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A 25 MB message (a scan of 18 MB attached) is more than one Graph request takes: it goes as
/// Microsoft documents for large attachments, a draft without the attachment, the attachment
/// through an upload session in ranges, then send. The maildir's copy has the same bytes.
#[test]
fn a_25_mb_scan_goes_through_a_draft_and_an_upload_session() {
    use base64::Engine as _;
    let r = GraphRelay::start("gupload", Grant::Delegated, "");
    let mb = r.mailbox.clone();
    let subject = format!("gupload-{}", free_port());
    let mut seed = 0x2545_f491_u32;
    let scan: Vec<u8> = (0..18_000_000)
        .map(|_| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 16) as u8
        })
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&scan);
    let mut message = format!("From: {mb}\r\nTo: {mb}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@graph.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"scan-boundary\"\r\n\r\n--scan-boundary\r\nContent-Type: text/plain\r\n\r\nYour scan is attached.\r\n--scan-boundary\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"scan.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n").into_bytes();
    for line in b64.as_bytes().chunks(76) {
        message.extend_from_slice(line);
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(b"--scan-boundary--\r\n");
    assert!(message.len() > 24_000_000);
    assert_eq!(r.submit(&[&mb], &message).trim(), "ok");
    let got = delivered(&mb, &subject, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("not delivered\n{}", r.log_text()));
    let parsed = mail_parser::MessageParser::default().parse(&got).unwrap();
    let attachment = parsed
        .attachments()
        .find(|a| mail_parser::MimeHeaders::attachment_name(*a) == Some("scan.pdf"))
        .expect("the scan is attached");
    assert!(
        attachment.contents() == &scan[..],
        "the scan's bytes differ"
    );
    assert_eq!(
        parsed.body_text(0).as_deref().map(str::trim),
        Some("Your scan is attached.")
    );
    let chunks = stats()["chunks"][&mb].as_u64().unwrap_or(0);
    assert_eq!(chunks, 6, "18 MB in ranges of 3.2 MB");
    assert_eq!(sends(&format!("<{subject}@graph.test>")), 1);
    r.drained(Duration::from_secs(10));
    println!("graph: a {:.1} MB message sent as a draft plus an upload session of {chunks} ranges; the scan arrived byte for byte", message.len() as f64 / 1e6);
    r.assert_no_secrets();
}

/// Issue 26, finding 15: a kill -9 while Graph holds the answer of a send. Graph sent it; the
/// relay never heard. After the restart the message must be looked up in Sent Items, found,
/// and not sent again (before: sent again without the lookup, a duplicate).
#[test]
fn a_kill_during_a_send_is_looked_up_after_the_restart_and_not_sent_twice() {
    // Graph takes 2 s to send; the relay's requests time out after 5 s, so after the restart
    // the lookup waits until 5 s after the send began.
    let mut r = GraphRelay::start("gkill", Grant::Delegated, "graph_timeout_secs = 5");
    let mb = r.mailbox.clone();
    graph(
        "POST",
        "/admin/delay",
        &format!(r#"{{"mailbox":"{mb}","seconds":2}}"#),
    );
    let subject = format!("gkill-{}", free_port());
    assert_eq!(
        r.submit(&[&mb], &mail(&mb, &mb, &subject, "once")).trim(),
        "ok"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats()["max_concurrent"][&mb].as_u64().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the send never reached Graph");
        std::thread::sleep(Duration::from_millis(20));
    }
    r.kill_and_restart();
    graph(
        "POST",
        "/admin/delay",
        &format!(r#"{{"mailbox":"{mb}","seconds":0}}"#),
    );
    r.drained(Duration::from_secs(30));
    let message_id = format!("<{subject}@graph.test>");
    assert_eq!(sends(&message_id), 1, "sent twice:\n{}", r.log_text());
    assert_eq!(
        stats()["lookups"][&mb].as_u64(),
        Some(1),
        "no Sent Items lookup"
    );
    assert!(
        r.log_text().contains("found in Sent Items"),
        "{}",
        r.log_text()
    );
    println!("graph: kill -9 while Graph held the answer: looked up after the restart, sent once");
}
