//! The POP3 session (RFC 1939, CAPA RFC 2449, AUTH RFC 5034), as the [`driver`] sees it.
//!
//! Before login the relay is a POP3 server of its own: its greeting (no APOP timestamp: APOP is
//! not offered), CAPA from the upstream's cached list (rewritten: the relay's USER and SASL
//! PLAIN LOGIN, STLS where configured), USER/PASS and AUTH PLAIN/LOGIN checked locally,
//! mailbox commands refused until login. After the local check passed, the account's upstream
//! is dialled and logged in with the token; its `+OK` is relayed, and the session becomes a
//! byte pipe.

pub mod upstream;

use crate::auth::oauth::ErrorClass;
use crate::codec::line::{next_command, sanitize_for_reply};
use crate::codec::pop3::{self, CapaPolicy, Command, MAX_AUTH_LINE, MAX_COMMAND_LINE};
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
use upstream::{Line, Pop3Upstream};

const REPLY_GREETING: &[u8] = b"+OK ready\r\n";
const REPLY_USER_OK: &[u8] = b"+OK\r\n";
const REPLY_NO_USER: &[u8] = b"-ERR No USER given\r\n";
const REPLY_AFTER_USER: &[u8] = b"-ERR Only PASS or QUIT may follow USER\r\n";
const REPLY_AUTH_LIST: &[u8] = b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n";
const REPLY_UNKNOWN_MECHANISM: &[u8] = b"-ERR Unsupported authentication mechanism\r\n";
const REPLY_CANCELLED: &[u8] = b"-ERR Authentication cancelled\r\n";
const REPLY_BAD_BASE64: &[u8] = b"-ERR Cannot decode base64\r\n";
const REPLY_MALFORMED_SASL: &[u8] = b"-ERR Malformed authentication response\r\n";
const REPLY_APOP: &[u8] = b"-ERR APOP is not supported; log in with USER/PASS or AUTH PLAIN\r\n";
/// The reply to a wrong password.
pub const REPLY_AUTH_FAILED: &[u8] = b"-ERR [AUTH] Authentication failed\r\n";
const REPLY_THROTTLED: &[u8] = b"-ERR [SYS/TEMP] Too many failed logins from this address or for this user, try again later\r\n";
/// What a device hears when the server's side of a relayed session fails (RFC 3206).
const LOST: &[u8] = b"-ERR [SYS/TEMP] The connection to the mail server was lost\r\n";
const REPLY_NEEDS_AUTH: &[u8] = b"-ERR [AUTH] Authenticate first\r\n";
const REPLY_UNKNOWN: &[u8] = b"-ERR Unknown command\r\n";
const REPLY_MALFORMED: &[u8] = b"-ERR Invalid command\r\n";
const REPLY_LINE_TOO_LONG: &[u8] = b"-ERR Line too long, closing connection\r\n";
const REPLY_TOO_MUCH: &[u8] =
    b"-ERR [SYS/PERM] Too much data before authentication, closing connection\r\n";
const REPLY_TOO_MANY_FAILURES: &[u8] =
    b"-ERR [SYS/PERM] Too many failed logins, closing connection\r\n";
const REPLY_TIMEOUT: &[u8] =
    b"-ERR [SYS/TEMP] Timeout before authentication, closing connection\r\n";
const REPLY_SHUTTING_DOWN: &[u8] = b"-ERR [SYS/TEMP] Server shutting down, closing connection\r\n";
const REPLY_ENCRYPTION_REQUIRED: &[u8] = b"-ERR [AUTH] TLS is required before authentication\r\n";
const REPLY_TLS_READY: &[u8] = b"+OK Begin TLS negotiation\r\n";
const REPLY_TLS_ACTIVE: &[u8] = b"-ERR Command not permitted when TLS active\r\n";
const REPLY_TLS_UNAVAILABLE: &[u8] = b"-ERR STLS not available\r\n";
const REPLY_BYE: &[u8] = b"+OK Bye\r\n";

/// Runs one POP3 session to its end.
/// `conn` is the accepted connection (any PROXY header already read); `peer` the client.
pub async fn run(ctx: Arc<ListenerContext>, conn: Conn, peer: SocketAddr) -> Outcome {
    driver::run(ctx, conn, peer, Pop3::default()).await
}

/// The POP3 pre-login dialogue: the name given with USER, waiting for PASS.
#[derive(Default)]
pub struct Pop3 {
    user: Option<String>,
}

fn reply(bytes: &[u8]) -> Action {
    Action::Reply(bytes.to_vec())
}

impl Pop3 {
    fn auth(mechanism: &[u8], ir: Option<&[u8]>, view: &View) -> Action {
        if !view.auth_allowed {
            return reply(REPLY_ENCRYPTION_REQUIRED);
        }
        match Mechanism::parse(mechanism) {
            Some(mechanism) => Action::Authenticate {
                mechanism,
                initial_response: ir.map(|r| SecretBytes::new(r.to_vec())),
            },
            None => reply(REPLY_UNKNOWN_MECHANISM),
        }
    }

    fn capa(view: &View, caps: &[Vec<u8>]) -> Action {
        let lines: Vec<&[u8]> = caps.iter().map(Vec::as_slice).collect();
        let policy = CapaPolicy {
            offer_auth: view.auth_allowed,
            offer_stls: view.offer_starttls,
        };
        Action::Reply(pop3::rewrite_capa(&lines, policy))
    }

    fn stls(view: &View) -> Action {
        if view.tls_active {
            reply(REPLY_TLS_ACTIVE)
        } else if !view.offer_starttls {
            reply(REPLY_TLS_UNAVAILABLE)
        } else {
            Action::StartTls(REPLY_TLS_READY.to_vec())
        }
    }
}

impl Dial for Pop3 {
    type Upstream = Pop3Upstream;

    async fn dial(&self, target: &Target) -> Result<Pop3Upstream, UpstreamError> {
        Pop3Upstream::connect(target).await
    }
}

impl Protocol for Pop3 {
    const CHALLENGE: Challenge = Challenge {
        prefix: b"+ ",
        max_line: MAX_AUTH_LINE,
    };

    fn default_capabilities() -> Vec<Vec<u8>> {
        // RFC 2449 §6: TOP and UIDL are the optional commands nearly every server has.
        vec![b"TOP".to_vec(), b"UIDL".to_vec()]
    }

    fn greeting(&self, _view: &View, _caps: &[Vec<u8>]) -> Vec<u8> {
        REPLY_GREETING.to_vec()
    }

    fn frame(&mut self, buffered: &[u8]) -> Framing {
        match next_command(buffered, MAX_COMMAND_LINE, MAX_AUTH_LINE, pop3::may_be_long) {
            Ok(Some((body, used))) => Framing::Command { body, used },
            Ok(None) => Framing::Incomplete,
            Err(_) => Framing::TooLong(REPLY_LINE_TOO_LONG.to_vec()),
        }
    }

    fn command(&mut self, line: &[u8], view: &View, caps: &[Vec<u8>]) -> Action {
        let command = pop3::parse_command(line);
        // RFC 1939 §7: after a positive USER only PASS or QUIT may follow.
        let pending_user = self.user.take();
        if pending_user.is_some() && !matches!(command, Command::Pass(_) | Command::Quit) {
            return reply(REPLY_AFTER_USER);
        }
        match command {
            Command::User(_) if !view.auth_allowed => reply(REPLY_ENCRYPTION_REQUIRED),
            Command::User(name) => match sasl::parse_username(name) {
                Ok(user) => {
                    self.user = Some(user);
                    reply(REPLY_USER_OK)
                }
                Err(_) => reply(REPLY_MALFORMED),
            },
            Command::Pass(password) => {
                match (pending_user, sasl::parse_password(password.expose())) {
                    (None, _) => reply(REPLY_NO_USER),
                    (Some(username), Ok(password)) => {
                        Action::Login(Credentials { username, password })
                    }
                    (Some(_), Err(_)) => Action::Unusable,
                }
            }
            Command::Auth {
                mechanism: None, ..
            } => reply(REPLY_AUTH_LIST),
            Command::Auth {
                mechanism: Some(m),
                initial_response,
            } => Self::auth(m, initial_response.map(|r| *r.expose()), view),
            Command::Apop => reply(REPLY_APOP),
            Command::Capa => Self::capa(view, caps),
            Command::Stls => Self::stls(view),
            Command::Quit => Action::Close(REPLY_BYE.to_vec(), Outcome::ClientLeft),
            Command::NeedsAuth => reply(REPLY_NEEDS_AUTH),
            Command::Http => {
                tracing::info!("HTTP request on the POP3 port; closing");
                Action::Close(Vec::new(), Outcome::Refused)
            }
            Command::Malformed => reply(REPLY_MALFORMED),
            Command::Unknown => reply(REPLY_UNKNOWN),
        }
    }

    fn say(&self, what: Say<'_>) -> Vec<u8> {
        let fixed: &[u8] = match what {
            Say::Timeout => REPLY_TIMEOUT,
            Say::TooMuch => REPLY_TOO_MUCH,
            Say::ShuttingDown => REPLY_SHUTTING_DOWN,
            Say::TooManyFailures => REPLY_TOO_MANY_FAILURES,
            Say::LineTooLong => REPLY_LINE_TOO_LONG,
            Say::BadCredentials => REPLY_AUTH_FAILED,
            Say::Throttled => REPLY_THROTTLED,
            Say::Cancelled => REPLY_CANCELLED,
            Say::BadBase64 => REPLY_BAD_BASE64,
            Say::Malformed => REPLY_MALFORMED_SASL,
            // RFC 3206 response codes (README: What a device may be told).
            Say::Token { class, text } => {
                let code = match class {
                    ErrorClass::Temporary => "SYS/TEMP",
                    _ => "AUTH",
                };
                return format!("-ERR [{code}] {text}\r\n").into_bytes();
            }
            Say::UpstreamUnavailable { reason } => {
                return format!(
                    "-ERR [SYS/TEMP] Upstream unreachable ({reason}), try again later\r\n"
                )
                .into_bytes()
            }
        };
        fixed.to_vec()
    }

    fn accepted(&self, reply: &Line) -> Vec<u8> {
        reply.raw.clone()
    }

    /// `[SYS/TEMP]`, `[IN-USE]` and `[LOGIN-DELAY]` (RFC 2449 §8.1, RFC 3206) stay temporary.
    fn refused(&self, reply: &Line) -> Refusal {
        let text = reply.text_lossy();
        let detail = sanitize_for_reply(&text, 300);
        tracing::warn!(upstream_reply = %detail, "upstream refused the login");
        if pop3::is_temporary_refusal(&reply.text) {
            return Refusal {
                reply: format!(
                    "-ERR [SYS/TEMP] Temporary authentication failure (upstream said: {detail})\r\n"
                )
                .into_bytes(),
                temporary: true,
            };
        }
        Refusal {
            reply: format!("-ERR [AUTH] Upstream server refused the login ({detail})\r\n")
                .into_bytes(),
            temporary: false,
        }
    }

    async fn probe(target: &Target) -> Result<Vec<Vec<u8>>, UpstreamError> {
        let mut up = Pop3Upstream::connect(target).await?;
        let (status, _, lines) = up.capa().await?;
        up.quit().await;
        if !status.ok {
            return Err(UpstreamError::Protocol("CAPA was refused".into()));
        }
        Ok(lines)
    }

    async fn after_login(
        self,
        ctx: Arc<ListenerContext>,
        client: ClientSide,
        upstream: Pop3Upstream,
        account: Arc<AccountConfig>,
    ) -> Outcome {
        relay::run_authenticated(&ctx, client.conn, upstream.conn, &account.id, LOST).await
    }
}

#[cfg(test)]
mod tests;
