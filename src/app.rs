//! Starting the relay: from a validated [`Config`] to running listeners.

use crate::admin;
use crate::auth::accounts::Directory;
use crate::auth::oauth;
use crate::auth::tokens::TokenCache;
use crate::config::{Config, ListenerConfig, LocalTls};
use crate::net::{conn, listener, tls};
use crate::session::{ListenerContext, Shared};
use crate::store::Store;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running relay: its bound addresses and the handle to stop it.
pub struct Running {
    pub addresses: Vec<(String, SocketAddr)>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub shared: Arc<Shared>,
}

impl Running {
    /// Stops accepting, lets running sessions go on for up to `drain`, then closes the rest
    /// (pre-login sessions get their protocol's goodbye) and waits for them to end.
    pub async fn stop(self, drain: std::time::Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(drain, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::info!(
                sessions = self.tasks.len(),
                "drain deadline passed; closing the remaining sessions"
            );
            self.shared.close_sessions.cancel();
            self.tasks.wait().await;
        }
    }
}

fn listener_context(
    config: &ListenerConfig,
    shared: Arc<Shared>,
) -> Result<ListenerContext, String> {
    let where_ = |e: String| format!("listener.{}: {e}", config.name);
    let acceptor = match (config.tls, &config.cert, &config.key) {
        (LocalTls::None, _, _) => None,
        (_, Some(cert), Some(key)) => Some(TlsAcceptor::from(
            tls::server_config(cert, key).map_err(|e| where_(e.to_string()))?,
        )),
        _ => return Err(where_("local TLS needs cert and key".into())),
    };
    let client =
        tls::client_config(config.upstream_ca.as_deref()).map_err(|e| where_(e.to_string()))?;
    let upstream_name = ServerName::try_from(config.upstream_name.clone()).map_err(|_| {
        where_(format!(
            "{:?} is not a valid TLS server name",
            config.upstream_name
        ))
    })?;
    Ok(ListenerContext {
        config: config.clone(),
        acceptor,
        connector: conn::connector(client),
        upstream_name,
        shared,
    })
}

/// Background token upkeep: refresh ahead of expiry and keep refresh tokens alive, for the
/// accounts whose store key is known (a store key file, or a login since start).
async fn upkeep(
    shared: Arc<Shared>,
    every: std::time::Duration,
    keepalive: std::time::Duration,
    shutdown: CancellationToken,
) {
    let accounts: Vec<_> = shared.directory.accounts().cloned().collect();
    loop {
        shared.tokens.maintain(&accounts, keepalive).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Binds every listener (all or nothing) and starts serving.
pub async fn start(config: &Config) -> Result<Running, String> {
    let store = Store::open(&config.store.path, config.store.key.as_ref())
        .map_err(|e| format!("store: {e}"))?;
    let admin_url = config.admin.listen.map(|_| config.admin.public_url.clone());
    let tokens = TokenCache::new(
        oauth::http_client(config.security.token_timeout),
        config.security.refresh_margin,
        store,
        admin_url,
    );
    let directory = Directory::new(
        &config.accounts,
        config.security.hash_concurrency,
        config.security.failure_delay,
    );
    let shared = Arc::new(Shared {
        directory,
        tokens,
        close_sessions: CancellationToken::new(),
        clients: config.clients.clone(),
    });
    let mut bound = Vec::new();
    for l in &config.listeners {
        let ctx = Arc::new(listener_context(l, shared.clone())?);
        bound.push(listener::bind(ctx).await?);
    }
    let admin_listener = match config.admin.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("admin.listen: cannot listen on {addr}: {e} (set [admin] listen, or enabled = false)"))?,
        ),
        None => None,
    };
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut addresses = Vec::new();
    for b in bound {
        let addr = b.socket.local_addr().map_err(|e| e.to_string())?;
        addresses.push((b.ctx.config.name.clone(), addr));
        tasks.spawn(listener::serve(b, shutdown.clone(), tasks.clone()));
    }
    if let Some(l) = admin_listener {
        addresses.push((
            "admin".to_owned(),
            l.local_addr().map_err(|e| e.to_string())?,
        ));
        tasks.spawn(admin::serve(
            l,
            shared.clone(),
            config.admin.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(upkeep(
        shared.clone(),
        config.store.check_interval,
        config.store.keepalive,
        shutdown.clone(),
    ));
    Ok(Running {
        addresses,
        shutdown,
        tasks,
        shared,
    })
}
