//! What every protocol's upstream connection shares: opening TCP (and implicit TLS) within the
//! listener's time limits, upgrading to TLS after STARTTLS/STLS with the injection check, and
//! the error type that says why the upstream cannot be used.

use crate::auth::upstream::UpstreamCredential;
use crate::codec::sasl::BearerMechanism;
use crate::config::UpstreamTls;
use crate::net::conn::Conn;
use crate::secret::SecretBytes;
use crate::session::ListenerContext;
use std::fmt;
use std::io;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Why the upstream connection cannot be used.
#[derive(Debug)]
pub enum UpstreamError {
    Connect(io::Error),
    Timeout(&'static str),
    /// The server's greeting was not a welcome.
    Greeting(String),
    /// Upstream STARTTLS/STLS was required but not offered, or refused: never continue in
    /// plaintext.
    StartTls(String),
    /// Bytes followed the server's go-ahead for TLS (response injection).
    Injection,
    Tls(io::Error),
    Io(io::Error),
    /// The server sent something that is not a valid reply.
    Protocol(String),
    Closed,
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

/// Connects to the listener's upstream, with implicit TLS when configured.
pub async fn open(ctx: &ListenerContext) -> Result<Conn, UpstreamError> {
    let cfg = &ctx.config;
    let tcp = timeout(
        cfg.connect_timeout,
        TcpStream::connect((cfg.upstream_host.as_str(), cfg.upstream_port)),
    )
    .await
    .map_err(|_| UpstreamError::Timeout("connect"))?
    .map_err(UpstreamError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn::new(tcp);
    if cfg.upstream_tls == UpstreamTls::Implicit {
        start_tls(&mut conn, ctx).await?;
    }
    Ok(conn)
}

/// The TLS handshake towards upstream, verifying the configured name. Refuses to start while
/// plaintext from the server is still buffered.
pub async fn start_tls(conn: &mut Conn, ctx: &ListenerContext) -> Result<(), UpstreamError> {
    if !conn.buffered().is_empty() {
        return Err(UpstreamError::Injection);
    }
    timeout(
        ctx.config.connect_timeout,
        conn.connect_tls(&ctx.connector, ctx.upstream_name.clone()),
    )
    .await
    .map_err(|_| UpstreamError::Timeout("TLS handshake"))?
    .map_err(UpstreamError::Tls)
}

/// Reads more bytes from upstream; end of stream is an error before authentication.
pub async fn fill(conn: &mut Conn) -> Result<(), UpstreamError> {
    match conn.fill().await {
        Ok(0) => Err(UpstreamError::Closed),
        Ok(_) => Ok(()),
        Err(e) => Err(UpstreamError::Io(e)),
    }
}
