//! The spool against Postfix: 20 KB messages accepted per second by 64 clients at once, each
//! message acknowledged only after it is on disk (authrelay: data and directory synced; Postfix:
//! its queue file synced by cleanup before smtpd's 250), and the time from the end of DATA to
//! the 250 (p50, p99). Both on this machine, in the same run; figures printed, never asserted.
//!
//! authrelay runs as its own process with a spool listener whose upstream is down, so what is
//! measured is acceptance alone (delivery attempts are deferred). Postfix is the interop stack's
//! (127.0.0.1:11025, tests/harness/start.sh); without it, its half is skipped.
//!
//!   cargo bench --bench spool [-- --quick]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const CLIENTS: usize = 64;
const MESSAGE_BYTES: usize = 20 * 1024;
const PASSWORD: &str = "bench-spool-password";
const POSTFIX: &str = "127.0.0.1:11025";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn hash(password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_authrelay"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), password.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// authrelay with a spool listener in `dir`, its upstream down.
fn start_authrelay(dir: &std::path::Path) -> (Killed, SocketAddr) {
    let port = free_port();
    let config = format!(
        "[listener.spool]\nprotocol = \"smtp\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:1\"\nupstream_tls = \"none\"\nupstream_probe = false\nspool = true\n\n[spool]\npath = \"{}\"\nmin_free_mb = 1\nfirst_retry_secs = 3600\n\n[store]\npath = \"{}\"\n\n[admin]\nenabled = false\n\n[account.bench]\nlogin = \"bench@example.com\"\npassword_hash = \"{}\"\nauth = \"app_password\"\napp_password = \"unused\"\nallowed_from = [\"*\"]\n",
        dir.join("spool").display(),
        dir.join("tokens.json").display(),
        hash(PASSWORD)
    );
    let path = dir.join("authrelay.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_authrelay"))
        .args(["run", "--log-level", "warn", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    (Killed(child), addr)
}

/// Reads one reply (all its lines); its code.
async fn reply(r: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return Ok(line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0));
        }
    }
}

async fn command(r: &mut BufReader<TcpStream>, line: &str) -> std::io::Result<u16> {
    r.get_mut().write_all(line.as_bytes()).await?;
    reply(r).await
}

/// One client: one session, messages one after another until `stop`; the DATA → 250 times.
async fn client(
    addr: SocketAddr,
    auth: bool,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    times: Arc<Mutex<Vec<Duration>>>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(TcpStream::connect(addr).await?);
    r.get_mut().set_nodelay(true)?;
    reply(&mut r).await?;
    command(&mut r, "EHLO bench.example\r\n").await?;
    if auth {
        let blob = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("\0bench@example.com\0{PASSWORD}"),
        );
        let code = command(&mut r, &format!("AUTH PLAIN {blob}\r\n")).await?;
        assert_eq!(code, 235, "authrelay refused the bench login");
    }
    let mut body = String::from("From: bench@example.com\r\nSubject: spool bench\r\n\r\n");
    while body.len() < MESSAGE_BYTES {
        body.push_str(
            "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n",
        );
    }
    body.push_str(".\r\n");
    while !stop.load(Ordering::Relaxed) {
        command(&mut r, "MAIL FROM:<bench@example.com>\r\n").await?;
        command(&mut r, "RCPT TO:<spoolbench@example.com>\r\n").await?;
        command(&mut r, "DATA\r\n").await?;
        r.get_mut().write_all(body.as_bytes()).await?;
        let sent = Instant::now();
        let code = reply(&mut r).await?;
        if code == 250 {
            times.lock().unwrap().push(sent.elapsed());
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = command(&mut r, "QUIT\r\n").await;
    Ok(())
}

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn measure(addr: SocketAddr, auth: bool, secs: u64) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let times = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(client(
                addr,
                auth,
                stop.clone(),
                done.clone(),
                times.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    let mut times = times.lock().unwrap().clone();
    times.sort();
    let at = |q: f64| {
        times
            .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Figures {
        per_second: done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without --bench: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { 3 } else { 15 };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_relay, addr) = start_authrelay(dir.path());
    println!(
        "spool: {CLIENTS} clients, {} KB messages, {secs} s each",
        MESSAGE_BYTES / 1024
    );
    println!("| server | accepted/s | p50 DATA→250 | p99 DATA→250 | vs Postfix |");
    println!("|---|---|---|---|---|");
    let ours = rt.block_on(measure(addr, true, secs));
    let postfix_up = std::net::TcpStream::connect(POSTFIX).is_ok();
    let theirs = postfix_up.then(|| rt.block_on(measure(POSTFIX.parse().unwrap(), false, secs)));
    let ratio = theirs.as_ref().map_or("-".to_owned(), |t| {
        format!("{:.2}x", ours.per_second / t.per_second)
    });
    println!(
        "| authrelay spool | {:.0} | {:.2} ms | {:.2} ms | {ratio} |",
        ours.per_second,
        ours.p50.as_secs_f64() * 1e3,
        ours.p99.as_secs_f64() * 1e3
    );
    match theirs {
        Some(t) => println!(
            "| Postfix smtpd (Debian) | {:.0} | {:.2} ms | {:.2} ms | 1.00x |",
            t.per_second,
            t.p50.as_secs_f64() * 1e3,
            t.p99.as_secs_f64() * 1e3
        ),
        None => println!(
            "| Postfix smtpd | not running on {POSTFIX} (start tests/harness/start.sh) | | | |"
        ),
    }
}
