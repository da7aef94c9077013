use super::*;
use proptest::prelude::*;

/// Frames `input` as a client would send it, answering nothing: returns the events in order.
fn frame_all(input: &[u8]) -> Vec<Frame> {
    let mut f = Framer::new();
    let mut events = Vec::new();
    let mut start = 0;
    loop {
        match f.scan(&input[start..], MAX_PRE_AUTH_LITERAL).unwrap() {
            Frame::Incomplete => return events,
            Frame::Complete { len } => {
                events.push(Frame::Complete { len });
                start += len;
            }
            lit => events.push(lit),
        }
    }
}

#[test]
fn the_five_login_forms_of_the_reference() {
    let forms: [(&[u8], &[u8], &[u8]); 5] = [
        (
            b"a1 LOGIN alice@example.com s3cr3t\r\n",
            b"alice@example.com",
            b"s3cr3t",
        ),
        (
            b"a2 LOGIN \"alice@example.com\" \"pa ss\\\\w\\\"d\"\r\n",
            b"alice@example.com",
            b"pa ss\\w\"d",
        ),
        (
            b"a3 LOGIN alice@example.com {10}\r\np\xc3\xa4ssw\xc3\xb6rd\r\n",
            b"alice@example.com",
            b"p\xc3\xa4ssw\xc3\xb6rd",
        ),
        (
            b"a4 LOGIN {17}\r\nalice@example.com {10}\r\np\xc3\xa4ssw\xc3\xb6rd\r\n",
            b"alice@example.com",
            b"p\xc3\xa4ssw\xc3\xb6rd",
        ),
        (
            b"a5 LOGIN {17+}\r\nalice@example.com {10+}\r\np\xc3\xa4ssw\xc3\xb6rd\r\n",
            b"alice@example.com",
            b"p\xc3\xa4ssw\xc3\xb6rd",
        ),
    ];
    for (wire, user, pass) in forms {
        let events = frame_all(wire);
        assert_eq!(
            events.last(),
            Some(&Frame::Complete { len: wire.len() }),
            "{}",
            String::from_utf8_lossy(wire)
        );
        let t = parse_command(wire).unwrap();
        assert_eq!(
            t.command,
            Command::Login {
                user: Cow::Borrowed(user),
                password: crate::secret::Sensitive::new(Cow::Borrowed(pass))
            }
        );
    }
    // Synchronizing literals announce themselves so the relay can send `+`.
    assert_eq!(
        frame_all(b"a4 LOGIN {17}\r\nalice@example.com {10}\r\np\xc3\xa4ssw\xc3\xb6rd\r\n")[..2],
        [
            Frame::Literal {
                len: 17,
                sync: true
            },
            Frame::Literal {
                len: 10,
                sync: true
            }
        ]
    );
    assert_eq!(
        frame_all(b"a5 LOGIN {17+}\r\n")[0],
        Frame::Literal {
            len: 17,
            sync: false
        }
    );
}

#[test]
fn a_marker_inside_quotes_is_text_and_literal_octets_are_not_scanned() {
    let wire = b"a1 LOGIN alice \"pw {5}\"\r\n";
    assert_eq!(frame_all(wire), vec![Frame::Complete { len: wire.len() }]);
    // The literal holds CRLF and "} " sequences; they are data.
    let wire = b"a1 LOGIN alice {9}\r\nx\r\n} {3}\r\r\nb2 NOOP\r\n";
    let events = frame_all(wire);
    assert_eq!(
        events,
        vec![
            Frame::Literal { len: 9, sync: true },
            Frame::Complete {
                len: wire.len() - 9
            },
            Frame::Complete { len: 9 }
        ]
    );
    let t = parse_command(&wire[..wire.len() - 9]).unwrap();
    assert_eq!(
        t.command,
        Command::Login {
            user: Cow::Borrowed(b"alice"),
            password: crate::secret::Sensitive::new(Cow::Borrowed(b"x\r\n} {3}\r"))
        }
    );
}

#[test]
fn limits() {
    let mut f = Framer::new();
    assert_eq!(
        f.scan(b"a LOGIN x {4294967296}\r\n", MAX_PRE_AUTH_LITERAL),
        Err(FrameError::LiteralTooBig { sync: true })
    );
    let mut f = Framer::new();
    assert_eq!(
        f.scan(b"a LOGIN x {5000+}\r\n", u64::MAX),
        Err(FrameError::LiteralTooBig { sync: false })
    );
    let mut f = Framer::new();
    assert_eq!(
        f.scan(&[b'a'; MAX_LINE + 1], MAX_PRE_AUTH_LITERAL),
        Err(FrameError::LineTooLong)
    );
    let mut f = Framer::new();
    let mut quoted = b"a LOGIN x \"".to_vec();
    quoted.extend(std::iter::repeat_n(b'q', MAX_LINE));
    assert_eq!(
        f.scan(&quoted, MAX_PRE_AUTH_LITERAL),
        Err(FrameError::LineTooLong)
    );
    // {-1} and {1a} are not literal markers: the line is complete (and a syntax error later).
    assert_eq!(
        frame_all(b"a LOGIN x {-1}\r\n"),
        vec![Frame::Complete { len: 16 }]
    );
    assert_eq!(
        parse_command(b"a LOGIN x {-1}\r\n"),
        Err(ParseError::Syntax)
    );
}

#[test]
fn commands_and_errors() {
    let t = parse_command(b"A001 AUTHENTICATE PLAIN AGFsaWNl\r\n").unwrap();
    assert_eq!(
        (t.tag, t.command),
        (
            &b"A001"[..],
            Command::Authenticate {
                mechanism: b"PLAIN",
                initial_response: Some(crate::secret::Sensitive::new(b"AGFsaWNl"))
            }
        )
    );
    assert_eq!(
        parse_command(b"x authenticate login\r\n").unwrap().command,
        Command::Authenticate {
            mechanism: b"login",
            initial_response: None
        }
    );
    assert_eq!(
        parse_command(b"x CAPABILITY\r\n").unwrap().command,
        Command::Capability
    );
    assert_eq!(
        parse_command(b"x starttls\r\n").unwrap().command,
        Command::StartTls
    );
    assert_eq!(
        parse_command(b"x LOGOUT\r\n").unwrap().command,
        Command::Logout
    );
    assert_eq!(parse_command(b"x ID NIL\r\n").unwrap().command, Command::Id);
    assert_eq!(
        parse_command(b"x SELECT INBOX\r\n").unwrap().command,
        Command::Other
    );
    assert_eq!(
        parse_command(b"x CAPABILITY now\r\n"),
        Err(ParseError::Syntax)
    );
    assert_eq!(parse_command(b"+x NOOP\r\n"), Err(ParseError::NoTag));
    assert_eq!(parse_command(b"x LOGIN a\r\n"), Err(ParseError::Syntax));
    assert_eq!(parse_command(b"x LOGIN a  b\r\n"), Err(ParseError::Syntax));
    assert_eq!(
        parse_command(b"x LOGIN a \"b\\q\"\r\n"),
        Err(ParseError::Syntax)
    );
    assert_eq!(
        parse_command(b"x LOGIN a \"unterminated\r\n"),
        Err(ParseError::Syntax)
    );
    assert_eq!(tag_of(b"a1 LOGIN"), Some(&b"a1"[..]));
}

#[test]
fn capability_rewrite_for_o365_and_dovecot() {
    let o365 = b"IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+";
    let out = rewrite_capabilities(
        o365,
        CapabilityPolicy {
            offer_auth: true,
            offer_starttls: false,
        },
    );
    assert_eq!(out, b"IMAP4 IMAP4rev1 UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-".to_vec());
    let dovecot = b"IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS LOGINDISABLED AUTH=XOAUTH2 AUTH=OAUTHBEARER";
    let out = rewrite_capabilities(
        dovecot,
        CapabilityPolicy {
            offer_auth: false,
            offer_starttls: true,
        },
    );
    assert_eq!(
        out,
        b"IMAP4rev1 LOGIN-REFERRALS ID ENABLE IDLE LOGINDISABLED LITERAL- STARTTLS".to_vec()
    );
    let greeting = b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] Dovecot ready.";
    let (before, list, after) = capability_code(greeting).unwrap();
    assert_eq!(
        (before, list, after),
        (
            &b"* OK [CAPABILITY "[..],
            &b"IMAP4rev1 AUTH=XOAUTH2"[..],
            &b"] Dovecot ready."[..]
        )
    );
    assert_eq!(
        untagged_capability(b"* CAPABILITY IMAP4rev1 X"),
        Some(&b"IMAP4rev1 X"[..])
    );
}

#[test]
fn a_login_result_keeps_only_what_means_something_after_login() {
    let raw = b"* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR IDLE LITERAL+\r\na1 OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=XOAUTH2 IDLE] Logged in\r\n";
    assert_eq!(
        rewrite_login_result(raw),
        b"* CAPABILITY IMAP4 IMAP4rev1 IDLE LITERAL+\r\na1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n".to_vec()
    );
    assert_eq!(
        rewrite_login_result(b"a1 OK Logged in\r\n"),
        b"a1 OK Logged in\r\n".to_vec()
    );
}

#[test]
fn responses() {
    assert_eq!(
        parse_response(b"* OK ready"),
        Some(Response::Untagged(b"OK ready"))
    );
    assert_eq!(parse_response(b"+ "), Some(Response::Continuation(b"")));
    assert_eq!(parse_response(b"+"), Some(Response::Continuation(b"")));
    assert_eq!(
        parse_response(b"a1 NO [AUTHENTICATIONFAILED] no"),
        Some(Response::Tagged {
            tag: b"a1",
            status: Status::No,
            text: b"[AUTHENTICATIONFAILED] no"
        })
    );
    assert_eq!(
        parse_response(b"a1 OK"),
        Some(Response::Tagged {
            tag: b"a1",
            status: Status::Ok,
            text: b""
        })
    );
    assert_eq!(parse_response(b"a1 MAYBE"), None);
    assert_eq!(quote(b"pa\"s\\s"), Some(b"\"pa\\\"s\\\\s\"".to_vec()));
    assert_eq!(quote(b"a\r\nb"), None);
}

proptest! {
    /// Any split of the same bytes across reads frames the same way.
    #[test]
    fn framing_does_not_depend_on_read_boundaries(cuts in proptest::collection::vec(0usize..80, 0..6)) {
        let wire: &[u8] = b"a4 LOGIN {17}\r\nalice@example.com {10}\r\np\xc3\xa4ssw\xc3\xb6rd\r\nb1 LOGIN x \"y {3}\"\r\nc1 NOOP\r\n";
        let whole = frame_all(wire);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(wire.len())).collect();
        cuts.sort();
        cuts.push(wire.len());
        let mut f = Framer::new();
        let mut events = Vec::new();
        let mut start = 0;
        for cut in cuts {
            loop {
                if cut < start { break; }
                match f.scan(&wire[start..cut], MAX_PRE_AUTH_LITERAL).unwrap() {
                    Frame::Incomplete => break,
                    Frame::Complete { len } => { events.push(Frame::Complete { len }); start += len; }
                    lit => events.push(lit),
                }
            }
        }
        prop_assert_eq!(events, whole);
    }
}
