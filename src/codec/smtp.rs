//! SMTP (RFC 5321, RFC 4954) pre-authentication codec.
//!
//! The relay parses only what it must before the login: client command lines (framed by
//! [`crate::codec::line::next_line`]), the server's multi-line replies, and the EHLO keyword list
//! that it rewrites. After authentication nothing is parsed (see `session::relay`).

use crate::codec::line::{has_forbidden_controls, looks_like_http};
use crate::secret::Sensitive;
use nom::bytes::complete::{tag, take_while1, take_while_m_n};
use nom::character::complete::one_of;
use nom::combinator::{opt, rest};
use nom::sequence::preceded;
use nom::{IResult, Parser};

/// Longest command line accepted from a client before authentication, including CRLF. RFC 5321
/// says 512; the relay is lenient because some devices send long EHLO names.
pub const MAX_COMMAND_LINE: usize = 2048;
/// Longest line inside an AUTH exchange (RFC 4954 §4: 12288 is sufficient).
pub const MAX_AUTH_LINE: usize = 12288;
/// Longest reply line accepted from upstream, and longest whole reply.
pub const MAX_REPLY_LINE: usize = 8192;
/// Most bytes of one multi-line reply.
pub const MAX_REPLY: usize = 65536;

/// One client command, as a view into the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `EHLO domain` (the domain may be empty: a syntax error).
    Ehlo(&'a [u8]),
    /// `HELO domain`.
    Helo(&'a [u8]),
    /// `AUTH mechanism [initial-response]` (RFC 4954 §4).
    Auth {
        /// The mechanism name as sent (may be empty: a syntax error).
        mechanism: &'a [u8],
        /// The initial response, when given (never logged).
        initial_response: Option<Sensitive<&'a [u8]>>,
    },
    /// `STARTTLS` (RFC 3207).
    StartTls {
        /// Arguments followed it (a syntax error).
        has_args: bool,
    },
    /// `QUIT`.
    Quit,
    /// `NOOP`.
    Noop,
    /// `RSET`.
    Rset,
    /// MAIL, RCPT, DATA, BDAT, BURL, VRFY, EXPN, ETRN: all need an authenticated session.
    NeedsAuth,
    /// The first bytes of an HTTP request: the connection is closed without a reply.
    Http,
    /// NUL, a stray CR or another control character in the line.
    Malformed,
    /// A verb the relay does not handle before authentication.
    Unknown,
}

fn verb(i: &[u8]) -> IResult<&[u8], &[u8]> {
    take_while1(|b: u8| b.is_ascii_alphanumeric()).parse(i)
}

fn argument(i: &[u8]) -> IResult<&[u8], Option<&[u8]>> {
    opt(preceded(take_while1(|b| b == b' '), rest)).parse(i)
}

/// A command after login, as far as the sender check needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailCommand<'a> {
    /// `MAIL FROM:<address> params`: the address without brackets or source route (empty for
    /// the null sender `<>`).
    MailFrom(&'a [u8]),
    /// `MAIL` that does not parse.
    BadMail,
    /// RCPT, DATA, BDAT, BURL: only valid after MAIL.
    NeedsMail {
        /// It was BDAT (whose chunk follows the line).
        bdat: bool,
    },
    /// `QUIT`.
    Quit,
    /// Anything else (RSET, NOOP, HELP, VRFY, EHLO, …): relayed as it is.
    Other,
}

/// True when a (partial) command line is an `AUTH` command, whose initial response may make
/// the line up to [`MAX_AUTH_LINE`] long (RFC 4954 §4).
pub fn is_auth_line(line: &[u8]) -> bool {
    crate::codec::line::starts_with_ignore_case(line, b"AUTH ")
}

/// Classifies a command line after login (without its terminator).
pub fn parse_mail_command(line: &[u8]) -> MailCommand<'_> {
    let Ok((after, v)) = verb(line) else {
        return MailCommand::Other;
    };
    let is = |name: &[u8]| v.eq_ignore_ascii_case(name);
    if is(b"MAIL") {
        return match mail_from(after) {
            Ok((_, address)) => MailCommand::MailFrom(address),
            Err(_) => MailCommand::BadMail,
        };
    }
    if is(b"RCPT") || is(b"DATA") || is(b"BURL") {
        return MailCommand::NeedsMail { bdat: false };
    }
    if is(b"BDAT") {
        return MailCommand::NeedsMail { bdat: true };
    }
    if is(b"QUIT") {
        return MailCommand::Quit;
    }
    MailCommand::Other
}

/// The address of `RCPT TO:<address> [params]` (RFC 5321 §4.1.1.3; a source route is dropped),
/// or `None` when the line is not a well-formed RCPT command. Like `MAIL FROM`, a space after
/// the colon and a missing pair of brackets are tolerated, as Postfix does by default
/// (`strict_rfc821_envelopes = no`, postfix.org/postconf.5.html): old firmware sends
/// `RCPT TO:user@example.com`.
pub fn rcpt_to(line: &[u8]) -> Option<&[u8]> {
    let rest = line
        .get(8..)
        .filter(|_| line[..8].eq_ignore_ascii_case(b"RCPT TO:"))?;
    let rest = rest.trim_ascii_start();
    let path = match rest.strip_prefix(b"<") {
        Some(inner) => &inner[..memchr::memchr(b'>', inner)?],
        None => rest.split(|&b| b == b' ').next()?,
    };
    let address = match path.first() {
        Some(b'@') => &path[memchr::memchr(b':', path)? + 1..],
        _ => path,
    };
    let valid = !address.is_empty()
        && address.len() <= 254
        && address.contains(&b'@')
        && address.iter().all(|&b| b > b' ' && b != 0x7f);
    valid.then_some(address)
}

/// The `SIZE=` parameter of a MAIL command (RFC 1870 §6), when given.
pub fn mail_size(line: &[u8]) -> Option<u64> {
    let close = memchr::memchr(b'>', line)?;
    line[close + 1..]
        .split(|&b| b == b' ')
        .find_map(|p| p.get(5..).filter(|_| p[..5].eq_ignore_ascii_case(b"SIZE=")))
        .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
}

/// ` FROM:<[@route,@route:]address>` (RFC 5321 §4.1.2), tolerating a space after the colon and
/// a missing pair of brackets, as servers do.
fn mail_from(i: &[u8]) -> IResult<&[u8], &[u8]> {
    let (i, _) = take_while1(|b| b == b' ').parse(i)?;
    let (i, _) = nom::bytes::complete::tag_no_case(&b"FROM:"[..]).parse(i)?;
    let (i, _) = nom::bytes::complete::take_while(|b| b == b' ').parse(i)?;
    let (i, path) = if let Some(rest) = i.strip_prefix(b"<") {
        let end = rest.iter().position(|&b| b == b'>').ok_or_else(|| {
            nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::Tag))
        })?;
        (&rest[end + 1..], &rest[..end])
    } else {
        take_while1(|b| b != b' ').parse(i)?
    };
    let fail = || nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::Verify));
    let address = if path.first() == Some(&b'@') {
        // A source route: `@d1,@d2:` then a mailbox, never empty (`<@:>` is no null sender).
        let colon = path.iter().position(|&b| b == b':').ok_or_else(fail)?;
        let route_ok = path[..colon]
            .split(|&b| b == b',')
            .all(|hop| hop.len() > 1 && hop[0] == b'@');
        let mailbox = &path[colon + 1..];
        if !route_ok || mailbox.is_empty() {
            return Err(fail());
        }
        mailbox
    } else {
        path
    };
    Ok((i, address))
}

/// Parses one command line (without its terminator).
pub fn parse_command(line: &[u8]) -> Command<'_> {
    if looks_like_http(line) {
        return Command::Http;
    }
    if has_forbidden_controls(line) {
        return Command::Malformed;
    }
    let Ok((after_verb, v)) = verb(line) else {
        return Command::Unknown;
    };
    if !after_verb.is_empty() && after_verb[0] != b' ' {
        return Command::Unknown;
    }
    let arg = argument(after_verb)
        .map(|(_, a)| a)
        .unwrap_or(None)
        .map(<[u8]>::trim_ascii_end)
        .filter(|a| !a.is_empty());
    let is = |name: &[u8]| v.eq_ignore_ascii_case(name);
    if is(b"EHLO") {
        Command::Ehlo(arg.unwrap_or_default())
    } else if is(b"HELO") {
        Command::Helo(arg.unwrap_or_default())
    } else if is(b"AUTH") {
        let arg = arg.unwrap_or_default();
        let mut parts = arg.splitn(2, |&b| b == b' ');
        let mechanism = parts.next().unwrap_or_default();
        let initial_response = parts
            .next()
            .map(<[u8]>::trim_ascii)
            .filter(|r| !r.is_empty());
        Command::Auth {
            mechanism,
            initial_response: initial_response.map(Sensitive::new),
        }
    } else if is(b"STARTTLS") {
        Command::StartTls {
            has_args: arg.is_some(),
        }
    } else if is(b"QUIT") {
        Command::Quit
    } else if is(b"NOOP") {
        Command::Noop
    } else if is(b"RSET") {
        Command::Rset
    } else if [
        &b"MAIL"[..],
        b"RCPT",
        b"DATA",
        b"BDAT",
        b"BURL",
        b"VRFY",
        b"EXPN",
        b"ETRN",
    ]
    .iter()
    .any(|n| is(n))
    {
        Command::NeedsAuth
    } else {
        Command::Unknown
    }
}

/// A complete server reply: every line has the same code; `raw` is the whole reply with its
/// CRLFs, ready to relay verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<'a> {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line, after the code and separator, without the terminator.
    pub lines: Vec<&'a [u8]>,
    /// The whole reply with its CRLFs.
    pub raw: &'a [u8],
}

impl Reply<'_> {
    /// A 2xx reply.
    pub fn is_positive_completion(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The text of the first line, lossily decoded for messages and logs.
    pub fn first_text(&self) -> String {
        String::from_utf8_lossy(self.lines.first().copied().unwrap_or_default()).into_owned()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
/// Why a server's reply cannot be read.
pub enum ReplyError {
    #[error("reply line is not `NNN[ -]text`")]
    /// Not `ddd` followed by a space, a hyphen or the line end.
    Syntax,
    #[error("reply lines carry different codes")]
    /// Lines of one reply with different codes.
    MixedCodes,
    #[error("reply line or reply too long")]
    /// Over the length limit.
    TooLong,
}

fn reply_line(i: &[u8]) -> IResult<&[u8], (u16, bool, &[u8])> {
    let (i, first) = one_of("2345").parse(i)?;
    let (i, digits) = take_while_m_n(2, 2, |b: u8| b.is_ascii_digit()).parse(i)?;
    let (i, sep) = opt(one_of(" -")).parse(i)?;
    let (i, text) = match sep {
        Some(_) => rest(i)?,
        None => tag(&b""[..]).parse(i)?,
    };
    if sep.is_none() && !i.is_empty() {
        return Err(nom::Err::Error(nom::error::Error::new(
            i,
            nom::error::ErrorKind::Verify,
        )));
    }
    let code = (first as u16 - '0' as u16) * 100
        + (digits[0] - b'0') as u16 * 10
        + (digits[1] - b'0') as u16;
    Ok((i, (code, sep == Some('-'), text)))
}

/// Cuts the first complete reply out of `buf`. A reply is complete at the first line whose fourth
/// octet is not `-` (RFC 5321 §4.2.1); a code of one line that is missing its text is accepted.
pub fn next_reply(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, ReplyError> {
    let mut lines = Vec::new();
    let mut pos = 0;
    let mut code = None;
    loop {
        let rest_buf = &buf[pos..];
        let Some(lf) = rest_buf
            .iter()
            .take(MAX_REPLY_LINE)
            .position(|&b| b == b'\n')
        else {
            if rest_buf.len() >= MAX_REPLY_LINE || buf.len() >= MAX_REPLY {
                return Err(ReplyError::TooLong);
            }
            return Ok(None);
        };
        let line = &rest_buf[..lf];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (_, (c, more, text)) = reply_line(line).map_err(|_| ReplyError::Syntax)?;
        if *code.get_or_insert(c) != c {
            return Err(ReplyError::MixedCodes);
        }
        lines.push(text);
        pos += lf + 1;
        if pos > MAX_REPLY {
            return Err(ReplyError::TooLong);
        }
        if !more {
            let reply = Reply {
                code: c,
                lines,
                raw: &buf[..pos],
            };
            return Ok(Some((reply, pos)));
        }
    }
}

/// The enhanced status code (RFC 3463) at the start of a reply text, e.g. `5.7.139`.
pub fn enhanced_code(text: &[u8]) -> Option<&str> {
    let end = text.iter().position(|&b| b == b' ').unwrap_or(text.len());
    let code = std::str::from_utf8(&text[..end]).ok()?;
    let mut parts = code.split('.');
    let class = parts.next()?;
    let (subject, detail) = (parts.next()?, parts.next()?);
    let numeric = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    (matches!(class, "2" | "4" | "5")
        && numeric(subject, 3)
        && numeric(detail, 3)
        && parts.next().is_none())
    .then_some(code)
}

/// What an EHLO reply says about the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `STARTTLS` is offered.
    pub starttls: bool,
    /// Mechanisms from the `AUTH` keyword (and the legacy `AUTH=` form), upper-cased.
    pub auth: Vec<String>,
}

impl Capabilities {
    /// Reads an EHLO reply's keywords.
    pub fn from_ehlo(reply: &Reply<'_>) -> Self {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let (keyword, params) = split_keyword(line);
            if keyword.eq_ignore_ascii_case(b"STARTTLS") {
                caps.starttls = true;
            } else if keyword.eq_ignore_ascii_case(b"AUTH")
                || keyword.eq_ignore_ascii_case(b"AUTH=")
            {
                for mech in params.split(|&b| b == b' ').filter(|m| !m.is_empty()) {
                    let mech = String::from_utf8_lossy(mech).to_ascii_uppercase();
                    if !caps.auth.contains(&mech) {
                        caps.auth.push(mech);
                    }
                }
            }
        }
        caps
    }

    /// True when `AUTH` lists `mechanism` (upper case).
    pub fn supports_auth(&self, mechanism: &str) -> bool {
        self.auth.iter().any(|m| m == mechanism)
    }
}

/// Splits an EHLO line into its keyword and its parameters. The legacy `AUTH=LOGIN PLAIN` form
/// yields the keyword `AUTH=`.
fn split_keyword(line: &[u8]) -> (&[u8], &[u8]) {
    // Leading spaces are not part of the keyword: ` AUTH XOAUTH2` must still be seen as AUTH.
    let line = line.trim_ascii_start();
    if line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"AUTH=") {
        return (&line[..5], &line[5..]);
    }
    match line.iter().position(|&b| b == b' ') {
        Some(sp) => (&line[..sp], &line[sp + 1..]),
        None => (line, &[]),
    }
}

/// How the relay presents itself in its EHLO reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EhloPolicy {
    /// Offer `AUTH PLAIN LOGIN` (the local channel is acceptable for passwords).
    pub offer_auth: bool,
    /// Offer `STARTTLS` (a certificate is configured and the channel is not yet TLS).
    pub offer_starttls: bool,
}

/// Rewrites an upstream EHLO reply for the local client (RFC 5321 §4.1.1.1, RFC 4954 §3, RFC 3207 §4): upstream AUTH and
/// STARTTLS lines are dropped (the relay owns both), the relay's own are added, every other
/// keyword (SIZE, PIPELINING, CHUNKING, 8BITMIME, SMTPUTF8, DSN, ENHANCEDSTATUSCODES, …) stays.
pub fn rewrite_ehlo(reply: &Reply<'_>, policy: EhloPolicy) -> Vec<u8> {
    let mut out_lines: Vec<&[u8]> = Vec::with_capacity(reply.lines.len() + 2);
    let mut auth_slot = None;
    for (i, line) in reply.lines.iter().enumerate() {
        if i == 0 {
            out_lines.push(line);
            continue;
        }
        let (keyword, _) = split_keyword(line);
        let is_auth =
            keyword.eq_ignore_ascii_case(b"AUTH") || keyword.eq_ignore_ascii_case(b"AUTH=");
        if is_auth {
            auth_slot.get_or_insert(out_lines.len());
            continue;
        }
        if keyword.eq_ignore_ascii_case(b"STARTTLS") {
            continue;
        }
        out_lines.push(line);
    }
    if policy.offer_auth {
        let at = auth_slot.unwrap_or(out_lines.len());
        out_lines.insert(at, b"AUTH PLAIN LOGIN");
    }
    if policy.offer_starttls {
        out_lines.push(b"STARTTLS");
    }
    if out_lines.is_empty() {
        out_lines.push(b"localhost");
    }
    format_reply_bytes(250, &out_lines)
}

/// The single-line `250 <domain>` answer to HELO, from the upstream EHLO reply's first line.
pub fn helo_reply(reply: &Reply<'_>) -> Vec<u8> {
    let first = reply.lines.first().copied().unwrap_or_default();
    let domain = first.split(|&b| b == b' ').next().unwrap_or_default();
    let domain: &[u8] = if domain.is_empty() {
        b"localhost"
    } else {
        domain
    };
    format_reply_bytes(250, &[domain])
}

/// Formats a reply: `code-line` on every line but the last, `code line` on the last.
pub fn format_reply_bytes(code: u16, lines: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.iter().map(|l| l.len() + 6).sum());
    for (i, line) in lines.iter().enumerate() {
        out.extend_from_slice(code.to_string().as_bytes());
        out.push(if i + 1 == lines.len() { b' ' } else { b'-' });
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests;
