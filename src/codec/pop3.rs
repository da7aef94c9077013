//! POP3 (RFC 1939, CAPA RFC 2449, SASL RFC 5034, STLS RFC 2595) pre-authentication codec:
//! client commands, the server's status lines and multi-line responses, and the CAPA rewrite.

use crate::codec::line::{has_forbidden_controls, looks_like_http};
use crate::secret::Sensitive;

/// Longest command line accepted from a client before authentication, including CRLF.
/// RFC 2449 §4 says 255; the relay is lenient.
pub const MAX_COMMAND_LINE: usize = 1024;
/// Longest line inside an AUTH exchange.
pub const MAX_AUTH_LINE: usize = 12288;

/// True when a (partial) command line is `PASS` or `AUTH`, which may run to [`MAX_AUTH_LINE`]:
/// a refresh token used as a password (the `mailbox~client_id` convention) is 1-2 KB, and
/// RFC 5034 takes SASL's 12,288-octet limit for AUTH.
pub fn may_be_long(line: &[u8]) -> bool {
    use crate::codec::line::starts_with_ignore_case;
    starts_with_ignore_case(line, b"PASS ") || starts_with_ignore_case(line, b"AUTH ")
}
/// Longest status line, and longest multi-line response, accepted from upstream before login.
pub const MAX_RESPONSE_LINE: usize = 8192;
/// Most bytes of a multi-line response read before login (CAPA).
pub const MAX_MULTILINE: usize = 65536;

/// One client command, as a view into its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `USER name`.
    User(&'a [u8]),
    /// The password is everything after `PASS ` (RFC 1939 §7: spaces belong to it).
    Pass(Sensitive<&'a [u8]>),
    /// `AUTH` alone lists the mechanisms; otherwise a mechanism and an optional initial response.
    Auth {
        /// The mechanism, if one was named.
        mechanism: Option<&'a [u8]>,
        /// The initial response, when given (never logged).
        initial_response: Option<Sensitive<&'a [u8]>>,
    },
    /// `APOP` (not offered).
    Apop,
    /// `CAPA` (RFC 2449).
    Capa,
    /// `STLS` (RFC 2595).
    Stls,
    /// `QUIT`.
    Quit,
    /// A TRANSACTION-state command (STAT, LIST, RETR, DELE, NOOP, RSET, TOP, UIDL, LAST).
    NeedsAuth,
    /// An HTTP request line on the POP3 port.
    Http,
    /// A line with control characters or a bad argument.
    Malformed,
    /// Any other command.
    Unknown,
}

/// Parses one command line (without its terminator).
pub fn parse_command(line: &[u8]) -> Command<'_> {
    if looks_like_http(line) {
        return Command::Http;
    }
    if has_forbidden_controls(line) {
        return Command::Malformed;
    }
    let (keyword, arg) = match line.iter().position(|&b| b == b' ') {
        Some(sp) => (&line[..sp], Some(&line[sp + 1..])),
        None => (line, None),
    };
    let is = |k: &[u8]| keyword.eq_ignore_ascii_case(k);
    let word_arg = arg.map(<[u8]>::trim_ascii).filter(|a| !a.is_empty());
    if is(b"USER") {
        match word_arg {
            Some(a) => Command::User(a),
            None => Command::Malformed,
        }
    } else if is(b"PASS") {
        Command::Pass(Sensitive::new(arg.unwrap_or_default()))
    } else if is(b"AUTH") {
        let mut parts = word_arg.unwrap_or_default().splitn(2, |&b| b == b' ');
        let mechanism = parts.next().filter(|m| !m.is_empty());
        let initial_response = parts
            .next()
            .map(<[u8]>::trim_ascii)
            .filter(|r| !r.is_empty());
        Command::Auth {
            mechanism,
            initial_response: initial_response.map(Sensitive::new),
        }
    } else if is(b"APOP") {
        Command::Apop
    } else if is(b"CAPA") {
        Command::Capa
    } else if is(b"STLS") {
        Command::Stls
    } else if is(b"QUIT") {
        Command::Quit
    } else if [
        &b"STAT"[..],
        b"LIST",
        b"RETR",
        b"DELE",
        b"NOOP",
        b"RSET",
        b"TOP",
        b"UIDL",
        b"LAST",
    ]
    .iter()
    .any(|k| is(k))
    {
        Command::NeedsAuth
    } else {
        Command::Unknown
    }
}

/// What a server's single line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status<'a> {
    /// `+OK text`.
    Ok(&'a [u8]),
    /// `-ERR text`.
    Err(&'a [u8]),
    /// A SASL continuation: `+`, `+ `, or `+ <base64>`.
    Continue(&'a [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
/// Why a server's response cannot be read.
pub enum ResponseError {
    #[error("response line is not +OK, -ERR or +")]
    /// Not a status line.
    Syntax,
    #[error("response too long")]
    /// Over the length limit.
    TooLong,
}

/// Cuts one status line out of `buf`: the status, and the bytes consumed.
pub fn next_status(buf: &[u8]) -> Result<Option<(Status<'_>, usize)>, ResponseError> {
    let Some(lf) = buf.iter().take(MAX_RESPONSE_LINE).position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_RESPONSE_LINE {
            Err(ResponseError::TooLong)
        } else {
            Ok(None)
        };
    };
    let line = &buf[..lf];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Ok(Some((parse_status(line)?, lf + 1)))
}

fn parse_status(line: &[u8]) -> Result<Status<'_>, ResponseError> {
    let text_after = |prefix: usize| {
        let rest = &line[prefix..];
        rest.strip_prefix(b" ").unwrap_or(rest)
    };
    if line.len() >= 3 && line[..3].eq_ignore_ascii_case(b"+OK") {
        Ok(Status::Ok(text_after(3)))
    } else if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"-ERR") {
        Ok(Status::Err(text_after(4)))
    } else if line.first() == Some(&b'+') {
        Ok(Status::Continue(text_after(1)))
    } else {
        Err(ResponseError::Syntax)
    }
}

/// The lines of a multi-line body (dot stuffing removed) and the bytes it took.
pub type Multiline<'a> = (Vec<&'a [u8]>, usize);

/// Cuts a multi-line body (after a `+OK` status line) out of `buf`, up to the terminating `.`
/// line.
pub fn next_multiline(buf: &[u8]) -> Result<Option<Multiline<'_>>, ResponseError> {
    let mut lines = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        let Some(lf) = rest
            .iter()
            .take(MAX_RESPONSE_LINE)
            .position(|&b| b == b'\n')
        else {
            if rest.len() >= MAX_RESPONSE_LINE || buf.len() >= MAX_MULTILINE {
                return Err(ResponseError::TooLong);
            }
            return Ok(None);
        };
        let line = &rest[..lf];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += lf + 1;
        if pos > MAX_MULTILINE {
            return Err(ResponseError::TooLong);
        }
        if line == b"." {
            return Ok(Some((lines, pos)));
        }
        lines.push(
            line.strip_prefix(b".")
                .filter(|_| line.starts_with(b".."))
                .unwrap_or(line),
        );
    }
}

/// How the relay presents its capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapaPolicy {
    /// Offer `USER` and `SASL PLAIN LOGIN` (the local channel is acceptable for passwords).
    pub offer_auth: bool,
    /// Offer `STLS` (a certificate is configured and the channel is not yet TLS).
    pub offer_stls: bool,
}

/// Rewrites an upstream CAPA list (RFC 2449 §6, RFC 5034 §3): the `SASL` line becomes `SASL PLAIN
/// LOGIN`, `USER` is present, upstream `STLS` is dropped (the relay owns upstream TLS) and the
/// relay's own added when it offers one; `RESP-CODES` and `AUTH-RESP-CODE` are advertised because
/// the relay's errors carry `[AUTH]` and `[SYS/TEMP]`. Everything else is kept. The result is a
/// complete `+OK` response with its terminating line.
pub fn rewrite_capa(lines: &[&[u8]], policy: CapaPolicy) -> Vec<u8> {
    let mut out: Vec<&[u8]> = Vec::with_capacity(lines.len() + 4);
    for line in lines {
        let keyword = capa_keyword(line);
        let drop = [
            &b"SASL"[..],
            b"USER",
            b"STLS",
            b"RESP-CODES",
            b"AUTH-RESP-CODE",
        ]
        .iter()
        .any(|k| keyword.eq_ignore_ascii_case(k));
        if !drop && !line.is_empty() {
            out.push(line);
        }
    }
    out.push(b"RESP-CODES");
    out.push(b"AUTH-RESP-CODE");
    if policy.offer_auth {
        out.push(b"USER");
        out.push(b"SASL PLAIN LOGIN");
    }
    if policy.offer_stls {
        out.push(b"STLS");
    }
    let mut bytes = b"+OK Capability list follows\r\n".to_vec();
    for line in out {
        if line.first() == Some(&b'.') {
            bytes.push(b'.');
        }
        bytes.extend_from_slice(line);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b".\r\n");
    bytes
}

/// The keyword of a CAPA line: its first word, whatever spaces come before it. The rewrite and
/// the capability reading must agree on it, or a line could be kept that advertises a mechanism.
fn capa_keyword(line: &[u8]) -> &[u8] {
    line.split(|&b| b == b' ')
        .find(|w| !w.is_empty())
        .unwrap_or_default()
}

/// What a CAPA list says about the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `STLS` is offered.
    pub stls: bool,
    /// `USER` is offered.
    pub user: bool,
    /// Mechanisms from the `SASL` line, upper-cased.
    pub sasl: Vec<String>,
}

impl Capabilities {
    /// Reads the lines of a CAPA response (without its status line and final dot).
    pub fn from_capa(lines: &[&[u8]]) -> Self {
        let mut caps = Capabilities::default();
        for line in lines {
            let keyword = capa_keyword(line);
            let words = line.split(|&b| b == b' ').filter(|w| !w.is_empty()).skip(1);
            if keyword.eq_ignore_ascii_case(b"STLS") {
                caps.stls = true;
            } else if keyword.eq_ignore_ascii_case(b"USER") {
                caps.user = true;
            } else if keyword.eq_ignore_ascii_case(b"SASL") {
                caps.sasl
                    .extend(words.map(|w| String::from_utf8_lossy(w).to_ascii_uppercase()));
            }
        }
        caps
    }

    /// True when `SASL` lists `mechanism` (upper case).
    pub fn supports_sasl(&self, mechanism: &str) -> bool {
        self.sasl.iter().any(|m| m == mechanism)
    }
}

/// True when an `-ERR` text carries a response code that says the refusal is temporary:
/// `[SYS/TEMP]` (RFC 3206 §4), `[IN-USE]` or `[LOGIN-DELAY]` (RFC 2449 §8.1).
pub fn is_temporary_refusal(text: &[u8]) -> bool {
    [&b"[SYS/TEMP]"[..], b"[IN-USE]", b"[LOGIN-DELAY]"]
        .iter()
        .any(|code| text.starts_with(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse_command(b"USER alice@example.com"),
            Command::User(b"alice@example.com")
        );
        assert_eq!(parse_command(b"user  alice "), Command::User(b"alice"));
        assert_eq!(parse_command(b"USER"), Command::Malformed);
        assert_eq!(
            parse_command(b"PASS s3cr3t pass"),
            Command::Pass(Sensitive::new(b"s3cr3t pass"))
        );
        assert_eq!(
            parse_command(b"PASS  lead"),
            Command::Pass(Sensitive::new(b" lead"))
        );
        assert_eq!(parse_command(b"PASS"), Command::Pass(Sensitive::new(b"")));
        assert_eq!(
            format!("{:?}", parse_command(b"PASS s3cr3t")),
            "Pass([REDACTED])"
        );
        assert_eq!(
            parse_command(b"AUTH"),
            Command::Auth {
                mechanism: None,
                initial_response: None
            }
        );
        assert_eq!(
            parse_command(b"AUTH PLAIN AGFsaWNl"),
            Command::Auth {
                mechanism: Some(b"PLAIN"),
                initial_response: Some(Sensitive::new(b"AGFsaWNl"))
            }
        );
        assert_eq!(
            parse_command(b"auth login"),
            Command::Auth {
                mechanism: Some(b"login"),
                initial_response: None
            }
        );
        assert_eq!(
            parse_command(b"APOP mrose c4c9334bac560ecc979e58001b3e22fb"),
            Command::Apop
        );
        assert_eq!(parse_command(b"CAPA"), Command::Capa);
        assert_eq!(parse_command(b"STLS"), Command::Stls);
        assert_eq!(parse_command(b"QUIT"), Command::Quit);
        assert_eq!(parse_command(b"RETR 1"), Command::NeedsAuth);
        assert_eq!(parse_command(b"STAT"), Command::NeedsAuth);
        assert_eq!(parse_command(b"XTND"), Command::Unknown);
        assert_eq!(parse_command(b"USER a\0b"), Command::Malformed);
        assert_eq!(parse_command(b"GET / HTTP/1.1"), Command::Http);
    }

    #[test]
    fn parses_status_lines() {
        assert_eq!(
            next_status(b"+OK ready\r\n"),
            Ok(Some((Status::Ok(b"ready"), 11)))
        );
        assert_eq!(next_status(b"+OK\r\n"), Ok(Some((Status::Ok(b""), 5))));
        assert_eq!(
            next_status(b"-ERR [AUTH] no\r\n"),
            Ok(Some((Status::Err(b"[AUTH] no"), 16)))
        );
        assert_eq!(next_status(b"+\r\n"), Ok(Some((Status::Continue(b""), 3))));
        assert_eq!(next_status(b"+ \r\n"), Ok(Some((Status::Continue(b""), 4))));
        assert_eq!(
            next_status(b"+ eyJ9\r\n"),
            Ok(Some((Status::Continue(b"eyJ9"), 8)))
        );
        assert_eq!(next_status(b"+OK partial"), Ok(None));
        assert_eq!(next_status(b"hello\r\n"), Err(ResponseError::Syntax));
    }

    #[test]
    fn multiline_unstuffs_and_frames_across_reads() {
        let body = b"TOP\r\n..dotted\r\nSASL PLAIN XOAUTH2\r\n.\r\nrest";
        for cut in 0..body.len() - 4 {
            assert_eq!(next_multiline(&body[..cut]), Ok(None), "cut {cut}");
        }
        let (lines, used) = next_multiline(body).unwrap().unwrap();
        assert_eq!(lines, vec![&b"TOP"[..], b".dotted", b"SASL PLAIN XOAUTH2"]);
        assert_eq!(&body[used..], b"rest");
    }

    #[test]
    fn capa_rewrite_as_documented() {
        let upstream: Vec<&[u8]> = vec![
            b"TOP",
            b"UIDL",
            b"SASL PLAIN XOAUTH2 OAUTHBEARER",
            b"USER",
            b"STLS",
            b"RESP-CODES",
            b"PIPELINING",
        ];
        let caps = Capabilities::from_capa(&upstream);
        assert!(caps.stls && caps.user && caps.supports_sasl("XOAUTH2"));
        let out = rewrite_capa(
            &upstream,
            CapaPolicy {
                offer_auth: true,
                offer_stls: false,
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "+OK Capability list follows\r\nTOP\r\nUIDL\r\nPIPELINING\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n"
        );
        let out = rewrite_capa(
            &upstream,
            CapaPolicy {
                offer_auth: false,
                offer_stls: true,
            },
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with("AUTH-RESP-CODE\r\nSTLS\r\n.\r\n")
                && !text.contains("SASL")
                && !text.contains("USER")
        );
    }
}
