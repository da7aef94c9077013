//! The POP3 pre-login dialogue without sockets: every local reply, and every outcome's words
//! (README: What a device may be told).

use super::*;
use crate::session::driver::testing::{reply, said, step, LOOPBACK, REMOTE, TLS};

#[test]
fn greeting_and_capa_are_local() {
    let mut p = Pop3::default();
    assert_eq!(p.greeting(&LOOPBACK, &[]), b"+OK ready\r\n");
    let caps = vec![
        b"TOP".to_vec(),
        b"SASL XOAUTH2".to_vec(),
        b"STLS".to_vec(),
        b"UIDL".to_vec(),
    ];
    let Action::Reply(r) = p.command(b"CAPA", &LOOPBACK, &caps) else {
        panic!()
    };
    assert_eq!(
        String::from_utf8(r).unwrap(),
        "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nUSER\r\nSASL PLAIN LOGIN\r\nSTLS\r\n.\r\n"
    );
}

#[test]
fn commands_before_login_get_exact_replies() {
    let mut p = Pop3::default();
    let cases = [
        ("STAT\r\n", "-ERR [AUTH] Authenticate first\r\n"),
        ("PASS x\r\n", "-ERR No USER given\r\n"),
        ("AUTH\r\n", "+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n"),
        (
            "AUTH CRAM-MD5\r\n",
            "-ERR Unsupported authentication mechanism\r\n",
        ),
        (
            "APOP u d41d8cd98f00b204e9800998ecf8427e\r\n",
            "-ERR APOP is not supported; log in with USER/PASS or AUTH PLAIN\r\n",
        ),
        ("XYZZY\r\n", "-ERR Unknown command\r\n"),
        ("USER\r\n", "-ERR Invalid command\r\n"),
        ("USER scanner\r\n", "+OK\r\n"),
        ("STAT\r\n", "-ERR Only PASS or QUIT may follow USER\r\n"),
    ];
    for (input, expected) in cases {
        assert_eq!(reply(&mut p, &LOOPBACK, input), expected, "{input:?}");
    }
    assert_eq!(
        reply(&mut p, &REMOTE, "USER x\r\n"),
        "-ERR [AUTH] TLS is required before authentication\r\n"
    );
    assert_eq!(
        reply(&mut p, &REMOTE, "AUTH PLAIN\r\n"),
        "-ERR [AUTH] TLS is required before authentication\r\n"
    );
    assert_eq!(
        reply(&mut p, &TLS, "STLS\r\n"),
        "-ERR Command not permitted when TLS active\r\n"
    );
    let no_tls = View {
        offer_starttls: false,
        ..LOOPBACK
    };
    assert_eq!(
        reply(&mut p, &no_tls, "STLS\r\n"),
        "-ERR STLS not available\r\n"
    );
}

#[test]
fn user_pass_auth_stls_quit_and_http_ask_the_driver() {
    let mut p = Pop3::default();
    reply(&mut p, &LOOPBACK, "USER scanner\r\n");
    let Action::Login(c) = step(&mut p, &LOOPBACK, b"PASS two words\r\n").1 else {
        panic!()
    };
    assert_eq!(
        (c.username.as_str(), c.password.expose()),
        ("scanner", "two words")
    );
    let (_, a) = step(&mut p, &LOOPBACK, b"AUTH PLAIN AGEAYg==\r\n");
    assert!(matches!(
        a,
        Action::Authenticate {
            mechanism: Mechanism::Plain,
            initial_response: Some(_)
        }
    ));
    let (_, a) = step(&mut p, &LOOPBACK, b"STLS\r\n");
    assert!(matches!(a, Action::StartTls(ref r) if r == b"+OK Begin TLS negotiation\r\n"));
    let (_, a) = step(&mut p, &LOOPBACK, b"QUIT\r\n");
    assert!(matches!(a, Action::Close(ref r, Outcome::ClientLeft) if r == b"+OK Bye\r\n"));
    let (_, a) = step(&mut p, &LOOPBACK, b"GET / HTTP/1.1\r\n");
    assert!(matches!(a, Action::Close(ref r, Outcome::Refused) if r.is_empty()));
    let long = format!("NOOP {}\r\n", "x".repeat(2000));
    let (_, a) = step(&mut p, &LOOPBACK, long.as_bytes());
    assert!(
        matches!(a, Action::Close(ref r, Outcome::Refused) if r == b"-ERR Line too long, closing connection\r\n")
    );
}

#[test]
fn every_outcome_has_its_documented_words() {
    let p = Pop3::default();
    let cases = [
        (Say::BadCredentials, "-ERR [AUTH] Authentication failed\r\n"),
        (Say::Throttled, "-ERR [SYS/TEMP] Too many failed logins from this address or for this user, try again later\r\n"),
        (Say::Cancelled, "-ERR Authentication cancelled\r\n"),
        (Say::BadBase64, "-ERR Cannot decode base64\r\n"),
        (Say::Malformed, "-ERR Malformed authentication response\r\n"),
        (Say::Timeout, "-ERR [SYS/TEMP] Timeout before authentication, closing connection\r\n"),
        (Say::TooMuch, "-ERR [SYS/PERM] Too much data before authentication, closing connection\r\n"),
        (Say::ShuttingDown, "-ERR [SYS/TEMP] Server shutting down, closing connection\r\n"),
        (Say::TooManyFailures, "-ERR [SYS/PERM] Too many failed logins, closing connection\r\n"),
        (Say::LineTooLong, "-ERR Line too long, closing connection\r\n"),
        (Say::Token { class: ErrorClass::Temporary, text: "Temporary authentication failure (x)" }, "-ERR [SYS/TEMP] Temporary authentication failure (x)\r\n"),
        (Say::Token { class: ErrorClass::Reauthorize, text: "Sign-in for m must be renewed" }, "-ERR [AUTH] Sign-in for m must be renewed\r\n"),
        (Say::UpstreamUnavailable { reason: "cannot connect" }, "-ERR [SYS/TEMP] Upstream unreachable (cannot connect), try again later\r\n"),
    ];
    for (what, expected) in cases {
        assert_eq!(said(&p, what), expected, "{what:?}");
    }
}

fn line(ok: bool, text: &str) -> Line {
    Line {
        ok,
        continuation: false,
        text: text.as_bytes().to_vec(),
        raw: format!("{} {text}\r\n", if ok { "+OK" } else { "-ERR" }).into_bytes(),
    }
}

#[test]
fn upstream_refusals_and_acceptance() {
    let p = Pop3::default();
    for temporary in ["[SYS/TEMP] down", "[IN-USE] locked", "[LOGIN-DELAY] wait"] {
        assert!(p.refused(&line(false, temporary)).temporary, "{temporary}");
    }
    let r = p.refused(&line(false, "[AUTH] Authentication failed."));
    assert!(!r.temporary);
    assert_eq!(
        r.reply,
        b"-ERR [AUTH] Upstream server refused the login ([AUTH] Authentication failed.)\r\n"
    );
    assert_eq!(p.accepted(&line(true, "Logged in.")), b"+OK Logged in.\r\n");
}
