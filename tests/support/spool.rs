//! Spool-mode helpers shared by the in-process spool tests: a world with a spool listener, a
//! logged-in device, waiting, and the admin server's pages.

use super::*;
use std::time::{Duration, Instant};

pub struct SpoolWorld {
    pub w: World,
    pub _dir: tempfile::TempDir,
    pub spool: std::path::PathBuf,
}

pub async fn spool_world(account_extra: &str) -> SpoolWorld {
    spool_world_with(account_extra, "").await
}

/// [`spool_world`] with `tail` after the `[spool]` table's own lines (more spool settings, then
/// other tables).
pub async fn spool_world_with(account_extra: &str, tail: &str) -> SpoolWorld {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let extra = format!(
        "{account_extra}\n[spool]\npath = \"{}\"\nmax_message_bytes = 200000\nmin_free_mb = 1\n{tail}",
        spool.display()
    );
    let w = world_with(
        UpstreamOptions::default(),
        "none",
        "spool = true",
        &extra,
        None,
    )
    .await;
    SpoolWorld {
        w,
        _dir: dir,
        spool,
    }
}

pub struct AdminWorld {
    pub w: World,
    pub admin: std::net::SocketAddr,
    pub spool: std::path::PathBuf,
    pub _dir: tempfile::TempDir,
}

/// A spool listener (retries after a second) and the admin server on ephemeral ports.
pub async fn admin_world() -> AdminWorld {
    let SpoolWorld { w, _dir, spool } = spool_world_with(
        "",
        "first_retry_secs = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    let admin = w.relay.admin_addr();
    AdminWorld {
        w,
        admin,
        spool,
        _dir,
    }
}

pub async fn logged_in(addr: std::net::SocketAddr) -> Client {
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await, "220 localhost ESMTP ready\r\n");
    let ehlo = c.ehlo().await;
    assert_eq!(
        ehlo,
        "250-localhost\r\n250-SIZE 200000\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 AUTH PLAIN LOGIN\r\n"
    );
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    ))
    .await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
    c
}

pub async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn queued(spool: &std::path::Path) -> usize {
    std::fs::read_dir(spool.join("queue")).map_or(0, |d| d.count())
}

/// GET `path` from the admin server, as its own host; the body.
pub async fn http_get(admin: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
        admin.port()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// POST a form to the admin server, as its own host; the whole response.
pub async fn http_post(admin: std::net::SocketAddr, path: &str, form: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost:{}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        admin.port(),
        form.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
