//! Delivery-status notifications (RFC 3464) for messages that cannot be delivered: a
//! `multipart/report` (RFC 6522) with a human-readable part naming the recipients, the server's
//! reply and what to do, the machine-readable `message/delivery-status`, and the original
//! header section (`text/rfc822-headers`).

use super::message::rfc5322_date;
use super::Envelope;
use crate::codec::line::sanitize_for_reply;
use std::time::{SystemTime, UNIX_EPOCH};

/// The notification for `envelope`, which failed for good with `reply`, from `mailbox` (the
/// account's: the only sender its upstream accepts) on behalf of the relay named `reporting`;
/// `headers` is the original message's header section.
pub fn bounce(
    envelope: &Envelope,
    reply: &str,
    mailbox: &str,
    reporting: &str,
    headers: &[u8],
) -> Vec<u8> {
    // Nothing a device or a server wrote may end a line here: an upstream's reply or a
    // recipient with a line break would add fields to the report (or to its header).
    let reply = &sanitize_for_reply(reply, 1000);
    let clean = |s: &str| sanitize_for_reply(s, 1000);
    let recipients: Vec<String> = envelope.recipients.iter().map(|r| clean(r)).collect();
    // The original header section is the device's: the boundary must not occur in it.
    let mut boundary = format!("authrelay-dsn-{}", envelope.id);
    while contains(headers, boundary.as_bytes()) {
        boundary.push_str("-x");
    }
    let status = enhanced_status(reply).unwrap_or("5.0.0");
    let arrival = rfc5322_date(UNIX_EPOCH + std::time::Duration::from_secs(envelope.arrived));
    let all = recipients.join(", ");
    let mut out = format!(
        "From: Mail Delivery System <{mailbox}>\r\nTo: <{sender}>\r\nSubject: Undelivered Mail Returned to Sender\r\nDate: {date}\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\r\n--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nYour message to {all} could not be delivered.\r\n\r\nThe mail server answered: {reply}\r\n\r\nCheck the recipients' addresses; if the server refused the sender or the message, ask the\r\nadministrator of the relay {reporting} (queue ID {id}).\r\n\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; {reporting}\r\nArrival-Date: {arrival}\r\n",
        sender = clean(&envelope.sender),
        date = rfc5322_date(SystemTime::now()),
        id = envelope.id,
    );
    for r in &recipients {
        out.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {r}\r\nAction: failed\r\nStatus: {status}\r\nDiagnostic-Code: smtp; {reply}\r\n"
        ));
    }
    out.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    ));
    out.push_str(&String::from_utf8_lossy(headers));
    if !out.ends_with("\r\n") {
        out.push_str("\r\n");
    }
    out.push_str(&format!("\r\n--{boundary}--\r\n"));
    out.into_bytes()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The enhanced status code (RFC 3463) in a reply such as `550 5.1.1 User unknown`.
fn enhanced_status(reply: &str) -> Option<&str> {
    let code = reply.split(' ').nth(1)?;
    let mut parts = code.split('.');
    let ok = matches!(parts.next(), Some("4" | "5"))
        && parts.clone().count() == 2
        && parts.all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounce_names_the_recipient_the_reply_and_keeps_the_headers() {
        let envelope = Envelope {
            id: "0001-ab".into(),
            account: "scanner".into(),
            sender: "scanner@example.com".into(),
            recipients: vec!["nobody@example.com".into()],
            arrived: 0,
            client: "127.0.0.1".into(),
            bounce: false,
        };
        let b = bounce(
            &envelope,
            "550 5.1.1 <nobody> User unknown",
            "scanner@example.com",
            "relay.test",
            b"Subject: scan\r\n\r\n",
        );
        let text = String::from_utf8(b).unwrap();
        assert!(text.contains("To: <scanner@example.com>\r\n"));
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains("Final-Recipient: rfc822; nobody@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <nobody> User unknown\r\n"));
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: scan\r\n"));
        assert!(text.ends_with("--authrelay-dsn-0001-ab--\r\n"));
        assert_eq!(enhanced_status("421 4.3.2 busy"), Some("4.3.2"));
        assert_eq!(enhanced_status("550 User unknown"), None);
    }

    /// Header injection: a reply, a recipient or a sender with line breaks, and an original
    /// header section that holds the report's boundary, do not add a field or end a part.
    #[test]
    fn nothing_from_a_device_or_a_server_adds_a_field_or_a_part() {
        let envelope = Envelope {
            id: "0002-cd".into(),
            account: "scanner".into(),
            sender: "scanner@example.com>\r\nBcc: <victim1@example.net".into(),
            recipients: vec!["a@example.com\r\nBcc: victim2@example.net".into()],
            arrived: 0,
            client: "127.0.0.1".into(),
            bounce: false,
        };
        let b = bounce(
            &envelope,
            "550 5.1.1 no\r\nBcc: victim3@example.net\r\n\r\n--authrelay-dsn-0002-cd--",
            "scanner@example.com",
            "relay.test",
            b"Subject: scan\r\n--authrelay-dsn-0002-cd\r\nContent-Type: text/html\r\n\r\n",
        );
        let parsed = mail_parser::MessageParser::default().parse(&b).unwrap();
        assert!(parsed.bcc().is_none());
        assert_eq!(parsed.parts.len(), 4, "the report and its three parts");
        let text = String::from_utf8(b).unwrap();
        for line in text.split("\r\n") {
            assert!(!line.starts_with("Bcc:"), "{line}\n{text}");
        }
        assert!(text.contains("boundary=\"authrelay-dsn-0002-cd-x\""));
    }
}
