//! The load tool's SMTP and IMAP clients: just enough protocol to log in, send or fetch one large
//! message and leave, over plaintext (through a relay) or TLS (direct to the upstream).

use crate::io::{read_line, write_all, Stream};
use base64::Engine;
use rustls_pki_types::ServerName;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How a path's clients log in.
#[derive(Clone)]
pub enum Auth {
    /// The client holds the token and speaks XOAUTH2 itself (direct, bare relay).
    XOAuth2 { user: String, token: String },
    /// The legacy login a relay turns into XOAUTH2 (authrelay, email-oauth2-proxy).
    Password { user: String, password: String },
}

/// One measured path: where its clients connect and how they log in.
#[derive(Clone)]
pub struct Target {
    pub smtp: SocketAddr,
    pub imap: SocketAddr,
    /// TLS towards `smtp`/`imap` (the direct path only).
    pub tls: Option<TlsConnector>,
    pub auth: Auth,
    /// The MAIL FROM address (the signed-in mailbox).
    pub sender: String,
}

pub type Conn = BufReader<Stream>;

fn failed(what: &str, got: &str) -> io::Error {
    io::Error::other(format!("{what}: {}", got.trim_end()))
}

pub async fn connect(addr: SocketAddr, tls: Option<&TlsConnector>) -> io::Result<Conn> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let stream = match tls {
        None => Stream::Plain(tcp),
        Some(connector) => {
            let name = ServerName::try_from("localhost").expect("a valid name");
            Stream::Tls(Box::new(connector.connect(name, tcp).await?))
        }
    };
    Ok(BufReader::with_capacity(64 * 1024, stream))
}

/// Reads one SMTP reply (all its lines); returns the code and the last line.
async fn smtp_reply(c: &mut Conn) -> io::Result<(u16, String)> {
    let mut line = Vec::new();
    loop {
        if !read_line(c, &mut line).await? {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        if text.as_bytes().get(3) != Some(&b'-') {
            let code = text.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            return Ok((code, text));
        }
    }
}

async fn smtp_expect(c: &mut Conn, send: &[u8], code: u16) -> io::Result<()> {
    if !send.is_empty() {
        write_all(c, send).await?;
    }
    let (got, text) = smtp_reply(c).await?;
    if got != code {
        return Err(failed(&format!("expected {code}"), &text));
    }
    Ok(())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn xoauth2(user: &str, token: &str) -> String {
    b64(format!("user={user}\x01auth=Bearer {token}\x01\x01").as_bytes())
}

/// Connects and logs in; the connection is ready for MAIL FROM.
pub async fn smtp_login(t: &Target) -> io::Result<Conn> {
    let mut c = connect(t.smtp, t.tls.as_ref()).await?;
    smtp_expect(&mut c, b"", 220).await?;
    smtp_expect(&mut c, b"EHLO bench.client\r\n", 250).await?;
    let auth = match &t.auth {
        Auth::XOAuth2 { user, token } => format!("AUTH XOAUTH2 {}\r\n", xoauth2(user, token)),
        Auth::Password { user, password } => {
            format!(
                "AUTH PLAIN {}\r\n",
                b64(format!("\0{user}\0{password}").as_bytes())
            )
        }
    };
    smtp_expect(&mut c, auth.as_bytes(), 235).await?;
    Ok(c)
}

/// Sends one message; the time is from the first body byte to the server's 250.
pub async fn smtp_send(c: &mut Conn, sender: &str, body: &[u8]) -> io::Result<Duration> {
    smtp_expect(c, format!("MAIL FROM:<{sender}>\r\n").as_bytes(), 250).await?;
    smtp_expect(c, b"RCPT TO:<sink@bench.test>\r\n", 250).await?;
    smtp_expect(c, b"DATA\r\n", 354).await?;
    let started = Instant::now();
    for chunk in body.chunks(256 * 1024) {
        c.get_mut().write_all(chunk).await?;
    }
    smtp_expect(c, b".\r\n", 250).await?;
    Ok(started.elapsed())
}

pub async fn smtp_quit(mut c: Conn) {
    let _ = smtp_expect(&mut c, b"QUIT\r\n", 221).await;
}

/// Reads lines until the tagged one and returns it.
async fn imap_tagged(c: &mut Conn, tag: &str) -> io::Result<String> {
    let mut line = Vec::new();
    loop {
        if !read_line(c, &mut line).await? {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        if line.starts_with(tag.as_bytes()) && line.get(tag.len()) == Some(&b' ') {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
    }
}

async fn imap_ok(c: &mut Conn, tag: &str, command: &str) -> io::Result<()> {
    write_all(c, format!("{tag} {command}\r\n").as_bytes()).await?;
    let reply = imap_tagged(c, tag).await?;
    if !reply[tag.len()..].trim_start().starts_with("OK") {
        return Err(failed(&format!("{tag} not OK"), &reply));
    }
    Ok(())
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Connects and logs in; the connection is in the authenticated state.
pub async fn imap_login(t: &Target) -> io::Result<Conn> {
    let mut c = connect(t.imap, t.tls.as_ref()).await?;
    let mut line = Vec::new();
    if !read_line(&mut c, &mut line).await? || !line.starts_with(b"* OK") {
        return Err(failed("greeting", &String::from_utf8_lossy(&line)));
    }
    let command = match &t.auth {
        Auth::XOAuth2 { user, token } => format!("AUTHENTICATE XOAUTH2 {}", xoauth2(user, token)),
        Auth::Password { user, password } => {
            format!("LOGIN {} {}", quoted(user), quoted(password))
        }
    };
    imap_ok(&mut c, "a1", &command).await?;
    Ok(c)
}

pub async fn imap_noop(c: &mut Conn) -> io::Result<()> {
    imap_ok(c, "n1", "NOOP").await
}

/// Selects the mailbox and fetches its one message, reading at most `pace` bytes per second
/// when given. Returns the time from the FETCH command to its tagged OK, and the literal's size.
pub async fn imap_fetch(c: &mut Conn, pace: Option<u64>) -> io::Result<(Duration, u64)> {
    imap_ok(c, "a2", "SELECT INBOX").await?;
    let started = Instant::now();
    write_all(c, b"a3 FETCH 1 BODY[]\r\n").await?;
    let mut line = Vec::new();
    if !read_line(c, &mut line).await? {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
    }
    let text = String::from_utf8_lossy(&line).into_owned();
    let size: u64 = text
        .trim_end()
        .strip_suffix('}')
        .and_then(|t| t.rsplit_once('{'))
        .and_then(|(_, n)| n.parse().ok())
        .ok_or_else(|| failed("FETCH literal", &text))?;
    let mut left = size;
    while left > 0 {
        let available = c.fill_buf().await?;
        if available.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed mid-literal",
            ));
        }
        let step = (available.len() as u64).min(left).min(if pace.is_some() {
            16 * 1024
        } else {
            u64::MAX
        });
        c.consume(step as usize);
        left -= step;
        if let Some(rate) = pace {
            let due = Duration::from_secs_f64((size - left) as f64 / rate as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
    }
    let reply = imap_tagged(c, "a3").await?;
    if !reply[2..].trim_start().starts_with("OK") {
        return Err(failed("FETCH", &reply));
    }
    Ok((started.elapsed(), size))
}

pub async fn imap_logout(mut c: Conn) {
    let _ = imap_ok(&mut c, "a9", "LOGOUT").await;
}
