//! A message as it arrives in spool mode, without I/O: DATA's lines un-stuffed and ended with
//! CRLF (RFC 5321 §4.5.2, §2.3.8), the header section held back until it is complete so the
//! sender can be checked and the fields a submission server adds can be added (RFC 6409 §8:
//! `Message-ID`, `Date`, and `From:` from the account's mailbox), the author rewritten for
//! no-login mail with `rewrite_sender`, and the size counted against the limit.

use std::time::SystemTime;

/// The longest header section accepted (it is held in memory until the blank line).
pub const MAX_HEADER_SECTION: usize = 1024 * 1024;

/// What a finished message needs before it can be committed.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Good: the header section's addresses to check, and the fields to put in front.
    Ready {
        /// Addresses in `From:` and `Sender:`.
        authors: Vec<String>,
    },
    /// Over the size limit (`552 5.3.4`).
    TooBig,
    /// A header section over [`MAX_HEADER_SECTION`] (`552 5.3.4` as well).
    HeaderTooBig,
    /// DATA ended in `<LF>.<LF>` or `<LF>.<CR><LF>`, which RFC 5321 §4.1.1.4 says MUST NOT
    /// end a message: where the sender meant it to end is unknown (the SMTP smuggling shape),
    /// so the message is refused and the connection closed.
    BareLfEnd,
}

/// Collects one message: the header section in memory until it is complete (then it goes out
/// with the added fields in front), the body passed through.
pub struct MessageSink {
    header: Vec<u8>,
    header_done: bool,
    size: u64,
    max: u64,
    /// DATA: inside a line (a dot here is not at a line's start).
    mid_line: bool,
    /// The queue ID and the relay's name, for an added `Message-ID`.
    id: String,
    domain: String,
    /// Addresses of `From:` and `Sender:`, once the header section was read.
    authors: Vec<String>,
    header_too_big: bool,
    authorship: Authorship,
    /// DATA: the previous line ended in CRLF (true at the start: `DATA` ended one).
    after_crlf: bool,
    /// DATA ended with a `.` line next to a bare LF.
    bare_lf_end: bool,
}

/// Who the message is from, as far as the sink is concerned.
#[derive(Debug, Clone, Default)]
pub struct Authorship {
    /// The account's mailbox: `From:` for a message without one (RFC 5322 §3.6 requires it).
    pub mailbox: String,
    /// No-login mail with `rewrite_sender`: `From:` and `Sender:` are replaced by the mailbox
    /// (the display name kept), the original author goes to `Reply-To:` when there is none,
    /// and this text is the value of an `X-Authrelay-Rewritten` trace field.
    pub rewrite: Option<String>,
}

impl MessageSink {
    /// A sink for message `id` of at most `max` bytes; `domain` names the relay in an added
    /// `Message-ID`.
    pub fn new(max: u64, id: &str, domain: &str) -> Self {
        MessageSink {
            header: Vec::new(),
            header_done: false,
            size: 0,
            max,
            mid_line: false,
            id: id.to_owned(),
            domain: domain.to_owned(),
            authors: Vec::new(),
            header_too_big: false,
            authorship: Authorship::default(),
            after_crlf: true,
            bare_lf_end: false,
        }
    }

    /// The sink with `authorship` (by default no `From:` is added and nothing rewritten).
    pub fn with_authorship(mut self, authorship: Authorship) -> Self {
        self.authorship = authorship;
        self
    }

    /// The bytes of the message so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Takes DATA bytes from `input` up to and including the end line. Returns how many bytes
    /// were used and whether the end line was among them; message bytes (un-stuffed, lines
    /// ended with CRLF) go to `out` once the header section is complete (before: held here).
    /// Only complete lines are taken unless a line is longer than `input` can ever hold
    /// (`force`: the caller's buffer is full), so a dot is always seen at a line's start.
    pub fn feed_data(&mut self, input: &[u8], force: bool, out: &mut Vec<u8>) -> (usize, bool) {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                if force {
                    self.take(rest, out);
                    self.mid_line = true;
                    used = input.len();
                }
                break;
            };
            let line = &rest[..lf];
            let crlf = line.ends_with(b"\r");
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            used += lf + 1;
            if !self.mid_line && line == b"." {
                // Lines may end in a bare LF (made CRLF here), but only CRLF . CRLF ends.
                self.bare_lf_end = !(crlf && self.after_crlf);
                return (used, true);
            }
            self.after_crlf = crlf;
            let line = match (self.mid_line, line.first()) {
                (false, Some(b'.')) => &line[1..],
                _ => line,
            };
            self.take(line, out);
            self.take(b"\r\n", out);
            self.mid_line = false;
        }
        (used, false)
    }

    /// Takes BDAT bytes (exact, not stuffed).
    pub fn feed_chunk(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.take(chunk, out);
    }

    fn take(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.size += bytes.len() as u64;
        if self.size > self.max {
            return;
        }
        if self.header_done {
            out.extend_from_slice(bytes);
            return;
        }
        self.header.extend_from_slice(bytes);
        if let Some(end) = header_end(&self.header) {
            let body = self.header.split_off(end);
            self.complete_header(out);
            out.extend_from_slice(&body);
        } else if self.header.len() > MAX_HEADER_SECTION {
            self.header_done = true;
            self.header_too_big = true;
        }
    }

    /// The header section is complete: its authors noted, the fields it lacks added in front
    /// (`Message-ID` from the queue ID and the relay's name, `Date` now), all of it out.
    fn complete_header(&mut self, out: &mut Vec<u8>) {
        self.header_done = true;
        let parsed = mail_parser::MessageParser::default().parse_headers(&self.header[..]);
        if let Some(m) = &parsed {
            for list in [m.from(), m.sender()].into_iter().flatten() {
                self.authors.extend(addresses(list));
            }
        }
        let has = |name: &str| {
            parsed
                .as_ref()
                .is_some_and(|m| m.header_raw(name).is_some())
        };
        if !has("Message-ID") {
            let field = format!("Message-ID: <{}@{}>\r\n", self.id, self.domain);
            out.extend_from_slice(field.as_bytes());
        }
        if !has("Date") {
            let field = format!("Date: {}\r\n", rfc5322_date(SystemTime::now()));
            out.extend_from_slice(field.as_bytes());
        }
        let mailbox = self.authorship.mailbox.clone();
        match (&self.authorship.rewrite, &parsed) {
            (Some(trace), Some(m)) => {
                let header = rewrite_authors(&self.header, m, &mailbox, trace);
                self.header = header;
                self.authors.clear();
            }
            _ if !has("From") && !mailbox.is_empty() => {
                write_address_field(out, "From", None, &mailbox);
            }
            _ => {}
        }
        out.append(&mut self.header);
    }

    /// The end of the message: what it needs; a header section without its blank line (a
    /// message of headers only) goes out now.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Verdict {
        if self.bare_lf_end {
            return Verdict::BareLfEnd;
        }
        if self.size > self.max {
            return Verdict::TooBig;
        }
        if self.header_too_big {
            return Verdict::HeaderTooBig;
        }
        if !self.header_done {
            self.complete_header(out);
        }
        Verdict::Ready {
            authors: std::mem::take(&mut self.authors),
        }
    }
}

/// The header section with `From:` and `Sender:` replaced by `mailbox` under the first
/// author's display name, the original authors in `Reply-To:` unless there is one, and the
/// trace field in front.
fn rewrite_authors(
    header: &[u8],
    m: &mail_parser::Message<'_>,
    mailbox: &str,
    trace: &str,
) -> Vec<u8> {
    use mail_parser::HeaderName;
    let mut out = Vec::with_capacity(header.len() + 256);
    let trace = crate::codec::line::sanitize_for_reply(trace, 900);
    out.extend_from_slice(format!("X-Authrelay-Rewritten: {trace}\r\n").as_bytes());
    let first = m.from().and_then(|l| l.first());
    let name = first.and_then(|a| a.name()).map(str::to_owned);
    write_address_field(&mut out, "From", name.as_deref(), mailbox);
    if m.reply_to().is_none() {
        if let Some(original) = first.and_then(|a| a.address()) {
            write_address_field(&mut out, "Reply-To", name.as_deref(), original);
        }
    }
    let mut at = 0;
    for h in m.headers() {
        if matches!(h.name, HeaderName::From | HeaderName::Sender) {
            let (start, end) = (h.offset_field as usize, h.offset_end as usize);
            out.extend_from_slice(&header[at..start.max(at)]);
            at = end.max(at);
        }
    }
    out.extend_from_slice(&header[at..]);
    out
}

/// `Name: "Display" <address>` with the name encoded as RFC 2047 needs (mail-builder).
fn write_address_field(out: &mut Vec<u8>, field: &str, name: Option<&str>, address: &str) {
    use mail_builder::headers::Header;
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(b": ");
    mail_builder::headers::address::Address::new_address(name, address)
        .write_header(out, field.len() + 2);
}

/// Every mailbox of an address header, groups included.
pub(crate) fn addresses(list: &mail_parser::Address<'_>) -> Vec<String> {
    match list {
        mail_parser::Address::List(l) => l
            .iter()
            .filter_map(|a| a.address().map(str::to_owned))
            .collect(),
        mail_parser::Address::Group(groups) => groups
            .iter()
            .flat_map(|g| g.addresses.iter())
            .filter_map(|a| a.address().map(str::to_owned))
            .collect(),
    }
}

/// Where the header section ends: after the first empty line.
fn header_end(bytes: &[u8]) -> Option<usize> {
    if bytes.starts_with(b"\r\n") {
        return Some(2);
    }
    memchr::memmem::find(bytes, b"\r\n\r\n").map(|i| i + 4)
}

pub use crate::civil::{civil_date, rfc5322_date};

#[cfg(test)]
mod tests {
    use super::*;

    fn data(sink: &mut MessageSink, wire: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let (used, end) = sink.feed_data(wire, false, &mut out);
        assert!(!end || used == wire.len(), "nothing after the end line");
        (out, end)
    }

    #[test]
    fn dots_are_unstuffed_line_ends_made_crlf_and_the_end_line_found() {
        let mut s = MessageSink::new(1 << 20, "0123-abcd", "relay.test");
        let (mut out, end) = data(
            &mut s,
            b"Subject: x\r\nFrom: <a@b.example>\n\r\n..dot\r\nbare\nnext\r\n.\r\n",
        );
        assert!(end);
        let verdict = s.finish(&mut out);
        assert_eq!(
            verdict,
            Verdict::Ready {
                authors: vec!["a@b.example".into()]
            }
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("Message-ID: <0123-abcd@relay.test>\r\nDate: "),
            "{text}"
        );
        assert!(
            text.ends_with("Subject: x\r\nFrom: <a@b.example>\r\n\r\n.dot\r\nbare\r\nnext\r\n"),
            "{text}"
        );
    }

    #[test]
    fn existing_fields_are_kept_and_sender_counts_as_author() {
        let mut s = MessageSink::new(1 << 20, "id", "relay.test");
        let wire = b"Message-ID: <x@y>\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\nFrom: A <a@x.example>, b@x.example\r\nSender: s@x.example\r\n\r\nbody\r\n.\r\n";
        let (mut out, end) = data(&mut s, wire);
        assert!(end);
        let verdict = s.finish(&mut out);
        assert_eq!(
            verdict,
            Verdict::Ready {
                authors: vec![
                    "a@x.example".into(),
                    "b@x.example".into(),
                    "s@x.example".into()
                ]
            }
        );
        assert!(out.starts_with(b"Message-ID: <x@y>\r\n"));
    }

    #[test]
    fn an_end_line_split_across_reads_and_a_dot_inside_a_line() {
        let mut s = MessageSink::new(1 << 20, "id", "d");
        let mut out = Vec::new();
        let wire = b"\r\nline with . inside\r\n.";
        let (used, end) = s.feed_data(wire, false, &mut out);
        assert!(!end);
        assert_eq!(
            used,
            wire.len() - 1,
            "the incomplete `.` waits for its line end"
        );
        let (_, end) = s.feed_data(b".\r\n", false, &mut out);
        assert!(end);
    }

    #[test]
    fn a_missing_from_is_the_mailbox_and_a_rewrite_keeps_the_name() {
        let fill = Authorship {
            mailbox: "scanner@contoso.com".into(),
            rewrite: None,
        };
        let mut s = MessageSink::new(1 << 20, "id", "d").with_authorship(fill.clone());
        let (mut out, _) = data(&mut s, b"Subject: x\r\n\r\nbody\r\n.\r\n");
        s.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("\r\nFrom: <scanner@contoso.com>\r\nSubject: x\r\n"),
            "{text}"
        );

        let rewrite = Authorship {
            rewrite: Some("sender <copier@local> for client 10.0.0.9".into()),
            ..fill
        };
        let mut s = MessageSink::new(1 << 20, "id", "d").with_authorship(rewrite);
        let wire = b"Subject: x\r\nFrom: =?utf-8?q?K=C3=BCche?= <copier@local>\r\nSender: copier@local\r\nTo: a@b\r\n\r\nbody\r\n.\r\n";
        let (mut out, _) = data(&mut s, wire);
        assert_eq!(s.finish(&mut out), Verdict::Ready { authors: vec![] });
        let text = String::from_utf8(out).unwrap();
        let parsed = mail_parser::MessageParser::default()
            .parse(text.as_bytes())
            .unwrap();
        let from = parsed.from().unwrap().first().unwrap();
        assert_eq!(from.address(), Some("scanner@contoso.com"), "{text}");
        assert_eq!(from.name(), Some("Küche"), "{text}");
        let reply_to = parsed.reply_to().unwrap().first().unwrap();
        assert_eq!(reply_to.address(), Some("copier@local"), "{text}");
        assert!(parsed.sender().is_none(), "{text}");
        assert!(
            text.contains("X-Authrelay-Rewritten: sender <copier@local>"),
            "{text}"
        );
        assert!(
            text.ends_with("Subject: x\r\nTo: a@b\r\n\r\nbody\r\n"),
            "{text}"
        );
    }

    #[test]
    fn bare_lf_line_ends_are_taken_but_never_end_the_message() {
        // Bare LF inside: made CRLF; the end is CRLF . CRLF.
        let mut s = MessageSink::new(1 << 20, "id", "d");
        let (mut out, end) = data(&mut s, b"Subject: x\n\nline one\nline two\r\n.\r\n");
        assert!(end);
        assert!(matches!(s.finish(&mut out), Verdict::Ready { .. }));
        assert!(out.ends_with(b"Subject: x\r\n\r\nline one\r\nline two\r\n"));
        // The smuggling shapes: refused, whatever follows.
        for wire in [
            &b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<ceo@x>\r\n"[..],
            b"Subject: x\r\n\r\nbody\n.\r\n",
            b"Subject: x\r\n\r\nbody\r\n.\n",
        ] {
            let mut s = MessageSink::new(1 << 20, "id", "d");
            let mut out = Vec::new();
            let (_, end) = s.feed_data(wire, false, &mut out);
            assert!(end, "{wire:?}");
            assert_eq!(s.finish(&mut out), Verdict::BareLfEnd, "{wire:?}");
        }
    }

    #[test]
    fn too_big_is_counted_to_the_end() {
        let mut s = MessageSink::new(10, "id", "d");
        let (mut out, end) = data(&mut s, b"\r\n0123456789abcdef\r\n.\r\n");
        assert!(end);
        assert_eq!(s.finish(&mut out), Verdict::TooBig);
    }
}
