//! The fault matrix: a scripted upstream that refuses, drops or stalls at each phase of each
//! protocol, and a token endpoint that fails in each way. Every case checks the exact replies the
//! client gets, that they come within a bounded time, and that a message the upstream did not
//! accept is never acknowledged. `AUTHRELAY_RECORD=1` prints the transcripts instead.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum P {
    Smtp,
    Imap,
    Pop3,
}

/// One step of the scripted upstream.
#[derive(Clone, Debug)]
enum Step {
    Send(&'static str),
    /// Read one line.
    Recv,
    /// Read one line and answer `TAG text` with its tag.
    Tagged(&'static str),
    /// Read DATA up to the final dot.
    RecvData,
    /// Send this many bytes of a message body and nothing more.
    Partial(usize),
    Drop,
    Stall,
}

use Step::*;

/// The whole dialogue of a good upstream, per protocol; a fault replaces the rest from a phase.
fn script(p: P, starttls: bool) -> Vec<(&'static str, Vec<Step>)> {
    match p {
        P::Smtp if starttls => vec![
            ("greeting", vec![Send("220 fault ESMTP\r\n")]),
            ("EHLO", vec![Recv, Send("250-fault\r\n250 STARTTLS\r\n")]),
            ("STARTTLS", vec![Recv, Send("220 2.0.0 Ready\r\n")]),
        ],
        P::Smtp => vec![
            ("greeting", vec![Send("220 fault ESMTP\r\n")]),
            (
                "EHLO",
                vec![
                    Recv,
                    Send("250-fault\r\n250-AUTH XOAUTH2\r\n250 8BITMIME\r\n"),
                ],
            ),
            (
                "AUTH",
                vec![
                    Recv,
                    Send("334 \r\n"),
                    Recv,
                    Send("235 2.7.0 Authentication successful\r\n"),
                ],
            ),
            (
                "mid-DATA",
                vec![
                    Recv,
                    Send("250 2.1.0 Ok\r\n"),
                    Recv,
                    Send("250 2.1.5 Ok\r\n"),
                    Recv,
                    Send("354 go\r\n"),
                    Recv,
                ],
            ),
            (
                "end",
                vec![
                    RecvData,
                    Send("250 2.0.0 queued\r\n"),
                    Recv,
                    Send("221 bye\r\n"),
                ],
            ),
        ],
        P::Imap => vec![
            (
                "greeting",
                vec![Send(
                    "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] fault\r\n",
                )],
            ),
            ("AUTH", vec![Tagged("OK [CAPABILITY IMAP4rev1] Logged in")]),
            ("SELECT", vec![Tagged("OK [READ-WRITE] Select completed")]),
            (
                "mid-FETCH",
                vec![Recv, Send("* 1 FETCH (BODY[] {100000}\r\n"), Partial(30000)],
            ),
        ],
        P::Pop3 => vec![
            ("greeting", vec![Send("+OK fault ready\r\n")]),
            (
                "AUTH",
                vec![Recv, Send("+ \r\n"), Recv, Send("+OK logged in\r\n")],
            ),
            (
                "mid-RETR",
                vec![Recv, Send("+OK 100000 octets\r\n"), Partial(30000)],
            ),
        ],
    }
}

/// A session that ends early (the relay passing on its client's QUIT or LOGOUT) is answered the
/// way servers do, whatever the script.
async fn goodbye(r: &mut BufReader<TcpStream>, line: &str, p: P) -> bool {
    let upper = line.to_ascii_uppercase();
    let reply = if upper.starts_with("QUIT") && p == P::Smtp {
        "221 2.0.0 Bye\r\n".to_owned()
    } else if upper.starts_with("QUIT") {
        "+OK bye\r\n".to_owned()
    } else if upper.contains(" LOGOUT") {
        format!(
            "* BYE bye\r\n{} OK LOGOUT completed\r\n",
            line.split(' ').next().unwrap_or("*")
        )
    } else {
        return false;
    };
    let _ = r.get_mut().write_all(reply.as_bytes()).await;
    true
}

async fn scripted_upstream(steps: Vec<Step>, p: P) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let steps = steps.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(tcp);
                for step in steps {
                    let mut line = String::new();
                    match step {
                        Send(s) => {
                            if r.get_mut().write_all(s.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        Recv => {
                            if r.read_line(&mut line).await.unwrap_or(0) == 0
                                || goodbye(&mut r, &line, p).await
                            {
                                return;
                            }
                        }
                        Tagged(text) => {
                            if r.read_line(&mut line).await.unwrap_or(0) == 0
                                || goodbye(&mut r, &line, p).await
                            {
                                return;
                            }
                            let tag = line.split(' ').next().unwrap_or("*").to_owned();
                            let _ = r
                                .get_mut()
                                .write_all(format!("{tag} {text}\r\n").as_bytes())
                                .await;
                        }
                        RecvData => loop {
                            line.clear();
                            if r.read_line(&mut line).await.unwrap_or(0) == 0 || line == ".\r\n" {
                                break;
                            }
                        },
                        Partial(n) => {
                            let _ = r.get_mut().write_all(&vec![b'x'; n]).await;
                        }
                        Drop => return,
                        Stall => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                    }
                }
                // A complete script: keep the connection until the relay closes it.
                let mut sink = Vec::new();
                let _ = r.read_to_end(&mut sink).await;
            });
        }
    });
    addr
}

/// What the client sends, in order, and how it reads each reply.
fn client_script(p: P) -> Vec<&'static str> {
    match p {
        P::Smtp => vec![
            "EHLO client\r\n",
            "AUTH PLAIN AHVzZXJAZXhhbXBsZS5jb20AbG9jYWwtcGFzc3dvcmQtY2FuYXJ5LTdmM2U=\r\n",
            "MAIL FROM:<mailbox@example.com>\r\n",
            "RCPT TO:<rcpt@example.com>\r\n",
            "DATA\r\n",
            "Subject: fault\r\n\r\nbody\r\n.\r\n",
            "QUIT\r\n",
        ],
        P::Imap => vec![
            "a1 LOGIN user@example.com local-password-canary-7f3e\r\n",
            "a2 SELECT INBOX\r\n",
            "a3 FETCH 1 BODY[]\r\n",
            "a4 LOGOUT\r\n",
        ],
        P::Pop3 => vec![
            "USER user@example.com\r\n",
            "PASS local-password-canary-7f3e\r\n",
            "RETR 1\r\n",
            "QUIT\r\n",
        ],
    }
}

/// Reads one complete reply, or what arrived before the relay closed. `None` when closed with
/// nothing more.
async fn read_reply(r: &mut BufReader<TcpStream>, p: P, sent: &str) -> Option<String> {
    let mut out = String::new();
    let tag = sent.split(' ').next().unwrap_or("").to_owned();
    loop {
        let mut line = Vec::new();
        let Ok(read) =
            tokio::time::timeout(Duration::from_secs(15), r.read_until(b'\n', &mut line)).await
        else {
            return Some(out + "<no reply in 15 s>");
        };
        let n = read.unwrap_or(0);
        if n == 0 {
            return if out.is_empty() {
                None
            } else {
                Some(out + "<closed>")
            };
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        // Bodies are summarised: only their size matters here.
        if line.len() > 320 {
            out.push_str(&format!("<{} bytes>", line.len()));
            continue;
        }
        out.push_str(&line);
        let done = match p {
            P::Smtp => line.len() >= 4 && line.as_bytes()[3] == b' ',
            P::Imap => {
                line.starts_with(&format!("{tag} "))
                    || line.starts_with("* BYE")
                    || line.starts_with("+ ")
            }
            P::Pop3 if sent.starts_with("RETR") => line.starts_with("-ERR") || line == ".\r\n",
            P::Pop3 => line.starts_with("+OK") || line.starts_with("-ERR"),
        };
        if done {
            return Some(out);
        }
    }
}

/// Runs the client's script against the relay; the transcript of replies, and the time taken.
async fn transcript(p: P, relay: SocketAddr) -> (String, Duration) {
    let started = Instant::now();
    let mut r = BufReader::new(TcpStream::connect(relay).await.unwrap());
    let mut out = String::new();
    match read_reply(&mut r, p, "*").await {
        Some(greeting) => out.push_str(&greeting),
        None => return ("<closed>".into(), started.elapsed()),
    }
    for command in client_script(p) {
        if r.get_mut().write_all(command.as_bytes()).await.is_err() {
            out.push_str("<closed>");
            break;
        }
        match read_reply(&mut r, p, command).await {
            Some(reply) => {
                out.push_str(&reply);
                if reply.ends_with("<closed>") || reply.ends_with("15 s>") {
                    break;
                }
            }
            None => {
                out.push_str("<closed>");
                break;
            }
        }
    }
    (out, started.elapsed())
}

fn toml(p: P, upstream: SocketAddr, starttls: bool, token_url: &str) -> String {
    let protocol = format!("{p:?}").to_lowercase();
    let tls = if starttls { "starttls" } else { "none" };
    format!(
        "[listener.main]\nprotocol = \"{protocol}\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nupstream_tls = \"{tls}\"\nupstream_probe = false\nspool = false\nconnect_timeout_secs = 2\nupstream_timeout_secs = 2\nidle_timeout_secs = 3\n\n[security]\nfailure_delay_ms = 0\ntoken_timeout_secs = 2\n\n[account.user]\nlogin = \"user@example.com\"\npassword_hash = \"{HASH_OF_PASSWORD}\"\nmailbox = \"mailbox@example.com\"\nprovider = \"custom\"\nclient_id = \"c\"\ntoken_url = \"{token_url}\"\nrefresh_token = \"rt-initial-canary-55cd\"\nallowed_from = [\"*\"]\n"
    )
}

/// Every upstream fault: the transcript the client sees, per protocol and phase (recorded with
/// AUTHRELAY_RECORD=1 and reviewed: the replies are the documented ones).
fn upstream_cases() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("Imap", "AUTH: Drop", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-] ready\r\na1 NO [UNAVAILABLE] Upstream unreachable (closed the connection), try again later\r\na2 BAD Log in first\r\na3 BAD Log in first\r\n* BYE Logging out\r\n"),
        ("Imap", "AUTH: Stall", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-] ready\r\na1 NO [UNAVAILABLE] Upstream unreachable (no answer in time (reply)), try again later\r\na2 BAD Log in first\r\na3 BAD Log in first\r\n* BYE Logging out\r\n"),
        ("Imap", "SELECT: Drop", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-] ready\r\na1 OK [CAPABILITY IMAP4rev1] Logged in\r\n<closed>"),
        ("Imap", "SELECT: Stall", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-] ready\r\na1 OK [CAPABILITY IMAP4rev1] Logged in\r\n<closed>"),
        ("Imap", "connect refused", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-] ready\r\na1 NO [UNAVAILABLE] Upstream unreachable (cannot connect: Connection refused (os error 111)), try again later\r\na2 BAD Log in first\r\na3 BAD Log in first\r\n* BYE Logging out\r\n"),
        ("Imap", "greeting: Drop", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-] ready\r\na1 NO [UNAVAILABLE] Upstream unreachable (closed the connection), try again later\r\na2 BAD Log in first\r\na3 BAD Log in first\r\n* BYE Logging out\r\n"),
        ("Imap", "greeting: Stall", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-] ready\r\na1 NO [UNAVAILABLE] Upstream unreachable (no answer in time (greeting)), try again later\r\na2 BAD Log in first\r\na3 BAD Log in first\r\n* BYE Logging out\r\n"),
        ("Imap", "mid-FETCH: Drop", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-] ready\r\na1 OK [CAPABILITY IMAP4rev1] Logged in\r\na2 OK [READ-WRITE] Select completed\r\n* 1 FETCH (BODY[] {100000}\r\n<30000 bytes><closed>"),
        ("Imap", "mid-FETCH: Stall", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-] ready\r\na1 OK [CAPABILITY IMAP4rev1] Logged in\r\na2 OK [READ-WRITE] Select completed\r\n* 1 FETCH (BODY[] {100000}\r\n<30000 bytes><closed>"),
        ("Pop3", "AUTH: Drop", "+OK ready\r\n+OK\r\n-ERR [SYS/TEMP] Upstream unreachable (closed the connection), try again later\r\n-ERR [AUTH] Authenticate first\r\n+OK Bye\r\n"),
        ("Pop3", "AUTH: Stall", "+OK ready\r\n+OK\r\n-ERR [SYS/TEMP] Upstream unreachable (no answer in time (reply)), try again later\r\n-ERR [AUTH] Authenticate first\r\n+OK Bye\r\n"),
        ("Pop3", "connect refused", "+OK ready\r\n+OK\r\n-ERR [SYS/TEMP] Upstream unreachable (cannot connect: Connection refused (os error 111)), try again later\r\n-ERR [AUTH] Authenticate first\r\n+OK Bye\r\n"),
        ("Pop3", "greeting: Drop", "+OK ready\r\n+OK\r\n-ERR [SYS/TEMP] Upstream unreachable (closed the connection), try again later\r\n-ERR [AUTH] Authenticate first\r\n+OK Bye\r\n"),
        ("Pop3", "greeting: Stall", "+OK ready\r\n+OK\r\n-ERR [SYS/TEMP] Upstream unreachable (no answer in time (greeting)), try again later\r\n-ERR [AUTH] Authenticate first\r\n+OK Bye\r\n"),
        ("Pop3", "mid-RETR: Drop", "+OK ready\r\n+OK\r\n+OK logged in\r\n+OK 100000 octets\r\n<30000 bytes><closed>"),
        ("Pop3", "mid-RETR: Stall", "+OK ready\r\n+OK\r\n+OK logged in\r\n+OK 100000 octets\r\n<30000 bytes><closed>"),
        ("Smtp", "AUTH: Drop", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.4.1 Upstream unreachable (closed the connection), try again later\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp", "AUTH: Stall", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.4.1 Upstream unreachable (no answer in time (reply)), try again later\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp", "EHLO: Drop", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.4.1 Upstream unreachable (closed the connection), try again later\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp", "EHLO: Stall", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.4.1 Upstream unreachable (no answer in time (reply)), try again later\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp", "connect refused", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.4.1 Upstream unreachable (cannot connect: Connection refused (os error 111)), try again later\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp", "greeting: Drop", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.4.1 Upstream unreachable (closed the connection), try again later\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp", "greeting: Stall", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.4.1 Upstream unreachable (no answer in time (greeting)), try again later\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp", "mid-DATA: Drop", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n235 2.7.0 Authentication successful\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n<closed>"),
        ("Smtp", "mid-DATA: Stall", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n235 2.7.0 Authentication successful\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n<closed>"),
        ("Smtp+STARTTLS", "EHLO: Drop", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.4.1 Upstream unreachable (closed the connection), try again later\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp+STARTTLS", "EHLO: Stall", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.4.1 Upstream unreachable (no answer in time (reply)), try again later\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp+STARTTLS", "STARTTLS: Drop", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.4.1 Upstream unreachable (closed the connection), try again later\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp+STARTTLS", "STARTTLS: Stall", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.4.1 Upstream unreachable (no answer in time (reply)), try again later\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp+STARTTLS", "connect refused", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.4.1 Upstream unreachable (cannot connect: Connection refused (os error 111)), try again later\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp+STARTTLS", "greeting: Drop", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.4.1 Upstream unreachable (closed the connection), try again later\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp+STARTTLS", "greeting: Stall", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.4.1 Upstream unreachable (no answer in time (greeting)), try again later\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_faults_at_every_phase() {
    let record = std::env::var_os("AUTHRELAY_RECORD").is_some();
    let mut results = Vec::new();
    let mut tasks = Vec::new();
    for (p, starttls) in [
        (P::Smtp, false),
        (P::Smtp, true),
        (P::Imap, false),
        (P::Pop3, false),
    ] {
        let phases = script(p, starttls);
        // A refused connection, then each phase dropped and stalled.
        let mut variants: Vec<(String, Option<Vec<Step>>)> = vec![("connect refused".into(), None)];
        for (i, (phase, _)) in phases.iter().enumerate() {
            if *phase == "end" {
                continue;
            }
            for fault in [Drop, Stall] {
                let mut steps: Vec<Step> =
                    phases[..i].iter().flat_map(|(_, s)| s.clone()).collect();
                // Faults mid-body happen after the phase's own steps; others before them.
                if phase.starts_with("mid-") {
                    steps.extend(phases[i].1.clone());
                }
                steps.push(fault.clone());
                variants.push((format!("{phase}: {fault:?}"), Some(steps)));
            }
        }
        for (name, steps) in variants {
            tasks.push(tokio::spawn(async move {
                // Each relay its own token endpoint: refresh tokens rotate.
                let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
                let token_url = tokens.url();
                let upstream = match steps {
                    Some(s) => scripted_upstream(s, p).await,
                    // A port nothing listens on (a freed ephemeral port could be reused by
                    // another case running at the same time).
                    None => SocketAddr::from(([127, 0, 0, 1], 1)),
                };
                let relay = Relay::start(&toml(p, upstream, starttls, &token_url)).await;
                let (t, took) = transcript(p, relay.addr).await;
                (p, starttls, name, t, took)
            }));
        }
    }
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let expected = upstream_cases();
    assert_eq!(
        results.len(),
        expected.len(),
        "every case has an expectation"
    );
    for (p, starttls, name, t, took) in &results {
        let label = format!("{p:?}{}", if *starttls { "+STARTTLS" } else { "" });
        if !record {
            let want = expected
                .iter()
                .find(|(l, n, _)| *l == label && n == name)
                .unwrap_or_else(|| panic!("no expectation for {label} {name}"));
            assert_eq!(t, want.2, "{label} {name}");
        }
        if record {
            println!("{label} | {name} | {t:?} | {:.1} s", took.as_secs_f64());
        }
        assert!(*took < Duration::from_secs(12), "{p:?} {name}: {took:?}");
        // Whatever happened, a message the upstream did not accept is never acknowledged.
        if *p == P::Smtp && !name.starts_with("end") {
            assert!(!t.contains("250 2.0.0 queued"), "{p:?} {name}: {t}");
        }
    }
}

/// What the token endpoint may do wrong, and what each protocol's client is told.
fn token_cases() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("Imap", "HTTP 500", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-] ready\r\na1 NO [UNAVAILABLE] Temporary authentication failure (the identity provider sent no OAuth token response (an HTTP error or not JSON) at TOKEN_URL (check token_url); bad_response)\r\na2 BAD Log in first\r\na3 BAD Log in first\r\n* BYE Logging out\r\n"),
        ("Imap", "invalid_grant", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-] ready\r\n* OK [ALERT] Sign-in for mailbox@example.com failed (AADSTS700082): the refresh token expired or was revoked: re-authorize the account with `authrelay login user`\r\na1 NO [AUTHENTICATIONFAILED] Sign-in for mailbox@example.com failed (AADSTS700082): the refresh token expired or was revoked: re-authorize the account with `authrelay login user`\r\na2 BAD Log in first\r\na3 BAD Log in first\r\n* BYE Logging out\r\n"),
        ("Imap", "no answer", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-] ready\r\na1 NO [UNAVAILABLE] Temporary authentication failure (the identity provider did not answer in time at TOKEN_URL (check token_url); timeout)\r\na2 BAD Log in first\r\na3 BAD Log in first\r\n* BYE Logging out\r\n"),
        ("Imap", "not JSON", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-] ready\r\na1 NO [UNAVAILABLE] Temporary authentication failure (the identity provider sent no OAuth token response (an HTTP error or not JSON) at TOKEN_URL (check token_url); bad_response)\r\na2 BAD Log in first\r\na3 BAD Log in first\r\n* BYE Logging out\r\n"),
        ("Imap", "wrong client secret", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-] ready\r\na1 NO [CONTACTADMIN] Sign-in for mailbox@example.com failed (AADSTS7000215): wrong client secret: copy the secret's Value, not its Secret ID\r\na2 BAD Log in first\r\na3 BAD Log in first\r\n* BYE Logging out\r\n"),
        ("Pop3", "HTTP 500", "+OK ready\r\n+OK\r\n-ERR [SYS/TEMP] Temporary authentication failure (the identity provider sent no OAuth token response (an HTTP error or not JSON) at TOKEN_URL (check token_url); bad_response)\r\n-ERR [AUTH] Authenticate first\r\n+OK Bye\r\n"),
        ("Pop3", "invalid_grant", "+OK ready\r\n+OK\r\n-ERR [AUTH] Sign-in for mailbox@example.com failed (AADSTS700082): the refresh token expired or was revoked: re-authorize the account with `authrelay login user`\r\n-ERR [AUTH] Authenticate first\r\n+OK Bye\r\n"),
        ("Pop3", "no answer", "+OK ready\r\n+OK\r\n-ERR [SYS/TEMP] Temporary authentication failure (the identity provider did not answer in time at TOKEN_URL (check token_url); timeout)\r\n-ERR [AUTH] Authenticate first\r\n+OK Bye\r\n"),
        ("Pop3", "not JSON", "+OK ready\r\n+OK\r\n-ERR [SYS/TEMP] Temporary authentication failure (the identity provider sent no OAuth token response (an HTTP error or not JSON) at TOKEN_URL (check token_url); bad_response)\r\n-ERR [AUTH] Authenticate first\r\n+OK Bye\r\n"),
        ("Pop3", "wrong client secret", "+OK ready\r\n+OK\r\n-ERR [AUTH] Sign-in for mailbox@example.com failed (AADSTS7000215): wrong client secret: copy the secret's Value, not its Secret ID\r\n-ERR [AUTH] Authenticate first\r\n+OK Bye\r\n"),
        ("Smtp", "HTTP 500", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.7.0 Temporary authentication failure (the identity provider sent no OAuth token response (an HTTP error or not JSON) at TOKEN_URL (check token_url); bad_response)\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp", "invalid_grant", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n535 5.7.8 Sign-in for mailbox@example.com failed (AADSTS700082): the refresh token expired or was revoked: re-authorize the account with `authrelay login user`\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp", "no answer", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.7.0 Temporary authentication failure (the identity provider did not answer in time at TOKEN_URL (check token_url); timeout)\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp", "not JSON", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n454 4.7.0 Temporary authentication failure (the identity provider sent no OAuth token response (an HTTP error or not JSON) at TOKEN_URL (check token_url); bad_response)\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
        ("Smtp", "wrong client secret", "220 localhost ESMTP ready\r\n250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n535 5.7.8 Sign-in for mailbox@example.com failed (AADSTS7000215): wrong client secret: copy the secret's Value, not its Secret ID\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_endpoint_failures() {
    let record = std::env::var_os("AUTHRELAY_RECORD").is_some();
    let behaviours: Vec<(&str, TokenBehaviour)> = vec![
        ("HTTP 500", TokenBehaviour::ServerError),
        ("no answer", TokenBehaviour::Hang),
        ("not JSON", TokenBehaviour::Garbage),
        (
            "invalid_grant",
            TokenBehaviour::Error {
                error: "invalid_grant",
                description: "AADSTS700082: The refresh token has expired due to inactivity.",
            },
        ),
        (
            "wrong client secret",
            TokenBehaviour::Error {
                error: "invalid_client",
                description: "AADSTS7000215: Invalid client secret provided.",
            },
        ),
    ];
    let mut tasks = Vec::new();
    for p in [P::Smtp, P::Imap, P::Pop3] {
        for (name, behaviour) in behaviours.clone() {
            tasks.push(tokio::spawn(async move {
                let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
                tokens.set(behaviour);
                let steps = script(p, false).into_iter().flat_map(|(_, s)| s).collect();
                let upstream = scripted_upstream(steps, p).await;
                let relay = Relay::start(&toml(p, upstream, false, &tokens.url())).await;
                let (t, took) = transcript(p, relay.addr).await;
                // The endpoint's port changes from run to run; the reply names it.
                (p, name, t.replace(&tokens.url(), "TOKEN_URL"), took)
            }));
        }
    }
    let expected = token_cases();
    for t in tasks {
        let (p, name, t, took) = t.await.unwrap();
        let label = format!("{p:?}");
        if record {
            println!("{label} | {name} | {t:?} | {:.1} s", took.as_secs_f64());
            continue;
        }
        assert!(took < Duration::from_secs(12), "{label} {name}: {took:?}");
        let want = expected
            .iter()
            .find(|(l, n, _)| *l == label && *n == name)
            .unwrap_or_else(|| panic!("no expectation for {label} {name}"));
        assert_eq!(t, want.2, "{label} {name}");
    }
}
