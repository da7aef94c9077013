//! The SMTP pre-login dialogue without sockets: every local reply, and every outcome's words
//! (README: What a device may be told).

use super::*;
use crate::session::driver::testing::{reply, said, step, LOOPBACK, REMOTE, TLS};

fn smtp() -> Smtp {
    Smtp::new("relay.test")
}

#[test]
fn greeting_and_ehlo_are_local_with_cached_keywords() {
    let mut s = smtp();
    let caps = vec![
        b"SIZE 36700160".to_vec(),
        b"AUTH XOAUTH2".to_vec(),
        b"STARTTLS".to_vec(),
        b"8BITMIME".to_vec(),
    ];
    assert_eq!(
        s.greeting(&LOOPBACK, &caps),
        b"220 relay.test ESMTP ready\r\n"
    );
    let Action::Reply(ehlo) = s.command(b"EHLO printer", &LOOPBACK, &caps) else {
        panic!("EHLO is answered locally");
    };
    assert_eq!(
        String::from_utf8(ehlo).unwrap(),
        "250-relay.test\r\n250-SIZE 36700160\r\n250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 STARTTLS\r\n"
    );
    // Without TLS from another host: no AUTH offered; after TLS: no STARTTLS.
    let Action::Reply(remote) = s.command(b"EHLO printer", &REMOTE, &caps) else {
        panic!()
    };
    assert!(!String::from_utf8(remote).unwrap().contains("AUTH"));
    let Action::Reply(tls) = s.command(b"EHLO printer", &TLS, &caps) else {
        panic!()
    };
    assert!(!String::from_utf8(tls).unwrap().contains("STARTTLS"));
    assert_eq!(
        reply(&mut s, &LOOPBACK, "HELO printer\r\n"),
        "250 relay.test\r\n"
    );
}

#[test]
fn defaults_before_the_upstream_was_ever_seen_are_conservative() {
    let mut s = smtp();
    assert_eq!(
        reply(&mut s, &LOOPBACK, "EHLO x\r\n"),
        "250-relay.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n"
    );
}

#[test]
fn commands_before_login_get_exact_replies() {
    let mut s = smtp();
    let cases = [
        (
            "AUTH PLAIN\r\n",
            "503 5.5.1 Error: send HELO/EHLO first\r\n",
        ),
        (
            "MAIL FROM:<a@b>\r\n",
            "530 5.7.0 Authentication required\r\n",
        ),
        ("NOOP\r\n", "250 2.0.0 OK\r\n"),
        ("RSET\r\n", "250 2.0.0 OK\r\n"),
        (
            "STARTTLS now\r\n",
            "501 5.5.4 Syntax: STARTTLS takes no parameters\r\n",
        ),
        ("FOO\r\n", "500 5.5.2 Error: command not recognized\r\n"),
        (
            "NOOP\0\r\n",
            "500 5.5.2 Error: command contains invalid characters\r\n",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(reply(&mut s, &LOOPBACK, input), expected, "{input:?}");
    }
    // A bare HELO (old firmware) is taken.
    assert_eq!(reply(&mut s, &LOOPBACK, "HELO\r\n"), "250 relay.test\r\n");
    reply(&mut s, &LOOPBACK, "EHLO x\r\n");
    let cases = [
        ("AUTH\r\n", "501 5.5.4 Syntax: AUTH mechanism\r\n"),
        (
            "AUTH CRAM-MD5\r\n",
            "504 5.5.4 Unrecognized authentication type\r\n",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(reply(&mut s, &LOOPBACK, input), expected, "{input:?}");
    }
    assert_eq!(
        reply(&mut s, &REMOTE, "AUTH PLAIN\r\n"),
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    );
    assert_eq!(
        reply(&mut s, &TLS, "STARTTLS\r\n"),
        "503 5.5.1 Error: TLS already active\r\n"
    );
    let no_tls = View {
        offer_starttls: false,
        ..LOOPBACK
    };
    assert_eq!(
        reply(&mut s, &no_tls, "STARTTLS\r\n"),
        "454 4.7.0 TLS not available due to temporary reason\r\n"
    );
}

#[test]
fn auth_starttls_quit_and_http_ask_the_driver() {
    let mut s = smtp();
    reply(&mut s, &LOOPBACK, "EHLO x\r\n");
    let (_, a) = step(&mut s, &LOOPBACK, b"AUTH PLAIN AGEAYg==\r\n");
    assert!(matches!(
        a,
        Action::Authenticate { mechanism: Mechanism::Plain, initial_response: Some(ref r) } if r.expose() == b"AGEAYg=="
    ));
    let (_, a) = step(&mut s, &LOOPBACK, b"AUTH login\r\n");
    assert!(matches!(
        a,
        Action::Authenticate {
            mechanism: Mechanism::Login,
            initial_response: None
        }
    ));
    let (_, a) = step(&mut s, &LOOPBACK, b"STARTTLS\r\n");
    assert!(matches!(a, Action::StartTls(ref r) if r == b"220 2.0.0 Ready to start TLS\r\n"));
    // After TLS the EHLO is forgotten (RFC 3207 §4.2).
    s.tls_started();
    assert_eq!(
        reply(&mut s, &TLS, "AUTH PLAIN\r\n"),
        "503 5.5.1 Error: send HELO/EHLO first\r\n"
    );
    let (_, a) = step(&mut s, &LOOPBACK, b"QUIT\r\n");
    assert!(matches!(a, Action::Close(ref r, Outcome::ClientLeft) if r == b"221 2.0.0 Bye\r\n"));
    let (_, a) = step(&mut s, &LOOPBACK, b"GET / HTTP/1.1\r\n");
    assert!(matches!(a, Action::Close(ref r, Outcome::Refused) if r.is_empty()));
}

#[test]
fn long_lines_are_refused_but_auth_lines_may_be_long() {
    let mut s = smtp();
    let long = format!("NOOP {}\r\n", "x".repeat(3000));
    let (_, a) = step(&mut s, &LOOPBACK, long.as_bytes());
    assert!(
        matches!(a, Action::Close(ref r, Outcome::Refused) if r == b"500 5.5.2 Line too long, closing connection\r\n")
    );
    reply(&mut s, &LOOPBACK, "EHLO x\r\n");
    let auth = format!("AUTH PLAIN {}\r\n", "A".repeat(8000));
    assert!(matches!(
        step(&mut s, &LOOPBACK, auth.as_bytes()).1,
        Action::Authenticate { .. }
    ));
}

#[test]
fn every_outcome_has_its_documented_words() {
    let s = smtp();
    let cases = [
        (Say::BadCredentials, "535 5.7.8 Authentication credentials invalid\r\n"),
        (Say::Throttled, "454 4.7.0 Too many failed logins from this address or for this user, try again later\r\n"),
        (Say::Cancelled, "501 5.7.0 Authentication cancelled\r\n"),
        (Say::BadBase64, "501 5.5.2 Cannot decode base64\r\n"),
        (Say::Malformed, "501 5.5.2 Malformed authentication response\r\n"),
        (Say::Timeout, "421 4.4.2 Timeout before authentication, closing connection\r\n"),
        (Say::TooMuch, "421 4.7.0 Too much data before authentication, closing connection\r\n"),
        (Say::ShuttingDown, "421 4.3.2 Service shutting down, closing connection\r\n"),
        (Say::TooManyFailures, "421 4.7.0 Too many failed logins, closing connection\r\n"),
        (Say::LineTooLong, "500 5.5.6 Authentication Exchange line is too long\r\n"),
        (Say::Token { class: ErrorClass::Temporary, text: "Temporary authentication failure (x)" }, "454 4.7.0 Temporary authentication failure (x)\r\n"),
        (Say::Token { class: ErrorClass::Reauthorize, text: "Sign-in for m must be renewed" }, "535 5.7.8 Sign-in for m must be renewed\r\n"),
        (Say::Token { class: ErrorClass::Configuration, text: "The relay cannot get a token" }, "535 5.7.8 The relay cannot get a token\r\n"),
        (Say::UpstreamUnavailable { reason: "cannot connect" }, "454 4.4.1 Upstream unreachable (cannot connect), try again later\r\n"),
    ];
    for (what, expected) in cases {
        assert_eq!(said(&s, what), expected, "{what:?}");
    }
}

fn upstream_reply(code: u16, text: &str) -> OwnedReply {
    OwnedReply {
        code,
        raw: format!("{code} {text}\r\n").into_bytes(),
        lines: vec![text.as_bytes().to_vec()],
    }
}

#[test]
fn upstream_refusals_keep_their_code_and_stay_temporary_when_they_are() {
    let s = smtp();
    let r = s.refused(&upstream_reply(451, "4.7.0 Try later"));
    assert!(r.temporary);
    assert_eq!(
        r.reply,
        b"454 4.7.0 Temporary authentication failure (upstream said: 451 4.7.0 Try later)\r\n"
    );
    let r = s.refused(&upstream_reply(
        535,
        "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
    ));
    assert!(!r.temporary);
    let text = String::from_utf8(r.reply).unwrap();
    assert!(
        text.starts_with(
            "535 5.7.8 Upstream server refused the login (535 5.7.139 Authentication unsuccessful"
        ),
        "{text}"
    );
    assert_eq!(
        s.accepted(&upstream_reply(235, "2.7.0 OK")),
        b"235 2.7.0 OK\r\n"
    );
}
