//! What every protocol's upstream connection shares: the [`Target`] (one server, ready to
//! dial), opening TCP (and implicit TLS) within the listener's time limits, upgrading to TLS
//! after STARTTLS/STLS with the injection check, and the error type that says why the upstream
//! cannot be used.

use crate::auth::upstream::UpstreamCredential;
use crate::codec::sasl::BearerMechanism;
use crate::config::{ListenerConfig, UpstreamSpec, UpstreamTls};
use crate::net::conn::{self, Conn};
use crate::net::tls;
use crate::secret::SecretBytes;
use rustls::pki_types::ServerName;
use std::fmt;
use std::io;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

/// One upstream server, ready to dial: where, how to trust it, and the listener's time limits.
pub struct Target {
    /// Where and how.
    pub spec: UpstreamSpec,
    name: ServerName<'static>,
    connector: TlsConnector,
    /// Time for the TCP connect, the TLS handshake and the greeting.
    pub connect_timeout: Duration,
    /// Time for any one reply before the login ends.
    pub reply_timeout: Duration,
    /// The name the relay gives in its own EHLO (SMTP).
    pub ehlo_name: String,
}

impl Target {
    /// Builds the TLS client configuration for `spec` (CA file or pins) once.
    pub fn new(spec: &UpstreamSpec, listener: &ListenerConfig) -> Result<Target, tls::TlsError> {
        let client = if spec.pin.is_empty() {
            tls::client_config(spec.ca.as_deref())
        } else {
            tls::pinned_client_config(&spec.pin)
        }?;
        let name = ServerName::try_from(spec.name.clone())
            .map_err(|_| tls::TlsError::ServerName(spec.name.clone()))?;
        Ok(Target {
            spec: spec.clone(),
            name,
            connector: conn::connector(client),
            connect_timeout: listener.connect_timeout,
            reply_timeout: listener.upstream_timeout,
            ehlo_name: listener.ehlo_name.clone(),
        })
    }

    /// The server's host and port, which OAUTHBEARER names (RFC 7628 §3.1).
    pub fn server(&self) -> (String, u16) {
        (self.spec.host.clone(), self.spec.port)
    }
}

/// Why the upstream connection cannot be used.
#[derive(Debug)]
pub enum UpstreamError {
    /// The TCP connection failed.
    Connect(io::Error),
    /// No answer within the time limit; the phase is named.
    Timeout(&'static str),
    /// The server's greeting was not a welcome.
    Greeting(String),
    /// Upstream STARTTLS/STLS was required but not offered, or refused: never continue in
    /// plaintext.
    StartTls(String),
    /// Bytes followed the server's go-ahead for TLS (response injection).
    Injection,
    /// The TLS handshake failed (an unverifiable certificate, a wrong pin).
    Tls(io::Error),
    /// Reading or writing failed.
    Io(io::Error),
    /// The server sent something that is not a valid reply.
    Protocol(String),
    /// The server closed the connection.
    Closed,
    /// The upstream's settings cannot be used (an account's TLS files, checked at start).
    Settings(tls::TlsError),
    /// Every one of the mailbox's sessions (its `concurrency`) is in use across the replicas.
    MailboxBusy(usize),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "cannot connect: {e}"),
            UpstreamError::Timeout(phase) => write!(f, "no answer in time ({phase})"),
            UpstreamError::Greeting(t) => write!(f, "refused the connection: {t}"),
            UpstreamError::StartTls(t) => write!(f, "STARTTLS failed: {t}"),
            UpstreamError::Injection => {
                f.write_str("sent data right after its STARTTLS reply (injection attempt)")
            }
            UpstreamError::Tls(e) => {
                write!(f, "TLS handshake failed: {e}")?;
                let text = e.to_string();
                if text.contains("CaUsedAsEndEntity") || text.contains("UnknownIssuer") {
                    // A self-signed server certificate: a CA file cannot vouch for it.
                    f.write_str(" (for a self-signed server certificate, set upstream_pin instead of upstream_ca)")?;
                }
                Ok(())
            }
            UpstreamError::Io(e) => write!(f, "connection error: {e}"),
            UpstreamError::Protocol(e) => write!(f, "sent an invalid reply: {e}"),
            UpstreamError::Closed => f.write_str("closed the connection"),
            UpstreamError::Settings(e) => write!(f, "unusable settings: {e}"),
            UpstreamError::MailboxBusy(n) => {
                write!(f, "all {n} sessions of this mailbox are in use")
            }
        }
    }
}

/// The mechanism and initial response of a bearer-token login (XOAUTH2 or OAUTHBEARER) for
/// `server`: what every protocol's upstream sends. A password credential is no bearer login.
pub fn bearer_response(
    credential: &UpstreamCredential,
    server: &(String, u16),
) -> Result<(BearerMechanism, SecretBytes), UpstreamError> {
    let UpstreamCredential::Bearer {
        user,
        token,
        mechanism,
    } = credential
    else {
        return Err(UpstreamError::Protocol(
            "not a bearer-token credential".into(),
        ));
    };
    let blob = mechanism
        .response(user, &token.secret, &server.0, server.1)
        .map_err(|_| {
            UpstreamError::Protocol(format!(
                "the mailbox name is not usable in {}",
                String::from_utf8_lossy(mechanism.name())
            ))
        })?;
    Ok((*mechanism, blob))
}

/// Connects to `target`, with implicit TLS when configured.
pub async fn open(target: &Target) -> Result<Conn, UpstreamError> {
    let tcp = timeout(
        target.connect_timeout,
        TcpStream::connect((target.spec.host.as_str(), target.spec.port)),
    )
    .await
    .map_err(|_| UpstreamError::Timeout("connect"))?
    .map_err(UpstreamError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn::new(tcp);
    if target.spec.tls == UpstreamTls::Implicit {
        start_tls(&mut conn, target).await?;
    }
    Ok(conn)
}

/// The TLS handshake towards upstream, verifying the configured name. Refuses to start while
/// plaintext from the server is still buffered.
pub async fn start_tls(conn: &mut Conn, target: &Target) -> Result<(), UpstreamError> {
    if !conn.buffered().is_empty() {
        return Err(UpstreamError::Injection);
    }
    timeout(
        target.connect_timeout,
        conn.connect_tls(&target.connector, target.name.clone()),
    )
    .await
    .map_err(|_| UpstreamError::Timeout("TLS handshake"))?
    .map_err(UpstreamError::Tls)
}

/// Reads until `parse` finds a complete item at the front of the received bytes: `parse` returns
/// the item (owned) and how many bytes it took, `None` when more are needed, or why the bytes
/// are not valid. The one "parse, else read more" loop of every upstream client.
pub async fn read_frame<T, E: fmt::Display>(
    conn: &mut Conn,
    mut parse: impl FnMut(&[u8]) -> Result<Option<(T, usize)>, E>,
) -> Result<T, UpstreamError> {
    loop {
        match parse(conn.buffered()) {
            Ok(Some((item, used))) => {
                conn.consume(used);
                return Ok(item);
            }
            Ok(None) => fill(conn).await?,
            Err(e) => return Err(UpstreamError::Protocol(e.to_string())),
        }
    }
}

/// Reads more bytes from upstream; end of stream is an error before authentication.
pub async fn fill(conn: &mut Conn) -> Result<(), UpstreamError> {
    match conn.fill().await {
        Ok(0) => Err(UpstreamError::Closed),
        Ok(_) => Ok(()),
        // A server that hangs up with the relay's last command unread sends a reset instead of
        // a FIN; which of the two the kernel reports is timing. Both are the server closing.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Err(UpstreamError::Closed),
        Err(e) => Err(UpstreamError::Io(e)),
    }
}
