//! `authrelay queue` while the relay delivers (issue 26: the spool attacked). An operator runs
//! `retry`, `flush`, `list` and `delete` from another process while a message is on the wire:
//! no message may be delivered twice, none lost, and a message deleted during its own delivery
//! is neither retried, bounced nor reported as a spool failure ("could not record a delivery").
//! Before: that deletion logged an error, a deferral wrote a state for a message no longer
//! there, and `queue retry` of a delivered message said "will be tried again now".
//!
//! The upstream is an SMTP server in this test that holds each message's final reply until the
//! test releases it, so the commands run while the delivery is in flight.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use support::interop::*;

/// What the holding upstream saw: subjects whose data arrived, and those it answered 250.
#[derive(Default)]
struct Seen {
    held: Vec<String>,
    accepted: Vec<String>,
    /// Final replies it may give.
    releases: usize,
}

/// An SMTP server (RFC 5321) that takes any XOAUTH2 login and answers each message's final dot
/// only once [`Holding::release`] allows it.
#[derive(Clone)]
struct Holding(Arc<(Mutex<Seen>, Condvar)>);

impl Holding {
    fn start() -> (Holding, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let holding = Holding(Arc::default());
        let h = holding.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let h = h.clone();
                std::thread::spawn(move || h.serve(tcp));
            }
        });
        (holding, port)
    }

    fn serve(&self, tcp: TcpStream) {
        let mut out = tcp.try_clone().unwrap();
        let mut lines = BufReader::new(tcp);
        let mut say = |s: &str| out.write_all(s.as_bytes()).is_ok();
        say("220 holding ESMTP\r\n");
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            let reply = match verb.as_str() {
                "EHLO" => "250-holding\r\n250-AUTH XOAUTH2\r\n250 8BITMIME\r\n".to_owned(),
                "AUTH" => "235 2.7.0 Authentication successful\r\n".to_owned(),
                "DATA" => {
                    say("354 go ahead\r\n");
                    let subject = self.data(&mut lines);
                    self.hold(&subject);
                    format!("250 2.0.0 {subject} taken\r\n")
                }
                "QUIT" => {
                    say("221 2.0.0 bye\r\n");
                    return;
                }
                _ => "250 2.0.0 ok\r\n".to_owned(),
            };
            if !say(&reply) {
                return;
            }
        }
    }

    /// Reads a message up to its dot line; its Subject.
    fn data(&self, lines: &mut BufReader<TcpStream>) -> String {
        let mut subject = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).unwrap_or(0) == 0 || line == ".\r\n" {
                return subject;
            }
            if let Some(s) = line.strip_prefix("Subject: ") {
                subject = s.trim_end().to_owned();
            }
        }
    }

    fn hold(&self, subject: &str) {
        let (seen, changed) = &*self.0;
        let mut s = seen.lock().unwrap();
        s.held.push(subject.to_owned());
        changed.notify_all();
        while s.releases == 0 {
            s = changed.wait(s).unwrap();
        }
        s.releases -= 1;
        s.accepted.push(subject.to_owned());
        changed.notify_all();
    }

    fn release(&self) {
        let (seen, changed) = &*self.0;
        seen.lock().unwrap().releases += 1;
        changed.notify_all();
    }

    /// Waits up to 20 s until `subject` has been held `times` times.
    fn wait_held(&self, subject: &str, times: usize) {
        let (seen, changed) = &*self.0;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut s = seen.lock().unwrap();
        while s.held.iter().filter(|h| *h == subject).count() < times {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{subject} never reached the upstream");
            s = changed.wait_timeout(s, left).unwrap().0;
        }
    }

    fn accepted(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().accepted.clone()
    }
}

/// Sends one message with `subject` through the relay's spool listener (Python's smtplib);
/// its queue ID.
fn send(port: u16, mailbox: &str, subject: &str) -> String {
    let script = "import smtplib,sys\n\
        s=smtplib.SMTP('127.0.0.1',int(sys.argv[1]),timeout=30)\n\
        s.login('device@example.com',sys.argv[2])\n\
        body=('From: %s\\r\\nTo: %s\\r\\nSubject: %s\\r\\n\\r\\nscan\\r\\n' % (sys.argv[3], sys.argv[3], sys.argv[4])).encode()\n\
        s.mail(sys.argv[3]); s.rcpt(sys.argv[3]); print(s.data(body)[1].decode().split()[-1]); s.quit()\n";
    let out = run(Command::new("python3").args([
        "-c",
        script,
        &port.to_string(),
        LOCAL_PASSWORD,
        mailbox,
        subject,
    ]));
    assert!(out.status.success(), "{}", text(&out));
    text(&out).trim().to_owned()
}

#[test]
fn queue_commands_during_delivery_never_duplicate_or_lose_a_message() {
    stack();
    let dir = tempfile::tempdir().unwrap();
    let mailbox = unique_user("queue-race");
    let rt = new_refresh_token(&mailbox);
    std::fs::write(dir.path().join("store.key"), STORE_KEY).unwrap();
    let (upstream, upstream_port) = Holding::start();
    let port = free_port();
    let toml = format!(
        "[listener.smtp]\nprotocol = \"smtp\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{upstream_port}\"\nupstream_tls = \"none\"\nspool = true\n\n\
         [spool]\npath = \"{d}/spool\"\nmin_free_mb = 1\nfirst_retry_secs = 1\n\n\
         [store]\npath = \"{d}/tokens.json\"\nkey_file = \"{d}/store.key\"\n\n[admin]\nenabled = false\n\n\
         [account.device]\nlogin = \"device@example.com\"\npassword_hash = \"{hash}\"\nmailbox = \"{mailbox}\"\n\
         provider = \"custom\"\ntoken_url = \"http://{IDP}/token\"\nclient_id = \"interop-client\"\nclient_secret = \"{CLIENT_SECRET}\"\nrefresh_token = \"{rt}\"\n\
         concurrency = 1\n",
        d = dir.path().display(),
        hash = hash_password(LOCAL_PASSWORD),
    );
    let (child, config, log) = spawn_relay(dir.path(), &toml, &[port]);
    let _relay = KillOnDrop(child);
    let queue = |args: &[&str]| {
        run(Command::new(env!("CARGO_BIN_EXE_authrelay"))
            .arg("queue")
            .args(args)
            .arg("--config")
            .arg(&config))
    };

    // "first" is on the wire; "second" waits behind it (one session).
    let first = send(port, &mailbox, "first");
    upstream.wait_held("first", 1);
    let second = send(port, &mailbox, "second");
    for args in [
        &["retry", &first][..],
        &["flush"],
        &["list"],
        &["retry", &second],
    ] {
        let out = queue(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    // The waiting one is deleted before its turn: it never reaches the upstream.
    assert!(queue(&["delete", &second]).status.success());
    upstream.release();

    // "third" is deleted while it is on the wire: the upstream has it, so it counts as sent.
    let third = send(port, &mailbox, "third");
    upstream.wait_held("third", 1);
    let out = queue(&["delete", &third]);
    assert!(out.status.success(), "{}", text(&out));
    upstream.release();

    // Long enough for retries (first_retry_secs = 1) and a rescan of the queue (every 10 s).
    for _ in 0..3 {
        upstream.release();
    }
    std::thread::sleep(Duration::from_secs(12));
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(upstream.accepted(), ["first", "third"], "{said}");
    let listed = text(&queue(&["list"]));
    assert!(listed.starts_with("0 queued, 0 failed"), "{listed}");
    let states: Vec<_> = std::fs::read_dir(dir.path().join("spool/state"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        states.is_empty(),
        "no state outlives its message: {states:?}"
    );
    assert!(
        said.contains("the message was deleted while it was being delivered"),
        "{said}"
    );
    assert!(!said.contains("could not record a delivery"), "{said}");
    assert!(!said.contains("delivery-status notification"), "{said}");
    // A delivered message cannot be retried; the operator is told why.
    let out = queue(&["retry", &first]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("is not in the queue: delivered or deleted"),
        "{}",
        text(&out)
    );
}
