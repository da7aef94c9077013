use super::*;

#[test]
fn parses_mail_commands_after_login() {
    use MailCommand::*;
    assert_eq!(
        parse_mail_command(b"MAIL FROM:<a@b.example> SIZE=10"),
        MailFrom(b"a@b.example")
    );
    assert_eq!(
        parse_mail_command(b"mail from: <A@B.example>"),
        MailFrom(b"A@B.example")
    );
    assert_eq!(parse_mail_command(b"MAIL FROM:<>"), MailFrom(b""));
    assert_eq!(
        parse_mail_command(b"MAIL FROM:<@relay.example:a@b.example>"),
        MailFrom(b"a@b.example")
    );
    assert_eq!(
        parse_mail_command(b"MAIL FROM:a@b.example BODY=8BITMIME"),
        MailFrom(b"a@b.example")
    );
    assert_eq!(parse_mail_command(b"MAIL FROM:<a@b"), BadMail);
    // Not a null sender: an empty source route, a route without a mailbox.
    assert_eq!(parse_mail_command(b"MAIL FROM:<@:>"), BadMail);
    assert_eq!(parse_mail_command(b"MAIL FROM:<@a.example:>"), BadMail);
    assert_eq!(parse_mail_command(b"MAIL FROM:<@,@a:x@y>"), BadMail);
    assert_eq!(parse_mail_command(b"MAIL FROM:<@bob@x>"), BadMail);
    assert_eq!(parse_mail_command(b"MAIL TO:<a@b>"), BadMail);
    assert_eq!(parse_mail_command(b"MAIL"), BadMail);
    assert_eq!(
        parse_mail_command(b"RCPT TO:<x@y>"),
        NeedsMail { bdat: false }
    );
    assert_eq!(
        parse_mail_command(b"BDAT 10 LAST"),
        NeedsMail { bdat: true }
    );
    assert_eq!(parse_mail_command(b"quit"), Quit);
    assert_eq!(parse_mail_command(b"RSET"), Other);
    assert_eq!(parse_mail_command(b""), Other);
}

#[test]
fn parses_commands() {
    assert_eq!(
        parse_command(b"EHLO client.example"),
        Command::Ehlo(b"client.example")
    );
    assert_eq!(parse_command(b"ehlo   x  "), Command::Ehlo(b"x"));
    assert_eq!(parse_command(b"HELO x"), Command::Helo(b"x"));
    assert_eq!(parse_command(b"EHLO"), Command::Ehlo(b""));
    assert_eq!(
        parse_command(b"AUTH PLAIN AGFsaWNl"),
        Command::Auth {
            mechanism: b"PLAIN",
            initial_response: Some(crate::secret::Sensitive::new(b"AGFsaWNl"))
        }
    );
    assert_eq!(
        parse_command(b"auth login"),
        Command::Auth {
            mechanism: b"login",
            initial_response: None
        }
    );
    assert_eq!(
        parse_command(b"AUTH"),
        Command::Auth {
            mechanism: b"",
            initial_response: None
        }
    );
    assert_eq!(
        parse_command(b"STARTTLS"),
        Command::StartTls { has_args: false }
    );
    assert_eq!(
        parse_command(b"STARTTLS now"),
        Command::StartTls { has_args: true }
    );
    assert_eq!(parse_command(b"MAIL FROM:<a@b>"), Command::NeedsAuth);
    assert_eq!(parse_command(b"data"), Command::NeedsAuth);
    assert_eq!(parse_command(b"QUIT"), Command::Quit);
    assert_eq!(parse_command(b"NOOP"), Command::Noop);
    assert_eq!(parse_command(b"RSET"), Command::Rset);
    assert_eq!(parse_command(b"XYZZY"), Command::Unknown);
    assert_eq!(parse_command(b""), Command::Unknown);
    assert_eq!(parse_command(b"EHLO\x00x"), Command::Malformed);
    assert_eq!(parse_command(b"EHLOX"), Command::Unknown);
    assert_eq!(parse_command(b"MAIL:x"), Command::Unknown);
    assert_eq!(parse_command(b"GET / HTTP/1.1"), Command::Http);
}

#[test]
fn frames_multiline_replies_across_reads() {
    let full = b"250-mx.example Hello\r\n250-234 Text beginning with numbers\r\n250 AUTH=LOGIN PLAIN\r\nNEXT";
    for cut in 0..full.len() - 4 {
        let partial = &full[..cut];
        assert_eq!(next_reply(partial), Ok(None), "cut at {cut}");
    }
    let (reply, used) = next_reply(full).unwrap().unwrap();
    assert_eq!(reply.code, 250);
    assert_eq!(reply.lines.len(), 3);
    assert_eq!(reply.lines[1], b"234 Text beginning with numbers");
    assert_eq!(&full[used..], b"NEXT");
}

#[test]
fn accepts_code_without_text_and_rejects_garbage() {
    assert_eq!(next_reply(b"334\r\n").unwrap().unwrap().0.code, 334);
    assert_eq!(
        next_reply(b"334 \r\n").unwrap().unwrap().0.lines,
        vec![&b""[..]]
    );
    assert_eq!(next_reply(b"hello\r\n"), Err(ReplyError::Syntax));
    assert_eq!(next_reply(b"2500\r\n"), Err(ReplyError::Syntax));
    assert_eq!(
        next_reply(b"250-a\r\n251 b\r\n"),
        Err(ReplyError::MixedCodes)
    );
    assert_eq!(
        next_reply(&vec![b'2'; MAX_REPLY_LINE + 1]),
        Err(ReplyError::TooLong)
    );
}

#[test]
fn finds_enhanced_codes() {
    assert_eq!(
        enhanced_code(b"5.7.139 Authentication unsuccessful"),
        Some("5.7.139")
    );
    assert_eq!(enhanced_code(b"2.7.0"), Some("2.7.0"));
    assert_eq!(enhanced_code(b"Hello 5.7.1"), None);
    assert_eq!(enhanced_code(b"5.7"), None);
}

fn o365() -> Vec<u8> {
    b"250-BL1P221CA0016.outlook.office365.com Hello [127.0.0.1]\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-AUTH LOGIN XOAUTH2\r\n250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n".to_vec()
}

#[test]
fn rewrites_o365_ehlo_as_documented() {
    let raw = o365();
    let (reply, _) = next_reply(&raw).unwrap().unwrap();
    let caps = Capabilities::from_ehlo(&reply);
    assert_eq!(caps.auth, vec!["LOGIN", "XOAUTH2"]);
    assert!(!caps.starttls);
    let out = rewrite_ehlo(
        &reply,
        EhloPolicy {
            offer_auth: true,
            offer_starttls: false,
        },
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "250-BL1P221CA0016.outlook.office365.com Hello [127.0.0.1]\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n"
    );
}

#[test]
fn rewrite_drops_legacy_auth_and_starttls_and_fixes_last_line() {
    let raw = b"250-mx Hello\r\n250-STARTTLS\r\n250-AUTH=XOAUTH2 LOGIN\r\n250-AUTH XOAUTH2 OAUTHBEARER\r\n250 AUTH=PLAIN\r\n";
    let (reply, _) = next_reply(raw).unwrap().unwrap();
    let caps = Capabilities::from_ehlo(&reply);
    assert!(caps.starttls);
    assert!(caps.supports_auth("XOAUTH2") && caps.supports_auth("OAUTHBEARER"));
    let out = rewrite_ehlo(
        &reply,
        EhloPolicy {
            offer_auth: true,
            offer_starttls: true,
        },
    );
    assert_eq!(
        out,
        b"250-mx Hello\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n"
    );
    let out = rewrite_ehlo(
        &reply,
        EhloPolicy {
            offer_auth: false,
            offer_starttls: false,
        },
    );
    assert_eq!(out, b"250 mx Hello\r\n");
}

#[test]
fn keywords_behind_spaces_are_still_recognized() {
    let raw = b"250-mx\r\n250-  AUTH XOAUTH2\r\n250  STARTTLS\r\n";
    let (reply, _) = next_reply(raw).unwrap().unwrap();
    let out = rewrite_ehlo(
        &reply,
        EhloPolicy {
            offer_auth: true,
            offer_starttls: false,
        },
    );
    assert_eq!(out, b"250-mx\r\n250 AUTH PLAIN LOGIN\r\n");
}

#[test]
fn helo_reply_is_single_line() {
    let raw = o365();
    let (reply, _) = next_reply(&raw).unwrap().unwrap();
    assert_eq!(
        helo_reply(&reply),
        b"250 BL1P221CA0016.outlook.office365.com\r\n"
    );
}

#[test]
fn rcpt_to_and_mail_size() {
    assert_eq!(rcpt_to(b"RCPT TO:<a@b.example>"), Some(&b"a@b.example"[..]));
    assert_eq!(
        rcpt_to(b"rcpt to: <a@b.example> NOTIFY=NEVER"),
        Some(&b"a@b.example"[..])
    );
    assert_eq!(
        rcpt_to(b"RCPT TO:<@relay.example:a@b.example>"),
        Some(&b"a@b.example"[..])
    );
    // Firmware without brackets (Postfix's strict_rfc821_envelopes = no accepts it too).
    assert_eq!(rcpt_to(b"RCPT TO:a@b"), Some(&b"a@b"[..]));
    assert_eq!(rcpt_to(b"RCPT TO: a@b NOTIFY=NEVER"), Some(&b"a@b"[..]));
    for bad in [
        &b"RCPT TO:<>"[..],
        b"RCPT TO:",
        b"RCPT TO:<a@b",
        b"RCPT TO:no-at",
        b"RCPT TO:<no-at>",
        b"RCPT FROM:<a@b>",
        b"RCPT TO:<a b@c>",
    ] {
        assert_eq!(rcpt_to(bad), None, "{}", String::from_utf8_lossy(bad));
    }
    assert_eq!(
        mail_size(b"MAIL FROM:<a@b> SIZE=1234 BODY=8BITMIME"),
        Some(1234)
    );
    assert_eq!(mail_size(b"MAIL FROM:<a@b> BODY=8BITMIME"), None);
}
