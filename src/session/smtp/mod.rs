//! The SMTP session (RFC 5321, AUTH RFC 4954, STARTTLS RFC 3207), as the [`driver`] sees it.
//!
//! Before login the relay is an SMTP server of its own: its greeting, an EHLO answer built from
//! the upstream's cached keywords (AUTH and STARTTLS are the relay's), AUTH PLAIN/LOGIN checked
//! locally, mail commands refused until login. After the local check passed, the account's
//! upstream is dialled: greeting, STARTTLS, `EHLO` with the client's domain, AUTH with the
//! token; its `235` is relayed. Then either a byte pipe ([`relay`]) or, for accounts whose
//! senders are checked, the command-aware loop in [`sender`].

pub mod upstream;

use crate::auth::advice::upstream_advice;
use crate::auth::oauth::ErrorClass;
use crate::codec::line::{next_command, sanitize_for_reply};
use crate::codec::sasl::Mechanism;
use crate::codec::smtp::{
    self, enhanced_code, Command, EhloPolicy, MAX_AUTH_LINE, MAX_COMMAND_LINE,
};
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
use upstream::{OwnedReply, SmtpUpstream};

mod sender;
pub mod spool;
mod trusted;

const REPLY_TIMEOUT: &[u8] = b"421 4.4.2 Timeout before authentication, closing connection\r\n";
const REPLY_TOO_MUCH: &[u8] =
    b"421 4.7.0 Too much data before authentication, closing connection\r\n";
/// What a device hears when the server's side of a relayed session fails (RFC 3463 4.4.2:
/// bad connection).
const LOST: &[u8] = b"421 4.4.2 The connection to the mail server was lost, closing connection\r\n";
const REPLY_SHUTTING_DOWN: &[u8] = b"421 4.3.2 Service shutting down, closing connection\r\n";
const REPLY_TOO_MANY_FAILURES: &[u8] = b"421 4.7.0 Too many failed logins, closing connection\r\n";
const REPLY_LINE_TOO_LONG: &[u8] = b"500 5.5.2 Line too long, closing connection\r\n";
const REPLY_AUTH_LINE_TOO_LONG: &[u8] = b"500 5.5.6 Authentication Exchange line is too long\r\n";
const REPLY_BAD_CHARACTERS: &[u8] = b"500 5.5.2 Error: command contains invalid characters\r\n";
const REPLY_UNRECOGNIZED: &[u8] = b"500 5.5.2 Error: command not recognized\r\n";
const REPLY_HELO_FIRST: &[u8] = b"503 5.5.1 Error: send HELO/EHLO first\r\n";
const REPLY_AUTH_REQUIRED: &[u8] = b"530 5.7.0 Authentication required\r\n";
/// A DATA end line next to a bare line end: refused, spooled or relayed alike.
const REPLY_BARE_END: &[u8] = b"521 5.5.2 Error: <LF>.<LF> does not end a message (RFC 5321 4.1.1.4); end lines with CRLF\r\n";
const REPLY_ENCRYPTION_REQUIRED: &[u8] =
    b"538 5.7.11 Encryption required for requested authentication mechanism\r\n";
const REPLY_AUTH_SYNTAX: &[u8] = b"501 5.5.4 Syntax: AUTH mechanism\r\n";
const REPLY_UNKNOWN_MECHANISM: &[u8] = b"504 5.5.4 Unrecognized authentication type\r\n";
const REPLY_CANCELLED: &[u8] = b"501 5.7.0 Authentication cancelled\r\n";
const REPLY_BAD_BASE64: &[u8] = b"501 5.5.2 Cannot decode base64\r\n";
const REPLY_MALFORMED_SASL: &[u8] = b"501 5.5.2 Malformed authentication response\r\n";
/// The reply to a wrong password.
pub const REPLY_INVALID_CREDENTIALS: &[u8] = b"535 5.7.8 Authentication credentials invalid\r\n";
const REPLY_OK: &[u8] = b"250 2.0.0 OK\r\n";
const REPLY_THROTTLED: &[u8] =
    b"454 4.7.0 Too many failed logins from this address or for this user, try again later\r\n";
const REPLY_BYE: &[u8] = b"221 2.0.0 Bye\r\n";
const REPLY_TLS_READY: &[u8] = b"220 2.0.0 Ready to start TLS\r\n";
const REPLY_TLS_UNAVAILABLE: &[u8] = b"454 4.7.0 TLS not available due to temporary reason\r\n";
const REPLY_TLS_ACTIVE: &[u8] = b"503 5.5.1 Error: TLS already active\r\n";
const REPLY_STARTTLS_SYNTAX: &[u8] = b"501 5.5.4 Syntax: STARTTLS takes no parameters\r\n";

/// Runs one SMTP session to its end.
/// `conn` is the accepted connection (any PROXY header already read); `peer` the client.
pub async fn run(ctx: Arc<ListenerContext>, conn: Conn, peer: SocketAddr) -> Outcome {
    if ctx.config.spool {
        return spool::run(ctx, conn, peer).await;
    }
    let protocol = Smtp::new(&ctx.config.ehlo_name);
    driver::run(ctx, conn, peer, protocol).await
}

/// The SMTP pre-login dialogue: the relay's name and the client's EHLO domain.
pub struct Smtp {
    /// The relay's name in its greeting and EHLO answer (`ehlo_name`).
    name: String,
    /// The client's EHLO/HELO domain, once it has sent one.
    helo: Option<Vec<u8>>,
}

impl Smtp {
    /// A session whose greeting and EHLO answer give `name`.
    pub fn new(name: &str) -> Self {
        Smtp {
            name: name.to_owned(),
            helo: None,
        }
    }

    /// EHLO or HELO. RFC 5321 §4.1.1.1 wants a domain; a bare EHLO is taken all the same (it
    /// is unambiguous, and embedded SMTP libraries send it: gregington/SMTPClient#3).
    fn ehlo(&mut self, domain: &[u8], extended: bool, view: &View, caps: &[Vec<u8>]) -> Action {
        self.helo = Some(domain.to_vec());
        if !extended {
            return Action::Reply(smtp::format_reply_bytes(250, &[self.name.as_bytes()]));
        }
        let mut lines: Vec<&[u8]> = vec![self.name.as_bytes()];
        lines.extend(caps.iter().map(Vec::as_slice));
        let cached = smtp::Reply {
            code: 250,
            lines,
            raw: &[],
        };
        let policy = EhloPolicy {
            offer_auth: view.auth_allowed,
            offer_starttls: view.offer_starttls,
        };
        Action::Reply(smtp::rewrite_ehlo(&cached, policy))
    }

    fn auth(&self, mechanism: &[u8], initial_response: Option<&[u8]>, view: &View) -> Action {
        if self.helo.is_none() {
            return reply(REPLY_HELO_FIRST);
        }
        if !view.auth_allowed {
            return reply(REPLY_ENCRYPTION_REQUIRED);
        }
        if mechanism.is_empty() {
            return reply(REPLY_AUTH_SYNTAX);
        }
        match Mechanism::parse(mechanism) {
            Some(mechanism) => Action::Authenticate {
                mechanism,
                initial_response: initial_response.map(|r| SecretBytes::new(r.to_vec())),
            },
            None => reply(REPLY_UNKNOWN_MECHANISM),
        }
    }
}

fn reply(bytes: &[u8]) -> Action {
    Action::Reply(bytes.to_vec())
}

impl Dial for Smtp {
    type Upstream = SmtpUpstream;

    /// Connects, secures, and sends the client's EHLO domain (HELO clients too: upstream always
    /// gets EHLO, which the login needs).
    async fn dial(&self, target: &Target) -> Result<SmtpUpstream, UpstreamError> {
        let mut up = SmtpUpstream::connect(target).await?;
        // A bare EHLO (old firmware sends one) gives no domain to pass on: the relay's own name.
        let domain = self
            .helo
            .as_deref()
            .filter(|d| !d.is_empty())
            .unwrap_or(target.ehlo_name.as_bytes());
        let r = up.ehlo(domain).await?;
        if r.code != 250 {
            return Err(UpstreamError::Protocol(format!(
                "EHLO answered {} {}",
                r.code,
                r.first_text()
            )));
        }
        Ok(up)
    }
}

impl Protocol for Smtp {
    const CHALLENGE: Challenge = Challenge {
        prefix: b"334 ",
        max_line: MAX_AUTH_LINE,
    };

    fn default_capabilities() -> Vec<Vec<u8>> {
        // What every submission server of note offers (RFC 2920, RFC 6152, RFC 2034).
        vec![
            b"PIPELINING".to_vec(),
            b"8BITMIME".to_vec(),
            b"ENHANCEDSTATUSCODES".to_vec(),
        ]
    }

    fn greeting(&self, _view: &View, _caps: &[Vec<u8>]) -> Vec<u8> {
        format!("220 {} ESMTP ready\r\n", self.name).into_bytes()
    }

    fn frame(&mut self, buffered: &[u8]) -> Framing {
        match next_command(
            buffered,
            MAX_COMMAND_LINE,
            MAX_AUTH_LINE,
            smtp::is_auth_line,
        ) {
            Ok(Some((body, used))) => Framing::Command { body, used },
            Ok(None) => Framing::Incomplete,
            Err(_) => Framing::TooLong(REPLY_LINE_TOO_LONG.to_vec()),
        }
    }

    fn command(&mut self, line: &[u8], view: &View, caps: &[Vec<u8>]) -> Action {
        match smtp::parse_command(line) {
            Command::Ehlo(domain) => self.ehlo(domain, true, view, caps),
            Command::Helo(domain) => self.ehlo(domain, false, view, caps),
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response.map(|r| *r.expose()), view),
            Command::StartTls { has_args: true } => reply(REPLY_STARTTLS_SYNTAX),
            Command::StartTls { .. } if view.tls_active => reply(REPLY_TLS_ACTIVE),
            Command::StartTls { .. } if !view.offer_starttls => reply(REPLY_TLS_UNAVAILABLE),
            Command::StartTls { .. } => Action::StartTls(REPLY_TLS_READY.to_vec()),
            Command::Quit => Action::Close(REPLY_BYE.to_vec(), Outcome::ClientLeft),
            Command::Noop | Command::Rset => reply(REPLY_OK),
            Command::NeedsAuth => reply(REPLY_AUTH_REQUIRED),
            Command::Http => {
                tracing::info!("HTTP request on the SMTP port; closing");
                Action::Close(Vec::new(), Outcome::Refused)
            }
            Command::Malformed => reply(REPLY_BAD_CHARACTERS),
            Command::Unknown => reply(REPLY_UNRECOGNIZED),
        }
    }

    fn tls_started(&mut self) {
        // RFC 3207 §4.2: forget everything learned before TLS; the client must EHLO again.
        self.helo = None;
    }

    fn say(&self, what: Say<'_>) -> Vec<u8> {
        let fixed: &[u8] = match what {
            Say::Timeout => REPLY_TIMEOUT,
            Say::TooMuch => REPLY_TOO_MUCH,
            Say::ShuttingDown => REPLY_SHUTTING_DOWN,
            Say::TooManyFailures => REPLY_TOO_MANY_FAILURES,
            Say::LineTooLong => REPLY_AUTH_LINE_TOO_LONG,
            Say::BadCredentials => REPLY_INVALID_CREDENTIALS,
            Say::Throttled => REPLY_THROTTLED,
            Say::Cancelled => REPLY_CANCELLED,
            Say::BadBase64 => REPLY_BAD_BASE64,
            Say::Malformed => REPLY_MALFORMED_SASL,
            Say::Token { class, text } => {
                let status = match class {
                    ErrorClass::Temporary => "454 4.7.0",
                    _ => "535 5.7.8",
                };
                return format!("{status} {text}\r\n").into_bytes();
            }
            Say::UpstreamUnavailable { reason } => {
                return format!("454 4.4.1 Upstream unreachable ({reason}), try again later\r\n")
                    .into_bytes()
            }
        };
        fixed.to_vec()
    }

    fn accepted(&self, reply: &OwnedReply) -> Vec<u8> {
        reply.raw.clone()
    }

    /// 4xx stays temporary; 5xx becomes `535 5.7.8` with upstream's own code and text, so that
    /// e.g. `5.7.139` (SMTP AUTH disabled) reaches the user, with advice where there is some.
    fn refused(&self, reply: &OwnedReply) -> Refusal {
        let text = reply.first_text();
        let detail = sanitize_for_reply(&text, 300);
        tracing::warn!(code = reply.code, enhanced = enhanced_code(text.as_bytes()).unwrap_or(""), upstream_reply = %detail, "upstream refused the login");
        if (400..500).contains(&reply.code) {
            return Refusal {
                reply: format!(
                    "454 4.7.0 Temporary authentication failure (upstream said: {} {detail})\r\n",
                    reply.code
                )
                .into_bytes(),
                temporary: true,
            };
        }
        let advice = upstream_advice(&text)
            .map(|a| format!(": {a}"))
            .unwrap_or_default();
        let line = sanitize_for_reply(
            &format!(
                "Upstream server refused the login ({} {detail}){advice}",
                reply.code
            ),
            480,
        );
        Refusal {
            reply: format!("535 5.7.8 {line}\r\n").into_bytes(),
            temporary: false,
        }
    }

    async fn probe(target: &Target) -> Result<Vec<Vec<u8>>, UpstreamError> {
        let mut up = SmtpUpstream::connect(target).await?;
        up.ehlo(target.ehlo_name.as_bytes()).await?;
        up.quit().await;
        up.keywords()
            .ok_or_else(|| UpstreamError::Protocol("EHLO was refused".into()))
    }

    async fn after_login(
        self,
        ctx: Arc<ListenerContext>,
        client: ClientSide,
        upstream: SmtpUpstream,
        account: Arc<AccountConfig>,
    ) -> Outcome {
        if sender::checks_sender(&account) {
            let mut session = Session {
                ctx,
                client,
                upstream,
                moved: relay::Transferred::default(),
            };
            let outcome = session.transactions(&account).await;
            session.upstream.conn.shutdown().await;
            session.client.conn.shutdown().await;
            return outcome;
        }
        relay::run_authenticated(&ctx, client.conn, upstream.conn, &account.id, LOST).await
    }
}

/// An SMTP session after login whose senders are checked (see [`sender`]).
struct Session {
    ctx: Arc<ListenerContext>,
    client: ClientSide,
    upstream: SmtpUpstream,
    /// Bytes passed on after login (for metrics and the log).
    moved: relay::Transferred,
}

#[cfg(test)]
mod tests;
