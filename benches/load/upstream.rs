//! The measured paths' common destination: a fast SMTP and IMAP server over implicit TLS that
//! accepts only XOAUTH2 with tokens its own token endpoint issued, and serves one large message.
//!
//! It is deliberately minimal (no storage, no parsing beyond the verbs it needs) so that the
//! proxy in front of it, not the server, is what the benchmark measures.

use crate::io::{read_line, write_all};
use base64::Engine;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// What the token endpoint does, changed at run time through `POST /control`.
struct Idp {
    requests: AtomicU64,
    delay_ms: AtomicU64,
    expires_in: AtomicU64,
    issued: Mutex<HashSet<String>>,
}

impl Idp {
    fn valid(&self, token: &str) -> bool {
        self.issued.lock().unwrap().contains(token)
    }
}

struct Server {
    idp: Idp,
    message: Vec<u8>,
}

/// Serves until killed. Ports: SMTP, IMAP (both implicit TLS) and the token endpoint (HTTP).
pub async fn run(
    cert: &Path,
    key: &Path,
    smtp: SocketAddr,
    imap: SocketAddr,
    token: SocketAddr,
    message_bytes: usize,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(
        authrelay::net::tls::server_config(cert, key).map_err(std::io::Error::other)?,
    );
    let server = Arc::new(Server {
        idp: Idp {
            requests: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            expires_in: AtomicU64::new(3600),
            issued: Mutex::new(HashSet::new()),
        },
        message: crate::message(message_bytes),
    });
    let smtp = TcpListener::bind(smtp).await?;
    let imap = TcpListener::bind(imap).await?;
    let token = TcpListener::bind(token).await?;
    println!("ready");
    let s = server.clone();
    let a = acceptor.clone();
    tokio::spawn(accept_loop(smtp, move |tcp| {
        let (s, a) = (s.clone(), a.clone());
        async move {
            if let Ok(tls) = a.accept(tcp).await {
                let _ = smtp_session(&s, tls).await;
            }
        }
    }));
    let s = server.clone();
    tokio::spawn(accept_loop(imap, move |tcp| {
        let (s, a) = (s.clone(), acceptor.clone());
        async move {
            if let Ok(tls) = a.accept(tcp).await {
                let _ = imap_session(&s, tls).await;
            }
        }
    }));
    accept_loop(token, move |tcp| {
        let s = server.clone();
        async move {
            let _ = http_session(&s.idp, tcp).await;
        }
    })
    .await;
    Ok(())
}

/// Accepts forever (an accept error such as EMFILE is waited out, not fatal).
pub async fn accept_loop<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(handle(tcp));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// The bearer token in an XOAUTH2 initial response, if it is well formed.
fn xoauth2_token(b64: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let mut parts = text.split('\x01');
    parts.next()?.strip_prefix("user=")?;
    let token = parts.next()?.strip_prefix("auth=Bearer ")?;
    Some(token.to_owned())
}

const XOAUTH2_ERROR: &str =
    "eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==";

/// The XOAUTH2 exchange after `AUTH XOAUTH2` / `AUTHENTICATE XOAUTH2`, the same in both
/// protocols but for the continuation prefix (`334 ` or `+ `): asks for the initial response
/// when the client gave none, and answers a bad token with the JSON error challenge, whose empty
/// reply the caller answers with its failure. `None`: the client left.
async fn xoauth2_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Server,
    io: &mut BufReader<S>,
    initial: Option<&str>,
    continuation: &[u8],
) -> std::io::Result<Option<bool>> {
    let mut line = Vec::new();
    let initial = match initial {
        Some(ir) => ir.to_owned(),
        None => {
            write_all(io, &[continuation, b"\r\n"].concat()).await?;
            if !read_line(io, &mut line).await? {
                return Ok(None);
            }
            String::from_utf8_lossy(&line).trim_end().to_owned()
        }
    };
    if xoauth2_token(&initial).is_some_and(|t| server.idp.valid(&t)) {
        return Ok(Some(true));
    }
    let challenge = [continuation, XOAUTH2_ERROR.as_bytes(), b"\r\n"].concat();
    write_all(io, &challenge).await?;
    Ok(read_line(io, &mut line).await?.then_some(false))
}

async fn smtp_session<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Server,
    stream: S,
) -> std::io::Result<()> {
    let mut io = BufReader::with_capacity(64 * 1024, stream);
    let mut line = Vec::new();
    let mut authed = false;
    write_all(&mut io, b"220 bench.upstream ESMTP ready\r\n").await?;
    loop {
        if !read_line(&mut io, &mut line).await? {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        let verb = text
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-bench.upstream\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH XOAUTH2\r\n",
            "HELO" => b"250 bench.upstream\r\n",
            "AUTH" => {
                let mut words = text.split(' ').skip(1);
                let mechanism = words.next().unwrap_or_default();
                if !mechanism.eq_ignore_ascii_case("XOAUTH2") {
                    b"504 5.5.4 Unrecognized authentication type\r\n"
                } else {
                    match xoauth2_exchange(server, &mut io, words.next(), b"334 ").await? {
                        None => return Ok(()),
                        Some(true) => {
                            authed = true;
                            b"235 2.7.0 Authentication successful\r\n"
                        }
                        Some(false) => b"535 5.7.8 Username and Password not accepted\r\n",
                    }
                }
            }
            "MAIL" | "RCPT" if !authed => b"530 5.7.0 Authentication required\r\n",
            "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 2.0.0 OK\r\n",
            "DATA" if !authed => b"530 5.7.0 Authentication required\r\n",
            "DATA" => {
                write_all(&mut io, b"354 Go ahead\r\n").await?;
                if !skip_data(&mut io).await? {
                    return Ok(());
                }
                b"250 2.0.0 OK queued\r\n"
            }
            "QUIT" => {
                write_all(&mut io, b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 5.5.2 Command not implemented\r\n",
        };
        write_all(&mut io, reply).await?;
    }
}

/// Consumes a DATA body up to and including the `CRLF . CRLF` terminator (the CRLF before the
/// dot belongs to the last line, which the 354 reply started). False if the client left.
async fn skip_data<R: AsyncBufReadExt + Unpin>(io: &mut R) -> std::io::Result<bool> {
    const END: &[u8] = b"\r\n.\r\n";
    let finder = memchr::memmem::Finder::new(END);
    // How much of END the data seen so far ends with; a body may be empty (".\r\n" at once).
    let mut matched = 2;
    loop {
        let chunk = io.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(false);
        }
        // A terminator begun in an earlier read, completed at the start of this one.
        let mut at = 0;
        while matched > 0 && at < chunk.len() {
            if chunk[at] == END[matched] {
                matched += 1;
                at += 1;
                if matched == END.len() {
                    io.consume(at);
                    return Ok(true);
                }
            } else {
                matched = 0;
            }
        }
        if let Some(found) = finder.find(chunk) {
            io.consume(found + END.len());
            return Ok(true);
        }
        // The longest tail of this read that is a start of END.
        matched = (1..END.len())
            .rev()
            .find(|&n| chunk.len() >= n && chunk.ends_with(&END[..n]))
            .unwrap_or(0);
        let n = chunk.len();
        io.consume(n);
    }
}

async fn imap_session<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Server,
    stream: S,
) -> std::io::Result<()> {
    let mut io = BufReader::with_capacity(16 * 1024, stream);
    let mut line = Vec::new();
    let mut authed = false;
    write_all(
        &mut io,
        b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 IDLE LITERAL+] bench.upstream ready\r\n",
    )
    .await?;
    loop {
        if !read_line(&mut io, &mut line).await? {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        let mut words = text.split(' ');
        let tag = words.next().unwrap_or("*").to_owned();
        let verb = words.next().unwrap_or_default().to_ascii_uppercase();
        let reply = match verb.as_str() {
            "CAPABILITY" => format!(
                "* CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 IDLE LITERAL+\r\n{tag} OK CAPABILITY completed\r\n"
            ),
            "AUTHENTICATE" => {
                let mechanism = words.next().unwrap_or_default();
                if !mechanism.eq_ignore_ascii_case("XOAUTH2") {
                    format!("{tag} NO Unsupported mechanism\r\n")
                } else {
                    match xoauth2_exchange(server, &mut io, words.next(), b"+ ").await? {
                        None => return Ok(()),
                        Some(true) => {
                            authed = true;
                            format!("{tag} OK AUTHENTICATE completed\r\n")
                        }
                        Some(false) => {
                            format!("{tag} NO [AUTHENTICATIONFAILED] Invalid credentials\r\n")
                        }
                    }
                }
            }
            "LOGIN" => format!("{tag} NO [PRIVACYREQUIRED] LOGIN is disabled\r\n"),
            "SELECT" | "EXAMINE" if authed => format!(
                "* FLAGS (\\Seen)\r\n* 1 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n{tag} OK [READ-WRITE] SELECT completed\r\n"
            ),
            "FETCH" if authed => {
                let head = format!("* 1 FETCH (BODY[] {{{}}}\r\n", server.message.len());
                write_all(&mut io, head.as_bytes()).await?;
                for chunk in server.message.chunks(256 * 1024) {
                    write_all(&mut io, chunk).await?;
                }
                format!(")\r\n{tag} OK FETCH completed\r\n")
            }
            "NOOP" => format!("{tag} OK NOOP completed\r\n"),
            "LOGOUT" => {
                let bye = format!("* BYE bench.upstream logging out\r\n{tag} OK LOGOUT completed\r\n");
                write_all(&mut io, bye.as_bytes()).await?;
                return Ok(());
            }
            _ if !authed => format!("{tag} NO Not authenticated\r\n"),
            _ => format!("{tag} BAD Unknown command\r\n"),
        };
        write_all(&mut io, reply.as_bytes()).await?;
    }
}

/// The token endpoint: `POST /token` (any grant) issues a fresh token; `GET /count` tells how
/// many token requests were made; `POST /control?delay_ms=N&expires_in=N` changes behaviour.
async fn http_session(idp: &Idp, tcp: TcpStream) -> std::io::Result<()> {
    let mut io = BufReader::new(tcp);
    let mut line = Vec::new();
    if !read_line(&mut io, &mut line).await? {
        return Ok(());
    }
    let request = String::from_utf8_lossy(&line).into_owned();
    let mut length = 0usize;
    loop {
        if !read_line(&mut io, &mut line).await? {
            return Ok(());
        }
        let header = String::from_utf8_lossy(&line).to_ascii_lowercase();
        if header.trim().is_empty() {
            break;
        }
        if let Some(v) = header.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    io.read_exact(&mut body).await?;
    let target = request.split(' ').nth(1).unwrap_or("/");
    let (status, json) = if target.starts_with("/token") || target.ends_with("/token") {
        let n = idp.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let delay = idp.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let token = format!("bench-at-{n}-{:016x}", rand::random::<u64>());
        idp.issued.lock().unwrap().insert(token.clone());
        // `/short/token`: tokens that are due at once (1 s, inside any refresh margin), so that
        // every use of them is a refresh (the churn phase's other accounts).
        let expires = if target.starts_with("/short/") {
            1
        } else {
            idp.expires_in.load(Ordering::SeqCst)
        };
        (
            "200 OK",
            format!(
                "{{\"token_type\":\"Bearer\",\"access_token\":\"{token}\",\"expires_in\":{expires},\"refresh_token\":\"bench-rt-{n}\",\"scope\":\"bench\"}}"
            ),
        )
    } else if target.starts_with("/count") {
        ("200 OK", idp.requests.load(Ordering::SeqCst).to_string())
    } else if let Some(query) = target.strip_prefix("/control?") {
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "delay_ms" => idp.delay_ms.store(v, Ordering::SeqCst),
                "expires_in" => idp.expires_in.store(v, Ordering::SeqCst),
                _ => {}
            }
        }
        ("200 OK", "{}".to_owned())
    } else {
        ("404 Not Found", "{}".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    );
    write_all(&mut io, response.as_bytes()).await
}

/// Reads one complete HTTP response body from `addr` for a request line, headers and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes()).await?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).await?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}
