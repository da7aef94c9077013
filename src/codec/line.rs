//! Line framing shared by the line-based protocols (SMTP, POP3).

/// A line was longer than the limit allowed in the current protocol state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong;

/// Finds the first complete line in `buf`.
///
/// Returns the line without its terminator and the number of bytes consumed, including the
/// terminator. A line ends at LF; a CR right before it is part of the terminator, so clients that
/// send bare LF are understood too. `max` bounds the line including its terminator: when no LF
/// appears within `max` bytes the line is too long, whatever follows.
pub fn next_line(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, LineTooLong> {
    let window = &buf[..buf.len().min(max)];
    match memchr_lf(window) {
        Some(lf) => {
            let line = &buf[..lf];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Ok(Some((line, lf + 1)))
        }
        None if buf.len() >= max => Err(LineTooLong),
        None => Ok(None),
    }
}

/// Frames one command line: at most `max` bytes (terminator included), or `long_max` when
/// `may_be_long` says the line's start allows more (an `AUTH` line with a long initial response:
/// RFC 4954 §4 allows 12,288 octets). A line without an end within `max` bytes that may not be
/// long is refused at once. Returns the length of the line without its terminator and the
/// bytes it takes.
pub fn next_command(
    buf: &[u8],
    max: usize,
    long_max: usize,
    may_be_long: fn(&[u8]) -> bool,
) -> Result<Option<(usize, usize)>, LineTooLong> {
    let limit = if buf.len() >= max.min(16) && !may_be_long(buf) {
        max
    } else {
        long_max.max(max)
    };
    match next_line(buf, limit)? {
        Some((line, used)) if used > max && !may_be_long(line) => Err(LineTooLong),
        Some((line, used)) => Ok(Some((line.len(), used))),
        None => Ok(None),
    }
}

fn memchr_lf(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

/// True when the line holds a byte that has no business in a command line: NUL, a CR that is not
/// part of the terminator, or another C0 control other than TAB.
pub fn has_forbidden_controls(line: &[u8]) -> bool {
    line.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f)
}

/// True when the line is an HTTP request line (`METHOD target HTTP/1.x`): the stricter test for
/// IMAP, where `GET` could be a client's tag.
pub fn is_http_request_line(line: &[u8]) -> bool {
    let line = line.trim_ascii_end();
    looks_like_http(line)
        && line.len() >= 9
        && line[line.len() - 9..line.len() - 1].eq_ignore_ascii_case(b" HTTP/1.")
}

/// True when the line looks like the start of an HTTP request: a web page can make a browser
/// send one to any local port, and such a connection is closed at once.
pub fn looks_like_http(line: &[u8]) -> bool {
    const METHODS: [&[u8]; 8] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"CONNECT ",
        b"OPTIONS ",
        b"DELETE ",
        b"PATCH ",
    ];
    METHODS.iter().any(|m| starts_with_ignore_case(line, m))
        || line.windows(7).any(|w| w.eq_ignore_ascii_case(b" HTTP/1"))
}

/// True when `haystack` starts with `prefix`, ASCII case-insensitively.
pub fn starts_with_ignore_case(haystack: &[u8], prefix: &[u8]) -> bool {
    haystack.len() >= prefix.len() && haystack[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// A character a log line or a protocol reply must not carry as it is: C0/C1 controls, and the
/// invisible Unicode format characters that reorder or hide text (bidi embeddings and overrides,
/// zero-width characters, line and paragraph separators).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// Makes text safe to echo inside a protocol line, a page or a log: control characters and
/// Unicode format characters (bidi overrides, zero-width characters, U+2028/U+2029) become `?`,
/// and the result is cut to `max` bytes on a character boundary.
pub fn sanitize_for_reply(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if is_unsafe_char(c) { '?' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// [`sanitize_for_reply`], but a text longer than `max` bytes ends at the last word that fits,
/// followed by `...`: a cut never leaves half a word (or half a URL) for someone to look up.
pub fn shorten(text: &str, max: usize) -> String {
    let clean = sanitize_for_reply(text, usize::MAX);
    if clean.len() <= max {
        return clean;
    }
    let room = sanitize_for_reply(&clean, max.saturating_sub(3));
    let end = room.rfind(' ').filter(|&i| i > 0).unwrap_or(room.len());
    format!("{}...", room[..end].trim_end_matches([',', ';', ':']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_crlf_and_bare_lf() {
        assert_eq!(
            next_line(b"EHLO a\r\nrest", 512),
            Ok(Some((&b"EHLO a"[..], 8)))
        );
        assert_eq!(
            next_line(b"EHLO a\nrest", 512),
            Ok(Some((&b"EHLO a"[..], 7)))
        );
        assert_eq!(next_line(b"EHLO a\r", 512), Ok(None));
        assert_eq!(next_line(b"", 512), Ok(None));
    }

    #[test]
    fn bounds_line_length() {
        let long = vec![b'a'; 600];
        assert_eq!(next_line(&long, 512), Err(LineTooLong));
        assert_eq!(next_line(&long[..100], 512), Ok(None));
        let mut exact = vec![b'a'; 510];
        exact.extend_from_slice(b"\r\n");
        assert!(next_line(&exact, 512).unwrap().is_some());
        exact.insert(0, b'a');
        assert_eq!(next_line(&exact, 512), Err(LineTooLong));
    }

    #[test]
    fn spots_controls_and_http() {
        assert!(has_forbidden_controls(b"EHLO a\0b"));
        assert!(has_forbidden_controls(b"EHLO a\rb"));
        assert!(!has_forbidden_controls(b"EHLO a\tb"));
        assert!(looks_like_http(b"GET / HTTP/1.1"));
        assert!(looks_like_http(b"post /x HTTP/1.0"));
        assert!(!looks_like_http(b"EHLO getter"));
        assert!(is_http_request_line(b"GET / HTTP/1.1\r\n"));
        assert!(is_http_request_line(b"CONNECT mail:143 HTTP/1.0"));
        assert!(!is_http_request_line(b"GET LOGIN user pass"));
        assert!(!is_http_request_line(b"get SELECT \"HTTP/1.x folder\""));
    }

    #[test]
    fn sanitizes_echoed_text() {
        assert_eq!(sanitize_for_reply("a\r\nb\u{1}c", 100), "a??b?c");
        assert_eq!(sanitize_for_reply("ééé", 5), "éé");
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("one two, three", 12), "one two...");
        assert_eq!(shorten("unbreakable-word", 8), "unbre...");
        assert_eq!(
            sanitize_for_reply("a\u{2028}b\u{202E}c\u{200B}d\u{85}e", 100),
            "a?b?c?d?e"
        );
    }
}
