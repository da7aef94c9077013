//! A broken or hostile Microsoft Graph endpoint (issue 26: findings 13, 14, the 3xx note, and
//! the attacks after them: slow-loris, a bad certificate, `Retry-After` that is no figure, a
//! garbage `200`): `graph_url` is configuration, and what answers there must not crash a delivery task, pause
//! an account for years, fill the memory, or receive a token it was not meant to have. The
//! endpoint here is a small HTTP server in the test that answers every request the same way.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::interop::*;

/// A Graph endpoint on a free port: `serve` answers each connection (on its own thread) and
/// counts the requests it reads.
fn endpoint(
    serve: impl Fn(TcpStream, &AtomicUsize) + Send + Sync + 'static,
) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (seen, serve) = (seen.clone(), serve.clone());
            std::thread::spawn(move || serve(stream, &seen));
        }
    });
    (port, requests)
}

/// Answers every request with `head` (status line and headers) and then `body_bytes` bytes of
/// `x` (streamed, so a huge body costs the test nothing); counts requests.
fn hostile(head: &'static str, body_bytes: u64) -> (u16, Arc<AtomicUsize>) {
    endpoint(move |stream, seen| answer(stream, head, body_bytes, seen))
}

/// Reads one request (head and body) from `from`; false when the connection ended first.
fn read_request(from: &mut impl BufRead) -> bool {
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if from.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; length];
    from.read_exact(&mut body).is_ok()
}

fn answer(stream: TcpStream, head: &str, body_bytes: u64, seen: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    if !read_request(&mut reader) {
        return;
    }
    seen.fetch_add(1, Ordering::SeqCst);
    let mut w = stream;
    let _ = w.write_all(format!("{head}Content-Length: {body_bytes}\r\n\r\n").as_bytes());
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = body_bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if w.write_all(&chunk[..n]).is_err() {
            return;
        }
        left -= n as u64;
    }
}

struct Relay {
    child: Child,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    mailbox: String,
    _dir: tempfile::TempDir,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Relay {
    fn start(graph_port: u16) -> Relay {
        Relay::start_with(&format!("http://127.0.0.1:{graph_port}"), "")
    }

    /// A relay whose account sends through Graph at `graph_url`, with `extra` account settings.
    fn start_with(graph_url: &str, extra: &str) -> Relay {
        stack();
        let mailbox = unique_user("hostile-graph");
        let rt = new_refresh_token(&mailbox);
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(dir.path().join("store.key"), STORE_KEY).unwrap();
        let config = format!(
            "[listener.smtp]\nprotocol = \"smtp\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"{SUBMISSION}\"\nupstream_tls = \"starttls\"\nspool = true\n\n\
             [spool]\npath = \"{d}/spool\"\nmin_free_mb = 1\nfirst_retry_secs = 1\n\n\
             [store]\npath = \"{d}/tokens.json\"\nkey_file = \"{d}/store.key\"\n\n[admin]\nenabled = false\n\n\
             [account.device]\nlogin = \"device@example.com\"\npassword_hash = \"{hash}\"\nmailbox = \"{mailbox}\"\n\
             provider = \"custom\"\ntoken_url = \"http://{IDP}/token\"\nclient_id = \"interop-client\"\nclient_secret = \"{CLIENT_SECRET}\"\nrefresh_token = \"{rt}\"\n\
             send = \"graph\"\ngraph_url = \"{graph_url}\"\n{extra}\n",
            d = dir.path().display(),
            hash = hash_password(LOCAL_PASSWORD),
        );
        let (child, config, log) = spawn_relay(dir.path(), &config, &[port]);
        Relay {
            child,
            port,
            config,
            log,
            mailbox,
            _dir: dir,
        }
    }

    fn submit(&self, subject: &str) {
        let script = "import smtplib,sys\ns=smtplib.SMTP('127.0.0.1',int(sys.argv[1]))\ns.login('device@example.com',sys.argv[2])\ns.sendmail(sys.argv[3],[sys.argv[3]],('From: %s\\r\\nTo: %s\\r\\nSubject: %s\\r\\n\\r\\nx\\r\\n' % (sys.argv[3], sys.argv[3], sys.argv[4])).encode())\ns.quit()\nprint('ok')";
        let out = run(Command::new("python3").args([
            "-c",
            script,
            &self.port.to_string(),
            LOCAL_PASSWORD,
            &self.mailbox,
            subject,
        ]));
        assert_eq!(text(&out).trim(), "ok", "{}", text(&out));
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log_text();
            if log.contains(what) {
                return log;
            }
            assert!(Instant::now() < deadline, "no {what:?} in\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn queue_json(&self) -> String {
        text(&run(Command::new(env!("CARGO_BIN_EXE_authrelay"))
            .args(["queue", "list", "--json", "--config"])
            .arg(&self.config)))
    }

    /// The relay's peak resident memory, in KiB.
    fn peak_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }
}

/// Finding 13: `Retry-After: 18446744073709551615` panicked the delivery task (the message
/// never retried, the account a delivery session short); 999999999 paused the account for 31
/// years. Now any figure is obeyed up to an hour.
#[test]
fn a_huge_retry_after_is_capped_at_an_hour_and_nothing_panics() {
    let (graph, requests) = hostile(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 18446744073709551615\r\nContent-Type: application/json\r\n",
        0,
    );
    let r = Relay::start(graph);
    r.submit(&format!("retry-after-{}", free_port()));
    let log = r.wait_log("delivery deferred");
    assert!(log.contains("retry_in_secs=3600"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(requests.load(Ordering::SeqCst) >= 1);
    let queue = r.queue_json();
    assert!(queue.contains("\"attempts\":1"), "{queue}");
    println!("Retry-After 2^64-1: deferred for 3600 s, no panic");
}

/// Finding 14: Graph's bodies were read whole; one 800 MB error body took the relay from 28 MB
/// to about 2 GB. Now an error body is read to 64 KiB and a success body to 16 MiB.
#[test]
fn an_800_mb_error_body_does_not_fill_the_memory() {
    let (graph, requests) = hostile(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n",
        800 * 1024 * 1024,
    );
    let r = Relay::start(graph);
    let before = r.peak_kib();
    r.submit(&format!("big-body-{}", free_port()));
    r.wait_log("delivery deferred");
    let after = r.peak_kib();
    println!("800 MB error body: peak RSS {before} KiB before, {after} KiB after");
    assert!(requests.load(Ordering::SeqCst) >= 1);
    assert!(after < 200 * 1024, "peak {after} KiB");
}

/// The 3xx note: a redirect counted as a permanent failure (the message bounced). It is now a
/// deferral naming `graph_url`; the redirect is never followed, so no token reaches the host it
/// names.
#[test]
fn a_redirect_is_not_followed_and_the_message_waits() {
    let (elsewhere, followed) = hostile("HTTP/1.1 202 Accepted\r\n", 0);
    let head: &'static str = Box::leak(
        format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{elsewhere}/v1.0/users/x/sendMail\r\n").into_boxed_str(),
    );
    let (graph, requests) = hostile(head, 0);
    let r = Relay::start(graph);
    r.submit(&format!("redirect-{}", free_port()));
    let log = r.wait_log("delivery deferred");
    assert!(log.contains("307 Graph answered with a redirect"), "{log}");
    assert!(!log.contains("failed permanently"), "{log}");
    assert!(requests.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        followed.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
    assert!(r.queue_json().contains("\"attempts\":1"));
}

/// Slow-loris: an endpoint that reads the request and then says nothing, or drips its status
/// line a byte at a time and never ends its headers. Each request ends at `graph_timeout_secs`
/// as an unknown outcome (Graph may have sent it), so the message is kept, marked for a Sent
/// Items lookup before it goes again, and the device side is never held up.
#[test]
fn a_slow_loris_endpoint_ends_each_request_at_the_timeout_and_keeps_the_message() {
    let silent = endpoint(|stream, seen| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        if read_request(&mut reader) {
            seen.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(120));
        }
    });
    let drip = endpoint(|stream, seen| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        if read_request(&mut reader) {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut w = stream;
            for b in b"HTTP/1.1 202 Accepted\r\nX-Slow: "
                .iter()
                .cycle()
                .take(240)
            {
                if w.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    });
    for (name, (port, requests)) in [("silent", silent), ("drip", drip)] {
        let r = Relay::start_with(
            &format!("http://127.0.0.1:{port}"),
            "graph_timeout_secs = 2",
        );
        let started = Instant::now();
        r.submit(&format!("slow-{name}-{}", free_port()));
        let submitted = started.elapsed();
        let log = r.wait_log("delivery deferred");
        let deferred = started.elapsed();
        assert!(log.contains("no answer from Graph"), "{name}: {log}");
        assert!(requests.load(Ordering::SeqCst) >= 1, "{name}");
        let queue = r.queue_json();
        assert!(queue.contains("\"attempts\":1"), "{name}: {queue}");
        assert!(
            queue.contains("\"outcome_unknown\":true"),
            "{name}: {queue}"
        );
        // Another device's message is taken while the first waits on the endpoint.
        r.submit(&format!("slow-{name}-second-{}", free_port()));
        println!(
            "{name} Graph endpoint: the device was answered in {:.1} s, the send ended as unknown after {:.1} s (timeout 2 s)",
            submitted.as_secs_f64(),
            deferred.as_secs_f64()
        );
    }
}

/// Graph over TLS with a certificate no root vouches for (self-signed, as a hostile network
/// would present): the handshake fails, so no request, and no token, ever reaches it; the
/// message waits as not sent.
#[test]
fn graph_with_a_bad_certificate_gets_no_request_and_the_message_waits() {
    let cert = support::TestCert::new();
    let config = authrelay::net::tls::server_config(&cert.cert, &cert.key).unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let tried = handshakes.clone();
    let (port, requests) = endpoint(move |stream, seen| {
        tried.fetch_add(1, Ordering::SeqCst);
        let tls = rustls::ServerConnection::new(config.clone()).unwrap();
        let mut reader = BufReader::new(rustls::StreamOwned::new(tls, stream));
        if read_request(&mut reader) {
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let r = Relay::start_with(&format!("https://localhost:{port}"), "");
    r.submit(&format!("bad-cert-{}", free_port()));
    let log = r.wait_log("delivery deferred");
    assert!(log.contains("Graph unreachable"), "{log}");
    assert!(
        handshakes.load(Ordering::SeqCst) >= 1,
        "no TLS handshake tried"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 0, "a request got through");
    let queue = r.queue_json();
    assert!(queue.contains("\"attempts\":1"), "{queue}");
    assert!(!queue.contains("\"outcome_unknown\":true"), "{queue}");
    println!("self-signed Graph certificate: handshake refused, 0 requests, message deferred");
}

/// `Retry-After` that is no figure (negative, text) is ignored for the spool's own backoff
/// (the first retry, 1 s here); an HTTP date (RFC 9110 §10.2.3) is obeyed as a date.
#[test]
fn a_retry_after_that_is_no_figure_falls_back_to_the_backoff_and_a_date_is_obeyed() {
    for (value, wanted) in [("-5", 1u64), ("soon", 1), ("1.5", 1)] {
        let head: &'static str = Box::leak(
            format!("HTTP/1.1 429 Too Many Requests\r\nRetry-After: {value}\r\n").into_boxed_str(),
        );
        let (graph, _) = hostile(head, 0);
        let r = Relay::start(graph);
        r.submit(&format!("retry-after-text-{}", free_port()));
        let log = r.wait_log("delivery deferred");
        assert!(
            log.contains(&format!("retry_in_secs={wanted} ")),
            "{value}: {log}"
        );
        assert!(!log.contains("panicked"), "{log}");
    }
    let at = std::time::SystemTime::now() + Duration::from_secs(600);
    let head: &'static str = Box::leak(
        format!(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {}\r\n",
            httpdate::fmt_http_date(at)
        )
        .into_boxed_str(),
    );
    let (graph, _) = hostile(head, 0);
    let r = Relay::start(graph);
    r.submit(&format!("retry-after-date-{}", free_port()));
    let log = r.wait_log("delivery deferred");
    let secs: u64 = log
        .split("retry_in_secs=")
        .nth(1)
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!((590..=600).contains(&secs), "{secs}: {log}");
    println!("Retry-After -5, soon, 1.5: the 1 s backoff; an HTTP date 600 s ahead: {secs} s");
}

/// A `200 OK` with an HTML page (a web server or proxy behind a wrong `graph_url`) counted as
/// sent and the message was deleted. Graph answers a send with `202 Accepted` only; anything
/// else keeps the message, and the reason names `graph_url`.
#[test]
fn a_garbage_200_is_not_a_send_and_the_message_stays() {
    let (graph, requests) = hostile("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n", 2048);
    let r = Relay::start(graph);
    r.submit(&format!("garbage-200-{}", free_port()));
    let log = r.wait_log("delivery deferred");
    assert!(log.contains("not Graph's answer to a send"), "{log}");
    assert!(!log.contains("message delivered"), "{log}");
    assert!(requests.load(Ordering::SeqCst) >= 1);
    assert!(r.queue_json().contains("\"attempts\":1"));
    println!("200 OK with HTML to sendMail: deferred, message kept");
}
