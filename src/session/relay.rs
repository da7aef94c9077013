//! The post-authentication byte pipe.
//!
//! After a successful login nothing is parsed, rewritten or logged: bytes are copied both ways
//! with bounded buffers (back-pressure instead of growth) until one side closes, and the other
//! side then sees its half closed. An idle watchdog closes sessions with no traffic in either
//! direction for the listener's idle timeout.

use crate::net::conn::Conn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Buffer size of each direction of the pipe. One TLS record holds at most 16 KiB of plaintext.
pub const PIPE_BUFFER: usize = 32 * 1024;

/// Bytes moved in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the device to the server.
    pub client_to_upstream: u64,
    /// From the server to the device.
    pub upstream_to_client: u64,
}

/// Copies `client` ⇄ `upstream` until both directions are finished or the pipe is idle for
/// `idle`. Bytes already buffered on either side are delivered first, in order.
pub async fn pipe(client: Conn, upstream: Conn, idle: Duration) -> io::Result<Transferred> {
    let (mut client, client_pending) = client.into_parts();
    let (mut upstream, upstream_pending) = upstream.into_parts();
    if !client_pending.is_empty() {
        upstream.write_all(&client_pending).await?;
        upstream.flush().await?;
    }
    if !upstream_pending.is_empty() {
        client.write_all(&upstream_pending).await?;
        client.flush().await?;
    }
    drop((client_pending, upstream_pending));

    let activity = Arc::new(AtomicU64::new(0));
    let mut client = Counted {
        inner: client,
        activity: activity.clone(),
    };
    let mut upstream = Counted {
        inner: upstream,
        activity: activity.clone(),
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        PIPE_BUFFER,
        PIPE_BUFFER,
    );
    tokio::pin!(copy);
    let tick = (idle / 4).max(Duration::from_millis(50));
    let mut last_seen = activity.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::select! {
            result = &mut copy => {
                let (up, down) = result?;
                return Ok(Transferred { client_to_upstream: up, upstream_to_client: down });
            }
            _ = tokio::time::sleep(tick) => {
                let now = activity.load(Ordering::Relaxed);
                if now == last_seen {
                    quiet += tick;
                    if quiet >= idle {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                    }
                } else {
                    last_seen = now;
                    quiet = Duration::ZERO;
                }
            }
        }
    }
}

/// Counts the reads of a stream into a shared activity counter for the idle watchdog.
struct Counted<S> {
    inner: S,
    activity: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.activity.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Runs the pipe for an authenticated session until it ends or `close` is cancelled (shutdown),
/// and logs how it ended (byte counts only).
pub async fn run_authenticated(
    ctx: &crate::session::ListenerContext,
    client: Conn,
    upstream: Conn,
    account: &str,
) -> crate::session::Outcome {
    let close = &ctx.shared.close_sessions;
    let result = tokio::select! {
        r = pipe(client, upstream, ctx.config.idle_timeout) => r,
        _ = close.cancelled() => Err(io::Error::other("closed at shutdown")),
    };
    if let Ok(t) = &result {
        ctx.shared.metrics.relayed(
            ctx.config.protocol,
            t.client_to_upstream,
            t.upstream_to_client,
        );
    }
    match result {
        Ok(t) => tracing::info!(
            account,
            bytes_up = t.client_to_upstream,
            bytes_down = t.upstream_to_client,
            "session relayed"
        ),
        Err(e) => tracing::info!(account, error = %e, "relay ended"),
    }
    crate::session::Outcome::Relayed
}
