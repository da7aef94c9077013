//! The quirks of real devices' SMTP, byte for byte, against a spooling listener, each with the
//! place it was seen (README: Devices that cannot log in, "What old firmware sends"). Each
//! quirk is a conversation: what the device sends, step by step, and the start of the reply
//! it must get; the message is then looked for in the mailbox (delivered through Dovecot
//! submission with XOAUTH2 and Postfix), or, for a refusal, must not be there.
//!
//! The rule, as Postfix's defaults (`strict_rfc821_envelopes = no`): take what is unambiguous
//! and costs no safety; refuse clearly what would open SMTP smuggling (RFC 5321 §4.1.1.4).

mod support;

use base64::Engine;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::interop::*;

/// A conversation: what is sent, and the start of the reply each step must get.
type Steps = Vec<(String, &'static str)>;
/// A quirk's conversation and what must arrive, for a message marked with the argument.
type Build<'a> = &'a dyn Fn(&str) -> (Steps, Option<Vec<String>>);

/// One quirk of the catalogue.
struct Quirk {
    name: &'static str,
    /// Where it was seen (an issue tracker, an RFC, a server's documentation).
    source: &'static str,
    /// What the device sends, in order, and the start of the reply each step must get (empty:
    /// send on without reading, as a device that does not wait). `{MSG}` is the message.
    steps: Steps,
    /// The message must be in the mailbox (with these texts in it), or must not be.
    delivered: Option<Vec<String>>,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

const LOGIN: &str = "scanner@example.com";

fn plain() -> String {
    b64(&format!("\0{LOGIN}\0{LOCAL_PASSWORD}"))
}

/// EHLO and AUTH PLAIN, the common start of quirks about what comes after.
fn logged_in(ehlo: &str) -> Steps {
    vec![
        (format!("{ehlo}\r\n"), "250"),
        (format!("AUTH PLAIN {}\r\n", plain()), "235 2.7.0"),
    ]
}

/// MAIL, RCPT, DATA and the message, with these verbs and address forms.
fn transaction(mail: &str, rcpt: &str, message: &str) -> Steps {
    vec![
        (format!("{mail}\r\n"), "250 2.1.0"),
        (format!("{rcpt}\r\n"), "250 2.1.5"),
        ("DATA\r\n".into(), "354 "),
        (message.to_owned(), "250 2.0.0 Ok: queued as"),
        ("QUIT\r\n".into(), "221 "),
    ]
}

fn catalogue(user: &str, marker: &dyn Fn(&str) -> String) -> Vec<Quirk> {
    let msg = |m: &str| format!("From: {user}\r\nSubject: {m}\r\n\r\nscanned page\r\n.\r\n");
    let standard = |m: &str| {
        transaction(
            &format!("MAIL FROM:<{user}>"),
            &format!("RCPT TO:<{user}>"),
            &msg(m),
        )
    };
    let mut out = Vec::new();
    let mut add = |name: &'static str, source: &'static str, build: Build<'_>| {
        let m = marker(name);
        let (steps, delivered) = build(&m);
        out.push(Quirk {
            name,
            source,
            steps,
            delivered,
        });
    };
    add(
        "classic AUTH LOGIN prompts",
        "JustinIven/smtp-oauth-relay#57 (a Xerox quits on any prompt but 334 VXNlcm5hbWU6); draft-murchison-sasl-login-00",
        &|m| {
            let mut s = vec![
                ("EHLO xerox.local\r\n".into(), "250"),
                ("AUTH LOGIN\r\n".into(), "334 VXNlcm5hbWU6\r\n"),
                (format!("{}\r\n", b64(LOGIN)), "334 UGFzc3dvcmQ6\r\n"),
                (format!("{}\r\n", b64(LOCAL_PASSWORD)), "235 2.7.0"),
            ];
            s.extend(standard(m));
            (s, Some(vec![m.to_owned()]))
        },
    );
    add(
        "AUTH LOGIN with the username inline",
        "mjl-/mox#387 (Konica Minolta copiers and Veeam send AUTH LOGIN <base64 user>)",
        &|m| {
            let mut s = vec![
                ("EHLO km.local\r\n".into(), "250"),
                (
                    format!("AUTH LOGIN {}\r\n", b64(LOGIN)),
                    "334 UGFzc3dvcmQ6\r\n",
                ),
                (format!("{}\r\n", b64(LOCAL_PASSWORD)), "235 2.7.0"),
            ];
            s.extend(standard(m));
            (s, Some(vec![m.to_owned()]))
        },
    );
    add(
        "AUTH after HELO",
        "simonrob/email-oauth2-proxy#232 (clients that say HELO, then AUTH)",
        &|m| {
            let mut s = logged_in("HELO scanner");
            s.extend(standard(m));
            (s, Some(vec![m.to_owned()]))
        },
    );
    add(
        "a bare HELO",
        "gregington/SMTPClient#3 (an embedded SMTP library sends HELO without a name)",
        &|m| {
            let mut s = logged_in("HELO");
            s.extend(standard(m));
            (s, Some(vec![m.to_owned()]))
        },
    );
    add(
        "a bare EHLO",
        "RFC 5321 4.1.1.1 wants a domain; taken for the same reason as the bare HELO (gregington/SMTPClient#3)",
        &|m| {
            let mut s = logged_in("EHLO");
            s.extend(standard(m));
            (s, Some(vec![m.to_owned()]))
        },
    );
    add(
        "an IP address without brackets as the EHLO name",
        "zou-yu/worker-mailer#55 (EHLO 127.0.0.1); qBittorrent/qBittorrent#1845 (ehlo FE80::...)",
        &|m| {
            let mut s = logged_in("EHLO 192.168.10.20");
            s.extend(standard(m));
            (s, Some(vec![m.to_owned()]))
        },
    );
    add(
        "a space after the colon",
        "KumoCorp/kumomta#76 (a client sends RCPT TO: <...>); RFC 5321 3.3 calls it a common error",
        &|m| {
            let mut s = logged_in("EHLO device");
            s.extend(transaction(
                &format!("MAIL FROM: <{user}>"),
                &format!("RCPT TO: <{user}>"),
                &msg(m),
            ));
            (s, Some(vec![m.to_owned()]))
        },
    );
    add(
        "addresses without angle brackets",
        "blueimp/aws-smtp-relay#7 (MAIL FROM: craig@example.com, as telnet guides teach); Postfix strict_rfc821_envelopes = no",
        &|m| {
            let mut s = logged_in("EHLO device");
            s.extend(transaction(
                &format!("MAIL FROM:{user}"),
                &format!("RCPT TO:{user}"),
                &msg(m),
            ));
            (s, Some(vec![m.to_owned()]))
        },
    );
    add(
        "lower-case verbs",
        "qBittorrent/qBittorrent#1845 (ehlo ...); RFC 5321 2.4: verbs are case-insensitive",
        &|m| {
            let s = vec![
                ("ehlo device\r\n".into(), "250"),
                (format!("auth plain {}\r\n", plain()), "235 2.7.0"),
                (format!("mail from:<{user}>\r\n"), "250 2.1.0"),
                (format!("rcpt to:<{user}>\r\n"), "250 2.1.5"),
                ("data\r\n".into(), "354 "),
                (msg(m), "250 2.0.0 Ok: queued as"),
                ("quit\r\n".into(), "221 "),
            ];
            (s, Some(vec![m.to_owned()]))
        },
    );
    add(
        "MAIL with AUTH=<> and a trailing space",
        "RFC 4954 5 (the AUTH parameter); firmware that pads its commands",
        &|m| {
            let mut s = logged_in("EHLO device");
            s.extend(transaction(
                &format!("MAIL FROM:<{user}> AUTH=<> "),
                &format!("RCPT TO:<{user}> "),
                &msg(m),
            ));
            (s, Some(vec![m.to_owned()]))
        },
    );
    add(
        "8-bit text without BODY=8BITMIME",
        "RFC 6152 3 (the client should declare it; servers of note take it undeclared)",
        &|m| {
            let body = format!(
                "From: {user}\r\nSubject: {m}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGr\u{fc}\u{df}e aus der K\u{fc}che \u{2013} 3. Stock\r\n.\r\n"
            );
            let mut s = logged_in("EHLO device");
            s.extend(transaction(
                &format!("MAIL FROM:<{user}>"),
                &format!("RCPT TO:<{user}>"),
                &body,
            ));
            (
                s,
                Some(vec![
                    m.to_owned(),
                    "Gr\u{fc}\u{df}e aus der K\u{fc}che \u{2013} 3. Stock".into(),
                ]),
            )
        },
    );
    add(
        "a line of 4,000 octets",
        "diladele/websafety#2319 (an appliance's report refused: line too long); RFC 5322 2.1.1: receivers would do well to take long lines",
        &|m| {
            let long = "0123456789".repeat(400);
            let body = format!("From: {user}\r\nSubject: {m}\r\n\r\n{long}\r\n.\r\n");
            let mut s = logged_in("EHLO device");
            s.extend(transaction(&format!("MAIL FROM:<{user}>"), &format!("RCPT TO:<{user}>"), &body));
            (s, Some(vec![m.to_owned(), long[..900].to_owned()]))
        },
    );
    add(
        "bare LF line ends",
        "gen-smtp/gen_smtp#253, bluetiger9/SmtpClient-for-Qt#185 (clients that end lines with LF); Postfix smtpd_forbid_bare_newline = normalize",
        &|m| {
            let body = format!("From: {user}\nSubject: {m}\n\nfirst line\nsecond line\r\n.\r\n");
            let mut s = logged_in("EHLO device");
            s.extend(transaction(&format!("MAIL FROM:<{user}>"), &format!("RCPT TO:<{user}>"), &body));
            (s, Some(vec![m.to_owned(), "first line\nsecond line\n".into()]))
        },
    );
    add(
        "<LF>.<LF> as the end (refused: SMTP smuggling)",
        "RFC 5321 4.1.1.4 (MUST NOT be taken as the end); hannob/smtpsmug",
        &|m| {
            let mut s = logged_in("EHLO device");
            s.extend([
                (format!("MAIL FROM:<{user}>\r\n"), "250 2.1.0"),
                (format!("RCPT TO:<{user}>\r\n"), "250 2.1.5"),
                ("DATA\r\n".into(), "354 "),
                (
                    format!("From: {user}\r\nSubject: {m}\r\n\r\nbody\n.\nMAIL FROM:<ceo@example.com>\r\n"),
                    "521 5.5.2 Error: <LF>.<LF> does not end a message",
                ),
                (String::new(), "CLOSED"),
            ]);
            (s, None)
        },
    );
    add(
        "QUIT without waiting for the replies",
        "RFC 5321 4.1.1.10 (the client SHOULD wait); chatmail/async-smtp#12 (a client library that closes at once)",
        &|m| {
            let mut s = logged_in("EHLO device");
            // MAIL, RCPT and DATA in one write (RFC 2920), then the message and QUIT in one,
            // and the device is gone before the 221.
            s.extend([
                (format!("MAIL FROM:<{user}>\r\nRCPT TO:<{user}>\r\nDATA\r\n"), "250 2.1.0"),
                (String::new(), "250 2.1.5"),
                (String::new(), "354 "),
                (format!("{}QUIT\r\n", msg(m)), "250 2.0.0 Ok: queued as"),
            ]);
            (s, Some(vec![m.to_owned()]))
        },
    );
    add(
        "commands before the greeting",
        "postfix.org/POSTSCREEN_README.html (the pre-greet test: clients that talk before the 220)",
        &|m| {
            let mut s = vec![(
                format!("EHLO early\r\nAUTH PLAIN {}\r\n", plain()),
                "PREGREET",
            )];
            s.extend(standard(m));
            (s, Some(vec![m.to_owned()]))
        },
    );
    add(
        "no From:, Date: or Message-ID:",
        "RFC 6409 8.1, 8.3 (a submission server may add Date and Message-ID); RFC 5322 3.6 (From and Date are required)",
        &|m| {
            let body = format!("Subject: {m}\r\n\r\nscan attached\r\n.\r\n");
            let mut s = logged_in("EHLO device");
            s.extend(transaction(&format!("MAIL FROM:<{user}>"), &format!("RCPT TO:<{user}>"), &body));
            (s, Some(vec![m.to_owned(), format!("\nFrom: <{user}>\n"), "\nDate: ".into(), "\nMessage-ID: <".into()]))
        },
    );
    add(
        "AUTH PLAIN with the user as authzid",
        "RFC 4616 2 (authzid NUL authcid NUL password; clients repeat the user)",
        &|m| {
            let mut s = vec![
                ("EHLO device\r\n".into(), "250"),
                (
                    format!(
                        "AUTH PLAIN {}\r\n",
                        b64(&format!("{LOGIN}\0{LOGIN}\0{LOCAL_PASSWORD}"))
                    ),
                    "235 2.7.0",
                ),
            ];
            s.extend(standard(m));
            (s, Some(vec![m.to_owned()]))
        },
    );
    out
}

/// One SMTP reply, all its lines.
fn reply(r: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return all;
        }
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return all;
        }
    }
}

fn play(port: u16, q: &Quirk) {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut greeted = false;
    for (send, expect) in &q.steps {
        if *expect == "CLOSED" {
            let mut rest = Vec::new();
            let _ = r.read_to_end(&mut rest);
            assert!(
                rest.is_empty(),
                "{}: more after the refusal: {rest:?}",
                q.name
            );
            return;
        }
        if *expect == "PREGREET" {
            w.write_all(send.as_bytes()).unwrap();
            for want in ["220 ", "250", "235 2.7.0"] {
                let got = reply(&mut r);
                assert!(
                    got.starts_with(want),
                    "{}: wanted {want}, got {got:?}",
                    q.name
                );
            }
            greeted = true;
            continue;
        }
        if !greeted {
            let got = reply(&mut r);
            assert!(got.starts_with("220 "), "{}: {got:?}", q.name);
            greeted = true;
        }
        w.write_all(send.as_bytes()).unwrap();
        if expect.is_empty() {
            continue;
        }
        let got = reply(&mut r);
        assert!(
            got.starts_with(expect),
            "{}: after {send:?} wanted {expect:?}, got {got:?}",
            q.name
        );
    }
    // A device that does not wait: gone at once.
    drop(w);
}

#[test]
fn the_quirks_catalogue_byte_for_byte_with_delivery_checked() {
    stack();
    let user = unique_user("quirks");
    let rt = new_refresh_token(&user);
    let relay = RelayProcess::start_spool(
        AccountSpec {
            mailbox: &user,
            refresh_token: Some(&rt),
            token_url: format!("http://{IDP}/token"),
        },
        SUBMISSION,
        "starttls",
        "",
    );
    let pid = std::process::id();
    let marker = |name: &str| {
        let slug: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(24)
            .collect();
        format!("quirk-{slug}-{pid}-{}", free_port())
    };
    let quirks = catalogue(&user, &marker);
    for q in &quirks {
        play(relay.plain, q);
    }
    for q in &quirks {
        let m = q
            .steps
            .iter()
            .find_map(|(s, _)| s.split("Subject: ").nth(1))
            .map(|rest| rest.split(['\r', '\n']).next().unwrap().to_owned());
        let m = m.expect("every quirk's message has a Subject");
        match &q.delivered {
            Some(texts) => {
                let got = delivered(&user, &m, Duration::from_secs(30))
                    .unwrap_or_else(|| panic!("{}: not delivered", q.name));
                let got = String::from_utf8_lossy(&got).replace("\r\n", "\n");
                for t in texts {
                    assert!(got.contains(t.as_str()), "{}: {t:?} not in\n{got}", q.name);
                }
            }
            None => assert!(
                delivered(&user, &m, Duration::from_secs(3)).is_none(),
                "{}: delivered",
                q.name
            ),
        }
        println!("quirk: {:50} {}", q.name, q.source);
    }
    println!(
        "{} quirks, each delivered or refused as the catalogue says",
        quirks.len()
    );
    relay.assert_no_secrets();
}
