//! The hostile-input catalogue: what a broken or malicious client may send before login, to
//! each protocol, with the exact bytes the relay answers and whether it then closes. Everything
//! before login is answered by the relay itself; upstream (the real Dovecot of the test stack)
//! is reached only by the cases that log in.
//!
//! Each case is one fresh connection: read the greeting, send the input, collect everything until
//! the relay closes or is quiet for a moment. `AUTHRELAY_RECORD=1` prints what was received
//! instead of checking it (to write a new case's expectation, which a person then reviews).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::interop::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum P {
    Smtp,
    Imap,
    Pop3,
}

/// `(protocol, name, input, expected reply, closed afterwards)`.
type Case = (P, &'static str, Vec<u8>, &'static str, bool);

fn b64(s: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s)
}

const CLOSE: bool = true;
const OPEN: bool = false;

fn cases() -> Vec<Case> {
    use P::*;
    let long = |n: usize| {
        let mut v = vec![b'A'; n];
        v.extend_from_slice(b"\r\n");
        v
    };
    let s = |x: &str| x.as_bytes().to_vec();
    let plain = |user: &[u8], pass: &[u8]| {
        let mut raw = vec![0u8];
        raw.extend_from_slice(user);
        raw.push(0);
        raw.extend_from_slice(pass);
        b64(&raw)
    };
    let flood = |line: &str, n: usize| line.repeat(n).into_bytes();
    let mut v: Vec<Case> = vec![
        // ---------------------------------------------------------------- SMTP
        // Old firmware sends a bare HELO: taken (tests/interop_quirks.rs).
        (Smtp, "HELO without a domain", s("HELO\r\n"), "250 localhost\r\n", OPEN),
        (Smtp, "empty line", s("\r\n"), "500 5.5.2 Error: command not recognized\r\n", OPEN),
        (Smtp, "unknown verb", s("XYZZY\r\n"), "500 5.5.2 Error: command not recognized\r\n", OPEN),
        (Smtp, "verb with a NUL", s("NO\0OP\r\n"), "500 5.5.2 Error: command contains invalid characters\r\n", OPEN),
        (Smtp, "stray CR inside a line", s("NOOP\rX\r\n"), "500 5.5.2 Error: command contains invalid characters\r\n", OPEN),
        (Smtp, "bare LF line ending", s("NOOP\n"), "250 2.0.0 OK\r\n", OPEN),
        (Smtp, "NOOP", s("NOOP\r\n"), "250 2.0.0 OK\r\n", OPEN),
        (Smtp, "RSET", s("RSET\r\n"), "250 2.0.0 OK\r\n", OPEN),
        (Smtp, "MAIL before login", s("MAIL FROM:<a@example.com>\r\n"), "530 5.7.0 Authentication required\r\n", OPEN),
        (Smtp, "RCPT before login", s("RCPT TO:<a@example.com>\r\n"), "530 5.7.0 Authentication required\r\n", OPEN),
        (Smtp, "DATA before login", s("DATA\r\n"), "530 5.7.0 Authentication required\r\n", OPEN),
        (Smtp, "BDAT before login", s("BDAT 10 LAST\r\n"), "530 5.7.0 Authentication required\r\n", OPEN),
        (Smtp, "VRFY before login", s("VRFY root\r\n"), "530 5.7.0 Authentication required\r\n", OPEN),
        (Smtp, "EXPN before login", s("EXPN staff\r\n"), "530 5.7.0 Authentication required\r\n", OPEN),
        (Smtp, "ETRN before login", s("ETRN example.com\r\n"), "530 5.7.0 Authentication required\r\n", OPEN),
        (Smtp, "pipelined mail commands before login", s("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"), "530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n530 5.7.0 Authentication required\r\n", OPEN),
        (Smtp, "line over 2 KiB", long(3000), "500 5.5.2 Line too long, closing connection\r\n", CLOSE),
        (Smtp, "HTTP request", s("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "", CLOSE),
        (Smtp, "HTTP POST", s("POST /login HTTP/1.0\r\n\r\n"), "", CLOSE),
        (Smtp, "AUTH with an unknown mechanism", s("AUTH CRAM-MD5\r\n"), "504 5.5.4 Unrecognized authentication type\r\n", OPEN),
        (Smtp, "AUTH XOAUTH2 from a client", s("AUTH XOAUTH2 dXNlcj1h\r\n"), "504 5.5.4 Unrecognized authentication type\r\n", OPEN),
        (Smtp, "AUTH without a mechanism", s("AUTH\r\n"), "501 5.5.4 Syntax: AUTH mechanism\r\n", OPEN),
        (Smtp, "AUTH PLAIN with invalid base64", s("AUTH PLAIN !!!notbase64\r\n"), "501 5.5.2 Cannot decode base64\r\n", OPEN),
        (Smtp, "AUTH PLAIN with one NUL", format!("AUTH PLAIN {}\r\n", b64(b"user\0pass")).into_bytes(), "501 5.5.2 Malformed authentication response\r\n", OPEN),
        (Smtp, "AUTH PLAIN with an empty password", format!("AUTH PLAIN {}\r\n", plain(b"scanner@example.com", b"")).into_bytes(), "535 5.7.8 Authentication credentials invalid\r\n", OPEN),
        (Smtp, "AUTH PLAIN cancelled", s("AUTH PLAIN\r\n*\r\n"), "334 \r\n501 5.7.0 Authentication cancelled\r\n", OPEN),
        (Smtp, "AUTH LOGIN cancelled at the password", format!("AUTH LOGIN\r\n{}\r\n*\r\n", b64(b"u")).into_bytes(), "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n501 5.7.0 Authentication cancelled\r\n", OPEN),
        (Smtp, "AUTH LOGIN with invalid base64", s("AUTH LOGIN\r\n%%%\r\n"), "334 VXNlcm5hbWU6\r\n501 5.5.2 Cannot decode base64\r\n", OPEN),
        (Smtp, "AUTH line over 12 KiB", { let mut v = s("AUTH PLAIN\r\n"); v.extend(long(13000)); v }, "334 \r\n500 5.5.6 Authentication Exchange line is too long\r\n", CLOSE),
        (Smtp, "username with CR LF", format!("AUTH PLAIN {}\r\n", plain(b"a\r\nMAIL FROM:<x@y>", b"pw")).into_bytes(), "535 5.7.8 Authentication credentials invalid\r\n", OPEN),
        (Smtp, "username with %x01", format!("AUTH PLAIN {}\r\n", plain(b"a\x01auth=Bearer x", b"pw")).into_bytes(), "535 5.7.8 Authentication credentials invalid\r\n", OPEN),
        (Smtp, "non-UTF-8 username", format!("AUTH PLAIN {}\r\n", plain(b"\xff\xfe@example.com", b"pw")).into_bytes(), "535 5.7.8 Authentication credentials invalid\r\n", OPEN),
        (Smtp, "unknown user", format!("AUTH PLAIN {}\r\n", plain(b"nobody@example.com", b"pw")).into_bytes(), "535 5.7.8 Authentication credentials invalid\r\n", OPEN),
        (Smtp, "wrong password", format!("AUTH PLAIN {}\r\n", plain(b"scanner@example.com", b"wrong")).into_bytes(), "535 5.7.8 Authentication credentials invalid\r\n", OPEN),
        (Smtp, "AUTH PLAIN with a 2.3 KB initial response", format!("AUTH PLAIN {}\r\n", plain(b"scanner@example.com", &[b'p'; 1700])).into_bytes(), "535 5.7.8 Authentication credentials invalid\r\n", OPEN),
        (Smtp, "AUTH PLAIN initial response over 12 KiB", { let mut v = s("AUTH PLAIN "); v.extend(long(13000)); v }, "500 5.5.2 Line too long, closing connection\r\n", CLOSE),
        (Smtp, "username with a bidi override", format!("AUTH PLAIN {}\r\n", plain("evil\u{202E}gpj.exe@example.com".as_bytes(), b"pw")).into_bytes(), "535 5.7.8 Authentication credentials invalid\r\n", OPEN),
        (Smtp, "three failed logins", format!("AUTH PLAIN {0}\r\nAUTH PLAIN {0}\r\nAUTH PLAIN {0}\r\n", plain(b"nobody@example.com", b"pw")).into_bytes(), "535 5.7.8 Authentication credentials invalid\r\n535 5.7.8 Authentication credentials invalid\r\n535 5.7.8 Authentication credentials invalid\r\n421 4.7.0 Too many failed logins, closing connection\r\n", CLOSE),
        (Smtp, "STARTTLS with an argument", s("STARTTLS now\r\n"), "501 5.5.4 Syntax: STARTTLS takes no parameters\r\n", OPEN),
        (Smtp, "STARTTLS on a listener without TLS", s("STARTTLS\r\n"), "454 4.7.0 TLS not available due to temporary reason\r\n", OPEN),
        (Smtp, "a flood of NOOPs before login", flood("NOOP\r\n", 60_000), "...?250 2.0.0 OK\r\n421 4.7.0 Too much data before authentication, closing connection\r\n", CLOSE),
        (Smtp, "QUIT", s("QUIT\r\n"), "221 2.0.0 Bye\r\n", CLOSE),
    ];
    // ---------------------------------------------------------------- IMAP
    v.extend(vec![
        (Imap, "NOOP", s("a1 NOOP\r\n"), "a1 OK NOOP completed\r\n", OPEN),
        (Imap, "missing tag", s("\r\n"), "* BAD Invalid tag\r\n", OPEN),
        (Imap, "tag only", s("a1\r\n"), "a1 BAD Syntax error in command\r\n", OPEN),
        (Imap, "tag with a brace", s("a{1 NOOP\r\n"), "* BAD Invalid tag\r\n", OPEN),
        (Imap, "star as tag", s("* NOOP\r\n"), "* BAD Invalid tag\r\n", OPEN),
        (Imap, "unknown command", s("a1 XYZZY\r\n"), "a1 BAD Log in first\r\n", OPEN),
        (Imap, "SELECT before login", s("a1 SELECT INBOX\r\n"), "a1 BAD Log in first\r\n", OPEN),
        (Imap, "FETCH before login", s("a1 FETCH 1 BODY[]\r\n"), "a1 BAD Log in first\r\n", OPEN),
        (Imap, "APPEND before login", s("a1 APPEND INBOX {3}\r\nabc\r\n"), "+ Ready for literal data\r\na1 BAD Log in first\r\n", OPEN),
        (Imap, "LIST before login", s("a1 LIST \"\" *\r\n"), "a1 BAD Log in first\r\n", OPEN),
        (Imap, "NUL in a line", s("a1 NO\0OP\r\n"), "a1 BAD Syntax error in command\r\n", OPEN),
        (Imap, "line over the limit", long(20_000), "* BYE [TOOBIG] Line too long\r\n", CLOSE),
        (Imap, "HTTP request", s("GET / HTTP/1.1\r\n\r\n"), "", CLOSE),
        (Imap, "literal of 4294967296 octets", s("a1 LOGIN {4294967296}\r\n"), "a1 BAD [TOOBIG] Literal too big\r\n", CLOSE),
        (Imap, "literal size with a sign", s("a1 LOGIN {-1}\r\n"), "a1 BAD Syntax error in command\r\n", OPEN),
        (Imap, "literal over 8 KiB", s("a1 LOGIN {9000}\r\n"), "a1 BAD [TOOBIG] Literal too big\r\n", CLOSE),
        (Imap, "non-synchronizing literal over 4 KiB", s("a1 LOGIN {5000+}\r\n"), "a1 BAD [TOOBIG] Literal too big\r\n", CLOSE),
        (Imap, "unterminated quoted string", s("a1 LOGIN \"scanner@example.com pw\r\n"), "a1 BAD Syntax error in command\r\n", OPEN),
        (Imap, "LOGIN with one argument", s("a1 LOGIN scanner@example.com\r\n"), "a1 BAD Syntax error in command\r\n", OPEN),
        (Imap, "LOGIN with three arguments", s("a1 LOGIN a b c\r\n"), "a1 BAD Syntax error in command\r\n", OPEN),
        (Imap, "LOGIN unknown user", s("a1 LOGIN nobody@example.com pw\r\n"), "a1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n", OPEN),
        (Imap, "LOGIN wrong password", s("a1 LOGIN scanner@example.com wrong\r\n"), "a1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n", OPEN),
        (Imap, "LOGIN username with CR in a literal", s("a1 LOGIN {3}\r\na\rb pw\r\n"), "+ Ready for literal data\r\na1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n", OPEN),
        (Imap, "LOGIN username with %x01 in a literal", s("a1 LOGIN {3}\r\na\x01b pw\r\n"), "+ Ready for literal data\r\na1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n", OPEN),
        (Imap, "LOGIN non-UTF-8 username", b"a1 LOGIN {2}\r\n\xff\xfe pw\r\n".to_vec(), "+ Ready for literal data\r\na1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n", OPEN),
        (Imap, "AUTHENTICATE unknown mechanism", s("a1 AUTHENTICATE CRAM-MD5\r\n"), "a1 NO Unsupported authentication mechanism\r\n", OPEN),
        (Imap, "AUTHENTICATE XOAUTH2 from a client", s("a1 AUTHENTICATE XOAUTH2\r\n"), "a1 NO Unsupported authentication mechanism\r\n", OPEN),
        (Imap, "AUTHENTICATE PLAIN cancelled", s("a1 AUTHENTICATE PLAIN\r\n*\r\n"), "+ \r\na1 BAD AUTHENTICATE cancelled\r\n", OPEN),
        (Imap, "AUTHENTICATE PLAIN invalid base64", s("a1 AUTHENTICATE PLAIN\r\n!!!\r\n"), "+ \r\na1 BAD Invalid base64\r\n", OPEN),
        (Imap, "AUTHENTICATE PLAIN one NUL", format!("a1 AUTHENTICATE PLAIN {}\r\n", b64(b"user\0pass")).into_bytes(), "a1 BAD Malformed authentication response\r\n", OPEN),
        (Imap, "three failed logins", s("a1 LOGIN x y\r\na2 LOGIN x y\r\na3 LOGIN x y\r\n"), "a1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\na2 NO [AUTHENTICATIONFAILED] Invalid credentials\r\na3 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n* BYE Too many failed logins\r\n", CLOSE),
        (Imap, "STARTTLS on a listener without TLS", s("a1 STARTTLS\r\n"), "a1 BAD STARTTLS not supported\r\n", OPEN),
        (Imap, "a flood of NOOPs before login", flood("a NOOP\r\n", 40_000), "...?a OK NOOP completed\r\n* BYE [TOOBIG] Too much data before authentication\r\n", CLOSE),
        (Imap, "LOGOUT", s("a1 LOGOUT\r\n"), "* BYE Logging out\r\na1 OK LOGOUT completed\r\n", CLOSE),
    ]);
    // ---------------------------------------------------------------- POP3
    v.extend(vec![
        (Pop3, "NOOP before login", s("NOOP\r\n"), "-ERR [AUTH] Authenticate first\r\n", OPEN),
        (Pop3, "STAT before login", s("STAT\r\n"), "-ERR [AUTH] Authenticate first\r\n", OPEN),
        (Pop3, "LIST before login", s("LIST\r\n"), "-ERR [AUTH] Authenticate first\r\n", OPEN),
        (Pop3, "RETR before login", s("RETR 1\r\n"), "-ERR [AUTH] Authenticate first\r\n", OPEN),
        (Pop3, "DELE before login", s("DELE 1\r\n"), "-ERR [AUTH] Authenticate first\r\n", OPEN),
        (Pop3, "TOP before login", s("TOP 1 10\r\n"), "-ERR [AUTH] Authenticate first\r\n", OPEN),
        (Pop3, "UIDL before login", s("UIDL\r\n"), "-ERR [AUTH] Authenticate first\r\n", OPEN),
        (Pop3, "RSET before login", s("RSET\r\n"), "-ERR [AUTH] Authenticate first\r\n", OPEN),
        (Pop3, "unknown command", s("XYZZY\r\n"), "-ERR Unknown command\r\n", OPEN),
        (Pop3, "empty line", s("\r\n"), "-ERR Unknown command\r\n", OPEN),
        (Pop3, "NUL in a line", s("US\0ER a\r\n"), "-ERR Invalid command\r\n", OPEN),
        (Pop3, "line over the limit", long(3000), "-ERR Line too long, closing connection\r\n", CLOSE),
        (Pop3, "HTTP request", s("GET / HTTP/1.1\r\n\r\n"), "", CLOSE),
        (Pop3, "USER without a name", s("USER\r\n"), "-ERR Invalid command\r\n", OPEN),
        (Pop3, "PASS before USER", s("PASS secret\r\n"), "-ERR No USER given\r\n", OPEN),
        (Pop3, "APOP", s("APOP scanner@example.com 0123456789abcdef0123456789abcdef\r\n"), "-ERR APOP is not supported; log in with USER/PASS or AUTH PLAIN\r\n", OPEN),
        (Pop3, "USER then wrong PASS", s("USER scanner@example.com\r\nPASS wrong\r\n"), "+OK\r\n-ERR [AUTH] Authentication failed\r\n", OPEN),
        (Pop3, "USER unknown then PASS", s("USER nobody@example.com\r\nPASS pw\r\n"), "+OK\r\n-ERR [AUTH] Authentication failed\r\n", OPEN),
        (Pop3, "USER with %x01", s("USER a\x01b\r\n"), "-ERR Invalid command\r\n", OPEN),
        (Pop3, "AUTH unknown mechanism", s("AUTH CRAM-MD5\r\n"), "-ERR Unsupported authentication mechanism\r\n", OPEN),
        (Pop3, "AUTH XOAUTH2 from a client", s("AUTH XOAUTH2\r\n"), "-ERR Unsupported authentication mechanism\r\n", OPEN),
        (Pop3, "AUTH PLAIN invalid base64", s("AUTH PLAIN !!!\r\n"), "-ERR Cannot decode base64\r\n", OPEN),
        (Pop3, "AUTH PLAIN cancelled", s("AUTH PLAIN\r\n*\r\n"), "+ \r\n-ERR Authentication cancelled\r\n", OPEN),
        (Pop3, "AUTH PLAIN username with CR LF", format!("AUTH PLAIN {}\r\n", plain(b"a\r\nSTAT", b"pw")).into_bytes(), "-ERR [AUTH] Authentication failed\r\n", OPEN),
        (Pop3, "AUTH PLAIN wrong password", format!("AUTH PLAIN {}\r\n", plain(b"scanner@example.com", b"wrong")).into_bytes(), "-ERR [AUTH] Authentication failed\r\n", OPEN),
        (Pop3, "PASS of 2 KB (a refresh token)", format!("USER scanner@example.com\r\nPASS {}\r\n", "p".repeat(2000)).into_bytes(), "+OK\r\n-ERR [AUTH] Authentication failed\r\n", OPEN),
        (Pop3, "three failed logins", s("USER x\r\nPASS y\r\nUSER x\r\nPASS y\r\nUSER x\r\nPASS y\r\n"), "+OK\r\n-ERR [AUTH] Authentication failed\r\n+OK\r\n-ERR [AUTH] Authentication failed\r\n+OK\r\n-ERR [AUTH] Authentication failed\r\n-ERR [SYS/PERM] Too many failed logins, closing connection\r\n", CLOSE),
        (Pop3, "STLS on a listener without TLS", s("STLS\r\n"), "-ERR STLS not available\r\n", OPEN),
        (Pop3, "a flood of NOOPs before login", flood("NOOP\r\n", 60_000), "...?-ERR [AUTH] Authenticate first\r\n-ERR [SYS/PERM] Too much data before authentication, closing connection\r\n", CLOSE),
        (Pop3, "QUIT", s("QUIT\r\n"), "+OK Bye\r\n", CLOSE),
    ]);
    v
}

/// An expectation starting with `...` is the end of the reply (floods answer thousands of
/// lines before the one that matters).
///
/// A flood is cut off while the client is still sending: the relay's close then resets the
/// connection, and the kernel may drop the last reply before the client reads it. For those
/// cases (`...?`), the close is what is checked, and the last line when it arrived.
fn matches(got: &str, expect: &str) -> bool {
    if let Some(tail) = expect.strip_prefix("...?") {
        let last_line = tail
            .trim_end_matches("\r\n")
            .rsplit("\r\n")
            .next()
            .unwrap_or("");
        return got.ends_with(tail) || !got.contains(last_line);
    }
    match expect.strip_prefix("...") {
        Some(tail) => got.ends_with(tail),
        None => got == expect,
    }
}

/// Reads until the peer closes or is quiet for `quiet`; `(bytes, closed)`.
fn collect(s: &mut TcpStream, quiet: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    s.set_read_timeout(Some(quiet)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (out, false)
            }
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

fn greeting_done(p: P, got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    match p {
        P::Smtp => text.lines().any(|l| l.starts_with("220 ")),
        P::Imap => text.starts_with("* OK") && text.ends_with("\r\n"),
        P::Pop3 => text.starts_with("+OK") && text.ends_with("\r\n"),
    }
}

#[test]
fn every_hostile_input_gets_its_exact_reply() {
    stack();
    let hash = hash_password(LOCAL_PASSWORD);
    let account = format!(
        "[account.scanner]\nlogin = \"scanner@example.com\"\npassword_hash = \"{hash}\"\nmailbox = \"scanner@example.com\"\nprovider = \"custom\"\nclient_id = \"hostile-client\"\ntoken_url = \"http://{IDP}/token\"\n"
    );
    // No delay and no throttle: the catalogue makes many failed logins from one address.
    let r = FullRelay::start(
        &account,
        "[security]\nfailure_delay_ms = 0\nmax_failures_per_address = 0\nmax_failures_per_username = 0",
    );
    let record = std::env::var_os("AUTHRELAY_RECORD").is_some();
    let all = cases();
    assert!(all.len() >= 100, "{} cases", all.len());
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = all
            .chunks(all.len().div_ceil(8))
            .map(|chunk| {
                let r = &r;
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    for (p, name, input, expect, closes) in chunk {
                        let port = match p {
                            P::Smtp => r.smtp,
                            P::Imap => r.imap,
                            P::Pop3 => r.pop3,
                        };
                        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                        let mut greeting = Vec::new();
                        while !greeting_done(*p, &greeting) {
                            let (more, closed) = collect(&mut s, Duration::from_millis(500));
                            greeting.extend(more);
                            assert!(!closed, "{name}: closed before the greeting");
                        }
                        if *p == P::Smtp {
                            // Most SMTP cases are about what follows EHLO.
                            let _ = s.write_all(b"EHLO hostile.client\r\n");
                            let mut ehlo = Vec::new();
                            while !String::from_utf8_lossy(&ehlo).lines().any(|l| l.starts_with("250 ")) {
                                let (more, closed) = collect(&mut s, Duration::from_millis(500));
                                ehlo.extend(more);
                                assert!(!closed, "{name}: closed after EHLO");
                            }
                        }
                        let _ = s.write_all(input);
                        // A case that ends in a close waits for it (a loaded machine may pause
                        // longer than the quiet period in the middle of a flood's replies).
                        let quiet = if *closes { Duration::from_secs(8) } else { Duration::from_millis(700) };
                        let (got, closed) = collect(&mut s, quiet);
                        let got = String::from_utf8_lossy(&got).into_owned();
                        if record {
                            let tail = &got[got.len().saturating_sub(120)..];
                            println!("{p:?} | {name} | {tail:?} | closed={closed}");
                        } else if !matches(&got, expect) || closed != *closes {
                            failures.push(format!(
                                "{p:?} {name}:\n  expected {expect:?} closed={closes}\n  got      {got:?} closed={closed}"
                            ));
                        }
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
    // The relay is still healthy afterwards, and logged no secret.
    assert_eq!(
        r.imap_count("nobody@example.com", "x"),
        "ERR [AUTHENTICATIONFAILED] Invalid credentials"
    );
    assert!(find_secret(&r.log_text(), &[LOCAL_PASSWORD.into()]).is_none());
}
