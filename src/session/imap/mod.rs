//! The IMAP session (RFC 9051, SASL-IR RFC 4959), as the [`driver`] sees it.
//!
//! Before login the relay is an IMAP server of its own: a greeting with the capabilities cached
//! from the upstream (rewritten: the relay's AUTH=PLAIN/LOGIN, STARTTLS where configured), the
//! client's commands framed with the literal-aware framer (`+` for synchronizing literals) and
//! answered locally: CAPABILITY, NOOP, ID, LOGOUT, STARTTLS; LOGIN and AUTHENTICATE PLAIN/LOGIN
//! checked locally, then logged in upstream with the token under the client's tag; anything
//! else `BAD` until login. The upstream's tagged OK (with its post-login capabilities) is
//! relayed, and the session becomes a byte pipe.

pub mod upstream;

use crate::auth::oauth::ErrorClass;
use crate::codec::imap::{self, CapabilityPolicy, Command, Frame, FrameError, Framer, Response};
use crate::codec::line::sanitize_for_reply;
use crate::codec::sasl::{self, Credentials, Mechanism};
use crate::config::AccountConfig;
use crate::net::conn::Conn;
use crate::secret::SecretBytes;
use crate::session::client::{Challenge, ClientSide};
use crate::session::driver::{self, Action, Framing, Protocol, Refusal, Say, View};
use crate::session::login::Dial;
use crate::session::relay;
use crate::session::upstream::{Target, UpstreamError};
use crate::session::{ListenerContext, Outcome};
use std::net::SocketAddr;
use std::sync::Arc;
use upstream::{ImapUpstream, LoginReply};

const CONTINUE: &[u8] = b"+ Ready for literal data\r\n";
const BYE_TIMEOUT: &[u8] = b"* BYE [UNAVAILABLE] Timeout before authentication\r\n";
const BYE_TOO_MUCH: &[u8] = b"* BYE [TOOBIG] Too much data before authentication\r\n";
const BYE_TOO_MANY_FAILURES: &[u8] = b"* BYE Too many failed logins\r\n";
/// What a device hears when the server's side of a relayed session fails (RFC 5530).
const LOST: &[u8] = b"* BYE [UNAVAILABLE] The connection to the mail server was lost\r\n";
const BYE_SHUTTING_DOWN: &[u8] = b"* BYE [UNAVAILABLE] Server shutting down\r\n";
const BYE_LINE_TOO_LONG: &[u8] = b"* BYE [TOOBIG] Line too long\r\n";
const BAD_NO_TAG: &[u8] = b"* BAD Invalid tag\r\n";

/// Runs one IMAP session to its end.
/// `conn` is the accepted connection (any PROXY header already read); `peer` the client.
pub async fn run(ctx: Arc<ListenerContext>, conn: Conn, peer: SocketAddr) -> Outcome {
    driver::run(ctx, conn, peer, Imap::default()).await
}

/// The IMAP pre-login dialogue: the framer's state and the tag of the command being answered.
#[derive(Default)]
pub struct Imap {
    framer: Framer,
    tag: Vec<u8>,
}

impl Imap {
    /// `tag` + ` ` + `rest` + CRLF.
    fn tagged(&self, rest: &str) -> Vec<u8> {
        [&self.tag[..], b" ", rest.as_bytes(), b"\r\n"].concat()
    }

    fn tagged_reply(&self, rest: &str) -> Action {
        Action::Reply(self.tagged(rest))
    }

    /// The capability list shown to the client now.
    fn capabilities(view: &View, caps: &[Vec<u8>]) -> Vec<u8> {
        let policy = CapabilityPolicy {
            offer_auth: view.auth_allowed,
            offer_starttls: view.offer_starttls,
        };
        imap::rewrite_capabilities(&caps.join(&b' '), policy)
    }

    fn login(&self, user: &[u8], password: &[u8], view: &View) -> Action {
        if !view.auth_allowed {
            return self.tagged_reply("NO [PRIVACYREQUIRED] LOGIN is disabled until TLS is active");
        }
        match (sasl::parse_username(user), sasl::parse_password(password)) {
            (Ok(username), Ok(password)) => Action::Login(Credentials { username, password }),
            _ => Action::Unusable,
        }
    }

    fn authenticate(&self, mechanism: &[u8], ir: Option<&[u8]>, view: &View) -> Action {
        if !view.auth_allowed {
            return self.tagged_reply(
                "NO [PRIVACYREQUIRED] Authentication is disabled until TLS is active",
            );
        }
        match Mechanism::parse(mechanism) {
            Some(mechanism) => Action::Authenticate {
                mechanism,
                initial_response: ir.map(|r| SecretBytes::new(r.to_vec())),
            },
            None => self.tagged_reply("NO Unsupported authentication mechanism"),
        }
    }

    fn starttls(&self, view: &View) -> Action {
        if view.tls_active {
            self.tagged_reply("BAD TLS is already active")
        } else if !view.offer_starttls {
            self.tagged_reply("BAD STARTTLS not supported")
        } else {
            Action::StartTls(self.tagged("OK Begin TLS negotiation now"))
        }
    }
}

impl Dial for Imap {
    type Upstream = ImapUpstream;

    /// Connects and secures; the login will carry the client's tag.
    async fn dial(&self, target: &Target) -> Result<ImapUpstream, UpstreamError> {
        let mut up = ImapUpstream::connect(target).await?;
        up.login_tag = self.tag.clone();
        Ok(up)
    }
}

impl Protocol for Imap {
    const CHALLENGE: Challenge = Challenge {
        prefix: b"+ ",
        max_line: 12288,
    };

    fn default_capabilities() -> Vec<Vec<u8>> {
        vec![b"IMAP4rev1".to_vec()]
    }

    fn greeting(&self, view: &View, caps: &[Vec<u8>]) -> Vec<u8> {
        let list = Self::capabilities(view, caps);
        [&b"* OK [CAPABILITY "[..], &list, b"] ready\r\n"].concat()
    }

    fn frame(&mut self, buffered: &[u8]) -> Framing {
        loop {
            return match self.framer.scan(buffered, imap::MAX_PRE_AUTH_LITERAL) {
                Ok(Frame::Incomplete) => Framing::Incomplete,
                Ok(Frame::Literal { sync: true, .. }) => Framing::Send(CONTINUE),
                Ok(Frame::Literal { sync: false, .. }) => continue,
                Ok(Frame::Complete { len }) => Framing::Command {
                    body: len,
                    used: len,
                },
                Err(e) => Framing::TooLong(match (e, imap::tag_of(buffered)) {
                    (FrameError::LiteralTooBig { .. }, Some(tag)) => {
                        [tag, b" BAD [TOOBIG] Literal too big\r\n"].concat()
                    }
                    _ => BYE_LINE_TOO_LONG.to_vec(),
                }),
            };
        }
    }

    fn command(&mut self, command: &[u8], view: &View, caps: &[Vec<u8>]) -> Action {
        if crate::codec::line::is_http_request_line(command) {
            tracing::info!("HTTP request on the IMAP port; closing");
            return Action::Close(Vec::new(), Outcome::Refused);
        }
        let parsed = match imap::parse_command(command) {
            Ok(p) => p,
            Err(imap::ParseError::NoTag) => return Action::Reply(BAD_NO_TAG.to_vec()),
            Err(imap::ParseError::Syntax) => {
                self.tag = imap::tag_of(command).unwrap_or(b"*").to_vec();
                return self.tagged_reply("BAD Syntax error in command");
            }
        };
        self.tag = parsed.tag.to_vec();
        match parsed.command {
            Command::Capability => {
                let list = Self::capabilities(view, caps);
                let mut out = [&b"* CAPABILITY "[..], &list, b"\r\n"].concat();
                out.extend(self.tagged("OK CAPABILITY completed"));
                Action::Reply(out)
            }
            Command::Noop => self.tagged_reply("OK NOOP completed"),
            Command::Id => {
                let mut out = b"* ID NIL\r\n".to_vec();
                out.extend(self.tagged("OK ID completed"));
                Action::Reply(out)
            }
            Command::Logout => {
                let mut out = b"* BYE Logging out\r\n".to_vec();
                out.extend(self.tagged("OK LOGOUT completed"));
                Action::Close(out, Outcome::ClientLeft)
            }
            Command::StartTls => self.starttls(view),
            Command::Other => self.tagged_reply("BAD Log in first"),
            Command::Login { user, password } => self.login(&user, password.expose(), view),
            Command::Authenticate {
                mechanism,
                initial_response,
            } => self.authenticate(mechanism, initial_response.map(|r| *r.expose()), view),
        }
    }

    fn say(&self, what: Say<'_>) -> Vec<u8> {
        let fixed: &[u8] = match what {
            Say::Timeout => BYE_TIMEOUT,
            Say::TooMuch => BYE_TOO_MUCH,
            Say::ShuttingDown => BYE_SHUTTING_DOWN,
            Say::TooManyFailures => BYE_TOO_MANY_FAILURES,
            Say::LineTooLong => BYE_LINE_TOO_LONG,
            Say::BadCredentials => return self.tagged("NO [AUTHENTICATIONFAILED] Invalid credentials"),
            Say::Throttled => return self.tagged("NO [UNAVAILABLE] Too many failed logins from this address or for this user, try again later"),
            Say::Cancelled => return self.tagged("BAD AUTHENTICATE cancelled"),
            Say::BadBase64 => return self.tagged("BAD Invalid base64"),
            Say::Malformed => return self.tagged("BAD Malformed authentication response"),
            // RFC 5530 response codes (README: What a device may be told).
            Say::Token { class, text } => {
                return match class {
                    ErrorClass::Temporary => self.tagged(&format!("NO [UNAVAILABLE] {text}")),
                    ErrorClass::Reauthorize => {
                        let mut out = format!("* OK [ALERT] {text}\r\n").into_bytes();
                        out.extend(self.tagged(&format!("NO [AUTHENTICATIONFAILED] {text}")));
                        out
                    }
                    ErrorClass::Configuration => {
                        self.tagged(&format!("NO [CONTACTADMIN] {text}"))
                    }
                }
            }
            Say::UpstreamUnavailable { reason } => {
                return self.tagged(&format!(
                    "NO [UNAVAILABLE] Upstream unreachable ({reason}), try again later"
                ))
            }
        };
        fixed.to_vec()
    }

    fn accepted(&self, reply: &LoginReply) -> Vec<u8> {
        imap::rewrite_login_result(&reply.raw)
    }

    /// `[UNAVAILABLE]` stays temporary; anything else is a failed login.
    fn refused(&self, reply: &LoginReply) -> Refusal {
        let text = reply.tagged.text_lossy();
        let detail = sanitize_for_reply(&text, 300);
        tracing::warn!(upstream_reply = %detail, "upstream refused the login");
        if matches!(reply.tagged.parsed(), Some(Response::Tagged { .. }))
            && text.starts_with("[UNAVAILABLE]")
        {
            return Refusal {
                reply: self.tagged(&format!(
                    "NO [UNAVAILABLE] Temporary authentication failure (upstream said: {detail})"
                )),
                temporary: true,
            };
        }
        Refusal {
            reply: self.tagged(&format!(
                "NO [AUTHENTICATIONFAILED] Upstream server refused the login ({detail})"
            )),
            temporary: false,
        }
    }

    async fn probe(target: &Target) -> Result<Vec<Vec<u8>>, UpstreamError> {
        let mut up = ImapUpstream::connect(target).await?;
        up.logout().await;
        Ok(imap::capability_words(&up.capabilities))
    }

    async fn after_login(
        self,
        ctx: Arc<ListenerContext>,
        client: ClientSide,
        upstream: ImapUpstream,
        account: Arc<AccountConfig>,
    ) -> Outcome {
        relay::run_authenticated(&ctx, client.conn, upstream.conn, &account.id, LOST).await
    }
}

#[cfg(test)]
mod tests;
