//! Listeners: bind every configured address, accept connections within the listener's limit,
//! and run one session task per connection, each inside its own tracing span.

use crate::config::{LocalTls, Protocol};
use crate::session::{imap, pop3, smtp, ListenerContext};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

/// A bound listener, ready to serve.
pub struct Bound {
    pub ctx: Arc<ListenerContext>,
    pub socket: TcpListener,
}

/// Binds a listener's address. The error names the listener and the address.
pub async fn bind(ctx: Arc<ListenerContext>) -> Result<Bound, String> {
    let addr = ctx.config.listen;
    let socket = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("listener.{}: cannot listen on {addr}: {e}", ctx.config.name))?;
    Ok(Bound { ctx, socket })
}

/// Accepts connections until `shutdown` is cancelled. Sessions are tracked by `tasks` so the
/// caller can wait for them to finish.
pub async fn serve(bound: Bound, shutdown: CancellationToken, tasks: TaskTracker) {
    let Bound { ctx, socket } = bound;
    let limit = Arc::new(Semaphore::new(ctx.config.max_connections));
    let local = socket
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(listener = %ctx.config.name, address = %local, protocol = ?ctx.config.protocol,
        tls = ?ctx.config.tls, upstream = %format!("{}:{}", ctx.config.upstream_host, ctx.config.upstream_port),
        "listening");
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = socket.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = ctx.config.max_connections, "connection limit reached; refusing");
            tasks.spawn(refuse_busy(tcp, ctx.config.protocol, ctx.config.tls));
            continue;
        };
        let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("session", id, listener = %ctx.config.name, %peer, account = tracing::field::Empty);
        let ctx = ctx.clone();
        tasks.spawn(
            async move {
                let outcome = match ctx.config.protocol {
                    Protocol::Smtp => smtp::run(ctx.clone(), tcp, peer).await,
                    Protocol::Pop3 => pop3::run(ctx.clone(), tcp, peer).await,
                    Protocol::Imap => imap::run(ctx.clone(), tcp, peer).await,
                };
                tracing::info!(outcome = ?outcome, "session ended");
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Tells a client over the connection limit to come back later, in its protocol, and closes.
async fn refuse_busy(mut tcp: TcpStream, protocol: Protocol, tls: LocalTls) {
    if tls == LocalTls::Implicit {
        return; // No handshake for a connection that is refused anyway.
    }
    let line: &[u8] = match protocol {
        Protocol::Smtp => b"421 4.7.0 Too many connections, try again later\r\n",
        Protocol::Imap => b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
        Protocol::Pop3 => b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
    };
    let _ = tcp.write_all(line).await;
    let _ = tcp.shutdown().await;
}
