//! The IMAP pre-login dialogue without sockets: every local reply, literals, and every outcome's
//! words (README: What a device may be told).

use super::*;
use crate::session::driver::testing::{reply, said, step, LOOPBACK, REMOTE, TLS};

#[test]
fn greeting_and_capability_come_from_the_cache_rewritten() {
    let mut i = Imap::default();
    let caps: Vec<Vec<u8>> = [
        "IMAP4rev1",
        "SASL-IR",
        "LOGINDISABLED",
        "AUTH=XOAUTH2",
        "IDLE",
    ]
    .iter()
    .map(|c| c.as_bytes().to_vec())
    .collect();
    let greeting = String::from_utf8(i.greeting(&LOOPBACK, &caps)).unwrap();
    assert_eq!(
        greeting,
        "* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL- STARTTLS] ready\r\n"
    );
    let Action::Reply(r) = i.command(b"a1 CAPABILITY\r\n", &REMOTE, &caps) else {
        panic!()
    };
    let r = String::from_utf8(r).unwrap();
    assert!(r.ends_with("\r\na1 OK CAPABILITY completed\r\n"), "{r}");
    assert!(
        r.contains("LOGINDISABLED") && !r.contains("AUTH=PLAIN"),
        "{r}"
    );
}

#[test]
fn commands_before_login_get_exact_replies() {
    let mut i = Imap::default();
    let cases = [
        ("a1 NOOP\r\n", "a1 OK NOOP completed\r\n"),
        (
            "a2 ID (\"name\" \"x\")\r\n",
            "* ID NIL\r\na2 OK ID completed\r\n",
        ),
        ("a3 SELECT INBOX\r\n", "a3 BAD Log in first\r\n"),
        ("*\r\n", "* BAD Invalid tag\r\n"),
        ("a4 LOGIN\r\n", "a4 BAD Syntax error in command\r\n"),
        (
            "a5 AUTHENTICATE CRAM-MD5\r\n",
            "a5 NO Unsupported authentication mechanism\r\n",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(reply(&mut i, &LOOPBACK, input), expected, "{input:?}");
    }
    assert_eq!(
        reply(&mut i, &REMOTE, "b1 LOGIN u p\r\n"),
        "b1 NO [PRIVACYREQUIRED] LOGIN is disabled until TLS is active\r\n"
    );
    assert_eq!(
        reply(&mut i, &REMOTE, "b2 AUTHENTICATE PLAIN\r\n"),
        "b2 NO [PRIVACYREQUIRED] Authentication is disabled until TLS is active\r\n"
    );
    assert_eq!(
        reply(&mut i, &TLS, "b3 STARTTLS\r\n"),
        "b3 BAD TLS is already active\r\n"
    );
    let no_tls = View {
        offer_starttls: false,
        ..LOOPBACK
    };
    assert_eq!(
        reply(&mut i, &no_tls, "b4 STARTTLS\r\n"),
        "b4 BAD STARTTLS not supported\r\n"
    );
}

#[test]
fn login_with_a_literal_logout_starttls_and_http_ask_the_driver() {
    let mut i = Imap::default();
    let (sent, a) = step(&mut i, &LOOPBACK, b"a1 LOGIN {4}\r\nuser {6}\r\nsecret\r\n");
    assert_eq!(
        sent,
        b"+ Ready for literal data\r\n+ Ready for literal data\r\n"
    );
    let Action::Login(c) = a else { panic!("{a:?}") };
    assert_eq!(
        (c.username.as_str(), c.password.expose()),
        ("user", "secret")
    );
    let (sent, a) = step(&mut i, &LOOPBACK, b"a2 LOGIN {4+}\r\nuser pw\r\n");
    assert!(
        sent.is_empty(),
        "non-synchronizing literals get no go-ahead"
    );
    assert!(matches!(a, Action::Login(_)));
    let (_, a) = step(&mut i, &LOOPBACK, b"a3 LOGIN \"\" \"\"\r\n");
    assert!(matches!(a, Action::Unusable));
    let (_, a) = step(&mut i, &LOOPBACK, b"a4 AUTHENTICATE PLAIN AGEAYg==\r\n");
    assert!(matches!(
        a,
        Action::Authenticate {
            mechanism: Mechanism::Plain,
            initial_response: Some(_)
        }
    ));
    // The tag of the command being answered is the one outcomes use.
    assert_eq!(
        said(&i, Say::BadCredentials),
        "a4 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
    );
    let (_, a) = step(&mut i, &LOOPBACK, b"a5 STARTTLS\r\n");
    assert!(matches!(a, Action::StartTls(ref r) if r == b"a5 OK Begin TLS negotiation now\r\n"));
    let (_, a) = step(&mut i, &LOOPBACK, b"a6 LOGOUT\r\n");
    assert!(
        matches!(a, Action::Close(ref r, Outcome::ClientLeft) if r == b"* BYE Logging out\r\na6 OK LOGOUT completed\r\n")
    );
    let (_, a) = step(&mut i, &LOOPBACK, b"GET / HTTP/1.1\r\n");
    assert!(matches!(a, Action::Close(ref r, Outcome::Refused) if r.is_empty()));
}

#[test]
fn a_literal_too_big_before_login_is_refused_with_the_tag() {
    let mut i = Imap::default();
    let (_, a) = step(&mut i, &LOOPBACK, b"a1 LOGIN {100000}\r\n");
    assert!(
        matches!(a, Action::Close(ref r, Outcome::Refused) if r == b"a1 BAD [TOOBIG] Literal too big\r\n")
    );
}

#[test]
fn every_outcome_has_its_documented_words() {
    let mut i = Imap::default();
    reply(&mut i, &LOOPBACK, "t1 NOOP\r\n");
    let cases = [
        (Say::BadCredentials, "t1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"),
        (Say::Throttled, "t1 NO [UNAVAILABLE] Too many failed logins from this address or for this user, try again later\r\n"),
        (Say::Cancelled, "t1 BAD AUTHENTICATE cancelled\r\n"),
        (Say::BadBase64, "t1 BAD Invalid base64\r\n"),
        (Say::Malformed, "t1 BAD Malformed authentication response\r\n"),
        (Say::Timeout, "* BYE [UNAVAILABLE] Timeout before authentication\r\n"),
        (Say::TooMuch, "* BYE [TOOBIG] Too much data before authentication\r\n"),
        (Say::ShuttingDown, "* BYE [UNAVAILABLE] Server shutting down\r\n"),
        (Say::TooManyFailures, "* BYE Too many failed logins\r\n"),
        (Say::LineTooLong, "* BYE [TOOBIG] Line too long\r\n"),
        (Say::Token { class: ErrorClass::Temporary, text: "Temporary authentication failure (x)" }, "t1 NO [UNAVAILABLE] Temporary authentication failure (x)\r\n"),
        (Say::Token { class: ErrorClass::Reauthorize, text: "Sign-in for m must be renewed" }, "* OK [ALERT] Sign-in for m must be renewed\r\nt1 NO [AUTHENTICATIONFAILED] Sign-in for m must be renewed\r\n"),
        (Say::Token { class: ErrorClass::Configuration, text: "The relay cannot get a token" }, "t1 NO [CONTACTADMIN] The relay cannot get a token\r\n"),
        (Say::UpstreamUnavailable { reason: "cannot connect" }, "t1 NO [UNAVAILABLE] Upstream unreachable (cannot connect), try again later\r\n"),
    ];
    for (what, expected) in cases {
        assert_eq!(said(&i, what), expected, "{what:?}");
    }
}

fn login_reply(raw: &str) -> LoginReply {
    let tagged_line = raw.lines().last().unwrap();
    LoginReply {
        raw: raw.as_bytes().to_vec(),
        tagged: upstream::Reply {
            raw: format!("{tagged_line}\r\n").into_bytes(),
        },
    }
}

#[test]
fn upstream_refusals_and_acceptance() {
    let mut i = Imap::default();
    reply(&mut i, &LOOPBACK, "a1 NOOP\r\n");
    let r = i.refused(&login_reply("a1 NO [UNAVAILABLE] busy\r\n"));
    assert!(r.temporary);
    assert_eq!(r.reply, b"a1 NO [UNAVAILABLE] Temporary authentication failure (upstream said: [UNAVAILABLE] busy)\r\n");
    let r = i.refused(&login_reply(
        "a1 NO [AUTHENTICATIONFAILED] AUTHENTICATE failed.\r\n",
    ));
    assert!(!r.temporary);
    assert_eq!(r.reply, b"a1 NO [AUTHENTICATIONFAILED] Upstream server refused the login ([AUTHENTICATIONFAILED] AUTHENTICATE failed.)\r\n");
    let ok = i.accepted(&login_reply(
        "a1 OK [CAPABILITY IMAP4rev1 IDLE AUTH=XOAUTH2] Logged in\r\n",
    ));
    let ok = String::from_utf8(ok).unwrap();
    assert!(
        ok.starts_with("a1 OK [CAPABILITY IMAP4rev1 IDLE") && !ok.contains("XOAUTH2"),
        "{ok}"
    );
}
