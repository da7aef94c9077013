//! Listeners: bind every configured address, accept connections within the listener's limit,
//! and run one session task per connection, each inside its own tracing span.

use crate::codec::proxy;
use crate::config::{LocalTls, Protocol};
use crate::metrics;
use crate::net::conn::Conn;
use crate::session::{driver, imap, pop3, smtp, ListenerContext};
use dashmap::DashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

/// A bound listener, ready to serve.
pub struct Bound {
    /// The listener's shared context.
    pub ctx: Arc<ListenerContext>,
    /// The bound socket.
    pub socket: TcpListener,
}

/// Connections the kernel may hold for us before they are accepted (capped by
/// net.core.somaxconn). The usual 128 is too few for a whole office's devices reconnecting at
/// once: past it, SYN cookies let a client believe it is connected while the relay never hears
/// of it, and a server-speaks-first client then waits for a greeting that never comes.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener's address.
pub async fn bind(ctx: Arc<ListenerContext>) -> std::io::Result<Bound> {
    let socket = listen(ctx.config.listen)?;
    Ok(Bound { ctx, socket })
}

/// A listening socket with SO_REUSEADDR (a restart does not wait for TIME_WAIT) and a deep
/// backlog.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Learns the listener's upstream capabilities (when `upstream_probe` is on), so that devices
/// see what it offers before any of them logged in.
pub async fn probe(ctx: Arc<ListenerContext>) {
    if !ctx.config.upstream_probe {
        return;
    }
    match ctx.config.protocol {
        Protocol::Smtp => driver::probe::<smtp::Smtp>(ctx).await,
        Protocol::Imap => driver::probe::<imap::Imap>(ctx).await,
        Protocol::Pop3 => driver::probe::<pop3::Pop3>(ctx).await,
    }
}

/// Accepts connections until `shutdown` is cancelled. Sessions are tracked by `tasks` so the
/// caller can wait for them to finish.
pub async fn serve(bound: Bound, shutdown: CancellationToken, tasks: TaskTracker) {
    let Bound { ctx, socket } = bound;
    let limit = Arc::new(Semaphore::new(ctx.config.max_connections));
    let per_address: Arc<DashMap<IpAddr, usize>> = Arc::default();
    let local = socket
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(listener = %ctx.config.name, address = %local, protocol = ?ctx.config.protocol,
        tls = ?ctx.config.tls, upstream = %ctx.config.upstream.address(),
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
        let ctx = ctx.clone();
        let (limit, per_address) = (limit.clone(), per_address.clone());
        tasks.spawn(async move {
            let Some((conn, peer)) = admit(&ctx, tcp, peer).await else {
                return;
            };
            let config = &ctx.config;
            let Ok(permit) = limit.try_acquire_owned() else {
                tracing::warn!(%peer, limit = config.max_connections, "connection limit reached; refusing");
                refuse_busy(&ctx, conn).await;
                return;
            };
            let Some(slot) = AddressSlot::take(&per_address, peer.ip(), config.max_connections_per_address) else {
                tracing::warn!(%peer, limit = config.max_connections_per_address, "connection limit for one address reached (max_connections_per_address); refusing");
                refuse_busy(&ctx, conn).await;
                return;
            };
            let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
            let protocol = ctx.config.protocol;
            let span = tracing::info_span!("session", id, listener = %ctx.config.name,
                protocol = metrics::protocol_name(protocol), %peer,
                account = tracing::field::Empty, outcome = tracing::field::Empty);
            async move {
                ctx.shared.metrics.session_started(protocol);
                let outcome = match protocol {
                    Protocol::Smtp => smtp::run(ctx.clone(), conn, peer).await,
                    Protocol::Pop3 => pop3::run(ctx.clone(), conn, peer).await,
                    Protocol::Imap => imap::run(ctx.clone(), conn, peer).await,
                };
                ctx.shared.metrics.session_ended(protocol, outcome);
                tracing::Span::current().record("outcome", metrics::outcome_name(outcome));
                tracing::info!("session ended");
            }
            .instrument(span)
            .await;
            drop((permit, slot));
        });
    }
}

/// One connection's place in its address's share of the listener (`max_connections_per_address`),
/// given back when dropped.
struct AddressSlot {
    counts: Arc<DashMap<IpAddr, usize>>,
    address: IpAddr,
}

impl AddressSlot {
    fn take(counts: &Arc<DashMap<IpAddr, usize>>, address: IpAddr, limit: usize) -> Option<Self> {
        let mut n = counts.entry(address).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: counts.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.counts.remove_if_mut(&self.address, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

/// How long a trusted proxy may take to send its PROXY header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The client's address (from a PROXY v2 header when the listener expects one, and only from
/// a trusted proxy), checked against the listener's allow list. `None`: close the connection.
async fn admit(
    ctx: &ListenerContext,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<(Conn, SocketAddr)> {
    let config = &ctx.config;
    let mut conn = Conn::new(tcp);
    let mut client = peer;
    if config.proxy_protocol {
        if !config.proxy_trusted.iter().any(|c| c.contains(peer.ip())) {
            tracing::warn!(%peer, listener = %config.name, "connection from an address that is not a trusted proxy (proxy_trusted); closing");
            return None;
        }
        let header = tokio::time::timeout(PROXY_HEADER_TIMEOUT, async {
            loop {
                match proxy::parse(conn.buffered()) {
                    Ok(Some((header, used))) => {
                        conn.consume(used);
                        return Ok(header);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(format!("{e:?}")),
                }
                match conn.fill().await {
                    Ok(0) => return Err("closed".to_owned()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await;
        match header {
            Ok(Ok(proxy::Header::Proxy { source, .. })) => client = source,
            Ok(Ok(proxy::Header::Local)) => {}
            Ok(Err(e)) => {
                tracing::warn!(%peer, listener = %config.name, error = %e, "no valid PROXY v2 header; closing");
                return None;
            }
            Err(_) => {
                tracing::warn!(%peer, listener = %config.name, "no PROXY v2 header within 5 s; closing");
                return None;
            }
        }
    }
    if !config.allow.is_empty() && !config.allow.iter().any(|c| c.contains(client.ip())) {
        tracing::warn!(%client, listener = %config.name, "client address not in the listener's allow list; closing");
        return None;
    }
    Some((conn, client))
}

/// How long a refused client's TLS handshake may take before it is dropped.
const BUSY_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Tells a client over a connection limit to come back later, in its protocol (after the TLS
/// handshake on an implicit-TLS listener, so the client can read it), and closes.
async fn refuse_busy(ctx: &ListenerContext, mut conn: Conn) {
    if ctx.config.tls == LocalTls::Implicit {
        let Some(acceptor) = &ctx.acceptor else {
            return;
        };
        match tokio::time::timeout(BUSY_HANDSHAKE_TIMEOUT, conn.accept_tls(acceptor)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
    let line: &[u8] = match ctx.config.protocol {
        Protocol::Smtp => b"421 4.7.0 Too many connections, try again later\r\n",
        Protocol::Imap => b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
        Protocol::Pop3 => b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
    };
    let _ = conn.send(line).await;
    conn.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the usual backlog of 128, connections beyond it are dropped (or only SYN-cookied) while
    /// the relay is busy, and are never accepted: a burst must wait in the queue instead.
    #[tokio::test]
    async fn a_burst_of_connections_waits_to_be_accepted() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..400 {
            let connect = tokio::net::TcpStream::connect(addr);
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
                clients.push(c);
            }
        }
        let mut accepted = 0;
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(500), listener.accept()).await
        {
            accepted += 1;
        }
        assert_eq!(accepted, 400, "{} connects completed", clients.len());
    }
}
