//! The server's side of IMAP as the relay needs it: capability lists (rewritten for the device
//! before and after login) and response lines (RFC 9051 §7).

use super::tag_of;

/// How the relay presents its capabilities before login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapabilityPolicy {
    /// The local channel is acceptable for passwords (loopback or TLS).
    pub offer_auth: bool,
    /// Offer STARTTLS (a certificate is configured and the channel is not yet TLS).
    pub offer_starttls: bool,
}

/// Rewrites a capability list (the atoms after `CAPABILITY`) (RFC 9051 §7.2.2, RFC 4959): upstream
/// `AUTH=…`, `LOGINDISABLED`, `STARTTLS`, `SASL-IR` and `LITERAL+`/`LITERAL-` go; the relay's
/// `AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-` (or `LOGINDISABLED`) and its own `STARTTLS` come in;
/// everything else keeps its order.
pub fn rewrite_capabilities(caps: &[u8], policy: CapabilityPolicy) -> Vec<u8> {
    let mut out: Vec<&[u8]> = Vec::new();
    for cap in caps.split(|&b| b == b' ').filter(|c| !c.is_empty()) {
        let upper = cap.to_ascii_uppercase();
        let dropped = upper.starts_with(b"AUTH=")
            || [
                &b"LOGINDISABLED"[..],
                b"STARTTLS",
                b"SASL-IR",
                b"LITERAL+",
                b"LITERAL-",
            ]
            .contains(&upper.as_slice());
        if !dropped {
            out.push(cap);
        }
    }
    if policy.offer_auth {
        out.extend_from_slice(&[b"AUTH=PLAIN", b"AUTH=LOGIN", b"SASL-IR"]);
    } else {
        out.push(b"LOGINDISABLED");
    }
    out.push(b"LITERAL-");
    if policy.offer_starttls {
        out.push(b"STARTTLS");
    }
    out.join(&b' ')
}

/// The capabilities of a login's result (the tagged OK's code, or an untagged CAPABILITY before
/// it): upstream's own, which the client uses from now on through the pipe, without what only
/// means something before login (`AUTH=…`, `SASL-IR`, `LOGINDISABLED`, `STARTTLS`).
pub fn post_login_capabilities(caps: &[u8]) -> Vec<u8> {
    caps.split(|&b| b == b' ')
        .filter(|c| {
            let upper = c.to_ascii_uppercase();
            !c.is_empty()
                && !upper.starts_with(b"AUTH=")
                && ![&b"LOGINDISABLED"[..], b"STARTTLS", b"SASL-IR"].contains(&upper.as_slice())
        })
        .collect::<Vec<_>>()
        .join(&b' ')
}

/// Rewrites every capability list in a login's result (lines ending in CRLF) with
/// [`post_login_capabilities`]; other lines are kept byte for byte.
pub fn rewrite_login_result(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let body = line
            .strip_suffix(b"\r\n")
            .or_else(|| line.strip_suffix(b"\n"))
            .unwrap_or(line);
        let ending = &line[body.len()..];
        if let Some(list) = untagged_capability(body) {
            out.extend_from_slice(&body[..body.len() - list.len()]);
            out.extend_from_slice(&post_login_capabilities(list));
        } else if let Some((before, list, after)) = capability_code(body) {
            out.extend_from_slice(before);
            out.extend_from_slice(&post_login_capabilities(list));
            out.extend_from_slice(after);
        } else {
            out.extend_from_slice(body);
        }
        out.extend_from_slice(ending);
    }
    out
}

/// Splits a response line into the part before a `[CAPABILITY …]` code's list, the list, and the
/// part after it. `None` when the line carries no such code.
pub fn capability_code(line: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let marker = b"[CAPABILITY ";
    let at = line
        .windows(marker.len())
        .position(|w| w.eq_ignore_ascii_case(marker))?;
    let list_start = at + marker.len();
    let close = line[list_start..].iter().position(|&b| b == b']')? + list_start;
    Some((
        &line[..list_start],
        &line[list_start..close],
        &line[close..],
    ))
}

/// The list of an untagged `* CAPABILITY …` response line (without CRLF).
pub fn untagged_capability(line: &[u8]) -> Option<&[u8]> {
    let prefix = b"* CAPABILITY ";
    (line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &line[prefix.len()..])
}

/// What a server response line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response<'a> {
    /// `* …`
    Untagged(&'a [u8]),
    /// `+ …`
    Continuation(&'a [u8]),
    /// `tag OK|NO|BAD …`: the status and the text after it.
    Tagged {
        /// The tag it answers.
        tag: &'a [u8],
        /// OK, NO, BAD, PREAUTH or BYE.
        status: Status,
        /// The text after the status.
        text: &'a [u8],
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The status word of a response (RFC 9051 §7.1).
pub enum Status {
    /// `OK`: success.
    Ok,
    /// `NO`: failure.
    No,
    /// `BAD`: a protocol error.
    Bad,
    /// `PREAUTH`: a greeting of a session already logged in.
    Preauth,
    /// `BYE`: the server is closing.
    Bye,
}

/// Classifies one response line (without CRLF).
pub fn parse_response(line: &[u8]) -> Option<Response<'_>> {
    if let Some(rest) = line.strip_prefix(b"* ") {
        return Some(Response::Untagged(rest));
    }
    if line == b"+" {
        return Some(Response::Continuation(b""));
    }
    if let Some(rest) = line.strip_prefix(b"+ ") {
        return Some(Response::Continuation(rest));
    }
    let tag = tag_of(line)?;
    let rest = line[tag.len()..].strip_prefix(b" ")?;
    let word_end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    let status = status_word(&rest[..word_end])?;
    let text = rest.get(word_end + 1..).unwrap_or_default();
    Some(Response::Tagged { tag, status, text })
}

/// The status word at the start of an untagged response's text (`OK [CAPABILITY …] ready`)
/// and the text after it.
pub fn split_status(text: &[u8]) -> Option<(Status, &[u8])> {
    let (word, rest) = match text.iter().position(|&b| b == b' ') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, &[][..]),
    };
    Some((status_word(word)?, rest))
}

/// The words of a capability list.
pub fn capability_words(list: &[u8]) -> Vec<Vec<u8>> {
    list.split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// True when the space-separated list holds `cap` (case-insensitively).
pub fn has_capability(list: &[u8], cap: &[u8]) -> bool {
    list.split(|&b| b == b' ')
        .any(|c| c.eq_ignore_ascii_case(cap))
}

/// OK / NO / BAD / PREAUTH / BYE, case-insensitively.
pub fn status_word(word: &[u8]) -> Option<Status> {
    let is = |w: &[u8]| word.eq_ignore_ascii_case(w);
    if is(b"OK") {
        Some(Status::Ok)
    } else if is(b"NO") {
        Some(Status::No)
    } else if is(b"BAD") {
        Some(Status::Bad)
    } else if is(b"PREAUTH") {
        Some(Status::Preauth)
    } else if is(b"BYE") {
        Some(Status::Bye)
    } else {
        None
    }
}
