//! IMAP (RFC 3501, RFC 9051) pre-authentication codec: a streaming, literal-aware framer, the
//! parser for the commands a client may send before logging in, and the capability rewrite.
//!
//! The framer finds where a command (or a server response) ends without ever looking inside a
//! literal: `{n}` octets are counted, not scanned, and a `{n}` inside a quoted string is text.

use crate::secret::Sensitive;
use std::borrow::Cow;

/// Longest line (between literals) before login. RFC 7162 §4: accept at least 8192.
pub const MAX_LINE: usize = 8192;
/// Longest literal accepted before login (credentials and ID values only).
pub const MAX_PRE_AUTH_LITERAL: u64 = 8192;
/// Longest non-synchronizing literal (LITERAL-, RFC 7888; RFC 9051 §4.3).
pub const MAX_NON_SYNC_LITERAL: u64 = 4096;
/// Longest whole command before login.
pub const MAX_COMMAND: usize = 65536;

/// What the framer found in the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// More bytes are needed.
    Incomplete,
    /// A line ended with a literal marker. With `sync`, the client waits for a `+`
    /// continuation before sending the `len` octets.
    Literal {
        /// The literal's announced size in octets.
        len: u64,
        /// A synchronizing literal (`{n}`, not `{n+}`).
        sync: bool,
    },
    /// A whole command (or response) of `len` bytes, literals included.
    Complete {
        /// The bytes the command takes, its CRLF included.
        len: usize,
    },
}

/// Why a command cannot be framed within the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A line without its end within the line limit.
    #[error("line too long")]
    LineTooLong,
    /// A literal larger than allowed in this state.
    #[error("literal too big")]
    LiteralTooBig {
        /// It was a synchronizing literal (the client waits for a `+`).
        sync: bool,
    },
    /// The whole command, literals included, is over the limit.
    #[error("command too long")]
    CommandTooLong,
}

/// Streaming framer. Feed it the unconsumed bytes (starting at the current command) again and
/// again as they grow; it remembers how far it got, so every byte is examined once.
#[derive(Debug, Default, Clone)]
pub struct Framer {
    pos: usize,
    line_start: usize,
    in_quote: bool,
    escape: bool,
    literal_remaining: u64,
}

impl Framer {
    /// A framer at the start of a command.
    pub fn new() -> Self {
        Framer::default()
    }

    /// Examines `buf` (which must start where the current command starts and only grow between
    /// calls until `Complete` is returned; the framer then resets for the next command).
    pub fn scan(&mut self, buf: &[u8], max_literal: u64) -> Result<Frame, FrameError> {
        if self.literal_remaining > 0 {
            let available = (buf.len() - self.pos) as u64;
            let take = available.min(self.literal_remaining);
            self.pos += take as usize;
            self.literal_remaining -= take;
            if self.literal_remaining > 0 {
                return Ok(Frame::Incomplete);
            }
            self.line_start = self.pos;
        }
        if self.pos > MAX_COMMAND {
            return Err(FrameError::CommandTooLong);
        }
        // Scan the current line for its end, tracking quoted strings.
        while self.pos < buf.len() {
            if self.pos - self.line_start >= MAX_LINE {
                return Err(FrameError::LineTooLong);
            }
            let b = buf[self.pos];
            self.pos += 1;
            if self.in_quote {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_quote = false;
                } else if b == b'\n' {
                    // A quoted string cannot hold a line end: the line ends here anyway.
                    self.in_quote = false;
                    return self.line_end(buf, max_literal);
                }
                continue;
            }
            if b == b'"' {
                self.in_quote = true;
            } else if b == b'\n' {
                return self.line_end(buf, max_literal);
            }
        }
        Ok(Frame::Incomplete)
    }

    /// Called with `pos` just past a LF: decides between a literal marker and the command's end.
    fn line_end(&mut self, buf: &[u8], max_literal: u64) -> Result<Frame, FrameError> {
        let line = &buf[self.line_start..self.pos - 1];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some((len, sync)) = literal_marker(line) {
            if len > max_literal || (!sync && len > MAX_NON_SYNC_LITERAL) {
                return Err(FrameError::LiteralTooBig { sync });
            }
            self.literal_remaining = len;
            self.line_start = self.pos;
            return Ok(Frame::Literal { len, sync });
        }
        let len = self.pos;
        *self = Framer::default();
        Ok(Frame::Complete { len })
    }
}

/// `{n}` or `{n+}` at the end of a line, starting a token (after SP or `(`, or at the start).
fn literal_marker(line: &[u8]) -> Option<(u64, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    if open > 0 && !matches!(line[open - 1], b' ' | b'(') {
        return None;
    }
    let mut digits = &inner[open + 1..];
    let sync = match digits.strip_suffix(b"+") {
        Some(d) => {
            digits = d;
            false
        }
        None => true,
    };
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
    Some((n, sync))
}

/// The tag of a command (its first token), for error replies even when the rest is unusable.
pub fn tag_of(command: &[u8]) -> Option<&[u8]> {
    let end = command
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
        .unwrap_or(command.len());
    let tag = &command[..end];
    (!tag.is_empty() && tag.iter().all(|&b| is_tag_char(b))).then_some(tag)
}

fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

fn is_tag_char(b: u8) -> bool {
    is_astring_char(b) && b != b'+'
}

/// A client command before login, as views into the command's bytes (quoted strings with
/// escapes are unescaped into owned bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `LOGIN user password`.
    Login {
        /// The username, unquoted.
        user: Cow<'a, [u8]>,
        /// The password, unquoted (never logged).
        password: Sensitive<Cow<'a, [u8]>>,
    },
    /// `AUTHENTICATE mechanism [initial-response]` (RFC 4959).
    Authenticate {
        /// The mechanism name as sent.
        mechanism: &'a [u8],
        /// The initial response, when given (never logged).
        initial_response: Option<Sensitive<&'a [u8]>>,
    },
    /// `CAPABILITY`.
    Capability,
    /// `NOOP`.
    Noop,
    /// `LOGOUT`.
    Logout,
    /// `STARTTLS`.
    StartTls,
    /// `ID` (RFC 2971).
    Id,
    /// Any other command: not valid before login.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
/// Why a command line does not parse.
pub enum ParseError {
    #[error("the command has no valid tag")]
    /// No valid tag: answered with an untagged `BAD`.
    NoTag,
    #[error("syntax error")]
    /// A tag, but the rest is not a valid command: a tagged `BAD`.
    Syntax,
}

/// A parsed command with its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged<'a> {
    /// The client's tag.
    pub tag: &'a [u8],
    /// The command after it.
    pub command: Command<'a>,
}

/// Parses one complete command (as delimited by the [`Framer`], with its final CRLF).
pub fn parse_command(cmd: &[u8]) -> Result<Tagged<'_>, ParseError> {
    let body = cmd.strip_suffix(b"\n").ok_or(ParseError::Syntax)?;
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let tag = tag_of(body).ok_or(ParseError::NoTag)?;
    let rest = body[tag.len()..]
        .strip_prefix(b" ")
        .ok_or(ParseError::Syntax)?;
    let verb_end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    let verb = &rest[..verb_end];
    let args = &rest[verb_end..];
    let is = |v: &[u8]| verb.eq_ignore_ascii_case(v);
    let command = if is(b"LOGIN") {
        let mut p = Parser {
            input: args,
            pos: 0,
        };
        p.space()?;
        let user = p.astring()?;
        p.space()?;
        let password = p.astring()?;
        if p.pos != args.len() {
            return Err(ParseError::Syntax);
        }
        Command::Login {
            user,
            password: Sensitive::new(password),
        }
    } else if is(b"AUTHENTICATE") {
        let mut parts = args
            .strip_prefix(b" ")
            .ok_or(ParseError::Syntax)?
            .split(|&b| b == b' ');
        let mechanism = parts
            .next()
            .filter(|m| !m.is_empty() && m.iter().all(|&b| is_atom_char(b)))
            .ok_or(ParseError::Syntax)?;
        let initial_response = parts.next();
        if parts.next().is_some() || initial_response.is_some_and(<[u8]>::is_empty) {
            return Err(ParseError::Syntax);
        }
        Command::Authenticate {
            mechanism,
            initial_response: initial_response.map(Sensitive::new),
        }
    } else if !args.is_empty()
        && (is(b"CAPABILITY") || is(b"NOOP") || is(b"LOGOUT") || is(b"STARTTLS"))
    {
        return Err(ParseError::Syntax);
    } else if is(b"CAPABILITY") {
        Command::Capability
    } else if is(b"NOOP") {
        Command::Noop
    } else if is(b"LOGOUT") {
        Command::Logout
    } else if is(b"STARTTLS") {
        Command::StartTls
    } else if is(b"ID") {
        Command::Id
    } else if verb.is_empty() || !verb.iter().all(|&b| is_atom_char(b)) {
        return Err(ParseError::Syntax);
    } else {
        Command::Other
    };
    Ok(Tagged { tag, command })
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn space(&mut self) -> Result<(), ParseError> {
        if self.input.get(self.pos) == Some(&b' ') {
            self.pos += 1;
            Ok(())
        } else {
            Err(ParseError::Syntax)
        }
    }

    /// atom / quoted / literal (the literal's octets follow its marker's CRLF).
    fn astring(&mut self) -> Result<Cow<'a, [u8]>, ParseError> {
        match self.input.get(self.pos) {
            Some(b'"') => self.quoted(),
            Some(b'{') => self.literal(),
            Some(_) => {
                let start = self.pos;
                while self
                    .input
                    .get(self.pos)
                    .is_some_and(|&b| is_astring_char(b))
                {
                    self.pos += 1;
                }
                if self.pos == start {
                    return Err(ParseError::Syntax);
                }
                Ok(Cow::Borrowed(&self.input[start..self.pos]))
            }
            None => Err(ParseError::Syntax),
        }
    }

    fn quoted(&mut self) -> Result<Cow<'a, [u8]>, ParseError> {
        self.pos += 1;
        let start = self.pos;
        let mut owned: Option<Vec<u8>> = None;
        loop {
            let b = *self.input.get(self.pos).ok_or(ParseError::Syntax)?;
            match b {
                b'"' => {
                    let s = match owned {
                        Some(v) => Cow::Owned(v),
                        None => Cow::Borrowed(&self.input[start..self.pos]),
                    };
                    self.pos += 1;
                    return Ok(s);
                }
                b'\\' => {
                    let next = *self.input.get(self.pos + 1).ok_or(ParseError::Syntax)?;
                    if next != b'"' && next != b'\\' {
                        return Err(ParseError::Syntax);
                    }
                    owned
                        .get_or_insert_with(|| self.input[start..self.pos].to_vec())
                        .push(next);
                    self.pos += 2;
                }
                b'\r' | b'\n' | 0 => return Err(ParseError::Syntax),
                _ => {
                    if let Some(v) = owned.as_mut() {
                        v.push(b);
                    }
                    self.pos += 1;
                }
            }
        }
    }

    fn literal(&mut self) -> Result<Cow<'a, [u8]>, ParseError> {
        let close = self.input[self.pos..]
            .iter()
            .position(|&b| b == b'}')
            .ok_or(ParseError::Syntax)?
            + self.pos;
        let digits = &self.input[self.pos + 1..close];
        let digits = digits.strip_suffix(b"+").unwrap_or(digits);
        let n: usize = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or(ParseError::Syntax)?;
        let after = &self.input[close + 1..];
        let crlf = if after.starts_with(b"\r\n") {
            2
        } else if after.starts_with(b"\n") {
            1
        } else {
            return Err(ParseError::Syntax);
        };
        let start = close + 1 + crlf;
        let end = start
            .checked_add(n)
            .filter(|&e| e <= self.input.len())
            .ok_or(ParseError::Syntax)?;
        self.pos = end;
        Ok(Cow::Borrowed(&self.input[start..end]))
    }
}

/// Makes a byte string safe to send as an IMAP quoted string, or `None` when it cannot be one.
pub fn quote(s: &[u8]) -> Option<Vec<u8>> {
    if s.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'"');
    for &b in s {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    Some(out)
}

mod response;
pub use response::*;

#[cfg(test)]
mod tests;
