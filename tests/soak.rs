//! Soak: mixed load through one authrelay process for `SOAK_SECS` seconds (default 20; 1800 for
//! the record), against the real Dovecot and Postfix of the test stack: SMTP messages, IMAP
//! logins with SELECT and FETCH, POP3 logins with STAT, wrong passwords, and idle connections
//! that time out. It prints the relay's resident memory every few seconds and fails only if it
//! keeps growing (a leak), never on speed.
//!
//!     SOAK_SECS=1800 cargo test --release --test soak -- --nocapture

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::interop::*;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

struct Line(BufReader<TcpStream>);

impl Line {
    fn connect(port: u16) -> Option<Line> {
        let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        Some(Line(BufReader::new(s)))
    }
    fn read(&mut self) -> String {
        let mut l = String::new();
        let _ = self.0.read_line(&mut l);
        l
    }
    /// Lines until one starts with `prefix` (or the stream ends).
    fn until(&mut self, prefix: &str) -> String {
        loop {
            let l = self.read();
            if l.is_empty() || l.starts_with(prefix) {
                return l;
            }
        }
    }
    fn send(&mut self, s: &str) {
        let _ = self.0.get_mut().write_all(s.as_bytes());
    }
}

fn b64(s: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s)
}

/// One SMTP message; true when the relay answered 250 after DATA.
fn smtp(r: &FullRelay, user: &str, n: u64) -> bool {
    let Some(mut c) = Line::connect(r.smtp) else {
        return false;
    };
    c.until("220 ");
    c.send("EHLO soak\r\n");
    c.until("250 ");
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        b64(&format!("\0scanner@device.local\0{LOCAL_PASSWORD}"))
    ));
    if !c.read().starts_with("235") {
        return false;
    }
    c.send(&format!(
        "MAIL FROM:<{user}>\r\nRCPT TO:<{user}>\r\nDATA\r\n"
    ));
    c.read();
    c.read();
    c.read();
    let body = "x".repeat(998);
    let mut data = format!("Subject: soak {n}\r\n\r\n");
    for _ in 0..20 {
        data.push_str(&body);
        data.push_str("\r\n");
    }
    data.push_str(".\r\n");
    c.send(&data);
    let ok = c.read().starts_with("250");
    c.send("QUIT\r\n");
    ok
}

fn imap(r: &FullRelay) -> bool {
    let Some(mut c) = Line::connect(r.imap) else {
        return false;
    };
    c.read();
    c.send(&format!(
        "a1 LOGIN scanner@device.local \"{LOCAL_PASSWORD}\"\r\n"
    ));
    if !c.until("a1 ").starts_with("a1 OK") {
        return false;
    }
    c.send("a2 SELECT INBOX\r\n");
    c.until("a2 ");
    c.send("a3 FETCH 1:5 (FLAGS RFC822.SIZE)\r\n");
    c.until("a3 ");
    c.send("a4 LOGOUT\r\n");
    c.until("a4 ").starts_with("a4 OK")
}

fn pop3(r: &FullRelay) -> bool {
    let Some(mut c) = Line::connect(r.pop3) else {
        return false;
    };
    c.read();
    c.send("USER scanner@device.local\r\n");
    c.read();
    c.send(&format!("PASS {LOCAL_PASSWORD}\r\n"));
    if !c.read().starts_with("+OK") {
        return false;
    }
    c.send("STAT\r\n");
    let ok = c.read().starts_with("+OK");
    c.send("QUIT\r\n");
    ok
}

fn wrong_password(r: &FullRelay) -> bool {
    let Some(mut c) = Line::connect(r.imap) else {
        return false;
    };
    c.read();
    c.send("a1 LOGIN scanner@device.local wrong\r\n");
    c.until("a1 ").starts_with("a1 NO")
}

#[test]
fn mixed_load_keeps_memory_flat() {
    stack();
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let user = unique_user("soak");
    let rt = new_refresh_token(&user);
    let account = format!(
        "[account.scanner]\nlogin = \"scanner@device.local\"\npassword_hash = \"{}\"\nmailbox = \"{user}\"\nprovider = \"custom\"\nclient_id = \"soak\"\ntoken_url = \"http://{IDP}/token\"\nrefresh_token = \"{rt}\"\n",
        hash_password(LOCAL_PASSWORD)
    );
    // Wrong passwords are part of the mix: no delay, no throttle, so they cost what they cost.
    let r = Arc::new(FullRelay::start_opts(
        &account,
        "[security]\nfailure_delay_ms = 0\nmax_failures_per_address = 0\nmax_failures_per_username = 0",
        "idle_timeout_secs = 5",
        "info",
    ));
    let pid = r.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 5]> = Arc::new(Default::default());
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (r, stop, counts, user) = (r.clone(), stop.clone(), counts.clone(), user.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                // Idle sessions that the relay must time out and forget.
                let mut idle = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let (kind, ok) = match (n + w) % 4 {
                        0 => (0, smtp(&r, &user, n)),
                        1 => (1, imap(&r)),
                        2 => (2, pop3(&r)),
                        _ => (3, wrong_password(&r)),
                    };
                    if ok {
                        counts[kind].fetch_add(1, Ordering::Relaxed);
                    } else {
                        counts[4].fetch_add(1, Ordering::Relaxed);
                    }
                    if n.is_multiple_of(10) {
                        if let Ok(s) = TcpStream::connect(("127.0.0.1", r.imap)) {
                            idle.push(s);
                        }
                        if idle.len() > 50 {
                            idle.remove(0);
                        }
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut samples = Vec::new();
    let every = Duration::from_secs((secs / 10).clamp(2, 60));
    println!("soak for {secs} s; relay pid {pid}");
    println!(
        "{:>7} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "secs", "RSS KiB", "smtp", "imap", "pop3", "badpw", "errors"
    );
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(every);
        let rss = rss_kib(pid);
        samples.push(rss);
        let c: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        println!(
            "{:>7} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7}",
            started.elapsed().as_secs(),
            rss,
            c[0],
            c[1],
            c[2],
            c[3],
            c[4]
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let total: u64 = counts
        .iter()
        .take(4)
        .map(|c| c.load(Ordering::Relaxed))
        .sum();
    let errors = counts[4].load(Ordering::Relaxed);
    assert!(total > 0, "no operation succeeded");
    assert!(
        errors * 100 <= total,
        "{errors} failed operations out of {total}"
    );
    // Flat: each password check holds Argon2's 19 MiB while it runs, so single samples swing;
    // the peak of the second half must stay within 16 MiB of the peak of the first.
    let (first, second) = samples.split_at(samples.len() / 2);
    let first_peak = first.iter().copied().max().unwrap_or(0);
    let second_peak = second.iter().copied().max().unwrap_or(0);
    let min = samples.iter().copied().min().unwrap_or(0);
    println!("RSS: min {min} KiB, peak of the first half {first_peak} KiB, of the second {second_peak} KiB; {total} operations, {errors} errors");
    assert!(
        second_peak <= first_peak + 16 * 1024,
        "RSS grew from {first_peak} KiB to {second_peak} KiB"
    );
    assert!(find_secret(&r.log_text(), &[LOCAL_PASSWORD.into(), rt]).is_none());
}
