//! SMTP through authrelay against real servers on loopback: legacy clients (swaks, msmtp, curl,
//! Python smtplib) log in with a username and password; Dovecot submission accepts only XOAUTH2
//! tokens (checked by introspection at the fake identity provider) and relays to Postfix, which
//! delivers into a maildir. The maildir must hold exactly the bytes that were sent.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::interop::*;

const MAILBOX: &str = "alice@example.com";

fn relay() -> RelayProcess {
    stack();
    let rt = new_refresh_token(MAILBOX);
    RelayProcess::start(
        AccountSpec {
            mailbox: MAILBOX,
            refresh_token: Some(&rt),
            token_url: format!("http://{IDP}/token"),
        },
        SUBMISSION,
        "starttls",
    )
}

fn marker(client: &str, mode: &str, mech: &str) -> String {
    format!(
        "{client}-{mode}-{mech}-{}-{}",
        std::process::id(),
        free_port()
    )
}

fn write_message(dir: &Path, marker: &str, attachment: usize) -> (std::path::PathBuf, Vec<u8>) {
    let msg = message(marker, attachment);
    let path = dir.join(format!("{marker}.eml"));
    std::fs::write(&path, &msg).unwrap();
    (path, msg)
}

fn expect_delivered(marker: &str, sent: &[u8]) {
    let stored = delivered(MAILBOX, marker, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{marker} was not delivered"));
    assert_delivered_exactly(&stored, sent);
}

const MODES: [&str; 3] = ["plain", "starttls", "implicit"];
const MECHS: [&str; 2] = ["PLAIN", "LOGIN"];

fn port(r: &RelayProcess, mode: &str) -> u16 {
    match mode {
        "plain" => r.plain,
        "starttls" => r.starttls,
        _ => r.implicit,
    }
}

#[test]
fn swaks_in_every_mode_and_mechanism() {
    let r = relay();
    let dir = tempfile::tempdir().unwrap();
    for mode in MODES {
        for mech in MECHS {
            let m = marker("swaks", mode, mech);
            let (file, sent) = write_message(dir.path(), &m, 0);
            let mut cmd = Command::new("swaks");
            cmd.args([
                "--server",
                "127.0.0.1",
                "--port",
                &port(&r, mode).to_string(),
                "--auth",
                mech,
            ])
            .args([
                "--auth-user",
                "scanner@example.com",
                "--auth-password",
                LOCAL_PASSWORD,
            ])
            .args(["--from", MAILBOX, "--to", MAILBOX, "--data"])
            .arg(format!("@{}", file.display()));
            match mode {
                "starttls" => {
                    cmd.arg("--tls");
                }
                "implicit" => {
                    cmd.arg("--tls-on-connect");
                }
                _ => {}
            }
            let out = run(&mut cmd);
            assert!(out.status.success(), "swaks {mode} {mech}: {}", text(&out));
            // swaks ends DATA with its own CRLF before the final dot, after the file's content.
            let mut on_the_wire = sent.clone();
            on_the_wire.extend_from_slice(b"\r\n");
            expect_delivered(&m, &on_the_wire);
        }
    }
    r.assert_no_secrets();
}

#[test]
fn msmtp_in_every_mode_and_mechanism() {
    let r = relay();
    let dir = tempfile::tempdir().unwrap();
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, LOCAL_PASSWORD).unwrap();
    for mode in MODES {
        for mech in MECHS {
            let m = marker("msmtp", mode, mech);
            let (file, sent) = write_message(dir.path(), &m, 0);
            let (tls, starttls) = match mode {
                "plain" => ("off", "on"),
                "starttls" => ("on", "on"),
                _ => ("on", "off"),
            };
            let script = format!(
                "msmtp --host=127.0.0.1 --port={} --auth={} --user=scanner@example.com --passwordeval='cat {}' --tls={tls} --tls-starttls={starttls} --tls-trust-file={} --from={MAILBOX} {MAILBOX} < {}",
                port(&r, mode),
                mech.to_lowercase(),
                pwfile.display(),
                r.cert.cert.display(),
                file.display()
            );
            let out = run(Command::new("sh").args(["-c", &script]));
            assert!(out.status.success(), "msmtp {mode} {mech}: {}", text(&out));
            expect_delivered(&m, &sent);
        }
    }
    r.assert_no_secrets();
}

#[test]
fn curl_in_every_mode_and_mechanism() {
    let r = relay();
    let dir = tempfile::tempdir().unwrap();
    for mode in MODES {
        for mech in MECHS {
            let m = marker("curl", mode, mech);
            let (file, sent) = write_message(dir.path(), &m, 0);
            let p = port(&r, mode);
            let url = match mode {
                "implicit" => format!("smtps://127.0.0.1:{p}"),
                _ => format!("smtp://127.0.0.1:{p}"),
            };
            let mut cmd = Command::new("curl");
            cmd.args(["-sS", "--login-options", &format!("AUTH={mech}")])
                .args(["-u", &format!("scanner@example.com:{LOCAL_PASSWORD}")])
                .args(["--mail-from", MAILBOX, "--mail-rcpt", MAILBOX, "--cacert"])
                .arg(&r.cert.cert)
                .arg("-T")
                .arg(&file)
                .arg(&url);
            if mode == "starttls" {
                cmd.arg("--ssl-reqd");
            }
            let out = run(&mut cmd);
            assert!(out.status.success(), "curl {mode} {mech}: {}", text(&out));
            expect_delivered(&m, &sent);
        }
    }
    r.assert_no_secrets();
}

fn smtplib(
    r: &RelayProcess,
    mode: &str,
    mech: &str,
    user: &str,
    password: &str,
    file: &Path,
) -> std::process::Output {
    run(Command::new("python3")
        .arg(root().join("tests/interop/smtp_client.py"))
        .args([
            &port(r, mode).to_string(),
            mode,
            mech,
            user,
            password,
            &r.mailbox,
            MAILBOX,
        ])
        .arg(file)
        .arg(&r.cert.cert))
}

#[test]
fn python_smtplib_in_every_mode_and_mechanism() {
    let r = relay();
    let dir = tempfile::tempdir().unwrap();
    for mode in MODES {
        for mech in MECHS {
            let m = marker("smtplib", mode, mech);
            let (file, sent) = write_message(dir.path(), &m, 0);
            let out = smtplib(&r, mode, mech, "scanner@example.com", LOCAL_PASSWORD, &file);
            assert_eq!(text(&out).trim(), "OK", "smtplib {mode} {mech}");
            expect_delivered(&m, &sent);
        }
    }
    r.assert_no_secrets();
}

/// Every transaction's sender is checked, through Dovecot submission and Postfix: a batch
/// script's session with foreign senders after a message, after RSET and after a null sender
/// delivers only its own two messages, each from the signed-in mailbox.
#[test]
fn every_transaction_in_a_session_has_its_sender_checked() {
    let r = relay();
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (
        marker("batch", "plain", "one"),
        marker("batch", "plain", "two"),
    );
    let (first, sent_first) = write_message(dir.path(), &one, 0);
    let (second, sent_second) = write_message(dir.path(), &two, 0);
    let out = run(Command::new("python3")
        .arg(root().join("tests/interop/smtp_transactions.py"))
        .args([
            &r.plain.to_string(),
            "scanner@example.com",
            LOCAL_PASSWORD,
            &r.mailbox,
            "bob@example.com",
            MAILBOX,
        ])
        .arg(&first)
        .arg(&second));
    let steps = text(&out);
    let code = |step: &str| {
        steps
            .lines()
            .find(|l| l.starts_with(&format!("{step} ")))
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or_else(|| panic!("no {step} in {steps}"))
            .to_owned()
    };
    for (step, expected) in [
        ("first", "250"),
        ("foreign-after-data", "550"),
        ("foreign-after-rset", "550"),
        ("null", "250"),
        ("foreign-after-null", "550"),
        ("empty-route", "501"),
        ("second", "250"),
    ] {
        assert_eq!(code(step), expected, "{step}: {steps}");
    }
    assert!(steps.contains("5.7.60 Sender <bob@example.com> is not the signed-in mailbox"));
    for (m, sent) in [(&one, &sent_first), (&two, &sent_second)] {
        let stored = delivered(MAILBOX, m, Duration::from_secs(30)).expect("delivered");
        assert_delivered_exactly(&stored, sent);
        let stored = String::from_utf8_lossy(&stored);
        assert!(
            stored.contains(&format!("Return-Path: <{}>", r.mailbox)),
            "{stored}"
        );
    }
    r.assert_no_secrets();
}

#[test]
fn thirty_megabyte_attachment_over_tls_both_sides_arrives_intact() {
    stack();
    let rt = new_refresh_token(MAILBOX);
    // Implicit TLS upstream this time (Dovecot submissions), STARTTLS towards the client.
    let r = RelayProcess::start(
        AccountSpec {
            mailbox: MAILBOX,
            refresh_token: Some(&rt),
            token_url: format!("http://{IDP}/token"),
        },
        SUBMISSIONS,
        "implicit",
    );
    let dir = tempfile::tempdir().unwrap();
    let m = marker("smtplib", "starttls", "30MB");
    let (file, sent) = write_message(dir.path(), &m, 30 * 1024 * 1024);
    let out = smtplib(
        &r,
        "starttls",
        "PLAIN",
        "scanner@example.com",
        LOCAL_PASSWORD,
        &file,
    );
    assert_eq!(text(&out).trim(), "OK");
    let stored = delivered(MAILBOX, &m, Duration::from_secs(60)).expect("delivered");
    // CRLF became LF in the maildir, so the file is a little smaller than what was sent.
    assert!(
        stored.len() > 29 * 1024 * 1024,
        "{} bytes stored",
        stored.len()
    );
    assert_delivered_exactly(&stored, &sent);
    r.assert_no_secrets();
}

#[test]
fn refused_logins_get_their_exact_reply_and_deliver_nothing() {
    stack();
    let user = "bob@example.com";
    let dir = tempfile::tempdir().unwrap();
    let rt = new_refresh_token(user);
    let r = RelayProcess::start(
        AccountSpec {
            mailbox: user,
            refresh_token: Some(&rt),
            token_url: format!("http://{IDP}/token"),
        },
        SUBMISSION,
        "starttls",
    );
    let cases = [
        (
            "wrong-password",
            "scanner@example.com",
            "not the password",
            "ERR 535 5.7.8 Authentication credentials invalid",
        ),
        (
            "unknown-user",
            "nobody@example.com",
            LOCAL_PASSWORD,
            "ERR 535 5.7.8 Authentication credentials invalid",
        ),
    ];
    for (name, login, password, expected) in cases {
        let m = marker("negative", name, "PLAIN");
        let (file, _) = write_message(dir.path(), &m, 0);
        let out = smtplib(&r, "plain", "PLAIN", login, password, &file);
        assert_eq!(text(&out).trim(), expected, "{name}");
        assert!(delivered(MAILBOX, &m, Duration::from_secs(2)).is_none());
    }
    // swaks sees the same refusal.
    let out = run(Command::new("swaks").args([
        "--server",
        "127.0.0.1",
        "--port",
        &r.plain.to_string(),
        "--auth",
        "LOGIN",
        "--auth-user",
        "scanner@example.com",
        "--auth-password",
        "wrong",
        "--from",
        MAILBOX,
        "--to",
        MAILBOX,
    ]));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("<~* 535 5.7.8 Authentication credentials invalid")
            || text(&out).contains("<** 535 5.7.8 Authentication credentials invalid"),
        "{}",
        text(&out)
    );

    // The user revoked every grant: the refresh fails with invalid_grant.
    idp_post("/admin/revoke", &format!(r#"{{"user":"{user}"}}"#));
    let m = marker("negative", "revoked", "PLAIN");
    let (file, _) = write_message(dir.path(), &m, 0);
    let out = smtplib(
        &r,
        "plain",
        "PLAIN",
        "scanner@example.com",
        LOCAL_PASSWORD,
        &file,
    );
    assert_eq!(
        text(&out).trim(),
        "ERR 535 5.7.8 Sign-in for bob@example.com failed (AADSTS70000): the refresh token expired or was revoked: re-authorize the account with `authrelay login scanner`"
    );
    assert!(
        r.log_text().contains("AADSTS70000"),
        "the log names the cause"
    );
    r.assert_no_secrets();
    drop(r);

    // The token endpoint is down.
    let down_url = format!("http://127.0.0.1:{}/token", free_port());
    let down = RelayProcess::start(
        AccountSpec {
            mailbox: user,
            refresh_token: Some("rt-never-used"),
            token_url: down_url.clone(),
        },
        SUBMISSION,
        "starttls",
    );
    let m = marker("negative", "idp-down", "PLAIN");
    let (file, _) = write_message(dir.path(), &m, 0);
    let out = smtplib(
        &down,
        "plain",
        "PLAIN",
        "scanner@example.com",
        LOCAL_PASSWORD,
        &file,
    );
    assert_eq!(text(&out).trim(), format!("ERR 454 4.7.0 Temporary authentication failure (the identity provider is unreachable at {down_url} (check token_url); network)"));
    down.assert_no_secrets();
}

#[test]
fn a_revoked_access_token_is_replaced_transparently() {
    stack();
    let user = "carol@example.com";
    let rt = new_refresh_token(user);
    let r = RelayProcess::start(
        AccountSpec {
            mailbox: user,
            refresh_token: Some(&rt),
            token_url: format!("http://{IDP}/token"),
        },
        SUBMISSION,
        "starttls",
    );
    let dir = tempfile::tempdir().unwrap();
    let send = |tag: &str| {
        let m = marker("revoke", tag, "PLAIN");
        let (file, sent) = write_message(dir.path(), &m, 0);
        let out = smtplib(
            &r,
            "plain",
            "PLAIN",
            "scanner@example.com",
            LOCAL_PASSWORD,
            &file,
        );
        assert_eq!(text(&out).trim(), "OK", "{tag}");
        let stored = delivered(MAILBOX, &m, Duration::from_secs(30));
        // The message goes to alice (the To: address), sent by carol's mailbox.
        assert_delivered_exactly(&stored.expect("delivered"), &sent);
    };
    send("first");
    idp_post("/admin/revoke-access", &format!(r#"{{"user":"{user}"}}"#));
    send("after-revocation");
    assert!(r.log_text().contains("refreshing it and trying once more"));
    r.assert_no_secrets();
}

#[test]
fn the_secret_scan_finds_each_kind_of_secret() {
    let canaries = vec![LOCAL_PASSWORD.to_string()];
    let clean = "INFO session{id=1}: upstream login accepted latency_ms=12 rt-canary is not hex";
    assert_eq!(find_secret(clean, &canaries), None);
    for leak in [
        format!("DEBUG password={LOCAL_PASSWORD}"),
        "TRACE body=grant_type=refresh_token&refresh_token=rt-0123456789abcdef0123456789abcdef"
            .to_string(),
        "TRACE access_token=at-0123456789abcdef0123456789abcdef".to_string(),
        "DEBUG sent dXNlcj1hbGljZUBleGFtcGxlLmNvbQFhdXRo".to_string(),
    ] {
        assert!(find_secret(&leak, &canaries).is_some(), "missed: {leak}");
    }
}

/// Spool mode with real peers: swaks (plaintext, STARTTLS, implicit TLS) and Python's smtplib
/// submit to a spool listener; each message is answered `250 … queued as` from the spool, then
/// delivered by the relay to Dovecot's submission (XOAUTH2) and on through Postfix to the
/// maildir, byte for byte, with only the trace headers added (the messages carry their own
/// Message-ID and Date, so the relay adds none).
#[test]
fn spool_mode_delivers_what_swaks_and_smtplib_submit() {
    stack();
    let rt = new_refresh_token(MAILBOX);
    let r = RelayProcess::start_spool(
        AccountSpec {
            mailbox: MAILBOX,
            refresh_token: Some(&rt),
            token_url: format!("http://{IDP}/token"),
        },
        SUBMISSION,
        "starttls",
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for mode in MODES {
        let m = marker("spool-swaks", mode, "PLAIN");
        let (file, sent) = write_message(dir.path(), &m, 20_000);
        let mut cmd = Command::new("swaks");
        cmd.args([
            "--server",
            "127.0.0.1",
            "--port",
            &port(&r, mode).to_string(),
        ])
        .args(["--auth", "PLAIN", "--auth-user", "scanner@example.com"])
        .args(["--auth-password", LOCAL_PASSWORD])
        .args(["--from", MAILBOX, "--to", MAILBOX, "--data"])
        .arg(format!("@{}", file.display()));
        match mode {
            "starttls" => {
                cmd.arg("--tls");
            }
            "implicit" => {
                cmd.arg("--tls-on-connect");
            }
            _ => {}
        }
        let out = run(&mut cmd);
        let said = text(&out);
        assert!(out.status.success(), "swaks {mode}: {said}");
        assert!(said.contains("250 2.0.0 Ok: queued as "), "{said}");
        let mut on_the_wire = sent;
        on_the_wire.extend_from_slice(b"\r\n");
        expected.push((m, on_the_wire));
    }
    let m = marker("spool-smtplib", "plain", "PLAIN");
    let (file, sent) = write_message(dir.path(), &m, 0);
    let script = format!(
        "import smtplib,sys\ns=smtplib.SMTP('127.0.0.1',{})\ns.login('scanner@example.com',sys.argv[1])\nr=s.sendmail('{MAILBOX}',['{MAILBOX}'],open(sys.argv[2],'rb').read())\nprint('refused',r)\nprint(s.noop())\ns.quit()\n",
        r.plain
    );
    let out = run(Command::new("python3")
        .args(["-c", &script, LOCAL_PASSWORD])
        .arg(&file));
    assert!(out.status.success(), "smtplib: {}", text(&out));
    expected.push((m, sent));
    for (m, sent) in &expected {
        expect_delivered(m, sent);
    }
    let log = r.log_text();
    assert_eq!(log.matches("message spooled").count(), 4, "{log}");
    r.assert_no_secrets();
}

/// Exchange Online's limit of three sessions per mailbox, played by the harness's Dovecot
/// submission on 127.0.0.2: fifty devices sending as one mailbox at once through a spool
/// listener are all told 250, and every message is delivered exactly once; the relay never
/// opens a fourth session. Through the live pipe the same burst gets refusals (printed, the
/// reason the spool exists).
#[test]
fn fifty_devices_as_one_mailbox_within_a_three_session_limit() {
    stack();
    let rt = new_refresh_token(MAILBOX);
    let limited = "127.0.0.2:11588";
    let r = RelayProcess::start_spool(
        AccountSpec {
            mailbox: MAILBOX,
            refresh_token: Some(&rt),
            token_url: format!("http://{IDP}/token"),
        },
        limited,
        "starttls",
        "messages_per_minute = 6000",
    );
    let run_id = marker("fifty", "spool", "x");
    let send = |port: u16, i: usize, tag: &str| -> String {
        let script = format!(
            "import smtplib,sys\ns=smtplib.SMTP('127.0.0.1',{port})\ns.login('scanner@example.com',sys.argv[1])\ntry:\n  s.sendmail('{MAILBOX}',['{MAILBOX}'],'From: {MAILBOX}\\r\\nSubject: {tag}-{i}\\r\\n\\r\\nscan {i}\\r\\n')\n  print('ok')\nexcept smtplib.SMTPException as e:\n  print('refused', e)\n"
        );
        let out = run(Command::new("python3").args(["-c", &script, LOCAL_PASSWORD]));
        text(&out)
    };
    let results: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (port, tag) = (r.plain, run_id.as_str());
                scope.spawn(move || send(port, i, tag))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused: Vec<&String> = results.iter().filter(|r| !r.starts_with("ok")).collect();
    assert!(refused.is_empty(), "{} refused: {refused:?}", refused.len());
    for i in 0..50 {
        let marker = format!("{run_id}-{i}");
        let stored = delivered(MAILBOX, &marker, Duration::from_secs(120))
            .unwrap_or_else(|| panic!("{marker} was not delivered"));
        assert!(String::from_utf8_lossy(&stored).contains(&format!("scan {i}")));
    }
    // Exactly once: one maildir file per message.
    let files = maildir_files(MAILBOX);
    let copies = files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f).is_ok_and(|t| t.contains(&format!("Subject: {run_id}-")))
        })
        .count();
    assert_eq!(copies, 50, "each of the 50 messages exactly once");
    let log = r.log_text();
    assert!(
        !log.contains("Maximum number of connections"),
        "the relay went over the limit"
    );
    println!("spool mode: 50 devices at once, 50 accepted, 50 delivered once, no session over Dovecot's limit of 3");
    r.assert_no_secrets();
}

/// The subjects in `user`'s maildir, with how many copies of each.
fn subjects_delivered(user: &str) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    for file in maildir_files(user) {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        if let Some(line) = text.lines().find(|l| l.starts_with("Subject: ")) {
            *seen
                .entry(line["Subject: ".len()..].to_owned())
                .or_insert(0) += 1;
        }
    }
    seen
}

/// kill -9 of the relay at random moments during bursts of devices sending through its spool
/// (SPOOL_KILL_ROUNDS rounds, 5 by default): every message a device was told 250 for is
/// delivered after the restart. Duplicates are counted and printed: a kill after Dovecot took a
/// message but before the spool recorded it delivers it again (README: at-least-once).
#[test]
fn kill_9_during_bursts_loses_no_acknowledged_message() {
    stack();
    let user = unique_user("spoolkill");
    let rt = new_refresh_token(&user);
    let mut r = RelayProcess::start_spool(
        AccountSpec {
            mailbox: &user,
            refresh_token: Some(&rt),
            token_url: format!("http://{IDP}/token"),
        },
        SUBMISSION,
        "starttls",
        "messages_per_minute = 100000\nconcurrency = 8",
    );
    let rounds: usize = std::env::var("SPOOL_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut acked = Vec::new();
    for round in 0..rounds {
        let run_id = format!("kill{round}-{}", free_port());
        let mut burst = Command::new("python3")
            .arg(root().join("tests/interop/spool_burst.py"))
            .args([
                &r.plain.to_string(),
                "scanner@example.com",
                LOCAL_PASSWORD,
                &user,
                &user,
                &run_id,
                "8",
                "3",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = burst.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            std::io::BufRead::lines(std::io::BufReader::new(stdout))
                .map_while(Result::ok)
                .filter_map(|l| l.strip_prefix("ACK ").map(str::to_owned))
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(700 + (round as u64 * 173) % 900));
        r.kill_hard();
        std::thread::sleep(Duration::from_millis(200));
        r.restart();
        burst.wait().unwrap();
        acked.extend(reader.join().unwrap());
    }
    assert!(!acked.is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let seen = loop {
        let seen = subjects_delivered(&user);
        let missing = acked.iter().filter(|s| !seen.contains_key(*s)).count();
        if missing == 0 {
            break seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} of {} acknowledged messages not delivered; spool: {:?}",
            acked.len(),
            std::fs::read_dir(r.spool_dir().join("queue")).map(|d| d.count())
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let duplicates: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    // Each kill can repeat at most the deliveries in flight at that moment (concurrency = 8).
    assert!(duplicates.len() <= rounds * 8, "{duplicates:?}");
    let unacked = seen.keys().filter(|s| !acked.contains(s)).count();
    println!(
        "{rounds} rounds of kill -9: {} messages acknowledged, all delivered; {} delivered in all ({unacked} committed without their 250 reaching the device); {} delivered twice",
        acked.len(),
        seen.len(),
        duplicates.len()
    );
    r.assert_no_secrets();
}
