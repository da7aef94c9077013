//! The relay as an IMAP client of the upstream server: connect, secure, learn the capabilities,
//! and log in with the client's own tag so the tagged result can be relayed unchanged.

use crate::auth::upstream::UpstreamCredential;
use crate::codec::imap::{self, Frame, Framer, Response, Status};
use crate::codec::sasl;
use crate::config::UpstreamTls;
use crate::net::conn::Conn;
use crate::session::login::{AuthResult, UpstreamLogin};
use crate::session::upstream::{self, Target, UpstreamError};
use std::time::Duration;
use tokio::time::timeout;

/// Most bytes of untagged responses kept while waiting for a tagged reply before login
/// (capabilities, alerts): real servers send a few hundred.
pub const MAX_UNTAGGED_BEFORE_TAGGED: usize = 64 * 1024;

/// The relay's own tags towards upstream (the client's tag is used for the login).
const TAG_CAPABILITY: &[u8] = b"ar0";
const TAG_STARTTLS: &[u8] = b"ar1";
const TAG_LOGOUT: &[u8] = b"ar9";

/// One response from upstream (a line, with any literals it carries), copied out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The response as received, with its CRLF.
    pub raw: Vec<u8>,
}

impl Reply {
    /// The first line without its CRLF.
    pub fn line(&self) -> &[u8] {
        let end = self
            .raw
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(self.raw.len());
        let line = &self.raw[..end];
        line.strip_suffix(b"\r").unwrap_or(line)
    }

    /// The first line, parsed.
    pub fn parsed(&self) -> Option<Response<'_>> {
        imap::parse_response(self.line())
    }

    /// The text after the status (or the whole line), for messages.
    pub fn text_lossy(&self) -> String {
        match self.parsed() {
            Some(Response::Tagged { text, .. }) => String::from_utf8_lossy(text).into_owned(),
            _ => String::from_utf8_lossy(self.line()).into_owned(),
        }
    }
}

/// The end of a login: upstream's tagged result, and what came before it.
#[derive(Debug)]
pub struct LoginReply {
    /// Untagged responses and the tagged result, as received (relayed on success).
    pub raw: Vec<u8>,
    /// The tagged result (or a continuation request).
    pub tagged: Reply,
}

/// The relay as an IMAP client of one upstream server.
pub struct ImapUpstream {
    /// The connection.
    pub conn: Conn,
    /// The capability list before login.
    pub capabilities: Vec<u8>,
    /// The client's tag for the next login.
    pub login_tag: Vec<u8>,
    reply_timeout: Duration,
    /// The server's host and port, which OAUTHBEARER names (RFC 7628 §3.1).
    server: (String, u16),
}

impl ImapUpstream {
    /// Connects, reads the greeting, finishes TLS (implicit, or STARTTLS that fails closed) and
    /// learns the capabilities.
    pub async fn connect(target: &Target) -> Result<Self, UpstreamError> {
        let mut up = ImapUpstream {
            conn: upstream::open(target).await?,
            capabilities: Vec::new(),
            login_tag: Vec::new(),
            reply_timeout: target.reply_timeout,
            server: target.server(),
        };
        let greeting = timeout(target.connect_timeout, up.read_response())
            .await
            .map_err(|_| UpstreamError::Timeout("greeting"))??;
        let text = match greeting.parsed() {
            Some(Response::Untagged(rest)) => rest.to_vec(),
            _ => {
                return Err(UpstreamError::Greeting(
                    String::from_utf8_lossy(greeting.line()).into_owned(),
                ))
            }
        };
        let rest = match imap::split_status(&text) {
            Some((Status::Ok, rest)) => rest,
            // PREAUTH would be a session logged in without the account's credential (and is a
            // known STARTTLS-stripping trick); BYE is a refusal.
            _ => {
                return Err(UpstreamError::Greeting(
                    String::from_utf8_lossy(&text).into_owned(),
                ))
            }
        };
        if let Some((_, list, _)) = imap::capability_code(rest) {
            up.capabilities = list.to_vec();
        }
        if target.spec.tls == UpstreamTls::Starttls {
            if up.capabilities.is_empty() {
                up.fetch_capabilities().await?;
            }
            if !imap::has_capability(&up.capabilities, b"STARTTLS") {
                return Err(UpstreamError::StartTls(
                    "the server does not offer STARTTLS; refusing to continue in plaintext".into(),
                ));
            }
            let r = up.command(TAG_STARTTLS, &[b"STARTTLS\r\n"]).await?;
            if !matches!(
                r.tagged.parsed(),
                Some(Response::Tagged {
                    status: Status::Ok,
                    ..
                })
            ) {
                return Err(UpstreamError::StartTls(r.tagged.text_lossy()));
            }
            upstream::start_tls(&mut up.conn, target).await?;
            // RFC 3501 §6.2.1: capabilities learned before TLS are void.
            up.capabilities.clear();
        }
        if up.capabilities.is_empty() {
            up.fetch_capabilities().await?;
        }
        Ok(up)
    }

    async fn fetch_capabilities(&mut self) -> Result<(), UpstreamError> {
        let r = self.command(TAG_CAPABILITY, &[b"CAPABILITY\r\n"]).await?;
        for line in r.raw.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(list) = imap::untagged_capability(line) {
                self.capabilities = list.to_vec();
            }
        }
        Ok(())
    }

    /// Reads one response (a line and its literals).
    async fn read_response(&mut self) -> Result<Reply, UpstreamError> {
        let mut framer = Framer::new();
        upstream::read_frame(&mut self.conn, |buf| loop {
            // A literal's header: scan on, the literal's octets may be here already.
            match framer.scan(buf, imap::MAX_PRE_AUTH_LITERAL)? {
                Frame::Complete { len } => {
                    let raw = buf[..len].to_vec();
                    return Ok::<_, imap::FrameError>(Some((Reply { raw }, len)));
                }
                Frame::Incomplete => return Ok(None),
                Frame::Literal { .. } => {}
            }
        })
        .await
    }

    /// Reads responses until the one tagged `tag` or a continuation request. The untagged ones
    /// before it are kept to be relayed, up to [`MAX_UNTAGGED_BEFORE_TAGGED`] bytes: a server
    /// that sends more is treated as failing, not buffered without end.
    async fn until_tagged(&mut self, tag: &[u8]) -> Result<LoginReply, UpstreamError> {
        let mut raw = Vec::new();
        loop {
            if raw.len() > MAX_UNTAGGED_BEFORE_TAGGED {
                return Err(UpstreamError::Protocol(format!(
                    "more than {MAX_UNTAGGED_BEFORE_TAGGED} bytes of untagged responses before the tagged reply"
                )));
            }
            let r = timeout(self.reply_timeout, self.read_response())
                .await
                .map_err(|_| UpstreamError::Timeout("reply"))??;
            match r.parsed() {
                Some(Response::Tagged { tag: t, .. }) if t == tag => {
                    raw.extend_from_slice(&r.raw);
                    return Ok(LoginReply { raw, tagged: r });
                }
                Some(Response::Continuation(_)) => return Ok(LoginReply { raw, tagged: r }),
                Some(Response::Untagged(u))
                    if u.len() >= 3 && u[..3].eq_ignore_ascii_case(b"BYE") =>
                {
                    return Err(UpstreamError::Greeting(
                        String::from_utf8_lossy(r.line()).into_owned(),
                    ));
                }
                _ => raw.extend_from_slice(&r.raw),
            }
        }
    }

    /// Sends `tag` + command pieces and reads up to its tagged result (or a continuation).
    async fn command(&mut self, tag: &[u8], parts: &[&[u8]]) -> Result<LoginReply, UpstreamError> {
        let mut all: Vec<&[u8]> = vec![tag, b" "];
        all.extend_from_slice(parts);
        self.conn
            .send_parts(&all)
            .await
            .map_err(UpstreamError::Io)?;
        self.until_tagged(tag).await
    }

    /// Logs in with the client's tag: XOAUTH2 with SASL-IR when upstream offers it, else via the
    /// continuation; passwords with AUTHENTICATE PLAIN, or LOGIN when PLAIN is not offered.
    pub async fn login(
        &mut self,
        credential: &UpstreamCredential,
    ) -> Result<AuthResult<LoginReply>, UpstreamError> {
        let tag = self.login_tag.clone();
        let sasl_ir = imap::has_capability(&self.capabilities, b"SASL-IR");
        let (mechanism, blob, bearer) = match credential {
            UpstreamCredential::Bearer { .. } => {
                let (mechanism, blob) = upstream::bearer_response(credential, &self.server)?;
                (mechanism.name(), blob, Some(mechanism))
            }
            UpstreamCredential::Password { user, password } => {
                if !imap::has_capability(&self.capabilities, b"AUTH=PLAIN") {
                    let (Some(u), Some(p)) = (
                        imap::quote(user.as_bytes()),
                        imap::quote(password.expose().as_bytes()),
                    ) else {
                        return Err(UpstreamError::Protocol(
                            "the credentials cannot be sent as IMAP strings".into(),
                        ));
                    };
                    let p = zeroize::Zeroizing::new(p);
                    let r = self
                        .command(&tag, &[b"LOGIN ", &u, b" ", &p, b"\r\n"])
                        .await?;
                    return Ok(finish(r, false));
                }
                (&b"PLAIN"[..], sasl::plain_response(user, password), None)
            }
        };
        let mut r = if sasl_ir {
            self.command(
                &tag,
                &[b"AUTHENTICATE ", mechanism, b" ", blob.expose(), b"\r\n"],
            )
            .await?
        } else {
            let r = self
                .command(&tag, &[b"AUTHENTICATE ", mechanism, b"\r\n"])
                .await?;
            if !matches!(r.tagged.parsed(), Some(Response::Continuation(_))) {
                return Ok(finish(r, false));
            }
            self.conn
                .send_parts(&[blob.expose(), b"\r\n"])
                .await
                .map_err(UpstreamError::Io)?;
            self.until_tagged(&tag).await?
        };
        let mut token_rejected = false;
        if let Some(Response::Continuation(payload)) = r.tagged.parsed() {
            // An error challenge: answered here, never forwarded (RFC 7628 §3.2.3; Google's XOAUTH2 protocol, developers.google.com/gmail/imap/xoauth2-protocol).
            let answer: &[u8] = match bearer {
                Some(b) => {
                    token_rejected = sasl::parse_xoauth2_challenge(payload).token_rejected();
                    b.error_answer()
                }
                None => b"*",
            };
            self.conn
                .send_parts(&[answer, b"\r\n"])
                .await
                .map_err(UpstreamError::Io)?;
            r = self.until_tagged(&tag).await?;
        }
        Ok(finish(r, token_rejected))
    }

    /// Says goodbye, best effort.
    pub async fn logout(&mut self) {
        let _ = timeout(
            Duration::from_secs(5),
            self.command(TAG_LOGOUT, &[b"LOGOUT\r\n"]),
        )
        .await;
    }
}

fn finish(r: LoginReply, token_rejected: bool) -> AuthResult<LoginReply> {
    if matches!(
        r.tagged.parsed(),
        Some(Response::Tagged {
            status: Status::Ok,
            ..
        })
    ) {
        AuthResult::Accepted(r)
    } else {
        AuthResult::Rejected {
            reply: r,
            token_rejected,
        }
    }
}

impl UpstreamLogin for ImapUpstream {
    type Reply = LoginReply;

    fn capabilities(&self) -> Option<Vec<Vec<u8>>> {
        Some(imap::capability_words(&self.capabilities))
    }

    fn reply_code(reply: &LoginReply) -> String {
        match reply.tagged.parsed() {
            Some(imap::Response::Tagged { status, .. }) => {
                format!("{status:?}").to_ascii_uppercase()
            }
            _ => "OTHER".to_owned(),
        }
    }

    async fn authenticate(
        &mut self,
        credential: &UpstreamCredential,
    ) -> Result<AuthResult<LoginReply>, UpstreamError> {
        self.login(credential).await
    }
}
